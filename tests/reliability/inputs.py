"""Bad inputs for the reliability suite, and the good ones they are made from.

`Inputs` is made once per test session (the `reliability_inputs` fixture of tests/conftest.py): a
short clip with a face (4 frames, 128 px), the astronaut photo, a tiny generator saved as a native
checkpoint (32 px), and a cache where the clip is prepared at 32 px (landmarks + crops), which cache
cases copy and damage.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CLIP_FRAMES = 4


@dataclass
class Inputs:
    root: Path
    clip: Path        # 4 frames with a face
    face: Path        # the astronaut photo (one face)
    weights: Path     # tiny generator, native .safetensors
    prepared: Path    # cache with the clip prepared at 32 px

    def copy_prepared(self, dst: Path) -> Path:
        shutil.copytree(self.prepared, dst)
        return dst


def make(root: Path) -> Inputs:
    from flows.prepare import prepare_video
    from storage.images import save_image
    from tests.clips import photo, write_test_clip
    from tests.reenact_data import tiny_weights

    clip = root / "clip.mp4"
    write_test_clip(clip, "mouth", frames=CLIP_FRAMES, size=128)
    face = save_image(root / "face.png", photo())
    weights = tiny_weights(root)
    prepared = root / "prepared"
    prepare_video(str(clip), str(prepared), resolution=32, device="cpu")
    return Inputs(root, clip, face, weights, prepared)


# ------------------------------------------------------------------------------------ bad files
def png_header_only(path: Path, width: int, height: int) -> Path:
    """A tiny PNG whose header declares width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    return path


def audio_only(path: Path) -> Path:
    from storage.video import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", "sine=frequency=440:duration=0.3",
                    "-c:a", "aac", str(path)], check=True)
    return path


def blank_clip(path: Path, frames: int = 3) -> Path:
    """A clip of flat grey frames: no face anywhere."""
    from storage.video import VideoWriter

    with VideoWriter(path, 25) as writer:
        for _ in range(frames):
            writer.write(np.full((96, 128, 3), 118, np.uint8))
    return path


def two_faces(path: Path) -> Path:
    """The astronaut twice, side by side: an image with two faces."""
    from storage.images import save_image
    from tests.clips import photo

    half = photo()[::2, ::2]
    return save_image(path, np.concatenate([half, half[:, ::-1]], axis=1))
