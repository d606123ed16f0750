"""Clip classifiers: a recurrent cell over the frames of a clip, its last hidden state, then a linear head.

Made for :mod:`compactnn.data.moving` (inputs ``(B, T, H, W)``: frames in the channel axis, ``input_shape =
(T, H, W)``). Each frame is flattened to ``H * W`` features (4096 for 64x64), the cell (hidden 256 by default) reads
them in order, and ``Linear(hidden, classes)`` reads the hidden state after the last frame (short clips are padded
at the start, so the last step is always a real frame).

Cells (``cell=``):

- ``"lstm"`` / ``"gru"``: dense ``nn.LSTM`` / ``nn.GRU`` (:class:`LSTM`, :class:`GRU`: the torch classes with a
  ``macs`` method so :func:`compactnn.report.count_macs` counts them). ``W_ih`` is ``(4H, F)`` / ``(3H, F)``.
- ``"bt-lstm"`` / ``"bt-gru"``: :class:`compactnn.decompose.BTLSTM` / ``BTGRU`` (Ye et al., CVPR 2018): a block-term
  input map with ``in_modes``, ``hidden_modes``, ``ranks`` and ``blocks``. Default 64x64 -> 256: input
  ``8x8x8x8``, hidden ``4x4x4x4``, ranks 4, N = 2: **2,304** ``W_ih`` weights against 4,194,304 dense (1,820x).
- ``"tt-lstm"``: ``compactnn.decompose.tt.TTLSTM`` (tensor-train input map with ``tt_ranks``), the baseline.
  Default: same modes, TT ranks 4: **1,664** ``W_ih`` weights (2,521x).

``ih_path="rebuilt"`` (default) makes a factorized input map rebuild its dense weight once per call and run one GEMM
(:class:`RebuiltBTLinear`): same parameters and function, much faster to train on CPU (see its docstring).

``dropout=p`` (default 0) drops input features (every frame's pixels, a fresh mask per step) and the last hidden
state before the head during training, as a regularizer for the ~4M-weight dense input map (the BT-RNN paper trains
all its cells with dropout; see ``docs/results/decomposition.md`` for the rates used).

The dense cells get the same initialization as the factorized ones where they share parts: ``W_ih ~ N(0,
1/F)`` (unit-variance pre-activations, as :class:`~compactnn.decompose.BTLinear`), ``W_hh`` orthogonal per gate,
biases 0 except the LSTM forget gate at 1.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..pack.spec import packable
from ..decompose.block_term import BTGRU, BTLSTM, BTLinear
from ..decompose.tt import TTLSTM, TTLinear
from .registry import check_input_shape, register_model

CELLS = ("lstm", "gru", "bt-lstm", "bt-gru", "tt-lstm")


def _rnn_macs(module: nn.RNNBase, input: tuple, gates: int) -> int:
    x = input[0]
    rows = x.shape[0] * x.shape[1] if x.dim() == 3 else x.shape[0]
    h = module.hidden_size
    return int(rows * gates * h * (module.input_size + h))


def _dense_init(module: nn.RNNBase, gates: int, forget: int | None) -> None:
    h = module.hidden_size
    with torch.no_grad():
        nn.init.normal_(module.weight_ih_l0, 0.0, 1.0 / math.sqrt(module.input_size))
        for g in range(gates):
            nn.init.orthogonal_(module.weight_hh_l0[g * h:(g + 1) * h])
        module.bias_ih_l0.zero_()
        module.bias_hh_l0.zero_()
        if forget is not None:
            module.bias_ih_l0[forget * h:(forget + 1) * h] = 1.0


@packable
class LSTM(nn.LSTM):
    """``nn.LSTM`` (one layer, batch first) with :meth:`macs` and the init of the module docstring.

    Args:
        input_size: features per step. hidden_size: hidden units.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, batch_first=True)
        _dense_init(self, 4, forget=1)

    def macs(self, input: tuple, output) -> int:
        """``rows * 4H * (F + H)`` with ``rows`` = batch x steps."""
        return _rnn_macs(self, input, 4)


