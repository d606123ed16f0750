"""Module-tree spec and class allow-list for the ``.cnz`` format.

A module is recorded as its class key, its plain attributes from ``__dict__`` (JSON-safe values only), the names of
its parameters and buffers (each pointing to a tensor entry in the manifest), and its children. It is rebuilt without
running ``__init__``: ``obj = cls.__new__(cls); nn.Module.__init__(obj)``, then attributes, children and tensors are
set. So pruned or reshaped layers come back with their saved shapes. Only allow-listed classes are rebuilt this
way: a curated set of ``torch.nn`` classes plus classes decorated with :func:`packable`. A module of any other class
is taken from the ``model=skeleton`` passed to ``load``.

Class hooks (optional, for :func:`packable` classes): ``__pack_skip__`` (a set of attribute names derived from other
state, not saved) and ``__pack_restore__(self)`` (called after the module is rebuilt, to recompute them).

Spec node keys: ``class`` (class key), ``attrs`` (encoded attributes), ``params`` / ``buffers`` (local name ->
tensor name in the manifest, or None), ``non_persistent`` (buffer names left out of ``state_dict``), ``children``
(name -> node or None). A module reachable at two paths is stored once; the second node is ``{"ref": first_path}``.
Hooks (forward/backward/state-dict hooks) are not saved.
"""

from __future__ import annotations

import importlib
import math

import torch
from torch import nn
from torch.nn.utils import parametrize, prune

from ..errors import PackError

_REGISTRY: dict[str, type] = {}
_KEYS: dict[type, str] = {}

_TORCH_NN = (
    "Linear", "Bilinear", "Identity", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "LayerNorm", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish", "Hardswish", "Hardsigmoid",
    "Hardtanh", "Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Softplus",
    "MaxPool1d", "MaxPool2d", "AvgPool1d", "AvgPool2d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d",
    "Sequential", "ModuleList", "ModuleDict", "RNN", "LSTM", "GRU", "Embedding", "EmbeddingBag",
    "MultiheadAttention", "Upsample", "PixelShuffle", "PixelUnshuffle", "ZeroPad2d", "ConstantPad2d",
    "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder", "Transformer",
    "RNNCell", "LSTMCell", "GRUCell",
)
_BASE_SKIP = frozenset(nn.Module().__dict__) - {"training"}
_RNN_SKIP = frozenset({"_flat_weights", "_flat_weight_refs"})
# subpackages whose modules register packable classes; imported lazily by load()
_REGISTERING = ("models", "prune", "quantize", "decompose", "distill", "pq")


def class_key(cls: type) -> str:
    """Manifest key of a module class: ``torch.nn.<Name>`` for allow-listed torch classes, otherwise
    ``f"{cls.__module__}.{cls.__qualname__}"``."""
    return _KEYS.get(cls) or f"{cls.__module__}.{cls.__qualname__}"


def packable(cls: type) -> type:
    """Class decorator: put an ``nn.Module`` subclass on the allow-list so ``load`` rebuilds it from the manifest.

    Args:
        cls: the class; its key is ``f"{cls.__module__}.{cls.__qualname__}"``.

    Returns:
        ``cls`` unchanged.
    """
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise PackError(f"packable() needs an nn.Module subclass, got {cls!r}")
    key = f"{cls.__module__}.{cls.__qualname__}"
    _REGISTRY[key] = cls
    _KEYS[cls] = key
    return cls


def register_alias(key: str, cls: type) -> None:
    """Let files that name ``cls`` by an older class key (from before it moved) load it."""
    if cls not in _KEYS:
        raise PackError(f"register_alias: {cls!r} is not packable")
    _REGISTRY[key] = cls


def _register_torch():
    for name in _TORCH_NN:
        cls = getattr(nn, name, None)
        if cls is not None:
            _REGISTRY[f"torch.nn.{name}"] = cls
            _KEYS[cls] = f"torch.nn.{name}"
    from torch.nn.modules.linear import NonDynamicallyQuantizableLinear as ndq  # MultiheadAttention.out_proj

    _REGISTRY["torch.nn.NonDynamicallyQuantizableLinear"] = ndq
    _KEYS[ndq] = "torch.nn.NonDynamicallyQuantizableLinear"


