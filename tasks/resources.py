"""Heavy models, loaded once per process and shared by every task that needs them.

Tasks ask here instead of loading weights themselves: a flow over a hundred videos loads the
landmark net once, and a worker process running many task runs keeps it warm. Keyed by what makes
them differ (name, weights file, resolved device); `clear()` forgets them (tests, freeing a GPU).
Nothing here imports Prefect: the cache is a plain functools.lru_cache.
"""

from __future__ import annotations

from functools import lru_cache

from models.checkpoints import load_generator, resolve_weights
from models.detection import DEFAULT_DETECTOR, FaceDetector, make_detector
from models.device import resolve_device
from models.landmarks import LandmarkBackend, load_landmark_backend
from models.stylegan2 import Generator
from storage.provenance import sha256_file

__all__ = ["clear", "face_detector", "generator", "landmark_backend"]


def landmark_backend(name: str = "faceapi", device: str = "auto",
                     weights: str | None = None) -> LandmarkBackend:
    """The landmark backend `name` on `device` ("auto", "cpu", "cuda", ...), in eval mode, shared."""
    return _landmark_backend(name, str(resolve_device(device)), weights)


@lru_cache(maxsize=8)
def _landmark_backend(name: str, device: str, weights: str | None) -> LandmarkBackend:
    return load_landmark_backend(name, device=device, weights=weights).requires_grad_(False)


@lru_cache(maxsize=8)
def face_detector(name: str = DEFAULT_DETECTOR) -> FaceDetector:
    """The face detector `name` with its default settings, shared (detectors hold no per-video state)."""
    return make_detector(name)


def generator(weights: str, device: str = "auto") -> Generator:
    """The StyleGAN2 generator of a checkpoint file or registered name on `device`, shared. Keyed by
    the file's sha256 as well, so a file replaced under the same name is loaded again."""
    path = resolve_weights(weights).resolve()
    return _generator(str(path), sha256_file(path), str(resolve_device(device)))


@lru_cache(maxsize=4)
def _generator(path: str, sha256: str, device: str) -> Generator:
    return load_generator(path, device=device)


def clear() -> None:
    """Forget every loaded model."""
    _landmark_backend.cache_clear()
    face_detector.cache_clear()
    _generator.cache_clear()
