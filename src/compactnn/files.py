"""Writing files all at once (a temporary file in the same folder, then ``os.replace``) and reading files that may
be hostile (only regular files, size checked before reading: :func:`open_regular`, :func:`read_regular`).

A failure part-way leaves the old file (or nothing) in place, never half a file; a full disk (ENOSPC) or any other
OS error while writing is one :class:`~compactnn.errors.OutputError` line. The file gets the usual mode for a new
file (0666 less the umask), not ``tempfile.mkstemp``'s private 0600.
"""

from __future__ import annotations

import os
import stat
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
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {err.strerror or err}; nothing was written") from None
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


# ------------------------------------------------------------------------------------------ reading hostile files
class _Reader:
    """A regular file opened by :func:`open_regular`: its size (from ``fstat``) and ``read_at(offset, n)``."""

    def __init__(self, fd: int, size: int, path: str) -> None:
        self.fd, self.size, self.path = fd, size, path

    def read_at(self, offset: int, n: int) -> bytes:
        """Exactly ``n`` bytes at ``offset`` (fewer only if the file shrank while open)."""
        chunks, got = [], 0
        while got < n:
            chunk = os.pread(self.fd, min(n - got, 1 << 24), offset + got)
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _a(what: str) -> str:
    return f"{'an' if what[:1] in 'aeiouAEIOU' or what.startswith(('IDX', 'MNIST')) else 'a'} {what}"


def open_regular(path: str | os.PathLike, what: str, error: type[Exception], max_bytes: int | None = None) -> _Reader:
    """Open ``path`` for reading only if it is a regular file, without ever blocking, and check its size.

    The file is opened with ``O_NONBLOCK`` (a FIFO or device never blocks the open) and ``fstat``-ed: anything but a
    regular file (FIFO, socket, device, folder) is refused, and so is a file larger than ``max_bytes``, before a
    single byte is read. Errors are ``error(one line)``; ``what`` names the kind of file in them.
    """
    path = os.fspath(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"no such file: {path}; check the path") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not {_a(what)}") from None
    except OSError as err:
        raise error(f"cannot read {path}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{path} is a folder, not {_a(what)}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path} is not a regular file (a FIFO, socket or device); give {_a(what)}")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(f"{path} is {st.st_size:,} bytes, more than the {max_bytes:,} {_a(what)} may have")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return _Reader(fd, st.st_size, path)


def read_regular(path: str | os.PathLike, what: str, error: type[Exception], max_bytes: int,
                 check_head: Callable[[bytes], None] | None = None, head: int = 16) -> bytes:
    """Read a whole regular file of at most ``max_bytes`` (see :func:`open_regular`).

    ``check_head(first_bytes)`` (the first ``head`` bytes, or fewer in a short file) runs before the rest is read,
    so a file with the wrong magic is refused without reading it.
    """
    with open_regular(path, what, error, max_bytes) as reader:
        first = reader.read_at(0, min(head, reader.size))
        if check_head is not None:
            check_head(first)
        rest = reader.read_at(len(first), reader.size - len(first))
        data = first + rest
        if len(data) != reader.size:
            raise error(f"{reader.path} changed size while it was read; try again")
        return data
