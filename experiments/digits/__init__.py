"""Three timm teachers distilled into a small ViT on scikit-learn's handwritten digits, against the
same student trained alone: ``python -m experiments.digits [--seeds 3] [--quick] [--output-dir DIR]``.
"""
