"""Sparsity C steps: ℓ0/ℓ1 constraints (one tensor or a group with one budget) and ℓ0/ℓ1 penalties."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from ._checks import _concat, _count, _float, _nonneg, _split


def l0_constraint(w: Tensor, kappa: int) -> Tensor:
    """Projection onto ``{θ : ‖θ‖₀ ≤ κ}``: ``argmin ‖w − θ‖²`` keeps the κ entries of largest ``|w|``, zeroes the rest.

    Args:
        w: weights (any shape).
        kappa: number of nonzeros allowed (``κ ≥ n`` returns a copy of ``w``).

    Ties in ``|w|`` go to the smaller flat index (a stable sort), so the result is deterministic.
    """
    _float(w)
    kappa = _count(kappa, "kappa")
    flat = w.reshape(-1)
    if kappa >= flat.numel():
        return w.clone()
    keep = torch.argsort(flat.abs(), descending=True, stable=True)[:kappa]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(w.shape)


def l0_constraint_grouped(ws: Sequence[Tensor], kappa: int) -> list[Tensor]:
    """ℓ0 projection with one global budget κ over a list of tensors (the LC paper's budget over all layers).

    Equal to :func:`l0_constraint` on the concatenation of the flattened tensors, split back. Args: ``ws`` the
    tensors (one dtype); ``kappa`` the total number of nonzeros. Ties go to the earlier tensor, then earlier index.
    """
    return _split(l0_constraint(_concat(ws), kappa), ws)


def _l1_tau(a: Tensor, kappa: float) -> Tensor:
    """Duchi et al. (2008): the threshold τ with Σ max(a_i − τ, 0) = κ, for a ≥ 0 with Σ a > κ (sort, O(n log n))."""
    u = torch.sort(a, descending=True).values
    css = torch.cumsum(u, 0) - kappa
    j = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    rho = int(torch.nonzero(u - css / j > 0).max())  # last index where the condition holds (0-based)
    return css[rho] / (rho + 1)


def l1_constraint(w: Tensor, kappa: float) -> Tensor:
    """Euclidean projection onto the ℓ1 ball ``{θ : ‖θ‖₁ ≤ κ}`` (Duchi, Shalev-Shwartz, Singer & Chandra, 2008).

    Closed form: if ``‖w‖₁ ≤ κ`` return ``w``; else ``θ = sign(w)·max(|w| − τ, 0)`` where τ > 0 solves
    ``Σ max(|w_i| − τ, 0) = κ`` (found by sorting ``|w|``, O(n log n)), so ``‖θ‖₁ = κ``. Example: ``w = [1, 1]``,
    ``κ = 1`` gives ``[0.5, 0.5]`` (the LC toolkit's version returns ``[1, 1]``, which is not the projection).

    Args:
        w: weights (any shape).
        kappa: radius κ ≥ 0 of the ball (``κ = 0`` gives zeros).
    """
    _float(w)
    kappa = _nonneg(kappa, "kappa")
    a = w.reshape(-1).abs()
    if float(a.sum()) <= kappa:
        return w.clone()
    if kappa == 0:
        return torch.zeros_like(w)
    tau = _l1_tau(a, kappa)
    return (torch.sign(w) * torch.clamp(w.abs() - tau, min=0)).reshape(w.shape)


def l1_constraint_grouped(ws: Sequence[Tensor], kappa: float) -> list[Tensor]:
    """ℓ1 projection with one global radius κ over a list of tensors (projection of their concatenation).

    Args: ``ws`` the tensors (one dtype); ``kappa`` the total ℓ1 radius.
    """
    return _split(l1_constraint(_concat(ws), kappa), ws)


def l0_penalty(w: Tensor, alpha: float, mu: float) -> Tensor:
    """Hard threshold, the minimizer of ``μ/2‖w − θ‖² + α‖θ‖₀``.

    Per element the cost is ``α`` for ``θ_i = w_i`` and ``μ/2·w_i²`` for ``θ_i = 0``, so keep ``w_i`` iff
    ``|w_i| > √(2α/μ)``. At exact equality both are optimal; we return 0 (the sparser one).

    Args:
        w: weights (any shape).
        alpha: penalty weight α ≥ 0.
        mu: LC penalty parameter μ > 0.
    """
    _float(w)
    t = math.sqrt(2 * _nonneg(alpha, "alpha") / _nonneg(mu, "mu", positive=True))
    return torch.where(w.abs() > t, w, torch.zeros_like(w))


def l1_penalty(w: Tensor, alpha: float, mu: float) -> Tensor:
    """Soft threshold, the minimizer of ``μ/2‖w − θ‖² + α‖θ‖₁``: ``θ = sign(w)·max(|w| − α/μ, 0)``.

    Args:
        w: weights (any shape).
        alpha: penalty weight α ≥ 0.
        mu: LC penalty parameter μ > 0.
    """
    _float(w)
    t = _nonneg(alpha, "alpha") / _nonneg(mu, "mu", positive=True)
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)
