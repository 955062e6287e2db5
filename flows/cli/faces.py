"""The face options shared by the commands that find faces (run, prepare, invert): which detector,
which face. Kept free of heavy imports so `--help` and argument errors stay fast; the names and the
default are the requests' (flows/job_requests.py DETECTORS, DEFAULT_DETECTOR), which mirror
models/detection.py's (a test checks they agree)."""

from __future__ import annotations

import argparse

from flows.cli.options import int_at_least
from flows.job_requests import DEFAULT_DETECTOR, DETECTORS

DETECTOR_CHOICES = DETECTORS
__all__ = ["DEFAULT_DETECTOR", "DETECTOR_CHOICES", "add_detector_option", "face_index"]

# argparse type of a face index: an integer >= 0 (0 = the largest face)
face_index = int_at_least(0, "face_index")


def add_detector_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--detector", choices=DETECTOR_CHOICES, default=DEFAULT_DETECTOR,
                        help="face detector: ssd (face-api's SSD MobileNet v1: small, tilted and turned "
                             "faces; default) or haar (OpenCV's Haar cascade: faster, frontal faces of "
                             "about 50 px and more)")
