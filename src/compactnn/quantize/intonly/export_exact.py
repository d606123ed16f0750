"""The ``exact`` ONNX export: compactnn's integer program in ONNX integer ops, bit-identical in ONNX Runtime.

``ConvInteger`` / ``MatMulInteger`` give the int32 accumulators; TFLite's fixed-point requantization
``MultiplyByQuantizedMultiplier`` (``RDBPOT(SRDHM(sat(x·2^left), M0), right)``) is spelled out in integer ops;
pools sum in integers (window sums by a ``ConvInteger`` with a kernel of ones); the input quantize and output
dequantize run in float64 as :class:`.model.IntegerModel` does, so no float op runs between them.

The requantization avoids division and sign tests. With ``p = x·M0`` (``|p| < 2^62``):

- SRDHM is the nearest integer to ``p/2^31`` with ties toward +∞ (gemmlowp's nudge ``2^30`` or ``1 − 2^30`` with
  C truncation gives exactly that), i.e. ``floor((p + 2^30) / 2^31)``. Offset by ``2^62`` the numerator is
  non-negative, so ``D = (p + 2^30 + 2^62) >> 31`` in uint64 is ``SRDHM + 2^31``, in ``[0, 2^32)``.
- RDBPOT by ``n >= 1`` is the nearest integer with ties away from zero: ``floor((y + h − [y < 0]) / 2^n)`` with
  ``h = 2^(n−1)``. In terms of ``D``, ``[y >= 0] = D >> 31``, so
  ``RDBPOT = ((D + (h − 1) + (D >> 31)) >> n) − 2^(31−n)``: all terms non-negative, uint64 shifts only.
- ``n = 0`` (multipliers in [0.5, 1)) is the identity on ``y = D − 2^31``; per-channel shifts that mix ``n = 0`` and
  ``n >= 1`` multiply the ``D >> 31`` term by 0 or 1.

Every step is tested against :mod:`.fixedpoint` on edge cases (ties, both signs, the int32 limits).
"""

from __future__ import annotations

import numpy as np

from compactnn.errors import ModelError

from . import ir
from .onnx_graph import Graph, emit_flatten, emit_max_pool

__all__ = ["KERNELS", "dequantize_output", "mbqm", "quantize_input"]

#: The exact exporter's kernel table (see :mod:`.ir`): ``kernel(graph, index, op)`` appends the op's nodes.
KERNELS = ir.Kernels("onnx_exact")

_INT64, _UINT64, _UINT8, _FLOAT, _DOUBLE = 7, 13, 2, 1, 11  # onnx.TensorProto data types


def _c(g: Graph, stem: str, a, dtype=np.int64, shape=None) -> str:
    arr = np.asarray(a, dtype=dtype)
    return g.const(f"{stem}_{g.count}_{len(g.inits)}", arr.reshape(shape) if shape is not None else arr)


def _op(g: Graph, op: str, inputs: list[str], **attrs) -> str:
    g.count += 1
    out = f"{op.lower()}_t{g.count}"
    g.node(op, inputs, [out], **attrs)
    return out


def mbqm(g: Graph, x: str, m0, shift, shape=None) -> str:
    """``MultiplyByQuantizedMultiplier`` of an int64 tensor ``x`` holding int32-range values; returns int64."""
    m0, shift = np.asarray(m0, dtype=np.int64), np.asarray(shift, dtype=np.int64)
    left, right = np.clip(shift, 0, 31), np.maximum(-shift, 0)
    if np.any(left > 0):
        x = _op(g, "Mul", [x, _c(g, "pow_left", 1 << left, shape=shape)])
    x = _op(g, "Clip", [x, _c(g, "i32min", -(2**31)), _c(g, "i32max", 2**31 - 1)])  # saturating, as TFLite
    p = _op(g, "Mul", [x, _c(g, "m0", m0, shape=shape)])
    u = _op(g, "Cast", [_op(g, "Add", [p, _c(g, "nudge", (1 << 30) + (1 << 62))])], to=_UINT64)
    d = _op(g, "BitShift", [u, _c(g, "s31", 31, np.uint64)], direction="RIGHT")  # SRDHM + 2^31
    if not np.any(right > 0):
        return _op(g, "Sub", [_op(g, "Cast", [d], to=_INT64), _c(g, "two31", 1 << 31)])
    nonneg = _op(g, "BitShift", [d, _c(g, "s31", 31, np.uint64)], direction="RIGHT")  # [SRDHM >= 0]
    if np.any(right == 0):
        nonneg = _op(g, "Mul", [nonneg, _c(g, "has_right", right > 0, np.uint64, shape)])
    half_m1 = np.where(right > 0, (np.int64(1) << np.maximum(right - 1, 0)) - 1, 0)
    t = _op(g, "Add", [_op(g, "Add", [d, _c(g, "half_m1", half_m1, np.uint64, shape)]), nonneg])
    r = _op(g, "BitShift", [t, _c(g, "right", right, np.uint64, shape)], direction="RIGHT")
    return _op(g, "Sub", [_op(g, "Cast", [r], to=_INT64), _c(g, "offset", np.int64(1) << (31 - right), shape=shape)])


