"""Built-in aligner plugins."""
