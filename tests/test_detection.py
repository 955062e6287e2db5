"""Face detection (OpenCV Haar), face selection, tracking and gap filling, on astronaut()."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.detection import (
    FaceBox,
    FaceFlag,
    FaceSelector,
    FaceTracker,
    HaarCascadeDetector,
    box_from_landmarks,
    interpolate_missing,
    make_detector,
)
from models.face_shape import MEAN_SHAPE_68, MIRROR_68, procrustes_residual
from storage.errors import NoFaceError


@pytest.fixture(scope="module")
def detector() -> HaarCascadeDetector:
    return make_detector("haar")


def two_faces(astronaut: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
    """Astronaut at full size on the left and at 0.5x on the right of a 512 x 768 frame.
    Returns (frame, small scale, small offset)."""
    frame = np.full((512, 768, 3), 90, np.uint8)
    frame[:, :512] = astronaut
    frame[128:384, 512:] = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    return frame, 0.5, (512, 128)


def test_haar_finds_the_astronaut(detector, astronaut, astronaut_points):
    boxes = detector.detect(astronaut)
    assert len(boxes) == 1
    box = boxes[0]
    assert box.contains(astronaut_points)
    # ... and is about the face's size, not the whole picture.
    assert box.iou(box_from_landmarks(astronaut_points)) > 0.7
    assert box.score > 0


def test_large_frames_are_shrunk_for_detection_and_boxes_mapped_back(detector, astronaut, astronaut_points):
    big = cv2.resize(astronaut, (1280, 1280), interpolation=cv2.INTER_CUBIC)  # shrunk to 640 inside
    scaled = (astronaut_points + 0.5) * 2.5 - 0.5
    (box,) = detector.detect(big)
    assert box.contains(scaled) and box.iou(box_from_landmarks(scaled)) > 0.7


def test_two_faces_largest_by_default_and_the_other_selectable(detector, astronaut, astronaut_points):
    frame, s, (ox, oy) = two_faces(astronaut)
    small_points = (astronaut_points + 0.5) * s - 0.5 + [ox, oy]
    boxes = detector.detect(frame)
    assert len(boxes) == 2
    assert boxes[0].area > 3 * boxes[1].area  # sorted by size
    assert boxes[0].contains(astronaut_points) and boxes[1].contains(small_points)

    assert FaceSelector().pick(boxes) is boxes[0]
    assert FaceSelector(index=1).pick(boxes) is boxes[1]
    assert FaceSelector(index=2).pick(boxes) is None
    assert FaceSelector(near=tuple(small_points[30])).pick(boxes) is boxes[1]  # a point on the nose
    assert FaceSelector(near=(600.0, 150.0, 660.0, 230.0)).pick(boxes) is boxes[1]
    assert FaceSelector(near=(10.0, 10.0)).pick(boxes) is boxes[0]
    with pytest.raises(ValueError):
        FaceSelector(index=-1)


def test_no_face_gives_an_empty_list(detector):
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert detector.detect(noise) == []
    assert detector.detect(np.full((240, 320, 3), 128, np.uint8)) == []


def test_detector_input_checks_and_registry(detector):
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="unknown face detector"):
        make_detector("sfd")
    assert detector.settings()["detector"] == "haar"


# --------------------------------------------------------------------------------------------------
# Tracking on a synthetic video: the astronaut moved by known offsets over a grey background.

CANVAS = (600, 760)  # H, W
OFFSETS = [(40 + 9 * k, 30 + 4 * k) for k in range(12)]  # per frame (dx, dy): 9 px/frame right, 4 down
BLANK = 6  # this frame shows no face


def make_video(astronaut: np.ndarray) -> list[np.ndarray]:
    frames = []
    for k, (dx, dy) in enumerate(OFFSETS):
        frame = np.full(CANVAS + (3,), 110, np.uint8)
        if k != BLANK:
            frame[dy : dy + 512, dx : dx + 512] = astronaut
        frames.append(frame)
    return frames


class TemplateLandmarks:
    """A deterministic stand-in for a landmark net: finds the astronaut's face by template matching
    near the given box and answers dlib's points moved there. Where the face is not found it still
    answers, like a net does, but with scrambled points (which the tracker must reject). Records the
    boxes it was given."""

    def __init__(self, astronaut: np.ndarray, astronaut_points: np.ndarray):
        lo, hi = astronaut_points.min(0).astype(int) - 4, astronaut_points.max(0).astype(int) + 5
        self.template = astronaut[lo[1] : hi[1], lo[0] : hi[0]]
        self.origin = lo
        self.points = astronaut_points
        self.scrambled = astronaut_points[np.random.default_rng(1).permutation(68)]
        self.boxes: list[FaceBox] = []

    def __call__(self, frame: np.ndarray, box: FaceBox) -> np.ndarray:
        self.boxes.append(box)
        th, tw = self.template.shape[:2]
        grow = box.size * 0.5
        x0, y0 = max(int(box.x0 - grow), 0), max(int(box.y0 - grow), 0)
        x1, y1 = min(int(box.x1 + grow), frame.shape[1]), min(int(box.y1 + grow), frame.shape[0])
        region = frame[y0:y1, x0:x1]
        if region.shape[0] < th or region.shape[1] < tw:
            return self.scrambled + box.center - self.scrambled.mean(0)
        scores = cv2.matchTemplate(region, self.template, cv2.TM_CCOEFF_NORMED)
        _, best, _, (bx, by) = cv2.minMaxLoc(np.nan_to_num(scores, nan=-1.0))
        if best < 0.9:
            return self.scrambled + box.center - self.scrambled.mean(0)
        return self.points + [x0 + bx - self.origin[0], y0 + by - self.origin[1]]


def test_tracker_follows_motion_flags_a_blank_frame_and_redetects(detector, astronaut, astronaut_points):
    frames = make_video(astronaut)
    fn = TemplateLandmarks(astronaut, astronaut_points)
    tracker = FaceTracker(detector, fn, redetect_every=0)
    results = list(tracker.track(frames))
    flags = [r.flag for r in results]
    assert (
        flags
        == [FaceFlag.DETECTED]
        + [FaceFlag.TRACKED] * 5
        + [FaceFlag.LOST, FaceFlag.DETECTED]
        + [FaceFlag.TRACKED] * 4
    )
    for k, r in enumerate(results):
        if k == BLANK:
            assert r.landmarks is None
            continue
        np.testing.assert_array_equal(r.landmarks, astronaut_points + OFFSETS[k])
        assert r.box.contains(r.landmarks[17:])  # the box given to the landmark function held the face
        assert r.residual < 0.05
    # Tracked boxes are predicted from the previous frame: they trail the face by one frame's motion.
    for k in (2, 3, 4, 5, 9, 10, 11):
        expected = box_from_landmarks(astronaut_points + OFFSETS[k - 1]).center
        np.testing.assert_allclose(results[k].box.center, expected)
    # On the blank frame the tracked answer (scrambled) was rejected and the detector found nothing.
    assert procrustes_residual(fn.scrambled) > 0.5


def test_tracker_redetects_every_k_frames(detector, astronaut, astronaut_points):
    frames = [f for k, f in enumerate(make_video(astronaut)) if k != BLANK]
    tracker = FaceTracker(detector, TemplateLandmarks(astronaut, astronaut_points), redetect_every=4)
    flags = [r.flag for r in tracker.track(frames)]
    assert [k for k, f in enumerate(flags) if f == FaceFlag.DETECTED] == [0, 4, 8]
    assert FaceFlag.LOST not in flags


def test_tracker_rejects_implausible_landmarks(detector, astronaut, astronaut_points):
    """A landmark function that answers with a jump, a wrong scale or a mirrored mess is not trusted."""
    frame = make_video(astronaut)[0]
    truth = astronaut_points + OFFSETS[0]
    answers = {
        "ok": truth,
        "jump": truth + [150.0, 0.0],
        "tiny": (truth - truth.mean(0)) * 0.4 + truth.mean(0),
        "scrambled": truth[np.random.default_rng(0).permutation(68)],
        "nan": np.full((68, 2), np.nan),
        "none": None,
    }
    for name, answer in answers.items():
        tracker = FaceTracker(detector, lambda f, b, a=answer: a)
        result = tracker.update(frame)
        if name == "ok":
            assert result.flag == FaceFlag.DETECTED
        else:
            assert result.flag == FaceFlag.LOST and result.landmarks is None, name
    # A mirrored face is still a face shape.
    mirrored = truth[MIRROR_68] * [-1, 1]
    assert procrustes_residual(mirrored) < 0.05


def test_tracker_starts_on_the_selected_face(detector, astronaut, astronaut_points):
    frame, _, _ = two_faces(astronaut)
    boxes = detector.detect(frame)

    def fit_box(f: np.ndarray, box: FaceBox) -> np.ndarray:
        # The mean shape fitted into the box: a plausible face wherever it is asked.
        return MEAN_SHAPE_68 * box.size * 0.3 + box.center

    for selector, expected in [(FaceSelector(), boxes[0]), (FaceSelector(index=1), boxes[1])]:
        tracker = FaceTracker(detector, fit_box, selector=selector)
        first = tracker.update(frame)
        assert first.flag == FaceFlag.DETECTED and first.box == expected
        second = tracker.update(frame)  # then it follows that face
        assert second.flag == FaceFlag.TRACKED
        assert np.hypot(*(second.box.center - expected.center)) < 0.1 * expected.size


def test_periodic_redetection_does_not_jump_to_another_face(detector, astronaut):
    """Tracking the small face while the detector stops seeing it (turned away, here: blanked) but
    still sees the big one: re-detection keeps the tracked face instead of switching people."""
    frame, _, _ = two_faces(astronaut)
    hidden = frame.copy()
    hidden[:, 512:] = 90  # the small face is gone for the detector; the landmark stand-in still answers

    def fit_box(f: np.ndarray, box: FaceBox) -> np.ndarray:
        return MEAN_SHAPE_68 * box.size * 0.3 + box.center

    tracker = FaceTracker(detector, fit_box, selector=FaceSelector(index=1), redetect_every=2)
    start = tracker.update(frame)
    assert start.flag == FaceFlag.DETECTED and start.box.x0 > 512
    for _ in range(4):
        result = tracker.update(hidden)
        assert result.flag == FaceFlag.TRACKED and result.box.x0 > 512


def test_interpolate_missing():
    T = 8
    values = np.arange(T, dtype=float)[:, None, None] * np.ones((T, 68, 2))
    values[[0, 3, 4, 7]] = np.nan
    flags = np.full(T, FaceFlag.TRACKED)
    flags[[0, 3, 4, 5, 7]] = FaceFlag.LOST  # 5 is flagged but finite: also refilled
    filled_values, filled = interpolate_missing(values, flags)
    np.testing.assert_array_equal(np.flatnonzero(filled), [0, 3, 4, 5, 7])
    # Linear between known frames 2 and 6, held at the ends (1 at the start, 6 at the end).
    np.testing.assert_allclose(filled_values[:, 0, 0], [1, 1, 2, 3, 4, 5, 6, 6])
    assert np.isnan(values[3]).all()  # the input is not modified

    quads = np.array([[1.0, 2, 3, 4], [np.nan] * 4, [3.0, 4, 5, 6]])
    q, f = interpolate_missing(quads)
    np.testing.assert_allclose(q[1], [2, 3, 4, 5])
    assert f.tolist() == [False, True, False]
    with pytest.raises(NoFaceError, match="no face in any of the 3 frames"):
        interpolate_missing(np.full((3, 68, 2), np.nan))
