"""Structured units inside one module: recurrent hidden units (``nn.LSTM``/``nn.GRU``/``nn.RNN``) and whole
attention heads (``nn.MultiheadAttention``, a ``TransformerEncoderLayer``'s ``self_attn``, a hand-written timm-style
attention recognized by :mod:`.graph`), as Torch-Pruning prunes them.

Each kind has a rule of :mod:`.layer_rules` (``kind`` ``"rnn"`` or ``"heads"``) with ``rebuild`` (the smaller
module), ``zero`` (the masked reference: same shapes, removed units' weights zeroed) and ``l1`` (one score per unit).

**Hidden units.** Unit ``j`` of a recurrent layer is row ``j`` of every gate block of ``weight_ih``/``weight_hh``/
biases, column ``j`` of ``weight_hh`` and of the next layer's ``weight_ih`` (both directions' blocks when
bidirectional), and the consumers' input features that read it (the output sequence, ``h_n``). ``nn.LSTM`` has one
``hidden_size`` for all its layers and both directions, so unit ``j`` is removed from every layer and direction
together (our choice; the alternative, a different subset per layer of equal size, would need a coupled budget).
A zeroed unit outputs exactly 0 from a zero initial state (LSTM: ``c = 0.5 c + 0.5 tanh(0) = 0``; GRU:
``h = 0.5 h``), so removing it equals zeroing it. ``proj_size > 0`` and a user-given initial state are kept whole.
L1 score of a unit: ``sum |w|`` over its gate rows in every layer and direction (its incoming weights, as Li et al.
score a filter).

**Heads.** Head ``h`` is rows ``h*d .. (h+1)*d - 1`` of q, k and v (``d`` the head dim) and the same columns of the
output projection; the embedding dimension (the residual stream) stays whole. A zeroed head has ``v = 0``, so its
output is 0 whatever its attention weights: removing it equals zeroing it. ``nn.MultiheadAttention`` needs
``embed_dim == num_heads * head_dim`` for q, k and v, so a pruned one becomes :class:`PrunedMultiheadAttention`,
the same function with ``num_heads * head_dim`` inner features (same call signature and outputs; averaged attention
weights average the kept heads only). A hand-written attention becomes :class:`PrunedSelfAttention` (``qkv`` and
``proj`` Linears, ``num_heads``, ``head_dim``, ``scale``). Both are packable. L1 score of a head: ``sum |w|`` over its
q, k, v rows (its filters); biases left out, as for filters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError
from ..graph.trace import register_leaf
from ..pack.spec import packable
from .layer_rules import copy_into, register_layer

GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


# ------------------------------------------------------------------------------------------ recurrent layers
def rnn_kind(mod: nn.RNNBase) -> str:
    if getattr(mod, "proj_size", 0):
        raise ModelError(f"structured pruning does not support {type(mod).__name__} with proj_size="
                         f"{mod.proj_size} (its outputs are projections, not hidden units)")
    if mod.mode not in GATES:
        raise ModelError(f"structured pruning does not support {type(mod).__name__} mode {mod.mode!r}")
    return "rnn"


def _cells(mod: nn.RNNBase):
    for layer in range(mod.num_layers):
        for sfx in ("", "_reverse")[: 2 if mod.bidirectional else 1]:
            yield layer, sfx


def _gate_rows(mod: nn.RNNBase, units: Tensor) -> Tensor:
    h = mod.hidden_size
    return torch.cat([g * h + units for g in range(GATES[mod.mode])])


def _next_cols(mod: nn.RNNBase, units: Tensor) -> Tensor:
    dirs = 2 if mod.bidirectional else 1
    return torch.cat([d * mod.hidden_size + units for d in range(dirs)])


def rebuild_rnn(mod: nn.RNNBase, keep_in: Tensor, keep_out: Tensor) -> nn.Module:
    kwargs: dict[str, Any] = dict(num_layers=mod.num_layers, bias=mod.bias, batch_first=mod.batch_first,
                                  dropout=mod.dropout, bidirectional=mod.bidirectional,
                                  device=mod.weight_ih_l0.device, dtype=mod.weight_ih_l0.dtype)
    if isinstance(mod, nn.RNN):
        kwargs["nonlinearity"] = mod.nonlinearity
    new = type(mod)(len(keep_in), len(keep_out), **kwargs)
    rows, nxt = _gate_rows(mod, keep_out), _next_cols(mod, keep_out)
    for layer, sfx in _cells(mod):
        cols = keep_in if layer == 0 else nxt
        copy_into(getattr(new, f"weight_ih_l{layer}{sfx}"), getattr(mod, f"weight_ih_l{layer}{sfx}")[rows][:, cols])
        copy_into(getattr(new, f"weight_hh_l{layer}{sfx}"),
                  getattr(mod, f"weight_hh_l{layer}{sfx}")[rows][:, keep_out])
        if mod.bias:
            for kind in ("ih", "hh"):
                copy_into(getattr(new, f"bias_{kind}_l{layer}{sfx}"), getattr(mod, f"bias_{kind}_l{layer}{sfx}")[rows])
    return new


def zero_rnn(mod: nn.RNNBase, gone_in: list[int], gone_out: list[int]) -> None:
    rows = _gate_rows(mod, torch.tensor(gone_out, dtype=torch.long))
    nxt = _next_cols(mod, torch.tensor(gone_out, dtype=torch.long))
    with torch.no_grad():
        for layer, sfx in _cells(mod):
            w_ih, w_hh = getattr(mod, f"weight_ih_l{layer}{sfx}"), getattr(mod, f"weight_hh_l{layer}{sfx}")
            w_ih[rows] = 0.0
            w_hh[rows] = 0.0
            w_hh[:, gone_out] = 0.0
            if layer == 0:
                w_ih[:, gone_in] = 0.0
            else:
                w_ih[:, nxt] = 0.0
            if mod.bias:
                getattr(mod, f"bias_ih_l{layer}{sfx}")[rows] = 0.0
                getattr(mod, f"bias_hh_l{layer}{sfx}")[rows] = 0.0


def l1_rnn(mod: nn.RNNBase) -> Tensor:
    h, total = mod.hidden_size, torch.zeros(mod.hidden_size, dtype=torch.float64)
    for layer, sfx in _cells(mod):
        for kind in ("ih", "hh"):
            w = getattr(mod, f"weight_{kind}_l{layer}{sfx}").detach().abs().double().sum(1)
            total += w.reshape(GATES[mod.mode], h).sum(0)
    return total


def rnn_macs_factor(mod: nn.RNNBase, kept_in: int, kept_units: int) -> float:
    """MACs of ``mod`` with ``kept_in`` input features and ``kept_units`` hidden units over its dense MACs (the
    formula of :func:`compactnn.report.macs._rnn_macs`; steps and gates cancel)."""
    dirs = 2 if mod.bidirectional else 1

    def macs(i: int, h: int) -> int:
        return h * (i + h) + (mod.num_layers - 1) * h * (dirs * h + h)

    return macs(kept_in, kept_units) / max(1, macs(mod.input_size, mod.hidden_size))


# ------------------------------------------------------------------------------------------ attention
def attention(q: Tensor, k: Tensor, v: Tensor, scale: float, mask: Tensor | None, dropout: float,
              training: bool) -> tuple[Tensor, Tensor]:
    """``softmax(scale * q k^T + mask) v`` over ``(B, heads, L, d)`` tensors; returns the output and the weights."""
    scores = (q * scale) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(-1)
    if dropout > 0.0 and training:
        weights = F.dropout(weights, dropout)
    return weights @ v, weights


def _additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


@packable
class PrunedMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` after head pruning: ``num_heads * head_dim`` inner features (q, k, v and the output
    projection's inputs) while ``embed_dim`` (inputs and outputs) stays. Same call and outputs as torch's module
    (``batch_first``, ``key_padding_mask``, ``attn_mask`` 2-D or ``(B * num_heads, L, S)``, ``need_weights``,
    ``average_attn_weights``, ``is_causal``, unbatched inputs). ``_qkv_same_embed_dim`` is False so that torch's
    fused Transformer fast paths, which assume ``embed_dim == num_heads * head_dim``, are not taken.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, bias: bool = True, dropout: float = 0.0,
                 batch_first: bool = False, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.kdim = self.vdim = embed_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self._qkv_same_embed_dim = False
        inner = num_heads * head_dim
        self.in_proj_weight = nn.Parameter(torch.empty(3 * inner, embed_dim, **kw))
        if bias:
            self.in_proj_bias = nn.Parameter(torch.zeros(3 * inner, **kw))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.Linear(inner, embed_dim, bias=bias, **kw)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        batched = query.dim() == 3
        if not batched:
            query, key, value = (t.unsqueeze(0) for t in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, n, s = query.shape[0], query.shape[1], key.shape[1]
        inner = self.num_heads * self.head_dim
        w, bias = self.in_proj_weight, self.in_proj_bias
        parts = []
        for i, x in enumerate((query, key, value)):
            y = F.linear(x, w[i * inner:(i + 1) * inner], None if bias is None else bias[i * inner:(i + 1) * inner])
            parts.append(y.reshape(b, y.shape[1], self.num_heads, self.head_dim).transpose(1, 2))
        mask = None
        if attn_mask is not None:
            m = _additive(attn_mask, query.dtype)
            mask = m.reshape(1, 1, n, s) if m.dim() == 2 else m.reshape(b, self.num_heads, n, s)
        elif is_causal:
            mask = torch.ones(n, s, dtype=torch.bool, device=query.device).triu(1)
            mask = _additive(mask, query.dtype).reshape(1, 1, n, s)
        if key_padding_mask is not None:
            kpm = _additive(key_padding_mask, query.dtype).reshape(b, 1, 1, s)
            mask = kpm if mask is None else mask + kpm
        out, weights = attention(*parts, self.head_dim ** -0.5, mask, self.dropout, self.training)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, inner))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights if batched else weights.squeeze(0)

    def macs(self, inputs: tuple, output: Any) -> int:
        query = inputs[0]
        key = inputs[1] if len(inputs) > 1 else query
        value = inputs[2] if len(inputs) > 2 else key
        e, inner = self.embed_dim, self.num_heads * self.head_dim
        rows_q, rows_k, rows_v = query.numel() // e, key.numel() // e, value.numel() // e
        batch = 1 if query.dim() == 2 else query.shape[0 if self.batch_first else 1]
        return (2 * rows_q + rows_k + rows_v) * e * inner + 2 * (rows_q // batch) * rows_k * inner


@register_leaf
@packable
class PrunedSelfAttention(nn.Module):
    """A hand-written (timm-style) self-attention in canonical form: ``qkv`` Linear, ``num_heads`` heads of
    ``head_dim`` features, ``softmax(scale * q k^T) v``, heads concatenated into the ``proj`` Linear. Input and output
    ``(B, N, dim)``. What a recognized attention block becomes when it loses heads (see :mod:`.graph`)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, scale: float, qkv_bias: bool = True,
                 proj_bias: bool = True, attn_drop: float = 0.0, device=None, dtype=None) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.num_heads, self.head_dim, self.scale, self.attn_drop = num_heads, head_dim, float(scale), float(attn_drop)
        self.qkv = nn.Linear(dim, 3 * num_heads * head_dim, bias=qkv_bias, **kw)
        self.proj = nn.Linear(num_heads * head_dim, dim, bias=proj_bias, **kw)

    def forward(self, x: Tensor) -> Tensor:
        b, n = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out, _ = attention(q, k, v, self.scale, None, self.attn_drop, self.training)
        return self.proj(out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))

    def macs(self, inputs: tuple, output: Any) -> int:
        x = inputs[0]
        rows, inner = x.numel() // x.shape[-1], self.num_heads * self.head_dim
        return rows * x.shape[-1] * 4 * inner + 2 * (x.shape[1] if x.dim() > 2 else 1) * rows * inner


