"""Bridges to other distillation tools; each module is imported on demand (its tool is optional)."""
