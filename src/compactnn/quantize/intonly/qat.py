"""Prepare a float model for quantization-aware training (Jacob et al., CVPR 2018, section 3 and appendix C).

:func:`prepare` traces the model with compactnn's one tracer (:func:`compactnn.graph.trace`, with its leaf rules)
and replaces, in a ``GraphModule``:

- ``Conv2d [→ BatchNorm2d] [→ ReLU/ReLU6]`` by :class:`QConv2d` (BN folded, activation fused);
- ``ConvTranspose2d [→ BatchNorm2d] [→ ReLU/ReLU6]`` (groups 1, dilation 1, ``output_padding <= padding``) by
  :class:`QConvTranspose2d` (the same folding along the weight's output axis, 1);
- ``Linear [→ ReLU/ReLU6]`` by :class:`QLinear`;
- ``Add`` (the marker :class:`compactnn.graph.Add`, ``operator.add``, ``torch.add``) ``[→ ReLU/ReLU6]`` by
  :class:`QAdd`;
- ``torch.cat`` and the marker :class:`compactnn.graph.Concat` (channels) by :class:`QCat`;
- sigmoid, tanh, hardswish, hardsigmoid, SiLU, GELU, LeakyReLU, a ReLU that cannot be fused and ``x * number`` by
  :class:`.lower.QLut` (a table of codes at conversion), the product of two tensors ``[→ ReLU/ReLU6]`` by
  :class:`.lower.QMul` (see :mod:`.lower`);
- and puts an :class:`.fakequant.ActQuant` on the input. Pools, data movement (flatten, view/reshape, permute/
  transpose, squeeze/unsqueeze, slicing, chunk/split, constant zero pad), ``Identity`` and ``Dropout`` stay as they
  are. Anything else is a ModelError naming the layer, its type and its source line.

**BN folding (the paper's Figure C.8).** With ``σ = sqrt(var + eps)``, the folded layer computes
``conv(x, fq(w·γ/σ)) + (β − γ·(μ − b)/σ)`` where ``b`` is the conv's own bias (0 if none). While training and before
``freeze_bn_after`` training steps, ``μ, var`` are the **batch** statistics of ``conv(x, w) + b``, computed by an extra
float conv of the batch with the unfolded weights (gradients flow through them, as in the paper's training graph);
the running statistics are updated from them with the BN's momentum (unbiased variance, as ``BatchNorm2d``). After
``freeze_bn_after`` steps, and always in eval mode, ``μ, var`` are the **running** statistics, so training then
sees exactly the weights the converter quantizes.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from compactnn.errors import ModelError
from compactnn.graph import Add, Concat, source_line, trace

from .fakequant import ActQuant, fake_quant_weight
from .lower import QLut, QMul, QSoftmax, kind_of, lut_from_node, softmax_dim

__all__ = ["QAdd", "QCat", "QConv2d", "QConvTranspose2d", "QLinear", "QuantInput", "prepare", "qmodules", "set_fake_quant"]

_ACTS = ("none", "relu", "relu6")


def _activate(y: Tensor, activation: str) -> Tensor:
    if activation == "relu":
        return F.relu(y)
    if activation == "relu6":
        return F.relu6(y)
    return y


class QuantInput(ActQuant):
    """Fake-quantizes the model input (its range becomes the integer model's input scale and zero point)."""


class _QWeight(nn.Module):
    """Shared state of the weight layers: fused activation, weight quantization flag, output observer."""

    def _setup(self, activation: str, per_channel: bool, ema_decay: float, act_delay: int) -> None:
        if activation not in _ACTS:
            raise ModelError(f"unknown fused activation {activation!r}; use one of {_ACTS}")
        self.activation = activation
        self.per_channel = bool(per_channel)
        self.quantize_weights = True
        self.out_quant = ActQuant(ema_decay, act_delay)

    def _wq(self, w: Tensor) -> Tensor:
        return fake_quant_weight(w, self.per_channel) if self.quantize_weights else w


class QConv2d(_QWeight):
    """Conv2d with folded BatchNorm, fused ReLU/ReLU6 and fake-quantized weights and output (see module docstring).

    Args:
        conv: the float convolution (its parameters are shared, not copied).
        bn: the BatchNorm2d that follows it, or None.
        activation: ``"none"``, ``"relu"`` or ``"relu6"``.
        per_channel: per-output-channel weight scales.
        ema_decay: output observer's EMA decay.
        act_delay: training steps before the output is fake-quantized.
        freeze_bn_after: training steps after which BN uses its running statistics (None: never while training).
    """

    #: the weight's output-channel axis (1 for :class:`QConvTranspose2d`)
    out_axis = 0

    def __init__(self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, activation: str = "none",
                 per_channel: bool = True, ema_decay: float = 0.999, act_delay: int = 0,
                 freeze_bn_after: int | None = None) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ModelError(f"conv with padding={conv.padding!r}, padding_mode={conv.padding_mode!r} is not "
                             "supported; use integer zero padding")
        self.conv = conv
        self.bn = bn
        self.freeze_bn_after = None if freeze_bn_after is None else int(freeze_bn_after)
        self.register_buffer("steps", torch.tensor(0, dtype=torch.int64))
        self._setup(activation, per_channel, ema_decay, act_delay)

    @property
    def bn_frozen(self) -> bool:
        """True when BN uses running statistics in training mode too."""
        return self.freeze_bn_after is not None and int(self.steps) >= self.freeze_bn_after

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        c = self.conv
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups)

    def folded(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The folded float ``(weight, bias)``; batch statistics of ``x`` when training and not frozen."""
        w, b = self.conv.weight, self.conv.bias
        along = [1, 1, 1, 1]
        along[self.out_axis] = -1  # the BN factor runs along the weight's output-channel axis
        if b is None:
            b = torch.zeros(w.shape[self.out_axis], dtype=w.dtype, device=w.device)
        bn = self.bn
        if bn is None:
            return w, b
        gamma = bn.weight if bn.affine else torch.ones_like(b)
        beta = bn.bias if bn.affine else torch.zeros_like(b)
        if x is not None and self.training and not self.bn_frozen:
            y = self._conv(x, w, None)
            mean = y.mean(dim=(0, 2, 3))
            var = y.var(dim=(0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = y.numel() / y.shape[1]
                bn.num_batches_tracked += 1
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - m).add_(m * (mean.detach() + b.detach()))
                bn.running_var.mul_(1 - m).add_(m * var.detach() * n / max(n - 1, 1))
            sigma = torch.sqrt(var + bn.eps)
            return w * (gamma / sigma).reshape(along), beta - gamma * mean / sigma
        sigma = torch.sqrt(bn.running_var + bn.eps)
        return w * (gamma / sigma).reshape(along), beta + gamma * (b - bn.running_mean) / sigma

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.folded(x)
        if self.training:
            self.steps += 1
        return self.out_quant(_activate(self._conv(x, self._wq(w), b), self.activation))


class QConvTranspose2d(QConv2d):
    """ConvTranspose2d with folded BatchNorm, fused ReLU/ReLU6 and fake-quantized weights and output: as
    :class:`QConv2d`, with the output channels on the weight's axis 1 (``(C_in, C_out, kh, kw)``), which is where
    the per-channel scales and the BN factors go. Converted to :class:`.ir.ConvTranspose2d` (PyTorch's
    ``padding=p, output_padding=op`` is the op's ``padding = p`` and ``padding_end = p − op``)."""

    def __init__(self, conv: nn.ConvTranspose2d, bn: nn.BatchNorm2d | None = None, activation: str = "none",
                 per_channel: bool = True, ema_decay: float = 0.999, act_delay: int = 0,
                 freeze_bn_after: int | None = None) -> None:
        op, pad = tuple(conv.output_padding), tuple(conv.padding)
        bad = ([f"groups={conv.groups}"] if conv.groups != 1 else []) + (
            [f"dilation={tuple(conv.dilation)}"] if tuple(conv.dilation) != (1, 1) else []) + (
            [f"output_padding={op} > padding={pad}"] if any(o > p for o, p in zip(op, pad)) else [])
        if bad:
            raise ModelError(f"ConvTranspose2d with {', '.join(bad)} is not supported; integer-only takes groups 1, "
                             "dilation 1 and output_padding <= padding")
        super().__init__(conv, bn, activation, per_channel, ema_decay, act_delay, freeze_bn_after)

    def _conv(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        c = self.conv
        return F.conv_transpose2d(x, w, b, c.stride, c.padding, c.output_padding, 1, 1)

    out_axis = 1

    def _wq(self, w: Tensor) -> Tensor:
        return super()._wq(w.transpose(0, 1)).transpose(0, 1)


class QLinear(_QWeight):
    """Linear with fused ReLU/ReLU6 and fake-quantized weights and output.

    Args:
        linear: the float layer (parameters shared).
        activation: ``"none"``, ``"relu"`` or ``"relu6"``.
        per_channel: per-output-channel weight scales.
        ema_decay: output observer's EMA decay.
        act_delay: training steps before the output is fake-quantized.
    """

    def __init__(self, linear: nn.Linear, activation: str = "none", per_channel: bool = True,
                 ema_decay: float = 0.999, act_delay: int = 0) -> None:
        super().__init__()
        self.linear = linear
        self._setup(activation, per_channel, ema_decay, act_delay)

    def folded(self, x: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(weight, bias)`` (zeros for a missing bias)."""
        b = self.linear.bias
        w = self.linear.weight
        return w, (torch.zeros(w.shape[0], dtype=w.dtype) if b is None else b)

    def forward(self, x: Tensor) -> Tensor:
        w, b = self.folded()
        return self.out_quant(_activate(F.linear(x, self._wq(w), b), self.activation))


class QAdd(nn.Module):
    """Residual sum with fused ReLU/ReLU6 and a fake-quantized output (TFLite's quantized Add at conversion).

    Args:
        activation: ``"none"``, ``"relu"`` or ``"relu6"``.
        ema_decay: output observer's EMA decay.
        act_delay: training steps before the output is fake-quantized.
    """

    def __init__(self, activation: str = "none", ema_decay: float = 0.999, act_delay: int = 0) -> None:
        super().__init__()
        self.activation = activation
        self.out_quant = ActQuant(ema_decay, act_delay)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.out_quant(_activate(a + b, self.activation))


class QCat(nn.Module):
    """Channel concatenation with a fake-quantized output (inputs are requantized to it at conversion).

    Args:
        dim: concatenation axis (1, channels).
        ema_decay: output observer's EMA decay.
        act_delay: training steps before the output is fake-quantized.
    """

    def __init__(self, dim: int = 1, ema_decay: float = 0.999, act_delay: int = 0) -> None:
        super().__init__()
        self.dim = int(dim)
        self.out_quant = ActQuant(ema_decay, act_delay)

    def forward(self, *xs: Tensor) -> Tensor:
        return self.out_quant(torch.cat(xs, dim=self.dim))


# --------------------------------------------------------------------------------------------------- graph rewrite

#: Modules left in place (identity-like, pools, flatten); the converter maps them to integer ops.
PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
PASS_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, torch.flatten, F.dropout)
PASS_METHODS = ("view", "reshape", "flatten", "size")


def _kind(node: fx.Node, modules: dict) -> str:
    """Classify a graph node: conv, bn, linear, relu, relu6, add, cat, pass, lut, mul, move, or other."""
    more = kind_of(node, modules)  # tables, products, data movement (see .lower)
    if more is not None:
        return more
    if node.op == "call_module":
        m = modules[node.target]
        for cls, k in ((nn.Conv2d, "conv"), (nn.ConvTranspose2d, "convt"), (nn.BatchNorm2d, "bn"), (nn.Linear, "linear"), (nn.ReLU6, "relu6"),
                       (nn.ReLU, "relu"), (Add, "add"), (Concat, "cat"), (PASS_MODULES, "pass")):
            if isinstance(m, cls):
                return k
        return "other"
    if node.op == "call_function":
        t = node.target
        if t in (F.relu, torch.relu):
            return "relu"
        if t is F.relu6:
            return "relu6"
        if t in (operator.add, torch.add) and len(node.args) == 2 and not node.kwargs and all(
                isinstance(a, fx.Node) for a in node.args):
            return "add"
        if t is torch.cat:
            return "cat"
        if t in PASS_FUNCTIONS or t is getattr:
            return "pass"
        return "other"
    if node.op == "call_method":
        if node.target == "relu":
            return "relu"
        return "pass" if node.target in PASS_METHODS else "other"
    return node.op  # placeholder, output, get_attr


def _describe(node: fx.Node, modules: dict) -> str:
    if node.op == "call_module":
        return f"layer {node.target!r} of type {type(modules[node.target]).__name__}"
    name = getattr(node.target, "__name__", str(node.target))
    return f"operation {node.name!r} ({node.op} {name})"


def _sole_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def prepare(model: nn.Module, *, per_channel: bool | str = True, ema_decay: float = 0.999, act_delay: int = 0,
            freeze_bn_after: int | None = None) -> fx.GraphModule:
    """Trace ``model`` and return a ``GraphModule`` with BN folded, activations fused and fake quantization inserted.

    The float parameters are shared with ``model`` (not copied). See the module docstring for what is matched.

    Args:
        model: a float model (traceable by :func:`compactnn.graph.trace`).
        per_channel: per-output-channel weight scales (``True``), one per tensor (``False``), or ``"conv"``:
            per channel for convolutions and per tensor for linear layers, as TFLite's int8 spec has it
            (Conv2D/DepthwiseConv2D per axis, FullyConnected per tensor).
        ema_decay: EMA decay of the activation min/max.
        act_delay: training steps before activations are fake-quantized.
        freeze_bn_after: training steps after which folded BN layers use running statistics (None: never).

    Raises:
        ModelError: the model cannot be traced, or has a layer integer-only conversion does not support (named).
    """
    if per_channel not in (True, False, "conv"):
        raise ModelError(f"per_channel must be true, false or 'conv', got {per_channel!r}")
    conv_pc, linear_pc = per_channel in (True, "conv"), per_channel is True

    gm = trace(model, "integer-only")  # the marker modules (Add, Concat) stay leaves, so their Q-modules keep names
    modules = dict(gm.named_modules())
    graph = gm.graph
    kw = dict(ema_decay=ema_decay, act_delay=act_delay)
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ModelError(f"integer-only conversion needs a model with one input, got {len(placeholders)}")
    fn_count = 0
    done: set[fx.Node] = set()

    def act_after(node: fx.Node) -> tuple[fx.Node, str]:
        user = _sole_user(node)
        if user is not None and _kind(user, modules) in ("relu", "relu6"):
            done.add(user)
            return user, _kind(user, modules)
        return node, "none"

    def install(last: fx.Node, first: fx.Node, path: str, module: nn.Module, args: tuple) -> None:
        gm.add_submodule(path, module)
        with graph.inserting_after(last):
            new = graph.call_module(path, args)
        last.replace_all_uses_with(new)
        new.args = args  # replace_all_uses_with must not rewrite the new node's own inputs

    for node in list(graph.nodes):
        if node in done or (not node.users and node.op != "output"):
            continue
        kind = _kind(node, modules)
        if kind == "placeholder":
            gm.add_submodule("input_quant", QuantInput(**kw))
            with graph.inserting_after(node):
                q = graph.call_module("input_quant", (node,))
            node.replace_all_uses_with(q)
            q.args = (node,)
        elif kind in ("conv", "convt"):
            bn = _sole_user(node)
            bn_mod = None
            last = node
            if bn is not None and _kind(bn, modules) == "bn":
                bn_mod, last = modules[bn.target], bn
                done.add(bn)
            last, act = act_after(last)
            cls = QConv2d if kind == "conv" else QConvTranspose2d
            q = cls(modules[node.target], bn_mod, act, conv_pc, freeze_bn_after=freeze_bn_after, **kw)
            install(last, node, node.target, q, node.args)
        elif kind == "linear":
            last, act = act_after(node)
            install(last, node, node.target, QLinear(modules[node.target], act, linear_pc, **kw), node.args)
        elif kind == "add":
            last, act = act_after(node)
            if node.op == "call_module":
                path = node.target
            else:
                path, fn_count = f"add_{fn_count}", fn_count + 1
            install(last, node, path, QAdd(act, **kw), tuple(node.args))
        elif kind == "cat":
            if node.op == "call_module":  # the Concat marker: inputs are its arguments
                tensors, dim, path = node.args, modules[node.target].dim, node.target
            else:
                tensors = node.args[0]
                dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                path, fn_count = f"cat_{fn_count}", fn_count + 1
            if dim != 1:
                raise ModelError(f"{_describe(node, modules)} concatenates along dim {dim}; only channels (1)")
            install(node, node, path, QCat(1, **kw), tuple(tensors))
        elif kind == "bn":
            raise ModelError(f"{_describe(node, modules)} does not follow a Conv2d or ConvTranspose2d; integer-only "
                             "folds BN into the conv before it")
        elif kind in ("relu", "relu6", "lut"):  # a ReLU that cannot be fused, or a function: a table of codes
            fn, fname, x = lut_from_node(node, modules)
            if node.op == "call_module":
                path = node.target
            else:
                path, fn_count = f"lut_{fn_count}", fn_count + 1
            install(node, node, path, QLut(fn, fname, **kw), (x,))
        elif kind == "softmax":
            if node.op == "call_module":
                path = node.target
            else:
                path, fn_count = f"softmax_{fn_count}", fn_count + 1
            install(node, node, path, QSoftmax(softmax_dim(node, modules), **kw), (node.args[0],))
        elif kind == "mul":
            last, act = act_after(node)
            path, fn_count = f"mul_{fn_count}", fn_count + 1
            install(last, node, path, QMul(act, **kw), tuple(node.args))
        elif kind == "other":
            where = source_line(node)
            raise ModelError(f"{_describe(node, modules)}{f' (at {where})' if where else ''} is not supported by "
                             "integer-only conversion; supported: Conv2d/ConvTranspose2d(+BatchNorm2d)(+ReLU/ReLU6), "
                             "Linear(+ReLU/ReLU6), Add, cat, mul, max/avg pools, sigmoid/tanh/hardswish/"
                             "hardsigmoid/silu/gelu/leaky_relu, permute/transpose, reshape/view/flatten/squeeze, "
                             "slicing, constant zero pad, softmax (last axis); IntegerOnly(mixed=True) leaves the rest "
                             "in float")
    graph.eliminate_dead_code()
    gm.delete_all_unused_submodules()
    gm.recompile()
    return gm


def qmodules(model: nn.Module) -> list[nn.Module]:
    """Every :class:`.fakequant.ActQuant` (observers) in ``model``."""
    return [m for m in model.modules() if isinstance(m, ActQuant)]


def set_fake_quant(model: nn.Module, enabled: bool = True, weights: bool | None = None) -> None:
    """Switch activation fake quantization (and weight fake quantization, if ``weights`` is given) on or off.

    Args:
        model: a prepared model.
        enabled: activation fake quantization on/off.
        weights: weight fake quantization on/off; None leaves it as it is.
    """
    for m in model.modules():
        if isinstance(m, ActQuant):
            m.enabled = bool(enabled)
        if weights is not None and isinstance(m, _QWeight):
            m.quantize_weights = bool(weights)
