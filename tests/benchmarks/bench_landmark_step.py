"""Seconds per optimisation step of the projection objective, per landmark setting, side by side in one
run (CPU, one thread by default), against a re-statement of the step of Uzolas's code.

    python tests/benchmarks/bench_landmark_step.py [--steps 4] [--fan-modules 4] [--threads 1]
                                                   [--generator ../shared/fixtures/stylegan2/sg2_tiny256.pkl]
                                                   [--seed-code CHECKOUT] [--fan-weights 2DFAN4.pth.tar]

Generator: the 256 px official-format fixture (tiny channels, 14 ws), so FAN's 256 x 256 input is the
image itself, as at 256 px in production; random FAN weights (FAN(--fan-modules), 4 = 2DFAN4's
architecture) and the uncalibrated VGG LPIPS (the calibrated one's architecture and cost). Speed does
not depend on the weights.

Rows (each: a later frame of `Projector.project_frames` from a warm start, `steps_next` steps, early
stopping off; s/step is the mean interval between the step callbacks, so the frame's one-off target
and final-evaluation passes are not in it; the seed-equivalent step is timed before and after the rows
and their mean is the reference):
  coordinates / faceapi          landmark_form "coordinates" with the face-api net (the default)
  coordinates / FAN soft-argmax  the same with FAN's soft-argmax points
  heatmaps / FAN                 Uzolas 2021's heatmap loss on FAN's 64 x 64 heatmaps
each with `fan_flip` on/off (FAN rows) and `landmark_input` unit/minmax, at `lpips_every` 1 (LPIPS every
step, as the seed) and at our default `lpips_every` (the "ours, defaults" column).

"seed-equivalent step": a statement, written here, of what one step of lukasuz/stylegan2-landmark-
projection (projector_video.py `project`, facial_landmark_extractor.py `get_heat_map`) computes,
on this generator, FAN and VGG: G.synthesis of w + w noise with fixed noise maps; the image scaled
to [0, 255]; VGG LPIPS features against the look's, squared-difference sum; the image resized to
256 (nearest; a copy at 256 px), min-max normalised over the batch, FAN's raw network (no flip, no
crop: face-alignment's `face_alignment_net` directly); the weighted heatmap L2; the Charbonnier
fidelity and smoothness sums; NVIDIA's noise regulariser over the noise maps; backward; Adam; the
noise maps renormalised. It is not that repository's code; the ratio column is the row's s/step over
this one's, unless:

--seed-code CHECKOUT: a checkout of lukasuz/stylegan2-landmark-projection (e.g. `git archive` of it
into /tmp; never copied into this repository): its own `project` is timed too, on the same pickle
(its legacy.py and NVIDIA's network classes), the same FAN network (its FacialLandmarksExtractor,
with face-alignment's FaceAlignment, which would download weights and a detector, replaced by a
holder of our FAN) and our VGG features in the place of NVIDIA's vgg16.pt (a download), and the
ratios are over its s/step.

--fan-weights: with FAN's trained weights (face-alignment's 2DFAN4 file) also measure what the flip
buys: the NME of FAN's points, flip on and off, against dlib's 68 points of scikit-image's astronaut
(../shared/fixtures/faces), on the photo and on its mirror image and two rescaled crops.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from models.checkpoints import load_generator  # noqa: E402
from models.landmarks import load_landmark_backend  # noqa: E402
from models.landmarks.base import group_weights  # noqa: E402
from models.landmarks.fan import FanLandmarks  # noqa: E402
from models.losses import PerceptualLoss, noise_regularization, normalize_noise_  # noqa: E402
from models.projection import CHARBONNIER_EPS, ProjectionConfig, Projector  # noqa: E402
from tests.support.landmarks import random_fan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "stylegan2" / "sg2_tiny256.pkl"


def random_fan_backend(modules: int) -> FanLandmarks:
    """FAN with `modules` hourglasses and random weights (tests/support/landmarks.py), flip off."""
    return FanLandmarks(random_fan(modules), "random", "random", flip_input=False).requires_grad_(False)


class Case:
    """The generator, a look, a driving crop and its points, a warm start: shared by every row."""

    def __init__(self, G, perceptual: PerceptualLoss, faceapi) -> None:
        self.G, self.perceptual, self.faceapi = G, perceptual, faceapi
        g = torch.Generator().manual_seed(5)
        ws = G.mapping(torch.randn(3, G.z_dim, generator=g), truncation_psi=0.7)
        with torch.no_grad():
            images = G.synthesis(ws)
        crops = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
        self.ws, self.look, self.driving = ws, crops[0].numpy(), crops[1:].numpy()  # frames 0, 1
        with torch.no_grad():
            self.points = faceapi((images[1:] + 1) / 2).points

    def projector(self, backend, **settings) -> Projector:
        config = ProjectionConfig(relative_landmarks=False, early_stop_patience=0, steps_first=0,
                                  perceptual="uncalibrated", **settings)
        projector = Projector(self.G, config, look=self.look, init_latent=self.ws[0], landmarks=backend,
                              perceptual=self.perceptual)
        return projector

    def ours(self, backend, steps: int, **settings) -> float:
        """Seconds per step of a later frame (frame 1, warm-started at frame 0's latent)."""
        projector = self.projector(backend, steps_next=steps + 1, **settings)
        heatmaps = settings.get("landmark_form") == "heatmaps"
        frames = {"driving_images": self.driving} if heatmaps else {"driving_points": self.points}
        first = {k: v[:1] for k, v in frames.items()}
        projector.project_frames(0, **first)  # frame 0, no steps: the noise maps frozen
        stamps: list[float] = []
        projector.project_frames(1, **{k: v[1:] for k, v in frames.items()},
                                 callback=lambda step: stamps.append(time.perf_counter()))
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        return sum(gaps) / len(gaps)

    def seed_step(self, fan_net: torch.nn.Module, steps: int) -> float:
        """The re-statement of one step of Uzolas's code (see the module docstring)."""
        G = self.G
        weights = group_weights(ProjectionConfig().group_weight_dict())[None, :, None, None]
        noise = [torch.randn(1, 1, layer.resolution, layer.resolution)
                 for _, layer in G.synthesis.noise_layers()]
        look = torch.from_numpy(self.look).permute(2, 0, 1)[None].float()
        with torch.no_grad():
            target_features = self.perceptual.features(look / 127.5 - 1)

            def heat_map(img: torch.Tensor) -> torch.Tensor:  # get_heat_map
                img = torch.nn.functional.interpolate(img, 256)
                img = img - img.min()
                img = img / img.max()
                out = fan_net(img)
                return out[-1] if isinstance(out, (list, tuple)) else out

        with torch.no_grad():
            target_heatmap = heat_map(torch.from_numpy(self.driving[:1]).permute(0, 3, 1, 2).float())
        w_avg = G.mapping.w_avg.reshape(1, 1, -1).expand(1, G.num_ws, -1)
        w_prev = self.ws[:1].clone()
        w_opt = self.ws[:1].clone().requires_grad_(True)
        optimizer = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=0.1)
        stamps = []
        for _ in range(steps + 1):
            ws = w_opt + torch.randn_like(w_opt) * 0.01
            synth = G.synthesis(ws, noise=noise)
            fidelity = torch.sum(torch.sqrt((w_avg - w_opt) ** 2 + CHARBONNIER_EPS))
            synth = (synth + 1) * (255 / 2)
            dist = self.perceptual.distance(synth / 127.5 - 1, target_features).sum()
            smoothness = torch.sum(torch.sqrt((w_prev - w_opt) ** 2 + CHARBONNIER_EPS))
            landmark = ((target_heatmap - heat_map(synth)) * weights).square().sum().sqrt()
            reg = noise_regularization(noise).sum()
            loss = dist + reg * 1e5 + landmark * 0.1 + fidelity * 0.05 + smoothness * 0.05
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                normalize_noise_(noise)
            stamps.append(time.perf_counter())
        gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
        return sum(gaps) / len(gaps)


