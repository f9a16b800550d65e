"""Continuous improvement: data from feedback (and, beside it, the registry and the evaluation gate)."""
