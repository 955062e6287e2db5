"""Prefect tasks: thin, idempotent wrappers around models/ and storage/."""
