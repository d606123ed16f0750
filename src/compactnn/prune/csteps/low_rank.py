"""Low-rank C step: truncated SVD of a weight reshaped to a matrix."""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from ._checks import _count, _float


def _matrix(W: Tensor) -> Tensor:
    _float(W, "W")
    if W.dim() < 2:
        raise ConfigError(f"low rank needs a weight with >= 2 dims, got shape {tuple(W.shape)}")
    return W.reshape(W.shape[0], -1)


def low_rank_factors(W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Factors ``(U·diag(σ) (m, r), Vᵀ (r, p))`` of the best rank-r approximation (truncated SVD, torch.linalg.svd).

    Args:
        W: weight (out, in) or conv weight (out, in, kh, kw), reshaped to (out, in·kh·kw).
        rank: r ≥ 0, capped at min(m, p).
    """
    M = _matrix(W)
    r = min(_count(rank, "rank"), min(M.shape))
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r].clone()


def low_rank(W: Tensor, rank: int) -> Tensor:
    """Rank-r C step: ``argmin_{rank(Θ) ≤ r} ‖W − Θ‖_F`` is the truncated SVD (Eckart–Young), with error² equal to
    the sum of the discarded σ².

    Args:
        W: 2-D weight (out, in); a conv weight (out, in, kh, kw) is reshaped to (out, in·kh·kw) and back.
        rank: r ≥ 0 (``r ≥ min(m, p)`` returns a copy).
    """
    A, B = low_rank_factors(W, rank)
    return (A @ B).reshape(W.shape)
