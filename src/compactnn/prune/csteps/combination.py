"""Additive combination of C steps, solved by alternation."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ...errors import ConfigError
from ._checks import _count, _float


def additive_combination(w: Tensor, steps: Sequence[Callable[[Tensor], Tensor]],
                         rounds: int = 10) -> list[Tensor]:
    """Additive combination ``Δ(θ) = θ_1 + … + θ_m``: block coordinate descent on ``‖w − Σ_j θ_j‖²``.

    Starting from all parts zero, each round sets in turn ``θ_j = step_j(w − Σ_{i≠j} θ_i)`` (e.g. quantization plus a
    sparse correction: ``θ_1 = Q(w − θ_2)``, ``θ_2 = S(w − θ_1)``). When every step is an exact projection (or, like a
    warm-started k-means, never worse than the part it replaces) the objective is non-increasing over rounds.

    Args:
        w: weights (any shape).
        steps: C steps, each ``f(residual) -> θ`` of the residual's shape (bind parameters with lambdas).
        rounds: number of passes over all steps (≥ 1; the LC paper uses about 10).

    Returns:
        The parts ``[θ_1, …, θ_m]``, each of the shape of ``w``.
    """
    _float(w)
    rounds = _count(rounds, "rounds", low=1)
    if len(steps) == 0:
        raise ConfigError("steps is empty; pass at least one C step")
    parts = [torch.zeros_like(w) for _ in steps]
    total = torch.zeros_like(w)
    for _ in range(rounds):
        for j, step in enumerate(steps):
            rest = total - parts[j]
            parts[j] = step(w - rest)
            total = rest + parts[j]
    return parts
