"""Writing files all at once: a temporary file in the same folder, then ``os.replace``.

A failure part-way leaves the old file (or nothing) in place, never half a file. The file gets the usual mode for a
new file (0666 less the umask), not ``tempfile.mkstemp``'s private 0600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import OutputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def public_mode(path: str | os.PathLike, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` (or ``mkdir``) would have given it."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents) if needed; :class:`OutputError` if it cannot be."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} exists and is not a folder; give a folder for the output")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create folder {path}: {err.strerror or err}; choose a writable folder") from None
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(fh)`` on a temporary binary file beside ``path``, then rename it to ``path``.

    Raises :class:`OutputError` when the folder does not exist or cannot be written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist; create it first")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; choose a writable folder") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        public_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` all at once."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` all at once."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_savefig(path: str | os.PathLike, fig, dpi: int = 120) -> Path:
    """Save a matplotlib figure as PNG at ``path`` all at once."""
    return atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=dpi))
