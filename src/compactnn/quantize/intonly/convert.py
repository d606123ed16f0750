"""Convert a prepared (trained or calibrated) model to an :class:`.model.IntegerModel`.

Per weight layer: the folded float weights (BN with running statistics) are quantized symmetric int8 (narrow range,
per channel or per tensor, :func:`.qparams.symmetric_int8`), the folded bias to int32 with scale ``S_in·S_w``
(:func:`.qparams.bias_int32`), the requantization multiplier ``M = S_in·S_w/S_out`` to ``(M0, shift)``
(:func:`.qparams.output_multiplier`), and the fused activation becomes the clamp ``[qmin, qmax]``
(:func:`.qparams.relu_range`). Activation scales and zero points come from the observers
(:func:`.qparams.asymmetric_uint8` of the observed range). Float math happens here, once; the result runs on
integers only.

Tables (:class:`.lower.QLut`) become ``lut`` ops whose 256 codes are the float function on every input code
(:func:`.lower.lut_table`); products (:class:`.lower.QMul`) become ``mul`` with ``M = S_a·S_b/S_out`` (an input of
lower rank is first reshaped with leading 1s, NumPy broadcasting); data movement is lowered by
:func:`.lower.lower_move` to ``permute``/``reshape``/``slice``/``pad`` (and flatten / global average pool). Shapes
come from running two zero samples through the prepared model, so a view that folds the batch is refused.
"""

from __future__ import annotations

import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from compactnn.errors import ModelError
from compactnn.graph import pair, source_line

from . import ir
from .fakequant import ActQuant
from .model import IntegerModel
from .lower import QLut, QMul, QSoftmax, kind_of, lower_move, lut_table, softmax_params
from .qat import QAdd, QCat, QConv2d, QConvTranspose2d, QLinear, QuantInput, _describe
from .fixedpoint import quantize_multiplier
from .qparams import add_multipliers, bias_int32, output_multiplier, quantize, relu_range, symmetric_int8

__all__ = ["convert"]


