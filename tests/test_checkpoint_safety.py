"""Hostile and broken checkpoint files: refused with one line, nothing from them executed.

Each malicious pickle here would create a marker file if anything in it ran; the tests check the
marker does not exist afterwards. `test_payloads_are_live` shows that plain pickle does run them,
so the refusals are not vacuous.
"""

from __future__ import annotations

import collections
import contextlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from models import load_generator
from storage.errors import CheckpointError
from tests.helpers import assert_user_error

# ---------------------------------------------------------------------------------------------------
# Crafting pickles


class _Reduce:
    """Pickles as `func(*args)`: what a hostile file does to make the unpickler call something."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@contextlib.contextmanager
def _fake_module(qualified: str, **attrs):
    """Install a module under `qualified` (and its parents) so pickle can name its functions."""
    names = qualified.split(".")
    added = []
    for i in range(1, len(names) + 1):
        name = ".".join(names[:i])
        if name not in sys.modules:
            sys.modules[name] = types.ModuleType(name)
            added.append(name)
    for key, value in attrs.items():
        value.__module__, value.__qualname__, value.__name__ = qualified, key, key
        setattr(sys.modules[qualified], key, value)
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def _persistent_pickle(meta: dict) -> bytes:
    """A torch_utils.persistence record, pickled the way NVIDIA's files carry their networks."""

    def _reconstruct_persistent_obj(meta):  # never called: only its name goes into the pickle
        raise AssertionError

    with _fake_module("torch_utils.persistence", _reconstruct_persistent_obj=_reconstruct_persistent_obj):
        return pickle.dumps({"G_ema": _Reduce(_reconstruct_persistent_obj, meta)}, protocol=4)


def _module_src_writing(marker: Path, class_name: str) -> str:
    return f"open({str(marker)!r}, 'w').write('pwned')\nclass {class_name}:\n    pass\n"


def _hostile(kind: str, marker: Path) -> bytes:
    if kind == "os.system":
        return pickle.dumps({"G_ema": _Reduce(os.system, f"touch {marker}")}, protocol=4)
    if kind == "builtins.exec":
        return pickle.dumps({"G_ema": _Reduce(exec, f"open({str(marker)!r}, 'w').write('x')")}, protocol=4)
    if kind == "builtins.open":
        return pickle.dumps({"G_ema": _Reduce(open, str(marker), "w")}, protocol=4)
    if kind == "unknown-class":
        return _persistent_pickle(dict(type="class", version=6, class_name="Backdoor", state={},
                                       module_src=_module_src_writing(marker, "Backdoor")))
    if kind == "known-class-evil-src":
        # A known class name does not make module_src run either: the record stays inert and
        # the (empty) state is then found unusable.
        return _persistent_pickle(dict(type="class", version=6, class_name="Generator", state={},
                                       module_src=_module_src_writing(marker, "Generator")))
    raise ValueError(kind)


HOSTILE = {  # kind -> fragment the one-line error must contain
    "os.system": "refused global posix.system" if os.name == "posix" else "refused global",
    "builtins.exec": "refused global builtins.exec",
    "builtins.open": "refused global",
    "unknown-class": "unknown class 'Backdoor'",
    "known-class-evil-src": "G_ema records no",
}


def _assert_one_line(err: pytest.ExceptionInfo, path: Path, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message
    assert str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------------------------------------------
# Library level


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_hostile_pickles_are_refused_without_running(kind, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_hostile(kind, marker))
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, HOSTILE[kind])
    assert not marker.exists()


def test_payloads_are_live(tmp_path):
    """Controls: the same bytes run their payload under plain pickle (we made them; they only touch a
    temp file), and the module source writes its file when executed."""
    for kind in ("os.system", "builtins.exec"):
        marker = tmp_path / f"control-{kind}"
        pickle.loads(_hostile(kind, marker))  # noqa: S301 (deliberate: proves the payload is real)
        assert marker.exists(), kind
    marker = tmp_path / "control-src"
    exec(_module_src_writing(marker, "Backdoor"), {})
    assert marker.exists()


