"""Weight masks while training: pruned weights stay exactly zero, then the masks are baked away.

A mask is a :mod:`torch.nn.utils.parametrize` parametrization, ``weight = where(mask, original, 0)``. Compared with
re-zeroing after every step, it keeps pruned weights at zero *inside* every forward pass (also the first one, and in
any hook or evaluation during training), and their gradient is zero, so momentum cannot push them back in between.
:func:`bake_masks` removes the parametrizations: the layer is a plain ``nn.Linear``/``nn.Conv2d`` again, with zeros
in its weight and no hooks, so it packs and exports as an ordinary module. ``where`` writes ``+0.0``, never ``-0.0``.

Typical use::

    with masked(layers, masks) as handle:       # layers: {name: module}, masks: {name: bool tensor}
        fit(model, data, step_hooks=[...])      # a hook may call handle.update(new_masks)
    # here every layer is plain again, its pruned weights exactly zero
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Mapping

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..layers import slot_of, strip_parametrizations


class WeightMask(nn.Module):
    """Parametrization ``weight = where(mask, original, 0)``; ``mask`` is a bool buffer of the weight's shape."""

    def __init__(self, mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool).clone())

    def forward(self, weight: Tensor) -> Tensor:
        return torch.where(self.mask, weight, torch.zeros((), dtype=weight.dtype, device=weight.device))


def _mask_of(layer) -> WeightMask | None:
    module, name = slot_of(layer)
    if not parametrize.is_parametrized(module, name):
        return None
    for p in getattr(module.parametrizations, name):
        if isinstance(p, WeightMask):
            return p
    return None


def set_mask(module: nn.Module, mask: Tensor) -> None:
    """Mask ``module.weight`` with ``mask`` (True = keep), registering the parametrization or updating it.

    Args:
        module: a layer with a ``weight`` (Linear, Conv...), or a :class:`compactnn.layers.WeightSlot`.
        mask: bool tensor of the weight's shape.
    """
    if tuple(mask.shape) != tuple(module.weight.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from weight shape {tuple(module.weight.shape)}")
    existing = _mask_of(module)
    if existing is None:
        owner, name = slot_of(module)
        parametrize.register_parametrization(owner, name, WeightMask(mask.to(module.weight.device)))
    else:
        existing.mask.copy_(mask)


def bake_masks(layers: Mapping[str, nn.Module]) -> None:
    """Write the masked weights into plain parameters and remove every weight parametrization from ``layers``."""
    for module in layers.values():
        strip_parametrizations(module, "weight")


class MaskHandle:
    """What :func:`masked` yields: the masked layers and a way to change their masks."""

    def __init__(self, layers: Mapping[str, nn.Module]):
        self.layers = dict(layers)

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Replace the masks of the named layers (True = keep)."""
        for name, mask in masks.items():
            set_mask(self.layers[name], mask)

    def masks(self) -> dict[str, Tensor]:
        """The current masks, ``{name: bool tensor}`` (all-True for a layer without a mask)."""
        out = {}
        for name, module in self.layers.items():
            p = _mask_of(module)
            out[name] = p.mask.clone() if p is not None else torch.ones_like(module.weight, dtype=torch.bool)
        return out


@contextlib.contextmanager
def masked(layers: Mapping[str, nn.Module], masks: Mapping[str, Tensor]) -> Iterator[MaskHandle]:
    """Keep ``layers`` masked with ``masks`` inside the block; bake the masks into plain layers on exit.

    Args:
        layers: ``{name: module}`` to mask (e.g. from :func:`compactnn.layers.select_layers`).
        masks: ``{name: bool tensor}``, True = keep; layers without an entry start unmasked (all True).

    The masks are baked on exit even if the block raises, so the model is never left parametrized.
    """
    handle = MaskHandle(layers)
    try:
        for name, module in handle.layers.items():
            set_mask(module, masks.get(name, torch.ones_like(module.weight, dtype=torch.bool)))
        yield handle
    finally:
        bake_masks(handle.layers)


def sparsity(layers: Mapping[str, nn.Module]) -> float:
    """Fraction of exact zeros over the weights of ``layers`` (the masked weights while masks are set)."""
    total = sum(m.weight.numel() for m in layers.values())
    zeros = sum(int((m.weight.detach() == 0).sum()) for m in layers.values())
    return zeros / total if total else 0.0


__all__ = ["WeightMask", "set_mask", "bake_masks", "masked", "MaskHandle", "sparsity"]
