"""CLIP-Q (Tung & Mori, CVPR 2018): clipping and quantization *in parallel* during fine-tuning.

Every layer keeps full-precision shadow weights ``W``; every forward pass of fine-tuning uses ``Q(W)``, made in three
steps from the current ``W`` (so a weight clipped at one step comes back when training moves it out again):

1. **Clip.** ``c+`` is the ``round(p * n+)``-th smallest positive weight and ``c-`` the ``round(p * n-)``-th largest
   negative weight (``n+``, ``n-``: the counts of positive and negative weights), so a fraction ``p`` of the positive
   weights are ``<= c+`` and a fraction ``p`` of the negative weights are ``>= c-``. Weights in ``[c-, c+]`` are 0 in
   this forward pass. *Reading of p:* per sign, as the paper's sentence names the two sides separately ("p percent of
   the positive weights ... p percent of the negative weights"); it also keeps the cut symmetric in *share* when the
   weight distribution is skewed, and the fraction of nonzeros removed is still ``p`` up to rounding on each side.
   Ties at a threshold are all clipped (a threshold, not a rank; with float weights ties are rare).
2. **Partition.** The surviving (unclipped, nonzero) weights are split into ``2**bits - 1`` uniform intervals over
   ``[min, max]`` of the survivors; interval ``j`` is ``[lo + j*d, lo + (j+1)*d)``, the last one closed. The paper
   says "linearly partitioned"; ``[min, max]`` of the survivors is our reading. The code zero is the ``2**bits``-th
   value. An interval that straddles the clipped gap around 0 may hold weights of both signs; it takes their mean.
3. **Quantize.** Each interval's weights take the mean of the shadow weights inside it (an empty interval has no
   value). The backward pass is the straight-through estimator: ``dL/dW = dL/dQ(W)`` for every weight, clipped or not.

It runs as a :mod:`torch.nn.utils.parametrize` parametrization whose ``original`` is ``W``; afterwards the layers are
baked into plain ``nn.Linear``/``nn.Conv2d`` modules whose weights hold at most ``2**bits - 1`` distinct nonzero
values plus zeros, which the packer stores as a sparse relative index plus a codebook (the paper's storage).
``(p, bits)`` per layer are fixed (``ClipQ(p=..., bits=...)``, a number or ``{layer: value}``) or found by Bayesian
optimization (``search=True``, see :mod:`compactnn.prune.clipq_search`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..api import register_method
from ..config import FineTune, MethodConfig, check
from ..errors import ModelError
from ..layers import require_data, run_finetune, select_layers, strip_parametrizations
from ..pack import codecs


# ------------------------------------------------------------------------------------------------------ operator
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


@contextlib.contextmanager
def clip_quantized(layers: Mapping[str, nn.Module], settings: Mapping[str, tuple[float, int]]) -> Iterator[None]:
    """Parametrize ``layers`` with :class:`ClipQuantize` inside the block; bake ``Q(W)`` into plain layers on exit.

    Args:
        layers: ``{name: module}`` with a ``weight``.
        settings: ``{name: (p, bits)}`` for every layer in ``layers``.

    The layers are baked on exit even if the block raises, so the model is never left parametrized.
    """
    try:
        for name, module in layers.items():
            p, bits = settings[name]
            parametrize.register_parametrization(module, "weight", ClipQuantize(p, bits))
        yield
    finally:
        for module in layers.values():
            strip_parametrizations(module, "weight")


def stored_bits(weight: Tensor) -> int:
    """Bits the ``.cnz`` file stores for this tensor at zstd ``level=0``: ``8 * len(payload)`` of the codec that
    :func:`compactnn.pack.codecs.encode_tensor` picks (for a CLIP-Q weight: sparse relative index + codebook).

    Exact: it is the packer's own codec, and ``compactnn.pack.tensor_bytes(model, level=0)`` reports the same bytes
    (tested). At the default ``level=19`` the zstd stage can only make the blob smaller, never larger.
    """
    return 8 * len(codecs.encode_tensor(weight.detach()).payload)


# ------------------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ClipQ(MethodConfig):
    """CLIP-Q: per-layer clipping and interval quantization in parallel with fine-tuning.

    Args:
        p: fraction of each sign's weights clipped, in [0, 1): one number for every layer or ``{layer: p}``
            (layers missing from the dict get 0.9). Used when ``search`` is false.
        bits: ``2**bits - 1`` nonzero values per layer plus zero, 1..16: a number or ``{layer: bits}`` (missing: 4).
        search: choose ``(p, bits)`` per layer by Bayesian optimization (:mod:`compactnn.prune.clipq_search`) on a
            held-out part of the training data instead of using ``p`` and ``bits``.
        trials: optuna trials this process runs in the search (many workers on one ``storage`` add up).
        target_ratio: global size target: the selected layers' stored weight bits (as the packed file stores them)
            at most this fraction of their fp32 bits, in (0, 1), e.g. 0.02 for 50x; ``None`` = no target.
        lam: lambda in ``error - lam * saved``: held-out error (0..1) against the fraction of the layers' fp32 bits
            saved (0..1).
        p_range: ``(low, high)`` search range of ``p``, within [0, 1).
        bits_range: ``(low, high)`` search range of ``bits``, within 1..16.
        storage: optuna storage URL (``sqlite:///study.db``, ``postgresql://user@host/db``); ``None`` = in memory.
        study_name: the study's name in ``storage``; workers with the same storage and name share trials.
        sampler: ``"gp"`` (optuna's GPSampler, the paper's Gaussian-process BO) or ``"tpe"``.
        heldout: share of the training set held out to measure the search's error, in (0, 1).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight.
        finetune: fine-tuning of all layers together under CLIP-Q (``None`` = apply ``Q`` once, no training).
            Its ``lr`` defaults to 0.01.
        seed: seed of the held-out split and the sampler.
    """

    method = "clip-q"
    description = "CLIP-Q: per-layer clipping + interval quantization during fine-tuning, (p, bits) by GP search"

    p: float | dict[str, float] = 0.9
    bits: int | dict[str, int] = 4
    search: bool = False
    trials: int = 40
    target_ratio: float | None = None
    lam: float = 0.1
    p_range: tuple[float, float] = (0.5, 0.99)
    bits_range: tuple[int, int] = (2, 8)
    storage: str | None = None
    study_name: str = "clip-q"
    sampler: str = "gp"
    heldout: float = 0.1
    layers: tuple[str, ...] | None = None
    finetune: FineTune | None = FineTune()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("layers", "p_range", "bits_range"):
            if isinstance(getattr(self, name), list):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        ps = self.p.values() if isinstance(self.p, dict) else [self.p]
        check(all(_is_num(p) and 0.0 <= p < 1.0 for p in ps),
              f"clip-q: p must be in [0, 1) (fraction of each sign's weights clipped), got {self.p!r}")
        bs = self.bits.values() if isinstance(self.bits, dict) else [self.bits]
        check(all(_is_int(b) and 1 <= b <= 16 for b in bs), f"clip-q: bits must be an int in 1..16, got {self.bits!r}")
        check(_is_int(self.trials) and self.trials >= 1, f"clip-q: trials must be a positive int, got {self.trials!r}")
        check(self.target_ratio is None or (_is_num(self.target_ratio) and 0.0 < self.target_ratio < 1.0),
              f"clip-q: target_ratio must be in (0, 1) (stored bits / fp32 bits) or null, got {self.target_ratio!r}")
        check(_is_num(self.lam) and self.lam >= 0, f"clip-q: lam must be a number >= 0, got {self.lam!r}")
        check(len(self.p_range) == 2 and all(_is_num(v) for v in self.p_range)
              and 0.0 <= self.p_range[0] <= self.p_range[1] < 1.0,
              f"clip-q: p_range must be (low, high) with 0 <= low <= high < 1, got {self.p_range!r}")
        check(len(self.bits_range) == 2 and all(_is_int(v) for v in self.bits_range)
              and 1 <= self.bits_range[0] <= self.bits_range[1] <= 16,
              f"clip-q: bits_range must be (low, high) ints with 1 <= low <= high <= 16, got {self.bits_range!r}")
        check(self.sampler in ("gp", "tpe"), f"clip-q: sampler must be 'gp' or 'tpe', got {self.sampler!r}")
        check(_is_num(self.heldout) and 0.0 < self.heldout < 1.0,
              f"clip-q: heldout must be in (0, 1) (share of the training set), got {self.heldout!r}")
        check(isinstance(self.study_name, str) and self.study_name != "",
              f"clip-q: study_name must be a non-empty string, got {self.study_name!r}")
        check(self.storage is None or (isinstance(self.storage, str) and "://" in self.storage),
              f"clip-q: storage must be an optuna RDB URL such as sqlite:///study.db, got {self.storage!r}")
        check(self.layers is None or (len(self.layers) > 0 and all(isinstance(p, str) for p in self.layers)),
              f"clip-q: layers must be a non-empty list of name patterns or null, got {self.layers!r}")


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def fixed_settings(config: ClipQ, layers: Mapping[str, nn.Module]) -> dict[str, tuple[float, int]]:
    """``{layer: (p, bits)}`` from the config's ``p`` and ``bits`` (numbers or per-layer dicts).

    Raises:
        ModelError: a dict names a layer that is not among ``layers``.
    """
    for what, value in (("p", config.p), ("bits", config.bits)):
        if isinstance(value, dict):
            unknown = sorted(set(value) - set(layers))
            if unknown:
                raise ModelError(f"clip-q: {what} names unknown layer(s) {', '.join(unknown)}; "
                                 f"selected layers are: {', '.join(layers)}")
    p = config.p if isinstance(config.p, dict) else {}
    b = config.bits if isinstance(config.bits, dict) else {}
    p0 = 0.9 if isinstance(config.p, dict) else config.p
    b0 = 4 if isinstance(config.bits, dict) else config.bits
    return {n: (float(p.get(n, p0)), int(b.get(n, b0))) for n in layers}


@register_method(ClipQ)
def clip_q(model: nn.Module, config: ClipQ, data: Any = None) -> nn.Module:
    """Apply CLIP-Q to ``model`` in place and return it: plain layers with ``<= 2**bits - 1`` values plus zeros."""
    layers = select_layers(model, config.layers, what="prunable")
    settings = fixed_settings(config, layers)
    if config.search:
        require_data(data, config.method)
        from .clipq_search import search

        settings = search(model, config, data).settings
    if config.finetune is None:
        with torch.no_grad():
            for name, module in layers.items():
                module.weight.copy_(clip_quantize(module.weight, *settings[name]))
        return model
    require_data(data, config.method)
    with clip_quantized(layers, settings):
        run_finetune(model, data, config.finetune, config.method)
    return model


__all__ = ["ClipQ", "clip_q", "clip_thresholds", "clip_quantize", "clip_quantize_ste", "ClipQuantize",
           "clip_quantized", "fixed_settings", "stored_bits"]