@packable
class GRU(nn.GRU):
    """``nn.GRU`` (one layer, batch first) with :meth:`macs` and the init of the module docstring.

    Args:
        input_size: features per step. hidden_size: hidden units.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__(input_size, hidden_size, batch_first=True)
        _dense_init(self, 3, forget=None)

    def macs(self, input: tuple, output) -> int:
        """``rows * 3H * (F + H)`` with ``rows`` = batch x steps."""
        return _rnn_macs(self, input, 3)


class _Rebuilt:
    """Mixin for a factorized linear map: forward rebuilds the dense weight (``full_weight()``), then one GEMM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ModelError(f"{type(self).__name__} expects {self.in_features} input features (modes "
                             f"{self.in_modes}), got input of shape {tuple(x.shape)}")
        # without autograd: the contraction planner of compactnn.decompose.plan (cached weight or merged cores)
        return self.planned_forward(x, lambda v: F.linear(v, self.full_weight(), self.bias))

    def macs_per_sample(self) -> int:
        """``in_features * out_features`` (the GEMM per input row; the rebuild is :meth:`rebuild_macs` per call)."""
        return self.in_features * self.out_features


@packable
class RebuiltBTLinear(_Rebuilt, BTLinear):
    """:class:`~compactnn.decompose.BTLinear` (same parameters, same function) whose forward first rebuilds the
    dense ``(out, in)`` weight from the factors (``full_weight``), then runs one GEMM.

    Why: for frame inputs (64x64 -> 4 gates x 256) every factor has ``J_k R_k >= I_k``, so the factorized forward's
    intermediates grow with each mode (5.6M MACs per row in memory-bound batched matmuls against 4.2M for the dense
    GEMM). Rebuilding costs :meth:`rebuild_macs` per call (38M for 8x8x8x8 -> 16x4x4x4, ranks 4, N = 2), whatever
    the batch, then ``in * out`` MACs per row in a fast GEMM; with a clip's steps batched in one call this trains
    ~10x faster on CPU. Storage is unchanged: only the factors and cores are parameters (and packed).
    ``macs``/``macs_per_sample`` count the GEMM (``in * out`` per row); the rebuild is excluded, as
    ``TRLinear.macs`` excludes its core merge.

    Args: as :class:`~compactnn.decompose.BTLinear`.
    """

    def rebuild_macs(self) -> int:
        """MACs of ``full_weight`` (einsum left to right: core, then factor 1, 2, ...):
        ``N sum_k (prod_{q<k} I_q J_q) I_k J_k R_k prod_{q>k} R_q``."""
        total, done = 0, 1
        for k, (i, j, r) in enumerate(zip(self.in_modes, self.out_modes, self.ranks)):
            total += done * i * j * r * math.prod(self.ranks[k + 1:])
            done *= i * j
        return self.blocks * total


@packable
class RebuiltTTLinear(_Rebuilt, TTLinear):
    """``compactnn.decompose.tt.TTLinear`` (same parameters and function) whose forward rebuilds the dense weight
    (``full_weight``) and runs one GEMM: the same trade as :class:`RebuiltBTLinear` (the sequential TT contraction
    has fewer MACs, 1.08M per row for 8x8x8x8 -> 16x4x4x4 at rank 4, but runs ~2.5x slower on CPU than the GEMM).

    Args: as ``TTLinear``.
    """

    def rebuild_macs(self) -> int:
        """MACs of ``full_weight`` (cores merged left to right): ``sum_{k>=2} (prod_{q<k} m_q n_q) r_{k-1} m_k n_k
        r_k``."""
        total, done = 0, self.in_modes[0] * self.out_modes[0]
        for k in range(1, len(self.in_modes)):
            m, n = self.in_modes[k], self.out_modes[k]
            total += done * self.ranks[k] * m * n * self.ranks[k + 1]
            done *= m * n
        return total


