"""`--init w_avg|encoder --encoder PATH`: where an inversion starts (shared by `invert` and `run`).

The checks (they go together; the path made absolute) are flows/job_requests.py `start_encoder`'s; the
encoder file itself is checked against the generator once it is loaded (stages/encoder_init.py).
"""

from __future__ import annotations

import argparse

from flows.job_requests import ENCODER_INVERSION, INIT_CHOICES, default_of, start_encoder


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """--init and --encoder."""
    parser.add_argument("--init", choices=INIT_CHOICES, default=INIT_CHOICES[0],
                        help="start of each inversion: the generator's mean w (default), or the prediction "
                             "of a trained encoder (facereenact train-encoder; needs --encoder), refined by "
                             f"the steps (default {default_of(ENCODER_INVERSION, 'steps')} then)")
    parser.add_argument("--encoder", metavar="PATH",
                        help="encoder checkpoint for --init encoder (its sha256 is part of the cache key)")


def encoder_of(args: argparse.Namespace) -> str | None:
    """The encoder checkpoint of --init/--encoder (absolute), None for --init w_avg; a one-line
    InputError when they do not go together. Imports nothing heavy (errors come before torch loads)."""
    return start_encoder(args.init, args.encoder)
