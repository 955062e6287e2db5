"""The face options shared by the commands that find faces (run, prepare, invert): which detector,
which face. Kept free of heavy imports so `--help` and argument errors stay fast; the names and the
default are models/detection.py's (DETECTORS, DEFAULT_DETECTOR; a test checks they agree)."""

from __future__ import annotations

import argparse

DETECTOR_CHOICES = ("ssd", "haar")
DEFAULT_DETECTOR = "ssd"


def add_detector_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default=DEFAULT_DETECTOR,
                        help="face detector: ssd (face-api's SSD MobileNet v1: small, tilted and turned "
                             "faces; default) or haar (OpenCV's Haar cascade: faster, frontal faces of "
                             "about 50 px and more)")


def face_index(text: str) -> int:
    """argparse type of a face index: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value
