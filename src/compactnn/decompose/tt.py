"""Tensor-train baselines (Novikov et al., NeurIPS 2015): a TT-matrix Linear layer and a TT-LSTM.

TT-matrix layout: each core holds one input and one output mode, ``G_k`` of shape ``(r_{k-1}, m_k, n_k, r_k)``
with ``r_0 = r_d = 1``, and ``W((i_1..i_d), (j_1..j_d)) = G_1[i_1, j_1] G_2[i_2, j_2] ... G_d[i_d, j_d]``
(a product of ``r_{k-1} x r_k`` matrices). Compare the tensor ring (:mod:`.tensor_ring`), where a core holds one
mode and the chain is closed.
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..pack.spec import packable
from .block_term import BTLSTM, _BTRecurrent
from .plan import Network, PlannedLinear
from .shapes import check_modes


def tt_ranks(ranks: int | Sequence[int], d: int) -> tuple[int, ...]:
    """The ``d + 1`` TT ranks ``(1, r_1, ..., r_{d-1}, 1)`` from one int, ``d - 1`` inner ranks, or all ``d + 1``.

    Raises:
        ModelError: a rank is not a positive int, the count is wrong, or given end ranks are not 1.
    """
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        inner = (int(ranks),) * (d - 1)
    else:
        try:
            vals = tuple(int(r) for r in ranks)
        except (TypeError, ValueError):
            raise ModelError(f"ranks must be a positive int or {d - 1} positive ints, got {ranks!r}") from None
        if len(vals) == d + 1:
            if vals[0] != 1 or vals[-1] != 1:
                raise ModelError(f"TT end ranks must be 1, got {vals}; give the {d - 1} inner ranks instead")
            vals = vals[1:-1]
        if len(vals) != d - 1:
            raise ModelError(f"ranks needs {d - 1} inner ranks (or {d + 1} with ends 1) for {d} cores, got {vals}")
        inner = vals
    if any(r <= 0 for r in inner) or (not isinstance(ranks, numbers.Integral) and list(map(int, ranks)) != list(ranks)):
        raise ModelError(f"ranks must be positive ints (at least 1), got {ranks!r}")
    return (1, *inner, 1)


@packable
class TTLinear(PlannedLinear, nn.Module):
    """Fully connected layer whose ``(prod n, prod m)`` weight is a TT-matrix (Novikov et al., 2015).

    Parameters ``core_k`` (listed by ``self.cores``) of shape ``(r_{k-1}, m_k, n_k, r_k)``; ``sum_k r_{k-1} m_k n_k
    r_k`` numbers (+ bias). Forward: reshape ``x`` to ``(B, m_1, ..., m_d)`` and contract one core at a time
    (``m_k`` and ``r_{k-1}`` in, ``n_k`` and ``r_k`` out); MACs per sample (:meth:`macs_per_sample`):
    ``sum_k (prod_{q>k} m_q)(prod_{q<k} n_q) r_{k-1} m_k n_k r_k``. No dense weight is built.

    Init: cores ~ N(0, sigma^2) with ``prod(r_1..r_{d-1}) sigma^(2d) = 1 / in_features`` (so ``Var(W) =
    1 / in_features``); bias 0.

    Args:
        in_modes: ``(m_1, ..., m_d)``, ``in_features = prod``. out_modes: ``(n_1, ..., n_d)``, as many modes.
        ranks: one inner rank, ``d - 1`` inner ranks, or ``d + 1`` ranks with ends 1.
        bias: add a learnable bias of ``out_features`` (``self.bias`` is None without it).
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: int | Sequence[int],
                 bias: bool = True) -> None:
        super().__init__()
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.out_modes = check_modes(out_modes, name="out_modes")
        if len(self.in_modes) != len(self.out_modes):
            raise ModelError(f"in_modes {self.in_modes} and out_modes {self.out_modes} need the same number of "
                             "modes (a TT-matrix core holds one of each)")
        d = len(self.in_modes)
        self.ranks = tt_ranks(ranks, d)
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        for k in range(d):
            shape = (self.ranks[k], self.in_modes[k], self.out_modes[k], self.ranks[k + 1])
            self.register_parameter(f"core_{k}", nn.Parameter(torch.empty(shape)))
        self.bias = nn.Parameter(torch.empty(self.out_features)) if bias else None
        self.reset_parameters()

    @property
    def cores(self) -> list[nn.Parameter]:
        """The ``core_k`` parameters in order."""
        return [getattr(self, f"core_{k}") for k in range(len(self.in_modes))]

    def reset_parameters(self) -> None:
        """Draw the cores so the rebuilt weight has variance ``1 / in_features``; zero the bias."""
        d = len(self.in_modes)
        sigma = (1.0 / (self.in_features * math.prod(self.ranks))) ** (1.0 / (2 * d))
        for core in self.cores:
            nn.init.normal_(core, 0.0, sigma)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def full_weight(self) -> torch.Tensor:
        """The dense weight ``(out_features, in_features)``, laid out like ``nn.Linear.weight``."""
        t = self.cores[0].reshape(self.in_modes[0], self.out_modes[0], self.ranks[1])
        for core in self.cores[1:]:
            m, n, q = core.shape[1:]
            t = torch.einsum("MNr,rmnq->MmNnq", t, core).reshape(t.shape[0] * m, t.shape[1] * n, q)
        return t[..., 0].t()

    def network(self) -> Network:
        """The layer as a tensor network for :mod:`.plan`: input ``(b, m_0..)``, cores ``(t_k, m_k, n_k, t_k+1)``
        with the end ranks (1) dropped, output ``(b, n_0..)``."""
        d = len(self.in_modes)
        labels = [("b", *(f"m{k}" for k in range(d)))]
        for k in range(d):
            left = (f"t{k}",) if k > 0 else ()
            right = (f"t{k + 1}",) if k < d - 1 else ()
            labels.append((*left, f"m{k}", f"n{k}", *right))
        sizes = [("b", 1)] + [(f"t{k}", self.ranks[k]) for k in range(1, d)]
        sizes += [(f"m{k}", m) for k, m in enumerate(self.in_modes)] + [(f"n{k}", n) for k, n in enumerate(self.out_modes)]
        return Network(tuple(labels), tuple(sizes), ("b", *(f"n{k}" for k in range(d))))

    def network_operands(self) -> list[torch.Tensor]:
        d = len(self.in_modes)
        ops = []
        for k, c in enumerate(self.cores):
            shape = list(c.shape)
            if k == 0:
                shape = shape[1:]
            if k == d - 1:
                shape = shape[:-1]
            ops.append(c.reshape(shape))
        return ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd: the planned evaluation (:mod:`.plan`, ``self.last_plan``); with autograd: the
        sequential contraction below (gradients to the cores)."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ModelError(f"TTLinear expects {self.in_features} input features (modes {self.in_modes}), got "
                             f"input of shape {tuple(x.shape)}; reshape the input or build the layer with matching "
                             "modes")
        return self.planned_forward(x, self._train_forward)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        b = math.prod(lead)
        t = x.reshape(b, self.in_features, 1, 1)  # (B, remaining input modes, done output modes, rank)
        rest = self.in_features
        for m, core in zip(self.in_modes, self.cores):
            rest //= m
            t = t.reshape(b, m, rest, t.shape[2], t.shape[3])
            t = torch.einsum("bmsdr,rmnq->bsdnq", t, core).reshape(b, rest, -1, core.shape[-1])
        y = t.reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def macs_per_sample(self) -> int:
        """MACs of the sequential contraction for one input row (formula in the class docstring)."""
        total, done, rest = 0, 1, self.in_features
        for k, (m, n) in enumerate(zip(self.in_modes, self.out_modes)):
            rest //= m
            total += rest * done * self.ranks[k] * m * n * self.ranks[k + 1]
            done *= n
        return total

    def macs(self, input: tuple, output: torch.Tensor) -> int:
        """MACs of one call: input rows times :meth:`macs_per_sample`."""
        return (output.numel() // self.out_features) * self.macs_per_sample()

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, "
                f"bias={self.bias is not None}")