_register_torch()


def allowed() -> dict[str, type]:
    """A copy of the allow-list: class key -> class."""
    return dict(_REGISTRY)


def import_registering() -> None:
    """Import compactnn's subpackages that register packable classes (missing ones are skipped)."""
    for sub in _REGISTERING:
        try:
            importlib.import_module(f"compactnn.{sub}")
        except ImportError:
            pass


def lookup(key: str) -> type | None:
    """Allow-listed class for ``key``, importing its compactnn module if needed; None if not allowed."""
    if key not in _REGISTRY and key.startswith("compactnn."):
        parts = key.split(".")
        for i in range(len(parts) - 1, 1, -1):  # only ever imports modules inside the compactnn package
            try:
                importlib.import_module(".".join(parts[:i]))
                break
            except ImportError:
                continue
    return _REGISTRY.get(key)


# ------------------------------------------------------------------------------------------ attribute values
def _callables() -> dict[str, Any]:
    """The functions an attribute may hold, by name (``TransformerEncoderLayer.activation``, a user block's
    activation): torch's elementwise activations. A name is looked up in this table, never imported."""
    import torch.nn.functional as F

    names = ["relu", "relu6", "gelu", "silu", "mish", "elu", "selu", "celu", "leaky_relu", "hardswish",
             "hardsigmoid", "hardtanh", "softplus", "softsign", "tanhshrink", "logsigmoid", "sigmoid", "tanh",
             "softmax", "log_softmax"]
    table = {f"torch.nn.functional.{n}": getattr(F, n) for n in names if hasattr(F, n)}
    table.update({f"torch.{n}": getattr(torch, n) for n in ("relu", "sigmoid", "tanh", "flatten")})
    return table


_CALLABLES = _callables()
_CALLABLE_NAMES = {id(fn): name for name, fn in _CALLABLES.items()}


def encode_value(value, where: str):
    """JSON form of a plain attribute value; tuples become ``{"t": [...]}``, dicts ``{"d": {...}}``, non-finite
    floats ``{"f": "inf"}`` and allow-listed torch functions ``{"fn": "torch.nn.functional.gelu"}``. Anything else
    raises PackError naming ``where`` (module path and attribute)."""
    kind = type(value)
    if id(value) in _CALLABLE_NAMES and _CALLABLES[_CALLABLE_NAMES[id(value)]] is value:
        return {"fn": _CALLABLE_NAMES[id(value)]}
    if value is None or kind in (bool, int, str):
        return value
    if kind is float:
        return value if math.isfinite(value) else {"f": repr(value)}
    if kind is list:
        return [encode_value(v, where) for v in value]
    if kind is tuple:
        return {"t": [encode_value(v, where) for v in value]}
    if kind is dict and all(type(k) is str for k in value):
        return {"d": {k: encode_value(v, where) for k, v in value.items()}}
    hint = "register it as a buffer" if isinstance(value, torch.Tensor) else "store it as int/float/bool/str/tuple"
    if callable(value):
        hint = (f"functions are stored only from an allow-list of torch activations ({', '.join(sorted(_CALLABLES))[:120]}"
                "...); use one of those, or load with model=skeleton after marking the attribute in __pack_skip__")
    raise PackError(f"cannot pack attribute {where}: a {kind.__name__} is not JSON-safe; {hint} or drop it")


#: What a user class's attribute that JSON cannot hold (a lambda, a function, an object) is saved as: the value is
#: taken from the ``model=skeleton`` at load, which such a class needs anyway.
FROM_SKELETON = {"skeleton": True}


def _encode_attr(value, where: str, user_class: bool):
    try:
        return encode_value(value, where)
    except PackError:
        if user_class:
            return dict(FROM_SKELETON)
        raise


class _FromSkeleton:
    """Marker of an attribute to take from the skeleton (see :data:`FROM_SKELETON`)."""


