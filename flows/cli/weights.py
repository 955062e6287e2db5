"""`facereenact weights`: list, fetch, verify and convert model weights.

    facereenact weights list
    facereenact weights fetch NAME [NAME ...] [--dir D] [--url URL]
    facereenact weights verify PATH|NAME [--dir D]
    facereenact weights convert SRC DST

The registry and the rules for downloads live in storage/weights.py; docs/weights.md describes
them. Downloads show a progress bar on a terminal, resume where an interrupted one stopped, and
land at their path only once verified.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """examples:
  facereenact weights list
  facereenact weights fetch ffhq-1024 lpips-vgg16    # the generator and LPIPS backbone of `run`
  facereenact weights verify ffhq-1024
  facereenact weights convert stylegan2-ffhq.pkl ffhq.safetensors"""


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    sub.add_parser("list", help="registered weights: kind, size, whether present and where")

    p = sub.add_parser("fetch", help="download registered weights, verified, resuming partial downloads")
    p.add_argument("names", nargs="+", metavar="NAME", help="registry name (see `weights list`)")
    p.add_argument("--dir", type=Path, default=None,
                   help="directory to put them in (default: each weight's home, see `weights list`)")
    p.add_argument("--url", default=None,
                   help="download from this URL instead (one NAME only; see also "
                        "FACEREENACT_WEIGHTS_MIRROR and FACEREENACT_WEIGHTS_URL_<NAME>)")

    p = sub.add_parser("verify", help="check a weight file's size and sha256")
    p.add_argument("target", metavar="PATH|NAME", help="a weight file, or a registry name")
    p.add_argument("--dir", type=Path, default=None, help="where to look for NAME (default: its home)")

    p = sub.add_parser("convert", help="convert an official network pickle to this project's format")
    p.add_argument("src", metavar="SRC", help="network pickle (or a registry name)")
    p.add_argument("dst", type=Path, metavar="DST", help="output file")


def run(args: argparse.Namespace) -> int:
    action = {"list": _list, "fetch": _fetch, "verify": _verify, "convert": _convert}[args.action]
    return action(args)  # Ctrl-C: flows.cli.main's one line; a rerun resumes the download


def _human(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _list(args: argparse.Namespace) -> int:
    from storage import weights

    rows = [("NAME", "KIND", "SIZE", "SHA256", "PRESENT")]
    for spec in weights.REGISTRY.values():
        path = weights.default_dir(spec) / spec.filename
        pinned = ("pinned" if spec.sha256 else "recorded" if weights.read_record(path)
                  else f"prefix {spec.sha256_prefix}" if spec.sha256_prefix else "not pinned")
        present = str(path) if path.is_file() else f"missing ({path.parent})"
        rows.append((spec.name, spec.kind, _human(spec.size), pinned, present))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4])
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from storage import weights
    from storage.errors import InputError

    if args.url and len(args.names) > 1:
        raise InputError("--url applies to one weight; give one NAME with it")
    specs = [weights.get_spec(name) for name in args.names]  # all names checked before any download
    for spec in specs:
        path = weights.fetch(spec, dest_dir=args.dir, url=args.url, progress=None)
        print(path)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from storage import weights
    from storage.errors import CheckpointError, InputError, WeightsMissingError

    target = Path(args.target).expanduser()
    spec = None
    if not target.exists() and args.target in weights.REGISTRY:
        spec = weights.REGISTRY[args.target]
        target = Path(args.dir or weights.default_dir(spec)) / spec.filename
        if not target.is_file():
            raise WeightsMissingError(
                f"weight {spec.filename!r} ({spec.name}) not found in {target.parent}; "
                f"fetch it with: facereenact weights fetch {spec.name}"
                + (f" --dir {args.dir}" if args.dir else ""))
    elif not target.is_file():
        known = ", ".join(sorted(weights.REGISTRY))
        raise InputError(f"no such file, and not a registry name (known: {known})", path=target)
    result = weights.verify(target, spec)
    if not result.ok:
        raise CheckpointError(result.detail, path=result.path)
    print(result.message)
    return 0


def _convert(args: argparse.Namespace) -> int:
    from storage import weights
    from storage.errors import InputError

    try:
        from models.checkpoints import convert_checkpoint
    except ImportError as err:  # models/checkpoints.py is another branch's work
        print(f"facereenact: error: this build cannot convert checkpoints ({err})", file=sys.stderr)
        return 1
    src = Path(args.src).expanduser()
    if not src.exists() and args.src in weights.REGISTRY:
        src = weights.require(args.src)
    if not src.is_file():
        raise InputError("no such file, and not a registry name", path=src)
    from storage.overwrite import check_outputs_not_inputs

    check_outputs_not_inputs([("converted checkpoint", args.dst)], [("checkpoint to convert", src)])
    convert_checkpoint(src, args.dst)
    print(args.dst)
    return 0
