"""Count multiply-accumulates (MACs) by running the real module once, with forward hooks.

What is counted (the MACs of one forward pass at batch 1):

- ``nn.Linear``: ``in_features * out_features`` per input row; an input with more than 2 dims counts every position
  (``output.numel() * in_features``).
- ``nn.Conv1d/2d/3d``: ``output.numel() * (in_channels / groups) * prod(kernel_size)`` (stride, padding and
  dilation act through the output size).
- ``nn.ConvTranspose1d/2d/3d``: every input element is scattered to ``(out_channels / groups) * prod(kernel_size)``
  outputs, so ``input.numel() * (out_channels / groups) * prod(kernel_size)``.
- ``nn.LSTM``/``nn.GRU``/``nn.RNN``: per layer and direction, ``steps * gates * H * (I + H_r)`` (``gates`` 4/3/1,
  ``I`` the layer's input size, ``H_r`` the recurrent size: ``proj_size`` when set, then plus ``steps * H *
  proj_size`` for the projection); ``steps`` = sequence length x batch.
- ``nn.MultiheadAttention``: its four projections plus ``Q K^T`` and ``A V`` (``2 * B * L_q * L_k * E``); torch's
  fused eval-mode path hides these products from the flop counter, so they are counted by formula.
- Any module whose class defines ``macs(self, input, output) -> int`` (``input`` is the tuple of positional inputs,
  as forward hooks receive it) is asked instead; its submodules are then not counted again.
- Every other matrix product is counted by running the forward under torch's ``FlopCounterMode`` (``mm``, ``addmm``,
  ``bmm``, ``matmul``, ``einsum``, attention, convolutions in functional form) and given to the innermost module that
  ran it outside the layers above: ``nn.MultiheadAttention``'s input projection and its attention products, a user
  layer computing ``F.linear(x, self.weight)``, ``q @ k.transpose(-2, -1)`` in a hand-written attention. Products
  at the top level count under the name ``""``.
- Everything else counts 0: normalization, activations, pooling, embeddings.

Zero (pruned) weights still count: the number is what a dense kernel does.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigError, ModelError
from ..graph.modules import eval_mode


def _has_macs_method(module: nn.Module) -> bool:
    return callable(getattr(type(module), "macs", None))


def layer_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module, bool]]:
    """Yield ``(name, module, whole_subtree)`` for every layer of ``model``, in ``named_modules()`` order.

    A layer is a module that owns parameters directly (``Linear``, ``Conv2d``, ``BatchNorm2d``...), or a module
    whose class defines ``macs``; such a module stands for its whole subtree (``whole_subtree=True``: its
    parameters are all those below it) and its descendants are not listed.
    """
    folded: list[str] = []
    for name, module in model.named_modules():
        if any(name == f or name.startswith(f + ".") or f == "" for f in folded):
            continue
        if _has_macs_method(module):
            folded.append(name)
            yield name, module, True
        elif any(True for _ in module.parameters(recurse=False)):
            yield name, module, False


def _conv_macs(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    kernel = math.prod(module.kernel_size)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return inputs[0].numel() * (module.out_channels // module.groups) * kernel
    return output.numel() * (module.in_channels // module.groups) * kernel


_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def _rnn_macs(module: nn.RNNBase, inputs: tuple) -> int:
    x = inputs[0]
    data = x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x
    steps = data.numel() // module.input_size
    gates, hidden = _GATES[module.mode], module.hidden_size
    proj = getattr(module, "proj_size", 0) or 0
    recurrent = proj or hidden
    dirs = 2 if module.bidirectional else 1
    total = 0
    for layer in range(module.num_layers):
        size_in = module.input_size if layer == 0 else recurrent * dirs
        total += dirs * steps * (gates * hidden * (size_in + recurrent) + hidden * proj)
    return total


def _mha_macs(module: nn.MultiheadAttention, inputs: tuple) -> int:
    query = inputs[0]
    key = inputs[1] if len(inputs) > 1 else query
    value = inputs[2] if len(inputs) > 2 else key
    embed = module.embed_dim
    rows_q, rows_k, rows_v = query.numel() // embed, key.numel() // module.kdim, value.numel() // module.vdim
    batch = 1 if query.dim() == 2 else query.shape[0 if module.batch_first else 1]
    len_q, len_k = rows_q // batch, rows_k // batch
    projections = rows_q * embed * embed * 2 + rows_k * module.kdim * embed + rows_v * module.vdim * embed
    return projections + 2 * batch * len_q * len_k * embed


def _formula(module: nn.Module) -> bool:
    """Whether ``module``'s MACs come from a formula (or its own ``macs``) rather than the flop counter."""
    return _has_macs_method(module) or isinstance(
        module, (nn.Linear, nn.modules.conv._ConvNd, nn.RNNBase, nn.MultiheadAttention))


