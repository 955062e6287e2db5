"""Face detection, face selection, and frame-to-frame face tracking.

Detectors follow face-alignment's pattern: one small interface (`FaceDetector.detect`) with pluggable
backends behind it, registered by name in `DETECTORS`. Backends here:

- `ssd` (the default): face-api's SSD MobileNet v1 face detector, ported to PyTorch
  (models/ssd_mobilenet.py) with the weights vendored from the npm package (models/assets/faceapi/).
  The net sees a 512 x 512 square, so a wide frame is also cut into overlapping squares (tiles) that
  are detected at a larger scale: faces of 40-60 px in a 1280 x 720 frame are found, and turned or
  tilted faces that the Haar cascade misses. About 0.15 s per pass on one CPU thread, 3 passes for a
  720p frame; the tracker detects only on the first frame, when the face is lost, and every
  `redetect_every` frames.
- `haar`: OpenCV's Haar cascades, shipped inside opencv-python(-headless) 4.x under
  `cv2.data.haarcascades` (5.0 dropped them). Offline, no weights to fetch, frontal faces only, and
  faces below about 50 px in a 720p frame are missed (frames are shrunk to 640 px first).

tests/benchmarks/bench_detection.py measures both on frames with small and with several faces.

Box convention, shared by every backend and by `box_from_landmarks`: (x0, y0, x1, y1) in pixels of the
frame, pixel centres at integer coordinates, and the box encloses the face's 68 points (brows to chin,
jaw side to jaw side) with a small margin. Each backend maps its native box to this convention, so a
landmark backend sees the same kind of box whether it came from a detector or from tracking.

`FaceTracker` runs a detector plus an injected landmark function over a video: it predicts each frame's
box from the previous frame's landmarks, checks the new landmarks are plausible, and re-detects when
the face is lost or every `redetect_every` frames. Frames without a face are flagged LOST, never dropped;
`interpolate_missing` fills them afterwards and says which frames it filled.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from models.face_shape import MEAN_SHAPE_68, check_points, procrustes_residual
from storage.errors import NoFaceError

__all__ = [
    "DETECTORS",
    "FaceBox",
    "FaceDetector",
    "FaceFlag",
    "FaceSelector",
    "FaceTracker",
    "DEFAULT_DETECTOR",
    "HaarCascadeDetector",
    "SsdMobilenetDetector",
    "TrackResult",
    "TrackerState",
    "box_from_landmarks",
    "interpolate_missing",
    "make_detector",
]


# --------------------------------------------------------------------------------------------------
# Boxes


@dataclass(frozen=True)
class FaceBox:
    """A face box (x0, y0, x1, y1) in frame pixels with the detector's confidence `score` (higher is
    more confident; backends differ in scale, so compare scores only within one backend)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float = 1.0

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1", "score"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def size(self) -> float:
        """Side of the square of equal area: the box's scale, used to normalise distances."""
        return float(np.sqrt(max(self.width, 0.0) * max(self.height, 0.0)))

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2])

    def as_array(self) -> np.ndarray:
        """(4,) float64 array x0, y0, x1, y1 (the layout landmark backends take as `boxes`)."""
        return np.array([self.x0, self.y0, self.x1, self.y1], dtype=np.float64)

    @classmethod
    def from_array(cls, box: Sequence[float] | np.ndarray, score: float = 1.0) -> FaceBox:
        x0, y0, x1, y1 = (float(v) for v in np.asarray(box, dtype=np.float64).reshape(4))
        return cls(x0, y0, x1, y1, float(score))

    def contains(self, points: np.ndarray) -> bool:
        """True when every (x, y) row of `points` lies inside the box (edges included)."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        return bool(
            np.all((p[:, 0] >= self.x0) & (p[:, 0] <= self.x1) & (p[:, 1] >= self.y0) & (p[:, 1] <= self.y1))
        )

    def iou(self, other: FaceBox) -> float:
        ix = max(0.0, min(self.x1, other.x1) - max(self.x0, other.x0))
        iy = max(0.0, min(self.y1, other.y1) - max(self.y0, other.y0))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0


def box_from_landmarks(points: np.ndarray, margin: float = 0.1, score: float = 1.0) -> FaceBox:
    """The square box a detector would give for a face with these 68 points: centred on the points'
    bounding box, side = its longer side * (1 + margin)."""
    p = check_points(points)
    lo, hi = p.min(axis=0), p.max(axis=0)
    c = (lo + hi) / 2
    half = max(hi - lo) * (1.0 + margin) / 2
    return FaceBox(c[0] - half, c[1] - half, c[0] + half, c[1] + half, score)


def _check_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB frame, got {frame.dtype} {frame.shape}")
    return frame


# --------------------------------------------------------------------------------------------------
# Selecting one face among several


@dataclass(frozen=True)
class FaceSelector:
    """Which face to take when a frame has several.

    - default: the largest face.
    - `index=k`: the k-th face in size order (0 = largest); no face when there are fewer than k+1.
    - `near=(x, y)` or `near=(x0, y0, x1, y1)`: the face whose centre is nearest that point or box's
      centre. This is the one to use for a video with several people: give a point on the wanted face
      in the first frame; the tracker then keeps following the face nearest its last known box.
    """

    index: int = 0
    near: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"face index must be >= 0, got {self.index}")
        if self.near is not None and len(self.near) not in (2, 4):
            raise ValueError(f"near must be a point (x, y) or a box (x0, y0, x1, y1), got {self.near}")

    def pick(self, boxes: Sequence[FaceBox]) -> FaceBox | None:
        """The selected face among `boxes` (sorted by size, largest first), or None."""
        if not boxes:
            return None
        if self.near is not None:
            return nearest_box(boxes, self.near)
        return boxes[self.index] if self.index < len(boxes) else None


def nearest_box(boxes: Sequence[FaceBox], near: Sequence[float] | FaceBox) -> FaceBox | None:
    """The box whose centre is nearest to a point (x, y), or to a box's centre."""
    if not boxes:
        return None
    if isinstance(near, FaceBox):
        target = near.center
    else:
        near = np.asarray(near, dtype=np.float64)
        target = near if near.size == 2 else (near[:2] + near[2:]) / 2
    dist = [float(np.hypot(*(b.center - target))) for b in boxes]
    return boxes[int(np.argmin(dist))]