def _to_codes(g: Graph, y: str, z: int, qmin: int, qmax: int, out: str) -> None:
    y = _op(g, "Clip", [_op(g, "Add", [y, _c(g, "z", z)]), _c(g, "qmin", qmin), _c(g, "qmax", qmax)])
    g.node("Cast", [y], [out], to=_UINT8)


def _centered(g: Graph, v: str) -> str:
    """``int64(q) − Z`` of an IR value."""
    return _op(g, "Sub", [_op(g, "Cast", [v], to=_INT64), _c(g, "z", g.model.values[v]["zero_point"])])


def _weighted(g: Graph, i: int, op) -> None:
    ins = op.inputs
    if getattr(op, "activation", "none") == "leaky_relu":
        raise ModelError(f"op {i} ({op.label}): the bit-exact ONNX export does not support the fused leaky_relu "
                         "requantization")
    z = g.model.values
    w = g.buffer(op.weight).astype(np.int8)
    xz = g.const(f"{ins[0]}_zero_point", np.array(z[ins[0]]["zero_point"], dtype=np.uint8))
    if isinstance(op, ir.Conv2d):
        p = op.padding
        acc = _op(g, "ConvInteger", [ins[0], g.const(f"op{i}_w", w), xz], kernel_shape=list(w.shape[2:]),
                  strides=list(op.stride), pads=[p[0], p[1], p[0], p[1]], dilations=list(op.dilation),
                  group=op.groups)
        shape = (1, -1, 1, 1)
    else:
        acc = _op(g, "MatMulInteger", [ins[0], g.const(f"op{i}_wt", np.ascontiguousarray(w.T)), xz])
        shape = (1, -1)
    b = g.buffer(op.bias).astype(np.int64)
    acc = _op(g, "Add", [_op(g, "Cast", [acc], to=_INT64), _c(g, "bias", b, shape=shape)])
    m0, sh = g.buffer(op.multiplier).reshape(-1), g.buffer(op.shift).reshape(-1)
    per_channel = m0.size > 1
    y = mbqm(g, acc, m0 if per_channel else m0[0], sh if per_channel else sh[0], shape if per_channel else None)
    _to_codes(g, y, int(z[op.output]["zero_point"]), op.qmin, op.qmax, op.output)


KERNELS.register(ir.Conv2d, ir.Linear)(_weighted)


@KERNELS.register(ir.ConvTranspose2d, ir.ResizeBicubic, ir.ConvTransposeResizeAdd)
def _not_exported(g, i: int, op) -> None:
    raise ModelError(f"op {i} ({op.label}): the bit-exact ONNX export does not support integer op {op.kind!r} (run "
                     "the model with compactnn's engines)")
KERNELS.register(ir.MaxPool2d)(emit_max_pool)  # max pool and flatten on uint8 are exact as they are
KERNELS.register(ir.Flatten)(emit_flatten)


def _slice(g: Graph, v: str, start: int, end: int) -> str:
    return _op(g, "Slice", [v, _c(g, "start", [start]), _c(g, "end", [end])])


