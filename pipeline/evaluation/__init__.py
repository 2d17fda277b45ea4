"""Evaluation: metrics.py (the metrics dict, confusion counts) and plots.py (the figures)."""