def seed_code_step(path: str, generator: str, case: Case, fan_net: torch.nn.Module, steps: int) -> float:
    """Seconds per step of Uzolas's own `project` (projector_video.py of a checkout at `path`, never
    copied into this repository), on the same pickle (loaded by its own legacy.py), the same FAN
    network (its FacialLandmarksExtractor, with face-alignment's FaceAlignment replaced by a holder of
    our FAN, as face-alignment would download its weights and detector) and our VGG LPIPS features in
    the place of NVIDIA's vgg16.pt (also a download). A later frame (first_iter False): the difference
    of 1 + steps and 1 step calls, over steps."""
    import types

    import numpy as np

    sys.path.insert(0, str(Path(path).resolve()))
    if "numpy.lib.arraysetops" not in sys.modules:  # numpy 2 dropped the module the code imports from
        shim = types.ModuleType("numpy.lib.arraysetops")
        shim.isin = np.isin
        sys.modules["numpy.lib.arraysetops"] = shim
    import face_alignment
    import legacy
    import projector_video
    from facial_landmark_extractor import FacialLandmarksExtractor

    def last_heatmaps(x: torch.Tensor) -> torch.Tensor:  # the code subtracts the net's outputs: a tensor,
        out = fan_net(x)                                   # as the face-alignment it ran with returned
        return out[-1] if isinstance(out, (list, tuple)) else out

    saved = face_alignment.FaceAlignment
    face_alignment.FaceAlignment = lambda *a, **k: types.SimpleNamespace(face_alignment_net=last_heatmaps)
    try:
        fle = FacialLandmarksExtractor(device="cpu", landmark_weights=list(ProjectionConfig().group_weights))
    finally:
        face_alignment.FaceAlignment = saved
    with open(generator, "rb") as f:
        G = legacy.load_network_pkl(f)["G_ema"]

    def vgg16(images: torch.Tensor, resize_images: bool = False, return_lpips: bool = True) -> torch.Tensor:
        return torch.cat([f.flatten(1) for f in case.perceptual.features(images / 127.5 - 1)], dim=1)

    target = torch.from_numpy(case.look).permute(2, 0, 1).float()
    driving = torch.from_numpy(case.driving[0]).permute(2, 0, 1).float()
    common = dict(device=torch.device("cpu"), vgg16=vgg16, lpips_weight=1.0, landmark_weight=0.1,
                  fidelity_weight=0.05, smoothness_weight=0.05)
    w_opt, w_std, w_avg, noise, vgg, features, _ = projector_video.project(
        G, None, fle, target, driving, num_steps=1, w_avg_tensor=None, **common)  # frame 0: w stats, noise
    times = []
    for n in (1, 1 + steps):
        began = time.perf_counter()
        projector_video.project(G, None, fle, target, driving, num_steps=n, w_opt=w_opt, w_std=w_std,
                                w_avg_tensor=w_avg, noise_bufs=noise, target_features=features,
                                first_iter=False, **common)
        times.append(time.perf_counter() - began)
    return (times[1] - times[0]) / steps


