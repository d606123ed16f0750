"""Structural surgery: remove channels and neurons for real, leaving plain, smaller ``nn`` modules.

Given a :class:`~.graph.DependencyGraph` and, per prunable group, the group indices to KEEP, :func:`prune_channels`
rebuilds every affected ``nn.Conv1d/2d``, ``nn.Linear`` and ``nn.BatchNorm1d/2d`` with fewer channels and copies
the kept weights (no masks, no hooks): parameters, MACs and wall-clock time drop. :func:`zero_channels` is the
masked reference it must match: removed channels get zero weight, bias and BN affine (so they output exactly 0)
and consumers get zero weights on removed inputs.

Also the ratio helpers every structured pruner shares: :func:`resolve_ratios` (a float or per-layer mapping to a
ratio per group), :func:`keep_by_scores` (top scores per group) and :func:`ratio_for_macs` (the uniform ratio that
reaches a MACs budget).
"""

from __future__ import annotations

import copy
import math
from fnmatch import fnmatchcase
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError, ModelError
from ..report import count_macs
from .graph import DependencyGraph, Layer


def check_ratio(ratio: float, where: str) -> float:
    """Return ``float(ratio)``; ConfigError unless it is a number in [0, 1) (the fraction of channels removed)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise ConfigError(f"{where}: pruning ratio must be in [0, 1) (fraction of channels removed), got {ratio!r}")
    return float(ratio)


def resolve_ratios(graph: DependencyGraph, ratio: float | Mapping[str, float], where: str = "prune") -> dict:
    """One ratio per prunable group.

    Args:
        graph: the dependency graph.
        ratio: a float for every prunable group, or ``{pattern: ratio}`` where each ``fnmatch`` pattern names Conv/
            Linear layers (any producer of a group); groups matching no key keep all channels, the first matching
            key wins.
        where: label for error messages.

    Raises:
        ConfigError: a ratio outside [0, 1).
        ModelError: a key matches no Conv/Linear layer, or only layers whose outputs are pinned (model output).
    """
    groups = graph.prunable()
    if not isinstance(ratio, Mapping):
        r = check_ratio(ratio, where)
        return {name: r for name in groups}
    out: dict[str, float] = {}
    for key, value in ratio.items():
        r = check_ratio(value, f"{where} ({key!r})")
        hits = [g for g in graph.groups.values() if any(fnmatchcase(p, str(key)) for p in g.producers)]
        if not hits:
            names = ", ".join(p for g in graph.groups.values() for p in g.producers)
            raise ModelError(f"{where}: layer {key!r} matches no Conv/Linear layer; layers are: {names}")
        if all(g.pinned for g in hits):
            raise ModelError(f"{where}: layer {key!r} feeds the model output (e.g. the classifier); its outputs "
                             "cannot be pruned, name other layers")
        for g in hits:
            if not g.pinned:
                out.setdefault(g.name, r)
    return out


def check_ratios(ratio: float | Mapping[str, float], where: str) -> None:
    """ConfigError unless ``ratio`` is a float in [0, 1) or a non-empty ``{layer pattern: ratio}`` of such floats."""
    if isinstance(ratio, Mapping):
        if not ratio:
            raise ConfigError(f"{where}: ratio mapping is empty; give {{layer pattern: ratio}} or one float")
        for key, value in ratio.items():
            check_ratio(value, f"{where}: ratio[{key!r}]")
    else:
        check_ratio(ratio, f"{where}: ratio")


def check_round_to(round_to: int, where: str) -> int:
    """Return ``round_to``; ConfigError unless it is an int >= 1 (the channel multiple kept counts snap to)."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ConfigError(f"{where}: round_to must be an integer >= 1 (kept channels become a multiple of it, "
                          f"e.g. 8), got {round_to!r}")
    return round_to


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


def keep_by_scores(scores: Mapping[str, Tensor], ratios: Mapping[str, float],
                   round_to: int = 1) -> dict[str, list[int]]:
    """Indices (sorted) of the highest-scoring channels per group; ties keep the lower index.

    Args:
        scores: ``{group name: one score per group channel}``.
        ratios: ``{group name: fraction removed}``; groups missing here are not pruned.
        round_to: kept counts snap to multiples of this (see :func:`keep_count`).
    """
    keep: dict[str, list[int]] = {}
    for name, ratio in ratios.items():
        s = scores[name].reshape(-1)
        order = torch.sort(s, descending=True, stable=True).indices
        keep[name] = sorted(order[: keep_count(s.numel(), ratio, round_to)].tolist())
    return keep


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


