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

__all__ = ["build_onnx", "build_op_onnx", "export_file", "export_onnx"]

MS = "com.microsoft"
DEFAULT_OPSET = 17
MODES = ("exact", "qlinear")


class _Graph:
    """Collects nodes and initializers while walking the IR."""

    def __init__(self, model) -> None:
        from onnx import helper, numpy_helper  # imported lazily: onnx is only needed to export

        self.helper, self.numpy_helper = helper, numpy_helper
        self.model = model
        self.nodes: list = []
        self.inits: dict[str, object] = {}
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.array(array, order="C"), name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str | None = None, **attrs) -> None:
        self.count += 1
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=f"{op}_{self.count}", domain=domain, **attrs))

    def qparams(self, value: str) -> tuple[str, str]:
        """Names of the float32 scale and uint8 zero point initializers of an IR value."""
        info = self.model.values.get(value)
        if info is None:
            raise ModelError(f"value {value!r} has no entry in model.values; the integer model is malformed")
        if info.get("dtype", "uint8") != "uint8":
            raise ModelError(f"value {value!r} has dtype {info['dtype']!r}; only uint8 activations export to ONNX")
        s = self.const(f"{value}_scale", np.array(info["scale"], dtype=np.float32))
        z = self.const(f"{value}_zero_point", np.array(info["zero_point"], dtype=np.uint8))
        return s, z

    def buffer(self, name: str) -> np.ndarray:
        try:
            t = self.model.get_buffer(name) if hasattr(self.model, "get_buffer") else getattr(self.model, name)
        except (AttributeError, KeyError):
            raise ModelError(f"the integer model has no buffer {name!r}; the model is malformed") from None
        return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)

    def clamp(self, op: dict, raw: str, out: str) -> None:
        """Route ``raw`` to ``out``, through a uint8 ``Clip`` when the op's fused clamp is narrower than [0, 255]."""
        qmin, qmax = int(op.get("qmin", 0)), int(op.get("qmax", 255))
        if (qmin, qmax) == (0, 255):
            self.nodes[-1].output[0] = out  # no clamp: the op writes the value directly
            return
        lo = self.const(f"{out}_qmin", np.array(qmin, dtype=np.uint8))
        hi = self.const(f"{out}_qmax", np.array(qmax, dtype=np.uint8))
        self.node("Clip", [raw, lo, hi], [out])


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, (int, np.integer)) else [int(i) for i in v]


def _weight_scale(g: _Graph, op: dict, n_out: int, name: str) -> tuple[str, str]:
    from .model import weight_scales

    if op.get("weight_scale"):
        g.buffer(op["weight_scale"])  # a clear error if the named buffer is missing
    ws = weight_scales(g.model, op)
    if ws.size == 1:
        ws = ws.reshape(())
    elif ws.size != n_out:
        raise ModelError(f"{name}: weight_scale has {ws.size} entries for {n_out} output channels")
    s = g.const(f"{name}_w_scale", ws)
    z = g.const(f"{name}_w_zero_point", np.zeros(ws.shape, dtype=np.int8))
    return s, z


def _bias(g: _Graph, op: dict, n_out: int, name: str) -> str:
    b = g.buffer(op["bias"]).astype(np.int32) if op.get("bias") else np.zeros(n_out, dtype=np.int32)
    return g.const(f"{name}_bias", b.reshape(n_out))


