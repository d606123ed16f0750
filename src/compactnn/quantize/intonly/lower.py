"""Graph patterns of the more integer ops (:mod:`.ir_more`): which torch.fx nodes are data movement, lookup tables
or products, the QAT modules that observe the output range of a table or a product, and the lowering of
data-movement nodes to IR ops at conversion.

Recognised (nn modules, ``torch``/``F`` functions and tensor methods):

- **tables** (``lut``): ``Sigmoid``/``sigmoid``, ``Tanh``/``tanh``, ``Hardswish``, ``Hardsigmoid``, ``SiLU``/``silu``,
  ``GELU``/``gelu`` (both approximations), ``LeakyReLU``/``leaky_relu``, a ReLU/ReLU6 that cannot be fused into the
  layer before it, and a product or quotient by a Python number (``x * 0.5``);
- **products** (``mul``): ``a * b``, ``torch.mul``, ``a.mul(b)`` of two tensors (an SE gate times its features);
- **data movement**: ``permute``/``transpose`` (methods and functions), ``view``/``reshape``/``flatten``/
  ``squeeze``/``unsqueeze``/``unflatten`` (and ``nn.Flatten``/``nn.Unflatten``), slicing ``x[:, a:b]``,
  ``x[..., ::2]``, integer indices, ``narrow``, ``chunk``/``split`` (with ``getitem`` on the parts), a constant
  zero ``F.pad``, ``contiguous``/``clone``, and ``mean`` over H and W of an image (a global average pool).

The batch dimension must pass through every data movement untouched (the IR's shapes are per sample); the converter
checks it on a batch of two.
"""

from __future__ import annotations

import math
import operator
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from compactnn.errors import ModelError

from . import ir
from .fakequant import ActQuant

__all__ = ["QLut", "QMul", "kind_of", "lut_from_node", "lut_table", "lower_move"]

LUT_MODULES = ((nn.Sigmoid, "sigmoid"), (nn.Tanh, "tanh"), (nn.Hardswish, "hardswish"),
               (nn.Hardsigmoid, "hardsigmoid"), (nn.SiLU, "silu"), (nn.GELU, "gelu"), (nn.LeakyReLU, "leaky_relu"))
LUT_FUNCTIONS = {torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh",
                 F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.silu: "silu", F.gelu: "gelu",
                 F.leaky_relu: "leaky_relu"}
LUT_METHODS = {"sigmoid": "sigmoid", "tanh": "tanh"}
MUL_FUNCTIONS = (operator.mul, torch.mul, operator.truediv, torch.div)
MOVE_FUNCTIONS = (torch.permute, torch.transpose, torch.reshape, torch.squeeze, torch.unsqueeze, torch.narrow,
                  operator.getitem, F.pad, torch.chunk, torch.split, torch.mean, torch.swapaxes)
MOVE_METHODS = ("permute", "transpose", "squeeze", "unsqueeze", "narrow", "contiguous", "clone", "unflatten", "chunk",
                "split", "mean", "swapaxes")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def kind_of(node: fx.Node, modules: dict) -> str | None:
    """``"lut"``, ``"mul"``, ``"move"`` for the patterns of the module docstring, else None."""
    if node.op == "call_module":
        m = modules[node.target]
        if any(isinstance(m, cls) for cls, _ in LUT_MODULES):
            return "lut"
        return "move" if isinstance(m, nn.Unflatten) else None
    if node.op == "call_function":
        t = node.target
        if t in LUT_FUNCTIONS:
            return "lut"
        if t in MUL_FUNCTIONS and len(node.args) == 2 and not node.kwargs:
            a, b = node.args
            if isinstance(a, fx.Node) and isinstance(b, fx.Node) and t in (operator.mul, torch.mul):
                return "mul"
            if isinstance(a, fx.Node) and _is_number(b) and b != 0:
                return "lut"
            if t in (operator.mul, torch.mul) and isinstance(b, fx.Node) and _is_number(a):
                return "lut"
        return "move" if t in MOVE_FUNCTIONS else None
    if node.op == "call_method":
        t = node.target
        if t in LUT_METHODS:
            return "lut"
        if t in ("mul", "div") and len(node.args) == 2 and not node.kwargs:
            b = node.args[1]
            if t == "mul" and isinstance(b, fx.Node):
                return "mul"
            if _is_number(b) and b != 0:
                return "lut"
        return "move" if t in MOVE_METHODS else None
    return None