@torch.no_grad()
def convert(prepared: fx.GraphModule, input_shape, engine: str = "fast") -> IntegerModel:
    """Build the integer model from a prepared model whose observers have seen data.

    Args:
        prepared: a model from :func:`.qat.prepare` (calibrated and/or trained).
        input_shape: ``(C, H, W)`` of one input.
        engine: the returned model's default engine, ``"fast"`` or ``"reference"``.

    Raises:
        ModelError: a layer the integer model does not support (named with its type), or an activation that was
            never observed.
    """
    prepared.eval()
    modules = dict(prepared.named_modules())
    values: dict[str, dict] = {}
    ops: list[ir.Op] = []
    tensors: dict[str, torch.Tensor] = {}
    env: dict[fx.Node, str | int | None] = {}  # node -> value name (or a non-tensor: size ints, None)
    shapes: dict[str, tuple] = {}
    info: dict = {}

    def new_value(scale: float, zp: int, shape: tuple) -> str:
        name = f"v{len(values)}"
        values[name] = {"scale": float(scale), "zero_point": int(zp), "dtype": "uint8"}
        shapes[name] = shape
        return name

    def pass_value(src: str, shape: tuple) -> str:
        return new_value(values[src]["scale"], values[src]["zero_point"], shape)

    def emit(node: fx.Node, where: str, cls, src: str, **fields) -> str:
        """Append a data-movement op reading ``src`` (output: the input's scale and zero point); its value."""
        out = pass_value(src, ())
        try:
            op = cls(inputs=(src,), output=out, name=_layer_name(node), **fields)
            shapes[out] = tuple(op.infer([shapes[src]], None))
        except (ir._Bad, ModelError) as err:
            raise ModelError(f"{where}: {str(err).removeprefix('integer op ')}") from None
        ops.append(op)
        return out

    def observed(aq: ActQuant, what: str) -> tuple[float, int]:
        if not aq.observed:
            raise ModelError(f"{what}: its output range was never observed; calibrate or train before converting")
        return aq.qparams()

    # shapes by running two zero samples through the prepared model (two: a view that folds the batch shows)
    shape_of: dict[fx.Node, tuple] = {}
    batch_of: dict[fx.Node, int] = {}
    const_of: dict[fx.Node, object] = {}

    class _Shapes(fx.Interpreter):
        def run_node(self, n):
            out = super().run_node(n)
            if isinstance(out, torch.Tensor):
                shape_of[n] = tuple(out.shape[1:])
                batch_of[n] = int(out.shape[0]) if out.dim() else 0
            elif isinstance(out, (int, tuple)):  # sizes: x.size()[3] as a pooling kernel is a constant
                const_of[n] = out
            return out

    saved = [(m, m.enabled, m.calibrating) for m in modules.values() if isinstance(m, ActQuant)]
    try:
        for m, _, _ in saved:
            m.enabled, m.calibrating = False, False
        _Shapes(prepared).run(torch.zeros((2, *input_shape)))
    finally:
        for m, en, cal in saved:
            m.enabled, m.calibrating = en, cal

    for node in prepared.graph.nodes:
        shape = shape_of.get(node)
        if node.op == "placeholder":
            env[node] = None
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node) or not isinstance(env.get(out), str):
                raise ModelError("integer-only conversion needs a model that returns one tensor")
            info["output"] = env[out]
            continue
        args = [env.get(a) if isinstance(a, fx.Node) else a for a in node.args]
        mod = modules.get(node.target) if node.op == "call_module" else None
        where = _describe(node, modules)
        line = source_line(node) if node.op != "placeholder" else None
        where = f"{where} (at {line})" if line else where
        if isinstance(mod, QuantInput):
            s, z = observed(mod, where)
            env[node] = new_value(s, z, shape)
            info["input"] = env[node]
            continue
        if node.op == "call_method" and node.target == "size":
            env[node] = None
            continue
        if node.op == "call_function" and node.target is operator.getitem and isinstance(env.get(node.args[0]),
                                                                                        tuple):
            _, src, axis, bounds = env[node.args[0]]  # a part of chunk/split
            start, stop = bounds[node.args[1]]
            env[node] = emit(node, where, ir.Slice, src, axis=axis, start=start, stop=stop)
            continue
        if node not in shape_of:  # not a tensor: sizes and shapes (their users take them as constants), parts
            is_parts = kind_of(node, modules) == "move" and isinstance(args[0] if args else None, str)
            env[node] = lower_move(node, modules, args[0], shapes[args[0]], None, lambda *a, **k: None, where) \
                if is_parts and (node.target in ("chunk", "split") or node.target in (torch.chunk, torch.split)) \
                else None
            continue
        if batch_of.get(node) != 2:
            raise ModelError(f"{where} changes the batch dimension (a view or reshape that folds it); the integer "
                             "model keeps whole samples")
        x = args[0] if args else None
        if node.op != "call_function" or node.target is not torch.cat:
            if not isinstance(x, str):
                raise ModelError(f"{where} does not take a quantized tensor (is the model input quantized?)")
        i = len(ops)
        if isinstance(mod, (QConv2d, QLinear)):
            s_in = values[x]["scale"]
            s_out, z_out = observed(mod.out_quant, where)
            w, b = mod.folded()
            axis = getattr(mod, "out_axis", 0)  # 1 for a transposed conv's (C_in, C_out, kh, kw) weight
            s_w, _ = symmetric_int8(w, per_channel=mod.per_channel, axis=axis)
            q_w = quantize(w, s_w, 0, -127, 127, axis=axis if mod.per_channel else None).astype(np.int8)
            m0, sh = output_multiplier(s_in, s_w, s_out)
            qmin, qmax = relu_range(z_out, s_out, mod.activation)
            tensors.update({f"w{i}": torch.from_numpy(q_w), f"b{i}": torch.from_numpy(bias_int32(b, s_in, s_w)),
                            f"m{i}": torch.from_numpy(np.atleast_1d(np.asarray(m0, dtype=np.int32)).copy()),
                            f"s{i}": torch.from_numpy(np.atleast_1d(np.asarray(sh, dtype=np.int32)).copy()),
                            # the scales used here, as metadata (inspect reports them; the program never reads them)
                            f"ws{i}": torch.from_numpy(np.atleast_1d(np.asarray(s_w, dtype=np.float64)).copy())})
            out = new_value(s_out, z_out, shape)
            common = dict(inputs=(x,), output=out, weight=f"w{i}", bias=f"b{i}", multiplier=f"m{i}", shift=f"s{i}",
                          weight_scale=f"ws{i}", activation=mod.activation, qmin=int(qmin), qmax=int(qmax),
                          name=str(node.target))
            if isinstance(mod, QConvTranspose2d):
                c = mod.conv
                pad, extra = pair(c.padding), pair(c.output_padding)
                ops.append(ir.ConvTranspose2d(stride=pair(c.stride), padding=pad,
                                              padding_end=(pad[0] - extra[0], pad[1] - extra[1]), **common))
            elif isinstance(mod, QConv2d):
                c = mod.conv
                ops.append(ir.Conv2d(stride=pair(c.stride), padding=pair(c.padding), dilation=pair(c.dilation),
                                     groups=int(c.groups), **common))
            else:
                ops.append(ir.Linear(**common))
        elif isinstance(mod, QAdd):
            y = args[1]
            s_out, z_out = observed(mod.out_quant, where)
            m = add_multipliers(values[x]["scale"], values[y]["scale"], s_out)
            qmin, qmax = relu_range(z_out, s_out, mod.activation)
            out = new_value(s_out, z_out, shape)
            ops.append(ir.Add(inputs=(x, y), output=out, multiplier_a=m["M0_1"], shift_a=m["shift_1"],
                              multiplier_b=m["M0_2"], shift_b=m["shift_2"], multiplier_out=m["M0_y"],
                              shift_out=m["shift_y"], left_shift=m["left_shift"], activation=mod.activation,
                              qmin=int(qmin), qmax=int(qmax), name=str(node.target)))
        elif isinstance(mod, QCat):
            ins = [a for a in args]
            if not all(isinstance(a, str) for a in ins):
                raise ModelError(f"{where} concatenates something that is not a quantized tensor")
            s_out, z_out = observed(mod.out_quant, where)
            mults = [quantize_multiplier(values[a]["scale"] / s_out) for a in ins]
            out = new_value(s_out, z_out, shape)
            ops.append(ir.Concat(inputs=tuple(ins), output=out, axis=1, multipliers=tuple(mults), left_shift=20,
                                 name=str(node.target)))
        elif isinstance(mod, (nn.Identity, nn.Dropout)) or (node.op == "call_function" and node.target is F.dropout):
            env[node] = x
            continue
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d)) or (
                node.op == "call_function" and node.target in (F.max_pool2d, F.avg_pool2d)):
            ops.append(_pool_op(node, mod, x, pass_value(x, shape), where, const_of))
        elif isinstance(mod, nn.AdaptiveAvgPool2d) or (
                node.op == "call_function" and node.target is F.adaptive_avg_pool2d):
            if shape[1:] != (1, 1):
                raise ModelError(f"{where}: only global average pooling (output size 1) is supported")
            ops.append(ir.GlobalAvgPool(inputs=(x,), output=pass_value(x, shape), name=_layer_name(node)))
        elif _is_flatten(node, mod, args, shape_of.get(node.args[0]) if node.args else None):
            if len(shape) == len(shapes[x]):
                env[node] = x
                continue
            ops.append(ir.Flatten(inputs=(x,), output=pass_value(x, shape), name=_layer_name(node)))
        elif isinstance(mod, QLut):
            s_out, z_out = observed(mod.out_quant, where)
            table = lut_table(mod.fn, values[x]["scale"], values[x]["zero_point"], s_out, z_out)
            function = mod.function
            prev = ops[-1] if ops else None
            if isinstance(prev, ir.Lut) and prev.output == x and len(node.args[0].users) == 1:
                # a table of a table (tanh(x) * 0.5, then hardsigmoid, ...): one table, the same codes
                table, function = table[tensors.pop(prev.table).numpy()], "custom"
                ops.pop()  # (x keeps its entry in values, unused)
                x, i = prev.inputs[0], i - 1
            tensors[f"t{i}"] = torch.from_numpy(np.ascontiguousarray(table))
            ops.append(ir.Lut(inputs=(x,), output=new_value(s_out, z_out, shape), table=f"t{i}",
                              function=function, name=str(node.target)))
        elif isinstance(mod, QSoftmax):
            rank = 1 + len(shapes[x])
            if not isinstance(mod.dim, int) or mod.dim % rank != rank - 1 or len(shapes[x]) not in (1, 2):
                raise ModelError(f"{where}: only a softmax over the last axis of (N, F) or (N, T, F) values is "
                                 f"supported (dim={mod.dim!r}, shape {shapes[x]})")
            s_out, z_out = observed(mod.out_quant, where)
            table, mult = softmax_params(values[x]["scale"], s_out)
            tensors[f"t{i}"] = torch.from_numpy(table)
            ops.append(ir.Softmax(inputs=(x,), output=new_value(s_out, z_out, shape), table=f"t{i}", multiplier=mult,
                                  name=str(node.target)))
        elif isinstance(mod, QMul):
            a, b = args
            if not isinstance(b, str):
                raise ModelError(f"{where} multiplies something that is not a quantized tensor")
            if len(shapes[a]) != len(shapes[b]):  # NumPy broadcasting: leading 1s on the shorter one
                lo, hi = (a, b) if len(shapes[a]) < len(shapes[b]) else (b, a)
                lo2 = emit(node, where, ir.Reshape, lo,
                           shape=(1,) * (len(shapes[hi]) - len(shapes[lo])) + tuple(shapes[lo]))
                a, b = (lo2, hi) if lo == a else (hi, lo2)
            s_out, z_out = observed(mod.out_quant, where)
            m0, sh = quantize_multiplier(values[a]["scale"] * values[b]["scale"] / s_out)
            qmin, qmax = relu_range(z_out, s_out, mod.activation)
            ops.append(ir.Mul(inputs=(a, b), output=new_value(s_out, z_out, shape), multiplier=m0, shift=sh,
                              activation=mod.activation, qmin=int(qmin), qmax=int(qmax), name=str(node.target)))
        elif kind_of(node, modules) == "move" or isinstance(mod, nn.Flatten) or (
                node.op == "call_method" and node.target in ("view", "reshape", "flatten")) or (
                node.op == "call_function" and node.target is torch.flatten):
            v = lower_move(node, modules, x, shapes[x], shape,
                           lambda cls, src, **f: emit(node, where, cls, src, **f), where)
            if v != x and shapes[v] != shape:
                raise ModelError(f"{where}: lowered to shape {shapes[v]}, but the float model gives {shape}")
            env[node] = v
            continue
        else:
            kind = type(mod).__name__ if mod is not None else None
            msg = where if kind is None else f"layer {node.target!r} of type {kind}"
            raise ModelError(f"{msg} is not supported by integer-only conversion")
        env[node] = ops[-1].output
    if "input" not in info:
        raise ModelError("the model has no input quantizer; build it with compactnn.quantize.intonly.qat.prepare")
    v_in, v_out = info["input"], info["output"]
    return IntegerModel(
        input_shape=tuple(input_shape),
        input={"value": v_in, "scale": values[v_in]["scale"], "zero_point": values[v_in]["zero_point"]},
        output={"value": v_out, "scale": values[v_out]["scale"], "zero_point": values[v_out]["zero_point"]},
        values=values, ops=ops, tensors=tensors, engine=engine)


