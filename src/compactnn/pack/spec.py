"""Module-tree spec and class allow-list for the ``.cnz`` format.

A module is recorded as its class key, its plain attributes from ``__dict__`` (JSON-safe values only), the names of
its parameters and buffers (each pointing to a tensor entry in the manifest), and its children. It is rebuilt without
running ``__init__``: ``obj = cls.__new__(cls); nn.Module.__init__(obj)``, then attributes, children and tensors are
set. So pruned or reshaped layers come back with their saved shapes. Only allow-listed classes are rebuilt this
way: a curated set of ``torch.nn`` classes plus classes decorated with :func:`packable`. A module of any other class
is taken from the ``model=skeleton`` passed to ``load``.

Class hooks (optional, for :func:`packable` classes): ``__pack_skip__`` (a set of attribute names derived from other
state, not saved), ``__pack_restore__(self)`` (called after the module is rebuilt, to recompute them) and
``__pack_fields__`` (attribute names stored in ``__dict__`` under a property's name, which the loader otherwise
refuses as an attempt to replace the property).

Spec node keys: ``class`` (class key), ``attrs`` (encoded attributes), ``params`` / ``buffers`` (local name ->
tensor name in the manifest, or None), ``non_persistent`` (buffer names left out of ``state_dict``), ``children``
(name -> node or None). A module reachable at two paths is stored once; the second node is ``{"ref": first_path}``.
Hooks (forward/backward/state-dict hooks) are not saved.
"""

from __future__ import annotations

import importlib
import math
from typing import Any

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
#: compactnn modules whose import registers packable classes; imported (this fixed list only) by load(). A helper
#: adding packable classes in a module that its package's ``__init__`` does not import adds the module here.
REGISTERING = ("compactnn.graph", "compactnn.models", "compactnn.prune", "compactnn.quantize",
               "compactnn.quantize.intonly", "compactnn.decompose", "compactnn.distill", "compactnn.pq", "compactnn.segment")


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
    """Import the fixed list of compactnn modules that register packable classes (:data:`REGISTERING`).

    The list is part of the code, never read from a file: a class key in a manifest is only ever looked up in the
    registry, so loading a file can never import a module by a name the file gives.
    """
    for name in REGISTERING:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def lookup(key) -> type | None:
    """Allow-listed class registered under ``key`` (see :func:`packable`), else None. Never imports anything."""
    return _REGISTRY.get(key) if type(key) is str else None


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

#: What a user class's attribute that JSON cannot hold (a lambda, a function, an object) is saved as: the value is
#: taken from the ``model=skeleton`` at load, which such a class needs anyway.
FROM_SKELETON = {"skeleton": True}


class _FromSkeleton:
    """Marker of an attribute to take from the skeleton (see :data:`FROM_SKELETON`)."""


def _encode_attr(value, where: str, user_class: bool):
    try:
        return encode_value(value, where)
    except PackError:
        if user_class:
            return dict(FROM_SKELETON)
        raise


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
        hint = ("functions are stored only from an allow-list of torch activations (torch.nn.functional.relu, "
                "gelu, silu, ...); use one of those, or keep the class off the allow-list and load with "
                "model=skeleton")
    raise PackError(f"cannot pack attribute {where}: a {kind.__name__} is not JSON-safe; {hint} or drop it")


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


# ------------------------------------------------------------------------------------------ validating a tree
MAX_MODULES = 100_000
MAX_MODULE_DEPTH = 64
_NODE = {"class", "attrs", "params", "buffers", "non_persistent", "children"}

