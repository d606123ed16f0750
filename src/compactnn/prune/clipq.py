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
``(p, bits)`` per layer are fixed (``ClipQ(sparsity=p, bits=...)``, a number or ``{layer pattern: value}``) or found by
Bayesian optimization (``search=True``, see :mod:`compactnn.prune.clipq_search`). The operator is in
:mod:`compactnn.prune.clipq_ops`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Annotated, Any, Iterator, Literal, Mapping

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..api import register_method
from ..config import (FineTune, Fraction, MethodConfig, NonNegative, Patterns, PerLayer, PositiveInt, Range, Ratio,
                      Seed, Sparsity, check)
from ..layers import WEIGHT_LAYERS, Target, require_data, run_finetune, strip_parametrizations
from .clipq_ops import ClipQuantize, clip_quantize
from .clipq_search import search


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


# ------------------------------------------------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class ClipQ(MethodConfig):
    """CLIP-Q: per-layer clipping and interval quantization in parallel with fine-tuning.

    Args:
        sparsity: the paper's p: fraction of each sign's weights clipped to zero, in [0, 1); one number or
            ``{layer pattern: sparsity}``. Used when ``search`` is false.
        bits: ``2**bits - 1`` nonzero values per layer plus zero, 1..16; a number or ``{layer pattern: bits}``.
        search: choose ``(sparsity, bits)`` per layer by Bayesian optimization (:mod:`compactnn.prune.clipq_search`)
            on a held-out part of the training data instead of using ``sparsity`` and ``bits``.
        trials: optuna trials this process runs in the search (many workers on one ``storage`` add up).
        ratio: global size target of the search: the selected layers' fp32 bits over their stored weight bits
            (as the packed file stores them) at least this compression factor, e.g. 50 for 50x; ``None`` = no target.
        lam: lambda in ``error - lam * saved``: held-out error (0..1) against the fraction of the layers' fp32 bits
            saved (0..1).
        sparsity_range: ``(low, high)`` search range of ``sparsity``, within [0, 1).
        bits_range: ``(low, high)`` search range of ``bits``, within 1..16.
        storage: optuna storage URL (``sqlite:///study.db``, ``postgresql://user@host/db``); ``None`` = in memory.
        study_name: the study's name in ``storage``; workers with the same storage and name share trials.
        sampler: ``"gp"`` (optuna's GPSampler, the paper's Gaussian-process BO) or ``"tpe"``.
        heldout: share of the training set held out to measure the search's error, in (0, 1).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight.
        exclude: patterns of layers left alone.
        finetune: fine-tuning of all layers together under CLIP-Q (``None`` = apply ``Q`` once, no training).
        seed: seed of the held-out split and the sampler.
    """

    method = "clip-q"
    description = "CLIP-Q: per-layer clipping + interval quantization during fine-tuning, (p, bits) by GP search"
    kinds = WEIGHT_LAYERS
    example = {"sparsity": 0.8, "bits": 3, "finetune": {"epochs": 1}}
    renamed = {"p": "use sparsity (the fraction of each sign's weights clipped)",
               "target_ratio": "use ratio = 1 / target_ratio (a compression factor >= 1, e.g. 50)",
               "p_range": "use sparsity_range"}

    sparsity: PerLayer[Sparsity] = 0.9
    bits: PerLayer[Annotated[int, Range(1, 16, note="bits")]] = 4
    search: bool = False
    trials: PositiveInt = 40
    ratio: Ratio | None = None
    lam: NonNegative = 0.1
    sparsity_range: tuple[Sparsity, Sparsity] = (0.5, 0.99)
    bits_range: tuple[Annotated[int, Range(1, 16)], Annotated[int, Range(1, 16)]] = (2, 8)
    storage: str | None = None
    study_name: str = "clip-q"
    sampler: Literal["gp", "tpe"] = "gp"
    heldout: Fraction = 0.1
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = FineTune()
    seed: Seed = 0

    def validate(self) -> None:
        check(self.sparsity_range[0] <= self.sparsity_range[1],
              f"sparsity_range must be (low, high) with low <= high, got {self.sparsity_range!r}")
        check(self.bits_range[0] <= self.bits_range[1],
              f"bits_range must be (low, high) with low <= high, got {self.bits_range!r}")
        check(self.study_name != "", "study_name must be a non-empty string")
        check(self.storage is None or "://" in self.storage,
              f"storage must be an optuna RDB URL such as sqlite:///study.db, got {self.storage!r}")


@register_method(ClipQ)
def clip_q(model: nn.Module, config: ClipQ, data: Any, target: Target) -> nn.Module:
    """Apply CLIP-Q to ``model`` in place and return it: plain layers with ``<= 2**bits - 1`` values plus zeros."""
    layers = target.layers
    settings = {n: (float(target.value("sparsity", n)), int(target.value("bits", n))) for n in layers}
    if config.search:
        require_data(data, config.method)
        settings = search(model, config, data, layers=layers).settings
    if config.finetune is None:
        with torch.no_grad():
            for name, module in layers.items():
                module.weight.copy_(clip_quantize(module.weight, *settings[name]))
        return model
    require_data(data, config.method)
    with clip_quantized(layers, settings):
        run_finetune(model, data, config.finetune, config.method)
    return model


__all__ = ["ClipQ", "clip_q", "clip_quantized"]