# --------------------------------------------------------------------------------------------------- QAT modules


class QLut(nn.Module):
    """An elementwise float function with a fake-quantized output; at conversion its 256-entry code table.

    Args:
        fn: the float function (a tensor in, a tensor of the same shape out; evaluated in float64 at conversion).
        function: its name (one of :data:`.ir_more.LUT_FUNCTIONS`).
        ema_decay: output observer's EMA decay.
        act_delay: training steps before the output is fake-quantized.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], function: str, ema_decay: float = 0.999,
                 act_delay: int = 0) -> None:
        super().__init__()
        self.fn, self.function = fn, function
        self.out_quant = ActQuant(ema_decay, act_delay)

    def forward(self, x: Tensor) -> Tensor:
        return self.out_quant(self.fn(x))

    def extra_repr(self) -> str:
        return f"function={self.function}"


class QMul(nn.Module):
    """Elementwise product (with a fused ReLU/ReLU6) and a fake-quantized output; TFLite's quantized Mul at
    conversion."""

    def __init__(self, activation: str = "none", ema_decay: float = 0.999, act_delay: int = 0) -> None:
        super().__init__()
        self.activation = activation
        self.out_quant = ActQuant(ema_decay, act_delay)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        y = a * b
        y = F.relu(y) if self.activation == "relu" else F.relu6(y) if self.activation == "relu6" else y
        return self.out_quant(y)


class _Scale(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = float(c)

    def forward(self, x: Tensor) -> Tensor:
        return x * self.c


def lut_from_node(node: fx.Node, modules: dict) -> tuple[Callable[[Tensor], Tensor], str, fx.Node]:
    """``(float function, its name, the tensor input node)`` of a table node (see :func:`kind_of`) or a lone
    ReLU/ReLU6."""
    x = node.args[0] if node.args else None
    if node.op == "call_module":
        m = modules[node.target]
        name = next(n for cls, n in LUT_MODULES + ((nn.ReLU6, "relu6"), (nn.ReLU, "relu")) if isinstance(m, cls))
        if name == "gelu" and getattr(m, "approximate", "none") == "tanh":
            name = "gelu_tanh"
        return m, name, x
    t = node.target
    if node.op == "call_method" and t in LUT_METHODS:
        return {"sigmoid": torch.sigmoid, "tanh": torch.tanh}[LUT_METHODS[t]], LUT_METHODS[t], x
    if t in (F.relu, torch.relu, "relu"):
        return F.relu, "relu", x
    if t is F.relu6:
        return F.relu6, "relu6", x
    if t in LUT_FUNCTIONS:
        name = LUT_FUNCTIONS[t]
        extra = dict(zip(("negative_slope",) if name == "leaky_relu" else ("approximate",) if name == "gelu" else (),
                         node.args[1:]))
        extra.update({k: v for k, v in node.kwargs.items() if k in ("negative_slope", "approximate")})
        if name == "leaky_relu":
            slope = float(extra.get("negative_slope", 0.01))
            return (lambda v: F.leaky_relu(v, slope)), name, x
        if name == "gelu":
            approx = extra.get("approximate", "none")
            return (lambda v: F.gelu(v, approximate=approx)), "gelu_tanh" if approx == "tanh" else "gelu", x
        return t, name, x
    a, b = node.args  # a product / quotient by a number
    if isinstance(a, fx.Node):
        c = float(b) if t in (operator.mul, torch.mul, "mul") else 1.0 / float(b)
        return _Scale(c), "scale", a
    return _Scale(float(a)), "scale", b


@torch.no_grad()
def lut_table(fn: Callable[[Tensor], Tensor], s_in: float, z_in: int, s_out: float, z_out: int) -> np.ndarray:
    """``table[q] = clamp(round(f(S_in·(q − Z_in)) / S_out) + Z_out, 0, 255)``: ``f`` in float64, rounding half away
    from zero (as the input quantizer)."""
    from .qparams import round_half_away

    x = torch.arange(256, dtype=torch.float64).sub_(z_in).mul_(s_in)
    y = fn(x)
    if not isinstance(y, Tensor) or y.shape != x.shape:
        raise ModelError("a lookup-table function must map a tensor to a tensor of the same shape")
    y = y.double().numpy()
    if not np.all(np.isfinite(y)):
        raise ModelError("a lookup-table function gave a non-finite value on the input's code range")
    return np.clip(round_half_away(y / s_out) + z_out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------- lowering


def _dim(d, rank: int, where: str) -> int:
    if not isinstance(d, int) or isinstance(d, bool) or not -rank <= d < rank:
        raise ModelError(f"{where}: dimension {d!r} is not a constant of a rank-{rank} tensor")
    return d % rank


def _index_slices(idx, shape: tuple, where: str) -> list[tuple[int, int, int, int]]:
    """``[(axis, start, stop, step)]`` of a getitem index on a tensor of per-sample ``shape``."""
    idx = idx if isinstance(idx, tuple) else (idx,)
    rank = 1 + len(shape)
    real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    if idx.count(Ellipsis) > 1 or real > rank:
        raise ModelError(f"{where}: index {idx!r} does not fit a rank-{rank} tensor")
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        idx = idx[:k] + (slice(None),) * (rank - real) + idx[k + 1:]
    out, dim = [], 0
    for it in idx:
        if it is None:
            continue
        if dim == 0:
            if it != slice(None):
                raise ModelError(f"{where}: indexes the batch dimension; the integer model keeps whole samples")
        elif isinstance(it, slice):
            for v in (it.start, it.stop, it.step):
                if v is not None and (not isinstance(v, int) or isinstance(v, bool)):
                    raise ModelError(f"{where}: slice bounds must be constants, got {it!r}")
            size = shape[dim - 1]
            start, stop, step = it.indices(size)
            if step < 1:
                raise ModelError(f"{where}: negative slice steps are not supported")
            if len(range(start, stop, step)) < 1:
                raise ModelError(f"{where}: the slice {it!r} of a dimension of size {size} is empty")
            if (start, stop, step) != (0, size, 1):
                out.append((dim, start, min(stop, size), step))
        elif isinstance(it, int) and not isinstance(it, bool):
            i = _dim(it, shape[dim - 1], where)
            out.append((dim, i, i + 1, 1))
        else:
            raise ModelError(f"{where}: index {it!r} is not supported (constant slices and integers only)")
        dim += 1
    return out


def lower_move(node: fx.Node, modules: dict, x: str, in_shape: tuple, out_shape, emit: Callable, where: str):
    """Lower a data-movement node reading value ``x`` (per-sample ``in_shape``) to IR ops; ``emit(op_type,
    **fields)`` appends one op reading the last value and returns its output value. Returns the node's value (or,
    for chunk/split, the parts as ``("parts", x, axis, [(start, stop)])`` for a later getitem)."""
    t = node.target
    rank = 1 + len(in_shape)
    args = list(node.args[1:])
    kw = dict(node.kwargs)

    def reshape_to(v: str, cur: tuple) -> str:
        tgt = tuple(out_shape)
        if cur == tgt:
            return v
        if len(cur) == 3 and len(tgt) == 1:
            return emit(ir.Flatten, v)  # the IR's flatten (the native engine fuses it with its producer's layout)
        return emit(ir.Reshape, v, shape=tgt)

    name = t if node.op == "call_method" else getattr(t, "__name__", "")
    if node.op == "call_module" or name in ("reshape", "view", "flatten", "squeeze", "unsqueeze", "unflatten"):
        return reshape_to(x, tuple(in_shape))
    if name in ("contiguous", "clone"):
        return x
    if name in ("permute",):
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args or kw.get("dims", ())
        perm = tuple(_dim(d, rank, where) for d in dims)
        if perm[:1] != (0,) or sorted(perm) != list(range(rank)):
            raise ModelError(f"{where}: permute {tuple(dims)} moves the batch dimension")
        return x if perm == tuple(range(rank)) else emit(ir.Permute, x, dims=perm)
    if name in ("transpose", "swapaxes"):
        d0, d1 = (args + [kw.get("dim0"), kw.get("dim1")])[:2]
        d0, d1 = _dim(d0, rank, where), _dim(d1, rank, where)
        if 0 in (d0, d1) and d0 != d1:
            raise ModelError(f"{where}: transposes the batch dimension")
        perm = list(range(rank))
        perm[d0], perm[d1] = perm[d1], perm[d0]
        return x if d0 == d1 else emit(ir.Permute, x, dims=tuple(perm))
    if name == "narrow":
        dim, start, length = (args + [kw.get("dim"), kw.get("start"), kw.get("length")])[:3]
        dim = _dim(dim, rank, where)
        if dim == 0:
            raise ModelError(f"{where}: narrows the batch dimension")
        size = in_shape[dim - 1]
        start = _dim(start, size, where)
        return emit(ir.Slice, x, axis=dim, start=start, stop=start + int(length), step=1)
    if name == "getitem":
        v, cur = x, list(in_shape)
        for axis, start, stop, step in _index_slices(args[0], tuple(in_shape), where):
            v = emit(ir.Slice, v, axis=axis, start=start, stop=stop, step=step)
            cur[axis - 1] = len(range(start, stop, step))
        return reshape_to(v, tuple(cur))
    if name == "pad":
        pad = args[0] if args else kw.get("pad")
        mode = args[1] if len(args) > 1 else kw.get("mode", "constant")
        value = args[2] if len(args) > 2 else kw.get("value", None)
        if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (list, tuple)) or len(pad) % 2:
            raise ModelError(f"{where}: only a constant zero F.pad is supported")
        v = x
        for i in range(len(pad) // 2):
            before, after = pad[2 * i], pad[2 * i + 1]
            axis = rank - 1 - i
            if not all(isinstance(p, int) and p >= 0 for p in (before, after)):
                raise ModelError(f"{where}: pads must be non-negative integers, got {tuple(pad)}")
            if axis == 0 and before + after:
                raise ModelError(f"{where}: pads the batch dimension")
            if before + after:
                v = emit(ir.Pad, v, axis=axis, before=before, after=after)
        return v
    if name in ("chunk", "split"):
        dim = args[1] if len(args) > 1 else kw.get("dim", 0)
        dim = _dim(dim, rank, where)
        if dim == 0:
            raise ModelError(f"{where}: splits the batch dimension")
        size, arg = in_shape[dim - 1], args[0] if args else kw.get("chunks", kw.get("split_size_or_sections"))
        if name == "chunk":
            step = -(-size // int(arg))
            sizes = [min(step, size - s) for s in range(0, size, step)]
        elif isinstance(arg, int):
            sizes = [min(arg, size - s) for s in range(0, size, arg)]
        else:
            sizes = list(arg)
        bounds = np.cumsum([0] + sizes).tolist()
        return ("parts", x, dim, list(zip(bounds[:-1], bounds[1:])))
    if name == "mean":
        dims = args[0] if args else kw.get("dim")
        keep = args[1] if len(args) > 1 else kw.get("keepdim", False)
        dims = tuple(dims) if isinstance(dims, (tuple, list)) else (dims,)
        if len(in_shape) != 3 or sorted(_dim(d, rank, where) for d in dims) != [2, 3]:
            raise ModelError(f"{where}: only the mean over H and W of an image (a global average pool) is supported")
        v = emit(ir.GlobalAvgPool, x)
        return v if keep else emit(ir.Reshape, v, shape=(in_shape[0],))
    raise ModelError(f"{where} is not supported by integer-only conversion")