def _pool(g: Graph, op, src: str, out: str) -> None:
    if isinstance(op, ir.GlobalAvgPool):
        total = _op(g, "ReduceSum", [_op(g, "Cast", [src], to=_INT64), _c(g, "axes", [2, 3])], keepdims=1)
        shape = _op(g, "Shape", [src])
        count = _op(g, "Mul", [_op(g, "Gather", [shape, _c(g, "h", 2)]), _op(g, "Gather", [shape, _c(g, "w", 3)])])
    else:  # window sums: every channel as its own image through a ConvInteger with a kernel of ones
        k = list(op.kernel)
        shape = _op(g, "Shape", [src])
        flat = _op(g, "Reshape", [src, _op(g, "Concat", [_c(g, "m1_1", [-1, 1]), _slice(g, shape, 2, 4)], axis=0)])
        sums = _op(g, "ConvInteger", [flat, _c(g, "ones", np.ones((1, 1, *k)), np.uint8), _c(g, "u8_0", 0, np.uint8)],
                   kernel_shape=k, strides=list(op.stride))
        back = _op(g, "Concat", [_slice(g, shape, 0, 2), _slice(g, _op(g, "Shape", [sums]), 2, 4)], axis=0)
        total = _op(g, "Cast", [_op(g, "Reshape", [sums, back])], to=_INT64)
        count = _c(g, "count", k[0] * k[1])  # the IR's avg_pool2d has no padding: every window holds k·k cells
    half = _op(g, "Div", [count, _c(g, "two", 2)])
    y = _op(g, "Div", [_op(g, "Add", [total, half]), count])  # non-negative: truncation is floor
    g.node("Cast", [y], [out], to=_UINT8)


@KERNELS.register(ir.AvgPool2d, ir.GlobalAvgPool)
def _avg_pool(g: Graph, i: int, op) -> None:
    _pool(g, op, op.inputs[0], op.output)


@KERNELS.register(ir.Add)
def _add(g: Graph, i: int, op: ir.Add) -> None:
    ins, out = op.inputs, op.output
    ls = 1 << op.left_shift
    a = mbqm(g, _op(g, "Mul", [_centered(g, ins[0]), _c(g, "ls", ls)]), op.multiplier_a, op.shift_a)
    b = mbqm(g, _op(g, "Mul", [_centered(g, ins[1]), _c(g, "ls", ls)]), op.multiplier_b, op.shift_b)
    y = mbqm(g, _op(g, "Add", [a, b]), op.multiplier_out, op.shift_out)
    _to_codes(g, y, int(g.model.values[out]["zero_point"]), op.qmin, op.qmax, out)


@KERNELS.register(ir.Concat)
def _concat(g: Graph, i: int, op: ir.Concat) -> None:
    parts = []
    z_out = int(g.model.values[op.output]["zero_point"])
    for v, m in zip(op.inputs, op.multipliers):
        g.count += 1
        part = f"{v}_cat{g.count}"
        if m is None:
            g.node("Clip", [v, _c(g, "u8_lo", op.qmin, np.uint8), _c(g, "u8_hi", op.qmax, np.uint8)], [part])
        else:
            m0, sh = m
            L = min(op.left_shift, sh + 31)
            y = mbqm(g, _op(g, "Mul", [_centered(g, v), _c(g, "ls", 1 << L)]), m0, sh - L)
            _to_codes(g, y, z_out, op.qmin, op.qmax, part)
        parts.append(part)
    g.node("Concat", parts, [op.output], axis=op.axis)


def quantize_input(g: Graph, v_in: str) -> None:
    """Quantize the float input exactly as ``IntegerModel.quantize_input`` (float64, half away from zero)."""
    t = _op(g, "Div", [_op(g, "Cast", ["input"], to=_DOUBLE), _c(g, "in_scale", g.model.input["scale"], np.float64)])
    r = _op(g, "Mul", [_op(g, "Sign", [t]), _op(g, "Floor", [_op(g, "Add", [_op(g, "Abs", [t]),
                                                                           _c(g, "f64_half", 0.5, np.float64)])])])
    r = _op(g, "Add", [r, _c(g, "in_zp", float(g.model.input["zero_point"]), np.float64)])
    qmax = float(g.model.input.get("qmax", 255))  # 127 with 7-bit activations
    r = _op(g, "Clip", [r, _c(g, "f64_0", 0.0, np.float64), _c(g, f"f64_{qmax:g}", qmax, np.float64)])
    g.node("Cast", [r], [v_in], to=_UINT8)


