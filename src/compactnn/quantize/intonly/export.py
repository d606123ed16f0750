"""ONNX export of an integer-only model (ONNX Runtime's QOperator format) that ONNX Runtime runs.

Two modes, both in what ORT's quantization guide calls the QOperator format (quantized operators with their own ONNX
definitions, "like QLinearConv, MatMulInteger and etc."):

- ``mode="exact"`` (the default, and ``compactnn export``'s): ``ConvInteger``/``MatMulInteger`` for the int32
  accumulators and TFLite's fixed-point requantization spelled out in int64 ops. ORT reproduces compactnn's engines
  bit for bit, end to end, at any depth. Slower: the requantization runs as elementwise int64 ops.
- ``mode="qlinear"`` (``--qlinear``): ORT's fused quantized kernels, described below. Much faster, but ORT
  requantizes with a single float32 rounding, so each layer can differ by one code, and in a deep net those
  differences add up (see below).

The :class:`~compactnn.quantize.intonly.model.IntegerModel` IR maps one to one onto ONNX's quantized operators; the
graph is built with the ``onnx`` package's helpers and checked with ``onnx.checker``. Operators of ``qlinear``:

- ``QuantizeLinear`` (float → uint8) at the input and ``DequantizeLinear`` at the output;
- conv2d → ``QLinearConv`` (uint8 activations, int8 weights with per-channel ``w_scale``, int32 bias);
- linear → ``QGemm`` (domain ``com.microsoft``, ``transB=1``): QLinearMatMul has no bias input, QGemm takes the
  int32 bias and per-channel ``b_scale`` and is what ORT's own ``quantize_static`` emits for Gemm;
- add → ``QLinearAdd``, concat → ``QLinearConcat``, avg_pool2d → ``QLinearAveragePool``, global_avg_pool →
  ``QLinearGlobalAveragePool`` (all ``com.microsoft``); max_pool2d → ``MaxPool`` on uint8; flatten → ``Flatten``;
- fused ReLU/ReLU6: the IR gives the clamp ``[qmin, qmax]`` in output codes. When it is the whole uint8 range (the
  usual case: the output range was observed after the activation, so Z = 0 already clips at real 0) nothing is
  added; otherwise a ``Clip`` on uint8 with ``qmin``/``qmax`` follows the op, which reproduces the clamp exactly.

ORT requantizes a QLinearConv/QGemm accumulator with one float32 multiply and one rounding (half to even): a
*single* rounding of ``acc·M``. compactnn uses TFLite's ``RDBPOT(SRDHM(acc, M0), n)``, which rounds *twice* (to
2^-n of a code, then to a code), so the two differ by one code wherever ``acc·M`` lies within 2^-(n+1) of a half:
about 2^-n of the codes (n = 7..9 on LeNet-5/ResNet-20, 0.05-0.25% per layer). Measured per layer, ORT equals the
exact single rounding on all but ~2e-6 of the codes (float32 precision), so the export's float scales are not the
issue; and no choice of float scales or int32 biases makes a single rounding reproduce a double rounding (the
difference depends on ``acc`` non-affinely). In a deep net the one-code differences feed later layers
(ResNet-20 on Fashion-MNIST: up to 4 codes at the output, 56% exactly equal). :func:`build_op_onnx` exports one op
alone for such per-layer checks. Weight scales, which the integer program does not use, are derived from the
multiplier (:func:`.model.weight_scales`), so ORT's ``x_scale·w_scale/y_scale`` is compactnn's ``M`` to float32
precision. Hence the ``exact`` mode (:mod:`.export_exact`): the same program in plain ONNX integer ops, which ORT
runs bit-identically to compactnn's engines, at the cost of speed. On CPUs without AVX-VNNI, ORT's u8s8 kernels may saturate pair sums (ORT's
``reduce_range`` caveat); the tests would show it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compactnn.errors import ModelError
from compactnn.files import atomic_write_bytes

from . import export_exact as exact
from . import ir
from .onnx_graph import MS, Graph, emit_flatten, emit_max_pool

__all__ = ["build_onnx", "build_op_onnx", "export_file", "export_onnx"]

DEFAULT_OPSET = 17
MODES = ("exact", "qlinear")


#: The qlinear exporter's kernel table (see :mod:`.ir`): ``kernel(graph, index, op)`` appends the op's nodes.
KERNELS = ir.Kernels("onnx_qlinear")


def _weight_scale(g: Graph, op, n_out: int, name: str) -> tuple[str, str]:
    from .model import weight_scales

    if op.weight_scale is not None:
        g.buffer(op.weight_scale)  # a clear error if the named buffer is missing
    ws = weight_scales(g.model, op)
    if ws.size == 1:
        ws = ws.reshape(())
    elif ws.size != n_out:
        raise ModelError(f"{name}: weight_scale has {ws.size} entries for {n_out} output channels")
    s = g.const(f"{name}_w_scale", ws)
    z = g.const(f"{name}_w_zero_point", np.zeros(ws.shape, dtype=np.int8))
    return s, z


def _bias(g: Graph, op, n_out: int, name: str) -> str:
    return g.const(f"{name}_bias", g.buffer(op.bias).astype(np.int32).reshape(n_out))


@KERNELS.register(ir.ConvTranspose2d, ir.ResizeBicubic, ir.ConvTransposeResizeAdd)
def _not_exported(g: Graph, i: int, op) -> None:
    raise ModelError(f"op {i} ({op.label}): ONNX QLinear export does not support integer op {op.kind!r} (run the "
                     "model with compactnn's engines)")


@KERNELS.register(ir.Conv2d)
def _conv2d(g: Graph, i: int, op: ir.Conv2d) -> None:
    if op.activation == "leaky_relu":
        raise ModelError(f"op {i} ({op.label}): ONNX QLinear export does not support the fused leaky_relu "
                         "requantization")
    name, raw = f"op{i}_{op.kind}", f"{op.output}_raw"
    w = g.buffer(op.weight).astype(np.int8)
    ws, wz = _weight_scale(g, op, w.shape[0], name)
    xs, xz = g.qparams(op.inputs[0])
    ys, yz = g.qparams(op.output)
    p = op.padding
    g.node("QLinearConv", [op.inputs[0], xs, xz, g.const(f"{name}_w", w), ws, wz, ys, yz,
                           _bias(g, op, w.shape[0], name)],
           [raw], kernel_shape=list(w.shape[2:]), strides=list(op.stride), pads=[p[0], p[1], p[0], p[1]],
           dilations=list(op.dilation), group=op.groups)
    g.clamp(op, raw, op.output)


@KERNELS.register(ir.Linear)
def _linear(g: Graph, i: int, op: ir.Linear) -> None:
    name, raw = f"op{i}_{op.kind}", f"{op.output}_raw"
    w = g.buffer(op.weight).astype(np.int8)
    ws, wz = _weight_scale(g, op, w.shape[0], name)
    xs, xz = g.qparams(op.inputs[0])
    ys, yz = g.qparams(op.output)
    x = op.inputs[0]
    tokens = len(g.shapes[x]) == 2  # (N, T, F): QGemm takes matrices, so (N·T, F) and back
    if tokens:
        x = f"{op.output}_rows_in"
        g.node("Reshape", [op.inputs[0], g.const(f"{name}_rows", np.array([-1, w.shape[1]], dtype=np.int64))], [x])
    g.node("QGemm", [x, xs, xz, g.const(f"{name}_w", w), ws, wz, _bias(g, op, w.shape[0], name), ys, yz],
           [raw], domain=MS, transA=0, transB=1, alpha=1.0)
    if tokens:
        back = f"{op.output}_rows_out"
        g.node("Reshape", [raw, g.const(f"{name}_back", np.array([-1, *g.shapes[op.output]], dtype=np.int64))],
               [back])
        raw = back
    g.clamp(op, raw, op.output)


@KERNELS.register(ir.Add)
def _add(g: Graph, i: int, op: ir.Add) -> None:
    (a, b), raw = op.inputs, f"{op.output}_raw"
    g.node("QLinearAdd", [a, *g.qparams(a), b, *g.qparams(b), *g.qparams(op.output)], [raw], domain=MS)
    g.clamp(op, raw, op.output)


@KERNELS.register(ir.Concat)
def _concat(g: Graph, i: int, op: ir.Concat) -> None:
    args = list(g.qparams(op.output))
    for v in op.inputs:
        args += [v, *g.qparams(v)]
    g.node("QLinearConcat", args, [f"{op.output}_raw"], domain=MS, axis=op.axis)
    g.clamp(op, f"{op.output}_raw", op.output)


@KERNELS.register(ir.AvgPool2d)
def _avg_pool2d(g: Graph, i: int, op: ir.AvgPool2d) -> None:
    g.node("QLinearAveragePool", [op.inputs[0], *g.qparams(op.inputs[0]), *g.qparams(op.output)], [op.output],
           domain=MS, kernel_shape=list(op.kernel), strides=list(op.stride), pads=[0, 0, 0, 0], count_include_pad=0)


@KERNELS.register(ir.GlobalAvgPool)
def _global_avg_pool(g: Graph, i: int, op: ir.GlobalAvgPool) -> None:
    g.node("QLinearGlobalAveragePool", [op.inputs[0], *g.qparams(op.inputs[0]), *g.qparams(op.output)],
           [op.output], domain=MS, channels_last=0)


KERNELS.register(ir.MaxPool2d)(emit_max_pool)
KERNELS.register(ir.Flatten)(emit_flatten)
for _t, _fn in ((ir.Permute, exact.emit_permute), (ir.Reshape, exact.emit_reshape), (ir.Slice, exact.emit_slice),
                (ir.Pad, exact.emit_pad)):  # codes move unchanged: the same nodes as the exact export
    KERNELS.register(_t)(_fn)


@KERNELS.register(ir.Lut)
def _lut(g: Graph, i: int, op: ir.Lut) -> None:
    """sigmoid: ORT's ``QLinearSigmoid`` (its own float rounding, so a code may differ); every other table:
    ``Gather`` of the table (exact; ORT has no QLinear kernel for tanh, hardswish, GELU, SiLU, ...)."""
    if op.function == "sigmoid":
        x = op.inputs[0]
        g.node("QLinearSigmoid", [x, *g.qparams(x), *g.qparams(op.output)], [op.output], domain=MS)
    else:
        exact.emit_lut(g, i, op)


KERNELS.register(ir.Softmax)(exact.emit_softmax)  # integer nodes (exact): ORT's QLinearSoftmax rounds its own way


@KERNELS.register(ir.Mul)
def _mul(g: Graph, i: int, op: ir.Mul) -> None:
    (a, b), raw = op.inputs, f"{op.output}_raw"
    g.node("QLinearMul", [a, *g.qparams(a), b, *g.qparams(b), *g.qparams(op.output)], [raw], domain=MS)
    g.clamp(op, raw, op.output)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ModelError(f"unknown export mode {mode!r}; use 'exact' (bit-identical, the default) or 'qlinear' (faster)")


def build_onnx(model, opset: int = DEFAULT_OPSET, mode: str = "exact"):
    """The ``onnx.ModelProto`` of an integer model (see the module docstring for the operator mapping).

    Args:
        model: an ``IntegerModel`` (or any object with its IR attributes ``input_shape``, ``input``, ``output``,
            ``values``, ``ops`` and the buffers the ops name).
        opset: the default-domain opset, >= 13 (per-channel quantization); ``com.microsoft`` uses version 1.
        mode: ``"exact"`` (the default: ConvInteger/MatMulInteger with TFLite's fixed-point requantization in int64
            ops, bit-identical to compactnn) or ``"qlinear"`` (ORT's QLinearConv/QGemm/QLinearAdd kernels: much
            faster, float32 single-rounding requantization, so codes can differ by one per layer).

    Returns:
        A checked ``onnx.ModelProto`` with float input ``"input"`` ``(N, C, H, W)`` and float output ``"output"``;
        the batch dimension ``N`` is dynamic.
    """
    import onnx
    from onnx import TensorProto, helper

    if int(opset) < 13:
        raise ModelError(f"opset {opset} is too old for per-channel quantized ops; use opset >= 13")
    for attr in ("input_shape", "input", "output", "values", "ops"):
        if not hasattr(model, attr):
            raise ModelError(f"export needs an IntegerModel (missing {attr!r}); convert with IntegerOnly first")
    _check_mode(mode)
    shapes = ir.check_program(model)
    g = Graph(model)
    g.shapes = shapes
    v_in, v_out = model.input["value"], model.output["value"]
    if mode == "exact":
        exact.quantize_input(g, v_in)
    else:
        qmax = int(model.input.get("qmax", 255))
        if qmax < 255:  # 7-bit activations: the quantizer's codes clipped as IntegerModel.quantize_input does
            g.node("QuantizeLinear", ["input", *g.qparams(v_in)], [f"{v_in}_q8"])
            g.node("Clip", [f"{v_in}_q8", g.const("in_qmin", np.array(0, dtype=np.uint8)),
                            g.const("in_qmax", np.array(qmax, dtype=np.uint8))], [v_in])
        else:
            g.node("QuantizeLinear", ["input", *g.qparams(v_in)], [v_in])
    table = exact.KERNELS if mode == "exact" else KERNELS
    for i, op in enumerate(model.ops):
        table.get(op)(g, i, op)
    if mode == "exact":
        exact.dequantize_output(g, v_out)
    else:
        g.node("DequantizeLinear", [v_out, *g.qparams(v_out)], ["output"])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *map(int, model.input_shape)])
    rank = 1 + len(shapes[v_out])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", *[f"d{i}" for i in range(1, rank)]])
    graph = helper.make_graph(g.nodes, "compactnn_integer_model", [x], [y], initializer=list(g.inits.values()))
    proto = helper.make_model(graph, producer_name="compactnn",
                              opset_imports=[helper.make_opsetid("", int(opset)), helper.make_opsetid(MS, 1)])
    proto.ir_version = min(proto.ir_version, 8)  # readable by older ONNX Runtime releases too
    onnx.checker.check_model(proto)
    return proto


def export_onnx(model, path, opset: int = DEFAULT_OPSET, mode: str = "exact") -> Path:
    """Write an integer model as an ONNX file that ONNX Runtime runs (temp file + rename).

    Args:
        model: an ``IntegerModel`` (from ``compactnn.compress(model, IntegerOnly(...), data=...)``).
        path: the ``.onnx`` file to write; its folder must exist.
        opset: the default-domain opset (>= 13).
        mode: ``"exact"`` (bit-identical integer ops, the default) or ``"qlinear"`` (ORT's fast QLinear kernels);
            see :func:`build_onnx`.

    Returns:
        The path written.
    """
    proto = build_onnx(model, opset, mode)
    return atomic_write_bytes(path, proto.SerializeToString())


def export_file(cnz_path, onnx_path, opset: int = DEFAULT_OPSET, mode: str = "exact") -> Path:
    """``compactnn export model.cnz model.onnx``: load a packed integer model and write it as ONNX.

    Args:
        cnz_path: a ``.cnz`` file holding an ``IntegerModel`` (written by ``compactnn.pack.save``).
        onnx_path: the ``.onnx`` file to write.
        opset: the default-domain opset (>= 13).
        mode: ``"exact"`` or ``"qlinear"`` (see :func:`build_onnx`).

    Returns:
        The path written.
    """
    from compactnn import pack

    from .model import IntegerModel

    model = pack.load(cnz_path)
    if not isinstance(model, IntegerModel):
        raise ModelError(f"{cnz_path} holds a {type(model).__name__}, not an IntegerModel; compress it with "
                         "IntegerOnly (method 'integer-only') before exporting to ONNX")
    return export_onnx(model, onnx_path, opset, mode)


def build_op_onnx(model, index: int, opset: int = DEFAULT_OPSET, mode: str = "exact"):
    """The ``onnx.ModelProto`` of op ``index`` of an integer model alone, for per-layer agreement checks.

    Its inputs are the op's input values and its output the op's output value, all uint8 codes under their IR names
    (no quantize/dequantize), so ORT can be fed exactly the codes compactnn's engine computed for the layer before.

    Args:
        model: an ``IntegerModel``.
        index: the op's position in ``model.ops``.
        opset: the default-domain opset (>= 13).
        mode: ``"exact"`` or ``"qlinear"``.
    """
    import onnx
    from onnx import TensorProto, helper

    if not 0 <= int(index) < len(model.ops):
        raise ModelError(f"op index {index} is out of range; the model has {len(model.ops)} ops")
    _check_mode(mode)
    shapes = ir.check_program(model)
    op = model.ops[int(index)]
    g = Graph(model)
    g.shapes = shapes
    (exact.KERNELS if mode == "exact" else KERNELS).get(op)(g, int(index), op)
    ins = [helper.make_tensor_value_info(v, TensorProto.UINT8, [f"{v}_d{d}" for d in range(1 + len(shapes[v]))])
           for v in dict.fromkeys(op.inputs)]
    out = helper.make_tensor_value_info(op.output, TensorProto.UINT8,
                                        [f"y_d{d}" for d in range(1 + len(shapes[op.output]))])
    graph = helper.make_graph(g.nodes, f"compactnn_op{index}_{op.kind}", ins, [out],
                              initializer=list(g.inits.values()))
    proto = helper.make_model(graph, producer_name="compactnn",
                              opset_imports=[helper.make_opsetid("", int(opset)), helper.make_opsetid(MS, 1)])
    proto.ir_version = min(proto.ir_version, 8)
    onnx.checker.check_model(proto)
    return proto
