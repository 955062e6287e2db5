"""Latent directions (models/directions.py, stages/train_directions.py) against the other modes:
directions vs mapping vs projection reenactment of the same driving clip with the same generator, side
by side in one run; the identity-loss ablation of A; seconds per frame on StyleGAN2 generators.

    python tests/benchmarks/bench_directions.py [--sections modes] [--device cpu] [--frames 24]
        [--directions-steps 300] [--mapping-steps 1500] [--projection-steps 300,50]
    python tests/benchmarks/bench_directions.py --sections ablation,speed [--steps 80] [--pairs 16]
        [--generators 'tiny 32,256 paper256']

1. modes (the default). The warp-face generator of the tests (tests/directions_data.py: the
   astronaut's face photo rotated, scaled, shifted and its mouth opened by linear functions of W+ rows
   0-1, tinted by rows 2-3; images are a real face, so landmarks, p and identity mean something).
   - directions: a directions file trained by the stage (stages/train_directions.train_to, the code
     `facereenact train-directions` runs) for --directions-steps steps (k = 2 layers, m_e = 4, batch 4,
     lr 3e-2, p fitted on --fit-samples images);
   - mapping: a landmark-to-latent network trained by the train-mapping stage
     (stages/train_mapping.plan_training + train_to, on a cache written through the real cache API by
     tests/mapping_cache.add_video) for --mapping-steps steps on --mapping-clips clips of the same
     generator (per clip a fixed tint, pose rows random per frame; latents known: no inversion);
   - projection: the identity variant with the CLI's schedule (--projection-steps first,next).
   The driving clip: --frames frames of a latent path (W+ rows 0-1 along a piecewise-linear path
   through 4 random latents: known pose and expression per frame; the driving clip's own tint). The
   source: the driving path's first pose with another tint, its true latent as its "inversion" (so
   the relative motion the modes apply lands on the driving frames, and the truth of every output
   frame is G(driving pose rows, source tint rows): the "truth" row). Each mode runs through the
   reenact stage functions the CLI's flow calls (stages/reenact_directions.directions_to_cache,
   stages/reenact.map_frames, stages/reenact.project: latents into a real reenact table), then one
   generator pass per frame (the render's, without the mp4: the CLI needs a generator checkpoint
   file, and this generator is code). Columns, over the output frames: seconds per output frame
   (stage + generator pass; training and loading not counted), landmark NME to the driving frames'
   landmarks (face-api on both, inter-ocular), pose error (mean |yaw, pitch, roll of the output -
   the driving frame's|, degrees: the paper's "Pose" column) and expression error (mean |e_out -
   e_drv| of the raw expression coefficients: its "Exp." column), both measured with the directions
   file's PoseVector (fitted on the generator's samples), and identity similarity to the source
   (models.metrics.identity_similarity_to_source: face-api descriptors, cosine; the paper's CSIM with
   our net). "source unmoved" (every frame = the source) and "truth" bound each column.
2. ablation: A trained for --steps steps with lambda_id = 1 and 0, and A = 0, on --pairs held-out
   (source, Δp) pairs of the warp-face generator: L_r, pose and expression error, identity similarity.
3. speed: random-weight StyleGAN2 generators (speed does not depend on the weights): seconds per
   output frame of directions (p of the driving landmarks, A, one generator pass; batched), mapping
   (network untrained) and projection (--projection-steps-speed Adam steps per frame). Quality numbers
   on random generators would mean nothing (their images are not faces), so none are shown.

LPIPS is the uncalibrated AlexNet everywhere (`--perceptual`: no torchvision weights offline). Default
one torch thread (the shared 2-core machine): `--threads 2` to compare.
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
    evaluate_reenactment,
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


# ---------------------------------------------------------------------------------------------------
# 1. The modes side by side on the warp-face generator


class _Synthesis(torch.nn.Module):
    """The warp-face generator's synthesis as the Projector wants it: a callable with
    `noise_layers()` (none: the warp has no noise inputs) that takes and ignores `noise=`."""

    def __init__(self, G: WarpFaceGenerator) -> None:
        super().__init__()
        self._G = [G]  # a list: not a registered submodule (no cycle)

    def noise_layers(self) -> list:
        return []

    def forward(self, ws: torch.Tensor, noise_mode: str = "const", noise=None, **_) -> torch.Tensor:
        return WarpFaceGenerator.synthesis(self._G[0], ws)


class BenchWarpFace(WarpFaceGenerator):
    """WarpFaceGenerator whose `synthesis` also has the Projector's interface (noise_layers())."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(seed)
        object.__setattr__(self, "synthesis", _Synthesis(self))


