"""Prefect deployments: the nightly batch and its work-pool setup."""
