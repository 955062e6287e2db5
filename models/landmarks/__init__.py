"""68-point face landmarks behind one interface (`base.py`), with pluggable backends.

- "faceapi" (`faceapi.py`): face-api's landmark net ported to PyTorch, vendored weights; the offline
  default; differentiable.
- "fan" (`fan.py`): Bulat's FAN through the face-alignment package; heatmaps; weights from the torch
  hub cache.
"""

from models.landmarks.base import (
    IBUG_GROUPS,
    NUM_LANDMARKS,
    LandmarkBackend,
    LandmarkResult,
    available_landmark_backends,
    group_weights,
    landmark_group_ids,
    load_landmark_backend,
    register_landmark_backend,
)

__all__ = [
    "IBUG_GROUPS",
    "NUM_LANDMARKS",
    "LandmarkBackend",
    "LandmarkResult",
    "available_landmark_backends",
    "group_weights",
    "landmark_group_ids",
    "load_landmark_backend",
    "register_landmark_backend",
]
