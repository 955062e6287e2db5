"""Latent directions (models/directions.py, stages/train_directions.py): reenactment quality of a
trained A with and without the identity loss, and seconds per frame of directions vs mapping vs
projection reenactment, side by side in one run.

    python tests/benchmarks/bench_directions.py [--steps 80] [--pairs 16] [--frames 8] [--device cpu]
        [--projection-steps 50] [--generators 'tiny 32,256 paper256']

1. Quality, on the warp-face generator of the tests (tests/directions_data.py: the astronaut's face
   rotated, scaled, shifted and its mouth opened by linear functions of W+; the only generator here
   whose images are faces without downloaded weights). A trained for --steps steps (batch 4, lr 3e-2,
   k = 2 layers, m_e = 4) with lambda_id = 1 and with lambda_id = 0, and A = 0. On --pairs fixed held-out
   (source, Δp) pairs: the reenactment loss (L_r), the pose error (mean |angles of the reenacted image
   - target angles|, degrees: the paper's "Pose" column on our p), the expression error (mean |e_r -
   e_t| of the raw expression coefficients: its "Exp." column), and the identity similarity of the
   reenacted image to the source (face-api descriptors, cosine: its CSIM with our identity net).
2. Speed, random-weight StyleGAN2 generators (speed does not depend on the weights): seconds per
   output frame of directions mode (p of the driving landmarks, A, one generator pass; batched),
   mapping mode (the landmark-to-latent network untrained, one generator pass; batched) and projection
   mode (--projection-steps Adam steps per frame through the generator and the landmark net). Quality
   numbers on random generators would mean nothing (their images are not faces), so none are shown.

Default one torch thread (the shared 2-core machine): `--threads 2` to compare.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.identity import identity_similarity  # noqa: E402
from models.landmarks import load_landmark_backend  # noqa: E402
from models.stylegan2 import Generator  # noqa: E402
from stages.train_directions import (  # noqa: E402
    DirectionsConfig,
    DirectionsTrainer,
    held_out_pairs,
    landmarks_of,
)
from tests.directions_data import WarpFaceGenerator, face_crop  # noqa: E402

GENERATORS = {
    "tiny 32": lambda: __import__("tests.tiny", fromlist=["tiny_generator"]).tiny_generator(),
    "256 paper256": lambda: Generator(img_resolution=256, channel_base=16384, channel_max=512),
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def quality(trainer: DirectionsTrainer, pairs: int, seed: int = 1234) -> dict[str, float]:
    """Held-out quality numbers of the trainer's A (see the module docstring)."""
    w_s, source, dp = held_out_pairs(trainer, pairs, seed)
    pose, G = trainer.pose, trainer.G
    terms = trainer.losses(w_s, dp, source)
    images = G.synthesis(w_s + trainer.A(dp), noise_mode="const")
    points = landmarks_of(trainer.backend, images)
    raw_r, raw_t = pose.raw(points), pose.unscale(source["p"] + dp)
    desc_s = trainer.identity.embed(G.synthesis(w_s, noise_mode="const"), source["points"])
    return {"reenactment": float(terms["reenactment"].mean()),
            "pose_deg": math.degrees(float((raw_r[:, :3] - raw_t[:, :3]).abs().mean())),
            "expression": float((raw_r[:, 3:] - raw_t[:, 3:]).abs().mean()),
            "identity": float(identity_similarity(trainer.identity.embed(images, points), desc_s).mean())}


def quality_table(steps: int, pairs: int, device: str) -> None:
    backend = load_landmark_backend("faceapi", device=device)
    base = dict(layers=2, expression_dims=4, fit_samples=64, batch_size=4, learning_rate=3e-2,
                perceptual="uncalibrated-alex", truncation_psi=1.0)
    from models.losses import IdentityLoss

    identity = IdentityLoss()  # measures identity similarity in both runs (it trains only with lambda_id 1)
    rows = []
    for name, lambda_id in (("A trained, lambda_id = 1", 1.0), ("A trained, lambda_id = 0", 0.0)):
        G = WarpFaceGenerator().to(device)
        trainer = DirectionsTrainer.start(G, backend, DirectionsConfig(**base, lambda_id=lambda_id),
                                          identity=identity)
        if not rows:
            saved = trainer.A.weight.detach().clone()
            rows.append(("A = 0 (source unmoved)", quality(trainer, pairs), float("nan")))
            trainer.A.weight.data.copy_(saved)
        began = time.perf_counter()
        trainer.train(steps)
        seconds = (time.perf_counter() - began) / steps
        rows.append((name, quality(trainer, pairs), seconds))
    print(f"\n1. quality on the warp-face generator ({steps} steps, {pairs} held-out pairs, half "
          "one-attribute)")
    print(f"{'A':28s} {'L_r':>8s} {'pose err deg':>13s} {'exp err':>9s} {'id sim':>8s} {'s/step':>8s}")
    for name, q, seconds in rows:
        print(f"{name:28s} {q['reenactment']:8.4f} {q['pose_deg']:13.2f} {q['expression']:9.4f} "
              f"{q['identity']:8.4f} {seconds:8.3f}")
    zero = rows[0][1]["reenactment"]
    for name, q, _ in rows[1:]:
        print(f"  {name}: L_r {zero / q['reenactment']:.2f}x lower than A = 0")


