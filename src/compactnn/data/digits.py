"""scikit-learn's bundled 8x8 handwritten digits: the default data set, needing no files and no network.

The 1797 images (``sklearn.datasets.load_digits``, pixel values 0..16) are split 80/20 with
``sklearn.model_selection.train_test_split(test_size=0.2, random_state=0, stratify=labels)``, so the split is fixed
and every class keeps its share (1437 train, 360 test). Pixels are scaled to [0, 1] by dividing by 16, then
normalized with the mean and standard deviation of all training pixels (one scalar each, computed on the train part
only, so nothing leaks from the test set): ``x = (pixel / 16 - mean) / std``.
"""

from __future__ import annotations

import numpy as np
import torch

from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset


@register_dataset("digits", "scikit-learn's bundled 8x8 handwritten digits (1437 train / 360 test, 1x8x8)")
def load_digits(root: PathLike | None = None, download: bool = True) -> DataBundle:
    """The digits bundle (shape ``(1, 8, 8)``, 10 classes).

    Args:
        root: ignored (the data ships with scikit-learn).
        download: ignored (nothing is downloaded).
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    raw = sk_load_digits()
    x = raw.data.astype(np.float32) / 16.0
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=0, stratify=y)
    mean = float(x_train.mean())
    std = float(x_train.std())

    def to_set(xs: np.ndarray, ys: np.ndarray) -> ArrayDataset:
        xs = ((xs - mean) / std).astype(np.float32).reshape(-1, 1, 8, 8)
        return ArrayDataset(torch.from_numpy(np.ascontiguousarray(xs)), torch.from_numpy(ys))

    return DataBundle(
        name="digits",
        train=to_set(x_train, y_train),
        test=to_set(x_test, y_test),
        num_classes=10,
        input_shape=(1, 8, 8),
        classes=[str(d) for d in range(10)],
    )