def _emit(g: _Graph, i: int, op: dict) -> None:
    kind, ins, out = op.get("op"), list(op.get("inputs", [])), op.get("output")
    name = f"op{i}_{kind}"
    raw = f"{out}_raw"
    if kind == "conv2d":
        w = g.buffer(op["weight"]).astype(np.int8)
        ws, wz = _weight_scale(g, op, w.shape[0], name)
        xs, xz = g.qparams(ins[0])
        ys, yz = g.qparams(out)
        p = _pair(op.get("padding", 0))
        g.node("QLinearConv", [ins[0], xs, xz, g.const(f"{name}_w", w), ws, wz, ys, yz, _bias(g, op, w.shape[0], name)],
               [raw], kernel_shape=list(w.shape[2:]), strides=_pair(op.get("stride", 1)),
               pads=[p[0], p[1], p[0], p[1]], dilations=_pair(op.get("dilation", 1)), group=int(op.get("groups", 1)))
        g.clamp(op, raw, out)
    elif kind == "linear":
        w = g.buffer(op["weight"]).astype(np.int8)
        ws, wz = _weight_scale(g, op, w.shape[0], name)
        xs, xz = g.qparams(ins[0])
        ys, yz = g.qparams(out)
        g.node("QGemm", [ins[0], xs, xz, g.const(f"{name}_w", w), ws, wz, _bias(g, op, w.shape[0], name), ys, yz],
               [raw], domain=MS, transA=0, transB=1, alpha=1.0)
        g.clamp(op, raw, out)
    elif kind == "add":
        (a, b), ys_yz = ins, g.qparams(out)
        g.node("QLinearAdd", [a, *g.qparams(a), b, *g.qparams(b), *ys_yz], [raw], domain=MS)
        g.clamp(op, raw, out)
    elif kind == "concat":
        args = list(g.qparams(out))
        for v in ins:
            args += [v, *g.qparams(v)]
        g.node("QLinearConcat", args, [raw], domain=MS, axis=int(op.get("axis", 1)))
        g.clamp(op, raw, out)
    elif kind == "max_pool2d":
        k = _pair(op["kernel"])
        p = _pair(op.get("padding", 0))
        g.node("MaxPool", ins[:1], [out], kernel_shape=k, strides=_pair(op.get("stride") or k),
               pads=[p[0], p[1], p[0], p[1]])
    elif kind == "avg_pool2d":
        k = _pair(op["kernel"])
        p = _pair(op.get("padding", 0))
        g.node("QLinearAveragePool", [ins[0], *g.qparams(ins[0]), *g.qparams(out)], [raw], domain=MS,
               kernel_shape=k, strides=_pair(op.get("stride") or k), pads=[p[0], p[1], p[0], p[1]],
               count_include_pad=0)
        g.clamp(op, raw, out)
    elif kind == "global_avg_pool":
        g.node("QLinearGlobalAveragePool", [ins[0], *g.qparams(ins[0]), *g.qparams(out)], [raw], domain=MS,
               channels_last=0)
        g.clamp(op, raw, out)
    elif kind == "flatten":
        g.node("Flatten", ins[:1], [out], axis=1)
    else:
        raise ModelError(f"op {i} has kind {kind!r}, which the ONNX exporter does not know; "
                         "supported: conv2d, linear, add, concat, max_pool2d, avg_pool2d, global_avg_pool, flatten")


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

    from . import export_exact as exact  # imports this module's graph helpers

    if int(opset) < 13:
        raise ModelError(f"opset {opset} is too old for per-channel quantized ops; use opset >= 13")
    for attr in ("input_shape", "input", "output", "values", "ops"):
        if not hasattr(model, attr):
            raise ModelError(f"export needs an IntegerModel (missing {attr!r}); convert with IntegerOnly first")
    _check_mode(mode)
    g = _Graph(model)
    v_in, v_out = model.input["value"], model.output["value"]
    if mode == "exact":
        exact.quantize_input(g, v_in)
    else:
        g.node("QuantizeLinear", ["input", *g.qparams(v_in)], [v_in])
    for i, op in enumerate(model.ops):
        (exact.emit if mode == "exact" else _emit)(g, i, op)
    if mode == "exact":
        exact.dequantize_output(g, v_out)
    else:
        g.node("DequantizeLinear", [v_out, *g.qparams(v_out)], ["output"])
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *map(int, model.input_shape)])
    rank = 1 + len(model.input_shape)
    for op in model.ops:  # only flatten and linear change the rank
        rank = 2 if op.get("op") in ("flatten", "linear") else rank
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

    from . import export_exact as exact  # imports this module's graph helpers

    if not 0 <= int(index) < len(model.ops):
        raise ModelError(f"op index {index} is out of range; the model has {len(model.ops)} ops")
    _check_mode(mode)
    op = model.ops[int(index)]
    g = _Graph(model)
    (exact.emit if mode == "exact" else _emit)(g, int(index), op)
    rank = 2 if op["op"] == "linear" else 4  # flatten takes 4-D
    ins = [helper.make_tensor_value_info(v, TensorProto.UINT8, [f"{v}_d{d}" for d in range(rank)])
           for v in dict.fromkeys(op["inputs"])]
    out = helper.make_tensor_value_info(op["output"], TensorProto.UINT8,
                                        [f"y_d{d}" for d in range(2 if op["op"] in ("linear", "flatten") else 4)])
    graph = helper.make_graph(g.nodes, f"compactnn_op{index}_{op['op']}", ins, [out],
                              initializer=list(g.inits.values()))
    proto = helper.make_model(graph, producer_name="compactnn",
                              opset_imports=[helper.make_opsetid("", int(opset)), helper.make_opsetid(MS, 1)])
    proto.ir_version = min(proto.ir_version, 8)
    onnx.checker.check_model(proto)
    return proto