# constructor arguments of a reference instance of each allow-listed torch class that needs some: the attributes a
# file gives such a module must cover the reference's and have compatible types (an int stays an int, ...)
_REFERENCE_ARGS = {
    "Linear": (2, 2), "Bilinear": (2, 2, 2), "Conv1d": (2, 2, 1), "Conv2d": (2, 2, 1), "Conv3d": (2, 2, 1),
    "ConvTranspose1d": (2, 2, 1), "ConvTranspose2d": (2, 2, 1), "BatchNorm1d": (2,), "BatchNorm2d": (2,),
    "BatchNorm3d": (2,), "LayerNorm": (2,), "GroupNorm": (1, 2), "InstanceNorm1d": (2,), "InstanceNorm2d": (2,),
    "MaxPool1d": (2,), "MaxPool2d": (2,), "AvgPool1d": (2,), "AvgPool2d": (2,), "AdaptiveAvgPool1d": (1,),
    "AdaptiveAvgPool2d": (1,), "AdaptiveMaxPool1d": (1,), "AdaptiveMaxPool2d": (1,), "Unflatten": (1, (2, 2)),
    "RNN": (2, 2), "LSTM": (2, 2), "GRU": (2, 2), "Embedding": (3, 2), "EmbeddingBag": (3, 2),
    "MultiheadAttention": (2, 1), "PixelShuffle": (2,), "PixelUnshuffle": (2,), "ZeroPad2d": (1,),
    "ConstantPad2d": (1, 0.0), "NonDynamicallyQuantizableLinear": (2, 2), "RNNCell": (2, 2), "LSTMCell": (2, 2),
    "GRUCell": (2, 2), "TransformerEncoderLayer": (2, 1, 4), "TransformerDecoderLayer": (2, 1, 4),
}
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_references: dict[type, nn.Module | None] = {}


def _reference(cls: type) -> nn.Module | None:
    """A default-built instance of an allow-listed torch class (None for compactnn's own classes)."""
    if cls not in _references:
        ref = None
        if cls.__module__.startswith("torch.nn"):
            try:
                ref = cls(*_REFERENCE_ARGS.get(cls.__name__, ()))
            except Exception:  # noqa: BLE001 - a class we cannot build has no reference; it is checked less
                ref = None
        _references[cls] = ref
    return _references[cls]


def _kind(v) -> str:
    if v is None:
        return "none"
    if type(v) is bool:
        return "bool"
    if type(v) is int:
        return "int"
    if type(v) is float:
        return "float"
    if type(v) is str:
        return "str"
    if type(v) in (tuple, list):
        return "seq"
    if type(v) is dict:
        return "dict"
    return "other"


def _compatible(ref, value) -> bool:
    """Whether a file's attribute ``value`` may stand where the reference instance has ``ref``."""
    k, r = _kind(value), _kind(ref)
    if r == "none":
        return k != "other"
    if k == "float" and not math.isfinite(value):
        return r == "float" and not math.isfinite(ref)
    if r == "bool":
        return k == "bool"
    if r == "float":
        return k in ("int", "float")
    if r == "int":  # an int option that torch also takes as a tuple (kernel_size=3 or (3, 3))
        return (k == "int" and abs(value) < 2**40) or (k == "seq" and len(value) <= 64 and all(
            v is None or _compatible(ref, v) for v in value))
    if r == "str":
        return k == "str" and len(value) <= 100
    if r == "seq":
        if k == "str":  # Conv padding="same"
            return len(value) <= 100
        if k == "int":
            return all(_kind(x) in ("int", "none") for x in ref)
        if k != "seq" or len(value) > 64:
            return False
        return all(any(_compatible(x, v) for x in ref) if ref else _kind(v) != "other" for v in value)
    if r == "dict":
        return k == "dict"
    if callable(ref) and not isinstance(ref, type):  # an activation function: one of the allow-listed ones
        return any(value is fn for fn in _CALLABLES.values())
    return False


def _name_ok(name) -> bool:
    return type(name) is str and 0 < len(name) <= 200 and "." not in name


def _bad(where: str, what: str):
    raise PackError(f"module {where}: {what}; the file is corrupted")


