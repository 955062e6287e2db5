"""storage/files.py: the checks a reader of a user's file makes before opening it
(`require_readable_file`, used by the image and video readers)."""

from __future__ import annotations

import os

import pytest

from storage.errors import InputError
from storage.files import require_readable_file


def test_a_readable_file_passes_as_an_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "a.png").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert require_readable_file("a.png", "an image file") == tmp_path / "a.png"


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("directory", "is a directory, not an image file"),
    ("fifo", "is a FIFO (named pipe), not a regular file; refused as an image file"),
    ("empty", "empty file (0 bytes)"),
    ("unreadable", "permission denied"),
])
def test_each_unusable_file_is_a_one_line_input_error(tmp_path, case, message):
    path = tmp_path / f"{case}.png"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":
        os.mkfifo(path)
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads files without read permission")
        path.write_bytes(b"x")
        path.chmod(0)
    with pytest.raises(InputError) as err:
        require_readable_file(path, "an image file")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(path) in str(err.value)
