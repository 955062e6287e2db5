"""Shared test fixtures.

- `shared_dir`: ../shared beside the repository root (the design notes' fixtures); tests that need it
  skip with a clear reason when it is absent.
- `run_cli`: runs `python -m flows.cli ...` in a subprocess, the way a user runs `facereenact`.
- `cli`: the same command line through `flows.cli.main` in this process (no 2-4 s start-up); for
  checks where the process itself does not matter (errors before any work, quick commands).
- `prefect_harness`: one session-wide Prefect test server with PREFECT_HOME in a temp dir;
  `prefect_api_env`: the environment that points CLI subprocesses at it.
- `astronaut`, `astronaut_image`, `astronaut_points`: scikit-image's astronaut() photo (uint8 RGB,
  read-only; and as a float tensor) and dlib's 68 points on it (shared/fixtures/faces), the real face of
  the detection/alignment/landmark/identity tests.
- `G`: the tiny random StyleGAN2 (tests/tiny.py), one per module (tests may change its settings).
- `invert_dataset`: tests/invert_data.py's three clips, prepared cache and reference inversion job;
  `reliability_inputs`: tests/reliability/inputs.py's clip, photo, weights and prepared cache. Each
  made once per session (they need the session's Prefect server).

Helpers that are not fixtures live in support modules (tests/helpers.py, tests/clips.py, tests/tiny.py,
tests/support/, ...); a test module never imports another test module.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.helpers import run_cli as _run_cli

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"

# Isolate Prefect from the user's home before anything imports it, in this process and in children.
def _scratch_home(variable: str, prefix: str) -> str:
    """A new empty folder for `variable` unless the environment sets it (pytest-xdist's workers inherit
    the controller's); removed when the process that made it exits."""
    if variable not in os.environ:
        folder = tempfile.mkdtemp(prefix=prefix)
        atexit.register(shutil.rmtree, folder, True)
        os.environ[variable] = folder
    return os.environ[variable]


_scratch_home("PREFECT_HOME", "facereenact-prefect-")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("DO_NOT_TRACK", "1")
# Never reach the network for weights in tests; point weight lookups at an empty cache.
_scratch_home("FACEREENACT_HOME", "facereenact-home-")
_scratch_home("TORCH_HOME", "facereenact-torch-")


# One torch thread in the tests and in every process they start. The nets here are small; on a
# shared 2-core machine under load two threads made face-api's landmark net 60-100x slower (0.7-1.0 s
# instead of 0.01 s per frame) and tiny-generator inversion steps 5-10x slower: OpenMP threads waiting
# on each other while other processes hold the cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared fixtures not found at {SHARED_DIR} (expected ../shared beside the repo)")
    return SHARED_DIR


def shared_fixture(shared_dir: Path, name: str, what: str) -> Path:
    """../shared/fixtures/NAME, or skip the test naming what is missing."""
    path = shared_dir / "fixtures" / name
    if not path.is_dir():
        pytest.skip(f"{what} fixtures not found at {path}")
    return path


@pytest.fixture(scope="session")
def stylegan_fixture_dir(shared_dir: Path) -> Path:
    return shared_fixture(shared_dir, "stylegan2", "StyleGAN2")


@pytest.fixture(scope="session")
def sg3_fixture_dir(shared_dir: Path) -> Path:
    return shared_fixture(shared_dir, "stylegan3", "StyleGAN3")


@pytest.fixture(scope="session")
def faces_fixture_dir(shared_dir: Path) -> Path:
    return shared_fixture(shared_dir, "faces", "face")


@pytest.fixture(scope="session")
def fixture_generator():
    """`load(path)` -> models.load_generator(path), loaded once per session per path (the official-
    format fixture pickles; the tests only read them)."""
    from models import load_generator

    loaded: dict[str, object] = {}

    def load(path: str):
        if path not in loaded:
            loaded[path] = load_generator(path)
        return loaded[path]

    return load


@pytest.fixture(scope="session")
def astronaut():
    """scikit-image's astronaut() (512 x 512 x 3 uint8 RGB), read-only: copy before changing it."""
    import skimage.data

    image = skimage.data.astronaut()
    image.flags.writeable = False
    return image


@pytest.fixture(scope="session")
def astronaut_points(faces_fixture_dir: Path):
    """dlib's 68 landmarks of the astronaut, (68, 2) float64 x, y pixels (read-only)."""
    import numpy as np

    points = np.load(faces_fixture_dir / "astronaut_dlib68.npy").astype(np.float64)
    points.flags.writeable = False
    return points


@pytest.fixture(scope="session")
def astronaut_image():
    """The astronaut as torch sees images: (1, 3, 512, 512) float32 in [0, 1]."""
    import skimage.data
    import torch

    return torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 255


@pytest.fixture
def one_thread():
    """Bitwise comparisons and steady timings: one torch thread in the test (`pytestmark =
    pytest.mark.usefixtures("one_thread")` for a whole module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def faceapi():
    """The face-api landmark net (vendored weights)."""
    from models.landmarks import load_landmark_backend

    return load_landmark_backend("faceapi")


@pytest.fixture(scope="module")
def lpips():
    """LPIPS on the uncalibrated VGG (the same cost as the calibrated one, no weights needed)."""
    from models.losses import PerceptualLoss

    return PerceptualLoss.from_choice("uncalibrated")


@pytest.fixture(scope="module")
def G():  # noqa: N802 (the generator is G everywhere in the project)
    """The tiny random StyleGAN2 (32 px, z_dim = w_dim = 64, 8 ws; tests/tiny.py)."""
    from tests.tiny import tiny_generator

    return tiny_generator()


@pytest.fixture(scope="session")
def invert_dataset(tmp_path_factory, prefect_harness):
    """tests/invert_data.py's dataset, made once per session."""
    from tests import invert_data

    return invert_data.make(tmp_path_factory.mktemp("invert-data"))


@pytest.fixture(scope="session")
def reliability_inputs(tmp_path_factory, prefect_harness):
    """tests/reliability/inputs.py's good inputs, made once per session (the prepare flow runs on the
    session's Prefect server, not a temporary one of its own)."""
    from tests.reliability.inputs import make

    return make(tmp_path_factory.mktemp("reliability"))


@pytest.fixture
def run_cli():
    """`run_cli(*args, env=..., check=...)` -> CompletedProcess of `facereenact *args`."""
    return _run_cli


@pytest.fixture(autouse=True)
def _cli_environment():
    """What the CLI sets for its own process must not leak into later tests when a test calls it in
    this process: Prefect's console level (os.environ.setdefault; a resumed run's INFO lines, which a
    test reads, went missing so) and the CPU thread count (`--threads`: the variables, which later
    subprocesses inherit, and torch's own; another thread count changes float sums, and the bitwise
    resume tests compare a subprocess with an in-process reference)."""
    import torch

    keys = ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    before = {key: os.environ.get(key) for key in keys}
    threads = torch.get_num_threads()
    yield
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


@pytest.fixture
def cli(capfd, monkeypatch):
    """`cli(*argv, env=None)` -> CompletedProcess of `flows.cli.main(argv)` run in this process with
    file descriptors 1 and 2 captured (whatever any logger writes there is seen, as on a terminal),
    so `tests.helpers.assert_user_error` checks it like a subprocess's. `flows.cli.__main__` only
    calls `main`, so this is the entry point's code path; `env` is set for the call only."""
    import subprocess

    from flows import cli as cli_module

    # What the CLI sets for itself in a fresh process (Prefect's console lines off), for this test.
    monkeypatch.setenv("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")

    def call(*argv, env: dict[str, str] | None = None,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        capfd.readouterr()
        with monkeypatch.context() as m:
            for key, value in (env or {}).items():
                m.setenv(key, str(value))
            try:
                code = cli_module.main([str(a) for a in argv])
            except SystemExit as exit_:  # argparse's usage errors
                code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capfd.readouterr()
        if check and code != 0:
            raise AssertionError(f"facereenact {' '.join(map(str, argv))} failed ({code}):\n{out}\n{err}")
        return subprocess.CompletedProcess(["facereenact", *map(str, argv)], code, out, err)

    return call


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    from flows.cli.prefect_startup import STARTUP_TIMEOUT_S

    # the CLI's margin for a cold, loaded machine (Prefect's own default here is 30 s)
    with prefect_test_harness(server_startup_timeout=STARTUP_TIMEOUT_S):
        yield


@pytest.fixture(scope="session")
def prefect_api_env(prefect_harness) -> dict[str, str]:
    """Environment for CLI subprocesses that run flows: use the session's Prefect test server
    instead of each starting a temporary one (10-20 s apiece here)."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": str(PREFECT_API_URL.value())}
