"""Prefect flows (the only place that composes tasks) and the command line."""
