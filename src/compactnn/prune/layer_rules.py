"""The table of layer types structured pruning can shrink, with a public hook for a user's own layer types.

Each rule says how a layer's channels relate (its ``kind``) and how to rebuild it with fewer channels:

- ``"conv"`` / ``"linear"``: a producer: its output channels (dim 0 of ``weight``) are new channels, its input
  channels (dim 1) are the incoming tensor's;
- ``"depthwise"``: output channel ``i`` is input channel ``i`` (a depthwise conv);
- ``"norm"``: per-channel parameters on the incoming channels (BatchNorm);
- ``"rnn"`` / ``"heads"``: recurrent hidden units / whole attention heads inside one module (:mod:`.units`).

``rebuild(module, keep_in, keep_out)`` returns the smaller module (``keep_in`` is None for norms). A user's layer
with a ``(out, in, ...)`` weight registers with :func:`register_layer`; rules registered later win over earlier
ones for the classes they cover, so a subclass can get its own rule.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch
from torch import Tensor, nn

Rebuild = Callable[[nn.Module, "Tensor | None", Tensor], nn.Module]
KINDS = ("conv", "linear", "depthwise", "norm", "rnn", "heads")
Zero = Callable[[nn.Module, "list[int]", "list[int]"], None]


@dataclasses.dataclass(frozen=True)
class LayerRule:
    """How structured pruning sees and rebuilds one layer type (see the module docstring)."""

    cls: type
    kind: Callable[[nn.Module], str]
    rebuild: Rebuild
    zero: "Zero | None" = None
    l1: "Callable[[nn.Module], Tensor] | None" = None


_RULES: list[LayerRule] = []


def register_layer(cls: type, kind: str | Callable[[nn.Module], str], rebuild: Rebuild, *, zero: Zero | None = None,
                   l1: Callable[[nn.Module], Tensor] | None = None) -> None:
    """Let structured pruning shrink modules of class ``cls``.

    Args:
        cls: an ``nn.Module`` subclass.
        kind: ``"conv"``, ``"linear"``, ``"depthwise"`` or ``"norm"``, or a function of the module returning one
            (or raising :class:`compactnn.errors.ModelError` for a configuration it cannot prune).
        rebuild: ``rebuild(module, keep_in, keep_out) -> new module`` with only those channels (index tensors).
        zero: ``zero(module, gone_in, gone_out)``: the masked reference (removed units' weights zeroed in place);
            needed for a layer whose weight is not one ``(out, in, ...)`` tensor (``"rnn"``, ``"heads"``).
        l1: ``l1(module) -> one score per output unit`` for ``l1-filter`` (default: ``sum |weight|`` per row).
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_layer needs an nn.Module subclass, got {cls!r}")
    if isinstance(kind, str):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        fixed = kind
        kind = lambda m: fixed  # noqa: E731
    _RULES.append(LayerRule(cls, kind, rebuild, zero, l1))


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule for ``module`` (the latest registered that covers its class), or None."""
    for rule in reversed(_RULES):
        if isinstance(module, rule.cls):
            return rule
    return None


def _device(mod: nn.Module) -> dict:
    return dict(device=next(mod.parameters(), torch.empty(0)).device)


def copy_into(dst: Tensor | None, src: Tensor | None) -> None:
    """Copy ``src`` into ``dst`` without autograd (both may be None), keeping ``src``'s requires_grad."""
    if dst is not None and src is not None:
        with torch.no_grad():
            dst.copy_(src)
        if isinstance(dst, nn.Parameter):
            dst.requires_grad_(src.requires_grad)


def _conv_kind(mod: nn.Module) -> str:
    from ..errors import ModelError

    if mod.groups == 1:
        return "conv"
    if mod.groups == mod.in_channels == mod.out_channels:
        return "depthwise"
    raise ModelError(f"structured pruning does not support a grouped {type(mod).__name__} with groups={mod.groups} (only "
                     "depthwise: groups == in_channels == out_channels); exclude the layer or prune other layers")


def _rebuild_conv(mod: nn.Module, keep_in: Tensor, keep_out: Tensor) -> nn.Module:
    depthwise = mod.groups > 1
    cin, cout = len(keep_in), len(keep_out)
    new = type(mod)(cin, cout, mod.kernel_size, stride=mod.stride, padding=mod.padding, dilation=mod.dilation,
                    groups=cin if depthwise else 1, bias=mod.bias is not None, padding_mode=mod.padding_mode,
                    dtype=mod.weight.dtype, **_device(mod))
    w = mod.weight[keep_out]
    copy_into(new.weight, w if depthwise else w[:, keep_in])
    copy_into(new.bias, None if mod.bias is None else mod.bias[keep_out])
    return new


def _rebuild_linear(mod: nn.Linear, keep_in: Tensor, keep_out: Tensor) -> nn.Module:
    new = nn.Linear(len(keep_in), len(keep_out), bias=mod.bias is not None, dtype=mod.weight.dtype, **_device(mod))
    copy_into(new.weight, mod.weight[keep_out][:, keep_in])
    copy_into(new.bias, None if mod.bias is None else mod.bias[keep_out])
    return new


def _rebuild_norm(mod: nn.Module, keep_in: None, keep_out: Tensor) -> nn.Module:
    new = type(mod)(len(keep_out), eps=mod.eps, momentum=mod.momentum, affine=mod.affine,
                    track_running_stats=mod.track_running_stats, **_device(mod))
    if mod.affine:
        copy_into(new.weight, mod.weight[keep_out])
        copy_into(new.bias, mod.bias[keep_out])
    if mod.track_running_stats and mod.running_mean is not None:
        copy_into(new.running_mean, mod.running_mean[keep_out])
        copy_into(new.running_var, mod.running_var[keep_out])
        copy_into(new.num_batches_tracked, mod.num_batches_tracked)
    return new


register_layer(nn.Linear, "linear", _rebuild_linear)
for _cls in (nn.Conv1d, nn.Conv2d):
    register_layer(_cls, _conv_kind, _rebuild_conv)
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_layer(_cls, "norm", _rebuild_norm)

__all__ = ["LayerRule", "register_layer", "rule_for", "copy_into", "KINDS"]