def _check_attrs(cls: type, attrs: dict, taken: set, where: str) -> dict:
    out = {}
    for key, raw in attrs.items():
        if not (type(key) is str and key.isidentifier() and len(key) <= 100):
            _bad(where, f"attribute name {str(key)[:40]!r} is not a valid name")
        if key.startswith("__") or key in _BASE_SKIP or key in taken:
            _bad(where, f"attribute {key!r} would overwrite module internals")
        static = None
        for klass in cls.__mro__:
            if key in vars(klass):
                static = vars(klass)[key]
                break
        if key in getattr(cls, "__pack_fields__", ()):
            pass  # the class stores this attribute under its property's name on purpose (its restore hook reads it)
        elif callable(static) or isinstance(static, (property, classmethod, staticmethod)) or \
                hasattr(static, "__get__") and not isinstance(static, (int, float, str, bool, tuple, type(None))):
            _bad(where, f"attribute {key!r} would replace the {cls.__name__} method or property of that name")
        out[key] = decode_value(raw)
    ref = _reference(cls)
    if ref is not None:
        for key, want in sorted(ref.__dict__.items(), key=lambda kv: kv[0] == "training"):  # name a real one first
            if key in _skip(cls):
                continue
            if key not in out:
                _bad(where, f"a {cls.__name__} needs attribute {key!r}, which the file lacks")
            if not _compatible(want, out[key]):
                _bad(where, f"attribute {key} of a {cls.__name__} is {str(out[key])[:40]}, expected a value like "
                            f"{str(want)[:40]}")
    return out


class _Plan:
    """One module of the file, checked: class, the skeleton object to refill (or None to build), decoded attrs."""

    __slots__ = ("path", "cls", "target", "attrs", "params", "buffers", "non_persistent", "children", "ref")

    def __init__(self, path):
        self.path, self.ref, self.target = path, None, None


