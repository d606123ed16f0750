"""MATLAB-compatible image functions for the super-resolution test protocol.

Most public ports of SR papers miss the published tables by 0.1-0.3 dB because they resize or convert colours a
little differently from MATLAB. These functions follow MATLAB's definitions:

- :func:`imresize`: ``imresize(A, scale, 'bicubic')`` -- the cubic kernel with a = -0.5; when downscaling the kernel
  is widened by ``1/scale`` and scaled by ``scale`` (antialiasing); the sample positions, the index and weight
  tables, the border handling (symmetric/mirror padding) and the removal of all-zero weight columns follow MATLAB's
  ``contributions``; the dimension with the smaller scale is resized first (rows first when both are equal); the
  result of each pass has the input's class (float32 stays float32, uint8 is rounded and saturated).
- :func:`rgb2ycbcr` / :func:`ycbcr2rgb`: ITU-R BT.601 with MATLAB's studio-swing constants
  (Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 for R, G, B in [0, 255]); uint8 in, uint8 out (rounded).
- :func:`to_uint8`: MATLAB's ``uint8()``: round halves away from zero, saturate to [0, 255].
- :func:`modcrop`, :func:`shave`, :func:`psnr`, :func:`ssim` (Wang et al.'s ``ssim_index.m``: an 11x11 Gaussian
  window with sigma 1.5, K = (0.01, 0.03), L = 255, 'valid' filtering, the mean of the SSIM map).

All functions take and return numpy arrays laid out (H, W) or (H, W, C).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import DataError

# MATLAB's rgb2ycbcr matrix and offset for R, G, B in [0, 1] and Y, Cb, Cr in [0, 255].
YCBCR_T = np.array([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]])
YCBCR_OFFSET = np.array([16.0, 128.0, 128.0])


def cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's ``cubic``)."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    return ((1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2)))


def contributions(in_length: int, out_length: int, scale: float, antialiasing: bool = True):
    """MATLAB's ``contributions``: for each output sample, the input indices (0-based) and their weights.

    Output sample ``x`` (1-based) sits at input position ``u = x / scale + 0.5 (1 - 1 / scale)``; it takes the
    ``ceil(kernel_width) + 2`` input samples from ``floor(u - kernel_width / 2)`` on, with weights ``h(u - index)``
    normalized to sum 1. Indices outside ``1..in_length`` are mirrored (``[1..n, n..1]`` repeated: symmetric
    padding). Columns of the table whose weights are all zero are dropped, as MATLAB does.

    Returns:
        ``(indices, weights)``, both of shape ``(out_length, P)``; ``indices`` are 0-based.
    """
    if scale < 1 and antialiasing:
        width = 4.0 / scale

        def kernel(t):
            return scale * cubic(scale * t)
    else:
        width = 4.0
        kernel = cubic
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - width / 2.0)
    p = int(math.ceil(width)) + 2
    indices = left[:, None] + np.arange(p, dtype=np.float64)[None, :]
    weights = kernel(u[:, None] - indices)
    weights = weights / weights.sum(axis=1, keepdims=True)
    aux = np.concatenate([np.arange(1, in_length + 1), np.arange(in_length, 0, -1)])
    idx = aux[np.mod(indices.astype(np.int64) - 1, aux.size)] - 1
    keep = np.any(weights != 0, axis=0)
    return idx[:, keep], weights[:, keep]


def resize_matrix(in_length: int, out_length: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """The resize along one dimension as a dense ``(out_length, in_length)`` float64 matrix (weights of mirrored
    indices add up), so ``M @ column`` is MATLAB's 1-D bicubic resize before the rounding to the input class."""
    idx, w = contributions(in_length, out_length, scale, antialiasing)
    m = np.zeros((out_length, in_length))
    np.add.at(m, (np.repeat(np.arange(out_length), idx.shape[1]), idx.ravel()), w.ravel())
    return m


