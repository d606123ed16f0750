"""Small module utilities shared by every method: find and replace a submodule, eval mode that restores each
module's own flag, and the ``int or pair`` normalization of kernel/stride arguments."""

from __future__ import annotations

import contextlib
import numbers
from typing import Any, Iterator

from torch import nn

from ..errors import ModelError


def get_module(model: nn.Module, path: str) -> nn.Module:
    """The submodule at dotted ``path`` (``""`` is ``model`` itself); ModelError naming the missing part."""
    module = model
    for part in path.split(".") if path else ():
        child = module._modules.get(part)
        if child is None:
            raise ModelError(f"{type(model).__name__} has no module at {path!r} (no {part!r} in "
                             f"{type(module).__name__})")
        module = child
    return module


def set_module(model: nn.Module, target: str | nn.Module, new: nn.Module) -> None:
    """Replace a submodule with ``new``.

    Args:
        model: the root module.
        target: the dotted path of the submodule, or the submodule object itself (then every place it appears,
            shared modules included, gets ``new``).
        new: the replacement.
    """
    if isinstance(target, str):
        if not target:
            raise ModelError("cannot replace the root module; replace the model itself")
        parent_path, _, name = target.rpartition(".")
        parent = get_module(model, parent_path)
        if name not in parent._modules:
            raise ModelError(f"{type(model).__name__} has no module at {target!r}")
        parent._modules[name] = new
        return
    found = False
    for parent in model.modules():
        for name, child in list(parent._modules.items()):
            if child is target:
                parent._modules[name] = new
                found = True
    if not found:
        raise ModelError(f"{type(target).__name__} is not a submodule of {type(model).__name__}")


@contextlib.contextmanager
def restore_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Give every submodule its own train/eval flag back on exit, whatever the block did."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block and restore every submodule's own flag after."""
    with restore_modes(model):
        model.eval()
        yield model


def pair(value: Any, name: str = "value", low: int | None = None) -> tuple[int, int]:
    """``(a, b)`` from an int or a 2-sequence of ints (kernel sizes, strides, paddings); NumPy integers count.

    Args:
        value: an int or a pair.
        name: what it is, for the error message.
        low: the smallest allowed entry (``None``: no bound).
    """
    def is_int(v: Any) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    vals = (value, value) if is_int(value) else tuple(value) if isinstance(value, (list, tuple)) else None
    if vals is None or len(vals) != 2 or not all(is_int(v) for v in vals):
        raise ModelError(f"{name} must be an int or a pair of ints, got {value!r}")
    if low is not None and min(vals) < low:
        raise ModelError(f"{name} must be >= {low}, got {value!r}")
    return int(vals[0]), int(vals[1])


def weight_read_by_parent(model: nn.Module, path: str) -> str | None:
    """Why replacing submodule ``path`` by a module without a plain ``weight`` would break its parent, or None.

    ``nn.MultiheadAttention`` reads ``out_proj.weight`` itself instead of calling ``out_proj``, and
    ``nn.TransformerEncoderLayer`` reads ``linear1.weight`` for its fused path; a user module may do the same
    (``F.linear(x, self.proj.weight)``). Found by the class, or by ``<child>.weight`` in the parent's
    ``forward`` source (when Python can show it).
    """
    import inspect

    parent_path, _, child = path.rpartition(".")
    parent = get_module(model, parent_path) if parent_path else model
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its weight directly instead of calling it"
    try:
        source = inspect.getsource(type(parent).forward)
    except (OSError, TypeError):
        return None
    if f"{child}.weight" in source:
        return f"{type(parent).__name__}.forward reads {child}.weight directly"
    return None
