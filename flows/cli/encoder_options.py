"""`--init w_avg|encoder --encoder PATH`: where an inversion starts (shared by `invert` and `run`)."""

from __future__ import annotations

import argparse

INIT_CHOICES = ("w_avg", "encoder")


def add_encoder_options(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """--{prefix}init and --{prefix}encoder (prefix "source-" for run's source inversion)."""
    parser.add_argument(f"--{prefix}init", choices=INIT_CHOICES, default="w_avg",
                        help="start of each inversion: the generator's mean w (default), or the prediction "
                             "of a trained encoder (facereenact train-encoder; needs --"
                             f"{prefix}encoder), refined by the steps")
    parser.add_argument(f"--{prefix}encoder", metavar="PATH",
                        help="encoder checkpoint for --init encoder (its sha256 is part of the cache key)")


def encoder_steps(args: argparse.Namespace, prefix: str = "", steps_attr: str = "steps") -> int:
    """The steps to run (the start's default when not given); a one-line InputError when --init and
    --encoder do not go together. Sets args.encoder to None unless --init encoder."""
    from storage.errors import InputError

    attr = prefix.replace("-", "_")
    init, encoder = getattr(args, f"{attr}init"), getattr(args, f"{attr}encoder")
    if init == "encoder" and not encoder:
        raise InputError(f"--{prefix}init encoder needs --{prefix}encoder PATH (facereenact train-encoder "
                         "--out PATH makes one)")
    if init != "encoder" and encoder:
        raise InputError(f"--{prefix}encoder is used with --{prefix}init encoder only")
    setattr(args, f"{attr}encoder", encoder if init == "encoder" else None)
    steps = getattr(args, steps_attr)
    if steps is not None:
        return steps
    from models.inversion import InversionConfig
    from stages.encoder_init import EncoderInversionConfig

    return (EncoderInversionConfig if init == "encoder" else InversionConfig).steps
