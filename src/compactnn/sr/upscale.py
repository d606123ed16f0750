"""Upscaling a colour image with IDN: Y by the network, Cb and Cr by MATLAB bicubic, in tiles.

The image's float YCbCr (MATLAB ``rgb2ycbcr`` of RGB / 255, unrounded) is split; Y goes through the network's branch
tile by tile and is added to its bicubic upsampling, Cb and Cr are upsampled bicubically; the result is converted
back with ``ycbcr2rgb`` and rounded to uint8. Each LR tile is cut with a margin of :data:`MARGIN` pixels (more than
the network's receptive field: 26 3x3 convs plus the transposed conv's reach of ``ceil(16 / s)`` pixels), so the
tiled result equals the whole-image result up to float rounding, while memory stays bounded by the tile size.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import DataError
from . import matlab

MARGIN = 36


def tiles(length: int, tile: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``0..length`` in steps of ``tile``."""
    return [(a, min(a + tile, length)) for a in range(0, length, tile)]


@torch.no_grad()
def residual_tiled(model, y: np.ndarray, tile: int = 128, quiet: bool | None = None) -> np.ndarray:
    """The network branch of ``model`` on float32 LR image ``y`` (h, w), computed on ``tile`` x ``tile`` LR tiles
    with a :data:`MARGIN`-pixel margin; returns float32 (hs, ws)."""
    from tqdm.auto import tqdm

    s = int(model.scale)
    h, w = y.shape
    out = np.zeros((h * s, w * s), dtype=np.float32)
    grid = [(r, c) for r in tiles(h, tile) for c in tiles(w, tile)]
    x = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32))
    for (r0, r1), (c0, c1) in tqdm(grid, desc="upscaling", unit="tile", disable=quiet if quiet is not None else
                                   len(grid) < 4, leave=False):
        a0, a1 = max(r0 - MARGIN, 0), min(r1 + MARGIN, h)
        b0, b1 = max(c0 - MARGIN, 0), min(c1 + MARGIN, w)
        res = model.residual(x[a0:a1, b0:b1][None, None])[0, 0].numpy()
        out[r0 * s: r1 * s, c0 * s: c1 * s] = res[(r0 - a0) * s: (r1 - a0) * s, (c0 - b0) * s: (c1 - b0) * s]
    return out


def upscale_rgb(model, rgb: np.ndarray, tile: int = 128, quiet: bool | None = None) -> np.ndarray:
    """Upscale a uint8 (H, W, 3) RGB image by ``model.scale``: uint8 (sH, sW, 3)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"upscale needs a uint8 RGB image, got {rgb.dtype} {rgb.shape}")
    s = int(model.scale)
    if min(rgb.shape[:2]) < s:
        raise DataError(f"the image ({rgb.shape[1]}x{rgb.shape[0]}) is smaller than the scale {s}")
    if tile < 1:
        raise DataError(f"tile must be a positive number of pixels, got {tile}")
    model.eval()
    ycc = matlab.rgb2ycbcr(rgb.astype(np.float64) / 255.0).astype(np.float32)
    up = matlab.imresize(ycc, float(s))
    up[..., 0] += residual_tiled(model, ycc[..., 0], tile=tile, quiet=quiet)
    return matlab.to_uint8(matlab.ycbcr2rgb(up.astype(np.float64)) * 255.0)