# --------------------------------------------------------------------------------------------------
# Detectors


class FaceDetector:
    """Interface of the face detectors: `detect(frame)` -> boxes, largest first.

    A backend implements `_detect(frame) -> list[FaceBox]` in the box convention of this module; the
    base class checks the input and sorts.
    """

    name: str = "base"

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """All faces in an (H, W, 3) uint8 RGB frame, sorted by area, largest first; [] for none."""
        boxes = self._detect(_check_frame(frame))
        return sorted(boxes, key=lambda b: (-b.area, -b.score))

    def _detect(self, frame: np.ndarray) -> list[FaceBox]:
        raise NotImplementedError

    def settings(self) -> dict:
        """What determines this detector's output, for cache provenance."""
        return {"detector": self.name}


class HaarCascadeDetector(FaceDetector):
    """OpenCV Haar cascade (Viola-Jones) frontal-face detector.

    Args:
        cascade: file name under `cv2.data.haarcascades` or a path to a cascade XML.
            `haarcascade_frontalface_alt2.xml` gives fewer false positives than `_default` for similar
            recall.
        scale_factor: image pyramid step of `detectMultiScale` (smaller: slower, finds more sizes).
        min_neighbors: overlapping raw hits needed to keep a face (higher: fewer false positives).
        min_size: smallest face side, as a fraction of the frame's shorter side.
        max_side: frames are shrunk so their longer side is at most this before detecting (speed:
            a 1080p frame at full size takes about 1 s); boxes are mapped back to the full frame.
    """

    name = "haar"

    # The cascade's box sits higher than the 68 points (forehead in, chin partly out). Measured on
    # astronaut() against dlib's points: the points' centre is 0.2 box sides below the box's centre,
    # their extent about one box side. Shift down and enlarge so that the box encloses the points
    # with a margin like box_from_landmarks's.
    _SHIFT_DOWN = 0.2
    _GROW = 1.15

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_alt2.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 4,
        min_size: float = 0.05,
        max_side: int = 640,
    ) -> None:
        path = cascade if "/" in cascade else cv2.data.haarcascades + cascade
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FileNotFoundError(f"cannot load Haar cascade {path}")
        self.cascade = cascade
        self.scale_factor = float(scale_factor)
        self.min_neighbors = int(min_neighbors)
        self.min_size = float(min_size)
        self.max_side = int(max_side)

    def __repr__(self) -> str:
        return (
            f"HaarCascadeDetector(cascade={self.cascade!r}, scale_factor={self.scale_factor}, "
            f"min_neighbors={self.min_neighbors}, min_size={self.min_size}, max_side={self.max_side})"
        )

    def settings(self) -> dict:
        return {
            "detector": self.name,
            "cascade": self.cascade,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "min_size": self.min_size,
            "max_side": self.max_side,
        }

    def _detect(self, frame: np.ndarray) -> list[FaceBox]:
        h, w = frame.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        gray = cv2.equalizeHist(gray)
        min_side = max(20, int(self.min_size * min(gray.shape)))
        rects, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        boxes = []
        for (x, y, bw, bh), weight in zip(np.asarray(rects).reshape(-1, 4), np.ravel(weights), strict=True):
            # Rect (x, y, w, h) covers pixels x..x+w-1: its edges are at x - 0.5 and x + w - 0.5 in
            # pixel-centre coordinates, and a shrunk-image coordinate q is (q + 0.5) / scale - 0.5 in
            # the frame. Then recentre and grow to the module's box convention.
            x0 = x / scale - 0.5
            y0 = y / scale - 0.5
            side_x, side_y = bw / scale, bh / scale
            cx = x0 + side_x / 2
            cy = y0 + side_y / 2 + self._SHIFT_DOWN * side_y
            hx, hy = side_x * self._GROW / 2, side_y * self._GROW / 2
            boxes.append(FaceBox(cx - hx, cy - hy, cx + hx, cy + hy, float(weight)))
        return boxes


