"""Structured pruning as *importance* + *pruner* (as Torch-Pruning separates ``Importance`` from its pruners).

An importance measure scores every channel of every prunable group of a :class:`~.graph.DependencyGraph`
(``importance(model, graph, data) -> {group name: scores}``): :func:`l1_importance` (Li et al. 2017) and
:class:`NISPImportance` (Yu et al. 2018, in :mod:`.nisp`). :func:`prune_structured` turns the scores and a budget
into kept channels, removes the others physically (:func:`.surgery.prune_channels`) and fine-tunes.

The budget (``sparsity`` of a :class:`Structured` config):

- ``scope="layer"``: every selected group loses ``sparsity`` of its channels (a per-layer mapping gives groups their
  own value); with ``budget="macs"`` the one uniform ratio that removes ``sparsity`` of the model's MACs instead;
- ``scope="global"``: the pruner allocates one budget over all selected groups itself: channels are ranked by their
  score divided by their group's mean score (so groups of different scales compare, Torch-Pruning's "mean"
  normalizer), and the lowest go until ``sparsity`` of the channels (``budget="channels"``) or of the MACs
  (``budget="macs"``) are removed. Kept counts snap to multiples of ``round_to``; each group keeps at least one.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..config import FineTune, MethodConfig, Patterns, PerLayer, PositiveInt, Sparsity, check
from ..errors import ModelError
from ..layers import WEIGHT_LAYERS, Target, require_data, run_finetune
from .graph import DependencyGraph
from ..report import count_macs
from .layer_rules import rule_for
from .surgery import keep_count, prune_channels, removed_roots
from .units import PrunedMultiheadAttention, PrunedSelfAttention, rnn_macs_factor

Importance = Callable[[nn.Module, DependencyGraph, Any], dict[str, Tensor]]


@dataclasses.dataclass(frozen=True)
class Structured(MethodConfig):
    """Settings every structured pruner shares (see the module docstring for the budget).

    Args:
        sparsity: fraction removed, in [0, 1): of each group's channels (``scope="layer"``; a number or
            ``{layer pattern: sparsity}`` over the groups' producer layers), or of all selected channels / MACs
            (``scope="global"``, one number).
        scope: ``"layer"`` (a ratio per group) or ``"global"`` (the pruner spreads one budget by importance).
        budget: what ``sparsity`` measures: ``"channels"`` or ``"macs"`` (batch-1 MACs of the whole model).
        round_to: every pruned group keeps a multiple of this many channels (1 = exact; 8 suits CPU convolutions),
            as Torch-Pruning's ``round_to``.
        layers: ``fnmatch`` patterns naming the producers whose channel groups may be pruned: Conv/Linear layers,
            recurrent layers (their hidden units), attention modules (their heads; a hand-written attention by its
            ``qkv`` Linear); ``None`` = every group (the groups feeding the model output are never pruned).
        exclude: patterns of producers whose groups are left alone.
        finetune: fine-tuning after the channels are removed (``None`` = prune only).
    """

    kinds = WEIGHT_LAYERS + (nn.RNNBase, nn.MultiheadAttention, PrunedMultiheadAttention, PrunedSelfAttention)
    renamed = {"ratio": "use sparsity (the fraction of channels removed)"}

    sparsity: PerLayer[Sparsity]
    scope: Literal["layer", "global"] = "layer"
    budget: Literal["channels", "macs"] = "channels"
    round_to: PositiveInt = 1
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = FineTune()

    @classmethod
    def plan_details(cls, model: nn.Module, target: Target, rows: list[dict], skipped: dict[str, str]
                     ) -> tuple[list[dict], dict[str, str]]:
        """For :func:`compactnn.plan`: when the model has an ``input_shape``, each row says which units its group
        prunes (channels, hidden units, heads) or that it feeds the output; ops kept whole are listed with their
        reasons. Without ``input_shape`` (the data gives it at run time) the rows stay as they are."""
        shape = getattr(model, "input_shape", None)
        if shape is None:
            return rows, skipped
        try:
            graph = DependencyGraph.build(model, shape)
        except ModelError as err:
            return rows, {**skipped, "<graph>": str(err)}
        units = {"conv": "channels", "linear": "features", "rnn": "hidden units", "heads": "heads"}
        group_of = {p: g for g in graph.groups.values() for p in g.producers}
        by_name = {row["layer"]: row for row in rows}
        for name, layer in graph.layers.items():
            row, group = by_name.get(name), group_of.get(name)
            if row is None or group is None:
                continue
            what = f"{group.size} {units.get(layer.kind, 'channels')}"
            row["settings"] = {**row["settings"], "units": f"{what} (output: kept)" if group.pinned else what}
        return rows, {**skipped, **{k: f"kept whole: {v}" for k, v in graph.kept_whole.items()}}

    def validate(self) -> None:
        check(not isinstance(self.sparsity, Mapping) or (self.scope == "layer" and self.budget == "channels"),
              "a per-layer sparsity mapping needs scope 'layer' and budget 'channels'; give one number otherwise")


def l1_importance(model: nn.Module, graph: DependencyGraph, data: Any = None) -> dict[str, Tensor]:
    """Li et al.'s filter norms: ``{group: sum over the group's producers of sum|W| per output channel}``."""
    modules = dict(model.named_modules())
    per_layer = {name: unit_l1(graph, modules, name) for g in graph.prunable().values() for name in g.producers}
    return {name: graph.group_sum(g, per_layer) for name, g in graph.prunable().items()}


def unit_l1(graph: DependencyGraph, modules: Mapping[str, nn.Module], name: str) -> Tensor:
    """``sum |w|`` per output unit of producer ``name``: a filter's weights, or the layer rule's own ``l1`` (a
    recurrent layer's hidden units, an attention's heads: see :mod:`.units`)."""
    layer = graph.layers[name]
    mod = modules[layer.target]
    rule = layer.rule or rule_for(mod)
    if rule is not None and rule.l1 is not None:
        return rule.l1(mod)
    return mod.weight.detach().abs().flatten(1).sum(1)


def selected_groups(graph: DependencyGraph, target: Target, where: str) -> dict[str, Any]:
    """``{group: sparsity}`` for the prunable groups with a producer among ``target.layers`` (the first such
    producer's value)."""
    chosen: dict[str, Any] = {}
    for name, group in graph.prunable().items():
        for producer in group.producers:
            if producer in target.layers:
                chosen[name] = target.value("sparsity", producer)
                break
    if not chosen:
        raise ModelError(f"{where}: the selected layers feed only the model output; no channel group can be pruned "
                         f"(prunable groups start at: {', '.join(graph.prunable()) or 'none'})")
    return chosen


def keep_top(scores: Mapping[str, Tensor], counts: Mapping[str, int]) -> dict[str, list[int]]:
    """Indices (sorted) of the ``counts[g]`` highest scores of each group ``g``; ties keep the lower index."""
    keep = {}
    for name, n in counts.items():
        order = torch.sort(scores[name].reshape(-1), descending=True, stable=True).indices
        keep[name] = sorted(order[:n].tolist())
    return keep


class MacsModel:
    """Total batch-1 MACs of the model after each group keeps ``counts[g]`` channels, without rebuilding it.

    MACs of a Conv/Linear are proportional to its kept input and output channels (a depthwise conv, and a norm, to
    its kept channels), so the dense per-layer counts of :func:`compactnn.report.count_macs` scale exactly; layers the
    graph does not track keep their MACs. Checked against rebuilding and counting in the tests.
    """

    def __init__(self, model: nn.Module, graph: DependencyGraph) -> None:
        self.graph = graph
        self.modules = dict(model.named_modules())
        self.dense = count_macs(model, graph.input_shape)
        self.roots = {n: graph.root(layer.out_ids) for n, layer in graph.layers.items()}
        self.in_roots = {n: None if layer.in_ids is None else graph.root(layer.in_ids)
                         for n, layer in graph.layers.items()}
        # a module holding units (hidden units, heads) owns the MACs counted below it too
        self.owner: dict[str, str] = {}
        for name, layer in graph.layers.items():
            if layer.kind in ("rnn", "heads"):
                for key in self.dense:
                    if key == layer.target or key.startswith(layer.target + "."):
                        self.owner[key] = name

    def __call__(self, counts: Mapping[str, int]) -> int:
        removed = removed_roots(self.graph, {n: list(range(c)) for n, c in counts.items()})
        total = 0.0
        for key, macs in self.dense.items():
            name = self.owner.get(key, key)
            layer = self.graph.layers.get(name)
            if layer is None or not macs:
                total += macs
                continue
            out = self.roots[name]
            kept_out = sum(int(r) not in removed for r in out)
            ins = self.in_roots[name]
            kept_in = None if ins is None else sum(int(r) not in removed for r in ins)
            if layer.kind == "rnn":
                total += macs * rnn_macs_factor(self.modules[layer.target], kept_in, kept_out)
                continue
            factor = kept_out / max(len(out), 1)
            if ins is not None and layer.kind != "depthwise":
                factor *= kept_in / max(len(ins), 1)
            total += macs * factor
        return int(round(total))


def uniform_counts(model: nn.Module, graph: DependencyGraph, groups: Sequence[str], fraction: float,
                   round_to: int, tol: float = 1e-4) -> dict[str, int]:
    """Kept counts of one uniform ratio over ``groups`` that removes the fraction of MACs closest to ``fraction``."""
    sizes = {n: graph.groups[n].size for n in groups}
    macs = MacsModel(model, graph)
    dense = sum(macs.dense.values())
    lo, hi, best = 0.0, 1.0 - 1e-9, None
    while hi - lo > tol:
        mid = (lo + hi) / 2
        counts = {n: keep_count(s, mid, round_to) for n, s in sizes.items()}
        removed = 1.0 - macs(counts) / dense
        if best is None or abs(removed - fraction) < best[0]:
            best = (abs(removed - fraction), counts)
        lo, hi = (mid, hi) if removed < fraction else (lo, mid)
    return best[1]


def global_counts(model: nn.Module, graph: DependencyGraph, scores: Mapping[str, Tensor], fraction: float,
                  budget: str, round_to: int, iterations: int = 40) -> dict[str, int]:
    """Kept counts per group when one threshold on mean-normalized scores removes ``fraction`` of the selected
    channels (``budget="channels"``) or of the model's MACs (``"macs"``), found by bisection on the threshold."""
    norm = {n: s.double() / max(float(s.double().mean()), 1e-300) for n, s in scores.items()}
    total = sum(s.numel() for s in norm.values())
    macs = MacsModel(model, graph) if budget == "macs" else None
    dense = sum(macs.dense.values()) if macs is not None else None

    def counts_at(t: float) -> dict[str, int]:
        out = {}
        for n, s in norm.items():
            kept = max(1, int((s >= t).sum()))
            out[n] = keep_count(s.numel(), 1.0 - kept / s.numel(), round_to)
        return out

    def removed(counts: Mapping[str, int]) -> float:
        if dense is None:
            return 1.0 - sum(counts.values()) / total
        return 1.0 - macs(counts) / dense

    values = torch.cat([s.reshape(-1) for s in norm.values()])
    lo, hi = float(values.min()), float(values.max()) + 1e-9
    best = (abs(removed(counts_at(lo)) - fraction), counts_at(lo))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        counts = counts_at(mid)
        r = removed(counts)
        best = min(best, (abs(r - fraction), counts), key=lambda b: b[0])
        lo, hi = (mid, hi) if r < fraction else (lo, mid)
    return best[1]


def input_shape_of(model: nn.Module, data: Any, where: str) -> tuple[int, ...]:
    """One example's shape: the data's, else ``model.input_shape``; ModelError if neither is known."""
    shape = getattr(data, "input_shape", None) or getattr(model, "input_shape", None)
    if shape is None:
        raise ModelError(f"{where}: cannot tell the model's input shape; pass data= to compress() or set "
                         "model.input_shape")
    return tuple(int(s) for s in shape)


def prune_structured(model: nn.Module, config: Structured, data: Any, target: Target,
                     importance: Importance) -> nn.Module:
    """Score, choose, remove and fine-tune: the one structured pruner behind every importance measure.

    Args:
        model: the model (pruned in place and returned).
        config: the shared settings (:class:`Structured`).
        data: training data (for importance measures that need it, and the fine-tune).
        target: the layers ``compress`` resolved.
        importance: ``importance(model, graph, data) -> {group: scores}``.
    """
    if config.finetune is not None:
        require_data(data, config.method)
    graph = DependencyGraph.build(model, input_shape_of(model, data, config.method))
    if graph.kept_whole:
        names = list(graph.kept_whole)
        warnings.warn(f"{config.method}: {len(names)} op(s) kept whole, their channels pinned: "
                      f"{', '.join(names[:6])}{' ...' if len(names) > 6 else ''} (first: {graph.kept_whole[names[0]]})",
                      stacklevel=3)
        for name, reason in graph.kept_whole.items():
            target.skipped[name] = f"kept whole: {reason}"
    groups = selected_groups(graph, target, config.method)
    scores = importance(model, graph, data)
    scores = {n: scores[n] for n in groups}
    if config.scope == "global":
        counts = global_counts(model, graph, scores, float(config.sparsity), config.budget, config.round_to)
    elif config.budget == "macs":
        counts = uniform_counts(model, graph, list(groups), float(config.sparsity), config.round_to)
    else:
        counts = {n: keep_count(graph.groups[n].size, s, config.round_to) for n, s in groups.items()}
    prune_channels(model, graph, keep_top(scores, counts))
    if config.finetune is not None:
        run_finetune(model, data, config.finetune, config.method)
    return model


__all__ = ["Structured", "Importance", "l1_importance", "prune_structured", "selected_groups", "keep_top",
           "global_counts", "uniform_counts", "input_shape_of", "MacsModel"]
