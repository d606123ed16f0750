"""Moving Fashion-MNIST: short clips of one clothing item moving over a cluttered background, labelled by its class.

A clip classifier sees high-dimensional frames (64 x 64 = 4096 inputs per step), which is where a factorized
input-to-hidden map (BT-LSTM, TT-LSTM) pays off. The generator (:func:`make_moving`) works on any gray images:

1. **Length.** Each clip has ``T`` frames, ``T`` drawn uniformly from ``frames = (lo, hi)`` (default 6..10), or a
   fixed ``T`` when ``frames`` is an int.
2. **Background** (fixed for the clip): ``clutter`` patches (default 4), each a random crop of half the item's size
   from another random source image, scaled by a contrast drawn from ``clutter_contrast`` (default 0.15..0.35) and
   pasted at a random place (overlaps keep the brighter pixel).
3. **Path.** The item starts at a uniform random position with the whole item inside the frame, with a speed drawn
   from ``speed`` (default 2..5 pixels per frame) in a uniform random direction. Every frame the velocity gets a
   small random acceleration ``N(0, accel^2)`` per axis (default 0.5; the speed is capped at twice the top speed),
   then the position moves and bounces off the borders (reflected, velocity flipped). Positions are rounded to whole
   pixels, so the item is always entirely inside the frame.
4. **Frame** = ``clip(max(background, item) + N(0, noise^2), 0, 1)``: the item is drawn over the background by
   pixelwise max; fresh Gaussian noise (default 0.05) every frame.
5. **Label** = the class of the moving item.

Everything comes from one ``numpy.random.Generator`` seeded with ``seed``: the same arguments give the same clips.
Clips are generated in memory on each call (about 1-2 s per 1000 clips of 10 frames; nothing is cached on disk).

**Layout.** Clips shorter than the longest length ``T_max`` are padded **at the start** with blank frames, so every
clip ends at the last time step and a recurrent model reads its last hidden state without lengths. In a
:class:`DataBundle` the inputs are ``x`` of shape ``(N, T_max, size, size)``: the frames sit in the channel axis, so
``input_shape = (T_max, size, size)`` fits the ``(C, H, W)`` convention of the rest of compactnn (a clip model
flattens each frame to ``size * size`` features). Pixels are normalized with the mean and std of the training
clips' real frames (``x = (pixel - mean) / std``); padding frames are exactly 0 after normalization, so
:func:`clip_lengths` recovers the lengths.

``load("moving-fashion-mnist")`` uses the Fashion-MNIST loader for its source images (so it works wherever
Fashion-MNIST is found): train clips move items from the Fashion-MNIST training set (seed ``seed``), test clips
items from its test set (seed ``seed + 1``). Defaults: 6000 train / 1000 test clips, 6..10 frames of 64 x 64.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError
from .bundle import ArrayDataset, DataBundle, PathLike, register_dataset


@dataclasses.dataclass
class MovingClips:
    """Clips made by :func:`make_moving` (raw pixels in [0, 1]).

    Args:
        x: frames, float32 ``(n, T_max, size, size)``; a clip of length ``T`` fills the last ``T`` frames and the
            first ``T_max - T`` frames are 0.
        y: labels, int64 ``(n,)`` (the moving item's label).
        lengths: int64 ``(n,)``, the number of real frames of each clip.
        positions: int64 ``(n, T_max, 2)``, the item's top-left ``(row, col)`` in each frame; -1 on padding frames.
        source: int64 ``(n,)``, the index of the moving item in the source images.
    """

    x: np.ndarray
    y: np.ndarray
    lengths: np.ndarray
    positions: np.ndarray
    source: np.ndarray


def _frame_range(frames: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(frames, (int, np.integer)) and not isinstance(frames, bool):
        lo = hi = int(frames)
    else:
        try:
            lo, hi = (int(f) for f in frames)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            raise DataError(f"frames must be an int or a (min, max) pair like (6, 10), got {frames!r}") from None
    if lo < 1 or hi < lo:
        raise DataError(f"frames must satisfy 1 <= min <= max, got {frames!r}; use e.g. (6, 10)")
    return lo, hi


def _as_unit_images(images) -> np.ndarray:
    """Source images as float32 ``(M, h, w)`` in [0, 1]: uint8 is divided by 255, floats must already be in [0, 1]."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3 or arr.shape[0] == 0:
        raise DataError(f"images must be a non-empty (M, h, w) or (M, 1, h, w) array, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all() or arr.min() < 0.0 or arr.max() > 1.0:
        raise DataError("float images must hold pixels in [0, 1]; rescale them (e.g. divide 0..255 pixels by 255)")
    return arr


def _reflect(p: float, v: float, high: float) -> tuple[float, float]:
    """Bounce position ``p`` into ``[0, high]``, flipping the velocity at each border hit."""
    if high <= 0:
        return 0.0, 0.0
    while p < 0 or p > high:
        if p < 0:
            p, v = -p, -v
        else:
            p, v = 2 * high - p, -v
    return p, v


def make_moving(images, labels, n: int, seed: int = 0, frames: int | Sequence[int] = (6, 10), size: int = 64, *,
                clutter: int = 4, clutter_contrast: tuple[float, float] = (0.15, 0.35), noise: float = 0.05,
                speed: tuple[float, float] = (2.0, 5.0), accel: float = 0.5) -> MovingClips:
    """Generate ``n`` clips of a source item moving over clutter (the recipe is in the module docstring).

    Args:
        images: source images ``(M, h, w)`` (or ``(M, 1, h, w)``), numpy or torch; uint8 (0..255) or floats in
            [0, 1]. The items and the clutter crops both come from them.
        labels: ``(M,)`` integer labels of the source images.
        n: number of clips (>= 1).
        seed: seed of the ``numpy.random.Generator``; the same arguments give the same clips.
        frames: clip length: an int, or ``(min, max)`` to draw each clip's length uniformly in ``min..max``.
        size: frame height and width in pixels; must be at least the images' height and width.
        clutter: number of background patches per clip (>= 0).
        clutter_contrast: ``(low, high)`` range of the patches' brightness scale.
        noise: std of the Gaussian pixel noise added to every frame (>= 0).
        speed: ``(low, high)`` range of the initial speed, pixels per frame.
        accel: std of the per-frame random acceleration per axis (0 for straight paths).

    Returns:
        A :class:`MovingClips` of raw pixels in [0, 1].

    Raises:
        DataError: bad shapes or values (images larger than the frame, labels not matching images, n < 1 ...).
    """
    src = _as_unit_images(images)
    lab = np.asarray(labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else labels)
    if lab.shape != (len(src),) or not np.issubdtype(lab.dtype, np.integer):
        raise DataError(f"labels must be {len(src)} integers (one per image), got shape {lab.shape} {lab.dtype}")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"n (the number of clips) must be a positive int, got {n!r}")
    lo, hi = _frame_range(frames)
    m, h, w = src.shape
    if h > size or w > size:
        raise DataError(f"images of {h}x{w} do not fit frames of {size}x{size}; use size >= {max(h, w)}")
    if clutter < 0 or noise < 0 or accel < 0 or not 0 <= speed[0] <= speed[1]:
        raise DataError("clutter, noise and accel must be >= 0 and speed a (low, high) pair with 0 <= low <= high")
    rng = np.random.default_rng(seed)
    ch, cw = max(1, h // 2), max(1, w // 2)
    top = 2.0 * max(speed[1], 1e-9)
    x = np.zeros((n, hi, size, size), dtype=np.float32)
    pos = np.full((n, hi, 2), -1, dtype=np.int64)
    lengths = rng.integers(lo, hi + 1, size=n)
    source = rng.integers(0, m, size=n)
    for i in range(n):
        t_len = int(lengths[i])
        bg = np.zeros((size, size), dtype=np.float32)
        for _ in range(clutter):
            img = src[rng.integers(0, m)]
            r0, c0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            pr, pc = rng.integers(0, size - ch + 1), rng.integers(0, size - cw + 1)
            patch = img[r0:r0 + ch, c0:c0 + cw] * np.float32(rng.uniform(*clutter_contrast))
            np.maximum(bg[pr:pr + ch, pc:pc + cw], patch, out=bg[pr:pr + ch, pc:pc + cw])
        item = src[source[i]]
        high = (size - h, size - w)
        p = [rng.uniform(0, high[0]), rng.uniform(0, high[1])]
        angle, s = rng.uniform(0, 2 * np.pi), rng.uniform(*speed)
        v = [s * np.sin(angle), s * np.cos(angle)]
        clip = np.repeat(bg[None], t_len, axis=0)
        for t in range(t_len):
            if t > 0:
                v = [v[0] + accel * rng.standard_normal(), v[1] + accel * rng.standard_normal()]
                norm = float(np.hypot(*v))
                if norm > top:
                    v = [v[0] * top / norm, v[1] * top / norm]
                for a in range(2):
                    p[a], v[a] = _reflect(p[a] + v[a], v[a], high[a])
            r, c = (min(max(int(round(p[a])), 0), high[a]) for a in range(2))
            pos[i, hi - t_len + t] = (r, c)
            np.maximum(clip[t, r:r + h, c:c + w], item, out=clip[t, r:r + h, c:c + w])
        if noise > 0:
            clip += np.float32(noise) * rng.standard_normal(clip.shape, dtype=np.float32)
        np.clip(clip, 0.0, 1.0, out=clip)
        x[i, hi - t_len:] = clip
    return MovingClips(x, lab[source].astype(np.int64), lengths.astype(np.int64), pos, source.astype(np.int64))


def clip_lengths(x: torch.Tensor) -> torch.Tensor:
    """Real frames per clip of a normalized bundle's ``x`` ``(N, T, H, W)``: frames after the leading all-zero ones."""
    blank = (x.flatten(2) == 0).all(dim=2)  # (N, T)
    lead = torch.cumprod(blank.to(torch.int64), dim=1).sum(dim=1)
    return x.shape[1] - lead


def moving_bundle(train_images, train_labels, test_images, test_labels, *, n_train: int, n_test: int,
                  seed: int = 0, frames: int | Sequence[int] = (6, 10), size: int = 64,
                  name: str = "moving", classes: list[str] | None = None, num_classes: int | None = None,
                  **options) -> DataBundle:
    """A normalized :class:`DataBundle` of moving clips: train clips from the train images (``seed``), test clips
    from the test images (``seed + 1``); ``input_shape = (T_max, size, size)`` (layout in the module docstring).

    Args:
        train_images / train_labels: source images and labels for the training clips (see :func:`make_moving`).
        test_images / test_labels: source images and labels for the test clips.
        n_train / n_test: number of clips in each part.
        seed: generator seed of the training clips (the test clips use ``seed + 1``).
        frames: clip length, an int or ``(min, max)``.
        size: frame height and width.
        name: the bundle's name.
        classes: class names by label.
        num_classes: number of classes (default: ``len(classes)``, else the largest label + 1).
        **options: passed to :func:`make_moving` (clutter, clutter_contrast, noise, speed, accel).
    """
    train = make_moving(train_images, train_labels, n_train, seed, frames, size, **options)
    test = make_moving(test_images, test_labels, n_test, seed + 1, frames, size, **options)
    count = float(train.lengths.sum()) * size * size  # padding frames are 0, so sums over x are sums over real frames
    mean = float(train.x.sum(dtype=np.float64)) / count
    sq = sum(float(np.dot(c.ravel(), c.ravel())) for c in train.x)  # float32 dot per clip, summed in float64
    std = float(np.sqrt(max(sq / count - mean * mean, 0.0))) or 1.0

    def to_set(clips: MovingClips) -> ArrayDataset:
        xs = clips.x
        xs -= np.float32(mean)
        xs *= np.float32(1.0 / std)
        for i, t_len in enumerate(clips.lengths):
            xs[i, : xs.shape[1] - int(t_len)] = 0.0
        return ArrayDataset(torch.from_numpy(xs), torch.from_numpy(clips.y))

    if num_classes is None:
        num_classes = len(classes) if classes else int(max(train.y.max(), test.y.max())) + 1
    shape = (int(train.x.shape[1]), int(size), int(size))
    return DataBundle(name, to_set(train), to_set(test), int(num_classes), shape, classes)


@register_dataset("moving-fashion-mnist",
                  "Fashion-MNIST items moving over clutter: 6-10 frames of 64x64 (6000 train / 1000 test clips)")
def load_moving_fashion_mnist(root: PathLike | None = None, download: bool = True, *, n_train: int = 6000,
                              n_test: int = 1000, seed: int = 0, frames: int | Sequence[int] = (6, 10),
                              size: int = 64, **options) -> DataBundle:
    """Moving Fashion-MNIST clips (module docstring), made from the Fashion-MNIST images wherever they are found.

    Args:
        root: a folder holding the Fashion-MNIST IDX files (searched first; see ``load("fashion-mnist")``).
        download: let the Fashion-MNIST loader download its files when found nowhere.
        n_train / n_test: number of training and test clips.
        seed: generator seed (test clips use ``seed + 1``).
        frames: clip length, an int or ``(min, max)``.
        size: frame height and width (>= 28).
        **options: passed to :func:`make_moving`.
    """
    from .idx import load_fashion_mnist

    fashion = load_fashion_mnist(root=root, download=download)

    def unit(ds: ArrayDataset) -> np.ndarray:  # undo the Fashion-MNIST normalization: back to [0, 1] pixels
        return np.clip(ds.x.numpy()[:, 0] * np.float32(0.3530) + np.float32(0.2860), 0.0, 1.0)

    return moving_bundle(unit(fashion.train), fashion.train.y.numpy(), unit(fashion.test), fashion.test.y.numpy(),
                         n_train=n_train, n_test=n_test, seed=seed, frames=frames, size=size,
                         name="moving-fashion-mnist", classes=fashion.classes, **options)