class SsdMobilenetDetector(FaceDetector):
    """face-api's SSD MobileNet v1 face detector (models/ssd_mobilenet.py), on the CPU.

    The frame is detected whole (padded to a square, resized to the net's 512 px) and, when it is
    larger than `tile` pixels, also in overlapping square tiles of side `tile` (at least 20 % overlap),
    each resized to 512 px: a 55 px face in a 1280 x 720 frame is 22 px in the whole-frame pass and
    39 px in a tile's. Detections of all passes are merged by non-maximum suppression (a box mostly
    inside a better one is dropped too: a face cut by a tile's edge).

    Args:
        min_score: smallest face score kept (face-api's default 0.5).
        tile: side of the tiles in frame pixels (0: whole frame only).
        weights: a TF.js manifest (or its folder) instead of the vendored weights.

    The net is loaded on the first `detect`, so `settings()` (cache keys) costs no network.
    """

    name = "ssd"

    # face-api's box is taller than the face's 68 points and sits higher. Measured on 32 faces of
    # tests/face_scenes.py (40-140 px, some turned and tilted): the points' centre is 0.126 box
    # heights below the box's centre (sd 0.03) and their extent 0.80 box heights (sd 0.05); on the
    # 512 px astronaut portrait 0.91 against dlib's points. 0.9 keeps the jaw inside at every size.
    _SHIFT_DOWN = 0.126
    _EXTENT = 0.9
    _MARGIN = 0.1  # box_from_landmarks's default margin
    _MERGE_IOU = 0.3
    _MERGE_INSIDE = 0.6  # fraction of a box's area inside a better box that drops it
    _TILE_OVERLAP = 0.2

    def __init__(self, min_score: float = 0.5, tile: int = 720, weights: str | None = None) -> None:
        if not 0.0 < min_score < 1.0:
            raise ValueError(f"min_score must be in (0, 1), got {min_score}")
        if tile < 0:
            raise ValueError(f"tile must be >= 0, got {tile}")
        self.min_score = float(min_score)
        self.tile = int(tile)
        self.weights = weights
        self._net = None
        self._sha256: str | None = None

    def __repr__(self) -> str:
        return f"SsdMobilenetDetector(min_score={self.min_score}, tile={self.tile}, weights={self.weights!r})"

    def _manifest(self):
        from models.ssd_mobilenet import SSD_MANIFEST

        return SSD_MANIFEST if self.weights is None else self.weights

    def settings(self) -> dict:
        if self._sha256 is None:
            from pathlib import Path

            from models.ssd_mobilenet import SSD_MANIFEST
            from models.tfjs_weights import tfjs_weights_sha256

            path = Path(self._manifest())
            self._sha256 = tfjs_weights_sha256(path / SSD_MANIFEST.name if path.is_dir() else path)
        return {"detector": self.name, "weights_sha256": self._sha256, "min_score": self.min_score,
                "tile": self.tile}

    def _load(self):
        if self._net is None:
            from models.ssd_mobilenet import load_ssd_mobilenet

            self._net, self._sha256, _ = load_ssd_mobilenet(self._manifest())
        return self._net

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """The passes over a frame: (x, y, side) squares, the whole frame first (side = its longer
        side, padded bottom/right), then the tiles."""
        out = [(0, 0, max(height, width))]
        if self.tile and max(height, width) > self.tile:
            side = min(self.tile, height, width)
            starts = []
            for length in (width, height):
                n = int(np.ceil(max(length - side, 0) / (side * (1 - self._TILE_OVERLAP)))) + 1
                starts.append(np.linspace(0, length - side, n).round().astype(int).tolist())
            out += [(x, y, side) for y in starts[1] for x in starts[0]]
        return out

    def _detect(self, frame: np.ndarray) -> list[FaceBox]:
        import torch

        from models.ssd_mobilenet import INPUT_SIZE, nms

        net = self._load()
        h, w = frame.shape[:2]
        batch, placed = [], []
        for x, y, side in self.windows(h, w):
            square = np.zeros((side, side, 3), np.uint8)
            crop = frame[y:y + side, x:x + side]
            square[:crop.shape[0], :crop.shape[1]] = crop
            shrink = cv2.INTER_AREA if side > INPUT_SIZE else cv2.INTER_LINEAR
            batch.append(cv2.resize(square, (INPUT_SIZE, INPUT_SIZE), interpolation=shrink))
            placed.append((x, y, side))
        boxes, scores = [], []
        for k in range(0, len(batch), 4):  # a few passes per call: bounded memory for 4K frames
            chunk = torch.from_numpy(np.stack(batch[k:k + 4])).permute(0, 3, 1, 2).float() / 255.0
            with torch.inference_mode():
                b, s = net(chunk)
            for j, (x, y, side) in enumerate(placed[k:k + 4]):
                # (ymin, xmin, ymax, xmax) fractions of the square -> frame pixel edges (x0, y0, x1, y1)
                yx = b[j].numpy().astype(np.float64)[:, [1, 0, 3, 2]]
                boxes.append(yx * side + np.array([x, y, x, y]) - 0.5)
                scores.append(s[j].numpy().astype(np.float64))
        boxes_all, scores_all = np.concatenate(boxes), np.concatenate(scores)
        # Clip to the frame (the padding is not image) before merging, as face-api clips to [0, 1].
        boxes_all = np.clip(boxes_all, -0.5, np.array([w, h, w, h]) - 0.5)
        keep = nms(boxes_all, scores_all, self._MERGE_IOU, self.min_score, 100)
        kept: list[int] = []
        for i in keep:  # drop a box mostly inside a better one (a face cut by a tile edge)
            b = boxes_all[i]
            area = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
            inside = [max(0, min(b[2], o[2]) - max(b[0], o[0])) * max(0, min(b[3], o[3]) - max(b[1], o[1]))
                      for o in boxes_all[kept]]
            if area <= 0 or any(v > self._MERGE_INSIDE * area for v in inside):
                continue
            kept.append(int(i))
        out = []
        for i in kept:
            x0, y0, x1, y1 = boxes_all[i]
            bh = y1 - y0
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2 + self._SHIFT_DOWN * bh
            half = self._EXTENT * bh * (1 + self._MARGIN) / 2
            out.append(FaceBox(cx - half, cy - half, cx + half, cy + half, float(scores_all[i])))
        return out


