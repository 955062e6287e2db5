"""Serve the nightly batch from one long-running process, without a work pool (a single GPU box).

    FACEREENACT_BATCH=/data/batches/nightly.yaml FACEREENACT_CACHE=/data/cache python -m deployments.nightly

The same flow as the "nightly" deployment of deployments/prefect.yaml (work pool "gpu", any number
of workers); `flow.serve` is the one-machine form: this process polls the Prefect server and runs
each scheduled run itself. Cron and parameters come from the environment.
"""

from __future__ import annotations

import os

from flows.batch import reenact_batch
from flows.job_requests import DEFAULT_WEIGHTS

CRON = os.environ.get("FACEREENACT_CRON", "0 2 * * *")


def main() -> None:
    reenact_batch.serve(
        name="nightly-served",
        cron=CRON,
        parameters={"manifest": os.environ["FACEREENACT_BATCH"],
                    "cache": os.environ.get("FACEREENACT_CACHE", ".facereenact-cache"),
                    "weights": os.environ.get("FACEREENACT_WEIGHTS", DEFAULT_WEIGHTS),
                    "device": os.environ.get("FACEREENACT_DEVICE", "auto")},
        tags=["gpu", "nightly"],
    )


if __name__ == "__main__":
    main()
