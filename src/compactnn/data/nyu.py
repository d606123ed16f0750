"""NYU-Depth-v2 labelled set (Silberman et al. 2012): 1449 RGB-D images with dense labels, as a DataBundle.

Two layouts are read, searched for in ``root``, ``$COMPACTNN_DATA/nyu-depth-v2``, ``$COMPACTNN_DATA`` and the user
cache (nothing is downloaded: the published file is 2.8 GB; put it in one of these folders):

1. **The published file** ``nyu_depth_v2_labeled.mat`` (MATLAB v7.3, which is HDF5; needs the optional ``h5py``).
   MATLAB stores column-major, so HDF5 sees the axes reversed: ``images`` ``(N, 3, W, H)`` uint8, ``depths``
   ``(N, W, H)`` float (metres), ``labels`` ``(N, W, H)`` integer (0 = unlabelled, 1..894 the raw classes). A
   40-class map may sit in the same file as ``labels40`` (same layout) and is used when present. The standard split
   ``splits.mat`` (``trainNdxs`` / ``testNdxs``, 1-based, MATLAB v5, read with scipy) is used when it is beside it.
2. **Plain files** ``images.npy`` ``(N, H, W, 3)`` uint8, ``depths.npy`` ``(N, H, W)`` float and ``labels.npy``
   ``(N, H, W)`` integer, with optional ``train.npy`` / ``test.npy`` (0-based indices).

Without a split file the first ``round(N * 795 / 1449)`` images train and the rest test (the standard split's sizes).

Labels: 0 means unlabelled and becomes :data:`~compactnn.data.scenes.IGNORE`; ``1..classes`` become
``0..classes-1``. Raw 894-class labels need ``mapping``: an array (or ``.npy`` path) ``m`` with ``m[raw]`` in
``0..classes`` (e.g. the 40-class map of Gupta et al.). Depth 0 marks a hole (no reading) and stays 0; metrics skip
it. ``size=(H, W)`` resizes (area for images and depth, nearest for labels; a hole-aware resize is not attempted).

Bad input is one :class:`~compactnn.errors.DataError` line each: image/label/depth shape mismatch, labels outside
``0..classes``, NaN or negative depth, missing arrays.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .bundle import DataBundle, PathLike, register_dataset
from .fetch import search_dirs
from .scenes import IGNORE, DenseDataset

MAT_NAME = "nyu_depth_v2_labeled.mat"
NAME = "nyu-depth-v2"
STANDARD_TRAIN, STANDARD_TOTAL = 795, 1449
MAX_PIXELS = 1 << 31  # refuse files that claim absurd sizes before reading them


def check_arrays(images: np.ndarray, depths: np.ndarray, labels: np.ndarray, classes: int,
                 where: str = "NYU") -> None:
    """Raise one :class:`DataError` line if the arrays (``(N, 3, H, W)``, ``(N, H, W)``, ``(N, H, W)``) disagree in
    shape, labels leave ``0..classes`` or depth holds NaN / negative values."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"{where}: images must be (N, 3, H, W) RGB, got shape {images.shape}")
    n, _, h, w = images.shape
    if labels.shape != (n, h, w):
        raise DataError(f"{where}: images are {n} x {h}x{w} but labels are shaped {labels.shape}; they must match")
    if depths.shape != (n, h, w):
        raise DataError(f"{where}: images are {n} x {h}x{w} but depths are shaped {depths.shape}; they must match")
    if labels.size and (labels.min() < 0 or labels.max() > classes):
        bad = int(labels.max()) if labels.max() > classes else int(labels.min())
        raise DataError(f"{where}: label {bad} is outside 0..{classes} (0 = unlabelled); pass mapping= to map raw "
                        f"labels to {classes} classes")
    nan = int(np.isnan(depths).sum())
    if nan:
        raise DataError(f"{where}: depth has {nan} NaN values; mark missing depth with 0")
    if depths.size and depths.min() < 0:
        raise DataError(f"{where}: depth has negative values (min {float(depths.min()):.3g}); depth is in metres >= 0")


def _find(root: PathLike | None) -> tuple[str, Path]:
    for d in search_dirs(NAME, root):
        if (d / MAT_NAME).is_file():
            return "mat", d / MAT_NAME
        if all((d / f"{k}.npy").is_file() for k in ("images", "depths", "labels")):
            return "npy", d
    raise DataError(f"NYU-Depth-v2 not found: put {MAT_NAME} (or images/depths/labels.npy) in root= or "
                    f"$COMPACTNN_DATA/{NAME}; it is not downloaded automatically")


