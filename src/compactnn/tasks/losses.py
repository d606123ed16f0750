"""Losses for the PAD-Net tasks and the weighted multi-task objective.

- depth: ``"l2"`` (mean squared error) or ``"berhu"`` (reverse Huber, Laina et al. 2016: ``|d|`` for ``|d| <= c``,
  else ``(d^2 + c^2) / (2c)``, with ``c = 0.2 max |d|`` over the batch), over pixels with ground truth > 0;
- normals: ``"l2"`` (squared error of the raw 3-vector) or ``"cosine"`` (``1 - cos`` between prediction and ground
  truth), over pixels whose ground-truth normal is non-zero;
- contours and semantics: cross-entropy with optional class weights; labels outside the classes (255) are ignored.

Intermediate predictions are supervised at 1/4 resolution against ground truth downscaled by
:func:`downscale_targets`: depth by the mean of the valid pixels of each block, normals by the block mean
renormalized, semantics by the block's centre pixel (``labels[f//2::f, f//2::f]``; averaging labels is meaningless),
contours by "any contour pixel in the block" (max pooling, so thin edges survive).

:class:`TaskWeights` holds one weight per term. The paper gives the losses (L2 for depth and normals, CE for contours
and semantics) but no weights; the defaults here are 1 for the two final tasks and 0.5 for each intermediate task,
contour CE weighted 1:4 (edge pixels are rare). Setting an intermediate weight to 0 removes that task's supervision
(used by the ablation rows of the benchmark).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ..errors import ConfigError

IGNORE = 255


def depth_loss(pred: torch.Tensor, gt: torch.Tensor, kind: str = "berhu") -> torch.Tensor:
    """Depth loss over pixels with ``gt > 0`` (``kind``: ``"l2"`` or ``"berhu"``); 0 when no pixel is valid."""
    valid = gt > 0
    if not valid.any():
        return pred.sum() * 0.0
    d = (pred - gt)[valid]
    if kind == "l2":
        return (d * d).mean()
    if kind != "berhu":
        raise ConfigError(f"depth loss must be 'l2' or 'berhu', got {kind!r}")
    a = d.abs()
    c = (0.2 * a.max()).detach().clamp_min(1e-6)
    return torch.where(a <= c, a, (d * d + c * c) / (2 * c)).mean()


def normals_loss(pred: torch.Tensor, gt: torch.Tensor, kind: str = "cosine") -> torch.Tensor:
    """Normals loss over pixels whose ground-truth normal is non-zero (``kind``: ``"l2"`` or ``"cosine"``)."""
    valid = gt.abs().sum(1) > 0
    if not valid.any():
        return pred.sum() * 0.0
    if kind == "l2":
        return ((pred - gt) ** 2).sum(1)[valid].mean()
    if kind != "cosine":
        raise ConfigError(f"normals loss must be 'l2' or 'cosine', got {kind!r}")
    return (1.0 - F.cosine_similarity(pred, gt, dim=1, eps=1e-6))[valid].mean()


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy ignoring label 255; 0 when every pixel is ignored."""
    if not (labels != IGNORE).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, weight=weight, ignore_index=IGNORE)


def downscale_targets(targets: dict[str, torch.Tensor], factor: int) -> dict[str, torch.Tensor]:
    """Targets at ``1/factor`` resolution (rules in the module docstring); H and W must be multiples of ``factor``."""
    f = int(factor)
    d = targets["depth"]
    valid = (d > 0).to(d.dtype)
    count = F.avg_pool2d(valid, f)
    depth = torch.where(count > 0, F.avg_pool2d(d * valid, f) / count.clamp_min(1e-12), torch.zeros_like(count))
    n = F.avg_pool2d(targets["normals"], f)
    norm = n.norm(dim=1, keepdim=True)
    normals = torch.where(norm > 1e-6, n / norm.clamp_min(1e-6), torch.zeros_like(n))
    sem = targets["semantics"][..., f // 2::f, f // 2::f]
    contours = F.max_pool2d(targets["contours"][:, None].float(), f)[:, 0].long()
    return {"depth": depth, "normals": normals, "semantics": sem.contiguous(), "contours": contours}


@dataclasses.dataclass(frozen=True)
class TaskWeights:
    """Weights of the multi-task objective (see the module docstring for the defaults' origin)."""

    depth: float = 1.0
    semantics: float = 1.0
    inter_depth: float = 0.5
    inter_normals: float = 0.5
    inter_contours: float = 0.5
    inter_semantics: float = 0.5
    contour_positive: float = 4.0
    depth_kind: str = "berhu"
    normals_kind: str = "cosine"

    def without(self, task: str) -> "TaskWeights":
        """These weights with intermediate ``task``'s supervision removed (its weight set to 0)."""
        return dataclasses.replace(self, **{f"inter_{task}": 0.0})


def multitask_loss(out: dict, targets: dict[str, torch.Tensor], weights: TaskWeights = TaskWeights(),
                   factor: int = 4) -> tuple[torch.Tensor, dict[str, float]]:
    """The weighted sum of the final losses and (when ``out`` has ``"inter"``) the intermediate ones.

    Args:
        out: a model's ``forward_all`` output (keys ``depth`` and/or ``semantics``, optional ``inter``).
        targets: full-resolution targets (``depth``, ``normals``, ``contours``, ``semantics``).
        weights: the term weights.
        factor: the intermediate predictions' downscale factor.

    Returns:
        ``(total, {term: value})``.
    """
    parts: dict[str, torch.Tensor] = {}
    if "depth" in out:
        parts["depth"] = weights.depth * depth_loss(out["depth"], targets["depth"], weights.depth_kind)
    if "semantics" in out:
        parts["semantics"] = weights.semantics * ce_loss(out["semantics"], targets["semantics"])
    inter = out.get("inter")
    if inter:
        small = downscale_targets(targets, factor)
        cw = torch.tensor([1.0, weights.contour_positive], device=inter["contours"].device)
        terms = {
            "depth": lambda: depth_loss(inter["depth"], small["depth"], weights.depth_kind),
            "normals": lambda: normals_loss(inter["normals"], small["normals"], weights.normals_kind),
            "contours": lambda: ce_loss(inter["contours"], small["contours"], cw),
            "semantics": lambda: ce_loss(inter["semantics"], small["semantics"]),
        }
        for task, term in terms.items():
            w = getattr(weights, f"inter_{task}")
            if w > 0:
                parts[f"inter_{task}"] = w * term()
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}


__all__ = ["depth_loss", "normals_loss", "ce_loss", "downscale_targets", "TaskWeights", "multitask_loss"]
