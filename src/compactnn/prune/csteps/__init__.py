"""Closed-form C steps (compression projections) of the LC algorithm.

Carreira-Perpiñán & Idelbayev, "Model compression as constrained optimization" (CVPR 2018, parts I and II). In the
C step the weights ``w`` (already shifted by ``-λ/μ``) are fixed and we solve ``min_θ ‖w − Δ(θ)‖²`` (constraint form)
or ``min_θ μ/2‖w − Δ(θ)‖² + α·C(θ)`` (penalty form). Every function here is pure: it never modifies its input and
returns new tensors of the input's shape, dtype and device (float32 and float64 alike). Weights are treated as one
flat vector unless a function says otherwise.

Conventions (ties): magnitude ranks break ties by flat index (earlier index wins, lists of tensors are concatenated
in order); a hard threshold at exact equality gives 0; the nearest codeword at an exact midpoint is the smaller
codeword, and equal codewords resolve to the first listed; ``sign(0) = +1`` for the binary codebooks.
"""

from .codebooks import (adaptive_codebook, assign_to_codebook, binary, codebook_bits, fixed_codebook,
                        optimal_codebook_1d, scaled_binary, scaled_ternary, ternary)
from .combination import additive_combination
from .low_rank import low_rank, low_rank_factors
from .sparsity import l0_constraint, l0_constraint_grouped, l0_penalty, l1_constraint, l1_constraint_grouped, l1_penalty

__all__ = [
    "l0_constraint", "l0_constraint_grouped", "l1_constraint", "l1_constraint_grouped", "l0_penalty",
    "l1_penalty", "adaptive_codebook", "optimal_codebook_1d", "assign_to_codebook", "fixed_codebook", "binary",
    "scaled_binary", "ternary", "scaled_ternary", "low_rank", "low_rank_factors", "additive_combination",
    "codebook_bits",
]
