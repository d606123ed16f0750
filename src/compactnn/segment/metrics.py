"""The object-level metrics of the MICCAI 2015 Gland Segmentation challenge (GlaS; Sirinukunwattana et al., Medical
Image Analysis 2017), on integer instance-label maps (0 = background, each gland its own label).

- **Object F1.** Each segmented object S_j is matched to the ground-truth object G_i it overlaps most; it is a true
  positive when that overlap covers at least half of G_i (``|S_j ∩ G_i| / |G_i| >= 0.5``, the challenge's rule),
  else a false positive. Each ground-truth object without a true positive on it is a false negative (a ground-truth
  object is counted at most once). ``F1 = 2 TP / (2 TP + FP + FN)``. ``match="iou"`` uses ``IoU > 0.5`` instead,
  the stricter reading some later papers use.
- **Object Dice.** ``1/2 [ Σ_i γ_i Dice(G_i, S*(G_i)) + Σ_j σ_j Dice(G*(S_j), S_j) ]`` with ``γ_i = |G_i| / Σ|G|``,
  ``σ_j = |S_j| / Σ|S|``; ``S*(G_i)`` is the segmented object overlapping ``G_i`` most (Dice 0 when none overlaps),
  ``G*(S_j)`` likewise.
- **Object Hausdorff.** The same weighted sums of the Hausdorff distance ``H(A, B)``; an object that overlaps no
  object of the other side is paired with the other side's object nearest to it in Hausdorff distance, as the
  challenge's evaluation code does. With no object at all on one side, the distance is ``inf``.

Distances are Euclidean, in pixels, between pixel centres (scipy's ``directed_hausdorff`` on the pixel coordinates).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.spatial.distance import directed_hausdorff

from ..errors import ConfigError


def _check(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape or pred.ndim != 2:
        raise ConfigError(f"pred and gt must be 2-D label maps of one shape, got {pred.shape} and {gt.shape}")
    for name, a in (("pred", pred), ("gt", gt)):
        if not np.issubdtype(a.dtype, np.integer) and a.dtype != bool:
            raise ConfigError(f"{name} must be an integer instance-label map (0 = background), got dtype {a.dtype}")
        if a.size and a.min() < 0:
            raise ConfigError(f"{name} has negative labels; use 0 for background and 1, 2, ... for objects")
    return pred.astype(np.int64), gt.astype(np.int64)


def _overlaps(pred: np.ndarray, gt: np.ndarray):
    """Object labels of each side and the matrix of pixel overlaps ``[gt object, pred object]``, with areas."""
    g_labels = np.unique(gt[gt > 0])
    p_labels = np.unique(pred[pred > 0])
    gi = np.searchsorted(g_labels, gt[(gt > 0) & (pred > 0)])
    pi = np.searchsorted(p_labels, pred[(gt > 0) & (pred > 0)])
    inter = np.zeros((len(g_labels), len(p_labels)), dtype=np.int64)
    np.add.at(inter, (gi, pi), 1)
    g_area = np.array([(gt == g).sum() for g in g_labels], dtype=np.int64)
    p_area = np.array([(pred == p).sum() for p in p_labels], dtype=np.int64)
    return g_labels, p_labels, inter, g_area, p_area


def object_f1(pred: np.ndarray, gt: np.ndarray, match: Literal["glas", "iou"] = "glas") -> float:
    """GlaS object-level F1 of instance maps ``pred`` and ``gt`` (see the module docstring); 1.0 when both are
    empty."""
    pred, gt = _check(pred, gt)
    _, _, inter, g_area, p_area = _overlaps(pred, gt)
    if match not in ("glas", "iou"):
        raise ConfigError(f"match must be 'glas' or 'iou', got {match!r}")
    tp, matched = 0, set()
    for j in range(inter.shape[1]):
        if inter.shape[0] == 0 or inter[:, j].max() == 0:
            continue
        i = int(inter[:, j].argmax())
        if match == "glas":
            ok = inter[i, j] / g_area[i] >= 0.5
        else:
            ok = inter[i, j] / (g_area[i] + p_area[j] - inter[i, j]) > 0.5
        if ok and i not in matched:
            matched.add(i)
            tp += 1
    fp = inter.shape[1] - tp
    fn = inter.shape[0] - tp
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 2.0 * float(np.logical_and(a, b).sum()) / total if total else 1.0


def _hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    pa, pb = np.argwhere(a), np.argwhere(b)
    return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])


def object_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object Dice of instance maps ``pred`` and ``gt`` (see the module docstring); 1.0 when both are empty,
    0.0 when only one is."""
    pred, gt = _check(pred, gt)
    g_labels, p_labels, inter, g_area, p_area = _overlaps(pred, gt)
    if len(g_labels) == 0 or len(p_labels) == 0:
        return float(len(g_labels) == len(p_labels))
    total = 0.0
    for i, g in enumerate(g_labels):
        if inter[i].max() > 0:
            total += g_area[i] / g_area.sum() * _dice(gt == g, pred == p_labels[int(inter[i].argmax())])
    for j, p in enumerate(p_labels):
        if inter[:, j].max() > 0:
            total += p_area[j] / p_area.sum() * _dice(gt == g_labels[int(inter[:, j].argmax())], pred == p)
    return total / 2.0


def object_hausdorff(pred: np.ndarray, gt: np.ndarray) -> float:
    """GlaS object Hausdorff distance of instance maps ``pred`` and ``gt``, in pixels (see the module docstring);
    0.0 when both are empty, ``inf`` when only one is."""
    pred, gt = _check(pred, gt)
    g_labels, p_labels, inter, g_area, p_area = _overlaps(pred, gt)
    if len(g_labels) == 0 or len(p_labels) == 0:
        return 0.0 if len(g_labels) == len(p_labels) else float("inf")
    g_masks = [gt == g for g in g_labels]
    p_masks = [pred == p for p in p_labels]

    def partner(own, others, row) -> np.ndarray:
        if row.max() > 0:
            return others[int(row.argmax())]
        return min(others, key=lambda o: _hausdorff(own, o))  # no overlap: the nearest object

    total = sum(g_area[i] / g_area.sum() * _hausdorff(g, partner(g, p_masks, inter[i]))
                for i, g in enumerate(g_masks))
    total += sum(p_area[j] / p_area.sum() * _hausdorff(partner(p, g_masks, inter[:, j]), p)
                 for j, p in enumerate(p_masks))
    return float(total / 2.0)


__all__ = ["object_f1", "object_dice", "object_hausdorff"]
