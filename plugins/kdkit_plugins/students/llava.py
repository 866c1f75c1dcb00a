"""Placeholder: the plugin module is being written (registers nothing yet)."""
