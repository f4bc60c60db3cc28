"""Tracking: every run and sweep also in MLflow, written from the run folders (the source of truth)."""