@torch.no_grad()
def speed_directions(G, fit_points: torch.Tensor, points: torch.Tensor, batch: int, device: str) -> float:
    from models.directions import DirectionMatrix, PoseVector

    pose = PoseVector.fit(fit_points, expression_dims=8).to(device)
    A = DirectionMatrix(pose.dims, G.num_ws, G.w_dim, min(8, G.num_ws), init_std=0.01).to(device)
    w = G.w_avg.expand(1, G.num_ws, -1)
    pts = points.to(device)
    _sync(device)
    began = time.perf_counter()
    p0 = pose(pts[:1])
    for first in range(0, len(pts), batch):
        dp = pose(pts[first:first + batch]) - p0
        G.synthesis(w + A(dp), noise_mode="const")
    _sync(device)
    return (time.perf_counter() - began) / len(pts)


@torch.no_grad()
def speed_mapping(G, points: torch.Tensor, batch: int, device: str) -> float:
    from models.mapping import LandmarkMappingNetwork, reenact_with_mapping

    net = LandmarkMappingNetwork(num_ws=G.num_ws, w_dim=G.w_dim).to(device)
    w = G.w_avg.expand(G.num_ws, -1)
    _sync(device)
    began = time.perf_counter()
    reenact_with_mapping(G, net, w, points[0], points, batch, on_images=lambda first, images: None)
    _sync(device)
    return (time.perf_counter() - began) / len(points)


def speed_projection(G, backend, points: torch.Tensor, steps: int, device: str) -> float:
    from models.projection import ProjectionConfig, Projector

    R = G.img_resolution
    image, _ = face_crop()
    look = torch.nn.functional.interpolate(image[None], size=(R, R), mode="area").to(device)
    config = ProjectionConfig(steps_first=steps, steps_next=steps, perceptual="uncalibrated-alex",
                              early_stop_patience=0)
    projector = Projector(G, config, look=look, source_landmarks=points[0].numpy(),
                          init_latent=G.w_avg.expand(G.num_ws, -1), landmark_resolution=R, landmarks=backend)
    _sync(device)
    began = time.perf_counter()
    projector.project_frames(0, points.numpy())
    _sync(device)
    return (time.perf_counter() - began) / len(points)


def speed_table(names: list[str], frames: int, projection_steps: int, device: str) -> None:
    backend = load_landmark_backend("faceapi", device=device)
    _, base = face_crop()
    print(f"\n2. seconds per output frame ({frames} frames, batch 8; projection {projection_steps} "
          "steps/frame on the first 4)")
    print(f"{'generator':16s} {'directions':>11s} {'mapping':>9s} {'projection':>11s} {'proj/dir':>9s}")
    g = torch.Generator().manual_seed(0)
    for name in names:
        G = GENERATORS[name]().to(device).eval()
        R = G.img_resolution
        scale = R / 64
        motion = torch.randn(max(frames, 16), 68, 2, generator=g) * 0.5
        points = (torch.tensor(base, dtype=torch.float32) + 0.5) * scale - 0.5 + motion * scale
        d = speed_directions(G, points, points[:frames], 8, device)
        m = speed_mapping(G, points[:frames], 8, device)
        p = speed_projection(G, backend, points[:min(frames, 4)], projection_steps, device) \
            if projection_steps > 0 else float("nan")
        print(f"{name:16s} {d:11.4f} {m:9.4f} {p:11.3f} {p / d:9.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--projection-steps", type=int, default=50)
    parser.add_argument("--generators", default="tiny 32,256 paper256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
    if not args.skip_quality:
        quality_table(args.steps, args.pairs, args.device)
    names = [n for n in args.generators.split(",") if n]
    speed_table(names, args.frames, args.projection_steps, args.device)
    np.set_printoptions(precision=4)


if __name__ == "__main__":
    main()
