"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017), removed physically.

Each filter (output channel of a Conv, or output neuron of a hidden Linear) is ranked by ``sum |W|`` over its
weights; the smallest go at a per-layer ratio and :func:`.surgery.prune_channels` removes them, then fine-tuning.
Where residual adds tie several layers' channels together (a group), a channel's score is the sum of its
producers' filter norms (our choice, as Torch-Pruning's group L1; Li et al. left those layers unpruned).

:func:`l1_ratio_for_macs` picks the uniform ratio that removes the same MACs as another result (e.g. NISP's), for
comparisons "at the same FLOPs".
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from ..api import register_method
from ..config import FineTune, MethodConfig
from ..errors import ModelError
from ..layers import require_data, run_finetune
from .graph import DependencyGraph
from .surgery import check_ratios, check_round_to, keep_by_scores, prune_channels, ratio_for_macs, resolve_ratios


@dataclasses.dataclass(frozen=True)
class L1Filter(MethodConfig):
    """Prune the filters of smallest L1 norm and remove them physically.

    Args:
        ratio: fraction of filters removed in every prunable group (a float in [0, 1)), or ``{layer pattern:
            ratio}`` (fnmatch over Conv/Linear names; groups matched by no key are not pruned).
        round_to: every pruned group keeps a multiple of this many channels (1 = exact ratio; 8 suits CPU
            convolutions), as Torch-Pruning's ``round_to``.
        finetune: fine-tuning after the filters are removed (``None`` = prune only); its lr defaults to 0.01.
    """

    method = "l1-filter"
    description = "L1-norm filter pruning (Li et al. 2017): smallest-norm filters removed for real, fine-tuned"

    ratio: float | dict[str, float]
    round_to: int = 1
    finetune: FineTune | None = FineTune()

    def __post_init__(self) -> None:
        check_ratios(self.ratio, "l1-filter")
        check_round_to(self.round_to, "l1-filter")


def filter_norms(model: nn.Module, graph: DependencyGraph) -> dict[str, Tensor]:
    """``{group name: summed filter L1 norms over group.roots}`` for every prunable group of ``graph``."""
    modules = dict(model.named_modules())
    per_layer = {name: modules[name].weight.detach().abs().flatten(1).sum(1)
                 for g in graph.prunable().values() for name in g.producers}
    return {name: graph.group_sum(g, per_layer) for name, g in graph.prunable().items()}


def l1_filter_prune(model: nn.Module, ratio: float | Mapping[str, float],
                    input_shape: Sequence[int] | None = None, round_to: int = 1) -> nn.Module:
    """Remove the smallest-L1 filters of ``model`` in place at ``ratio`` (see :class:`L1Filter`); returns it."""
    graph = DependencyGraph.build(model, input_shape)
    ratios = resolve_ratios(graph, ratio, "l1-filter")
    return prune_channels(model, graph, keep_by_scores(filter_norms(model, graph), ratios, round_to))


def l1_ratio_for_macs(model: nn.Module, target_macs: int, input_shape: Sequence[int] | None = None,
                      round_to: int = 1) -> float:
    """The uniform L1 ratio whose pruned model has MACs closest to ``target_macs`` (e.g. a NISP model's MACs).

    Args:
        model: the dense model.
        target_macs: total MACs (batch 1, :func:`compactnn.report.count_macs`) to match.
        input_shape: one example's shape; ``None`` uses ``model.input_shape``.
        round_to: kept counts snap to multiples of this, as :class:`L1Filter` with the same ``round_to`` does.
    """
    return ratio_for_macs(model, target_macs, input_shape, round_to=round_to)


def _input_shape(model: nn.Module, data: Any) -> Sequence[int]:
    if data is not None:
        return data.input_shape
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ModelError("l1-filter: the model has no input_shape; pass data=<DataBundle> to compress()")
    return shape


@register_method(L1Filter)
def l1_filter(model: nn.Module, config: L1Filter, data: Any = None) -> nn.Module:
    """Prune ``model`` in place as ``config`` says, fine-tune if asked, and return the smaller model."""
    if config.finetune is not None:
        require_data(data, config.method)
    l1_filter_prune(model, config.ratio, _input_shape(model, data), config.round_to)
    if config.finetune is not None:
        run_finetune(model, data, config.finetune, config.method)
    return model


__all__ = ["L1Filter", "l1_filter", "filter_norms", "l1_filter_prune", "l1_ratio_for_macs"]
