"""Prefect-free stages of the pipeline: the loops that run models over the cache (tasks/ call them)."""
