"""Continuous improvement: feedback export, the model registry, the evaluation gate, promotion."""
