"""NISP: Neuron Importance Score Propagation (Yu et al., CVPR 2018), with channels removed physically.

1. **Final response layer (FRL) importance by Inf-FS** (Roffo et al. 2015) over the FRL responses (the input
   features of the last Linear) on a subset of the training set: ``A_ij = alpha*max(sigma_i, sigma_j) +
   (1 - alpha)*(1 - |Spearman_ij|)``, ``r = 0.9 / rho(A)``, ``S = (I - rA)^-1 - I``, score ``= S @ 1``.
   ``alpha = 0.5`` is **unverified** (the paper does not give it). Our choices: ``sigma`` is the per-feature std
   (ddof 1), and the matrix ``max(sigma_i, sigma_j)`` is min-max normalized to [0, 1]; a constant feature's
   undefined correlation term counts 0 (fully redundant). Spearman = Pearson on ranks (``scipy.stats.rankdata``).
2. **Backward propagation** ``s_k = |W_{k+1}|^T s_{k+1}`` (biases ignored), on per-position score maps:
   Linear ``s @ |W|``; Conv ``conv_transpose2d(s, |W|)`` with the conv's stride/padding/dilation/groups; BN scales
   by ``|gamma / sqrt(var + eps)|`` (**our choice**, the paper does not say); activations and dropout pass; average
   pooling is linear (its adjoint); max pooling spreads each score uniformly over its window (**unverified**: the
   adjoint of the matching average pool); flatten reshapes; an add gives its score to both inputs (so a shared input
   sums both paths); cat splits; indexing and mean/sum use their adjoints (the score goes back where it was read);
   an elementwise product (an SE gate) gives its score to both factors, summed over the dims each is broadcast along
   (**our choice**, as an add: the product is not linear in both). Units inside a module (:mod:`.units`): a
   recurrent layer's hidden unit scores the sum of its positions in the outputs it makes (every step, both
   directions, ``h_n``), and the score it receives spreads evenly to its input (a recurrence has no ``|W|^T``);
   an attention head scores ``|W_o|^T s`` summed over its ``head_dim`` features, ``s`` the score of the attention's
   output and ``W_o`` its output projection (NISP's rule through the last linear map of the head); in torch's
   TransformerEncoder the stream's score at the encoder output is used for every layer (**our choice**: the
   residual stream carries it; LayerNorm is treated as passing it), through ``out_proj`` for heads and ``linear2``
   for MLP units.
3. **Pruning.** A channel's score is its producer's output score map summed over positions; groups tied by residual
   adds sum their producers' scores. These scores are an importance measure (:class:`NISPImportance`) of the one
   structured pruner, :func:`.structured.prune_structured`, which removes the lowest at a per-group ratio or within
   a global budget of channels or MACs that it allocates across layers itself (``scope="global"``), then fine-tunes.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata
from torch import Tensor, fx, nn

from ..api import register_method
from ..config import Range
from ..errors import ModelError
from ..graph import Add, eval_mode
from ..layers import Target, require_data
from .graph import (ADD_FUNCTIONS, CAT_FUNCTIONS, CONV, MUL_FUNCTIONS, NORM, PASS_FUNCTIONS, PASS_METHODS,
                    PASS_MODULES, REDUCE_FUNCTIONS, REDUCE_METHODS, DependencyGraph)
from .structured import Structured, prune_structured


@dataclasses.dataclass(frozen=True)
class NISP(Structured):
    """NISP structured pruning with physical channel removal (budget settings: :class:`.structured.Structured`).

    Args:
        alpha: Inf-FS mix of the std term and the correlation term, in [0, 1] (0.5, unverified).
        samples: training examples whose final-response-layer features feed Inf-FS (at least 2).
    """

    method = "nisp"
    description = "NISP (Yu et al. 2018): Inf-FS importance propagated back; channels removed for real, fine-tuned"
    example = {"sparsity": 0.5, "samples": 64, "finetune": {"epochs": 1}}

    alpha: Annotated[float, Range(0.0, 1.0)] = 0.5
    samples: Annotated[int, Range(2, 1_000_000)] = 1000


def spearman(x: np.ndarray) -> np.ndarray:
    """Spearman correlation matrix of the columns of ``x`` (N, d): Pearson correlation of average ranks.

    Columns with no variance give NaN rows/columns.
    """
    ranks = rankdata(np.asarray(x, dtype=np.float64), axis=0)
    ranks = ranks - ranks.mean(0)
    norm = np.sqrt((ranks**2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks.T @ ranks) / np.outer(norm, norm)


def inf_fs(x: np.ndarray, alpha: float = 0.5, factor: float = 0.9) -> np.ndarray:
    """Inf-FS feature scores of the columns of ``x`` (N samples, d features); higher = more important.

    Args:
        x: responses, one row per example.
        alpha: weight of the std term (``1 - alpha`` weights ``1 - |Spearman|``).
        factor: ``r = factor / rho(A)`` (0.9 in Inf-FS), so the series ``sum (rA)^k`` converges.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ModelError(f"Inf-FS needs a 2-D array of at least 2 samples, got shape {x.shape}")
    std = x.std(0, ddof=1)
    sig = np.maximum.outer(std, std)
    sig = sig - sig.min()
    if sig.max() > 0:
        sig = sig / sig.max()
    corr = 1.0 - np.abs(spearman(x))
    corr[np.isnan(corr)] = 0.0
    a = alpha * sig + (1.0 - alpha) * corr
    rho = float(np.max(np.abs(np.linalg.eigvalsh(a))))
    d = a.shape[0]
    if rho == 0.0:
        return np.zeros(d)
    s = np.linalg.inv(np.eye(d) - (factor / rho) * a) - np.eye(d)
    return s.sum(1)


