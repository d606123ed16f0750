"""Block-Term RNNs (Ye et al., CVPR 2018): a linear map whose weight is a sum of Tucker blocks, and LSTM/GRU cells
whose input-to-hidden map is one.

Block-term decomposition: ``W = sum_{n=1..N} G_n x_1 A_n^(1) ... x_d A_n^(d)`` with factors
``A_n^(k)`` of shape ``(I_k, J_k, R_k)`` (one input mode and one output mode each) and cores ``G_n`` of shape
``(R_1, ..., R_d)``, i.e. ``W(i_1..i_d, j_1..j_d) = sum_n sum_r G_n(r) prod_k A_n^(k)(i_k, j_k, r_k)``.
Parameters: ``N (sum_k I_k J_k R_k + prod_k R_k)`` (+ bias). With ``N = 1`` this is a Tucker layer.
"""

from __future__ import annotations

import itertools
import math
from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .shapes import check_modes, check_ranks, suggest_modes

from ..pack.spec import packable
from .plan import Network, PlannedLinear


def _check_blocks(blocks: int) -> int:
    if not isinstance(blocks, int) or isinstance(blocks, bool) or blocks <= 0:
        raise ModelError(f"blocks (the number N of Tucker blocks) must be a positive int like 2, got {blocks!r}")
    return blocks


