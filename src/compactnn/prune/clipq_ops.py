"""CLIP-Q's operator (Tung & Mori, CVPR 2018): clip, partition and quantize one layer's weights; its straight-through
parametrization; and the bits the packed file stores for the result. See :mod:`compactnn.prune.clipq` for the method.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..pack import codecs


def clip_thresholds(weight: Tensor, p: float) -> tuple[float, float]:
    """``(c-, c+)`` such that ``round(p * n+)`` positive weights are ``<= c+`` and ``round(p * n-)`` negative
    weights are ``>= c-`` (no ties assumed); ``(0.0, 0.0)`` sides when that count is 0.

    Args:
        weight: any float tensor (flattened).
        p: the fraction to clip on each side, in [0, 1].
    """
    flat = weight.detach().reshape(-1)
    pos, neg = flat[flat > 0], flat[flat < 0]
    k_pos, k_neg = int(p * pos.numel() + 0.5), int(p * neg.numel() + 0.5)
    c_plus = float(torch.kthvalue(pos, k_pos).values) if k_pos > 0 else 0.0
    c_minus = -float(torch.kthvalue(-neg, k_neg).values) if k_neg > 0 else 0.0
    return c_minus, c_plus


def clip_quantize(weight: Tensor, p: float, bits: int) -> Tensor:
    """The CLIP-Q forward value ``Q(W)`` of one layer: clip, partition, quantize (see the module docstring).

    Args:
        weight: the shadow weights ``W`` (not modified).
        p: fraction of each sign clipped to zero, in [0, 1).
        bits: ``2**bits - 1`` intervals for the survivors (plus the zero code), ``bits >= 1``.

    Returns:
        A new tensor of ``weight``'s shape and dtype, detached, with at most ``2**bits - 1`` distinct nonzero values.
    """
    w = weight.detach()
    c_minus, c_plus = clip_thresholds(w, p)
    keep = (w < c_minus) | (w > c_plus)
    out = torch.zeros_like(w)
    vals = w[keep].double()
    if vals.numel() == 0:
        return out
    k = 2**bits - 1
    lo, hi = vals.min(), vals.max()
    if hi > lo:
        idx = torch.floor((vals - lo) / (hi - lo) * k).clamp_(0, k - 1).long()
    else:
        idx = torch.zeros(vals.numel(), dtype=torch.long, device=w.device)
    sums = torch.zeros(k, dtype=torch.float64, device=w.device).index_add_(0, idx, vals)
    counts = torch.bincount(idx, minlength=k).clamp_(min=1)
    means = (sums / counts).to(w.dtype) + 0.0  # "+ 0.0" turns a -0.0 into +0.0 (the packer's zero)
    out[keep] = means[idx]
    return out


class _ClipQuantizeSTE(torch.autograd.Function):
    """``Q(W)`` forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: Tensor, p: float, bits: int) -> Tensor:
        return clip_quantize(weight, p, bits)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None, None


def clip_quantize_ste(weight: Tensor, p: float, bits: int) -> Tensor:
    """:func:`clip_quantize` with a straight-through gradient: ``d(out)/d(weight)`` is the identity."""
    return _ClipQuantizeSTE.apply(weight, p, bits)


class ClipQuantize(nn.Module):
    """Parametrization ``weight = Q(W)`` recomputed from the shadow ``W`` (the parametrization's ``original``) at every
    access, i.e. every forward pass; gradients reach ``W`` straight through.

    Args:
        p: fraction of each sign clipped, in [0, 1).
        bits: ``2**bits - 1`` nonzero values plus zero.
    """

    def __init__(self, p: float, bits: int):
        super().__init__()
        self.p, self.bits = float(p), int(bits)

    def forward(self, weight: Tensor) -> Tensor:
        return clip_quantize_ste(weight, self.p, self.bits)

    def extra_repr(self) -> str:
        return f"p={self.p}, bits={self.bits}"


def stored_bits(weight: Tensor) -> int:
    """Bits the ``.cnz`` file stores for this tensor at zstd ``level=0``: ``8 * len(payload)`` of the codec that
    :func:`compactnn.pack.codecs.encode_tensor` picks (for a CLIP-Q weight: sparse relative index + codebook).

    Exact: it is the packer's own codec, and ``compactnn.pack.tensor_bytes(model, level=0)`` reports the same bytes
    (tested). At the default ``level=19`` the zstd stage can only make the blob smaller, never larger.
    """
    return 8 * len(codecs.encode_tensor(weight.detach()).payload)


__all__ = ["clip_thresholds", "clip_quantize", "clip_quantize_ste", "ClipQuantize", "stored_bits"]
