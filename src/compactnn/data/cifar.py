"""CIFAR-10 from its "python version" batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

The batches are Python pickles: that is the data set's own published format, so there is no pickle-free way to read
them. They are read with :class:`BatchUnpickler`, whose ``find_class`` refuses every global except the handful that
rebuild a numpy array (``numpy.core.multiarray._reconstruct`` / ``numpy._core.multiarray._reconstruct``,
``numpy.ndarray``, ``numpy.dtype``, and numpy's protocol-5 ``_frombuffer``) plus a latin-1-only stand-in for
``_codecs.encode`` (which protocol-2 pickles written by Python 3 use for bytes). None of these can run code or touch
files, so a tampered batch cannot do more than fail to load. The dicts, lists, bytes and ints around the arrays need
no globals at all.

Each batch is a dict with ``b"data"`` (uint8, ``(N, 3072)``: 1024 red, then green, then blue values of a 32x32 image
in row-major order) and ``b"labels"`` (N ints in 0..9). Inputs are scaled to [0, 1] and normalized per channel with
the usual CIFAR-10 training-set statistics: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616).
"""

from __future__ import annotations

import os
import pickle
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset
from .fetch import Resource, locate

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
    from numpy._core.numeric import _frombuffer
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct
    from numpy.core.numeric import _frombuffer

SUBFOLDER = "cifar-10-batches-py"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# MD5 published on https://www.cs.toronto.edu/~kriz/cifar.html (no SHA-256 is published).
ARCHIVE = Resource(
    "cifar-10-python.tar.gz",
    ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    md5="c58f30108f718f92721af3b95e74349a",
)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to the latin-1 use that protocol-2 pickles make of it for bytes objects."""
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds plain containers and numpy arrays (see the module docstring)."""

    def find_class(self, module: str, name: str):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return found


def read_batch(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 batch file into ``(images uint8 (N, 3, 32, 32), labels int64 (N,))``.

    Args:
        path: a ``data_batch_*`` or ``test_batch`` file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            batch = BatchUnpickler(f, encoding="bytes").load()
    except OSError as err:
        raise DataError(f"cannot read CIFAR batch {path}: {err.strerror or err}") from None
    except Exception as err:  # noqa: BLE001 - with only allow-listed globals, any failure means a malformed file
        raise DataError(f"{path} is not a valid CIFAR-10 python batch ({err}); download the data set again") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path} holds a {type(batch).__name__}, expected a dict with data and labels")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path} 'data' is {got}, expected a uint8 array of shape (N, 3072)")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        labels = np.zeros((0, 0))
    if labels.ndim != 1 or len(labels) != len(data):
        raise DataError(f"{path} has {len(data)} images but {labels.size} labels; expected one label per image")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
        raise DataError(f"{path} has labels outside 0..{len(CLASSES) - 1}")
    return data.reshape(-1, 3, 32, 32), labels


def find_batches(folder: Path) -> Path | None:
    """The folder holding all six batch files: ``folder`` itself or its ``cifar-10-batches-py``; else ``None``."""
    for candidate in (folder, folder / SUBFOLDER):
        if all((candidate / f).is_file() for f in (*TRAIN_FILES, TEST_FILE)):
            return candidate
    return None


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> ArrayDataset:
    x = images.astype(np.float32)
    for c in range(3):
        x[:, c] *= np.float32(1.0 / (255.0 * STD[c]))
        x[:, c] -= np.float32(MEAN[c] / STD[c])
    return ArrayDataset(torch.from_numpy(x), torch.from_numpy(labels))


def _unpack(cache: Path) -> None:
    """Extract the downloaded archive's batches into ``cache/cifar-10-batches-py`` (atomically), then delete it."""
    archive = cache / ARCHIVE.filename
    if find_batches(cache) is not None or not archive.exists():
        return
    work = Path(tempfile.mkdtemp(dir=cache, prefix=".extract-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith(SUBFOLDER + "/")]
            tar.extractall(work, members=members, filter="data")
        os.replace(work / SUBFOLDER, cache / SUBFOLDER)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot unpack {archive} ({err}); delete it and retry") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    archive.unlink()


@register_dataset("cifar10", "CIFAR-10 small colour images in 10 classes (50000 train / 10000 test, 3x32x32)")
def load_cifar10(root: PathLike | None = None, download: bool = True) -> DataBundle:
    """CIFAR-10 from its python batches (search order in :mod:`compactnn.data.fetch`), normalized per channel.

    Args:
        root: a folder holding the batch files, or their ``cifar-10-batches-py`` subfolder (searched first).
        download: download and unpack the archive into the user cache if the batches are found nowhere.
    """
    hint = f"download and unpack {ARCHIVE.urls[0]} into $COMPACTNN_DATA/cifar10 or pass root=..."
    folder = locate("cifar10", root, find_batches, download_ok=download, resources=[ARCHIVE], hint=hint,
                    prepare=_unpack)  # fmt: skip
    parts = [read_batch(folder / f) for f in TRAIN_FILES]
    train_x = np.concatenate([p[0] for p in parts])
    train_y = np.concatenate([p[1] for p in parts])
    test_x, test_y = read_batch(folder / TEST_FILE)
    return DataBundle("cifar10", _to_dataset(train_x, train_y), _to_dataset(test_x, test_y), 10, (3, 32, 32),
                      list(CLASSES))  # fmt: skip