@packable
class BTLinear(PlannedLinear, nn.Module):
    """Fully connected layer whose ``(prod J, prod I)`` weight is a block-term (sum of ``N`` Tuckers) tensor.

    Storage: parameter ``factor_k`` (listed by ``self.factors``) is ``(N, I_k, J_k, R_k)``; ``core`` is
    ``(N, R_1, ..., R_d)``.

    Forward (no dense weight is built): reshape ``x`` to ``(B, I_1, ..., I_d)``; for each mode ``k`` in
    ``self.order`` contract ``I_k`` with ``A^(k)`` (all N blocks at once, one batched matmul), appending
    ``(J_k, R_k)``; last, contract all ``(R_1..R_d)`` with the cores and sum the blocks. With the modes taken in
    order ``k_1..k_d``, the MACs per sample (:meth:`macs_per_sample`) are
    ``N [ sum_p (prod_{q>p} I_kq)(prod_{q<p} J_kq R_kq) I_kp J_kp R_kp + prod J prod R ]``. ``self.order`` is the
    mode order with the fewest MACs (all ``d!`` orders tried for ``d <= 7``, else ascending ``J_k R_k / I_k``); for
    the UCF11 map it is 4.8x cheaper than the natural order (9.2M vs 43.9M MACs, dense 59.0M).

    Init: factors and cores ~ N(0, sigma^2) with ``N prod(R) sigma^(2(d+1)) = 1 / in_features`` (so
    ``Var(W) = 1 / in_features``); bias 0.

    Args:
        in_modes: input modes ``(I_1, ..., I_d)``; ``in_features = prod(in_modes)``.
        out_modes: output modes ``(J_1, ..., J_d)``, as many as ``in_modes``; ``out_features = prod(out_modes)``.
        ranks: Tucker ranks, one int for all or ``d`` ints ``(R_1, ..., R_d)``.
        blocks: the number ``N`` of Tucker blocks summed.
        bias: add a learnable bias of ``out_features`` (``self.bias`` is None without it, like ``nn.Linear``).
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: int | Sequence[int],
                 blocks: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.out_modes = check_modes(out_modes, name="out_modes")
        if len(self.in_modes) != len(self.out_modes):
            raise ModelError(
                f"in_modes {self.in_modes} and out_modes {self.out_modes} need the same number of modes; e.g. use "
                f"out_modes={suggest_modes(math.prod(self.out_modes), len(self.in_modes))}"
            )
        self.ranks = check_ranks(ranks, len(self.in_modes))
        self.blocks = _check_blocks(blocks)
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        n = self.blocks
        for k, (i, j, r) in enumerate(zip(self.in_modes, self.out_modes, self.ranks)):
            self.register_parameter(f"factor_{k}", nn.Parameter(torch.empty(n, i, j, r)))
        self.core = nn.Parameter(torch.empty(n, *self.ranks))
        self.bias = nn.Parameter(torch.empty(self.out_features)) if bias else None
        self.order = self._best_order()
        self.reset_parameters()

    @classmethod
    def from_shapes(cls, in_features: int, out_features: int, d: int, rank: int | Sequence[int], *,
                    blocks: int = 1, in_modes: Sequence[int] | None = None,
                    out_modes: Sequence[int] | None = None, bias: bool = True) -> "BTLinear":
        """Build from feature counts with modes from :func:`suggest_modes` unless given (checked: ModelError).

        Args:
            in_features / out_features: feature counts. d: number of modes. rank: as for the constructor.
            blocks / bias: as for the constructor. in_modes / out_modes: explicit modes.
        """
        in_modes = suggest_modes(in_features, d) if in_modes is None else check_modes(in_modes, in_features, "in_modes")
        out_modes = (suggest_modes(out_features, d) if out_modes is None
                     else check_modes(out_modes, out_features, "out_modes"))
        return cls(in_modes, out_modes, rank, blocks=blocks, bias=bias)

    @property
    def factors(self) -> list[nn.Parameter]:
        """The ``factor_k`` parameters in mode order (named parameters: ``compactnn.pack`` has no ParameterList)."""
        return [getattr(self, f"factor_{k}") for k in range(len(self.ranks))]

    def reset_parameters(self) -> None:
        """Draw factors and cores so the rebuilt weight has variance ``1 / in_features``; zero the bias."""
        d = len(self.ranks)
        sigma = (1.0 / (self.in_features * self.blocks * math.prod(self.ranks))) ** (1.0 / (2 * (d + 1)))
        for p in list(self.factors) + [self.core]:
            nn.init.normal_(p, 0.0, sigma)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def full_weight(self) -> torch.Tensor:
        """The dense weight ``(out_features, in_features)``, laid out like ``nn.Linear.weight``."""
        d = len(self.ranks)
        # sublist einsum: block 0, ranks 1..d, in modes d+1..2d, out modes 2d+1..3d
        ops: list = [self.core, [0, *range(1, d + 1)]]
        for k, a in enumerate(self.factors):
            ops += [a, [0, d + 1 + k, 2 * d + 1 + k, 1 + k]]
        w = torch.einsum(*ops, [*range(2 * d + 1, 3 * d + 1), *range(d + 1, 2 * d + 1)])
        return w.reshape(self.out_features, self.in_features)

    def network(self) -> Network:
        """The layer as a tensor network for :mod:`.plan`: input ``(b, i_0..)``, factors ``(n, i_k, j_k, r_k)``,
        core ``(n, r_0..)`` (the block label ``n`` is shared by all of them), output ``(b, j_0..)``."""
        d = len(self.ranks)
        labels = [("b", *(f"i{k}" for k in range(d)))]
        labels += [("n", f"i{k}", f"j{k}", f"r{k}") for k in range(d)]
        labels.append(("n", *(f"r{k}" for k in range(d))))
        sizes = [("b", 1), ("n", self.blocks)] + [(f"r{k}", r) for k, r in enumerate(self.ranks)]
        sizes += [(f"i{k}", m) for k, m in enumerate(self.in_modes)] + [(f"j{k}", m) for k, m in enumerate(self.out_modes)]
        return Network(tuple(labels), tuple(sizes), ("b", *(f"j{k}" for k in range(d))))

    def network_operands(self) -> list[torch.Tensor]:
        return [*self.factors, self.core]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd: the planned evaluation (:mod:`.plan`, ``self.last_plan``); with autograd: the
        mode-by-mode contraction below in ``self.order`` (gradients to the factors and cores)."""
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ModelError(
                f"BTLinear expects {self.in_features} input features (modes {self.in_modes}), got input of shape "
                f"{tuple(x.shape)}; reshape the input or build the layer with matching modes"
            )
        return self.planned_forward(x, self._train_forward)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        b, n, d, order = math.prod(lead), self.blocks, len(self.ranks), self.order
        x = x.reshape(b, *self.in_modes).permute(0, *(1 + k for k in order))
        t = x.reshape(b, 1, self.in_features, 1)  # (B, blocks, remaining input modes, done (J, R) pairs)
        rest = self.in_features
        for k in order:
            i_k, jr = self.in_modes[k], self.out_modes[k] * self.ranks[k]
            rest //= i_k
            q = t.shape[-1]
            t = t.reshape(b, t.shape[1], i_k, rest, q)
            a = self.factors[k].reshape(n, i_k, jr)
            if t.shape[1] == 1 and q == 1:  # first mode: no block or (J, R) axes yet
                t = torch.einsum("bia,nic->bnac", t[:, 0, :, :, 0], a)
            else:
                t = torch.einsum("bniaq,nic->bnaqc", t, a)
            t = t.reshape(b, n, rest, q * jr)
        t = t.reshape(b, n, *[v for k in order for v in (self.out_modes[k], self.ranks[k])])
        # t indices: batch 0, block 1, then (J, R) of the p-th contracted mode at (2 + 2p, 3 + 2p)
        pos = {k: p for p, k in enumerate(order)}
        y = torch.einsum(t, [0, 1, *range(2, 2 + 2 * d)], self.core, [1, *(3 + 2 * pos[k] for k in range(d))],
                         [0, *(2 + 2 * pos[k] for k in range(d))])
        y = y.reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y

    def _order_macs(self, order: Sequence[int]) -> int:
        total, done, rest = 0, 1, self.in_features
        for k in order:
            i, j, r = self.in_modes[k], self.out_modes[k], self.ranks[k]
            rest //= i
            total += rest * done * i * j * r
            done *= j * r
        return self.blocks * (total + self.out_features * math.prod(self.ranks))

    def _best_order(self) -> tuple[int, ...]:
        d = len(self.ranks)
        if d <= 7:
            return min(itertools.permutations(range(d)), key=self._order_macs)
        # many modes: contract first the modes that grow the intermediate least (J_k R_k / I_k ascending)
        return tuple(sorted(range(d), key=lambda k: self.out_modes[k] * self.ranks[k] / self.in_modes[k]))

    def macs_per_sample(self) -> int:
        """MACs of the forward contraction for one input row (formula in the class docstring, in ``self.order``)."""
        return self._order_macs(self.order)

    def macs(self, input: tuple, output: torch.Tensor) -> int:
        """MACs of one call: input rows times :meth:`macs_per_sample`."""
        return (output.numel() // self.out_features) * self.macs_per_sample()

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, blocks={self.blocks}, "
                f"bias={self.bias is not None}")