@dataclasses.dataclass(frozen=True)
class SelfAttentionSpec:
    """Where a self-attention keeps its parts: ``qkv`` and ``proj`` as paths below the module, and its heads."""

    qkv: str
    proj: str
    num_heads: int
    head_dim: int
    scale: float
    attn_drop: float = 0.0

    def parts(self, mod: nn.Module) -> tuple[nn.Linear, nn.Linear]:
        return mod.get_submodule(self.qkv), mod.get_submodule(self.proj)

    def canonical(self, mod: nn.Module, keep: Tensor | None = None) -> PrunedSelfAttention:
        """The :class:`PrunedSelfAttention` computing ``mod`` with only heads ``keep`` (all if None)."""
        qkv, proj = self.parts(mod)
        keep = torch.arange(self.num_heads) if keep is None else keep
        rows, cols = head_rows(keep, self.num_heads, self.head_dim, 3), head_rows(keep, self.num_heads,
                                                                                  self.head_dim, 1)
        new = PrunedSelfAttention(qkv.in_features, len(keep), self.head_dim, self.scale, qkv.bias is not None,
                                  proj.bias is not None, self.attn_drop, device=qkv.weight.device,
                                  dtype=qkv.weight.dtype)
        copy_into(new.qkv.weight, qkv.weight[rows])
        copy_into(new.qkv.bias, None if qkv.bias is None else qkv.bias[rows])
        copy_into(new.proj.weight, proj.weight[:, cols])
        copy_into(new.proj.bias, proj.bias)
        new.train(mod.training)
        return new

    def rule(self, cls: type) -> Any:
        from .layer_rules import LayerRule

        def zero(mod: nn.Module, gone_in: list[int], gone_out: list[int]) -> None:
            qkv, proj = self.parts(mod)
            zero_heads(qkv.weight, qkv.bias, proj.weight, gone_out, self.num_heads, self.head_dim)

        def l1(mod: nn.Module) -> Tensor:
            return l1_heads(self.parts(mod)[0].weight, self.num_heads, self.head_dim)

        return LayerRule(cls, lambda m: "heads", lambda m, ki, ko: self.canonical(m, ko), zero, l1)


