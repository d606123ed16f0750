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
dropout, pooling, flatten, add, cat, elementwise ``mul`` (SE gates: the factors' channels are tied), indexing and
mean/sum that leave the channel (or feature) dim whole (``out[:, -1]``, ``x.mean((2, 3))``), and units inside
modules (:mod:`.units`): the hidden units of ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (their tuple outputs and ``h_n``
followed through ``getitem``), whole heads of ``nn.MultiheadAttention``, of each layer of torch's
``TransformerEncoder`` (with its MLP hidden units) and of a hand-written attention recognized by
:mod:`.attention_match`; attention keeps its inputs and outputs (the embedding dim) whole. Any other op (a user
layer, slicing into the channels, a product with a parameter) is kept whole: the channels that reach it and that it
makes are pinned, pruning goes on around it, and ``kept_whole`` names it with its source line (as Torch-Pruning
leaves unknown ops out).
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
from .units import PrunedMultiheadAttention, PrunedSelfAttention

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
MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul}
REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}


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
        kind: ``"conv"``, ``"depthwise"``, ``"linear"``, ``"norm"``, ``"rnn"`` (hidden units) or ``"heads"``.
        in_ids: channel id of each input channel/feature (``None`` for norms: same as ``out_ids``; ``None`` for
            attention heads, whose inputs stay whole).
        out_ids: channel id of each output channel/feature (each hidden unit; each head).
        module: the module to rebuild when it is not ``name`` (see :attr:`target`).
        rule: the :class:`~.layer_rules.LayerRule` when it is not the one registered for the module's class.
    """

    name: str
    kind: str
    in_ids: np.ndarray | None
    out_ids: np.ndarray
    module: str | None = None
    rule: Any = None

    @property
    def target(self) -> str:
        """The module surgery rebuilds (``module``; else ``name``). A recognized hand-written attention is named by
        its ``qkv`` Linear (so ``layers``/``exclude`` select it) but rebuilt as the block that holds it."""
        return self.module or self.name


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
        "Linear, BatchNorm1d/2d, LSTM/GRU/RNN, MultiheadAttention, activations, dropout, pooling, flatten, add, cat, "
        "mul, indexing; replace it or prune other layers"
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
        self.tuples: dict[str, tuple] = {}  # tuple-valued nodes (an LSTM's (out, (h, c))): per item ids or a tuple
        self.tuple_owner: dict[str, str] = {}  # tuple node -> layer name that made it
        #: ``{layer: {"nodes": [...], "via": module or None, "units": "first"|"last"}}``: where NISP reads the
        #: score of units inside a module (hidden units, heads; see :func:`.nisp.nisp_scores`).
        self.unit_scores: dict[str, dict[str, Any]] = {}
        self._region: dict[str, str] = {}  # fx node inside a recognized attention -> its layer name
        self._attention: dict[str, dict[str, Any]] = {}  # qkv node name -> recognized attention

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
        from .attention_match import find_attention

        for found in find_attention(self):
            self._attention[found["qkv_node"]] = found
            for n in found["region"]:
                self._region[n] = found["name"]
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
        if self._units(node, inputs):
            return
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
        if not inputs:
            raise _unsupported(f"node {node.name!r} making a tensor from parameters or constants only", node.op)
        ids = self._propagate(node, inputs, shape)
        self.node_ids[node.name] = ids

    # ---------------------------------------------------------------- units inside modules, tuples
    def _units(self, node: fx.Node, inputs: list[fx.Node]) -> bool:
        """Nodes handled here: a recognized hand-written attention, recurrent layers, attention modules, torch's
        Transformer encoder (layers), and items of the tuples they return. True when ``node`` was handled."""
        if node.name in self._region:  # inside a recognized attention: kept as it is, only its heads change
            self._fresh(node, pinned=True)
            return True
        if node.name in self._attention:
            self._attention_entry(node, inputs)
            return True
        if any(node.name == a["proj_node"] for a in self._attention.values()):
            self._fresh(node, pinned=True)
            return True
        if node.op == "call_function" and node.target is operator.getitem and isinstance(node.args[0], fx.Node) \
                and node.args[0].name in self.tuples:
            self._tuple_item(node)
            return True
        if node.op != "call_module":
            return False
        mod = self._modules[node.target]
        if isinstance(mod, (nn.TransformerEncoder, nn.TransformerEncoderLayer)):
            self._encoder(node, mod, inputs)
            return True
        rule = rule_for(mod)
        if rule is None or not isinstance(mod, (nn.RNNBase, nn.MultiheadAttention, PrunedMultiheadAttention,
                                                PrunedSelfAttention)):
            return False
        try:
            kind = rule.kind(mod)
        except ModelError as err:
            raise Opaque(str(err)) from None
        if kind == "rnn":
            self._rnn(node, mod, inputs)
        else:
            self._heads(node, mod, inputs)
        return True

    def _fresh(self, node: fx.Node, pinned: bool) -> None:
        """New ids for ``node``'s tensor: along the last dim for a tensor of > 2 dims (features), else dim 1."""
        shape = self.shape(node)
        if shape is None or len(shape) < 2:
            return
        ids = self.uf.new(shape[-1])
        if pinned:
            self._pinned.append(ids)
        self.node_ids[node.name] = ids
        if len(shape) > 2:
            self.last_dim.add(node.name)

    def _pin_inputs(self, inputs: list[fx.Node]) -> None:
        for arg in inputs:
            self._pinned.append(self.node_ids[arg.name])

    def _features_in(self, arg: fx.Node, size: int) -> np.ndarray:
        """The ids of ``arg``'s last-dim features when the graph tracks them; else new ids, pinned (with arg's)."""
        ids, shape = self.node_ids.get(arg.name), self.shape(arg)
        if ids is not None and len(ids) == size and (arg.name in self.last_dim or len(shape) == 2):
            return ids
        new = self.uf.new(size)
        self._pinned.append(new)
        if ids is not None:
            self._pinned.append(ids)
        return new

    def _rnn(self, node: fx.Node, mod: nn.RNNBase, inputs: list[fx.Node]) -> None:
        name, kind = str(node.target), type(mod).__name__
        if len(node.args) != 1 or node.kwargs or len(inputs) != 1:
            raise _unsupported(f"{kind} {name!r} given an initial state or a non-tensor input", kind)
        hidden = self._layer(name, "rnn", self._features_in(inputs[0], mod.input_size), self.uf.new(mod.hidden_size))
        out = np.concatenate([hidden] * (2 if mod.bidirectional else 1))
        self.tuples[node.name] = (out, (hidden, hidden)) if isinstance(mod, nn.LSTM) else (out, hidden)
        self.tuple_owner[node.name] = name
        self.unit_scores.setdefault(name, {"nodes": [], "via": None, "units": "last"})

    def _heads(self, node: fx.Node, mod: nn.Module, inputs: list[fx.Node]) -> None:
        name, kind = str(node.target), type(mod).__name__
        self._pin_inputs(inputs)
        if isinstance(mod, PrunedSelfAttention):
            self._layer(name, "heads", None, self.uf.new(mod.num_heads))
            self._fresh(node, pinned=True)
            self.unit_scores[name] = {"nodes": [node.name], "via": f"{name}.proj", "units": "first"}
            return
        for user in node.users:
            ok = user.op == "call_function" and user.target is operator.getitem and user.args[1] in (0, 1)
            if not ok or (user.args[1] == 1 and user.users):
                raise _unsupported(f"{kind} {name!r} whose attention weights (output 1) are used", kind)
        mask = node.kwargs.get("attn_mask", node.args[5] if len(node.args) > 5 else None)
        if isinstance(mask, fx.Node) and self.shape(mask) is not None and len(self.shape(mask)) == 3:
            raise _unsupported(f"{kind} {name!r} given a per-head attn_mask", kind)
        self._layer(name, "heads", None, self.uf.new(mod.num_heads))
        out = self.uf.new(mod.embed_dim)
        self._pinned.append(out)
        self.tuples[node.name] = (out, None)
        self.tuple_owner[node.name] = name
        self.unit_scores[name] = {"nodes": [], "via": f"{name}.out_proj", "units": "first"}

    def _tuple_item(self, node: fx.Node) -> None:
        arg, index = node.args[0], node.args[1]
        items = self.tuples[arg.name]
        if not isinstance(index, int) or not -len(items) <= index < len(items):
            raise _unsupported(f"getitem {index!r} of the outputs of node {arg.name!r}", "getitem")
        item, owner = items[index], self.tuple_owner.get(arg.name)
        if item is None:
            raise _unsupported(f"output {index} of node {arg.name!r} (attention weights)", "getitem")
        if isinstance(item, tuple):
            self.tuples[node.name] = item
            if owner:
                self.tuple_owner[node.name] = owner
            return
        shape = self.shape(node)
        if shape is None or len(shape) < 2 or shape[-1] != len(item):
            raise _unsupported(f"output {index} of node {arg.name!r} of shape {shape}", "getitem")
        self.node_ids[node.name] = item
        if len(shape) > 2:
            self.last_dim.add(node.name)
        if owner and owner in self.unit_scores:
            self.unit_scores[owner]["nodes"].append(node.name)

    def _encoder(self, node: fx.Node, mod: nn.Module, inputs: list[fx.Node]) -> None:
        """torch's TransformerEncoder(Layer), which the tracer cannot enter: its input and output (the residual
        stream) stay whole; each layer's heads and MLP hidden units (``linear1`` -> ``linear2``) are units of their
        own. NISP reads their scores from the stream's score at the encoder's output."""
        name = str(node.target)
        self._pin_inputs(inputs)
        layers = [(name, mod)] if isinstance(mod, nn.TransformerEncoderLayer) else \
            [(f"{name}.layers.{i}" if name else f"layers.{i}", layer) for i, layer in enumerate(mod.layers)]
        for prefix, layer in layers:
            attn = getattr(layer, "self_attn", None)
            rule = rule_for(attn) if isinstance(attn, nn.Module) else None
            try:
                if rule is None or rule.kind(attn) != "heads":
                    raise ModelError(f"its self_attn is a {type(attn).__name__}")
                self._layer(f"{prefix}.self_attn", "heads", None, self.uf.new(attn.num_heads))
                self.unit_scores[f"{prefix}.self_attn"] = {"nodes": [node.name], "via": f"{prefix}.self_attn.out_proj",
                                                           "units": "first"}
            except ModelError as err:
                self.kept_whole[f"{prefix}.self_attn"] = f"heads kept whole: {err}"
            l1, l2 = getattr(layer, "linear1", None), getattr(layer, "linear2", None)
            if all(isinstance(m, nn.Module) and rule_for(m) is not None and rule_for(m).kind(m) == "linear"
                   for m in (l1, l2)):
                stream_in, stream_out = self.uf.new(l1.in_features), self.uf.new(l2.out_features)
                self._pinned += [stream_in, stream_out]
                hidden = self._layer(f"{prefix}.linear1", "linear", stream_in, self.uf.new(l1.out_features))
                self._layer(f"{prefix}.linear2", "linear", hidden, stream_out)
                self.unit_scores[f"{prefix}.linear1"] = {"nodes": [node.name], "via": f"{prefix}.linear2",
                                                         "units": "first"}
        self._fresh(node, pinned=True)

    def _attention_entry(self, node: fx.Node, inputs: list[fx.Node]) -> None:
        found = self._attention[node.name]
        spec, owner = found["spec"], found["owner"]
        self._pin_inputs(inputs)
        self._layer(found["name"], "heads", None, self.uf.new(spec.num_heads))
        layer = self.layers[found["name"]]
        layer.module, layer.rule = owner, spec.rule(type(self.model.get_submodule(owner)))
        self._fresh(node, pinned=True)
        proj = next(n for n in self.gm.graph.nodes if n.name == found["proj_node"])
        self.unit_scores[found["name"]] = {"nodes": [proj.name], "via": str(proj.target), "units": "first"}

    # ---------------------------------------------------------------- channel maps
    def _propagate(self, node: fx.Node, inputs: list[fx.Node], shape: tuple[int, ...]) -> np.ndarray:
        if node.op == "call_function" and node.target is operator.getitem and inputs and node.args[0] is inputs[0]:
            return self._getitem(node, inputs[0])
        if node.target in MUL_FUNCTIONS or (node.op == "call_method" and node.target in ("mul", "mul_")):
            return self._mul(node, inputs)
        if (node.op == "call_method" and node.target in REDUCE_METHODS) or (
                node.op == "call_function" and node.target in REDUCE_FUNCTIONS):
            return self._reduce(node, inputs)
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
        for a in (*node.args, *node.kwargs.values()):
            if isinstance(a, fx.Node) and self.shape(a) is not None and a.name not in self.node_ids:
                raise _unsupported(f"{where} of a tensor the graph does not track ({a.name!r}, a parameter read "
                                   "in forward?)", "add")
        for arg in inputs:
            if self.shape(arg) != out_shape:
                raise _unsupported(f"{where} broadcasting {self.shape(arg)} to {out_shape}", "add")
        for arg in inputs[1:]:
            self._tie(self.node_ids[inputs[0].name], self.node_ids[arg.name], where)
        return self.node_ids[inputs[0].name]

    def _place(self, node: fx.Node, pos: int, ids: np.ndarray, from_last: bool, where: str) -> np.ndarray:
        """``ids`` now at dim ``pos`` of ``node``'s tensor: a channel map (dim 1, or a 2-D tensor's features) or
        features along the last dim; anything else is kept whole."""
        nd = len(self.shape(node))
        if pos == 1 and (nd == 2 or not from_last):
            return ids
        if from_last and nd > 2 and pos == nd - 1:
            self.last_dim.add(node.name)
            return ids
        raise _unsupported(f"{where} moving the {'features' if from_last else 'channels'} to dim {pos} of a "
                           f"{nd}-D tensor", node.op)

    def _tracked(self, arg: fx.Node) -> tuple[int, bool]:
        from_last = arg.name in self.last_dim
        return (len(self.shape(arg)) - 1 if from_last else 1), from_last

    def _getitem(self, node: fx.Node, arg: fx.Node) -> np.ndarray:
        """Indexing that keeps the tracked dim whole (``out[:, -1]``, ``x[..., ::2, ::2]``, ``h[-1]``) moves its
        ids; indexing into the tracked dim, or by a tensor, is kept whole."""
        where = f"getitem (node {node.name!r})"
        index = node.args[1]
        idx = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, (list, torch.Tensor)) or (isinstance(i, fx.Node) and self.shape(i) is not None)
               for i in idx):
            raise _unsupported(f"{where} indexing with a tensor or list", "getitem")
        nd = len(self.shape(arg))
        d_in, from_last = self._tracked(arg)
        used = sum(1 for i in idx if i is not None and i is not Ellipsis)
        full: list[Any] = []
        for i in idx:
            full += [slice(None)] * (nd - used) if i is Ellipsis else [i]
        if not any(i is Ellipsis for i in idx):
            full += [slice(None)] * (nd - used)
        pos_out = pos_in = 0
        target = None
        for i in full:
            if i is None:
                pos_out += 1
                continue
            if pos_in == d_in:
                if not (isinstance(i, slice) and i.start is None and i.stop is None and i.step is None):
                    raise _unsupported(f"{where} selecting part of the {'features' if from_last else 'channels'}",
                                       "getitem")
                target = pos_out
            if isinstance(i, slice):
                pos_out += 1
            pos_in += 1
        if target is None:
            raise _unsupported(f"{where} with index {index!r}", "getitem")
        return self._place(node, target, self.node_ids[arg.name], from_last, where)

    def _reduce(self, node: fx.Node, inputs: list[fx.Node]) -> np.ndarray:
        """A mean/sum/amax over dims other than the tracked one (``x.mean((2, 3))``, ``out.mean(1)``)."""
        label = node.target if isinstance(node.target, str) else node.target.__name__
        where = f"{label} (node {node.name!r})"
        arg = node.args[0]
        if not inputs or arg is not inputs[0] or len(inputs) != 1:
            raise _unsupported(where, node.op)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
        dims = [dims] if isinstance(dims, int) else dims
        if not isinstance(dims, (list, tuple)) or not dims or not all(isinstance(d, int) for d in dims) \
                or not isinstance(keepdim, bool):
            raise _unsupported(f"{where} over dims {dims!r}", node.op)
        nd = len(self.shape(arg))
        dims = {d % nd for d in dims}
        d_in, from_last = self._tracked(arg)
        if d_in in dims:
            raise _unsupported(f"{where} over the {'features' if from_last else 'channels'}", node.op)
        pos = d_in if keepdim else d_in - sum(d < d_in for d in dims)
        return self._place(node, pos, self.node_ids[arg.name], from_last, where)

    def _mul(self, node: fx.Node, inputs: list[fx.Node]) -> np.ndarray:
        """An elementwise product (an SE gate ``x * sigmoid(s)``, a gated MLP): the factors' channels are tied
        position by position (broadcasting over other dims is fine; a factor of one channel broadcast over all is
        pinned). A product with a scalar passes the channels; with a tensor the graph does not track (a parameter
        read in ``forward``) it is kept whole."""
        where = f"mul (node {node.name!r})"
        for a in (*node.args, *node.kwargs.values()):
            if isinstance(a, fx.Node) and self.shape(a) is not None and a.name not in self.node_ids:
                raise _unsupported(f"{where} by a tensor the graph does not track ({a.name!r})", "mul")
        if not inputs:
            raise _unsupported(where, "mul")
        out_shape = self.shape(node)
        nd = len(out_shape)
        from_last = any(a.name in self.last_dim for a in inputs) and nd > 2
        d_out = nd - 1 if from_last else 1
        full, ones = [], []
        for a in inputs:
            sa = self.shape(a)
            d_a, _ = self._tracked(a)
            if (len(sa) > 2 and (a.name in self.last_dim) != from_last) or d_a + nd - len(sa) != d_out:
                raise _unsupported(f"{where} of tensors whose channels/features do not line up", "mul")
            if sa[d_a] == out_shape[d_out]:
                full.append(self.node_ids[a.name])
            elif sa[d_a] == 1:
                ones.append(self.node_ids[a.name])
            else:
                raise _unsupported(f"{where} broadcasting {sa} to {out_shape}", "mul")
        self._pinned += ones
        for other in full[1:]:
            self._tie(full[0], other, where)
        if from_last:
            self.last_dim.add(node.name)
        return full[0]

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
        producers = [name for name, layer in self.layers.items() if layer.kind in ("conv", "linear", "rnn", "heads")]
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