DETECTORS: dict[str, type[FaceDetector]] = {"ssd": SsdMobilenetDetector, "haar": HaarCascadeDetector}
DEFAULT_DETECTOR = "ssd"


def make_detector(name: str = DEFAULT_DETECTOR, **kwargs) -> FaceDetector:
    """A detector backend by name (see DETECTORS), constructed with `kwargs`."""
    try:
        cls = DETECTORS[name]
    except KeyError:
        raise ValueError(f"unknown face detector {name!r}; known: {', '.join(sorted(DETECTORS))}") from None
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------------
# Tracking


class FaceFlag(enum.IntEnum):
    """How a frame's face was found. Stored per frame (uint8) beside the landmarks."""

    LOST = 0  # no plausible face: landmarks missing (NaN), to be interpolated and flagged
    DETECTED = 1  # the detector found the box this frame
    TRACKED = 2  # box predicted from the previous frame's landmarks


LandmarksFn = Callable[[np.ndarray, FaceBox], "np.ndarray | None"]


@dataclass
class TrackResult:
    """One frame's outcome: landmarks (68, 2) or None when LOST, the box given to the landmark
    function (None when no box was found), the flag, and the Procrustes residual of the landmarks
    (NaN when there are none)."""

    landmarks: np.ndarray | None
    box: FaceBox | None
    flag: FaceFlag
    residual: float = float("nan")


