"""Built-in benchmark plugins: the nine HAWAII benchmarks in their released formats, a generic
question/answer JSONL benchmark, and classifier / backbone measurements."""
