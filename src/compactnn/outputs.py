"""Output folders and files of the CLI: checked before any work starts, locked while written, replaced crash-safely.

Rules (``compactnn run --out DIR`` and ``train``/``export`` output files):

* **Checked first.** :func:`check_output_dir` / :func:`check_output_file` run before data is loaded or anything is
  trained: a path under a file (``--out fast.yaml/sub``), a folder that cannot be created or written (``/proc/x``,
  read-only places), the working directory or one of its parents, an existing non-empty folder without ``--force``
  each end with one :class:`~compactnn.errors.OutputError` line. Checking creates the missing parent folders and
  probes them with a temporary folder that is removed again.
* **--force replaces only what compactnn made.** Every output folder gets a marker file :data:`MARKER`; ``--force``
  replaces a non-empty folder only if it holds that marker, never the working directory or its parents.
* **One writer per output.** :func:`output_lock` takes an exclusive ``flock`` on ``.<name>.compactnn-lock`` beside the
  output for the whole run (and removes it afterwards); a second writer fails at once with one line. Without ``--force`` the output must still be
  absent or empty when the finished run publishes it.
* **Crash-safe replacement.** The new output is written into a temporary folder beside it; :func:`publish_dir` then
  swaps the two folders atomically (Linux ``renameat2(RENAME_EXCHANGE)``) and deletes the old one, so at every
  instant the output path holds either the complete old output or the complete new one. Where the exchange is not
  available, the old folder is renamed aside first (a crash between the two renames leaves it there, never lost).
* A full disk (ENOSPC) or any OS error while writing is one line; nothing partial is left at the output path.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError

MARKER = ".compactnn-output"


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path("/")


def _protected(out: Path) -> str | None:
    """Why ``out`` must never be replaced (the working directory, one of its parents, the root), else None."""
    try:
        cwd = Path.cwd().resolve()
    except OSError:
        cwd = None
    real = out.resolve()
    if real == Path(real.anchor):
        return "the file system root"
    if cwd is not None and (cwd == real or real in cwd.parents):
        return "the working directory" if cwd == real else "a parent of the working directory"
    return None


def _probe_parent(out: Path) -> None:
    """Create ``out``'s parent folders and check a folder can be made there; OutputError (one line) if not."""
    parent = out.parent
    base = _first_existing(parent)
    if not base.is_dir():
        raise OutputError(f"cannot write {out}: {base} is a file, not a folder; choose another output path")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as err:
        raise OutputError(f"cannot write {out}: {err.strerror or err}; choose a writable output folder") from None


def check_output_dir(out: str | os.PathLike, force: bool) -> Path:
    """Check an output folder before any work starts (see the module docstring); returns it as a Path."""
    out = Path(out)
    why = _protected(out)
    if why is not None and (out.exists() or force):
        raise OutputError(f"output {out} is {why}; it is never replaced: choose a new folder for --out")
    if out.exists() and not out.is_dir():
        raise OutputError(f"output {out} exists and is not a folder; choose another --out")
    if out.is_dir():
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as err:
            raise OutputError(f"cannot read output folder {out}: {err.strerror or err}") from None
        if entries and not force:
            raise OutputError(f"output folder {out} exists and is not empty; choose another --out or pass --force")
        if entries and MARKER not in entries:
            raise OutputError(f"output folder {out} was not written by compactnn (no {MARKER} marker); --force "
                              f"only replaces compactnn's own outputs: remove it yourself or choose another --out")
    _probe_parent(out)
    return out


def check_output_file(out: str | os.PathLike, force: bool) -> Path:
    """Check an output file path (``train --out``, ``export``) before any work starts."""
    out = Path(out)
    if out.is_dir():
        raise OutputError(f"output {out} is a folder; give a file path such as {out / 'model.cnz'}")
    if os.path.lexists(out) and not force:
        raise OutputError(f"{out} exists; choose another output or pass --force")
    if os.path.lexists(out) and not out.is_file():
        raise OutputError(f"output {out} exists and is not a regular file; choose another output")
    _probe_parent(out)
    return out


@contextlib.contextmanager
def output_lock(out: str | os.PathLike):
    """Hold an exclusive lock on output ``out`` (a lock file beside it, removed again when the lock is released);
    OutputError at once if another process holds it.

    The lock file is deleted while still locked; a process that locked a file that was deleted meanwhile notices
    (its inode is no longer the path's) and locks the new one, so two writers never both hold the lock.
    """
    out = Path(out)
    lock = out.parent / f".{out.name}.compactnn-lock"
    for _ in range(100):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as err:
            raise OutputError(f"cannot lock output {out}: {err.strerror or err}; choose a writable output "
                              f"folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputError(f"another compactnn process is writing {out}; wait for it or choose another "
                              f"output") from None
        try:
            current = os.stat(lock)
        except FileNotFoundError:
            current = None
        mine = os.fstat(fd)
        if current is not None and (current.st_ino, current.st_dev) == (mine.st_ino, mine.st_dev):
            break
        os.close(fd)  # the file was removed by the previous holder after we opened it: lock the new one
    else:
        raise OutputError(f"cannot lock output {out}: the lock file keeps changing; try again")
    try:
        yield lock
    finally:
        try:
            os.unlink(lock)
        except OSError:
            pass
        os.close(fd)


def new_dir_beside(out: Path) -> Path:
    """A fresh temporary folder beside ``out`` (same file system), with the marker file, mode as by ``mkdir``."""
    from .files import public_mode

    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        public_mode(tmp, folder=True)
        (tmp / MARKER).write_text("written by compactnn; `compactnn run --force` may replace this folder\n")
    except OSError as err:
        raise OutputError(f"cannot write {out}: {err.strerror or err}; nothing was written") from None
    return tmp


_RENAME_EXCHANGE = 2
_libc = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if the system cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            _libc.renameat2  # noqa: B018 - raises AttributeError on old C libraries
        except (OSError, AttributeError):
            _libc = False
    if not _libc:
        return False
    at_fdcwd = -100
    rc = _libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish_dir(tmp: Path, out: Path, force: bool = True) -> None:
    """Make the finished folder ``tmp`` the output ``out`` crash-safely (see the module docstring)."""
    try:
        if not os.path.lexists(out):
            os.rename(tmp, out)
            return
        if not out.is_dir():
            raise OutputError(f"output {out} became a file while the run worked; nothing was replaced")
        entries = [p.name for p in out.iterdir()]
        if entries and not force:
            raise OutputError(f"output folder {out} was filled by someone else while this run worked; the result is "
                              f"not written: choose another --out or pass --force")
        if entries and MARKER not in entries:
            raise OutputError(f"output folder {out} was not written by compactnn (no {MARKER} marker); not replaced")
        if _exchange(tmp, out):
            shutil.rmtree(tmp, ignore_errors=True)  # tmp now holds the old output
            return
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        raise OutputError(f"cannot write {out}: {err.strerror or err}; the previous output is unchanged") from None