class _BTRecurrent(nn.Module):
    """Shared parts of :class:`BTLSTM` and :class:`BTGRU` (``gates`` = 4 or 3)."""

    gates = 0
    hh_bias = False

    def __init__(self, in_modes: Sequence[int], hidden_modes: Sequence[int], ranks: int | Sequence[int],
                 blocks: int = 1, batch_first: bool = True) -> None:
        super().__init__()
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.hidden_modes = check_modes(hidden_modes, name="hidden_modes")
        self.blocks = _check_blocks(blocks)
        self.batch_first = bool(batch_first)
        self.input_size = math.prod(self.in_modes)
        self.hidden_size = math.prod(self.hidden_modes)
        gate_modes = (self.gates * self.hidden_modes[0],) + self.hidden_modes[1:]
        self.ih = BTLinear(self.in_modes, gate_modes, ranks, blocks=self.blocks, bias=True)
        self.ranks = self.ih.ranks
        h = self.hidden_size
        self.hh = nn.Linear(h, self.gates * h, bias=self.hh_bias)
        with torch.no_grad():
            for g in range(self.gates):  # orthogonal recurrent init per gate (Keras' default, as the authors used)
                nn.init.orthogonal_(self.hh.weight[g * h:(g + 1) * h])
            if self.hh.bias is not None:
                self.hh.bias.zero_()

    def _sequence(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ModelError(
                f"{type(self).__name__} expects a sequence (B, T, {self.input_size}) "
                f"({'batch_first' if self.batch_first else '(T, B, F)'}), got shape {tuple(x.shape)}"
            )
        return x if self.batch_first else x.transpose(0, 1)

    def _state(self, s: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        b = like.shape[0]
        if s is None:
            return like.new_zeros(b, self.hidden_size)
        return s.reshape(b, self.hidden_size)

    def _output(self, outs: list[torch.Tensor]) -> torch.Tensor:
        y = torch.stack(outs, dim=1)
        return y if self.batch_first else y.transpose(0, 1)

    def macs(self, input: tuple, output) -> int:
        """MACs of one call: every (sample, step) row costs the BT input map plus the dense ``H x gates*H``."""
        x = input[0]
        rows = x.shape[0] * x.shape[1]
        return rows * (self.ih.macs_per_sample() + self.hidden_size * self.gates * self.hidden_size)

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, hidden_modes={self.hidden_modes}, ranks={self.ranks}, "
                f"blocks={self.blocks}, batch_first={self.batch_first}")


@packable
class BTLSTM(_BTRecurrent):
    """LSTM whose input-to-hidden map is a :class:`BTLinear`; hidden-to-hidden stays a dense ``nn.Linear``.

    The input map's first output mode is ``4 * hidden_modes[0]``, so its output splits into contiguous chunks
    ``(i, f, g, o)`` of ``hidden_size`` each (``g`` is the cell candidate; nn.LSTM's gate order). The BT input map
    carries the only bias (``hh`` has none); the forget-gate chunk of that bias starts at 1. ``hh`` is orthogonal
    per gate. Step: ``i, f, g, o = x W_ih^T + b + h W_hh^T``; ``c' = s(f) c + s(i) tanh(g)``; ``h' = s(o) tanh(c')``.

    Args:
        in_modes: input modes, ``input_size = prod(in_modes)``.
        hidden_modes: hidden modes (as many as ``in_modes``), ``hidden_size = prod(hidden_modes)``.
        ranks: Tucker ranks of the input map (int or one per mode).
        blocks: number ``N`` of Tucker blocks.
        batch_first: inputs and outputs are ``(B, T, F)`` when True, ``(T, B, F)`` when False.

    ``forward(x, hx=None)`` returns ``(output, (h_n, c_n))`` like ``nn.LSTM``: output ``(B, T, H)`` and states
    ``(1, B, H)``; ``hx = (h_0, c_0)`` may be ``(1, B, H)`` or ``(B, H)``.
    """

    gates = 4
    hh_bias = False

    def __init__(self, in_modes: Sequence[int], hidden_modes: Sequence[int], ranks: int | Sequence[int],
                 blocks: int = 1, batch_first: bool = True) -> None:
        super().__init__(in_modes, hidden_modes, ranks, blocks, batch_first)
        with torch.no_grad():
            self.ih.bias[self.hidden_size:2 * self.hidden_size] = 1.0

    def forward(self, x: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None = None):
        x = self._sequence(x)
        xi = self.ih(x)  # all steps at once: (B, T, 4H)
        h = self._state(None if hx is None else hx[0], x)
        c = self._state(None if hx is None else hx[1], x)
        outs = []
        for t in range(x.shape[1]):
            i, f, g, o = (xi[:, t] + self.hh(h)).chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs.append(h)
        return self._output(outs), (h.unsqueeze(0), c.unsqueeze(0))


@packable
class BTGRU(_BTRecurrent):
    """GRU whose input-to-hidden map is a :class:`BTLinear`; hidden-to-hidden stays a dense ``nn.Linear`` (with bias).

    The input map's first output mode is ``3 * hidden_modes[0]``, so its output splits into contiguous chunks
    ``(r, z, n)`` (reset, update, candidate; nn.GRU's gate order). Step, as ``nn.GRU``:
    ``r = s(xr + hr)``, ``z = s(xz + hz)``, ``n = tanh(xn + r * hn)``, ``h' = (1 - z) n + z h`` where ``x* / h*`` are
    the chunks of ``x W_ih^T + b_ih`` and ``h W_hh^T + b_hh``. ``hh`` keeps a bias because ``b_hn`` sits inside
    ``r * (...)``. Biases start at 0 (a GRU has no forget gate); ``hh`` is orthogonal per gate.

    Args:
        in_modes / hidden_modes / ranks / blocks / batch_first: as for :class:`BTLSTM`.

    ``forward(x, hx=None)`` returns ``(output, h_n)`` like ``nn.GRU``; ``h_n`` is ``(1, B, H)``.
    """

    gates = 3
    hh_bias = True

    def forward(self, x: torch.Tensor, hx: torch.Tensor | None = None):
        x = self._sequence(x)
        xi = self.ih(x)  # (B, T, 3H)
        h = self._state(hx, x)
        outs = []
        for t in range(x.shape[1]):
            xr, xz, xn = xi[:, t].chunk(3, dim=-1)
            hr, hz, hn = self.hh(h).chunk(3, dim=-1)
            r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
            n = torch.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            outs.append(h)
        return self._output(outs), h.unsqueeze(0)