@packable
class TTLSTM(_BTRecurrent):
    """LSTM whose input-to-hidden map is a :class:`TTLinear` (Yang et al. 2017's TT-LSTM); hidden-to-hidden dense.

    Same interface and cell as :class:`compactnn.decompose.BTLSTM`: the input map's first output mode is
    ``4 * hidden_modes[0]`` so its output splits into contiguous gates ``(i, f, g, o)``; the input map carries the
    only bias, whose forget-gate chunk starts at 1; ``hh`` (no bias) is orthogonal per gate.

    Args:
        in_modes: input modes, ``input_size = prod(in_modes)``.
        hidden_modes: hidden modes (as many as ``in_modes``), ``hidden_size = prod(hidden_modes)``.
        ranks: TT ranks of the input map (as for :class:`TTLinear`).
        batch_first: inputs and outputs are ``(B, T, F)`` when True, ``(T, B, F)`` when False.

    ``forward(x, hx=None)`` returns ``(output, (h_n, c_n))`` like ``nn.LSTM``.
    """

    gates = 4

    def __init__(self, in_modes: Sequence[int], hidden_modes: Sequence[int], ranks: int | Sequence[int],
                 batch_first: bool = True) -> None:
        nn.Module.__init__(self)
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.hidden_modes = check_modes(hidden_modes, name="hidden_modes")
        self.batch_first = bool(batch_first)
        self.input_size = math.prod(self.in_modes)
        self.hidden_size = math.prod(self.hidden_modes)
        gate_modes = (self.gates * self.hidden_modes[0],) + self.hidden_modes[1:]
        self.ih = TTLinear(self.in_modes, gate_modes, ranks, bias=True)
        self.ranks = self.ih.ranks
        h = self.hidden_size
        self.hh = nn.Linear(h, self.gates * h, bias=False)
        with torch.no_grad():
            for g in range(self.gates):
                nn.init.orthogonal_(self.hh.weight[g * h:(g + 1) * h])
            self.ih.bias[h:2 * h] = 1.0

    forward = BTLSTM.forward  # the same LSTM steps over a different input-to-hidden map

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, hidden_modes={self.hidden_modes}, ranks={self.ranks}, "
                f"batch_first={self.batch_first}")


__all__ = ["TTLinear", "TTLSTM", "tt_ranks"]
