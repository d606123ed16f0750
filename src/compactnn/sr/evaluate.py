"""The IDN authors' test protocol (``test_IDN.m``), on the Y channel.

For each ground-truth image: Y of MATLAB ``rgb2ycbcr`` of the uint8 image (rounded; a single-channel image is its own
Y) -> ``modcrop`` to a multiple of s -> float32 / 255 -> LR = ``imresize(gt, 1/s)`` -> bicubic = ``imresize(LR, s)``
-> IDN = the network's branch on LR + bicubic (float32) -> every image times 255 to uint8 (MATLAB rounding) ->
``s`` pixels shaved from each side -> PSNR and SSIM against the ground truth. The authors crop the network output
to rows/columns ``s..end`` and then shave ``2..end-s``; with our full-size output (see
:mod:`compactnn.models.idn`) that is the same as shaving ``s`` from every side.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import matlab

SETS = {"set5": ("Set5", ".bmp"), "set14": ("Set14", ".bmp"), "b100": ("B100", ".jpg")}
DATA_ENV = "COMPACTNN_SR_DATA"


def data_root(data: str | os.PathLike | None = None) -> Path:
    """The shared data folder (holding ``sr/`` and ``idn/``): ``data`` if given, else ``$COMPACTNN_SR_DATA``, else
    ``../shared/data`` from the working folder, else ``../shared/data`` beside the source checkout."""
    if data is not None:
        return Path(data).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    candidates = [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3].parent / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


def set_files(name: str, data: str | os.PathLike | None = None) -> list[Path]:
    """The image files of test set ``name`` (Set5, Set14 or B100), sorted by name."""
    key = name.lower()
    if key not in SETS:
        raise DataError(f"unknown test set {name!r}; choose Set5, Set14 or B100")
    folder, ext = SETS[key]
    root = data_root(data)
    d = root / "sr" / folder if (root / "sr" / folder).is_dir() else root / folder
    if not d.is_dir():
        raise DataError(f"test set folder {root / 'sr' / folder} not found; pass --data DIR (the folder holding "
                        f"sr/{folder}) or set {DATA_ENV}")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() == ext)
    if not files:
        raise DataError(f"no {ext} images in {d}")
    return files


def luminance(img: np.ndarray) -> np.ndarray:
    """uint8 Y of a uint8 RGB image (MATLAB ``rgb2ycbcr``, rounded); a 2-D image is returned as is."""
    if img.ndim == 2:
        return img
    return matlab.rgb2ycbcr(img)[..., 0]


def prepare(y: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(gt, lr, bicubic)`` float32 in [0, 1] for a uint8 Y image, as in the authors' test code."""
    if y.dtype != np.uint8 or y.ndim != 2:
        raise DataError(f"prepare needs a uint8 (H, W) Y image, got {y.dtype} {y.shape}")
    if min(y.shape) < scale:
        raise DataError(f"image of {y.shape[1]}x{y.shape[0]} pixels is smaller than the scale {scale}")
    gt = matlab.modcrop(y, scale).astype(np.float32) / np.float32(255)
    lr = matlab.imresize(gt, 1.0 / scale)
    return gt, lr, matlab.imresize(lr, scale)


@torch.no_grad()
def network_residual(model, lr: np.ndarray) -> np.ndarray:
    """The network branch of ``model`` on one float32 (h, w) LR image: float32 (hs, ws)."""
    x = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float32))[None, None]
    return model.residual(x)[0, 0].float().numpy()


def score(gt: np.ndarray, pred: np.ndarray, scale: int) -> tuple[float, float]:
    """PSNR and SSIM of float32 [0, 1] images after uint8 rounding (times 255 in float32) and an ``s`` shave."""
    a = matlab.shave(matlab.to_uint8(gt * np.float32(255)), scale)
    b = matlab.shave(matlab.to_uint8(pred.astype(np.float32) * np.float32(255)), scale)
    return matlab.psnr(a, b), matlab.ssim(a, b)


def evaluate_image(model, img: np.ndarray, scale: int) -> dict:
    """Protocol metrics of one uint8 image (RGB or Y): IDN (if ``model``) and bicubic PSNR/SSIM."""
    gt, lr, bic = prepare(luminance(img), scale)
    out = {}
    out["bicubic_psnr"], out["bicubic_ssim"] = score(gt, bic, scale)
    if model is not None:
        pred = network_residual(model, lr) + bic
        out["psnr"], out["ssim"] = score(gt, pred, scale)
    return out


def _clean(v: float):
    return None if v is None or not math.isfinite(v) else float(v)


def evaluate_set(model, name: str, scale: int | None = None, data: str | os.PathLike | None = None,
                 quiet: bool | None = None, bicubic: bool = False) -> dict:
    """Evaluate ``model`` (an IDN; its ``scale`` is used) on test set ``name`` with the official protocol.

    Returns:
        ``{"set", "scale", "psnr", "ssim", "images": [{"name", "psnr", "ssim"}]}`` (means over the images); with
        ``bicubic=True`` also ``bicubic_psnr``/``bicubic_ssim`` at both levels.
    """
    from tqdm.auto import tqdm

    from .images import read_image

    if scale is None:
        scale = int(model.scale)
    elif model is not None and int(model.scale) != scale:
        raise DataError(f"the model is for x{model.scale}, not x{scale}")
    files = set_files(name, data)
    if model is not None:
        model.eval()
    rows = []
    for path in tqdm(files, desc=f"{SETS[name.lower()][0]} x{scale}", disable=quiet, leave=False):
        m = evaluate_image(model, read_image(path), scale)
        row = {"name": path.stem}
        if model is not None:
            row.update(psnr=_clean(m["psnr"]), ssim=_clean(m["ssim"]))
        if bicubic or model is None:
            row.update(bicubic_psnr=_clean(m["bicubic_psnr"]), bicubic_ssim=_clean(m["bicubic_ssim"]))
        rows.append(row)

    def mean(key):
        vals = [r[key] for r in rows if r.get(key) is not None]
        return float(np.mean(vals)) if vals else None

    out = {"set": SETS[name.lower()][0], "scale": scale}
    if model is not None:
        out.update(psnr=mean("psnr"), ssim=mean("ssim"))
    if bicubic or model is None:
        out.update(bicubic_psnr=mean("bicubic_psnr"), bicubic_ssim=mean("bicubic_ssim"))
    out["images"] = rows
    return out
