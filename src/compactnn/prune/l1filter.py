"""L1-norm filter pruning (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017), removed physically.

Each filter (output channel of a Conv, or output neuron of a hidden Linear) is ranked by ``sum |W|`` over its
weights (:func:`.structured.l1_importance`); the smallest go and :func:`.structured.prune_structured` removes them,
then fine-tunes. Where residual adds tie several layers' channels together (a group), a channel's score is the sum of
its producers' filter norms (our choice, as Torch-Pruning's group L1; Li et al. left those layers unpruned).
``L1Filter(sparsity=s, budget="macs")`` removes the same MACs as another result, for comparisons at equal FLOPs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ..api import register_method
from ..layers import Target
from .structured import Structured, l1_importance, prune_structured


@dataclasses.dataclass(frozen=True)
class L1Filter(Structured):
    """Prune the filters of smallest L1 norm and remove them physically (the settings of :class:`Structured`)."""

    method = "l1-filter"
    description = "L1-norm filter pruning (Li et al. 2017): smallest-norm filters removed for real, fine-tuned"
    example = {"sparsity": 0.5, "finetune": {"epochs": 1}}


@register_method(L1Filter)
def l1_filter(model: nn.Module, config: L1Filter, data: Any, target: Target) -> nn.Module:
    """Prune ``model`` in place as ``config`` says, fine-tune if asked, and return the smaller model."""
    return prune_structured(model, config, data, target, l1_importance)


__all__ = ["L1Filter", "l1_filter"]