def head_rows(heads: Tensor, num_heads: int, head_dim: int, blocks: int) -> Tensor:
    """Rows of ``blocks`` stacked ``(num_heads * head_dim)`` blocks (q, k, v) that belong to ``heads``."""
    per = (heads.reshape(-1, 1) * head_dim + torch.arange(head_dim)).reshape(-1)
    return torch.cat([b * num_heads * head_dim + per for b in range(blocks)])


def zero_heads(w_in: Tensor, b_in: Tensor | None, w_out: Tensor, gone: list[int], num_heads: int,
               head_dim: int) -> None:
    if not gone:
        return
    gone_t = torch.tensor(gone, dtype=torch.long)
    rows, cols = head_rows(gone_t, num_heads, head_dim, 3), head_rows(gone_t, num_heads, head_dim, 1)
    with torch.no_grad():
        w_in[rows] = 0.0
        if b_in is not None:
            b_in[rows] = 0.0
        w_out[:, cols] = 0.0


def l1_heads(w_in: Tensor, num_heads: int, head_dim: int) -> Tensor:
    per_row = w_in.detach().abs().double().sum(1).reshape(3, num_heads, head_dim)
    return per_row.sum((0, 2))


def mha_kind(mod: nn.Module) -> str:
    if isinstance(mod, nn.MultiheadAttention):
        if not mod._qkv_same_embed_dim:
            raise ModelError("structured pruning does not support MultiheadAttention with kdim/vdim != embed_dim "
                             "(separate q/k/v projections)")
        if mod.bias_k is not None or mod.add_zero_attn:
            raise ModelError("structured pruning does not support MultiheadAttention with add_bias_kv or "
                             "add_zero_attn")
    return "heads"


