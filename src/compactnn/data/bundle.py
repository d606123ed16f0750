"""In-memory data sets (:class:`ArrayDataset`), their train/test bundle (:class:`DataBundle`) and the registry
that :func:`load` reads.

A data set family registers a loader ``f(root=None, download=True) -> DataBundle`` under a name::

    @register_dataset("digits", "scikit-learn's 8x8 handwritten digits, bundled (1797 images)")
    def load_digits(root=None, download=True) -> DataBundle: ...
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from typing import Callable, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import DataError

PathLike = Union[str, "os.PathLike[str]"]
Loader = Callable[..., "DataBundle"]


def stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` distinct row indices drawn at random so that each class keeps its share (to within one row).

    Quotas are ``floor(n * count / total)`` per class, and the rows left over go to the classes with the largest
    remainders (ties broken at random). Labels that are not 1-D integers are drawn uniformly instead.

    Args:
        y: the labels, shape ``(N,)``.
        n: how many indices to draw, ``0 <= n <= N``.
        rng: the random generator; the same seed gives the same indices.
    """
    total = len(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        return np.sort(rng.choice(total, size=n, replace=False))
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(np.int64)
    left = n - int(quota.sum())
    if left > 0:
        order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
        quota[order[:left]] += 1
    picked = []
    for c in range(len(classes)):
        members = np.flatnonzero(inverse == c)
        picked.append(rng.choice(members, size=int(quota[c]), replace=False))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)


class ArrayDataset(Dataset):
    """A data set held as two tensors: inputs ``x`` (float32, ``(N, C, H, W)``) and labels ``y`` (int64, ``(N,)``).

    Args:
        x: the inputs; row ``i`` is example ``i``.
        y: the labels, one row per input row.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError("ArrayDataset takes two torch tensors x and y")
        if len(x) != len(y):
            raise DataError(f"ArrayDataset has {len(x)} inputs but {len(y)} labels; give one label per input")
        self.x = x
        self.y = y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]

    def __repr__(self) -> str:
        return f"ArrayDataset(n={len(self)}, x={tuple(self.x.shape)} {self.x.dtype}, y={self.y.dtype})"

    def take(self, indices) -> "ArrayDataset":
        """The rows at ``indices`` (a sequence, array or tensor of ints) as a new data set, in that order."""
        index = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ArrayDataset(self.x[index], self.y[index])

    def subset(self, n: int, seed: int = 0) -> "ArrayDataset":
        """A random subset of ``n`` rows that keeps each class's share (for calibration or quick checks).

        Args:
            n: number of rows; ``n >= len(self)`` gives every row. Must be at least 1.
            seed: random seed; the same seed gives the same rows. Rows come in a random order.
        """
        if n < 1:
            raise DataError(f"subset size must be at least 1, got {n}")
        if n >= len(self):
            return self
        rng = np.random.default_rng(seed)
        index = stratified_indices(self.y.numpy(), int(n), rng)
        return self.take(rng.permutation(index))


@dataclasses.dataclass
class DataBundle:
    """A named data set with its train and test parts.

    Args:
        name: the registry name, e.g. ``"digits"``.
        train: the training set.
        test: the test set.
        num_classes: number of classes; labels are ``0 .. num_classes - 1``.
        input_shape: the shape of one input, ``(C, H, W)``.
        classes: class names by label, where known.
    """

    name: str
    train: ArrayDataset
    test: ArrayDataset
    num_classes: int
    input_shape: tuple[int, int, int]
    classes: list[str] | None = None

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` training inputs, in order (for calibration)."""
        return self.train.x[:n]

    def examples(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` training inputs drawn at random, each class keeping its share (for importance scores)."""
        return self.train.subset(n, seed).x

    def split_train(self, fraction: float, seed: int = 0) -> tuple[ArrayDataset, ArrayDataset]:
        """Split the training set into ``(train, heldout)``; ``heldout`` gets ``fraction`` of the rows.

        The split keeps each class's share in both parts and both parts keep the original row order.

        Args:
            fraction: the held-out share, strictly between 0 and 1 (rounded to whole rows, at least one each side).
            seed: random seed; the same seed gives the same split.
        """
        if not 0.0 < fraction < 1.0:
            raise DataError(f"split_train fraction must be strictly between 0 and 1, got {fraction}")
        total = len(self.train)
        if total < 2:
            raise DataError(f"cannot split a training set of {total} rows; it needs at least 2")
        n_held = min(max(int(round(fraction * total)), 1), total - 1)
        held = stratified_indices(self.train.y.numpy(), n_held, np.random.default_rng(seed))
        keep = np.setdiff1d(np.arange(total), held, assume_unique=True)
        return self.train.take(keep), self.train.take(held)


_LOADERS: dict[str, Loader] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_dataset(name: str, description: str) -> Callable[[Loader], Loader]:
    """Register a loader ``f(root=None, download=True) -> DataBundle`` under ``name`` for :func:`load`.

    Args:
        name: the registry name (lower case, words joined by ``-``), as used in recipes and the CLI.
        description: one line for ``compactnn list datasets``.
    """

    def decorate(loader: Loader) -> Loader:
        if name in _LOADERS and _LOADERS[name] is not loader:
            raise TypeError(f"data set name {name!r} is registered twice")
        _LOADERS[name] = loader
        _DESCRIPTIONS[name] = description
        return loader

    return decorate


def list_datasets(pattern: str = "*") -> list[str]:
    """Sorted registered data set names matching the shell-style ``pattern``."""
    return sorted(n for n in _LOADERS if fnmatch.fnmatchcase(n, pattern))


def describe_datasets(pattern: str = "*") -> dict[str, str]:
    """``{name: one-line description}`` of the registered data sets matching ``pattern``."""
    return {name: _DESCRIPTIONS[name] for name in list_datasets(pattern)}


def load(name: str = "digits", root: PathLike | None = None, download: bool = True, **options) -> DataBundle:
    """Load the data set registered as ``name``, with normalized float32 inputs.

    Args:
        name: a registered name (see :func:`list_datasets`); ``_`` and upper case are accepted (``Fashion_MNIST``).
        root: a folder to look in first for the data set's files (ignored by bundled data sets such as digits).
        download: fetch the files into the user cache when they are found nowhere else.
        **options: passed to the data set's loader (e.g. ``n_train``, ``size``, ``seed`` of ``"scenes"``).
    """
    key = str(name).strip().lower().replace("_", "-")
    loader = _LOADERS.get(key)
    if loader is None:
        raise DataError(f"unknown data set {name!r}; valid data sets are {', '.join(list_datasets())}")
    return loader(root=root, download=download, **options)
