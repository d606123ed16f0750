"""One torch.fx tracer and one shape pass for every graph tool (structured pruning, QAT, MAC counting).

Leaves (kept whole, not traced through): compactnn's marker modules, torch's own leaf modules, any module that owns
parameters directly (a Conv, a user's custom weight layer), and classes registered with :func:`register_leaf`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import fx, nn

from ..errors import ModelError
from .markers import Add, Concat

_LEAVES: list[type] = [Add, Concat]


def register_leaf(cls: type) -> type:
    """Keep modules of class ``cls`` whole in every trace (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_leaf needs an nn.Module subclass, got {cls!r}")
    if cls not in _LEAVES:
        _LEAVES.append(cls)
    return cls


class Tracer(fx.Tracer):
    """The torch.fx tracer with compactnn's leaf rule (see the module docstring); it records each node's source
    line (:func:`source_line`)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, tuple(_LEAVES)) or super().is_leaf_module(m, qualname):
            return True
        return any(True for _ in m.parameters(recurse=False))


def source_line(node: fx.Node) -> str:
    """Where ``node`` comes from in the model's code, as ``"file.py:12: return x * s"`` ("" when unknown)."""
    import os
    import re

    torch_dir = os.path.dirname(torch.__file__)
    found = [f for f in re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*(.*)', node.stack_trace or "")
             if not f[0].startswith(torch_dir)]
    if not found:
        return ""
    path, line, code = found[-1]
    return f"{os.path.basename(path)}:{line}: {code.strip()[:80]}"


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (or its class name)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def trace(model: nn.Module, what: str = "this method") -> fx.GraphModule:
    """Trace ``model`` with :class:`Tracer`; a ModelError of one line if torch.fx cannot.

    Args:
        model: the module.
        what: the tool that needs the trace, for the message.
    """
    try:
        graph = Tracer().trace(model)
    except Exception as err:  # noqa: BLE001 - fx raises many kinds; report one line
        raise ModelError(f"cannot trace {type(model).__name__} with torch.fx ({first_line(err)}); {what} needs a "
                         "traceable model (no data-dependent control flow in forward)") from None
    return fx.GraphModule(model, graph)


class _Shapes(fx.Interpreter):
    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        n.meta["shape"] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        return result


def record_shapes(gm: fx.GraphModule, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> None:
    """Dry-run ``gm`` on zeros of ``(1, *input_shape)`` in eval mode; every node's ``meta["shape"]`` gets its
    output shape (None for non-tensors).

    Raises:
        ModelError: the forward pass fails on that input (one line, naming the shape).
    """
    from .modules import eval_mode

    param = next(iter(gm.parameters()), None)
    x = torch.zeros((1, *input_shape), dtype=dtype, device=param.device if param is not None else None)
    try:
        with eval_mode(gm), torch.no_grad():
            _Shapes(gm).run(x)
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"dry run of the model on input {tuple(input_shape)} failed ({first_line(err)}); "
                         "pass the input_shape the model was built for") from None
