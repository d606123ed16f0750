"""Magnitude pruning: zero the weights of smallest absolute value, once or gradually (AGP), then fine-tune.

The baseline of Han et al. (2015) and Zhu & Gupta (2017). ``scope="global"`` ranks all selected weights together
(one threshold), ``scope="layer"`` prunes every layer to the same fraction. The result is the same module with
zeros in its weights; :func:`compactnn.pack.save` stores them with a sparse codec.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal, Mapping

import torch
from torch import Tensor, nn

from ..api import register_method
from ..config import FineTune, MethodConfig, Patterns, PositiveInt, Range, Sparsity, check
from ..layers import WEIGHT_LAYERS, Target, require_data, run_finetune
from .masks import masked
from .schedule import PruneSchedule

@dataclasses.dataclass(frozen=True)
class MagnitudePrune(MethodConfig):
    """Prune the smallest-magnitude weights of Linear/Conv layers.

    Args:
        sparsity: fraction of the selected weights set to zero, in [0, 1).
        scope: ``"global"``: one magnitude threshold over all selected layers (keeps exactly
            ``round((1 - sparsity) * N)`` weights of the ``N`` selected); ``"layer"``: every layer keeps
            ``round((1 - sparsity) * n)`` of its own ``n``. Ties go to the weight that comes first (layer order,
            then flattened index).
        layers: ``fnmatch`` patterns over module names (``"fc*"``, ``"features.*"``); ``None`` = every
            Linear/Conv weight and every other weight of >= 2 dims (LSTM/GRU matrices, attention projections,
            a user layer's ``weight``; named ``"<module>.<parameter>"``).
        exclude: patterns of layers left alone.
        schedule: ``"one-shot"`` prunes before fine-tuning; ``"agp"`` raises sparsity along Zhu & Gupta's cubic
            ramp during fine-tuning (needs ``finetune``).
        finetune: fine-tuning run while masks hold pruned weights at zero (``None`` = prune only).
        agp_start: fraction of the fine-tuning steps at which the AGP ramp starts.
        agp_end: fraction of the fine-tuning steps at which it reaches ``sparsity`` (the rest recovers accuracy).
        agp_every: recompute masks every this many steps during the ramp; ``None`` = 1/16 of the ramp.
    """

    method = "magnitude-prune"
    description = "Magnitude pruning (one-shot or AGP cubic schedule) with masked fine-tuning"
    kinds = WEIGHT_LAYERS
    any_weight = True
    example = {"sparsity": 0.5, "finetune": {"epochs": 1}}

    sparsity: Sparsity
    scope: Literal["global", "layer"] = "global"
    layers: Patterns = None
    exclude: Patterns = None
    schedule: Literal["one-shot", "agp"] = "one-shot"
    finetune: FineTune | None = FineTune()
    agp_start: Annotated[float, Range(0.0, 1.0)] = 0.0
    agp_end: Annotated[float, Range(0.0, 1.0)] = 0.7
    agp_every: PositiveInt | None = None

    def validate(self) -> None:
        check(self.agp_start < self.agp_end,
              f"need agp_start < agp_end, got agp_start={self.agp_start}, agp_end={self.agp_end}")
        check(self.schedule != "agp" or self.finetune is not None,
              "schedule 'agp' prunes during fine-tuning; set finetune or use schedule 'one-shot'")


def keep_top(scores: Tensor, keep: int) -> Tensor:
    """Bool mask of the ``keep`` largest entries of ``scores`` (ties: the lower flat index wins), same shape."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if keep > 0:
        order = torch.sort(flat, descending=True, stable=True).indices
        mask[order[:keep]] = True
    return mask.reshape(scores.shape)


def magnitude_masks(
    weights: Mapping[str, Tensor], sparsity: float, scope: Literal["global", "layer"] = "global"
) -> dict[str, Tensor]:
    """Masks (True = keep) removing the fraction ``sparsity`` of smallest ``|w|``.

    Args:
        weights: ``{name: weight}``; order matters only for breaking ties.
        sparsity: fraction to remove, in [0, 1].
        scope: ``"global"`` (one threshold, exactly ``round((1-s) N)`` kept overall) or ``"layer"``
            (``round((1-s) n)`` kept per layer).
    """
    if scope == "layer":
        return {n: keep_top(w.detach().abs(), round((1.0 - sparsity) * w.numel())) for n, w in weights.items()}
    if scope != "global":
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    names = list(weights)
    flat = torch.cat([weights[n].detach().abs().reshape(-1).float() for n in names])
    mask = keep_top(flat, round((1.0 - sparsity) * flat.numel()))
    out, offset = {}, 0
    for n in names:
        size = weights[n].numel()
        out[n] = mask[offset : offset + size].reshape(weights[n].shape)
        offset += size
    return out


@register_method(MagnitudePrune)
def magnitude_prune(model: nn.Module, config: MagnitudePrune, data: Any, target: Target) -> nn.Module:
    """Prune ``model`` in place as ``config`` says and return it (plain layers, zeros in the weights)."""
    layers = target.layers
    if config.finetune is None:
        masks = magnitude_masks({n: m.weight for n, m in layers.items()}, config.sparsity, config.scope)
        with torch.no_grad():
            for n, m in layers.items():
                m.weight.masked_fill_(~masks[n].to(m.weight.device), 0.0)
        return model
    require_data(data, config.method)
    with masked(layers, {}) as handle:

        def prune_to(sparsity: float) -> None:
            # Ranks the masked weights, so weights pruned earlier (now zero) stay pruned as sparsity grows.
            handle.update(magnitude_masks({n: m.weight for n, m in layers.items()}, sparsity, config.scope))

        schedule = PruneSchedule(
            prune_to, config.sparsity, config.schedule, start=config.agp_start, end=config.agp_end,
            every=config.agp_every,
        )
        schedule.begin()
        run_finetune(model, data, config.finetune, config.method, step_hooks=[schedule])
        schedule.finish()
    return model


__all__ = ["MagnitudePrune", "magnitude_prune", "magnitude_masks", "keep_top"]