def _cast_like(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return to_uint8(values)
    return values.astype(dtype, copy=False)


def _resize_dim(a: np.ndarray, dim: int, out_length: int, scale: float, antialiasing: bool) -> np.ndarray:
    idx, w = contributions(a.shape[dim], out_length, scale, antialiasing)
    moved = np.moveaxis(a, dim, 0).astype(np.float64)
    out = np.zeros((out_length,) + moved.shape[1:])
    for k in range(idx.shape[1]):  # accumulate in MATLAB's order: one weight column at a time
        out += w[:, k].reshape((-1,) + (1,) * (moved.ndim - 1)) * moved[idx[:, k]]
    return np.moveaxis(_cast_like(out, a.dtype), 0, dim)


def output_size(length: int, scale: float) -> int:
    """MATLAB's ``ceil(scale * length)``; a product within 1e-9 of an integer counts as that integer (so that
    ``1/3 * 3k`` is ``k``, not ``k + 1``)."""
    v = scale * length
    r = round(v)
    return int(r) if abs(v - r) < 1e-9 else int(math.ceil(v))


def imresize(a: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB ``imresize(a, scale, 'bicubic')`` of an (H, W) or (H, W, C) array.

    Args:
        a: float32/float64 (any range, no clipping) or uint8 (each pass rounded and saturated, as MATLAB does).
        scale: one factor for both dimensions, e.g. ``1/3`` or ``3``.
        antialiasing: widen the kernel when downscaling (MATLAB's default).
    """
    a = np.asarray(a)
    if a.ndim not in (2, 3):
        raise DataError(f"imresize needs an (H, W) or (H, W, C) array, got shape {a.shape}")
    if not scale > 0:
        raise DataError(f"imresize scale must be positive, got {scale}")
    out = a
    for dim in (0, 1):  # equal scales: MATLAB's stable sort resizes rows (dim 1) first
        out = _resize_dim(out, dim, output_size(a.shape[dim], scale), scale, antialiasing)
    return out


def to_uint8(x: np.ndarray) -> np.ndarray:
    """MATLAB ``uint8(x)``: round halves away from zero, saturate to [0, 255], NaN to 0."""
    x = np.asarray(x, dtype=np.float64)
    r = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return np.clip(np.nan_to_num(r, nan=0.0), 0, 255).astype(np.uint8)


def rgb2ycbcr(rgb: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2ycbcr``. uint8 (H, W, 3) in [0, 255] gives uint8 (rounded); float in [0, 1] gives float in
    [16/255, 235/255] (Y) and [16/255, 240/255] (Cb, Cr), unrounded."""
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise DataError(f"rgb2ycbcr needs an (H, W, 3) image, got shape {rgb.shape}")
    if rgb.dtype == np.uint8:
        t, off = YCBCR_T / 255.0, YCBCR_OFFSET
    else:
        t, off = YCBCR_T / 255.0, YCBCR_OFFSET / 255.0
    x = rgb.astype(np.float64)
    out = np.stack([t[p, 0] * x[..., 0] + t[p, 1] * x[..., 1] + t[p, 2] * x[..., 2] + off[p] for p in range(3)],
                   axis=-1)
    return to_uint8(out) if rgb.dtype == np.uint8 else out.astype(rgb.dtype if rgb.dtype.kind == "f" else np.float64)


def ycbcr2rgb(ycc: np.ndarray) -> np.ndarray:
    """MATLAB ``ycbcr2rgb``: the inverse of :func:`rgb2ycbcr`; uint8 in gives uint8 out (rounded, saturated), float
    in gives float (unclipped)."""
    ycc = np.asarray(ycc)
    if ycc.ndim != 3 or ycc.shape[2] != 3:
        raise DataError(f"ycbcr2rgb needs an (H, W, 3) image, got shape {ycc.shape}")
    inv = np.linalg.inv(YCBCR_T)
    off = YCBCR_OFFSET if ycc.dtype == np.uint8 else YCBCR_OFFSET / 255.0
    # Y = 16 + T rgb01 (in 0..255 units); either way rgb (in the input's units) = 255 T^-1 (ycc - offset)
    out = 255.0 * np.einsum("pc,hwc->hwp", inv, ycc.astype(np.float64) - off)
    if ycc.dtype == np.uint8:
        return to_uint8(out)
    return out.astype(ycc.dtype)


def modcrop(img: np.ndarray, modulo: int) -> np.ndarray:
    """Crop the bottom rows and right columns so height and width are multiples of ``modulo``."""
    h, w = img.shape[:2]
    return img[: h - h % modulo, : w - w % modulo]


def shave(img: np.ndarray, border: int) -> np.ndarray:
    """Remove ``border`` pixels from each side (top, bottom, left, right)."""
    if border == 0:
        return img
    return img[border:-border, border:-border]


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB of two equally shaped images on a [0, peak] scale (``20 log10(peak / rmse)``); inf when equal."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"psnr needs equal shapes, got {a.shape} and {b.shape}")
    rmse = math.sqrt(float(np.mean((a - b) ** 2)))
    return math.inf if rmse == 0 else 20.0 * math.log10(peak / rmse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``."""
    r = (size - 1) / 2.0
    x = np.arange(-r, r + 1)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    return g / g.sum()


def filter2_valid(window: np.ndarray, img: np.ndarray) -> np.ndarray:
    """MATLAB ``filter2(window, img, 'valid')``: 2-D correlation without padding."""
    kh, kw = window.shape
    h, w = img.shape
    out = np.zeros((h - kh + 1, w - kw + 1))
    for i in range(kh):
        for j in range(kw):
            if window[i, j] != 0:
                out += window[i, j] * img[i: i + h - kh + 1, j: j + w - kw + 1]
    return out


def ssim(a: np.ndarray, b: np.ndarray, k1: float = 0.01, k2: float = 0.03, peak: float = 255.0) -> float:
    """Mean SSIM as the IDN authors' ``ssim_index.m`` (Wang et al. 2004) computes it on two 2-D images; NaN when
    either side is below 11 pixels (where that code returns -Inf)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise DataError(f"ssim needs two equal 2-D images, got {a.shape} and {b.shape}")
    if min(a.shape) < 11:
        return math.nan
    win = gaussian_window(11, 1.5)
    win = win / win.sum()
    c1, c2 = (k1 * peak) ** 2, (k2 * peak) ** 2
    mu1, mu2 = filter2_valid(win, a), filter2_valid(win, b)
    s11 = filter2_valid(win, a * a) - mu1 * mu1
    s22 = filter2_valid(win, b * b) - mu2 * mu2
    s12 = filter2_valid(win, a * b) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return float(m.mean())
