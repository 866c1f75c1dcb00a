"""Built-in adapter plugins."""