def flip_accuracy(path: str) -> None:
    """NME of trained FAN's points, flip on/off, against dlib's on the astronaut (and variants)."""
    import numpy as np
    import skimage.data

    from models.face_shape import MIRROR_68
    from models.metrics import landmark_nme

    faces = ROOT.parent / "shared" / "fixtures" / "faces"
    reference = np.load(faces / "astronaut_dlib68.npy").astype(np.float32)
    image = skimage.data.astronaut()
    box = torch.tensor([[*reference.min(axis=0), *reference.max(axis=0)]], dtype=torch.float32)
    cases = {"photo": (image, reference, box)}
    mirrored = reference[MIRROR_68].copy()
    mirrored[:, 0] = image.shape[1] - 1 - mirrored[:, 0]
    cases["mirror"] = (image[:, ::-1].copy(), mirrored,
                       torch.tensor([[*mirrored.min(axis=0), *mirrored.max(axis=0)]]))
    for scale in (0.5, 0.25):
        small = torch.nn.functional.interpolate(torch.from_numpy(image).permute(2, 0, 1)[None].float(),
                                                scale_factor=scale, mode="area")[0].permute(1, 2, 0)
        pts = (reference + 0.5) * scale - 0.5
        cases[f"x{scale}"] = (small.round().byte().numpy(), pts, box * scale)
    print("\nflip benefit (trained FAN): NME to dlib's 68 points")
    print("| image | flip off | flip on |")
    print("|---|---|---|")
    for name, (img, pts, b) in cases.items():
        x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255
        row = []
        for flip in (False, True):
            backend = FanLandmarks.from_weights(path, flip_input=flip)
            with torch.no_grad():
                found = backend(x, b.float()).points
            row.append(float(landmark_nme(found, torch.from_numpy(pts)[None])[0]))
        print(f"| {name} | {row[0]:.4f} | {row[1]:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4,
                        help="timed steps per row (a multiple of the default lpips_every: 4)")
    parser.add_argument("--fan-modules", type=int, default=4,
                        help="hourglasses of the random FAN (2DFAN4: 4)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--generator", default=str(FIXTURE))
    parser.add_argument("--fan-weights", help="trained FAN weights: also measure the flip's accuracy benefit")
    parser.add_argument("--seed-code", metavar="PATH",
                        help="a checkout of lukasuz/stylegan2-landmark-projection: also time its own step")
    parser.add_argument("--quick", action="store_true", help="unit inputs only, flip rows for FAN only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    G = load_generator(args.generator)
    faceapi = load_landmark_backend("faceapi").requires_grad_(False)
    perceptual = PerceptualLoss.from_choice("uncalibrated")
    case = Case(G, perceptual, faceapi)
    print(f"generator {Path(args.generator).name} ({G.img_resolution} px, {G.num_ws} ws), "
          f"FAN({args.fan_modules}) random, LPIPS VGG (uncalibrated), {args.threads} thread(s), "
          f"{args.steps} timed steps per row\n")
    began = time.perf_counter()
    fan = random_fan_backend(args.fan_modules)
    fans = {False: fan, True: fan.with_flip(True)}  # the same network, mirrored copy run or not
    seed_before = case.seed_step(fans[False].net, args.steps)
    rows: list[tuple[str, str, str, float, float]] = []
    inputs = ("unit",) if args.quick else ("unit", "minmax")
    for form, name in (("coordinates", "faceapi"), ("coordinates", "FAN soft-argmax"), ("heatmaps", "FAN")):
        for flip in ((None,) if name == "faceapi" else (False, True)):
            for mode in inputs:
                backend = faceapi if flip is None else fans[flip]
                settings = {"landmark_form": form, "landmark_input": mode}
                if flip is not None:
                    settings["fan_flip"] = flip
                every1 = case.ours(backend, args.steps, lpips_every=1, **settings)
                every2 = case.ours(backend, args.steps, **settings)
                rows.append((f"{form} / {name}", "-" if flip is None else ("on" if flip else "off"), mode,
                             every1, every2))
    seed_after = case.seed_step(fans[False].net, args.steps)  # before and after the rows: the load drifts
    seed = (seed_before + seed_after) / 2
    own = None
    if args.seed_code:
        own = seed_code_step(args.seed_code, args.generator, case, fans[False].net, args.steps)
    reference = own if own is not None else seed  # the ratios' denominator: the seed's own code if run
    print("| objective | flip | input | s/step (LPIPS every step) | vs seed | s/step (ours, defaults) "
          "| vs seed |")
    print("|---|---|---|---|---|---|---|")
    if own is not None:
        print(f"| Uzolas's own code (projector_video.project) | off | minmax | {own:.3f} | 1.00x | | |")
    print(f"| seed-equivalent step (re-statement; {seed_before:.3f} before the rows, {seed_after:.3f} after) "
          f"| off | minmax | {seed:.3f} | {seed / reference:.2f}x | | |")
    for objective, flip, mode, every1, every2 in rows:
        print(f"| {objective} | {flip} | {mode} | {every1:.3f} | {every1 / reference:.2f}x | {every2:.3f} | "
              f"{every2 / reference:.2f}x |")
    what = "Uzolas's own code's" if own is not None else "the seed-equivalent step's"
    print(f"\n(whole run {time.perf_counter() - began:.0f} s; 'vs seed' = s/step over {what}, measured in "
          "this run)")
    if args.fan_weights:
        flip_accuracy(args.fan_weights)


if __name__ == "__main__":
    main()