def _ws(pose_rows: torch.Tensor, tint_rows: torch.Tensor) -> torch.Tensor:
    """(T, 4, w_dim) warp-face latents: rows 0-1 (pose, mouth) and rows 2-3 (tint)."""
    return torch.stack([pose_rows, pose_rows, tint_rows, tint_rows], dim=1)


def driving_clip(G, frames: int, seed: int) -> dict[str, torch.Tensor]:
    """A latent path: pose rows piecewise linear through 4 random latents, the driving clip's own tint;
    the source: the path's first pose with another tint; the truth: the path's pose, the source's tint."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.randn(4, G.w_dim, generator=g)
    tint_drv, tint_src = torch.randn(2, G.w_dim, generator=g)
    t = torch.linspace(0, 3, frames)
    i = t.floor().clamp(max=2).long()
    f = (t - i)[:, None]
    path = anchors[i] + f * (anchors[i + 1] - anchors[i])
    return {"driving": _ws(path, tint_drv.expand(frames, -1)),
            "source": _ws(path[:1], tint_src[None]),
            "truth": _ws(path, tint_src.expand(frames, -1))}


@torch.no_grad()
def render(G, latents: torch.Tensor, batch: int = 8) -> torch.Tensor:
    """(T, 3, R, R) images of latents, `batch` per generator pass (the render's pass, no mp4)."""
    from models.reenact import synthesize

    return torch.cat([synthesize(G, latents[i:i + batch], None) for i in range(0, len(latents), batch)])


@torch.no_grad()
def measure(images: torch.Tensor, backend, pose, drv_points: torch.Tensor, source_image: torch.Tensor,
            source_points: torch.Tensor, identity) -> dict[str, float]:
    """The quality columns of output frames against the driving frames and the source."""
    from models.metrics import identity_similarity_to_source, landmark_nme

    points = torch.cat([landmarks_of(backend, images[i:i + 16].to(source_image.device)).cpu()
                        for i in range(0, len(images), 16)])
    raw_o, raw_d = pose.raw(points.to(pose.low.device)).cpu(), pose.raw(drv_points.to(pose.low.device)).cpu()
    sim = identity_similarity_to_source(images, source_image.cpu(), points, source_points[0].cpu(),
                                        identity=identity)
    return {"nme": float(landmark_nme(points, drv_points).mean()),
            "pose_deg": math.degrees(float((raw_o[:, :3] - raw_d[:, :3]).abs().mean())),
            "expression": float((raw_o[:, 3:] - raw_d[:, 3:]).abs().mean()),
            "identity": float(sim.mean())}


def train_mapping_network(G, backend, root: Path, clips: int, frames: int, steps: int, device: str,
                          seed: int = 7) -> tuple[Path, float]:
    """A mapping network for G trained by the train-mapping stage on a cache of `clips` clips of known
    latents (written by tests/mapping_cache.add_video). Returns (checkpoint, training seconds)."""
    from stages.train_mapping import plan_training, train_to
    from storage.cache import Workspace
    from tests.mapping_cache import add_video

    cache = root / "mapping-cache"
    ws = Workspace(cache)
    g = torch.Generator().manual_seed(seed)
    for c in range(clips):
        latents = _ws(torch.randn(frames, G.w_dim, generator=g),
                      torch.randn(G.w_dim, generator=g).expand(frames, -1))
        with torch.no_grad():
            points = torch.cat([landmarks_of(backend, G.synthesis(latents[i:i + 32].to(device))).cpu()
                                for i in range(0, frames, 32)])
        add_video(ws, f"warp-clip{c}.mp4", points.numpy(), latents.numpy(), generator=G.fingerprint(),
                  resolution=G.img_resolution)
    plan = plan_training(str(cache), {"batch_size": 32, "held_out": 0.0})
    out = root / "mapping.pt"
    began = time.perf_counter()
    train_to(out, plan, steps, checkpoint_every=steps, device=device, log=lambda line: None)
    return out, time.perf_counter() - began


def modes_table(args: argparse.Namespace) -> None:
    import tempfile

    from models.reenact import (
        SourceFace,
        load_mapping,
        make_projector,
        mapping_provenance,
        projection_config,
        projection_provenance,
    )
    from stages.reenact import map_frames, project
    from stages.reenact_directions import directions_provenance, directions_to_cache, load_directions
    from stages.train_directions import train_to
    from storage.cache import DONE, Workspace
    from storage.reenact import ReenactCache

    device = args.device
    backend = load_landmark_backend("faceapi", device=device)
    G = BenchWarpFace().to(device).eval()
    from models.losses import IdentityLoss

    identity = IdentityLoss().to(device)
    clip = driving_clip(G, args.frames, args.seed)
    T = args.frames
    with torch.no_grad():
        drv_images = render(G, clip["driving"])
        src_image = render(G, clip["source"])
        drv_points = torch.cat([landmarks_of(backend, drv_images[i:i + 16].to(device)).cpu()
                                for i in range(0, T, 16)])
        src_points = landmarks_of(backend, src_image.to(device)).cpu()
    source = SourceFace(((src_image[0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy(),
                        src_points[0].numpy(), clip["source"][0].numpy())
    root = Path(tempfile.mkdtemp(prefix="bench-directions-"))
    try:
        # one-time costs: training the directions and the mapping network for this generator
        config = DirectionsConfig(layers=2, expression_dims=4, fit_samples=args.fit_samples, batch_size=4,
                                  learning_rate=3e-2, perceptual=args.perceptual, truncation_psi=1.0)
        began = time.perf_counter()
        train_to(root / "directions.pt", G, backend, config, args.directions_steps,
                 checkpoint_every=args.directions_steps, log=lambda line: None)
        directions_seconds = time.perf_counter() - began
        # train_to's own held-out check uses max(4, batch) pairs: too few to read; 32 here
        ev = evaluate_reenactment(DirectionsTrainer.resume(root / "directions.pt", G, backend, config,
                                                           identity=identity), pairs=32)
        mapping_path, mapping_seconds = train_mapping_network(G, backend, root, args.mapping_clips, 64,
                                                              args.mapping_steps, device)
        A, pose, sha = load_directions(root / "directions.pt", G, backend.provenance())
        net, mapping_sha = load_mapping(mapping_path, G)
        ws = Workspace(root / "cache")
        first, nxt = (int(v) for v in args.projection_steps.split(","))
        points = drv_points.numpy()

        def run_directions(table_key: str) -> ReenactCache:
            prov = directions_provenance(G, A, pose, sha, backend.provenance(), "bench-driving",
                                         "bench-source", None)
            table = ReenactCache.require(ws, table_key, prov, T, G.num_ws, G.w_dim)
            directions_to_cache(A, pose, table, source.latent, points)
            return table

        def run_mapping(table_key: str) -> ReenactCache:
            prov = mapping_provenance(G, net, mapping_sha, backend, True, 0, None, "bench-driving",
                                      "bench-source", None)
            table = ReenactCache.require(ws, table_key, prov, T, G.num_ws, G.w_dim)
            map_frames(G, net, table, source, points, relative=True)
            return table

        def run_projection(table_key: str) -> ReenactCache:
            projector = make_projector(G, projection_config("identity", steps_first=first, steps_next=nxt,
                                                            perceptual=args.perceptual), source,
                                       landmarks=backend)
            prov = projection_provenance(projector, "bench-driving", "bench-source", None)
            table = ReenactCache.require(ws, table_key, prov, T, G.num_ws, G.w_dim)
            project(projector, table, points)
            return table

        rows = []
        for name, run in (("directions", run_directions), ("mapping", run_mapping),
                          ("projection", run_projection)):
            _sync(device)
            began = time.perf_counter()
            table = run(name[0] * 64)
            done = np.flatnonzero(table.table.status() == DONE)
            images = render(G, torch.from_numpy(table.read("latents", done)))
            _sync(device)
            seconds = (time.perf_counter() - began) / T
            q = measure(images, backend, pose, drv_points[done], src_image, src_points, identity)
            rows.append((name, q, seconds, f"{len(done)}/{T}"))
        for name, latents in (("source unmoved", clip["source"].expand(T, -1, -1)), ("truth", clip["truth"])):
            rows.append((name, measure(render(G, latents), backend, pose, drv_points, src_image, src_points,
                                       identity), float("nan"), f"{T}/{T}"))
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    print(f"\n1. modes on the warp-face generator: one driving clip of {T} frames (latent path, seed "
          f"{args.seed}), the same source; device {device}")
    print(f"   directions: {args.directions_steps} steps by stages/train_directions.train_to in "
          f"{directions_seconds:.0f} s (L_r on 32 held-out pairs {ev['reenactment']:.4f}, A = 0 "
          f"{ev['baseline_reenactment']:.4f}: {ev['baseline_reenactment'] / ev['reenactment']:.2f}x lower)")
    print(f"   mapping: {args.mapping_steps} steps by stages/train_mapping.train_to on {args.mapping_clips} "
          f"clips x 64 frames in {mapping_seconds:.0f} s (making its data not counted)")
    print(f"   projection: identity variant, {first} steps on frame 0, {nxt} on each later one")
    print(f"{'mode':16s} {'s/frame':>9s} {'NME drv':>8s} {'pose deg':>9s} {'exp |de|':>9s} "
          f"{'id sim':>7s} {'frames':>7s}")
    for name, q, seconds, frames in rows:
        print(f"{name:16s} {seconds:9.4f} {q['nme']:8.4f} {q['pose_deg']:9.2f} {q['expression']:9.4f} "
              f"{q['identity']:7.4f} {frames:>7s}")
    d, p = rows[0][2], rows[2][2]
    print(f"  projection / directions seconds per frame: {p / d:.0f}x; mapping / directions: "
          f"{rows[1][2] / d:.2f}x")


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
    print(f"\n2. ablation: quality on the warp-face generator ({steps} steps, {pairs} held-out pairs, half "
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
    from models.mapping.inference import reenact_with_mapping
    from models.mapping.network import LandmarkMappingNetwork

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
    print(f"\n3. speed: seconds per output frame ({frames} frames, batch 8; projection {projection_steps} "
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
    parser.add_argument("--sections", default="modes", help="comma-separated: modes, ablation, speed")
    parser.add_argument("--frames", type=int, default=24, help="driving frames (modes; speed: frames timed)")
    parser.add_argument("--seed", type=int, default=3, help="modes: the driving path's seed")
    parser.add_argument("--directions-steps", type=int, default=300)
    parser.add_argument("--fit-samples", type=int, default=256)
    parser.add_argument("--mapping-steps", type=int, default=1500)
    parser.add_argument("--mapping-clips", type=int, default=8)
    parser.add_argument("--projection-steps", default="300,50", help="modes: steps on frame 0, on later ones")
    parser.add_argument("--perceptual", default="uncalibrated-alex")
    parser.add_argument("--steps", type=int, default=80, help="ablation: training steps")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--projection-steps-speed", type=int, default=50)
    parser.add_argument("--generators", default="tiny 32,256 paper256")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - {"modes", "ablation", "speed"}
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}")
    print(f"torch {torch.__version__}, {args.threads} thread(s), device {args.device}")
    if "modes" in sections:
        modes_table(args)
    if "ablation" in sections:
        quality_table(args.steps, args.pairs, args.device)
    if "speed" in sections:
        names = [n for n in args.generators.split(",") if n]
        speed_table(names, min(args.frames, 8), args.projection_steps_speed, args.device)

if __name__ == "__main__":
    main()
