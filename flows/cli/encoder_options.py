"""`--init w_avg|encoder --encoder PATH`: where an inversion starts (shared by `invert` and `run`)."""

from __future__ import annotations

import argparse

INIT_CHOICES = ("w_avg", "encoder")


def add_encoder_options(parser: argparse.ArgumentParser) -> None:
    """--init and --encoder."""
    parser.add_argument("--init", choices=INIT_CHOICES, default="w_avg",
                        help="start of each inversion: the generator's mean w (default), or the prediction "
                             "of a trained encoder (facereenact train-encoder; needs --encoder), refined by "
                             "the steps")
    parser.add_argument("--encoder", metavar="PATH",
                        help="encoder checkpoint for --init encoder (its sha256 is part of the cache key)")


def check_encoder_options(args: argparse.Namespace) -> None:
    """A one-line InputError when --init and --encoder do not go together; args.encoder becomes None
    unless --init encoder. Imports nothing heavy (errors come before torch loads)."""
    from storage.errors import InputError

    if args.init == "encoder" and not args.encoder:
        raise InputError("--init encoder needs --encoder PATH (facereenact train-encoder --out PATH makes "
                         "one)")
    if args.init != "encoder" and args.encoder:
        raise InputError("--encoder is used with --init encoder only")
    args.encoder = args.encoder if args.init == "encoder" else None


def default_steps(args: argparse.Namespace) -> int:
    """The steps of the chosen start when none were given (loads torch)."""
    from models.inversion import InversionConfig
    from stages.encoder_init import EncoderInversionConfig

    return (EncoderInversionConfig if args.encoder else InversionConfig).steps