@dataclass(frozen=True)
class TrackerState:
    """What FaceTracker carries from one frame to the next; enough to resume a video mid-way.

    landmarks:    the previous frame's accepted landmarks (None after a LOST frame, or at the start)
    last_box:     the last known face box, kept across LOST frames (re-detection looks near it)
    since_detect: accepted frames since the last detection (drives periodic re-detection)

    `advance` is the tracker's one rule for moving it on, so a state rebuilt from stored per-frame
    results (`TrackerState().advance(r0).advance(r1)...`) is the state the tracker had.
    """

    landmarks: np.ndarray | None = None
    last_box: FaceBox | None = None
    since_detect: int = 0

    def advance(self, result: TrackResult) -> TrackerState:
        """The state after a frame with this result."""
        if result.flag == FaceFlag.LOST or result.landmarks is None:
            return TrackerState(None, self.last_box, self.since_detect)
        since = 0 if result.flag == FaceFlag.DETECTED else self.since_detect + 1
        return TrackerState(result.landmarks, result.box, since)


@dataclass
class FaceTracker:
    """Detect once, then follow the face from frame to frame with the landmark function.

    Per frame: predict the box from the previous landmarks (`box_from_landmarks(prev, margin)`), run
    `landmarks_fn(frame, box)`, and accept the answer if it is plausible:
      - its Procrustes residual against MEAN_SHAPE_68 is at most `max_residual` (a face shape, not
        scrambled or collapsed points),
      - its centre moved at most `max_jump` face sizes from the reference box, and its size changed
        by at most a factor `max_scale_change` (a landmark net fed background still answers with a
        face-shaped set; those answers tend to jump or shrink).
    The reference box is the predicted box when tracking and the detected box after a detection.
    Otherwise the frame is re-detected: the detector's box nearest the last known face (or, with no
    face known, the one `selector` picks) goes to the landmark function and through the same checks.
    Every `redetect_every` frames the tracker re-detects even when tracking works, keeps the detection
    if it overlaps the tracked face, and otherwise stays with tracking (Haar misses turned faces).

    Args:
        detector: a FaceDetector.
        landmarks_fn: (frame (H, W, 3) uint8 RGB, box FaceBox) -> (68, 2) pixel points, or None when
            the backend itself finds no face.
        selector: which face to start on when a frame has several (see FaceSelector).
        redetect_every: re-detect every this many frames even while tracking (0: only when lost).
        margin: box margin for `box_from_landmarks`.
        max_residual, max_jump, max_scale_change: plausibility limits, above.
    """

    detector: FaceDetector
    landmarks_fn: LandmarksFn
    selector: FaceSelector = field(default_factory=FaceSelector)
    redetect_every: int = 30
    margin: float = 0.1
    max_residual: float = 0.3
    max_jump: float = 0.5
    max_scale_change: float = 1.5

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the face (start of a new video)."""
        self._state = TrackerState()

    @property
    def state(self) -> TrackerState:
        """The state carried into the next frame (see TrackerState)."""
        return self._state

    def restore(self, state: TrackerState) -> None:
        """Continue from `state`, e.g. rebuilt from the stored results of the frames before."""
        self._state = state

    def settings(self) -> dict:
        """What determines the tracker's output besides the landmark backend, for cache provenance."""
        return {
            **self.detector.settings(),
            "selector": {"index": self.selector.index, "near": self.selector.near},
            "redetect_every": self.redetect_every,
            "margin": self.margin,
            "max_residual": self.max_residual,
            "max_jump": self.max_jump,
            "max_scale_change": self.max_scale_change,
        }

    def track(self, frames: Iterable[np.ndarray]) -> Iterator[TrackResult]:
        """`update` over a sequence of frames, from a fresh state: one TrackResult per frame."""
        self.reset()
        for frame in frames:
            yield self.update(frame)

    def update(self, frame: np.ndarray) -> TrackResult:
        """Process the next frame of the video."""
        frame = _check_frame(frame)
        state = self._state
        tracked: TrackResult | None = None
        if state.landmarks is not None:
            box = box_from_landmarks(state.landmarks, self.margin)
            tracked = self._try(frame, box, FaceFlag.TRACKED)
            due = self.redetect_every > 0 and state.since_detect + 1 >= self.redetect_every
            if tracked is not None and not due:
                return self._accept(tracked)

        boxes = self.detector.detect(frame)
        if state.last_box is not None:
            pick = nearest_box(boxes, state.last_box)
            if tracked is not None and pick is not None and pick.iou(tracked.box) < 0.3:
                pick = None  # the detector found someone else; stay with the tracked face
        else:
            pick = self.selector.pick(boxes)
        detected = self._try(frame, pick, FaceFlag.DETECTED) if pick is not None else None
        if detected is not None:
            return self._accept(detected)
        if tracked is not None:
            return self._accept(tracked)
        return self._accept(TrackResult(None, pick, FaceFlag.LOST))

    def _accept(self, result: TrackResult) -> TrackResult:
        self._state = self._state.advance(result)
        return result

    def _try(self, frame: np.ndarray, box: FaceBox, flag: FaceFlag) -> TrackResult | None:
        """Run the landmark function in `box`; the result if plausible, else None."""
        points = self.landmarks_fn(frame, box)
        if points is None:
            return None
        points = check_points(points).copy()
        if not np.isfinite(points).all():
            return None
        residual = procrustes_residual(points, MEAN_SHAPE_68)
        if residual > self.max_residual:
            return None
        found = box_from_landmarks(points, self.margin)
        if box.size <= 0 or found.size <= 0:
            return None
        jump = float(np.hypot(*(found.center - box.center))) / box.size
        ratio = found.size / box.size
        if jump > self.max_jump or not (1 / self.max_scale_change <= ratio <= self.max_scale_change):
            return None
        return TrackResult(points, box, flag, residual)


