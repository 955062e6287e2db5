"""Inputs shared by the reenact tests: a tiny generator (32 px) saved as a native checkpoint, the
bundled astronaut photo as the source, and short synthetic driving clips (one with audio and a frame
without a face), with the short settings every test run uses."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from flows.samples import sample_path

FPS = 25
# Few steps, the uncalibrated AlexNet LPIPS (no weights in tests), one thread (conftest).
OPTIONS = {"steps_first": 4, "steps_next": 2, "invert_steps": 3, "perceptual": "uncalibrated-alex"}
CLI_OPTIONS = ["--steps-first", "4", "--steps-next", "2", "--invert-steps", "3",
               "--perceptual", "uncalibrated-alex", "--device", "cpu", "--quiet"]


def source() -> Path:
    return sample_path("astronaut.jpg")


def tiny_weights(root: Path) -> Path:
    from models.checkpoints import save_native
    from tests.tiny import tiny_generator

    path = root / "tiny-G.safetensors"
    if not path.is_file():
        save_native(tiny_generator(), path)
    return path


def tone(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """A 440 Hz mono WAV (the driving clip's audio)."""
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def driving_clip(path: Path, frames: int = 6, blank: tuple[int, ...] = (), audio: bool = False) -> Path:
    """A synthetic clip of the astronaut moving ("all"), 256 x 256 at 25 fps; `blank` frames show no
    face; `audio` adds a tone."""
    from storage.video import VideoWriter
    from tests.clips import clip_frames

    images, _ = clip_frames("all", frames, blank)
    audio_from = tone(path.with_suffix(".wav")) if audio else None
    with VideoWriter(path, FPS, audio_from=audio_from) as writer:
        for image in images:
            writer.write(image)
    return path


def reenact_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "media").glob("*/reenact-*"))


def table_chunks(cache: Path) -> dict[str, int]:
    """Modification times of every chunk file of the reenact tables."""
    return {str(p): p.stat().st_mtime_ns for d in reenact_dirs(cache) for p in d.rglob("*")
            if p.is_file() and "/c/" in str(p)}