def _set_module(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, parent in model.named_modules(remove_duplicate=False):
        for child_name, child in list(parent.named_children()):
            if child is old:
                setattr(parent, child_name, new)


def _copy(dst: Tensor | None, src: Tensor | None) -> None:
    if dst is not None and src is not None:
        with torch.no_grad():
            dst.copy_(src)
        if isinstance(dst, nn.Parameter):
            dst.requires_grad_(src.requires_grad)


def _rebuild(mod: nn.Module, layer: Layer, keep_in: Tensor | None, keep_out: Tensor) -> nn.Module:
    kw = dict(device=next(mod.parameters(), torch.empty(0)).device)
    if isinstance(mod, nn.Linear):
        new = nn.Linear(len(keep_in), len(keep_out), bias=mod.bias is not None, dtype=mod.weight.dtype, **kw)
        _copy(new.weight, mod.weight[keep_out][:, keep_in])
        _copy(new.bias, None if mod.bias is None else mod.bias[keep_out])
    elif isinstance(mod, (nn.Conv1d, nn.Conv2d)):
        depthwise = layer.kind == "depthwise"
        cin, cout = len(keep_in), len(keep_out)
        new = type(mod)(cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                        groups=cin if depthwise else 1, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                        dtype=mod.weight.dtype, **kw)
        w = mod.weight[keep_out]
        _copy(new.weight, w if depthwise else w[:, keep_in])
        _copy(new.bias, None if mod.bias is None else mod.bias[keep_out])
    else:  # BatchNorm
        new = type(mod)(len(keep_out), eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                        track_running_stats=mod.track_running_stats, **kw)
        if mod.affine:
            _copy(new.weight, mod.weight[keep_out])
            _copy(new.bias, mod.bias[keep_out])
        if mod.track_running_stats and mod.running_mean is not None:
            _copy(new.running_mean, mod.running_mean[keep_out])
            _copy(new.running_var, mod.running_var[keep_out])
            _copy(new.num_batches_tracked, mod.num_batches_tracked)
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
        mod = modules.get(layer.name)
        if mod is None:
            raise ModelError(f"module {layer.name!r} of the graph is missing from the model; rebuild the graph")
        keep_out = _positions(graph, layer.out_ids, removed)
        keep_in = None if layer.in_ids is None else _positions(graph, layer.in_ids, removed)
        if len(keep_out) == len(layer.out_ids) and (keep_in is None or len(keep_in) == len(layer.in_ids)):
            continue
        _set_module(model, mod, _rebuild(mod, layer, keep_in, keep_out))
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
            mod = modules[layer.name]
            gone_out = [i for i, r in enumerate(graph.root(layer.out_ids).tolist()) if r in removed]
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


def ratio_for_macs(model: nn.Module, target_macs: int, input_shape: Sequence[int] | None = None,
                   graph: DependencyGraph | None = None, tol: float = 1e-4, round_to: int = 1) -> float:
    """The uniform ratio over all prunable groups whose pruned model has MACs closest to ``target_macs``.

    MACs depend only on how many channels each group keeps, not which, so this holds for every scorer. Found by
    bisection over the ratio (MACs fall as the ratio grows), measuring each candidate with :func:`total_macs`.

    Args:
        model: the dense model.
        target_macs: the MACs to reach (e.g. the MACs of a NISP-pruned model).
        input_shape: one example's shape; ``None`` uses ``model.input_shape``.
        graph: the model's graph (built when ``None``).
        tol: stop when the ratio interval is this narrow.
        round_to: kept counts snap to multiples of this, as the pruner will do (see :func:`keep_count`); MACs then
            move in steps, and the ratio whose MACs are closest to the target is returned.
    """
    graph = graph or DependencyGraph.build(model, input_shape)
    shape = graph.input_shape

    def macs_at(r: float) -> int:
        keep = {n: list(range(keep_count(g.size, r, round_to))) for n, g in graph.prunable().items()}
        return total_macs(prune_channels(copy.deepcopy(model), graph, keep), shape)

    lo, hi = 0.0, 1.0 - 1e-9
    best = (abs(macs_at(lo) - target_macs), lo)
    while hi - lo > tol:
        mid = (lo + hi) / 2
        m = macs_at(mid)
        best = min(best, (abs(m - target_macs), mid))
        if m > target_macs:
            lo = mid
        else:
            hi = mid
    return round(best[1], 6) if not math.isnan(best[1]) else 0.0


__all__ = ["check_ratio", "check_ratios", "check_round_to", "resolve_ratios", "keep_count", "keep_by_scores", "removed_roots",
           "prune_channels", "zero_channels", "total_macs", "ratio_for_macs"]
