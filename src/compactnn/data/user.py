"""Data a user brings: a ``torch.utils.data.DataLoader`` or ``Dataset`` instead of a :class:`DataBundle`.

:func:`as_bundle` wraps it so that :func:`compactnn.compress` and every method can use it as they use a bundle:
``.train`` (what :func:`compactnn.train.fit` iterates: a DataLoader as the user built it, with its own batching and
shuffling, or a map-style Dataset that ``fit`` batches itself), ``.test``, ``.input_shape`` (read off the first
example), and the two ways methods draw examples: :meth:`UserData.head` (the first n inputs, for calibration) and
:meth:`UserData.examples` (n inputs drawn at random with a seed, for importance scores).
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset

from ..errors import DataError


def _pair(item: Any, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(item, (tuple, list)) and len(item) >= 2 and isinstance(item[0], torch.Tensor):
        return item[0], torch.as_tensor(item[1])
    raise DataError(f"{where} must yield (input, target) pairs of tensors, got {type(item).__name__}; wrap it so "
                    "that it does")


def batches_of(source: Any, batch_size: int = 256) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of a DataLoader (as it batches) or a Dataset (``batch_size`` at a time, in order)."""
    loader = source if isinstance(source, DataLoader) else DataLoader(source, batch_size=batch_size, shuffle=False)
    for item in loader:
        yield _pair(item, "the data")


class UserData:
    """A user's DataLoader or Dataset, seen as a :class:`~compactnn.data.DataBundle` (see the module docstring).

    Args:
        train: the training data: a DataLoader or a map-style Dataset of ``(input, target)`` pairs.
        test: optional evaluation data of the same kinds.
        input_shape: one example's shape; read from the first training example when not given.
        num_classes: the number of classes, where known (only needed to build registry models).
    """

    name = "user data"

    def __init__(self, train: Any, test: Any = None, input_shape: tuple[int, ...] | None = None,
                 num_classes: int | None = None) -> None:
        for part, value in (("train", train), ("test", test)):
            if value is not None and not isinstance(value, (DataLoader, Dataset)):
                raise DataError(f"{part} data must be a DataLoader or a Dataset, got {type(value).__name__}")
        self.train, self.test, self.num_classes = train, test, num_classes
        if input_shape is None:
            x, _ = next(iter(batches_of(train, 1)), (None, None))
            if x is None:
                raise DataError("the training data is empty; give at least one example")
            input_shape = tuple(x.shape[1:])
        self.input_shape = tuple(int(s) for s in input_shape)

    def __repr__(self) -> str:
        return f"UserData(train={type(self.train).__name__}, input_shape={self.input_shape})"

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` training inputs (fewer if there are fewer), in order."""
        xs, count = [], 0
        for x, _ in batches_of(self.train):
            xs.append(x[: n - count])
            count += len(xs[-1])
            if count >= n:
                break
        if not xs:
            raise DataError("the training data is empty; give at least one example")
        return torch.cat(xs)

    def _dataset(self) -> Dataset:
        ds = self.train.dataset if isinstance(self.train, DataLoader) else self.train
        if isinstance(ds, IterableDataset) or not hasattr(ds, "__len__"):
            raise DataError("this method draws examples at random and needs a map-style Dataset (with __len__ and "
                            "__getitem__), not an iterable one")
        return ds

    def examples(self, n: int, seed: int = 0) -> torch.Tensor:
        """``n`` training inputs drawn at random (without replacement, seeded) from a map-style training set."""
        ds = self._dataset()
        idx = np.random.default_rng(seed).permutation(len(ds))[:n]
        return torch.stack([_pair(ds[int(i)], "the training set")[0] for i in idx])

    def split_train(self, fraction: float, seed: int = 0) -> tuple[Subset, Subset]:
        """``(train, heldout)`` subsets of a map-style training set; ``heldout`` gets ``fraction`` of the rows."""
        ds = self._dataset()
        if not 0.0 < fraction < 1.0 or len(ds) < 2:
            raise DataError(f"cannot hold out {fraction} of a training set of {len(ds)} rows")
        order = np.random.default_rng(seed).permutation(len(ds))
        n_held = min(max(int(round(fraction * len(ds))), 1), len(ds) - 1)
        return Subset(ds, sorted(order[n_held:].tolist())), Subset(ds, sorted(order[:n_held].tolist()))


def as_bundle(data: Any) -> Any:
    """``data`` as something every method can use: a DataBundle or UserData as it is, a DataLoader or Dataset
    wrapped in :class:`UserData`, a ``(train, test)`` pair of them wrapped together."""
    from .bundle import DataBundle

    if isinstance(data, (DataBundle, UserData)):
        return data
    if isinstance(data, (DataLoader, Dataset)):
        return UserData(data)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(d, (DataLoader, Dataset)) for d in data):
        return UserData(*data)
    raise DataError(f"data must be a DataBundle, a DataLoader, a Dataset or a (train, test) pair of them, got "
                    f"{type(data).__name__}")


__all__ = ["UserData", "as_bundle", "batches_of"]