def plan(root, entries: dict, skeleton: nn.Module | None = None) -> _Plan:
    """Check the whole module tree of a manifest before anything is built or any skeleton module touched.

    Checks, per node: the exact set of keys and their types; the class resolves through the registry (or, for a
    class the registry does not know, the skeleton has a module of that very class at that path); attribute names
    are plain identifiers that do not overwrite module internals, methods or properties, and, for torch classes,
    cover the attributes of a default instance with compatible types; parameter/buffer/child names are unique
    plain names; every tensor named exists, parameters name parameter entries and buffers buffer entries;
    ``{"ref": path}`` nodes name an earlier module that is not this node or one of its ancestors (no cycles);
    at most :data:`MAX_MODULES` modules, nested at most :data:`MAX_MODULE_DEPTH` deep.

    Returns the checked plan that :func:`rebuild` builds. Every failure is one PackError line.
    """
    skeleton_modules: dict[str, nn.Module] = {}
    if skeleton is not None:  # the skeleton as the user passed it, before anything changes
        for name, mod in skeleton.named_modules(remove_duplicate=False):
            skeleton_modules.setdefault(name, mod)
    seen: dict[str, _Plan] = {}
    count = 0

    def visit(node, path: str, depth: int) -> _Plan:
        nonlocal count
        where = path or "<root>"
        count += 1
        if count > MAX_MODULES:
            raise PackError(f"the file has more than {MAX_MODULES:,} modules; the file is corrupted")
        if depth > MAX_MODULE_DEPTH:
            raise PackError(f"modules nest more than {MAX_MODULE_DEPTH} deep at {where[:80]}...; the file is corrupted")
        if type(node) is not dict:
            _bad(where, f"spec is a {type(node).__name__}, not an object")
        p = _Plan(path)
        if "ref" in node:
            ref = node["ref"]
            if set(node) != {"ref"} or type(ref) is not str:
                _bad(where, "malformed module reference")
            if ref not in seen:
                _bad(where, f"refers to unknown module {ref[:80]!r}")
            if ref == path or ref == "" or path.startswith(ref + "."):
                _bad(where, f"refers to {ref[:80] or '<root>'!r}, which contains it (a module cannot contain itself)")
            p.ref = seen[ref]
            return p
        if set(node) != _NODE:
            _bad(where, f"malformed module spec: keys are {sorted(str(k)[:20] for k in node)[:8]}, expected {sorted(_NODE)}")
        key = node["class"]
        if type(key) is not str or len(key) > 256:
            _bad(where, f"class key {str(key)[:60]!r} is not a class name")
        for field in ("attrs", "params", "buffers", "children"):
            if type(node[field]) is not dict:
                _bad(where, f"{field} is a {type(node[field]).__name__}, not an object")
        if type(node["non_persistent"]) is not list:
            _bad(where, "non_persistent is not a list")
        cls = lookup(key)
        if cls is None:
            if skeleton is None:
                raise PackError(f"module class {key[:120]} at path {where[:120]} is not on the allow-list; pass "
                                f"model=skeleton to load() (a model built like the saved one) or decorate the class "
                                f"with compactnn.pack.spec.packable")
            obj = skeleton_modules.get(path)
            if obj is None:
                raise PackError(f"model=skeleton has no module at path {where[:120]}, where the file has a "
                                f"{key[:120]}; build the skeleton like the saved model")
            if class_key(type(obj)) != key:
                raise PackError(f"model=skeleton has a {class_key(type(obj))} at path {where[:120]} but the file has "
                                f"a {key[:120]}; build the skeleton like the saved model")
            cls, p.target = type(obj), obj
        p.cls = cls
        names = [*node["params"], *node["buffers"], *node["children"]]
        for name in names:
            if not _name_ok(name):
                _bad(where, f"member name {str(name)[:40]!r} is not a plain name")
        if len(set(names)) != len(names):
            _bad(where, "a name is used twice among its parameters, buffers and children")
        for field, kind in (("params", "parameter"), ("buffers", "buffer")):
            for name, tname in node[field].items():
                if tname is None:
                    continue
                if type(tname) is not str or tname not in entries:
                    raise PackError(f"module {where}: spec names tensor {str(tname)[:80]!r} but the manifest has no "
                                    f"such tensor; file is corrupted")
                if entries[tname]["kind"] != kind:
                    _bad(where, f"{field[:-1]} {name} names the {entries[tname]['kind']} {tname[:60]!r}")
                if kind == "parameter" and entries[tname]["dtype"] not in ("float64", "float32", "float16",
                                                                           "bfloat16") \
                        and entries[tname].get("requires_grad") is not False:
                    _bad(where, f"parameter {name} has dtype {entries[tname]['dtype']}; only parameters without "
                                "gradient (requires_grad false) may be integer")
        if not all(type(n) is str and n in node["buffers"] for n in node["non_persistent"]):
            _bad(where, "non_persistent names a buffer the module does not have")
        p.attrs = _check_attrs(cls, node["attrs"], set(names), where)
        if type(p.attrs.get("training")) is not bool:  # every module has it; forward and eval read it
            _bad(where, "attribute training must be true or false")
        missing = [k for k, v in p.attrs.items() if v is _FromSkeleton]
        if missing and p.target is None:
            raise PackError(f"module {where[:120]} ({key[:120]}) was saved without its attribute {missing[0]!r} (a "
                            f"value JSON cannot hold, such as a function); load with model=skeleton")
        p.attrs = {k: v for k, v in p.attrs.items() if v is not _FromSkeleton}
        ref = _reference(cls)
        if ref is not None and not isinstance(ref, (*_CONTAINERS, nn.RNNBase)):
            missing = (set(ref._parameters) - set(node["params"])) | (set(ref._modules) - set(node["children"]))
            if missing:
                _bad(where, f"a {cls.__name__} needs {', '.join(sorted(missing))}, which the file lacks")
        p.params, p.buffers = dict(node["params"]), dict(node["buffers"])
        p.non_persistent = list(node["non_persistent"])
        seen[path] = p
        p.children = {n: None if c is None else visit(c, _join(path, n), depth + 1)
                      for n, c in node["children"].items()}
        return p

    return visit(root, "", 0)


