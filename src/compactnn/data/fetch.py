"""Finding a data set's files on disk, and downloading them (checksum-verified) into the user cache.

Search order for a data set ``name`` (first folder that holds every file wins):

1. the explicit ``root`` passed to :func:`compactnn.data.load`, then ``root/<name>``;
2. ``$COMPACTNN_DATA/<name>``, then ``$COMPACTNN_DATA`` itself;
3. the Debian package folder, where one exists (:data:`DEBIAN_DIRS`:
   ``/usr/share/datasets/fashion-mnist`` from ``apt-get install dataset-fashion-mnist``);
4. the user cache ``$XDG_CACHE_HOME/compactnn/<name>`` (default ``~/.cache/compactnn/<name>``).

Setting ``COMPACTNN_OFFLINE=1`` turns downloading off everywhere (tests and air-gapped machines set it).

Only when the files are found nowhere and ``download=True`` are they fetched from the data set's published URLs into
the user cache. Each download streams into a temporary file in the cache folder, is checked against the published
checksum (SHA-256, or MD5 where only that is published), and is renamed into place only if it matches; otherwise the
temporary file is deleted. Uses only the standard library (``urllib``, ``hashlib``) plus tqdm for the progress bar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import BinaryIO, Callable, Optional, Sequence, TypeVar

from tqdm import tqdm

from ..errors import DataError
from ..files import public_mode

T = TypeVar("T")
DATA_ENV = "COMPACTNN_DATA"
OFFLINE_ENV = "COMPACTNN_OFFLINE"
#: Folders where a Debian package installs a data set (monkeypatched in tests).
DEBIAN_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Resource:
    """One published file: its name in the cache, the URLs to try in order, and its published checksum.

    Args:
        filename: the file name to store it under.
        urls: mirrors, tried in order.
        sha256: the published SHA-256 hex digest, if one is published.
        md5: the published MD5 hex digest, used only when no SHA-256 is published.
    """

    filename: str
    urls: tuple[str, ...]
    sha256: str | None = None
    md5: str | None = None

    def __post_init__(self):
        if not (self.sha256 or self.md5):
            raise ValueError(f"resource {self.filename} needs a published sha256 or md5")


class DownloadFailed(DataError):
    """Every URL of a resource failed for a network reason (not a checksum mismatch)."""


def cache_dir(name: str) -> Path:
    """The user cache folder of data set ``name``: ``$XDG_CACHE_HOME/compactnn/<name>`` or ``~/.cache/...``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "compactnn" / name


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for data set ``name``, in order (see the module docstring)."""
    dirs: list[Path] = []
    if root is not None:
        base = Path(root).expanduser()
        dirs += [base, base / name]
    env = os.environ.get(DATA_ENV)
    if env:
        base = Path(env).expanduser()
        dirs += [base / name, base]
    if name in DEBIAN_DIRS:
        dirs.append(Path(DEBIAN_DIRS[name]))
    dirs.append(cache_dir(name))
    seen: set[Path] = set()
    return [d for d in dirs if not (d in seen or seen.add(d))]


def open_url(url: str, timeout: float = 60.0) -> BinaryIO:
    """Open ``url`` for reading (``urllib``); the one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 - fixed https/http data set URLs


def _hasher(resource: Resource):
    return ("sha256", hashlib.sha256()) if resource.sha256 else ("md5", hashlib.md5())


def download(resource: Resource, folder: Path, quiet: bool | None = None) -> Path:
    """Download ``resource`` into ``folder`` (created if needed), verified against its checksum; return its path.

    Args:
        resource: what to fetch and its published checksum.
        folder: the destination folder; the file appears there only once complete and verified.
        quiet: hide the progress bar; ``None`` hides it when stderr is not a terminal.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder {folder} ({err.strerror or err}); set XDG_CACHE_HOME to a "
                        "writable folder or put the files in $COMPACTNN_DATA") from None  # fmt: skip
    target = folder / resource.filename
    network_errors: list[str] = []
    mismatch: str | None = None
    for url in resource.urls:
        algo, digest = _hasher(resource)
        expected = (resource.sha256 or resource.md5 or "").lower()
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{resource.filename}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, open_url(url) as response:
                size = getattr(response, "headers", None)
                size = int(size.get("Content-Length") or 0) if size is not None else 0
                hide = quiet if quiet is not None else not sys.stderr.isatty()
                with tqdm(total=size or None, unit="B", unit_scale=True, desc=resource.filename, disable=hide) as bar:
                    while chunk := response.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
            got = digest.hexdigest()
            if got != expected:
                mismatch = (
                    f"download of {resource.filename} from {url} failed its checksum ({algo} expected {expected}, "
                    f"got {got}) and was discarded; retry later or place the file in {folder} yourself"
                )
                continue
            public_mode(tmp)
            os.replace(tmp, target)
            return target
        except OSError as err:  # URLError, HTTPError, timeouts and socket errors are all OSErrors
            network_errors.append(f"{url}: {err}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    if mismatch:
        raise DataError(mismatch)
    raise DownloadFailed(f"could not download {resource.filename} ({'; '.join(network_errors)})")


def locate(
    name: str,
    root: str | os.PathLike | None,
    finder: Callable[[Path], Optional[T]],
    *,
    download_ok: bool,
    resources: Sequence[Resource],
    hint: str,
    prepare: Callable[[Path], None] | None = None,
) -> T:
    """Find data set ``name``'s files, downloading them into the user cache when allowed and needed.

    Args:
        name: the data set name (cache and ``$COMPACTNN_DATA`` subfolder name).
        root: the caller's explicit folder, searched first; may be ``None``.
        finder: ``finder(folder)`` returns what the loader needs (e.g. file paths) if ``folder`` holds the data set,
            else ``None``.
        download_ok: whether downloading is allowed.
        resources: the files to download into the cache when found nowhere.
        hint: how a user gets the data by hand; ends the not-found message.
        prepare: run on the cache folder after downloading (e.g. to unpack an archive).
    """
    dirs = search_dirs(name, root)
    for folder in dirs:
        if folder.is_dir():
            found = finder(folder)
            if found is not None:
                return found
    looked = ", ".join(str(d) for d in dirs)
    if not os.environ.get(DATA_ENV):
        looked += f" (${DATA_ENV} is not set)"
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataError(f"{name} data not found; looked in {looked}; downloading is off (${OFFLINE_ENV} is set); {hint}")
    if not download_ok:
        raise DataError(f"{name} data not found; looked in {looked}; downloading is off (download=False); {hint}")
    cache = cache_dir(name)
    try:
        for resource in resources:
            if not (cache / resource.filename).exists():
                download(resource, cache)
        if prepare is not None:
            prepare(cache)
    except DownloadFailed as err:
        raise DataError(f"{name} data not found; looked in {looked}; {err}; {hint}") from None
    found = finder(cache)
    if found is None:
        raise DataError(f"{name} files were downloaded to {cache} but are incomplete; delete that folder and retry")
    return found
