"""A dry run: which layers each method would touch, at what setting, and what it would skip and why.

``cn.plan(model, config)`` (or a list of configs) resolves ``layers``, ``exclude`` and the per-layer values exactly
as :func:`compactnn.compress` does, without copying, training or changing the model. ``compactnn plan recipe.yaml``
does it for a recipe's stages on the recipe's (untrained) model.

What a plan cannot know: a method that inspects a layer's shape while it runs may still leave it alone then (for
example tensor-ring on a convolution it cannot factorize); that is said in a warning and the report at run time.
Every stage is planned on the model as given, not on the output of the stages before it.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Iterable

from torch import nn

from .config import MethodConfig, per_layer_fields, to_dict
from .layers import resolve, slot_of


@dataclasses.dataclass
class StagePlan:
    """One method's plan: ``rows`` (one per layer touched) and ``skipped`` (``{name: reason}``)."""

    method: str
    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    skipped: dict[str, str]
    whole_model: bool = False


@dataclasses.dataclass
class Plan:
    """What :func:`plan` returns; ``str(plan)`` is a readable table, :meth:`to_dict` the JSON form."""

    stages: list[StagePlan]

    def to_dict(self) -> dict[str, Any]:
        return {"stages": [dataclasses.asdict(s) for s in self.stages]}

    def __str__(self) -> str:
        lines = []
        for i, stage in enumerate(self.stages):
            shown = {k: _set(v) for k, v in stage.settings.items()
                     if k not in ("method", "layers", "exclude") and v is not None}
            lines.append(f"stage {i}: {stage.method} " + ", ".join(f"{k}={v}" for k, v in shown.items()))
            if stage.whole_model:
                lines.append("  the whole model (this method does not pick layers)")
            for row in stage.rows:
                settings = ", ".join(f"{k}={v}" for k, v in row["settings"].items())
                lines.append(f"  {row['layer']:<32} {row['kind']:<22} {row['params']:>10,} params"
                             + (f"  {settings}" if settings else ""))
            for name, reason in stage.skipped.items():
                lines.append(f"  skip {name}: {reason}")
        return "\n".join(lines)


def _set(value: Any) -> Any:
    """``value`` without its None entries (a FineTune's unset fields), for display."""
    return {k: _set(v) for k, v in value.items() if v is not None} if isinstance(value, dict) else value


def plan(model: nn.Module, configs: MethodConfig | Iterable[MethodConfig]) -> Plan:
    """The dry run of ``configs`` on ``model`` (see the module docstring); errors are those ``compress`` would
    raise before any work (a pattern that matches nothing, a per-layer key naming no layer...)."""
    if isinstance(configs, MethodConfig):
        configs = [configs]
    stages = []
    for config in configs:
        cls = type(config)
        if cls.kinds is None:
            stages.append(StagePlan(cls.method, to_dict(config), [], {}, whole_model=True))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the skipped weights are part of the plan itself
            target = resolve(model, config)
        rows = []
        for name, layer in target.layers.items():
            owner, param = slot_of(layer)
            weight = getattr(owner, param, None)  # an LSTM or an attention module has no single weight
            params = int(weight.numel()) if weight is not None else sum(p.numel() for p in owner.parameters())
            settings = {f: target.value(f, name) for f in per_layer_fields(cls)}
            rows.append({"layer": name, "kind": type(owner).__name__ + ("" if param == "weight" else f".{param}"),
                         "params": params, "settings": settings})
        skipped = dict(target.skipped)
        details = getattr(cls, "plan_details", None)  # a method that knows more about what it touches
        if details is not None:
            rows, skipped = details(model, target, rows, skipped)
        stages.append(StagePlan(cls.method, to_dict(config), rows, skipped))
    return Plan(stages)


__all__ = ["plan", "Plan", "StagePlan"]
