"""Built-in student plugins."""