def _read_mat(path: Path):
    try:
        import h5py
    except ImportError:
        raise DataError(f"reading {path.name} needs h5py (pip install h5py), or convert it to images/depths/labels.npy"
                        ) from None
    try:
        with h5py.File(path, "r") as f:
            for key in ("images", "depths", "labels"):
                if key not in f or not isinstance(f[key], h5py.Dataset):
                    raise DataError(f"{path}: no '{key}' array; is this nyu_depth_v2_labeled.mat?")
            key = "labels40" if "labels40" in f else "labels"
            for k in ("images", "depths", key):
                if int(np.prod(f[k].shape, dtype=np.float64)) > MAX_PIXELS:
                    raise DataError(f"{path}: '{k}' claims shape {f[k].shape}, too large to be the NYU set")
            images = np.asarray(f["images"]).transpose(0, 1, 3, 2)  # (N, 3, W, H) -> (N, 3, H, W)
            depths = np.asarray(f["depths"], dtype=np.float32).transpose(0, 2, 1)
            labels = np.asarray(f[key]).transpose(0, 2, 1)
    except OSError as e:
        raise DataError(f"{path}: not a readable MATLAB v7.3 (HDF5) file ({' '.join(str(e).split())[:100]})") from None
    split = None
    splits = path.parent / "splits.mat"
    if splits.is_file():
        from scipy.io import loadmat

        try:
            s = loadmat(splits)
            split = (np.asarray(s["trainNdxs"]).ravel() - 1, np.asarray(s["testNdxs"]).ravel() - 1)
        except (KeyError, ValueError, OSError, NotImplementedError):
            raise DataError(f"{splits}: expected MATLAB arrays trainNdxs and testNdxs") from None
    return images, depths, labels, split


def _read_npy(folder: Path):
    def read(name):
        try:
            return np.load(folder / f"{name}.npy", allow_pickle=False, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise DataError(f"{folder / name}.npy: not a plain .npy array ({' '.join(str(e).split())[:80]})") from None

    images = read("images")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(f"{folder}/images.npy must be (N, H, W, 3), got shape {images.shape}")
    split = None
    if (folder / "train.npy").is_file() and (folder / "test.npy").is_file():
        split = (np.asarray(read("train")).ravel(), np.asarray(read("test")).ravel())
    return (np.array(images).transpose(0, 3, 1, 2), np.array(read("depths"), dtype=np.float32),
            np.array(read("labels")), split)


def read_nyu(root: PathLike | None = None, *, classes: int = 40, mapping=None):
    """The raw arrays ``(images uint8 (N,3,H,W), depths float32 (N,H,W), labels int64 (N,H,W) in 0..classes,
    (train_idx, test_idx))`` after the checks of :func:`check_arrays`."""
    kind, path = _find(root)
    images, depths, labels, split = _read_mat(path) if kind == "mat" else _read_npy(path)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be integers, got {labels.dtype}")
    labels = labels.astype(np.int64)
    if mapping is not None:
        m = np.load(mapping, allow_pickle=False) if isinstance(mapping, (str, os.PathLike)) else np.asarray(mapping)
        m = m.astype(np.int64).ravel()
        if labels.size and (labels.min() < 0 or labels.max() >= len(m)):
            raise DataError(f"{path}: label {int(labels.max())} has no entry in mapping of length {len(m)}")
        labels = m[labels]
    check_arrays(images, depths, labels, classes, str(path))
    n = len(images)
    if split is None:
        cut = int(round(n * STANDARD_TRAIN / STANDARD_TOTAL))
        split = (np.arange(cut), np.arange(cut, n))
    train, test = (np.array(s, dtype=np.int64) for s in split)
    for s in (train, test):
        if s.size and (s.min() < 0 or s.max() >= n):
            raise DataError(f"{path}: split indices must be in 0..{n - 1}, got {int(s.min())}..{int(s.max())}")
    return images, depths, labels, (train, test)


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    if size is None:
        return x
    if mode == "nearest":
        return F.interpolate(x.float(), size=tuple(size), mode="nearest").to(x.dtype)
    return F.interpolate(x, size=tuple(size), mode="area")


@register_dataset(NAME, "NYU-Depth-v2 labelled RGB-D set (1449 images, 40 classes; local file, no download)")
def load_nyu(root: PathLike | None = None, download: bool = True, *, classes: int = 40, mapping=None,
             size: tuple[int, int] | None = None) -> DataBundle:
    """NYU-Depth-v2 as a :class:`DataBundle` of :class:`DenseDataset` (layouts in the module docstring).

    Args:
        root: a folder holding ``nyu_depth_v2_labeled.mat`` or the ``.npy`` files; ``download`` is ignored.
        classes: number of semantic classes (labels ``1..classes``; 0 = unlabelled).
        mapping: raw label -> ``0..classes`` map (array or ``.npy`` path) for the 894-class labels.
        size: ``(H, W)`` to resize to, or None to keep the stored size.
    """
    images, depths, labels, (train, test) = read_nyu(root, classes=classes, mapping=mapping)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32) / 255.0)
    d = torch.from_numpy(np.ascontiguousarray(depths))[:, None]
    sem = torch.from_numpy(np.where(labels == 0, IGNORE, labels - 1))
    x, d = _resize(x, size, "area"), _resize(d, size, "area")
    sem = _resize(sem[:, None], size, "nearest")[:, 0]
    mean = x[torch.as_tensor(train)].mean(dim=(0, 2, 3)) if len(train) else torch.zeros(3)
    std = x[torch.as_tensor(train)].std(dim=(0, 2, 3)) + 1e-6 if len(train) > 1 else torch.ones(3)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    def part(idx) -> DenseDataset:
        i = torch.as_tensor(idx)
        return DenseDataset(x[i], sem[i], d[i], None, None, mean.tolist(), std.tolist())

    h, w = x.shape[-2:]
    return DataBundle(NAME, part(train), part(test), int(classes), (3, int(h), int(w)), None)


__all__ = ["load_nyu", "read_nyu", "check_arrays", "MAT_NAME"]