@pytest.mark.parametrize("obj, fragment", [
    (collections.Counter(a=1), "refused global collections.Counter"),
    (np.array([None, "x"], dtype=object), "numpy dtype"),  # numeric arrays load (StyleGAN3), not these
    (np.dtype(object), "numpy dtype"),
    (types.SimpleNamespace(a=1), "refused global types.SimpleNamespace"),
])
def test_disallowed_globals_are_refused(obj, fragment, tmp_path):
    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps({"G_ema": obj}, protocol=4))
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, fragment)


def test_tensor_pointing_outside_its_storage_is_refused(tmp_path):
    storage = torch.zeros(4).untyped_storage()
    typed = torch.storage.TypedStorage(wrap_storage=storage, dtype=torch.float32, _internal=True)
    bad = _Reduce(torch._utils._rebuild_tensor_v2, typed, 0, (10**6,), (1,), False, collections.OrderedDict())
    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps({"G_ema": bad}, protocol=4))
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, "reaches outside its storage")
    # Within bounds the same construction loads (the check is not simply refusing everything).
    ok = _Reduce(torch._utils._rebuild_tensor_v2, typed, 1, (3,), (1,), False, collections.OrderedDict())
    from models.checkpoints import unpickle_network

    path.write_bytes(pickle.dumps({"t": ok}, protocol=4))
    assert unpickle_network(path)["t"].shape == (3,)


def test_pickle_without_a_generator(tmp_path):
    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps({"D": 1, "note": "no generator here"}, protocol=4))
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, "no 'G_ema'")


def test_truncated_official_pickle(stylegan_fixture_dir, tmp_path):
    data = (stylegan_fixture_dir / "sg2_tiny64.pkl").read_bytes()
    path = tmp_path / "half.pkl"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, "truncated or corrupt pickle")


@pytest.mark.parametrize("content, fragment", [
    (b"", "empty file"),
    (b"hello, I am a text file\n" * 10, "unrecognised checkpoint format"),
    (b"\x89PNG\r\n\x1a\n" + bytes(100), "unrecognised checkpoint format"),
    (b"\x80\x04" + os.urandom(2000), "corrupt pickle"),
])
def test_empty_and_garbage_files(content, fragment, tmp_path):
    path = tmp_path / "weights.pkl"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, fragment)


def test_hostile_torch_file_is_refused_by_weights_only(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": _Reduce(os.system, f"touch {marker}")}, path)
    with pytest.raises(CheckpointError) as err:
        load_generator(path)
    _assert_one_line(err, path, "refused by the weights-only loader")
    assert not marker.exists()


def test_truncated_torch_and_native_files(tmp_path):
    from models.checkpoints import save_native, to_rosinality
    from tests.tiny import tiny_generator

    G = tiny_generator()
    for name, write in [("g.pt", lambda p: torch.save(to_rosinality(G), p)),
                        ("g.safetensors", lambda p: save_native(G, p))]:
        full = tmp_path / f"full-{name}"
        write(full)
        data = full.read_bytes()
        path = tmp_path / name
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError) as err:
            load_generator(path)
        _assert_one_line(err, path, "truncated or corrupt")


# ---------------------------------------------------------------------------------------------------
# What the user sees


def test_cli_hostile_pickle_one_line_exit_3(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(_hostile("os.system", marker))
    out = tmp_path / "out"
    proc = run_cli("generate", "--weights", bad, "--seeds", "0", "--out", out)
    assert_user_error(proc, "evil.pkl", "refused global", code=3)
    assert not marker.exists()
    assert not out.exists() or not any(out.iterdir())


def test_cli_truncated_pickle_one_line_exit_3(run_cli, stylegan_fixture_dir, tmp_path):
    data = (stylegan_fixture_dir / "sg2_tiny64.pkl").read_bytes()
    bad = tmp_path / "cut.pkl"
    bad.write_bytes(data[: len(data) // 2])
    proc = run_cli("generate", "--weights", bad, "--seeds", "0", "--out", tmp_path / "out")
    assert_user_error(proc, "cut.pkl", "truncated", code=3)
