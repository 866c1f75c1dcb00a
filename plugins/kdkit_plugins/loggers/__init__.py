"""Built-in run loggers: JSONL (always on), TensorBoard, Weights & Biases and MLflow."""
