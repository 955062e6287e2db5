"""Reading TF.js weight files (a weights manifest JSON plus its binary shards) into numpy arrays.

The face-api networks ship in this format (models/assets/faceapi/). A manifest is a JSON list of
groups; each group names its shard files (`paths`, relative to the manifest) and its tensors
(`weights`: name, shape, dtype, optional `quantization`). The shards of a group, concatenated in
order, hold the tensors back to back in manifest order, each little-endian, in its quantised dtype
when it has one:

    uint8 / uint16 quantisation:  value = q * scale + min      (float32 result)
    float16 quantisation:         value = float(q)

Arrays keep TF's layouts (conv filters HWIO, depthwise HWC1, dense [in, out]); the ports transpose.
Any inconsistency (bad JSON, missing or short shard, unknown dtype) is a one-line CheckpointError
naming the file.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

from storage.errors import CheckpointError, WeightsMissingError
from storage.provenance import sha256_file

# dtype name in a manifest -> numpy dtype of the stored bytes (little-endian)
_STORED_DTYPES = {
    "float32": np.dtype("<f4"),
    "int32": np.dtype("<i4"),
    "uint8": np.dtype("u1"),
    "uint16": np.dtype("<u2"),
    "float16": np.dtype("<f2"),
    "bool": np.dtype("u1"),
}


def _parse_manifest(manifest: Path) -> list[dict]:
    if not manifest.is_file():
        raise WeightsMissingError("TF.js weights manifest not found", path=manifest)
    try:
        groups = json.loads(manifest.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"not a TF.js weights manifest (bad JSON: {err})", path=manifest) from None
    if not isinstance(groups, list) or not groups or not all(
        isinstance(g, dict) and isinstance(g.get("paths"), list) and isinstance(g.get("weights"), list)
        for g in groups
    ):
        raise CheckpointError("not a TF.js weights manifest (expected a list of {paths, weights} groups)",
                              path=manifest)
    return groups


def _entry_layout(entry: dict, manifest: Path) -> tuple[str, tuple[int, ...], np.dtype, dict | None]:
    try:
        name = str(entry["name"])
        shape = tuple(int(d) for d in entry["shape"])
        dtype = str(entry["dtype"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"malformed weight entry {entry!r:.80}", path=manifest) from None
    quant = entry.get("quantization")
    stored = quant["dtype"] if quant else dtype
    if stored not in _STORED_DTYPES or dtype not in _STORED_DTYPES:
        raise CheckpointError(f"weight {name!r}: unsupported dtype {stored!r}", path=manifest)
    if quant and stored in ("uint8", "uint16") and not {"scale", "min"} <= set(quant):
        raise CheckpointError(f"weight {name!r}: quantisation without scale/min", path=manifest)
    if any(d < 0 for d in shape):
        raise CheckpointError(f"weight {name!r}: negative dimension in shape {list(shape)}", path=manifest)
    return name, shape, _STORED_DTYPES[stored], quant


def read_tfjs_weights(manifest: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a TF.js weights manifest, dequantised to float32 (int32/bool kept), by name."""
    manifest = Path(manifest)
    out: dict[str, np.ndarray] = {}
    for group in _parse_manifest(manifest):
        layouts = [_entry_layout(e, manifest) for e in group["weights"]]
        shards = [manifest.parent / str(p) for p in group["paths"]]
        for shard in shards:
            if not shard.is_file():
                raise CheckpointError(f"TF.js weight shard {shard.name!r} listed by the manifest is missing",
                                      path=shard)
        blob = b"".join(s.read_bytes() for s in shards)
        expected = sum(math.prod(shape) * stored.itemsize for _, shape, stored, _ in layouts)
        if len(blob) != expected:
            what = "truncated" if len(blob) < expected else "longer than its manifest says"
            names = ", ".join(s.name for s in shards)
            raise CheckpointError(
                f"TF.js weight shard {what}: manifest {manifest.name} lists {expected} bytes, "
                f"{names} holds {len(blob)}", path=shards[0])
        offset = 0
        for name, shape, stored, quant in layouts:
            count = math.prod(shape)
            raw = np.frombuffer(blob, dtype=stored, count=count, offset=offset)
            offset += count * stored.itemsize
            if quant and quant["dtype"] in ("uint8", "uint16"):
                values = raw.astype(np.float32) * np.float32(quant["scale"]) + np.float32(quant["min"])
            elif stored.kind == "f":
                values = raw.astype(np.float32)
            else:
                values = raw.copy()
            out[name] = values.reshape(shape)
    return out


def tfjs_weights_sha256(manifest: str | Path) -> str:
    """One digest for a manifest and its shards (what a cached result records as the model hash)."""
    manifest = Path(manifest)
    digest = hashlib.sha256(sha256_file(manifest).encode())
    for group in _parse_manifest(manifest):
        for p in group["paths"]:
            shard = manifest.parent / str(p)
            if not shard.is_file():
                raise CheckpointError(f"TF.js weight shard {shard.name!r} listed by the manifest is missing",
                                      path=shard)
            digest.update(sha256_file(shard).encode())
    return digest.hexdigest()
