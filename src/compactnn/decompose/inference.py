"""The inference form of a factorized model: every factorized layer replaced by a frozen module that runs its planned
evaluation (:mod:`.plan`) with plain tensor ops, so the model scripts (TorchScript), compiles (``torch.compile``) and
exports to ONNX.

- Linear layers (:class:`TRLinear`, :class:`TTLinear`, :class:`BTLinear` and the rebuilt variants of the clip models)
  become, for the ``dense`` plan, :class:`FrozenDenseLinear` (an ``nn.Linear`` with the rebuilt weight: it runs
  exactly as the dense layer does); for the ``merged`` and ``factorized`` plans, :class:`FrozenLinear`: a
  ``torch.fx`` graph of the eager planner's ops (:func:`.plan.run_linear`: ``matmul`` / ``bmm`` over the cached,
  pre-permuted cores, ``permute`` / ``reshape`` only where the layout needs them, the bias fused into the last
  product by ``addmm`` when the result is already in output order; ONNX: MatMul, Gemm, Transpose, Reshape).
- Convolutions (:class:`TRConv2d`, :class:`TuckerConv2d`) become :class:`FrozenConv2d` (an ``nn.Conv2d``) for a
  one-conv plan, else an ``nn.Sequential`` of ``nn.Conv2d`` (1x1 / grouped / 1x1 convs with merged cores).

The plan of each layer is the one the planner picks for the layer's input at ``batch_size`` (recorded by one dry
run on zeros of ``(batch_size, *input_shape)``); any batch size runs, the plan is just tuned for that one. Frozen
modules hold copies (buffers, no gradients): training the result does not train the cores, and changing the cores
of the original model does not change it: call :func:`inference_form` again.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import fx, nn

from ..errors import ModelError
from ..graph import set_module
from ..pack.spec import packable
from .plan import Choice, PlannedConv, PlannedLinear, Program, compile_program


def _program_graph(program: Program, in_features: int, out_features: int, bias: torch.Tensor) -> fx.GraphModule:
    """A GraphModule computing :func:`.plan.run_linear` (bias included) on a ``(rows, in_features)`` input: the
    same products, permutes and reshapes, and no reshape where the eager path has none."""
    root = nn.Module()
    g = fx.Graph()
    t = g.placeholder("x")  # (rows, in_features)
    root.register_buffer("bias", bias.detach().clone())
    last = len(program.steps) - 1
    cols = in_features  # the columns of t while it is 2-D (then a reshape to (-1, cols) is not needed)
    for k, (c, s) in enumerate(zip(program.consts, program.steps)):
        root.register_buffer(f"c{k}", c.detach().clone())
        const = g.get_attr(f"c{k}")
        if not s["ident"]:
            a = g.call_method("permute", (g.call_method("reshape", (t, tuple(s["prev"]))), tuple(s["perm"])))
        else:
            a = t
        if s["nb"] > 1:
            t = g.call_function(torch.bmm, (g.call_method("reshape", (a, (s["nb"], -1, s["nk"]))), const))
            t, cols = g.call_method("reshape", (t, tuple(s["shape"]))), None
            continue
        a2 = a if s["ident"] and cols == s["nk"] else g.call_method("reshape", (a, (-1, s["nk"])))
        if k == last and program.flat:
            t = g.call_function(torch.addmm, (g.get_attr("bias"), a2, const))
        else:
            t = g.call_function(torch.mm, (a2, const))
        cols = c.shape[-1]
    if not program.flat:
        t = g.call_method("reshape", (t, tuple(program.steps[-1]["shape"])))
        if program.out_perm != list(range(len(program.out_perm))):
            t = g.call_method("permute", (t, tuple(program.out_perm)))
        t = g.call_function(torch.add, (g.call_method("reshape", (t, (-1, out_features))), g.get_attr("bias")))
    g.output(t)
    return fx.GraphModule(root, g, class_name="PlannedContraction")


@packable
class FrozenLinear(nn.Module):
    """A factorized linear layer frozen to its ``merged`` or ``factorized`` plan (see the module docstring):
    ``contraction`` is the graph of the plan's products, the bias included. Input ``(..., in_features)``, output
    ``(..., out_features)``."""

    def __init__(self, in_features: int, out_features: int, plan: str, contraction: nn.Module) -> None:
        super().__init__()
        self.in_features, self.out_features, self.plan = int(in_features), int(out_features), plan
        self.contraction = contraction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the graph's forward is called directly: GraphModule.__call__ adds a wrapper's work to every call
        if x.dim() == 2:
            return self.contraction.forward(x)
        lead = list(x.shape[:-1])
        return self.contraction.forward(x.reshape(-1, self.in_features)).reshape(lead + [self.out_features])

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, plan={self.plan!r}"


@packable
class FrozenDenseLinear(nn.Linear):
    """A factorized linear layer frozen to its ``dense`` plan: an ``nn.Linear`` holding the rebuilt weight, so it
    runs exactly as the dense layer does (no work of its own)."""

    plan = "dense"


def freeze_linear(layer: nn.Module, rows: int, mode: str | None = None) -> nn.Module:
    """:class:`FrozenDenseLinear` or :class:`FrozenLinear` of a planned linear layer for ``rows`` input rows
    (``mode``: force a plan)."""
    choice: Choice = layer.plan_for(rows, mode)
    ops = layer.network_operands()
    with torch.no_grad():
        bias = (layer.bias.detach().clone() if layer.bias is not None
                else torch.zeros(layer.out_features, dtype=ops[0].dtype, device=ops[0].device))
        if choice.plan == "dense":
            w = layer.full_weight().detach()
            out = FrozenDenseLinear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                                    dtype=w.dtype, device=w.device)
            out.weight.copy_(w)
            if layer.bias is not None:
                out.bias.copy_(bias)
            return out.requires_grad_(False)
        path = layer.planner().candidates(layer, rows)[choice.plan]
        program = compile_program(path, layer.planner().network(layer), [None, *[o.detach() for o in ops]])
    return FrozenLinear(layer.in_features, layer.out_features, choice.plan,
                        _program_graph(program, layer.in_features, layer.out_features, bias))


@packable
class FoldedConv(nn.Module):
    """An ``nn.Conv2d`` applied to each of ``fold`` channel groups of its input as one conv over a ``fold`` times
    larger batch (:class:`.plan.ConvStep` with ``fold``)."""

    def __init__(self, conv: nn.Conv2d, fold: int) -> None:
        super().__init__()
        self.conv, self.fold = conv, int(fold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.conv(x.reshape(b * self.fold, c // self.fold, h, w))
        return y.reshape(b, self.fold * y.shape[1], y.shape[2], y.shape[3])


@packable
class FrozenConv(nn.Sequential):
    """A factorized convolution frozen to one plan: its convs in order (``plan`` names the plan)."""

    def __init__(self, convs: Sequence[nn.Module], plan: str) -> None:
        super().__init__(*convs)
        self.plan = plan


@packable
class FrozenConv2d(nn.Conv2d):
    """A factorized convolution frozen to a one-conv plan (``dense``): an ``nn.Conv2d``, run exactly as the dense
    layer is (``plan`` names the plan)."""

    plan = "dense"


def freeze_conv(layer: nn.Module, x_shape: Sequence[int], mode: str | None = None) -> nn.Module:
    """:class:`FrozenConv2d` (one-conv plans) or :class:`FrozenConv` of a planned convolution for inputs of
    ``x_shape`` ``(B, C, H, W)``."""
    choice = layer.plan_for(x_shape, mode)
    convs = []
    steps = layer.conv_steps(choice.plan)
    with torch.no_grad():
        for s in steps:
            w = s.weight.detach()
            cls = FrozenConv2d if len(steps) == 1 and s.fold == 1 else nn.Conv2d
            conv = cls(w.shape[1] * s.groups, w.shape[0], tuple(w.shape[2:]), stride=s.stride, padding=s.padding,
                       dilation=s.dilation, groups=s.groups, bias=s.bias is not None)
            conv = conv.to(dtype=w.dtype, device=w.device)
            conv.weight.copy_(w)
            if s.bias is not None:
                conv.bias.copy_(s.bias.detach())
            conv.requires_grad_(False)
            convs.append(FoldedConv(conv, s.fold) if s.fold > 1 else conv)
    if len(convs) == 1 and isinstance(convs[0], FrozenConv2d):
        convs[0].plan = choice.plan
        return convs[0]
    return FrozenConv(convs, choice.plan)


#: The frozen layer classes (each has ``plan``).
FROZEN = (FrozenLinear, FrozenDenseLinear, FrozenConv, FrozenConv2d)


def record_inputs(model: nn.Module, input_shape: Sequence[int], batch_size: int) -> dict[str, tuple]:
    """Input shape of every planned layer in one dry run on zeros ``(batch_size, *input_shape)``."""
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, PlannedLinear):
            def hook(mod, args, name=name):
                shapes.setdefault(name, tuple(args[0].shape))  # returns None: the input is left as it is

            hooks.append(m.register_forward_pre_hook(hook))
    param = next(iter(model.parameters()), None)
    x = torch.zeros((batch_size, *input_shape), dtype=param.dtype if param is not None else torch.float32,
                    device=param.device if param is not None else None)
    try:
        with torch.no_grad():
            model(x)
    except ModelError:
        raise
    except Exception as err:  # noqa: BLE001
        raise ModelError(f"dry run of the model on input {tuple(input_shape)} failed ({str(err).splitlines()[0]}); "
                         "pass the input_shape the model takes") from None
    finally:
        for h in hooks:
            h.remove()
    return shapes


def inference_form(model: nn.Module, input_shape: Sequence[int] | None = None, batch_size: int = 1,
                   mode: str | None = None) -> nn.Module:
    """A copy of ``model`` in eval mode with every factorized layer frozen to its planned evaluation.

    Args:
        model: the model (left untouched).
        input_shape: one example's shape without the batch dim; default ``model.input_shape`` when the model has
            one (the registry models do).
        batch_size: the batch size the plans are chosen for.
        mode: force a plan (``"dense"``, ``"merged"``, ``"factorized"``) on every layer that has it; default each
            layer's ``plan_mode`` (``"auto"``: the planner's choice).

    Returns:
        The frozen copy; ``plans(frozen)`` lists the plan of each frozen layer.

    Raises:
        ModelError: no input shape, or the dry run fails.
    """
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
        if input_shape is None:
            raise ModelError("inference_form needs input_shape (one example's shape without the batch dim), e.g. "
                             "(1, 28, 28)")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ModelError(f"batch_size must be a positive int, got {batch_size!r}")
    out = copy.deepcopy(model).eval()
    shapes = record_inputs(out, input_shape, batch_size)
    for name, shape in shapes.items():
        layer = out.get_submodule(name)
        if isinstance(layer, PlannedConv):
            new = freeze_conv(layer, shape, mode)
        else:
            new = freeze_linear(layer, math.prod(shape[:-1]), mode)
        set_module(out, name, new)
    return out


def plans(model: nn.Module) -> dict[str, str]:
    """``{layer name: plan}`` of the frozen layers of an inference form (and ``last_plan`` of planned layers that
    ran)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, FROZEN):
            out[name] = m.plan
        elif isinstance(m, PlannedLinear) and getattr(m, "last_plan", None):
            out[name] = m.last_plan
    return out


__all__ = ["inference_form", "plans", "FrozenLinear", "FrozenDenseLinear", "FrozenConv", "FrozenConv2d", "FROZEN",
           "freeze_linear", "freeze_conv", "record_inputs"]