def dequantize_output(g: Graph, v_out: str) -> None:
    """Dequantize exactly as ``IntegerModel.dequantize_output``: float32(float64(q − Z) · S)."""
    d = _op(g, "Sub", [_op(g, "Cast", [v_out], to=_DOUBLE),
                       _c(g, "out_zp", float(g.model.output["zero_point"]), np.float64)])
    g.node("Cast", [_op(g, "Mul", [d, _c(g, "out_scale", g.model.output["scale"], np.float64)])], ["output"], to=_FLOAT)


# ------------------------------------------------------------------------------------------ data movement, lut, mul


def emit_permute(g: Graph, i: int, op) -> None:
    g.node("Transpose", [op.inputs[0]], [op.output], perm=list(op.dims))


def emit_reshape(g: Graph, i: int, op) -> None:
    g.node("Reshape", [op.inputs[0], _c(g, "shape", [0, *op.shape])], [op.output])  # 0: keep the batch size


def emit_slice(g: Graph, i: int, op) -> None:
    g.node("Slice", [op.inputs[0], _c(g, "start", [op.start]), _c(g, "stop", [op.stop]), _c(g, "axes", [op.axis]),
                     _c(g, "step", [op.step])], [op.output])


def emit_pad(g: Graph, i: int, op) -> None:
    rank = 1 + len(g.shapes[op.inputs[0]])  # the value shapes of ir.check_program (set by the exporter)
    pads = [0] * (2 * rank)
    pads[op.axis], pads[rank + op.axis] = op.before, op.after
    fill = _c(g, "pad_fill", g.model.values[op.inputs[0]]["zero_point"], np.uint8)  # real 0
    g.node("Pad", [op.inputs[0], _c(g, "pads", pads), fill], [op.output], mode="constant")


def emit_lut(g: Graph, i: int, op) -> None:
    """The table lookup: ``Gather`` of the 256 codes at the input codes (exact in any ONNX runtime)."""
    table = g.const(f"op{i}_table", g.buffer(op.table).astype(np.uint8).reshape(256))
    g.node("Gather", [table, _op(g, "Cast", [op.inputs[0]], to=_INT64)], [op.output], axis=0)


for _t, _fn in ((ir.Permute, emit_permute), (ir.Reshape, emit_reshape), (ir.Slice, emit_slice), (ir.Pad, emit_pad),
                (ir.Lut, emit_lut)):
    KERNELS.register(_t)(_fn)


@KERNELS.register(ir.Mul)
def _mul(g: Graph, i: int, op: ir.Mul) -> None:
    """``(q_a − Z_a)·(q_b − Z_b)`` in int64 (ONNX broadcasting = the IR's), then the requantization of Add/Conv."""
    acc = _op(g, "Mul", [_centered(g, op.inputs[0]), _centered(g, op.inputs[1])])
    y = mbqm(g, acc, op.multiplier, op.shift)
    _to_codes(g, y, int(g.model.values[op.output]["zero_point"]), op.qmin, op.qmax, op.output)


@KERNELS.register(ir.Softmax)
def emit_softmax(g: Graph, i: int, op) -> None:
    """The integer softmax of :class:`.ir_more.Softmax` in int64 ONNX ops (ReduceMax, Gather, ReduceSum, Div on
    non-negative values, so truncation is the floor)."""
    x = _op(g, "Cast", [op.inputs[0]], to=_INT64)
    d = _op(g, "Sub", [_op(g, "ReduceMax", [x], axes=[-1], keepdims=1), x])
    e = _op(g, "Gather", [g.const(f"op{i}_exp", g.buffer(op.table).astype(np.int64).reshape(256)), d], axis=0)
    den = _op(g, "Mul", [_op(g, "ReduceSum", [e, _c(g, "axes", [-1])], keepdims=1), _c(g, "two16", 1 << 16)])
    num = _op(g, "Add", [_op(g, "Mul", [e, _c(g, "mult", op.multiplier)]), _op(g, "Div", [den, _c(g, "two", 2)])])
    y = _op(g, "Div", [num, den])
    _to_codes(g, y, int(g.model.values[op.output]["zero_point"]), 0, 255, op.output)
