"""Channel dependency graph for structured pruning, traced with ``torch.fx``.

Every tensor in the traced graph gets a *channel map*: one id per position of its channel dim (dim 1; for the
2-D input of a Linear, its features). A Conv/Linear output starts a new block of ids (the layer's output channels);
ops that keep channels pass the map on, a flatten repeats each channel id ``H*W`` times (feature
``c*H*W .. (c+1)*H*W-1`` of the next Linear is channel ``c``; sizes come from a dry run), ``cat`` on the channel
dim concatenates maps, and an add ties its inputs position by position (union-find over ids), so every member of a
residual join loses the same channels. A depthwise conv (``groups == in == out``) ties its output channels to its
input channels; other grouped convs are refused.

Channels end up in :class:`Group` s: the output channels of one or more producers (Conv/Linear layers) that must be
removed together, with the BatchNorms and consumer inputs that see them. Channels that reach the model's input or
output are pinned (never pruned), so the classifier's outputs are never removed.

Design after Torch-Pruning (Fang et al. 2023, github.com/VainF/Torch-Pruning): a dependency graph plus low-level
per-layer pruning (:mod:`.surgery`) kept separate from the pruners that choose channels (:mod:`.nisp`,
:mod:`.l1filter`). Written from scratch; supports Conv1d/2d, Linear, BatchNorm1d/2d, elementwise activations,
dropout, pooling, flatten, add and cat. Any other op (a user layer, ``mul``, slicing, an LSTM, attention) is kept
whole: the channels that reach it and that it makes are pinned, pruning goes on around it, and ``kept_whole`` names
it (as Torch-Pruning leaves unknown ops out).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from ..errors import ModelError
from ..graph import Add, record_shapes, source_line, trace
from .layer_rules import rule_for

CONV = (nn.Conv1d, nn.Conv2d)
NORM = (nn.BatchNorm1d, nn.BatchNorm2d)
#: Modules that keep the channel map unchanged (elementwise, dropout, pooling).
PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)
PASS_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.elu, F.hardswish, F.hardtanh, F.dropout, torch.relu,
    torch.sigmoid, torch.tanh, F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d, operator.pos,
}
PASS_METHODS = {"relu", "relu_", "sigmoid", "tanh", "contiguous", "clone", "detach"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
CAT_FUNCTIONS = {torch.cat, torch.concat}
RESHAPE_METHODS = {"view", "reshape", "flatten"}
META_METHODS = {"size", "dim", "numel"}


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def new(self, n: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


@dataclasses.dataclass
class Layer:
    """A module that surgery may rebuild: its channel ids along its input and output dims.

    Attributes:
        name: module name in ``model.named_modules()``.
        kind: ``"conv"``, ``"depthwise"``, ``"linear"`` or ``"norm"``.
        in_ids: channel id of each input channel/feature (``None`` for norms: same as ``out_ids``).
        out_ids: channel id of each output channel/feature.
    """

    name: str
    kind: str
    in_ids: np.ndarray | None
    out_ids: np.ndarray


@dataclasses.dataclass
class Group:
    """Channels removed together. Index ``i`` of the group is channel id ``roots[i]``.

    Attributes:
        name: the first producer's module name (used as the key of per-group ratios and keep lists).
        producers: Conv/Linear layers whose output channels belong to the group.
        members: every layer touched when the group loses channels (producers, norms, consumers).
        roots: the group's distinct channel ids, in the first producer's channel order.
        pinned: True when a channel reaches the model input or output; such groups are not prunable.
    """

    name: str
    producers: list[str]
    members: list[str]
    roots: np.ndarray
    pinned: bool

    @property
    def size(self) -> int:
        return len(self.roots)


class Opaque(ModelError):
    """An op the graph cannot see channels through; :meth:`DependencyGraph.build` keeps it whole (see there)."""


def _unsupported(what: str, kind: str) -> Opaque:
    return Opaque(
        f"structured pruning does not support {what} ({kind}); supported: Conv1d/2d (groups 1 or depthwise), "
        "Linear, BatchNorm1d/2d, activations, dropout, pooling, flatten, add, cat; replace it or prune other layers"
    )


class DependencyGraph:
    """Channel groups of ``model`` (see the module docstring). Build with :meth:`build`.

    Attributes:
        model: the traced model (surgery edits this one, or a deep copy with the same names).
        gm: the ``torch.fx.GraphModule``; every node's ``meta["shape"]`` holds its shape from the dry run.
        layers: ``{module name: Layer}`` for every Conv/Linear/BatchNorm the graph saw.
        groups: ``{group name: Group}`` for every group, pinned or not.
        node_ids: ``{fx node name: channel ids}`` of every tensor node.
        input_shape: one example's shape without the batch dim.
    """

    def __init__(self) -> None:
        self.uf = _UnionFind()
        self.layers: dict[str, Layer] = {}
        self.groups: dict[str, Group] = {}
        self.node_ids: dict[str, np.ndarray] = {}
        self._pinned: list[np.ndarray] = []
        self.kept_whole: dict[str, str] = {}
        self.last_dim: set[str] = set()  # nodes whose ids run along the last dim (a Linear's output on N-D input)

    # ---------------------------------------------------------------- building
    @classmethod
    def build(cls, model: nn.Module, input_shape: Sequence[int] | None = None) -> "DependencyGraph":
        """Trace ``model`` and group its channels.

        Args:
            model: the model; traced with torch.fx (``Add`` and modules owning parameters are leaves).
            input_shape: ``(C, H, W)`` of one example for the dry run; ``None`` uses ``model.input_shape``.

        Raises:
            ModelError: the model cannot be traced, or uses an op structured pruning does not support.
        """
        shape = input_shape if input_shape is not None else getattr(model, "input_shape", None)
        if shape is None:
            raise ModelError(f"{type(model).__name__} has no input_shape attribute; pass input_shape=(C, H, W)")
        self = cls()
        self.model, self.input_shape = model, tuple(int(s) for s in shape)
        self.gm = trace(model, "structured pruning")
        record_shapes(self.gm, self.input_shape)
        self._modules = dict(self.gm.named_modules())
        for node in self.gm.graph.nodes:
            try:
                self._visit(node)
            except Opaque as err:
                self._keep_whole(node, str(err))
        self._make_groups()
        return self

    def _keep_whole(self, node: fx.Node, reason: str) -> None:
        """An op the graph cannot see channels through: every channel that reaches it, and every channel it
        makes, is pinned, so pruning goes on around it and never changes what it sees (Torch-Pruning's way of
        leaving unknown ops out). Listed in ``kept_whole`` as ``{node: reason}``."""
        for arg in self._tensor_args(node):
            self._pinned.append(self.node_ids[arg.name])
        shape = self.shape(node)
        if shape is not None and len(shape) >= 2:
            ids = self.uf.new(shape[1])
            self._pinned.append(ids)
            self.node_ids[node.name] = ids
        label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", node.name)
        where = source_line(node)
        self.kept_whole[str(label)] = reason.split("; supported:")[0].removeprefix(
            "structured pruning does not support ") + (f" at {where}" if where else "")

    def shape(self, node: fx.Node) -> tuple[int, ...] | None:
        """Shape of ``node``'s tensor output in the dry run (batch 1), or None if it is not a tensor."""
        return node.meta.get("shape")

    def _ids(self, node: Any) -> np.ndarray | None:
        return self.node_ids.get(node.name) if isinstance(node, fx.Node) else None

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        out: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) if n.name in self.node_ids else None)
        return out

    def _tie(self, a: np.ndarray, b: np.ndarray, where: str) -> None:
        if len(a) != len(b):
            raise ModelError(f"{where} joins tensors with {len(a)} and {len(b)} channels; cannot tie them")
        for i, j in zip(a.tolist(), b.tolist()):
            self.uf.union(i, j)

    def _layer(self, name: str, kind: str, in_ids: np.ndarray | None, out_ids: np.ndarray) -> np.ndarray:
        old = self.layers.get(name)
        if old is None:
            self.layers[name] = Layer(name, kind, in_ids, out_ids)
            return out_ids
        if old.in_ids is not None and in_ids is not None:  # a module called twice: both inputs share its weights
            self._tie(old.in_ids, in_ids, f"module {name!r} called twice")
        if kind == "norm":
            self._tie(old.out_ids, out_ids, f"module {name!r} called twice")
        return old.out_ids

    def _visit(self, node: fx.Node) -> None:
        shape = self.shape(node)
        if node.op == "placeholder":
            if shape is not None and len(shape) >= 2:
                ids = self.uf.new(shape[1])
                self._pinned.append(ids)
                self.node_ids[node.name] = ids
            return
        if node.op == "output":
            for arg in self._tensor_args(node):
                self._pinned.append(self.node_ids[arg.name])
            return
        inputs = self._tensor_args(node)
        if shape is None or len(shape) < 2:
            if inputs and not (node.target in META_METHODS or node.target is getattr):
                if node.op == "call_module":  # e.g. an LSTM returning a tuple
                    mod = self._modules[node.target]
                    raise _unsupported(f"module {node.target!r}", type(mod).__name__)
                label = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "?")
                raise _unsupported(f"{node.op} {label!r} (node {node.name!r}) returning a non-tensor or a "
                                   f"tensor of shape {shape}", node.op)
            return  # x.size(0), x.shape: no channels
        if node.op == "get_attr":
            raise _unsupported(f"tensor attribute {node.target!r} used in the forward pass", "get_attr")
        ids = self._propagate(node, inputs, shape)
        self.node_ids[node.name] = ids

    def _propagate(self, node: fx.Node, inputs: list[fx.Node], shape: tuple[int, ...]) -> np.ndarray:
        if any(a.name in self.last_dim for a in inputs) or self._linear_on_nd(node, inputs):
            return self._last_dim(node, inputs)
        first = self.node_ids[inputs[0].name] if inputs else None
        if node.op == "call_module":
            mod = self._modules[node.target]
            name, kind = str(node.target), type(mod).__name__
            rule = rule_for(mod)
            if rule is not None:
                layer_kind = rule.kind(mod)
                if layer_kind == "norm":
                    return self._layer(name, "norm", None, first)
                if layer_kind == "depthwise":
                    return self._layer(name, "depthwise", first, first)
                if layer_kind == "linear" and len(self.shape(inputs[0])) != 2:
                    raise _unsupported(f"Linear {name!r} on a {len(self.shape(inputs[0]))}-D input "
                                       "(only 2-D (batch, features) inputs)", kind)
                out = getattr(mod, "out_channels", None) or getattr(mod, "out_features", None) or mod.weight.shape[0]
                return self._layer(name, layer_kind, first, self.uf.new(int(out)))
            if isinstance(mod, PASS_MODULES):
                return first
            if isinstance(mod, Add):
                return self._add(node, inputs, f"module {name!r}")
            if isinstance(mod, nn.Flatten):
                return self._flatten(node, inputs[0], mod.start_dim, mod.end_dim, f"module {name!r}")
            raise _unsupported(f"module {name!r}", kind)
        target = node.target
        label = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
        if node.op == "call_method":
            if target in PASS_METHODS:
                return first
            if target == "add":
                return self._add(node, inputs, f"method {label!r}")
            if target in RESHAPE_METHODS:
                return self._reshape(node, inputs[0], shape, f"method {label!r}")
            raise _unsupported(f"tensor method {label!r} (node {node.name!r})", "call_method")
        if target in PASS_FUNCTIONS:
            return first
        if target in ADD_FUNCTIONS:
            return self._add(node, inputs, f"function {label!r}")
        if target in CAT_FUNCTIONS:
            return self._cat(node, inputs, shape)
        if target is torch.flatten:
            return self._reshape(node, inputs[0], shape, "function 'flatten'")
        raise _unsupported(f"function {label!r} (node {node.name!r})", "call_function")

    def _linear_on_nd(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        if node.op != "call_module" or not inputs:
            return False
        mod = self._modules[node.target]
        rule = rule_for(mod)
        return rule is not None and rule.kind(mod) == "linear" and len(self.shape(inputs[0])) > 2

    def _last_dim(self, node: fx.Node, inputs: list[fx.Node]) -> np.ndarray:
        """Features along the last dim (tokens x features, as in a transformer's MLP): a Linear on an N-D input
        starts a block of ids for its output features; elementwise ops and adds of such tensors pass or tie them;
        a Linear reading them takes them as its input features. Anything else with them is kept whole."""
        if node.op == "call_module" and self._linear_on_nd(node, inputs):
            mod = self._modules[node.target]
            arg = inputs[0]
            if arg.name in self.last_dim and len(self.node_ids[arg.name]) == mod.in_features:
                in_ids = self.node_ids[arg.name]
            else:  # features not tracked along the last dim: keep them as they are
                in_ids = self.uf.new(mod.in_features)
                self._pinned += [in_ids, self.node_ids[arg.name]]
            out = self._layer(str(node.target), "linear", in_ids, self.uf.new(int(mod.out_features)))
            self.last_dim.add(node.name)
            return out
        if not all(a.name in self.last_dim for a in inputs):
            raise _unsupported(f"node {node.name!r} mixing features along the last dim with channels", node.op)
        first = self.node_ids[inputs[0].name]
        elementwise = (node.op == "call_module" and isinstance(self._modules[node.target], PASS_MODULES)
                       and not isinstance(self._modules[node.target], (nn.modules.pooling._MaxPoolNd,
                                                                      nn.modules.pooling._AvgPoolNd)))
        elementwise |= node.op == "call_method" and node.target in PASS_METHODS
        elementwise |= node.op == "call_function" and node.target in (F.relu, F.relu6, F.leaky_relu, F.gelu, F.silu,
                                                                       F.elu, F.hardswish, F.hardtanh, F.dropout,
                                                                       torch.relu, torch.sigmoid, torch.tanh)
        if elementwise and self.shape(node) == self.shape(inputs[0]):
            self.last_dim.add(node.name)
            return first
        if node.target in ADD_FUNCTIONS or node.target == "add" or (
                node.op == "call_module" and isinstance(self._modules[node.target], Add)):
            ids = self._add(node, inputs, f"add {node.name!r}")
            self.last_dim.add(node.name)
            return ids
        raise _unsupported(f"node {node.name!r} on features along the last dim", node.op)

    def _add(self, node: fx.Node, inputs: list[fx.Node], where: str) -> np.ndarray:
        out_shape = self.shape(node)
        for arg in inputs:
            if self.shape(arg) != out_shape:
                raise _unsupported(f"{where} broadcasting {self.shape(arg)} to {out_shape}", "add")
        for arg in inputs[1:]:
            self._tie(self.node_ids[inputs[0].name], self.node_ids[arg.name], where)
        return self.node_ids[inputs[0].name]

    def _cat(self, node: fx.Node, inputs: list[fx.Node], shape: tuple[int, ...]) -> np.ndarray:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        dim = dim % len(shape)
        maps = [self.node_ids[n.name] for n in inputs]
        if dim == 1:
            return np.concatenate(maps)
        if dim == 0:
            raise _unsupported("cat along the batch dim", "cat")
        for other in maps[1:]:
            self._tie(maps[0], other, "cat")
        return maps[0]

    def _flatten(self, node: fx.Node, arg: fx.Node, start: int, end: int, where: str) -> np.ndarray:
        in_shape = self.shape(arg)
        if len(in_shape) == 2:
            return self.node_ids[arg.name]
        if start != 1 or end % len(in_shape) != len(in_shape) - 1:
            raise _unsupported(f"{where} with start_dim={start}, end_dim={end} (only flatten from dim 1 to the end)",
                               "flatten")
        return np.repeat(self.node_ids[arg.name], int(np.prod(in_shape[2:])))

    def _reshape(self, node: fx.Node, arg: fx.Node, shape: tuple[int, ...], where: str) -> np.ndarray:
        in_shape = self.shape(arg)
        if in_shape == shape:
            return self.node_ids[arg.name]
        if len(shape) == 2 and shape[0] == in_shape[0] and shape[1] == int(np.prod(in_shape[1:])):
            return np.repeat(self.node_ids[arg.name], int(np.prod(in_shape[2:])))
        raise _unsupported(f"{where} reshaping {in_shape} to {shape} (only flattening to (batch, features))",
                           "reshape")

    # ---------------------------------------------------------------- groups
    def root(self, ids: np.ndarray) -> np.ndarray:
        """Union-find roots of channel ``ids`` (equal roots = the same channel after all ties)."""
        return np.array([self.uf.find(int(i)) for i in ids], dtype=np.int64)

    def _make_groups(self) -> None:
        pinned = {self.uf.find(int(i)) for ids in self._pinned for i in ids}
        producers = [name for name, layer in self.layers.items() if layer.kind in ("conv", "linear")]
        link = {name: name for name in producers}  # union-find over producers that share a channel

        def top(name: str) -> str:
            while link[name] != name:
                name = link[name]
            return name

        owner: dict[int, str] = {}  # channel root -> first producer that has it
        for name in producers:
            for r in self.root(self.layers[name].out_ids).tolist():
                if r in owner:
                    a, b = top(owner[r]), top(name)
                    if a != b:  # keep the earlier producer as the group's name
                        first, second = sorted((a, b), key=producers.index)
                        link[second] = first
                else:
                    owner[r] = name
        prods_of: dict[str, list[str]] = {}
        for name in producers:
            prods_of.setdefault(top(name), []).append(name)
        members_of: dict[str, list[str]] = {g: [] for g in prods_of}
        for layer in self.layers.values():
            touched: set[str] = set()
            for ids in (layer.in_ids, layer.out_ids):
                if ids is not None:
                    touched |= {top(owner[r]) for r in self.root(ids).tolist() if r in owner}
            for g in sorted(touched, key=producers.index):
                members_of[g].append(layer.name)
        for g, prods in prods_of.items():
            order: dict[int, None] = {}
            for p in prods:
                order.update(dict.fromkeys(self.root(self.layers[p].out_ids).tolist()))
            self.groups[g] = Group(g, prods, members_of[g], np.array(list(order), dtype=np.int64),
                                   bool(set(order) & pinned))

    def prunable(self) -> dict[str, Group]:
        """The groups that may lose channels (not pinned to the model's input or output)."""
        return {n: g for n, g in self.groups.items() if not g.pinned}

    def group_sum(self, group: Group, per_layer: dict[str, torch.Tensor]) -> torch.Tensor:
        """Sum per-output-channel scores of ``group``'s producers into one score per group channel.

        Args:
            group: a group of this graph.
            per_layer: ``{producer name: scores over its output channels}``; producers missing count 0.
        """
        index = {int(r): i for i, r in enumerate(group.roots)}
        total = torch.zeros(group.size, dtype=torch.float64)
        for name in group.producers:
            if name in per_layer:
                pos = torch.tensor([index[int(r)] for r in self.root(self.layers[name].out_ids)])
                total.index_add_(0, pos, per_layer[name].detach().double().cpu().reshape(-1))
        return total


def build_graph(model: nn.Module, input_shape: Sequence[int] | None = None) -> DependencyGraph:
    """Shorthand for :meth:`DependencyGraph.build`."""
    return DependencyGraph.build(model, input_shape)


__all__ = ["DependencyGraph", "Group", "Layer", "Opaque", "build_graph"]