def _layer_name(node: fx.Node) -> str:
    """The float layer's name of a node: its module path, or the fx node name for a function or method."""
    return str(node.target) if node.op == "call_module" else node.name


def _pool_op(node: fx.Node, mod, x: str, out: str, where: str, const_of: dict) -> ir.Op:
    if mod is not None:
        k, s, p = mod.kernel_size, mod.stride, mod.padding
        ceil = mod.ceil_mode
        dil = getattr(mod, "dilation", 1)
        is_max = isinstance(mod, nn.MaxPool2d)
    else:
        is_max = node.target is F.max_pool2d
        names = ["kernel_size", "stride", "padding"]
        vals = dict(zip(names, node.args[1:]))
        vals.update({k: v for k, v in node.kwargs.items() if k in names})
        vals = {k: const_of.get(v, v) if isinstance(v, fx.Node) else v for k, v in vals.items()}
        k, s, p = vals["kernel_size"], vals.get("stride") or vals["kernel_size"], vals.get("padding", 0)
        ceil, dil = node.kwargs.get("ceil_mode", False), node.kwargs.get("dilation", 1)
    s = k if s is None or s == [] else s
    if ceil or pair(dil) != (1, 1):
        raise ModelError(f"{where}: pooling with ceil_mode or dilation is not supported")
    name = _layer_name(node)
    if is_max:
        return ir.MaxPool2d(inputs=(x,), output=out, kernel=pair(k), stride=pair(s), padding=pair(p), name=name)
    if pair(p) != (0, 0):
        raise ModelError(f"{where}: average pooling with padding is not supported")
    return ir.AvgPool2d(inputs=(x,), output=out, kernel=pair(k), stride=pair(s), name=name)


def _is_flatten(node: fx.Node, mod, args, in_shape) -> bool:
    """True for ``nn.Flatten()``, ``torch.flatten(x, 1)``, ``x.flatten(1)``, ``x.view(x.size(0), -1)`` and
    ``x.reshape(x.size(0), -1)`` (a reshape to (N, everything else))."""
    if isinstance(mod, nn.Flatten):
        return mod.start_dim == 1 and mod.end_dim == -1
    if node.op == "call_function" and node.target is torch.flatten or (
            node.op == "call_method" and node.target == "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        return start == 1 and node.kwargs.get("end_dim", -1) == -1
    if node.op == "call_method" and node.target in ("view", "reshape"):
        dims = node.args[1:]
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if len(dims) != 2:
            return False
        first = dims[0]
        ok_first = isinstance(first, fx.Node) and first.op == "call_method" and first.target == "size" and (
            first.args[1:] == (0,))
        n_rest = int(np.prod(in_shape)) if in_shape else None
        return ok_first and (dims[1] == -1 or dims[1] == n_rest)
    return False