def _adjoint(fn, in_shape: tuple[int, ...], s: Tensor) -> Tensor:
    """``J^T s`` of the linear map ``fn`` at an input of ``in_shape`` (autograd VJP)."""
    x = torch.zeros(in_shape, dtype=s.dtype, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(fn(x), x, grad_outputs=s)
    return grad


def _pool_args(node: fx.Node, names: tuple[str, ...], defaults: tuple) -> list:
    vals = list(node.args[1:]) + [None] * len(names)
    return [node.kwargs.get(n, vals[i] if vals[i] is not None else defaults[i]) for i, n in enumerate(names)]


def _uniform_pool(mod_or_node: Any, dims: int, in_shape, s: Tensor) -> Tensor:
    """Max pooling spreads each score uniformly over its window: the adjoint of the matching average pool."""
    avg = F.avg_pool1d if dims == 1 else F.avg_pool2d
    if isinstance(mod_or_node, nn.Module):
        k, st, p, dil, ceil = (mod_or_node.kernel_size, mod_or_node.stride, mod_or_node.padding,
                               mod_or_node.dilation, mod_or_node.ceil_mode)
    else:
        k, st, p, dil, ceil = _pool_args(mod_or_node, ("kernel_size", "stride", "padding", "dilation", "ceil_mode"),
                                         (None, None, 0, 1, False))
    if any(d != 1 for d in np.atleast_1d(dil)):
        raise ModelError("NISP: max pooling with dilation is not supported; use dilation=1")
    return _adjoint(lambda x: avg(x, k, st or k, p, ceil_mode=ceil, count_include_pad=False), in_shape, s)


def _conv_adjoint(mod: nn.Module, in_shape, s: Tensor) -> Tensor:
    w = mod.weight.detach().abs().to(s.dtype)
    if isinstance(mod.padding, str):  # 'same'/'valid': let autograd find the transposed conv
        fn = F.conv1d if isinstance(mod, nn.Conv1d) else F.conv2d
        return _adjoint(lambda x: fn(x, w, None, mod.stride, mod.padding, mod.dilation, mod.groups), in_shape, s)
    spatial = in_shape[2:]
    out_pad = [spatial[i] - ((s.shape[2 + i] - 1) * mod.stride[i] - 2 * mod.padding[i]
                             + mod.dilation[i] * (mod.kernel_size[i] - 1) + 1) for i in range(len(spatial))]
    fn = F.conv_transpose1d if isinstance(mod, nn.Conv1d) else F.conv_transpose2d
    return fn(s, w, None, mod.stride, mod.padding, tuple(out_pad), mod.groups, mod.dilation)


def _module_rule(mod: nn.Module, in_shape, s: Tensor) -> Tensor:
    if isinstance(mod, nn.Linear):
        return s @ mod.weight.detach().abs().to(s.dtype)
    if isinstance(mod, CONV):
        return _conv_adjoint(mod, in_shape, s)
    if isinstance(mod, NORM):
        var = mod.running_var if mod.running_var is not None else torch.ones(s.shape[1])
        gamma = mod.weight.detach() if mod.affine else torch.ones_like(var)
        scale = (gamma / torch.sqrt(var + mod.eps)).abs().to(s.dtype)
        return s * scale.reshape(1, -1, *([1] * (s.dim() - 2)))
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
        return _uniform_pool(mod, 1 if isinstance(mod, nn.MaxPool1d) else 2, in_shape, s)
    if isinstance(mod, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        avg = F.adaptive_avg_pool1d if isinstance(mod, nn.AdaptiveMaxPool1d) else F.adaptive_avg_pool2d
        return _adjoint(lambda x: avg(x, mod.output_size), in_shape, s)
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return _adjoint(mod, in_shape, s)
    if isinstance(mod, nn.Flatten):
        return s.reshape(in_shape)
    if isinstance(mod, PASS_MODULES):
        return s  # activations, dropout, identity
    if isinstance(mod, (nn.TransformerEncoder, nn.TransformerEncoderLayer)) and tuple(s.shape) == tuple(in_shape):
        return s  # the residual stream carries the score through (our choice; its units are scored inside)
    return _spread(s, in_shape)


def _spread(s: Tensor, in_shape) -> Tensor:
    """An op the graph keeps whole (a user layer, a product, an LSTM): its channels are pinned, and the score it
    receives passes to its input spread evenly, so the layers before it still get a share of the importance. A
    channel-keeping op whose arguments the dry run did not record (a pool with a size computed in ``forward``)
    spreads each channel's score over that channel only."""
    in_shape = tuple(in_shape)
    if s.dim() >= 2 and len(in_shape) >= 2 and s.shape[:2] == in_shape[:2]:
        per_channel = s.reshape(*s.shape[:2], -1).sum(-1) / max(1, int(np.prod(in_shape[2:])))
        return per_channel.reshape(*in_shape[:2], *([1] * (len(in_shape) - 2))).expand(in_shape).clone()
    return torch.full(in_shape, float(s.sum()) / max(1, int(np.prod(in_shape))), dtype=s.dtype)


def propagate(graph: DependencyGraph, start: fx.Node, score: Tensor) -> dict[str, Tensor]:
    """Propagate ``score`` (one per feature of node ``start``) backwards; returns ``{node name: score map}``.

    Each map has the node's shape at batch 1 (float64). Nodes that do not feed ``start`` get no entry.
    """
    shape = graph.shape(start)
    scores: dict[str, Tensor] = {start.name: score.detach().double().reshape(shape)}
    modules = dict(graph.gm.named_modules())
    nodes = list(graph.gm.graph.nodes)
    for node in reversed(nodes[: nodes.index(start) + 1]):
        s = scores.get(node.name)
        if s is None or node.op in ("placeholder", "get_attr"):
            continue
        if node.target is operator.getitem and isinstance(node.args[0], fx.Node) and node.args[0].name in graph.tuples:
            tup = node.args[0].name  # an item of an LSTM's / attention's outputs: its total goes to the module
            scores[tup] = scores.get(tup, 0.0) + s.sum()
            continue
        args = [a for a in node.all_input_nodes if a.name in graph.node_ids]
        if not args:
            continue
        shapes = [graph.shape(a) for a in args]
        target = node.target
        if node.op == "call_module":
            mod = modules[target]
            outs = [s] * len(args) if isinstance(mod, Add) else [_module_rule(mod, shapes[0], s)]
        elif target in ADD_FUNCTIONS or target == "add":
            outs = [s] * len(args)
        elif target in CAT_FUNCTIONS:
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) % s.dim()
            outs = list(torch.split(s, [sh[dim] for sh in shapes], dim=dim))
        elif node.op == "call_function" and target is operator.getitem and len(args) == 1 and node.args[0] is args[0] \
                and not _has_nodes(node.args[1:]):
            outs = [_adjoint(lambda x: x[node.args[1]], shapes[0], s)]  # scattered back where it was read
        elif (target in REDUCE_METHODS and node.op == "call_method" or target in REDUCE_FUNCTIONS) \
                and len(args) == 1 and not _has_nodes((node.args[1:], node.kwargs)):
            outs = [_adjoint(lambda x: getattr(torch, target if isinstance(target, str) else target.__name__)(
                x, *node.args[1:], **node.kwargs), shapes[0], s)]
        elif (target in MUL_FUNCTIONS or target in ("mul", "mul_")) and len(s.shape) == len(shapes[0]):
            # an elementwise product (an SE gate): each factor gets the product's score, summed over the dims it
            # is broadcast along (our choice, as an add; the product is not linear in both factors)
            outs = [s.sum_to_size(sh) if len(sh) == s.dim() else _spread(s, sh) for sh in shapes]
        elif target in (torch.flatten, "view", "reshape", "flatten"):
            outs = [s.reshape(shapes[0])]
        elif target in (F.max_pool1d, F.max_pool2d):
            outs = [_uniform_pool(node, 1 if target is F.max_pool1d else 2, shapes[0], s)]
        elif target in (F.adaptive_max_pool1d, F.adaptive_max_pool2d):
            avg = F.adaptive_avg_pool1d if target is F.adaptive_max_pool1d else F.adaptive_avg_pool2d
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            outs = [_adjoint(lambda x: avg(x, size), shapes[0], s)]
        elif target in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d) and not any(
                isinstance(a, fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
            outs = [_adjoint(lambda x: target(x, *node.args[1:], **node.kwargs), shapes[0], s)]
        elif target in PASS_FUNCTIONS or target in PASS_METHODS:  # ops the graph lets channels pass through
            outs = [s if tuple(s.shape) == tuple(sh) else _spread(s, sh) for sh in shapes]
        else:
            outs = [_spread(s, sh) for sh in shapes]
        for arg, out in zip(args, outs):
            out = out.reshape(graph.shape(arg))
            scores[arg.name] = scores[arg.name] + out if arg.name in scores else out
    return scores


def _has_nodes(value: Any) -> bool:
    found = []
    fx.node.map_arg(value, lambda n: found.append(n))
    return bool(found)


def unit_scores(graph: DependencyGraph, node_scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scores of units inside modules (:attr:`.graph.DependencyGraph.unit_scores`): the score map of the tensors
    the units make, summed over positions, mapped back through the module's output Linear when there is one
    (``s_units = |W|^T s``, NISP's rule: an attention's ``out_proj``/``proj`` for its heads, an encoder layer's
    ``linear2`` for its MLP units), then summed per unit (a head's ``head_dim`` features; a hidden unit's
    directions and its entries in ``h_n``)."""
    modules = dict(graph.gm.named_modules())
    modules.update(dict(graph.model.named_modules()))
    out: dict[str, Tensor] = {}
    for name, where in graph.unit_scores.items():
        units = len(graph.layers[name].out_ids) if name in graph.layers else 0
        total = torch.zeros(units, dtype=torch.float64)
        for node in where["nodes"]:
            s = node_scores.get(node)
            if s is None or not units:
                continue
            vec = s.reshape(-1, s.shape[-1]).sum(0)
            if where["via"] is not None:
                vec = vec @ modules[where["via"]].weight.detach().abs().double()
            total += vec.reshape(-1, units).sum(0) if where["units"] == "last" else vec.reshape(units, -1).sum(1)
        out[name] = total
    return out


def final_response_node(graph: DependencyGraph) -> tuple[str, fx.Node]:
    """The last Linear (the classifier) and the node feeding it (the final response layer)."""
    modules = dict(graph.gm.named_modules())
    last = [n for n in graph.gm.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], nn.Linear)]
    if not last:
        raise ModelError("NISP needs a final nn.Linear classifier to find the final response layer; the model has "
                         "no Linear layer")
    node = last[-1]
    return str(node.target), node.all_input_nodes[0]


def responses(model: nn.Module, layer: str, x: Tensor, batch_size: int = 256) -> np.ndarray:
    """Inputs of module ``layer`` (flattened per example) for the examples ``x``, in eval mode, as (N, d)."""
    mod = dict(model.named_modules())[layer]
    seen: list[Tensor] = []
    handle = mod.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().flatten(1).cpu()))
    device = next(model.parameters()).device
    try:
        with eval_mode(model), torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
    finally:
        handle.remove()
    return torch.cat(seen).double().numpy()


def nisp_scores(model: nn.Module, graph: DependencyGraph, x: Tensor, alpha: float = 0.5) -> dict[str, Tensor]:
    """NISP score of every channel of every prunable group: ``{group name: scores over group.roots}``.

    Args:
        model: the model ``graph`` was built from.
        graph: its dependency graph.
        x: training inputs whose final-response features feed Inf-FS.
        alpha: Inf-FS mix (see :func:`inf_fs`).
    """
    classifier, frl = final_response_node(graph)
    frl_score = torch.from_numpy(inf_fs(responses(model, classifier, x), alpha))
    node_scores = propagate(graph, frl, frl_score)
    per_layer: dict[str, Tensor] = {}
    for node in graph.gm.graph.nodes:
        if node.op == "call_module" and node.name in node_scores and str(node.target) in graph.layers \
                and str(node.target) not in graph.unit_scores:
            s = node_scores[node.name]
            if node.name in graph.last_dim:  # features along the last dim (a Linear on tokens x features)
                ch = s.reshape(-1, s.shape[-1]).sum(0)
            else:
                ch = s.reshape(s.shape[0], s.shape[1], -1).sum((0, 2))
            name = str(node.target)
            per_layer[name] = per_layer[name] + ch if name in per_layer else ch
    per_layer.update(unit_scores(graph, node_scores))
    return {name: graph.group_sum(g, per_layer) for name, g in graph.prunable().items()}


@dataclasses.dataclass(frozen=True)
class NISPImportance:
    """NISP scores as a structured-pruning importance measure: ``(model, graph, data) -> {group: scores}``.

    Args:
        alpha: Inf-FS mix (see :func:`inf_fs`).
        samples: training examples whose final-response features feed Inf-FS.
    """

    alpha: float = 0.5
    samples: int = 1000

    def __call__(self, model: nn.Module, graph: DependencyGraph, data: Any) -> dict[str, Tensor]:
        require_data(data, "nisp")
        return nisp_scores(model, graph, data.examples(self.samples), self.alpha)


@register_method(NISP)
def nisp(model: nn.Module, config: NISP, data: Any, target: Target) -> nn.Module:
    """Score channels with NISP, remove the lowest physically, fine-tune; returns the smaller model (in place)."""
    require_data(data, config.method)
    return prune_structured(model, config, data, target, NISPImportance(config.alpha, config.samples))


__all__ = ["NISP", "NISPImportance", "nisp", "inf_fs", "spearman", "propagate", "final_response_node", "responses",
           "nisp_scores"]
