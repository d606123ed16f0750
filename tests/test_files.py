"""Atomic writes: all or nothing, and the usual file mode (not mkstemp's 0600)."""

import os
import stat

import pytest

from compactnn.errors import OutputError
from compactnn.files import atomic_write, atomic_write_text


def test_atomic_write_gives_the_usual_mode(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "hello")
    assert path.read_text() == "hello"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")

    def broken(fh):
        fh.write(b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_missing_folder_is_an_output_error(tmp_path):
    with pytest.raises(OutputError, match="does not exist; create it first"):
        atomic_write_text(tmp_path / "nope" / "a.txt", "x")
