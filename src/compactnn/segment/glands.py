"""Synthetic gland histology and the MICCAI 2015 GlaS file layout.

:func:`synthetic_glands` draws H&E-like tiles with exact instance masks: irregular glands (an ellipse whose radius
is perturbed by a few low Fourier modes) made of a dark epithelium ring with nuclei around a pale lumen, in a
fibrous pink stroma holding scattered nuclei of its own, with per-tile epithelium contrast, stain variation, blur and
noise. Glands may come within a pixel of each other but never touch, so every gland is one connected instance. Seeded: the same arguments give the same arrays.

:func:`load_glas` reads the challenge's published layout: ``train_<k>.bmp`` with ``train_<k>_anno.bmp``, and the
``testA_*`` / ``testB_*`` pairs (annotations are instance-label images, 0 = background).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import ConfigError, DataError

#: Mean H&E colours (RGB in [0, 1]) of stroma, epithelium, nuclei and lumen.
STROMA, EPITHELIUM, NUCLEUS, LUMEN = (0.86, 0.60, 0.74), (0.62, 0.42, 0.70), (0.30, 0.18, 0.48), (0.96, 0.92, 0.95)


def _gland(shape, rng, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One gland: its pixel mask and, inside it, the lumen mask."""
    h, w = shape
    cy, cx = rng.uniform(0.1 * h, 0.9 * h), rng.uniform(0.1 * w, 0.9 * w)
    a, b = rng.uniform(0.07, 0.17, size=2) * size
    theta = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    radius = np.ones_like(phi)
    for k in range(2, 6):
        radius += rng.uniform(0.0, 0.12 / (k - 1)) * np.cos(k * phi + rng.uniform(0, 2 * np.pi))
    gland = rho < radius
    lumen = rho < radius * rng.uniform(0.45, 0.7)
    return gland, lumen