def rebuild(root, tensors: dict[str, torch.Tensor], requires_grad: dict[str, bool],
            skeleton: nn.Module | None = None, entries: dict | None = None, checked: _Plan | None = None) -> nn.Module:
    """Rebuild a module tree from its spec.

    The whole tree is checked first (:func:`plan`); then every allow-listed module is built afresh and restored
    (``__pack_restore__``), and only then are the skeleton's modules refilled, so a file that fails to load leaves
    a user's skeleton untouched. Skeleton modules are found in the skeleton as passed (nested custom classes at
    any depth work).

    Args:
        root: the root spec node (from :func:`describe`, via the manifest).
        tensors: decoded tensors by manifest name (aliases map to the same tensor object).
        requires_grad: ``requires_grad`` of each parameter by manifest name.
        skeleton: a model of the saved architecture; modules whose class is not allow-listed are taken from it
            (at the same path, same class) and refilled in place from the manifest.
        entries: the manifest's tensor entries (default: every tensor is taken as fitting its slot).
        checked: the plan from :func:`plan`, if the caller made it already.

    Returns:
        The rebuilt module.
    """
    if entries is None:
        entries = {n: {"kind": "parameter" if n in requires_grad else "buffer",
                       "dtype": str(t.dtype).removeprefix("torch.")} for n, t in tensors.items()}
    top = checked if checked is not None else plan(root, entries, skeleton)
    params: dict[int, nn.Parameter] = {}

    def param(name):
        t = tensors[name]
        if id(t) not in params:
            params[id(t)] = nn.Parameter(t, requires_grad=bool(requires_grad.get(name, False)))
        return params[id(t)]

    built: dict[int, nn.Module] = {}
    pending: list[tuple[nn.Module, _Plan, dict]] = []  # skeleton modules, refilled last
    restore_after: list[nn.Module] = []

    def make(p: _Plan) -> nn.Module:
        if p.ref is not None:
            return built[id(p.ref)]
        where = p.path or "<root>"
        stores = {"_parameters": {n: None if t is None else param(t) for n, t in p.params.items()},
                  "_buffers": {n: None if t is None else tensors[t] for n, t in p.buffers.items()}}
        if p.target is not None:
            obj = p.target
            built[id(p)] = obj
            stores["_modules"] = {n: None if c is None else make(c) for n, c in p.children.items()}
            pending.append((obj, p, stores))
            restore_after.append(obj)
            return obj
        obj = p.cls.__new__(p.cls)
        nn.Module.__init__(obj)
        built[id(p)] = obj
        obj.__dict__.update(p.attrs)
        for n, c in p.children.items():
            obj._modules[n] = None if c is None else make(c)
        obj._parameters.update(stores["_parameters"])
        obj._buffers.update(stores["_buffers"])
        obj._non_persistent_buffers_set.update(p.non_persistent)
        try:
            if isinstance(obj, nn.RNNBase):
                obj._init_flat_weights()
            if hasattr(obj, "__pack_restore__"):
                obj.__pack_restore__()
        except Exception as err:  # noqa: BLE001 - a forged module that cannot be restored is a bad file
            msg = " ".join(str(err).split())[:160]
            raise PackError(f"module {where} ({p.cls.__name__}) cannot be rebuilt from the file "
                            f"({type(err).__name__}: {msg}); the file is corrupted") from None
        return obj

    result = make(top)
    for obj, p, stores in pending:  # nothing below can fail: the file is fully checked and built
        for store in (obj._parameters, obj._buffers, obj._modules, obj._non_persistent_buffers_set):
            store.clear()
        obj.__dict__.update(p.attrs)
        obj._parameters.update(stores["_parameters"])
        obj._buffers.update(stores["_buffers"])
        obj._modules.update(stores["_modules"])
        obj._non_persistent_buffers_set.update(p.non_persistent)
    for obj in restore_after:
        if isinstance(obj, nn.RNNBase):
            obj._init_flat_weights()
        if hasattr(obj, "__pack_restore__"):
            obj.__pack_restore__()
    return result
