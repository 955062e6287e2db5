"""The reenact stage's loop (stages/reenact.py) on a reenact table, without Prefect: every frame
stored, a run stopped after a window and run again giving the uninterrupted run's bits from the
window start, the table's status read once per run, and the typed summaries pickling (Dask, Prefect
results)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from models.landmarks import load_landmark_backend
from models.losses import PerceptualLoss
from models.projection import ProjectionConfig, Projector
from models.reenact import projection_provenance
from stages.progress import FrameBar
from stages.reenact import FramesRun, ReenactTable, project
from storage.cache import DONE, PENDING, Workspace
from storage.reenact import ReenactCache
from tests.tiny import tiny_generator

FRAMES = 7


@pytest.fixture(scope="module")
def setup():
    G = tiny_generator()
    faceapi = load_landmark_backend("faceapi")
    lpips = PerceptualLoss.from_choice("uncalibrated")
    g = torch.Generator().manual_seed(3)
    w0, w1 = G.mapping(torch.randn(2, G.z_dim, generator=g))
    ws = torch.stack([w0 + t * 0.05 * (w1 - w0) for t in range(FRAMES)])
    with torch.no_grad():
        images = G.synthesis(ws, noise=[layer.noise_const.expand(FRAMES, 1, -1, -1)
                                        for _, layer in G.synthesis.noise_layers()])
        points = faceapi((images + 1) / 2).points.numpy()
    points[4] = np.nan  # a frame without a face: fails alone
    config = ProjectionConfig(perceptual="uncalibrated", steps_first=4, steps_next=3, early_stop_patience=0,
                              batch_frames=2, start_extrapolation=0.5)  # the state carries 2 latents

    def projector() -> Projector:
        return Projector(G, config, look=images[:1], source_landmarks=points[0] + 0.3, landmarks=faceapi,
                         perceptual=lpips)

    return G, points, projector


def table(tmp_path, G, projector) -> ReenactCache:
    provenance = projection_provenance(projector, "crops-key", "source-key", None)
    return ReenactCache.require(Workspace(tmp_path / "cache"), "d" * 64, provenance, FRAMES, G.num_ws,
                                G.w_dim)


class StopAfter(FrameBar):
    """Progress that interrupts the run once `frames` frames are stored (a kill between windows)."""

    def __init__(self, frames: int) -> None:
        super().__init__("test", enabled=False)
        self.left = frames

    def update(self, frames: int) -> None:
        self.left -= frames
        if self.left <= 0:
            raise KeyboardInterrupt


def test_a_stopped_run_resumes_to_the_same_bits_reading_the_status_once(tmp_path, setup, monkeypatch):
    G, points, projector = setup
    whole = table(tmp_path / "whole", G, projector())
    run = project(projector(), whole, points)
    assert (run.start, run.computed, run.failed) == (0, FRAMES, {4: run.failed[4]})
    assert whole.counts() == {"pending": 0, "done": FRAMES - 1, "failed": 1}

    stopped = table(tmp_path / "stopped", G, projector())
    with pytest.raises(KeyboardInterrupt):
        project(projector(), stopped, points, progress=StopAfter(2))  # windows (0), (1, 2) stored
    assert stopped.table.status().tolist() == [DONE] * 3 + [PENDING] * 4
    stopped.table.reset([2])  # a kill inside the last window's writes: frame 2 pending again
    reads = []
    status = stopped.table.status
    monkeypatch.setattr(stopped.table, "status", lambda *a: reads.append(a) or status(*a))
    again = project(projector(), stopped, points)
    # the status of the whole table once, and no window's status after it (the only other look is
    # `read` checking the one latent it returns: the chain's predecessor, frame 0)
    assert reads[0] == () and [a[0].tolist() for a in reads[1:]] == [[0]]
    assert again.start == 1 and again.computed == FRAMES - 1  # from the window start (frames 1-2)
    monkeypatch.undo()
    np.testing.assert_array_equal(stopped.table.status(), whole.table.status())
    done = np.flatnonzero(whole.table.status() == DONE)
    for name in ("latents", "loss", "points", "nme", "nme_target", "steps"):
        np.testing.assert_array_equal(stopped.read(name, done), whole.read(name, done))
    assert stopped.errors() == whole.errors()


def test_a_resume_after_two_done_frames_restores_the_extrapolation_velocity(tmp_path, setup):
    """Stopped after windows (0), (1, 2), (3, 4) (frame 4 failed): the resume reads frames 3 and 2 from
    the table (the chain's last two good latents: the extrapolated start of frame 5) and ends with the
    same bits as the uninterrupted run."""
    G, points, projector = setup
    whole = table(tmp_path / "whole", G, projector())
    project(projector(), whole, points)
    stopped = table(tmp_path / "stopped", G, projector())
    with pytest.raises(KeyboardInterrupt):
        project(projector(), stopped, points, progress=StopAfter(5))
    again = project(projector(), stopped, points)
    assert again.start == 5
    done = np.flatnonzero(whole.table.status() == DONE)
    np.testing.assert_array_equal(stopped.table.status(), whole.table.status())
    np.testing.assert_array_equal(stopped.read("latents", done), whole.read("latents", done))


def test_typed_summaries_pickle(tmp_path, setup):
    from prefect.serializers import PickleSerializer

    G, points, projector = setup
    t = table(tmp_path, G, projector())
    summary = ReenactTable.of(t, FramesRun(0, 3, {4: "no face"}, 1.5))
    assert summary.failed_now == {"4": "no face"} and summary.pending == FRAMES
    assert pickle.loads(pickle.dumps(summary)) == summary
    serializer = PickleSerializer()
    assert serializer.loads(serializer.dumps(summary)) == summary
    with pytest.raises(AttributeError):
        summary.done = 1  # frozen