def decode_value(value):
    """Inverse of :func:`encode_value`."""
    if isinstance(value, list):
        return [decode_value(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"t"}:
            return tuple(decode_value(v) for v in value["t"])
        if set(value) == {"d"}:
            return {k: decode_value(v) for k, v in value["d"].items()}
        if set(value) == {"f"} and value["f"] in ("inf", "-inf", "nan"):
            return float(value["f"])
        if set(value) == {"fn"} and isinstance(value["fn"], str) and value["fn"] in _CALLABLES:
            return _CALLABLES[value["fn"]]
        if value == FROM_SKELETON:
            return _FromSkeleton
        raise PackError(f"malformed attribute value {str(value)[:80]!r} in manifest; file is corrupted")
    return value


# ------------------------------------------------------------------------------------------ describe / rebuild
def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _skip(cls: type) -> frozenset:
    extra = frozenset(getattr(cls, "__pack_skip__", ()))
    return _BASE_SKIP | extra | (_RNN_SKIP if issubclass(cls, nn.RNNBase) else frozenset())


def describe(model: nn.Module) -> tuple[dict, list[dict]]:
    """Spec tree of ``model`` and its tensors.

    Args:
        model: the module to describe.

    Returns:
        ``(root_node, tensors)``; each tensor is a dict with ``name`` (state_dict-style key), ``tensor``, ``kind``
        ("parameter"/"buffer"), ``persistent``, ``requires_grad`` and ``alias`` (name of an earlier entry holding the
        very same tensor object, or None).
    """
    tensors: list[dict] = []
    seen_t: dict[int, str] = {}
    seen_m: dict[int, str] = {}

    def add(name, t, kind, persistent):
        alias = seen_t.get(id(t))
        seen_t.setdefault(id(t), name)
        tensors.append({"name": name, "tensor": t, "kind": kind, "persistent": persistent,
                        "requires_grad": bool(t.requires_grad), "alias": alias})
        return name

    def walk(m: nn.Module, path: str) -> dict:
        if id(m) in seen_m:
            return {"ref": seen_m[id(m)]}
        seen_m[id(m)] = path
        where = path or "<root>"
        if parametrize.is_parametrized(m):
            raise PackError(f"module {where} has parametrizations; call torch.nn.utils.parametrize."
                            f"remove_parametrizations(module, name) on it before saving")
        if any(isinstance(h, prune.BasePruningMethod) for h in m._forward_pre_hooks.values()):
            raise PackError(f"module {where} is pruned with torch.nn.utils.prune; call "
                            f"torch.nn.utils.prune.remove(module, name) on it before saving")
        cls = type(m)
        skip = _skip(cls)
        user_class = lookup(class_key(cls)) is None
        attrs = {k: _encode_attr(v, f"{where}.{k} ({cls.__name__})", user_class)
                 for k, v in m.__dict__.items() if k not in skip}
        params = {n: None if p is None else add(_join(path, n), p, "parameter", True) for n, p in m._parameters.items()}
        non_persistent = sorted(m._non_persistent_buffers_set)
        buffers = {n: None if b is None else add(_join(path, n), b, "buffer", n not in non_persistent)
                   for n, b in m._buffers.items()}
        children = {n: None if c is None else walk(c, _join(path, n)) for n, c in m._modules.items()}
        return {"class": class_key(cls), "attrs": attrs, "params": params, "buffers": buffers,
                "non_persistent": non_persistent, "children": children}

    return walk(model, ""), tensors


def rebuild(root: dict, tensors: dict[str, torch.Tensor], requires_grad: dict[str, bool],
            skeleton: nn.Module | None = None) -> nn.Module:
    """Rebuild a module tree from its spec.

    Args:
        root: the root spec node (from :func:`describe`, via the manifest).
        tensors: decoded tensors by manifest name (aliases map to the same tensor object).
        requires_grad: ``requires_grad`` of each parameter by manifest name.
        skeleton: a model of the saved architecture; modules whose class is not allow-listed are taken from it
            (at the same path, same class, at any depth) and refilled in place from the manifest, only after the
            whole tree was rebuilt (a bad file leaves the skeleton untouched).

    Returns:
        The rebuilt module.
    """
    built: dict[str, nn.Module] = {}
    params: dict[int, nn.Parameter] = {}

    def tensor(name):
        if name not in tensors:
            raise PackError(f"spec names tensor {name!r} but the manifest has no such tensor; file is corrupted")
        return tensors[name]

    def param(name):
        t = tensor(name)
        if id(t) not in params:
            params[id(t)] = nn.Parameter(t, requires_grad=bool(requires_grad.get(name, False)))
        return params[id(t)]

    # The skeleton is read through this snapshot and refilled only once the whole tree has been rebuilt, so a bad
    # file leaves the caller's model as it was, and nested user classes find their skeleton modules.
    from_skeleton = dict(skeleton.named_modules(remove_duplicate=False)) if skeleton is not None else {}
    pending: list[tuple[nn.Module, dict]] = []

    def make(node: dict, path: str) -> nn.Module:
        where = path or "<root>"
        if not isinstance(node, dict):
            raise PackError(f"malformed spec at module {where}; file is corrupted")
        if "ref" in node:
            if node["ref"] not in built:
                raise PackError(f"module {where} refers to unknown module {node['ref']!r}; file is corrupted")
            return built[node["ref"]]
        key = node["class"]
        cls = lookup(key)
        if cls is None:
            if skeleton is None:
                raise PackError(f"module class {key} at path {where} is not on the allow-list; pass model=skeleton "
                                f"to load() (a model built like the saved one) or decorate the class with "
                                f"compactnn.pack.spec.packable")
            obj = from_skeleton.get(path)
            if obj is None:
                raise PackError(f"model=skeleton has no module at path {where}, where the file has a {key}; "
                                f"build the skeleton like the saved model")
            if class_key(type(obj)) != key:
                raise PackError(f"model=skeleton has a {class_key(type(obj))} at path {where} but the file has a "
                                f"{key}; build the skeleton like the saved model")
            state: dict = {}
            pending.append((obj, state))
        else:
            obj = cls.__new__(cls)
            nn.Module.__init__(obj)
            state = obj.__dict__
            state["_modules"], state["_parameters"], state["_buffers"] = {}, {}, {}
            state["_non_persistent_buffers_set"] = set()
        built[path] = obj
        state["attrs"] = {k: decode_value(v) for k, v in node["attrs"].items()}
        state["_modules"] = {name: None if child is None else make(child, _join(path, name))
                             for name, child in node["children"].items()}
        state["_parameters"] = {name: None if t is None else param(t) for name, t in node["params"].items()}
        state["_buffers"] = {name: None if t is None else tensor(t) for name, t in node["buffers"].items()}
        state["_non_persistent_buffers_set"] = set(node["non_persistent"])
        if state is obj.__dict__:
            attrs = state.pop("attrs")
            missing = [k for k, v in attrs.items() if v is _FromSkeleton]
            if missing:
                raise PackError(f"module {where} ({key}) was saved without its attribute {missing[0]!r} (a value "
                                f"JSON cannot hold, such as a function); load with model=skeleton")
            _finish(obj, attrs)
        return obj

    def _finish(obj: nn.Module, attrs: dict) -> None:
        obj.__dict__.update({k: v for k, v in attrs.items() if v is not _FromSkeleton})
        if isinstance(obj, nn.RNNBase):
            obj._init_flat_weights()
        if hasattr(obj, "__pack_restore__"):
            obj.__pack_restore__()

    try:
        model = make(root, "")
        for obj, state in pending:  # everything decoded: now refill the skeleton's modules
            for store in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set"):
                obj.__dict__[store] = state[store]
            _finish(obj, state["attrs"])
        return model
    except PackError:
        raise
    except (KeyError, TypeError) as e:
        raise PackError(f"malformed module spec ({type(e).__name__}: {' '.join(str(e).split())[:160]}); "
                        f"file is corrupted") from None
