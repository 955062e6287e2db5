"""`facereenact evaluate RESULT --source FACE --driving CLIP`: metrics of any reenactment result video.

Landmark NME of the result frames to the driving frames, identity similarity to the source photo,
landmark jitter of the result (beside the driving's), and seconds per frame from the `RESULT.json`
sidecar `facereenact run` writes (n/a without it). Frames where no face is found are counted and
left out. models/evaluation.py has the definitions; no Prefect needed.
"""

from __future__ import annotations

import argparse

from flows.cli.options import add_device_option

EXAMPLES = """examples:
  facereenact evaluate out.mp4 --source face.jpg --driving clip.mp4
  facereenact evaluate out.mp4 --source face.jpg --driving clip.mp4 --json"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("result", metavar="RESULT", help="the result video to evaluate")
    parser.add_argument("--source", required=True, metavar="FACE", help="the source face image")
    parser.add_argument("--driving", required=True, metavar="CLIP", help="the driving video")
    parser.add_argument("--crop-result", choices=["auto", "none", "right"], default="auto",
                        help="use the rightmost square panel of a side-by-side result: from the sidecar's "
                             "layout or the frame shape (auto, default), never (none) or always (right)")
    add_device_option(parser, default="cpu")
    parser.add_argument("--json", action="store_true", help="print JSON")


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    from models.device import resolve_device
    from stages.evaluate import evaluate_result

    report = evaluate_result(args.result, args.source, args.driving, crop_result=args.crop_result,
                             device=str(resolve_device(args.device)))
    if args.json:
        import json

        print(json.dumps(report, indent=2))
        return 0
    rows = [
        ("frames compared", f"{report['frames_compared']} (result {report['result_frames']}, driving "
                            f"{report['driving_frames']}"
                            f"{', sub-frames skipped' if report['subframes'] else ''})"),
        ("no face found", f"{report['no_face_result']} result, {report['no_face_driving']} driving frame(s) "
                          "(left out)"),
        ("landmark NME", f"{_fmt(report['landmark_nme'])} over {report['landmark_nme_frames']} frames "
                         f"({report['coordinates']} coordinates)"),
        ("identity similarity", "no face in any result frame" if report["identity_similarity"] is None
         and report["no_face_result"] else
         f"{_fmt(report['identity_similarity'])} (cosine to the source, face-api)"),
        ("landmark jitter", f"{_fmt(report['landmark_jitter'])} px (driving: "
                            f"{_fmt(report['driving_landmark_jitter'])} px)"),
        ("seconds per frame", _fmt(report["seconds_per_frame"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for note in report["notes"]:
        print(f"note: {note}")
    return 0