def synthetic_glands(n: int, size: int = 96, glands: tuple[int, int] = (2, 5), seed: int = 0,
                     noise: float = 0.06, *, contrast: tuple[float, float] = (0.4, 1.0), stain: float = 0.15,
                     gap: int = 1, decoys: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` synthetic tiles: images ``(n, 3, size, size)`` float32 in [0, 1] and instance masks ``(n, size, size)``
    int32 (0 = stroma, 1..k = glands).

    The defaults are the original (easy) setting, unchanged draw for draw; the keyword-only arguments make the task
    harder (see ``benchmarks/fcn_quant.py`` for the setting its pilot chose).

    Args:
        n: number of tiles.
        size: tile side in pixels (>= 32).
        glands: inclusive range of glands per tile (fewer when they do not fit apart).
        seed: the random seed.
        noise: std of the additive pixel noise.
        contrast: range of the per-tile epithelium contrast, 0 (epithelium coloured as stroma) to 1 (full H&E
            epithelium colour); lower is harder.
        stain: per-tile, per-channel stain factor drawn from ``[1 - stain, 1 + stain]``.
        gap: minimum gap in pixels between two glands (0: glands may touch, so one connected component can hold two
            instances, as in real GlaS tiles).
        decoys: up to this many pale lumen-like spaces in the stroma per tile (vessels, fat), with no epithelium
            around them: not glands (label 0).
    """
    if n < 1 or size < 32 or not (1 <= glands[0] <= glands[1]):
        raise ConfigError(f"synthetic_glands needs n >= 1, size >= 32 and 1 <= min <= max glands; got n={n}, "
                          f"size={size}, glands={glands}")
    if not (0.0 <= contrast[0] <= contrast[1] <= 1.0) or not 0.0 <= stain < 1.0 or gap < 0 or decoys < 0 \
            or noise < 0:
        raise ConfigError(f"synthetic_glands needs 0 <= contrast min <= max <= 1, 0 <= stain < 1, gap >= 0, "
                          f"decoys >= 0 and noise >= 0; got contrast={contrast}, stain={stain}, gap={gap}, "
                          f"decoys={decoys}, noise={noise}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.float32)
    masks = np.zeros((n, size, size), dtype=np.int32)
    for t in range(n):
        label, lumen_all = masks[t], np.zeros((size, size), dtype=bool)
        want = int(rng.integers(glands[0], glands[1] + 1))
        for _ in range(want * 8):
            if label.max() >= want:
                break
            gland, lumen = _gland((size, size), rng, size)
            grown = ndimage.binary_dilation(gland, iterations=gap) if gap else gland
            if gland.sum() < 30 or (grown & (label > 0)).any():
                continue  # too small, or closer than ``gap`` pixels to another gland
            label[gland] = label.max() + 1
            lumen_all |= lumen
        fibres = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma=(0.8, 3.0))
        image = np.empty((3, size, size))
        for c in range(3):
            image[c] = STROMA[c] + 0.06 * fibres / (fibres.std() + 1e-9)
        epithelium = (label > 0) & ~lumen_all
        spots = ndimage.gaussian_filter(rng.random((size, size)), 0.7)
        nuclei = epithelium & (spots > 0.53)
        stroma_nuclei = (label == 0) & (spots > rng.uniform(0.56, 0.6))  # fibroblasts and lymphocytes
        strength = rng.uniform(*contrast)  # how far the epithelium's stain is from the stroma's, per tile
        epi = tuple(STROMA[c] + strength * (EPITHELIUM[c] - STROMA[c]) for c in range(3))
        for region, colour in ((epithelium, epi), (nuclei, NUCLEUS), (stroma_nuclei, NUCLEUS),
                               (lumen_all & (label > 0), LUMEN)):
            for c in range(3):
                image[c][region] = colour[c]
        factor = rng.uniform(1.0 - stain, 1.0 + stain, size=(3, 1, 1))
        if decoys:  # drawn last, so that decoys=0 keeps the original draws
            want, placed = int(rng.integers(0, decoys + 1)), 0
            for _ in range(want * 8):
                if placed >= want:
                    break
                space, _ = _gland((size, size), rng, size // 2)
                if space.sum() < 6 or (ndimage.binary_dilation(space, iterations=2) & (label > 0)).any():
                    continue
                placed += 1
                for c in range(3):
                    image[c][space] = LUMEN[c]
        image = ndimage.gaussian_filter(image * factor, sigma=(0, 0.6, 0.6))
        image += rng.normal(0.0, noise, size=image.shape)
        images[t] = np.clip(image, 0.0, 1.0)
    return images, masks


_PAIR = re.compile(r"^(train|testA|testB)_(\d+)\.bmp$")


def load_glas(root: str | os.PathLike, max_pixels: int = 4096 * 4096) -> dict[str, list[tuple[str, np.ndarray,
                                                                                               np.ndarray]]]:
    """The GlaS data set in its published layout under ``root``.

    Returns:
        ``{"train": [...], "testA": [...], "testB": [...]}``, each a list of ``(name, image, labels)``: ``image``
        uint8 ``(H, W, 3)``, ``labels`` int32 ``(H, W)`` instance labels, sorted by number.

    Raises:
        DataError: no GlaS images under ``root``, a missing or unreadable annotation, an annotation whose size
            differs from its image, or an image larger than ``max_pixels``.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"GlaS folder {root} does not exist; point root at the folder holding train_1.bmp ...")
    found = sorted((m.group(1), int(m.group(2)), p) for p in root.iterdir() if (m := _PAIR.match(p.name)))
    if not found:
        raise DataError(f"no GlaS images (train_<k>.bmp, testA_<k>.bmp, testB_<k>.bmp) in {root}")
    out: dict[str, list] = {"train": [], "testA": [], "testB": []}

    def read(path: Path, mode: str) -> np.ndarray:
        if not path.is_file():
            raise DataError(f"{path} is missing; every GlaS image needs its <name>_anno.bmp annotation")
        try:
            with Image.open(path) as img:
                if img.width * img.height > max_pixels:
                    raise DataError(f"{path} is {img.width}x{img.height}, larger than {max_pixels} pixels")
                return np.asarray(img.convert(mode) if mode == "RGB" else img)
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - PIL raises many kinds for a damaged file
            raise DataError(f"{path} is not a readable BMP image ({type(err).__name__})") from None

    for split, number, path in found:
        image = read(path, "RGB")
        labels = read(path.with_name(path.stem + "_anno.bmp"), "labels")
        if labels.ndim == 3:
            labels = labels[..., 0]
        if labels.shape != image.shape[:2]:
            raise DataError(f"{path.name}: annotation is {labels.shape[1]}x{labels.shape[0]} but the image is "
                            f"{image.shape[1]}x{image.shape[0]}")
        out[split].append((path.stem, image.astype(np.uint8), labels.astype(np.int32)))
    return out


__all__ = ["synthetic_glands", "load_glas"]
