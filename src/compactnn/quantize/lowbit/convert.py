"""A trained low-bit model with activations of <= 8 bits to the integer engine (:class:`IntegerModel`).

Goes through the integer-only method's public functions (``qat.prepare``, ``calibrate.calibrate``,
``convert.convert``). What is done before them, on a float copy:

1. Low-bit layers become plain ``nn.Conv2d`` / ``nn.Linear`` holding their decoded weights (the converter then
   quantizes them to int8 per output channel: ternary/binary/power-of-two values become int8 codes; per-kernel-
   position scales are rounded to the int8 grid of their channel).
2. BatchNorm after a conv is folded into it (running statistics).
3. Each activation quantizer (outputs ``step * {0..L}``) becomes an ``nn.ReLU6`` on a tensor scaled by
   ``c = 6 / (step * L)``: ``relu6(c y) = c * clip(y, 0, step L)``. The scales are propagated over the graph (one
   scale per group of tensors tied by pools, flatten, ReLU and residual adds; a weight layer maps its input scale
   to its output scale by ``W' = W c_out / c_in``, ``b' = b c_out``; the model input and output keep scale 1). Two
   quantizers tied by a residual add must have the same ``step * L`` (else ModelError).
4. After calibration (min/max, for the other activations), the output range of every ReLU6-fused op is set to
   ``[0, 6 * 255 / L]``: scale ``6 / L``, so the fused clamp ``[0, round(6 / scale)] = [0, L]`` is exactly the
   quantizer's ``L + 1`` levels. The rounding is the engine's (half away from zero); TSQ's threshold ``eps`` is
   not carried (the engine rounds at ``step / 2``), so TSQ models convert approximately.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ...errors import ConfigError, ModelError
from ...graph import Add, set_module, trace
from ..intonly.calibrate import calibrate, calibration_batches
from ..intonly.convert import convert
from ..intonly.model import IntegerModel
from ..intonly.qat import QAdd, QConv2d, QLinear, prepare
from .modules import LowBitConv2d, LowBitLinear
from .quantizers import ClipQuant, LSQQuant, SparseQuant

__all__ = ["to_integer", "float_form"]

ACT_QUANTIZERS = (ClipQuant, SparseQuant, LSQQuant)
_PASS_MODULES = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
_PASS_FUNCTIONS = (F.relu, torch.relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.flatten, F.dropout)
_PASS_METHODS = ("view", "reshape", "flatten", "relu")


def _plain(layer: nn.Module) -> nn.Module:
    w = layer.weight.detach()
    if isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                        layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode)
    else:
        new = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None)
    new.weight.data.copy_(w)
    if layer.bias is not None:
        new.bias.data.copy_(layer.bias.detach())
    return new


@torch.no_grad()
def float_form(model: nn.Module) -> tuple[fx.GraphModule, int | None]:
    """The scaled float model that :func:`to_integer` prepares (steps 1-3 of the module docstring), and the number
    of activation levels ``L`` (None when the model has no activation quantizer)."""
    m = copy.deepcopy(model).eval()
    tops: dict[str, float] = {}
    levels = set()
    for name, mod in list(m.named_modules()):
        if isinstance(mod, (LowBitConv2d, LowBitLinear)) or (
                isinstance(mod, (nn.Conv2d, nn.Linear)) and type(mod) not in (nn.Conv2d, nn.Linear)):
            set_module(m, name, _plain(mod))
        elif isinstance(mod, ACT_QUANTIZERS):
            step, n = mod.grid()
            if n > 255:
                raise ModelError(f"activation {name!r} has {mod.bits} bits; the integer engine takes at most 8")
            if not step > 0:
                raise ModelError(f"activation {name!r} has step {step}; cannot convert")
            tops[name], _ = step * n, levels.add(n)
            set_module(m, name, nn.ReLU6())
    if len(levels) > 1:
        raise ModelError(f"activations with different bit widths ({sorted(levels)} levels) are not supported")
    gm = trace(m, "low-bit conversion")
    mods = dict(gm.named_modules())
    _fold_bn(gm, mods)
    gm.graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    _scale(gm, dict(gm.named_modules()), tops)
    gm.recompile()
    return gm, (levels.pop() if levels else None)


def _fold_bn(gm: fx.GraphModule, mods: dict) -> None:
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(mods.get(node.target), nn.BatchNorm2d):
            continue
        src = node.args[0]
        conv = mods.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            raise ModelError(f"BatchNorm {node.target!r} does not follow a conv; cannot convert")
        bn = mods[node.target]
        sigma = torch.sqrt(bn.running_var + bn.eps)
        gamma = bn.weight if bn.affine else torch.ones_like(sigma)
        beta = bn.bias if bn.affine else torch.zeros_like(sigma)
        b = conv.bias.detach() if conv.bias is not None else torch.zeros_like(sigma)
        conv.weight.data.mul_((gamma / sigma).reshape(-1, 1, 1, 1))
        new_bias = beta + gamma * (b - bn.running_mean) / sigma
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.detach().clone())
        else:
            conv.bias.data.copy_(new_bias)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _scale(gm: fx.GraphModule, mods: dict, tops: dict[str, float]) -> None:
    parent: dict[fx.Node, fx.Node] = {}

    def find(n):
        while parent.setdefault(n, n) is not n:
            n = parent[n]
        return n

    def union(a, b):
        parent[find(a)] = find(b)

    fixed: dict[fx.Node, float] = {}
    weights: list[fx.Node] = []
    for node in gm.graph.nodes:
        first = next((a for a in node.args if isinstance(a, fx.Node)), None)
        mod = mods.get(node.target) if node.op == "call_module" else None
        if node.op == "placeholder":
            fixed[node] = 1.0
        elif node.op == "output":
            fixed[node] = 1.0
            union(node, first)
        elif node.op == "get_attr" or (node.op == "call_method" and node.target == "size"):
            continue
        elif isinstance(mod, (nn.Conv2d, nn.Linear)):
            weights.append(node)
        elif node.op == "call_module" and node.target in tops:
            union(node, first)
            fixed[node] = 6.0 / tops[node.target]
        elif isinstance(mod, Add) or (node.op == "call_function" and node.target in (operator.add, torch.add)):
            a, b = [x for x in node.args if isinstance(x, fx.Node)][:2]
            union(node, a)
            union(node, b)
        elif isinstance(mod, _PASS_MODULES) or (node.op == "call_function" and node.target in _PASS_FUNCTIONS) or (
                node.op == "call_method" and node.target in _PASS_METHODS):
            union(node, first)
        else:
            what = type(mod).__name__ if mod is not None else str(node.target)
            raise ModelError(f"low-bit conversion: {node.name} ({what}) is not supported")
    scale: dict[fx.Node, float] = {}
    for node, value in fixed.items():
        root = find(node)
        if root in scale and abs(scale[root] - value) > 1e-9 * max(abs(value), 1.0):
            raise ModelError("low-bit conversion: activation quantizers joined by a residual add (or feeding the "
                             "output) have different ranges; the integer engine cannot carry them")
        scale[root] = value
    for node in weights:
        layer = mods[node.target]
        c_in, c_out = scale.get(find(node.args[0]), 1.0), scale.get(find(node), 1.0)
        layer.weight.data.mul_(c_out / c_in)
        if layer.bias is not None:
            layer.bias.data.mul_(c_out)


@torch.no_grad()
def to_integer(model: nn.Module, data: Any, *, calibration_batches_: int = 8, engine: str = "fast",
               input_shape: tuple | None = None) -> IntegerModel:
    """Convert a trained low-bit model (activations <= 8 bits, or float) into an :class:`IntegerModel`.

    Args:
        model: a model from a low-bit method (hardened: LowBit layers and activation quantizers).
        data: a DataBundle (calibration batches from its training set; its ``input_shape``).
        calibration_batches_: batches of 128 for the min/max calibration of the activations that are not
            quantized by the method (the model input, outputs of layers without a following activation).
        engine: default engine of the result.
        input_shape: ``(C, H, W)``; default the data's.

    Raises:
        ConfigError: no data. ModelError: a structure the integer engine does not support.
    """
    if data is None:
        raise ConfigError("low-bit conversion needs data for calibration; pass a DataBundle")
    shape = tuple(input_shape or getattr(data, "input_shape", None) or getattr(model, "input_shape"))
    gm, levels = float_form(model)
    prepared = prepare(gm)
    calibrate(prepared, calibration_batches(data, calibration_batches_), "minmax")
    if levels is not None:
        for mod in prepared.modules():
            if isinstance(mod, (QConv2d, QLinear, QAdd)) and mod.activation == "relu6":
                mod.out_quant.min_val.fill_(0.0)
                mod.out_quant.max_val.fill_(6.0 * 255.0 / levels)
    return convert(prepared, shape, engine=engine)
