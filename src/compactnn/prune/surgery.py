"""Structural surgery: remove channels and neurons for real, leaving plain, smaller ``nn`` modules.

Given a :class:`~.graph.DependencyGraph` and, per prunable group, the group indices to KEEP, :func:`prune_channels`
rebuilds every affected ``nn.Conv1d/2d``, ``nn.Linear`` and ``nn.BatchNorm1d/2d`` with fewer channels and copies
the kept weights (no masks, no hooks): parameters, MACs and wall-clock time drop. :func:`zero_channels` is the
masked reference it must match: removed channels get zero weight, bias and BN affine (so they output exactly 0)
and consumers get zero weights on removed inputs.

Also :func:`keep_count` (channels kept at a ratio, snapped to ``round_to``), which the pruner of :mod:`.structured`
uses. Which layer types can be rebuilt is the table of :mod:`.layer_rules`.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelError
from ..graph import set_module
from ..report import count_macs
from .graph import DependencyGraph
from .layer_rules import rule_for


def keep_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Channels kept out of ``size`` at ``ratio``: ``round((1 - ratio) * size)``, at least 1.

    With ``round_to > 1`` the count snaps to the nearest multiple of ``round_to`` (halves round up), at least
    ``round_to``, as Torch-Pruning's ``round_to``: CPU and GPU kernels run widths that are multiples of 8 or 16 much
    faster than odd widths. A group of ``size <= round_to`` channels, or whose rounded count reaches ``size``, is kept
    whole.
    """
    kept = max(1, min(size, int(round((1.0 - ratio) * size))))
    if round_to > 1 and kept < size:
        kept = max(round_to, int(math.floor(kept / round_to + 0.5)) * round_to)
    return min(size, kept)


def removed_roots(graph: DependencyGraph, keep: Mapping[str, Sequence[int]]) -> set[int]:
    """Channel roots removed when each named group keeps only ``keep[name]`` (indices into ``group.roots``)."""
    removed: set[int] = set()
    for name, idx in keep.items():
        group = graph.groups.get(name)
        if group is None:
            raise ModelError(f"no channel group {name!r}; groups are: {', '.join(graph.prunable())}")
        if group.pinned:
            raise ModelError(f"group {name!r} reaches the model input or output; its channels cannot be pruned")
        idx = [int(i) for i in idx]
        if not idx or len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= group.size:
            raise ModelError(f"group {name!r}: keep must be distinct indices in [0, {group.size}), at least one, "
                             f"got {len(idx)} indices")
        kept = set(idx)
        removed |= {int(r) for i, r in enumerate(group.roots) if i not in kept}
    return removed


def _positions(graph: DependencyGraph, ids, removed: set[int]) -> Tensor:
    return torch.tensor([i for i, r in enumerate(graph.root(ids).tolist()) if r not in removed], dtype=torch.long)


def _rebuild(mod: nn.Module, keep_in: Tensor | None, keep_out: Tensor, rule=None) -> nn.Module:
    rule = rule or rule_for(mod)
    if rule is None:
        raise ModelError(f"no structured-pruning rule for {type(mod).__name__}; register one with "
                         "compactnn.prune.register_layer")
    new = rule.rebuild(mod, keep_in, keep_out)
    new.train(mod.training)
    return new


def prune_channels(model: nn.Module, graph: DependencyGraph, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """Remove channels in place: each group in ``keep`` keeps only those indices; returns ``model``.

    Args:
        model: the model ``graph`` was built from, or a deep copy of it (modules are found by name).
        graph: its :class:`DependencyGraph`.
        keep: ``{group name: indices into group.roots to keep}``; groups not listed keep everything.

    Raises:
        ModelError: an unknown or pinned group, or bad indices.
    """
    removed = removed_roots(graph, keep)
    if not removed:
        return model
    modules = dict(model.named_modules())
    for layer in graph.layers.values():
        mod = modules.get(layer.target)
        if mod is None:
            raise ModelError(f"module {layer.target!r} of the graph is missing from the model; rebuild the graph")
        keep_out = _positions(graph, layer.out_ids, removed)
        keep_in = None if layer.in_ids is None else _positions(graph, layer.in_ids, removed)
        if len(keep_out) == len(layer.out_ids) and (keep_in is None or len(keep_in) == len(layer.in_ids)):
            continue
        set_module(model, mod, _rebuild(mod, keep_in, keep_out, layer.rule))
    return model


def zero_channels(model: nn.Module, graph: DependencyGraph, keep: Mapping[str, Sequence[int]]) -> nn.Module:
    """The masked reference of :func:`prune_channels`, in place: same shapes, removed channels zeroed.

    Producers get zero weight rows and bias, BatchNorms zero gamma and beta on removed channels (so those channels
    output exactly 0), and consumers zero weights on removed input channels/features. Returns ``model``.
    """
    removed = removed_roots(graph, keep)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for layer in graph.layers.values():
            mod = modules[layer.target]
            gone_out = [i for i, r in enumerate(graph.root(layer.out_ids).tolist()) if r in removed]
            rule = layer.rule or rule_for(mod)
            if rule is not None and rule.zero is not None:
                gone_in = [] if layer.in_ids is None else [
                    i for i, r in enumerate(graph.root(layer.in_ids).tolist()) if r in removed]
                if gone_in or gone_out:
                    rule.zero(mod, gone_in, gone_out)
                continue
            if gone_out:
                if getattr(mod, "weight", None) is not None:
                    mod.weight[gone_out] = 0.0
                if getattr(mod, "bias", None) is not None:
                    mod.bias[gone_out] = 0.0
            if layer.in_ids is not None and layer.kind != "depthwise":
                gone_in = [i for i, r in enumerate(graph.root(layer.in_ids).tolist()) if r in removed]
                if gone_in:
                    mod.weight[:, gone_in] = 0.0
    return model


def total_macs(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Total MACs of one forward pass at batch 1, from :func:`compactnn.report.count_macs`."""
    return int(sum(count_macs(model, tuple(input_shape)).values()))


__all__ = ["keep_count", "removed_roots", "prune_channels", "zero_channels", "total_macs"]