def default_in_modes(features: int) -> tuple[int, ...]:
    """Input modes of a factorized cell: ``(8, 8, 8, 8)`` for 4096 (64x64 frames), else ``suggest_modes(F, 4)``."""
    from ..decompose.shapes import suggest_modes

    return (8, 8, 8, 8) if features == 4096 else suggest_modes(features, 4)


def input_weight_params(rnn: nn.Module) -> int:
    """Number of input-to-hidden weights (``W_ih`` without its bias) of a cell: dense ``weight_ih_l0``, or the
    factors and cores of a factorized input map (every parameter of ``rnn.ih`` except ``bias``)."""
    if isinstance(rnn, nn.RNNBase):
        return int(rnn.weight_ih_l0.numel())
    ih = getattr(rnn, "ih", None)
    if ih is None:
        raise ModelError(f"{type(rnn).__name__} has no weight_ih_l0 or ih input map to count")
    return int(sum(p.numel() for n, p in ih.named_parameters() if n.rsplit(".", 1)[-1] != "bias"))


@packable
class ClipClassifier(nn.Module):
    """Recurrent clip classifier: frames ``(B, T, H, W)`` -> cell over T steps -> last hidden -> ``Linear``.

    Args:
        input_shape: ``(T, H, W)`` of one clip (frames in the channel axis); each step gets ``H * W`` features.
        num_classes: outputs of the head.
        cell: ``"lstm"``, ``"gru"``, ``"bt-lstm"``, ``"bt-gru"`` or ``"tt-lstm"`` (module docstring).
        hidden: hidden units (``prod(hidden_modes)`` for factorized cells).
        in_modes: input modes of a factorized cell (default :func:`default_in_modes`).
        hidden_modes: hidden modes of a factorized cell (default ``suggest_modes(hidden, len(in_modes))``).
        ranks: Tucker ranks of a BT cell (int or one per mode).
        blocks: number ``N`` of Tucker blocks of a BT cell.
        tt_ranks: TT ranks of a TT cell (int for all inner bonds, or a tuple).
        ih_path: how a BT or TT cell computes its input map: ``"rebuilt"`` (default; :class:`RebuiltBTLinear` /
            :class:`RebuiltTTLinear`, fast to train on CPU) or ``"factorized"`` (the layer's own mode-by-mode
            contraction). Same parameters, same function.
        dropout: dropout probability on the input features and on the last hidden state (0 = none).

    ``forward`` also takes ``(B, T, 1, H, W)`` or ``(B, T, H*W)`` inputs.
    """

    def __init__(self, input_shape: Sequence[int] = (10, 64, 64), num_classes: int = 10, cell: str = "lstm",
                 hidden: int = 256, in_modes: Sequence[int] | None = None,
                 hidden_modes: Sequence[int] | None = None, ranks: int | Sequence[int] = 4, blocks: int = 2,
                 tt_ranks: int | Sequence[int] = 4, ih_path: str = "rebuilt", dropout: float = 0.0) -> None:
        super().__init__()
        from ..decompose.shapes import check_modes, suggest_modes

        if cell not in CELLS:
            raise ModelError(f"unknown cell {cell!r}; valid cells are {', '.join(CELLS)}")
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = int(num_classes)
        self.cell = cell
        if ih_path not in ("rebuilt", "factorized"):
            raise ModelError(f"ih_path must be 'rebuilt' or 'factorized', got {ih_path!r}")
        self.ih_path = ih_path
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
            raise ModelError(f"dropout must be a probability in [0, 1), like 0.25, got {dropout!r}")
        self.dropout = float(dropout)
        self.drop = nn.Dropout(self.dropout)
        self.features = self.input_shape[1] * self.input_shape[2]
        if cell in ("lstm", "gru"):
            if not isinstance(hidden, int) or hidden < 1:
                raise ModelError(f"hidden must be a positive int like 256, got {hidden!r}")
            self.hidden = hidden
            self.rnn = (LSTM if cell == "lstm" else GRU)(self.features, hidden)
        else:
            modes_in = default_in_modes(self.features) if in_modes is None else in_modes
            self.in_modes = check_modes(modes_in, self.features, "in_modes")
            modes_h = suggest_modes(hidden, len(self.in_modes)) if hidden_modes is None else hidden_modes
            self.hidden_modes = check_modes(modes_h, None, "hidden_modes")
            self.hidden = math.prod(self.hidden_modes)
            self.rnn = self._factorized(cell, ranks, blocks, tt_ranks)
        self.head = nn.Linear(self.hidden, self.num_classes)

    def _factorized(self, cell: str, ranks, blocks: int, tt_ranks) -> nn.Module:
        if cell == "tt-lstm":
            rnn = TTLSTM(self.in_modes, self.hidden_modes, tt_ranks)
            rebuilt = RebuiltTTLinear
        else:
            rnn = (BTLSTM if cell == "bt-lstm" else BTGRU)(self.in_modes, self.hidden_modes, ranks, blocks=blocks)
            rebuilt = RebuiltBTLinear
        if self.ih_path == "rebuilt":
            old = rnn.ih
            kwargs = {"blocks": old.blocks} if isinstance(old, BTLinear) else {}
            rnn.ih = rebuilt(old.in_modes, old.out_modes, old.ranks, bias=True, **kwargs)
            rnn.ih.load_state_dict(old.state_dict())
        return rnn

    def input_weight_params(self) -> int:
        """``W_ih`` weights of the cell (see :func:`input_weight_params`)."""
        return input_weight_params(self.rnn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5 and x.shape[2] == 1:
            x = x[:, :, 0]
        if x.dim() == 4:
            x = x.flatten(2)
        if x.dim() != 3 or x.shape[-1] != self.features:
            raise ModelError(f"ClipClassifier expects clips (B, T, H, W) with H*W = {self.features} "
                             f"(input_shape {self.input_shape}), got shape {tuple(x.shape)}")
        out = self.rnn(self.drop(x))[0]
        return self.head(self.drop(out[:, -1]))


def _factory(cell: str):
    def build(input_shape: Sequence[int] = (10, 64, 64), num_classes: int = 10, hidden: int = 256,
              in_modes: Sequence[int] | None = None, hidden_modes: Sequence[int] | None = None,
              ranks: int | Sequence[int] = 4, blocks: int = 2, tt_ranks: int | Sequence[int] = 4,
              ih_path: str = "rebuilt", dropout: float = 0.0) -> ClipClassifier:
        return ClipClassifier(input_shape, num_classes, cell, hidden, in_modes, hidden_modes, ranks, blocks,
                              tt_ranks, ih_path, dropout)

    build.__doc__ = f"Build a :class:`ClipClassifier` with ``cell={cell!r}`` (options as its arguments)."
    return build


clip_lstm = register_model("clip-lstm", "clip classifier: dense LSTM over flattened frames (hidden 256), last "
                           "hidden -> linear")(_factory("lstm"))
clip_gru = register_model("clip-gru", "clip classifier: dense GRU over flattened frames (hidden 256)")(_factory("gru"))
clip_bt_lstm = register_model("clip-bt-lstm", "clip classifier: BT-LSTM (block-term input map; 64x64 -> 256: "
                              "8x8x8x8 -> 4x4x4x4, ranks 4, N=2)")(_factory("bt-lstm"))
clip_bt_gru = register_model("clip-bt-gru", "clip classifier: BT-GRU (block-term input map)")(_factory("bt-gru"))
clip_tt_lstm = register_model("clip-tt-lstm", "clip classifier: TT-LSTM (tensor-train input map), the BT "
                              "baseline")(_factory("tt-lstm"))
