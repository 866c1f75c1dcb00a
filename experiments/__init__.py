"""Experiments that run kdkit end to end on real data and write a report (``python -m experiments.<name>``)."""