def _head_dim(mod: nn.Module) -> int:
    return mod.head_dim


def rebuild_mha(mod: nn.Module, keep_in: Tensor | None, keep_out: Tensor) -> nn.Module:
    hd = _head_dim(mod)
    rows, cols = head_rows(keep_out, mod.num_heads, hd, 3), head_rows(keep_out, mod.num_heads, hd, 1)
    bias = mod.in_proj_bias is not None
    new = PrunedMultiheadAttention(mod.embed_dim, len(keep_out), hd, bias=bias, dropout=mod.dropout,
                                   batch_first=mod.batch_first, device=mod.in_proj_weight.device,
                                   dtype=mod.in_proj_weight.dtype)
    if (mod.out_proj.bias is not None) != bias:
        new.out_proj = nn.Linear(len(keep_out) * hd, mod.embed_dim, bias=mod.out_proj.bias is not None,
                                 device=mod.in_proj_weight.device, dtype=mod.in_proj_weight.dtype)
    copy_into(new.in_proj_weight, mod.in_proj_weight[rows])
    copy_into(new.in_proj_bias, None if not bias else mod.in_proj_bias[rows])
    copy_into(new.out_proj.weight, mod.out_proj.weight[:, cols])
    copy_into(new.out_proj.bias, mod.out_proj.bias)
    return new


def zero_mha(mod: nn.Module, gone_in: list[int], gone_out: list[int]) -> None:
    zero_heads(mod.in_proj_weight, mod.in_proj_bias, mod.out_proj.weight, gone_out, mod.num_heads, _head_dim(mod))


def l1_mha(mod: nn.Module) -> Tensor:
    return l1_heads(mod.in_proj_weight, mod.num_heads, _head_dim(mod))


def _rule_self_attention(cls: type):
    def spec(mod: PrunedSelfAttention) -> SelfAttentionSpec:
        return SelfAttentionSpec("qkv", "proj", mod.num_heads, mod.head_dim, mod.scale, mod.attn_drop)

    register_layer(cls, "heads", lambda m, ki, ko: spec(m).canonical(m, ko),
                   zero=lambda m, gi, go: spec(m).rule(cls).zero(m, gi, go), l1=lambda m: spec(m).rule(cls).l1(m))


for _cls in (nn.LSTM, nn.GRU, nn.RNN):
    register_layer(_cls, rnn_kind, rebuild_rnn, zero=zero_rnn, l1=l1_rnn)
for _cls in (nn.MultiheadAttention, PrunedMultiheadAttention):
    register_layer(_cls, mha_kind, rebuild_mha, zero=zero_mha, l1=l1_mha)
_rule_self_attention(PrunedSelfAttention)

__all__ = ["PrunedMultiheadAttention", "PrunedSelfAttention", "SelfAttentionSpec", "rebuild_rnn", "zero_rnn",
           "l1_rnn", "rnn_macs_factor", "attention", "head_rows", "GATES"]
