"""Prefect-free pipeline stages: plain functions over models/ and storage/ that tasks/ wrap."""
