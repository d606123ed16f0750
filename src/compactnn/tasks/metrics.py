"""Dense-prediction metrics: depth (RMSE, rel, log10, delta < 1.25^k) and semantic segmentation (pixel accuracy, mIoU).

Conventions (written down because papers differ):

- **Depth.** Valid pixels are those whose ground truth is finite and > 0 (NYU marks holes with 0). Every metric
  pools all valid pixels of all images (not a mean of per-image values). Predictions are clamped to ``min_depth``
  (default 1e-3 m) before the ratio and log metrics, so a non-positive prediction counts as a large error instead of
  producing NaN. ``rmse = sqrt(mean((p - g)^2))``, ``rel = mean(|p - g| / g)``, ``log10 = mean(|log10 p - log10
  g|)``, ``delta_k = mean(max(p / g, g / p) < 1.25^k)``.
- **Segmentation.** Pixels whose label is outside ``0..classes-1`` (e.g. 255 = unlabelled) are ignored. From the
  confusion matrix ``C`` over all pixels of all images: ``pixel_acc = trace(C) / sum(C)``; ``IoU_c = C_cc / (row_c +
  col_c - C_cc)``; ``miou`` is the mean IoU over the classes that occur in the ground truth or the prediction
  (classes absent from both have no IoU and are skipped).
"""

from __future__ import annotations

import torch

from ..errors import DataError


def _as_tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(a)


def depth_metrics(pred, gt, min_depth: float = 1e-3) -> dict[str, float]:
    """Depth errors of ``pred`` against ``gt`` (same shape, metres) over valid pixels (see the module docstring).

    Returns:
        ``{"rmse", "rel", "log10", "delta1", "delta2", "delta3", "pixels"}`` (``pixels`` = valid pixel count).

    Raises:
        DataError: shapes differ or there is no valid pixel.
    """
    p, g = _as_tensor(pred).double(), _as_tensor(gt).double()
    if p.shape != g.shape:
        raise DataError(f"depth prediction has shape {tuple(p.shape)} but ground truth {tuple(g.shape)}")
    valid = torch.isfinite(g) & (g > 0)
    n = int(valid.sum())
    if n == 0:
        raise DataError("depth ground truth has no valid pixel (all are 0, negative or not finite)")
    p, g = p[valid], g[valid]
    if not torch.isfinite(p).all():
        raise DataError("depth prediction holds NaN or infinite values at valid pixels")
    diff = p - g
    pc = p.clamp_min(min_depth)
    ratio = torch.maximum(pc / g, g / pc)
    out = {
        "rmse": float(torch.sqrt((diff * diff).mean())),
        "rel": float((diff.abs() / g).mean()),
        "log10": float((torch.log10(pc) - torch.log10(g)).abs().mean()),
    }
    for k in (1, 2, 3):
        out[f"delta{k}"] = float((ratio < 1.25**k).double().mean())
    out["pixels"] = n
    return out


def confusion(pred, gt, classes: int) -> torch.Tensor:
    """``classes x classes`` int64 confusion matrix, rows = ground truth, columns = prediction; ``pred`` holds labels
    (same shape as ``gt``) or logits with the class axis at dim 1. Ground-truth labels outside the range are ignored;
    predicted labels outside it are an error."""
    p, g = _as_tensor(pred), _as_tensor(gt).long()
    if p.dim() == g.dim() + 1:
        if p.shape[1] != classes:
            raise DataError(f"logits have {p.shape[1]} classes but classes={classes}")
        p = p.argmax(dim=1)
    if p.shape != g.shape:
        raise DataError(f"segmentation prediction has shape {tuple(p.shape)} but ground truth {tuple(g.shape)}")
    p = p.long()
    valid = (g >= 0) & (g < classes)
    p, g = p[valid], g[valid]
    if p.numel() and (p.min() < 0 or p.max() >= classes):
        raise DataError(f"predicted labels must be in 0..{classes - 1}, got {int(p.min())}..{int(p.max())}")
    return torch.bincount(g * classes + p, minlength=classes * classes).reshape(classes, classes)


def segmentation_metrics(pred, gt, classes: int) -> dict:
    """Pixel accuracy and mIoU of ``pred`` (labels, or logits with classes at dim 1) against ``gt`` labels.

    Returns:
        ``{"pixel_acc", "miou", "iou": [per-class IoU or None], "pixels"}``.

    Raises:
        DataError: shapes differ, or no ground-truth pixel is in ``0..classes-1``.
    """
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise DataError(f"classes must be a positive int, got {classes!r}")
    cm = confusion(pred, gt, classes).double()
    total = float(cm.sum())
    if total == 0:
        raise DataError(f"segmentation ground truth has no pixel labelled 0..{classes - 1}")
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp))
    return {"pixel_acc": float(tp.sum()) / total, "miou": float(iou[present].mean()),
            "iou": [float(v) if ok else None for v, ok in zip(iou, present)], "pixels": int(total)}


__all__ = ["depth_metrics", "segmentation_metrics", "confusion"]