def module_macs(module: nn.Module, inputs: tuple, output) -> int:
    """MACs of one call of ``module`` given the inputs and output its forward hook saw (see the module docstring);
    0 for a module that no formula covers (:func:`count_macs` counts those with the flop counter)."""
    if _has_macs_method(module):
        return int(module.macs(inputs, output))
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, (nn.modules.conv._ConvNd)):
        return _conv_macs(module, inputs, output)
    if isinstance(module, nn.RNNBase):
        return _rnn_macs(module, inputs)
    if isinstance(module, nn.MultiheadAttention):
        return _mha_macs(module, inputs)
    return 0


def example_input(model: nn.Module, input_shape, batch_size: int = 1, seed: int = 0) -> torch.Tensor:
    """A random float input of shape ``(batch_size, *input_shape)`` on the device and float dtype of ``model``.

    Raises ConfigError if ``input_shape`` is not a tuple of positive ints.
    """
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if not shape or any(s <= 0 for s in shape) or list(shape) != list(input_shape):
        raise ConfigError(f"input_shape must be a tuple of positive ints like (1, 28, 28), got {input_shape!r}")
    device, dtype = torch.device("cpu"), torch.float32
    for t in list(model.parameters()) + list(model.buffers()):
        device = t.device
        if t.is_floating_point():
            dtype = t.dtype
            break
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch_size, *shape), generator=gen).to(device=device, dtype=dtype)


def run_forward(model: nn.Module, x: torch.Tensor):
    """Run ``model(x)`` with ModelError (one line) instead of the raw error when the input does not fit."""
    try:
        return model(x)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelError(
            f"model forward failed on an input of shape {tuple(x.shape)} ({first}); "
            "pass the input_shape (C, H, W) the model was built for"
        ) from err


def count_macs(model: nn.Module, input_shape) -> dict[str, int]:
    """MACs of one forward pass at batch 1, per layer (see :func:`layer_modules`), measured with forward hooks.

    Args:
        model: the module to measure. It is run once in eval mode under ``torch.inference_mode``; the train/eval
            flag of every submodule is restored afterwards.
        input_shape: the shape of one example without the batch dim, e.g. the data's ``(C, H, W)``.

    Returns:
        ``{layer_name: macs}`` for every layer; a layer called several times sums its calls, a layer never called
        counts 0. Layers with no weight products (``BatchNorm``...) count 0. Sum the values for the model's total.
    """
    x = example_input(model, input_shape)
    counts: dict[str, int] = {}
    handles = []
    for name, module, _ in layer_modules(model):
        counts[name] = 0

        def hook(mod, inputs, output, _name=name):
            counts[_name] += module_macs(mod, inputs, output)

        handles.append(module.register_forward_hook(hook))
    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    try:
        with eval_mode(model), torch.inference_mode(), counter:
            run_forward(model, x)
    finally:
        for h in handles:
            h.remove()
    _add_functional(model, counts, counter)
    return counts


def _extra_formulas() -> dict:
    """Ops torch's flop counter has no formula for: CPU's fused attention (``F.scaled_dot_product_attention`` on
    CPU), counted as its two products like the GPU kernels (``torch.utils.flop_counter.sdpa_flop``)."""
    from torch.utils import flop_counter

    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    count = getattr(flop_counter, "sdpa_flop_count", None)
    if op is None or count is None:
        return {}

    def formula(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return count(query_shape, key_shape, value_shape)

    return {op: formula}


def _add_functional(model: nn.Module, counts: dict[str, int], counter: FlopCounterMode) -> None:
    """Give the products the formulas did not count to the innermost module that ran them (see the docstring)."""
    root = type(model).__name__
    flops = {k: sum(v.values()) for k, v in counter.get_flop_counts().items()}

    def inclusive(name: str) -> int:
        return flops.get(f"{root}.{name}" if name else root, 0)

    def covered(name: str, module: nn.Module) -> int:
        """Flops under ``name``: its inclusive count, or, for a container that never ran itself (a ModuleList),
        its children's (else a TransformerEncoder's layers would count again as its own)."""
        key = f"{root}.{name}" if name else root
        if key in flops:
            return flops[key]
        return sum(covered(f"{name}.{c}", m) for c, m in module.named_children())

    folded: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(f + ".") for f in folded):
            continue
        if _formula(module):
            folded.append(name)
            continue
        children = sum(covered(f"{name}.{c}" if name else c, m) for c, m in module.named_children())
        own = (inclusive(name) - children) // 2  # flops are 2 per multiply-accumulate
        if own > 0:
            counts[name] = counts.get(name, 0) + own
