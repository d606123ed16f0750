"""Recognize hand-written (timm-style) multi-head self-attention in a traced model, so that its heads can be pruned.

A candidate is a ``qkv`` Linear on a ``(B, N, C)`` input whose every descendant, up to a single ``proj`` Linear,
is a parameter-free op fed only by the ``qkv`` output and by shape arithmetic (``B, N, C = x.shape``), and which
reshapes the ``qkv`` output to ``(B, N, 3, heads, head_dim)``. Its scale is the product of the constant factors
applied in between (``* self.scale``, ``/ sqrt(d)``), or ``head_dim ** -0.5`` under
``F.scaled_dot_product_attention``; an attention dropout is kept as its ``p``.

A shape match is not a proof: the block that holds both Linears (their longest common module path) is then run on a
random input and compared with the canonical attention (:class:`.units.PrunedSelfAttention`) built from the same
weights (relative tolerance 1e-4). Only blocks that match are pruned by heads; the others stay as they are, kept
whole, with the reason in ``DependencyGraph.kept_whole``. (Torch-Pruning asks the user to name ``num_heads`` per
``qkv`` layer and to rewrite ``reshape(B, N, C)`` in timm's forward; this needs neither, at the price of replacing
the recognized block by the canonical module when it loses heads.)
"""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ..graph import eval_mode
from .units import SelfAttentionSpec

MAX_REGION = 80
_MULS = {operator.mul, torch.mul, "mul"}
_DIVS = {operator.truediv, torch.div, "div"}


def _region(graph: Any, qkv: fx.Node) -> tuple[set[str], fx.Node] | None:
    modules = graph._modules
    region: dict[str, fx.Node] = {}
    frontier, proj = [qkv], None
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user.op == "output":
                return None
            if user.op == "call_module":
                mod = modules[user.target]
                if isinstance(mod, nn.Linear):
                    if proj is not None and user is not proj:
                        return None
                    proj = user
                    continue
                if any(True for _ in mod.parameters()):
                    return None
            if user.name not in region:
                region[user.name] = user
                frontier.append(user)
                if len(region) > MAX_REGION:
                    return None
    if proj is None or not region:
        return None
    for node in region.values():
        for arg in node.all_input_nodes:
            if arg is not qkv and arg.name not in region and graph.shape(arg) is not None:
                return None  # a tensor from outside (a mask, a position bias): not plain self-attention
    proj_inputs = [a for a in proj.all_input_nodes if graph.shape(a) is not None]
    if len(proj_inputs) != 1 or proj_inputs[0].name not in region:
        return None
    return set(region), proj


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _spec_of(graph: Any, qkv: fx.Node, proj: fx.Node, region: set[str], owner: str) -> SelfAttentionSpec | None:
    modules = graph._modules
    out = modules[qkv.target].out_features
    heads = head_dim = None
    scale, sdpa, drop = 1.0, False, 0.0
    nodes = [n for n in graph.gm.graph.nodes if n.name in region]
    for node in nodes:
        shape = graph.shape(node)
        if (node.op == "call_method" and node.target in ("reshape", "view") and node.args[0] is qkv and shape
                and len(shape) == 5 and shape[2] == 3 and 3 * shape[3] * shape[4] == out):
            heads, head_dim = int(shape[3]), int(shape[4])
        if node.target in _MULS or node.target in _DIVS:
            consts = [_number(a) for a in node.args if not isinstance(a, fx.Node)]
            consts = [c for c in consts if c is not None]
            if len(consts) == 1 and len(node.args) == 2:
                if node.target in _DIVS and isinstance(node.args[1], fx.Node):
                    return None  # constant / tensor: not a scale
                scale *= (1.0 / consts[0]) if node.target in _DIVS else consts[0]
        if node.target is F.scaled_dot_product_attention:
            sdpa = True
            given = node.kwargs.get("scale")
            if isinstance(given, fx.Node):
                return None
            scale *= given if given is not None else 1.0
            drop = float(node.kwargs.get("dropout_p", 0.0) or 0.0)
        if node.op == "call_module" and isinstance(modules[node.target], nn.Dropout):
            drop = float(modules[node.target].p)
        if node.target is F.dropout:
            drop = float(node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5))
    if heads is None:
        return None
    if sdpa and scale == 1.0:
        scale = head_dim ** -0.5
    prefix = owner + "." if owner else ""
    return SelfAttentionSpec(str(qkv.target)[len(prefix):], str(proj.target)[len(prefix):], heads, head_dim,
                             scale, drop)


def _owner(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    common = []
    for x, y in zip(pa[:-1], pb[:-1]):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def find_attention(graph: Any) -> list[dict[str, Any]]:
    """The hand-written self-attention blocks of ``graph`` (a :class:`.graph.DependencyGraph` being built), each as
    ``{"name": qkv module, "owner": block module, "qkv_node", "proj_node", "region": fx node names, "spec"}``.
    Candidates that fail the numerical check are listed in ``graph.kept_whole`` with the reason."""
    modules = graph._modules
    candidates = []
    for node in graph.gm.graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.Linear or not node.args:
            continue
        arg = node.args[0]
        shape = graph.shape(arg) if isinstance(arg, fx.Node) else None
        if shape is None or len(shape) != 3 or modules[node.target].out_features % 3:
            continue
        found = _region(graph, node)
        if found is None:
            continue
        region, proj = found
        owner = _owner(str(node.target), str(proj.target))
        spec = _spec_of(graph, node, proj, region, owner)
        if spec is None or not owner:
            continue
        candidates.append({"name": str(node.target), "owner": owner, "qkv_node": node.name, "proj_node": proj.name,
                           "region": region, "spec": spec})
    if not candidates:
        return []
    results = _check_all(graph.model, graph.input_shape, candidates)
    kept = []
    for cand in candidates:
        reason = results.get(cand["owner"])
        if reason is None:
            kept.append(cand)
        else:
            graph.kept_whole[cand["owner"]] = (f"hand-written attention {cand['owner']!r} not recognized as plain "
                                               f"multi-head self-attention ({reason}); its heads are kept whole")
    return kept


def _check_all(model: nn.Module, input_shape: tuple[int, ...], cands: list[dict[str, Any]]) -> dict[str, str | None]:
    seen: dict[str, tuple] = {}
    handles = []
    for cand in cands:
        mod = model.get_submodule(cand["owner"])

        def hook(m, args, kwargs, out, _name=cand["owner"]):
            seen.setdefault(_name, (args, kwargs, out))

        handles.append(mod.register_forward_hook(hook, with_kwargs=True))
    param = next(iter(model.parameters()), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn((2, *input_shape), generator=gen)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    results: dict[str, str | None] = {}
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    except Exception as err:  # noqa: BLE001 - a model that does not run on noise is simply not checked
        return {c["owner"]: f"the check run failed: {str(err).splitlines()[0][:80]}" for c in cands}
    finally:
        for h in handles:
            h.remove()
    for cand in cands:
        owner = cand["owner"]
        if owner not in seen:
            results[owner] = "the block was not called"
            continue
        args, kwargs, out = seen[owner]
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor) or not isinstance(out, torch.Tensor):
            results[owner] = "the block takes or returns more than one tensor"
            continue
        mod = model.get_submodule(owner)
        with eval_mode(mod), torch.no_grad():
            want = cand["spec"].canonical(mod).eval()(args[0])
        tol = 1e-5 * (1 + float(out.abs().max()))
        if want.shape != out.shape or not torch.allclose(want, out, rtol=1e-4, atol=tol):
            results[owner] = "its output differs from the canonical attention's"
            continue
        results[owner] = None
    return results


__all__ = ["find_attention"]