# --------------------------------------------------------------------------------------------------
# Gaps


def interpolate_missing(
    values: np.ndarray, flags: np.ndarray | Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the missing frames of a (T, ...) per-frame array by linear interpolation in time.

    A frame is missing when any of its values is NaN or, when `flags` (T,) is given, its flag is
    FaceFlag.LOST. Gaps between two known frames are interpolated linearly; frames before the first
    or after the last known frame hold that frame's value. Works for landmarks (T, 68, 2) and for any
    other per-frame parameters (crop quads (T, 4), ...).

    Returns (filled copy as float64, filled (T,) bool: which frames were filled). Raises NoFaceError
    when no frame is known (nothing to interpolate from).
    """
    values = np.array(values, dtype=np.float64)  # a copy
    if values.ndim < 1:
        raise ValueError("values must be (T, ...)")
    T = values.shape[0]
    flat = values.reshape(T, -1)
    missing = ~np.isfinite(flat).all(axis=1)
    if flags is not None:
        flags = np.asarray(flags)
        if flags.shape != (T,):
            raise ValueError(f"flags must be ({T},), got {flags.shape}")
        missing |= flags == FaceFlag.LOST
    if T == 0 or not missing.any():
        return values, missing
    known = np.flatnonzero(~missing)
    if known.size == 0:
        raise NoFaceError(f"no face in any of the {T} frames")
    gaps = np.flatnonzero(missing)
    for k in range(flat.shape[1]):
        # np.interp holds the end values outside [known[0], known[-1]], as wanted.
        flat[gaps, k] = np.interp(gaps, known, flat[known, k])
    return flat.reshape(values.shape), missing
