"""Configs: checked, frozen dataclasses that name a method and its settings, and the one checker behind them.

Every config (a method's :class:`MethodConfig`, a :class:`FineTune`, a recipe section) subclasses :class:`Checked`.
Building one, from Python or from YAML, runs the same checker over its fields (:func:`check_fields`), driven by the
field annotations: types, numeric bounds (:class:`Range` inside ``Annotated``), lists that become tuples, mappings
that become read-only :class:`FrozenMap` s (so configs stay hashable), and per-layer values (:data:`PerLayer`).
Then the class's own :meth:`Checked.validate` runs the checks that tie fields together. So ``LC(sparsity="x")`` in
Python and ``sparsity: x`` in a recipe fail with the same line (the recipe's line adds where it is).

The shared field types are the project's vocabulary (see the README's "Concepts"): :data:`Sparsity` (fraction
removed), :data:`Ratio` (a compression factor >= 1), :data:`Bits`, :data:`Patterns` (``layers`` / ``exclude``),
:data:`PerLayer` (``{pattern: value}`` overrides, resolved once by :func:`compactnn.compress`).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from torch import nn

from .errors import ConfigError


# ----------------------------------------------------------------------------------------------- field types
@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric field, used as ``Annotated[float, Range(0, 1, hi_open=True, note="fraction removed")]``."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def holds(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or not (v > self.hi or (self.hi_open and v == self.hi))

    def describe(self) -> str:
        if self.lo is not None and self.hi is not None:
            return f"in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}{')' if self.hi_open else ']'}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {self.lo:g}"
        return f"{'<' if self.hi_open else '<='} {self.hi:g}"


@dataclasses.dataclass(frozen=True)
class NonEmpty:
    """A list field that must hold at least one item: ``Annotated[tuple[str, ...], NonEmpty()]``."""


class _PerLayerMark:
    """Marks a field whose value may be one value or ``{layer pattern: value}`` (see :data:`PerLayer`)."""


PER_LAYER = _PerLayerMark()


class _PerLayerAlias:
    def __getitem__(self, tp: Any) -> Any:
        return Annotated[Union[tp, dict[str, tp]], PER_LAYER]


#: ``PerLayer[T]``: one ``T`` for every selected layer, or ``{pattern: T}``. In a mapping the exact layer name wins,
#: else the first pattern (in the mapping's order) that matches; a layer that no key matches is not touched by the
#: method, unless a ``"*"`` key gives a default (as torchao's per-FQN configs). Resolved by :func:`compactnn.compress`.
PerLayer = _PerLayerAlias()

MAX_INT = 2**31 - 1
Sparsity = Annotated[float, Range(0.0, 1.0, hi_open=True, note="fraction removed")]
Fraction = Annotated[float, Range(0.0, 1.0, lo_open=True, hi_open=True)]
Ratio = Annotated[float, Range(1.0, 1e12, note="a compression factor, e.g. 10 for 10x")]
Bits = Annotated[int, Range(1, 32, note="bits")]
PositiveInt = Annotated[int, Range(1, MAX_INT)]
NonNegativeInt = Annotated[int, Range(0, MAX_INT)]
Epochs = Annotated[int, Range(0, 100_000, note="epochs")]
BatchSize = Annotated[int, Range(1, 1 << 20, note="examples per step")]
LearningRate = Annotated[float, Range(0.0, 100.0, lo_open=True)]
NonNegative = Annotated[float, Range(0.0, 1e12)]
Seed = Annotated[int, Range(0, 2**32 - 1, note="a seed")]
#: ``fnmatch`` patterns over module names (``"fc*"``, ``"layer?.0.conv*"``); a pattern also matches
#: ``"<name>.weight"``. ``None`` (for ``layers``) means every layer the method can handle.
Patterns = Union[Annotated[tuple[str, ...], NonEmpty()], None]


class FrozenMap(Mapping):
    """A read-only, hashable mapping: what a config's ``dict`` field holds (``to_dict`` gives a plain dict back)."""

    __slots__ = ("_d",)

    def __init__(self, items: Any = ()) -> None:
        self._d = dict(items)

    def __getitem__(self, key: Any) -> Any:
        return self._d[key]

    def __iter__(self):
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(tuple(self._d.items()))

    def __repr__(self) -> str:
        return repr(self._d)


# ---------------------------------------------------------------------------------------------------- checking
def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: error messages never carry a huge value."""
    try:
        text = repr(value) if not isinstance(value, (list, tuple, dict)) or len(value) < 50 else \
            f"<{type(value).__name__} of {len(value)} items>"
    except Exception:  # a hostile __repr__
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def type_name(tp: Any) -> str:
    """Readable name of an annotation, for error messages (``list of str | null``, ``float in [0, 1)``)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *marks = get_args(tp)
        ranges = [m for m in marks if isinstance(m, Range)]
        return type_name(base) + (f" {ranges[0].describe()}" if ranges else "")
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if origin in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        args = get_args(tp)
        return f"mapping of {type_name(args[1])}" if args else "mapping"
    return getattr(tp, "__name__", str(tp))


def _number(value: Any, tp: type, path: str) -> Any:
    if isinstance(value, bool):
        raise ConfigError(f"{path}: expected {tp.__name__}, got {short(value)}")
    if tp is int:
        if isinstance(value, int):
            return value
        raise ConfigError(f"{path}: expected int, got {short(value)}")
    if isinstance(value, (int, float)):
        v = float(value) if not isinstance(value, int) or abs(value) < 2**1023 else math.inf
        if not math.isfinite(v):
            raise ConfigError(f"{path}: expected a finite number, got {short(value)}")
        return v
    raise ConfigError(f"{path}: expected float, got {short(value)}")


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in the field's form; ConfigError otherwise.

    Lists become tuples, mappings become :class:`FrozenMap`, ints become floats where a float is asked, a mapping
    becomes the dataclass it describes. Floats must be finite; ``Range`` bounds are checked.
    """
    origin = get_origin(tp)
    if tp is Any or tp is object:
        return value
    if origin is Annotated:
        base, *marks = get_args(tp)
        out = coerce(value, base, path)
        for mark in marks:
            if isinstance(mark, Range) and isinstance(out, (int, float)) and not mark.holds(out):
                note = f" ({mark.note})" if mark.note else ""
                raise ConfigError(f"{path} must be {mark.describe()}{note}, got {short(value)}")
            if isinstance(mark, NonEmpty) and len(out) == 0:
                raise ConfigError(f"{path} must not be empty; give at least one item or null")
        return out
    if origin in (Union, types.UnionType):
        inner = None  # the error from the arm the value is shaped like: a mapping for a dataclass, a list for a tuple
        for arg in get_args(tp):
            try:
                return coerce(value, arg, path)
            except ConfigError as err:
                base = get_args(arg)[0] if get_origin(arg) is Annotated else arg
                shaped = ((isinstance(value, Mapping) and (dataclasses.is_dataclass(base)
                                                            or get_origin(base) in (dict, Mapping)))
                          or (isinstance(value, (list, tuple)) and get_origin(base) in (tuple, list))
                          or (isinstance(value, (int, float)) and not isinstance(value, bool)
                              and base in (int, float)))
                inner = inner or (err if shaped else None)
        raise inner or ConfigError(f"{path}: expected {type_name(tp)}, got {short(value)}")
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in get_args(tp)):
            return value
        raise ConfigError(f"{path}: expected one of {type_name(tp)}, got {short(value)}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{path}: expected null, got {short(value)}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {type_name(tp)}, got {short(value)}")
        args = [a for a in get_args(tp) if a is not Ellipsis] or [Any]
        if Ellipsis not in get_args(tp) and len(get_args(tp)) > 1:  # a fixed-length tuple
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {short(value)}")
            return tuple(coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        return tuple(coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {short(value)}")
        kt, vt = (get_args(tp) or (Any, Any))
        return FrozenMap((coerce(k, kt, f"{path} key"), coerce(v, vt, f"{path}[{k!r}]")) for k, v in value.items())
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} fields, got {short(value)}")
        return build(tp, value, path)
    if tp in (int, float):
        return _number(value, tp, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path}: expected {type_name(tp)}, got {short(value)}")


def _hints(cls: type) -> dict[str, Any]:
    hints = cls.__dict__.get("_hints_cache")
    if hints is None:
        hints = get_type_hints(cls, include_extras=True)
        cls._hints_cache = hints  # type: ignore[attr-defined]
    return hints


def init_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The fields of dataclass ``cls`` that its constructor takes, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _at(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _unknown(cls: type, keys: Any, path: str) -> None:
    fields = init_fields(cls)
    unknown = [k for k in keys if k not in fields]
    if not unknown:
        return
    key = unknown[0]
    renamed = getattr(cls, "renamed", {}).get(key) if isinstance(key, str) else None
    if renamed:
        raise ConfigError(f"{path or 'recipe'}: key {key!r} was renamed: {renamed}")
    raise ConfigError(f"{path or 'recipe'}: unknown key {short(key)}; valid keys are "
                      f"{', '.join(sorted(fields)) or '(none)'}")


def check_fields(obj: Any, path: str) -> None:
    """Check and normalize every field of the dataclass instance ``obj`` in place (see :func:`coerce`)."""
    hints = _hints(type(obj))
    for name in init_fields(type(obj)):
        value = getattr(obj, name)
        fixed = coerce(value, hints[name], _at(path, name))
        if fixed is not value:
            object.__setattr__(obj, name, fixed)


def build(cls: type, values: Mapping[str, Any], path: str | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping, refusing unknown keys and missing required fields.

    Args:
        cls: a dataclass (normally a :class:`Checked` subclass).
        values: the fields, e.g. parsed YAML.
        path: where the mapping sits, for messages (``"train"``, ``"lc.finetune"``); default the class's label.
    """
    path = label_of(cls) if path is None else path
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path or cls.__name__}: expected a mapping of {cls.__name__} fields, got {short(values)}")
    _unknown(cls, values, path)
    hints = _hints(cls)
    kwargs = {}
    for name, f in init_fields(cls).items():
        if name in values:
            kwargs[name] = coerce(values[name], hints[name], _at(path, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{path or cls.__name__.lower()}: missing required field {name!r} "
                              f"({type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{path or cls.__name__.lower()}: {err}") from None


def label_of(cls: type) -> str:
    """The name a config is known by in messages: its ``method`` for a method config, else ``label``."""
    return getattr(cls, "method", "") or getattr(cls, "label", "") or cls.__name__.lower()


class _CheckedMeta(type):
    """Turns unknown or misspelled keyword arguments into the library's one-line ConfigError (not a TypeError)."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if dataclasses.is_dataclass(cls):
            _unknown(cls, kwargs, label_of(cls))
            fields = init_fields(cls)
            if len(args) > len(fields):
                raise ConfigError(f"{label_of(cls)}: takes at most {len(fields)} positional values, got {len(args)}")
            missing = [n for n, f in list(fields.items())[len(args):] if n not in kwargs
                       and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
            if missing:
                hint = type_name(_hints(cls)[missing[0]])
                raise ConfigError(f"{label_of(cls)}: missing required field {missing[0]!r} ({hint})")
        return super().__call__(*args, **kwargs)


@dataclasses.dataclass(frozen=True)
class Checked(metaclass=_CheckedMeta):
    """Base of every config dataclass: building one checks every field, then runs :meth:`validate`.

    Subclasses are frozen dataclasses. They may set ``label`` (the name in messages) and ``renamed``
    (``{old key: "what to write instead"}``, so an old key is refused with a message naming the new one), and
    override :meth:`validate` for checks that tie several fields together (raise with :func:`check`).
    """

    label: ClassVar[str] = ""
    renamed: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        check_fields(self, label_of(type(self)))
        _merge_finetune_defaults(self)
        try:
            self.validate()
        except ConfigError as err:
            raise ConfigError(f"{label_of(type(self))}: {err}") from None

    def validate(self) -> None:
        """Cross-field checks; the field types and bounds are already checked."""


@dataclasses.dataclass(frozen=True)
class MethodConfig(Checked):
    """Base class of every method config.

    Class attributes:
        method: the YAML name (``magnitude-prune``).
        description: one line for ``compactnn list methods``.
        kinds: the layer classes whose weights the method works on (what ``layers`` / ``exclude`` select among).
        any_weight: the method also works on every other weight Parameter of >= 2 dims (an LSTM's
            ``weight_hh_l0``, ``MultiheadAttention.in_proj_weight``, a user layer's ``weight``), each a
            :class:`compactnn.layers.WeightSlot` named ``"<module>.<parameter>"``. Methods without it list such
            weights as skipped, with a warning.
        replaces: the method puts a module of another class in place of each layer (factorized, product-quantized
            layers...); ``compress`` then leaves alone, with a warning, a layer whose parent reads its ``weight``
            directly (``MultiheadAttention.out_proj``), and refuses it when ``layers`` names it.
        example: a tiny setting (YAML fields) that the registry-driven tests run on ``example_model``; every
            registered method must give one.
        example_model: registry model name for that test.
    """

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kinds: ClassVar[tuple[type, ...] | None] = None
    any_weight: ClassVar[bool] = False
    replaces: ClassVar[bool] = False
    example: ClassVar[dict[str, Any] | None] = None
    example_model: ClassVar[str] = "lenet300"


@dataclasses.dataclass(frozen=True)
class TeacherSpec(Checked):
    """A teacher built from the model registry and trained on the data being compressed (``teacher: {model:
    resnet56, train: {epochs: 30, lr: 0.1}}``; ``train`` unset: 10 epochs of SGD at lr 0.1); see
    :func:`compactnn.distill.load_teacher`."""

    label = "teacher"
    model: str
    args: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: "FineTune | None" = None
    seed: Seed = 0


Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["cosine", "step", "constant"]


@dataclasses.dataclass(frozen=True)
class FineTune(Checked):
    """Every training setting in compactnn: a method's fine-tuning, an LC L step, the recipe's ``train:`` section.

    A field left ``None`` is filled, in this order, from the method's own default schedule (its default
    ``finetune``), the recipe's ``train:`` section (for a stage of a recipe; see :meth:`inherit`: ``lr`` becomes a
    tenth of the training lr, ``epochs`` is never inherited) and then :meth:`fit_kwargs`'s rule:

    - ``optimizer`` unset: the family the model was trained with, when compactnn trained it (``fit`` records it on
      the model as ``compactnn_training``): SGD stays SGD, Adam/AdamW become AdamW. A model trained elsewhere is
      fine-tuned with AdamW: small adaptive steps do not wreck a model trained with Adam, and do little harm to
      one trained with SGD, whereas SGD at 0.01 can wreck an Adam-trained transformer.
    - ``lr`` unset: 0.01 for SGD, 1e-4 for Adam/AdamW.
    - everything else: :func:`compactnn.train.fit`'s defaults (momentum 0.9, cosine schedule, batch 128, weight decay
      5e-4, seed 0), and ``epochs`` 5.

    ``val_split`` holds out that share of the training set: the fine-tune keeps the weights of its best epoch on it
    (``keep_best``) and warns when it ends below the uncompressed model's accuracy there. ``loss`` replaces
    cross-entropy with ``loss(model, x, y) -> scalar`` (Python only).

    ``teacher`` (a ``.cnz`` path, an ``nn.Module`` or a :class:`TeacherSpec` mapping) replaces cross-entropy with
    Hinton's distillation loss :func:`compactnn.distill.kd_loss` at ``temperature`` (default 4) and ``alpha`` (the
    weight of the soft term, default 0.9), for every method that fine-tunes through
    :func:`compactnn.layers.run_finetune`; ``temperature`` and ``alpha`` are ignored without a teacher.
    """

    label = "finetune"

    epochs: Epochs | None = None
    lr: LearningRate | None = None
    optimizer: Optimizer | None = None
    momentum: Annotated[float, Range(0.0, 1.0, hi_open=True)] | None = None
    nesterov: bool | None = None
    schedule: Schedule | None = None
    batch_size: BatchSize | None = None
    weight_decay: Annotated[float, Range(0.0, 1.0)] | None = None
    seed: Seed | None = None
    val_split: Fraction | None = None
    keep_best: bool | None = None
    loss: Any = None
    teacher: str | TeacherSpec | nn.Module | None = None
    temperature: Annotated[float, Range(0.0, 1000.0, lo_open=True, note="distillation temperature")] | None = None
    alpha: Annotated[float, Range(0.0, 1.0, note="weight of the distillation term")] | None = None

    #: Fine-tuning epochs when neither the stage nor the method says.
    DEFAULT_EPOCHS: ClassVar[int] = 5
    #: lr of a fine-tune relative to the training lr when it is unset.
    LR_FACTOR: ClassVar[float] = 0.1
    #: Fine-tuning lr per optimizer family when nothing sets it.
    DEFAULT_LR: ClassVar[dict[str, float]] = {"sgd": 0.01, "adam": 1e-4, "adamw": 1e-4}

    def validate(self) -> None:
        check(self.loss is None or callable(self.loss),
              "loss must be a Python callable loss(model, x, y) -> scalar (it cannot be set from YAML)")
        check(self.loss is None or self.teacher is None,
              "loss and teacher both replace the training loss; give one of them")

    def fill(self, other: "FineTune") -> "FineTune":
        """This fine-tune with its unset fields taken from ``other`` (all fields)."""
        fills = {f: getattr(other, f) for f in init_fields(FineTune)
                 if getattr(self, f) is None and getattr(other, f) is not None}
        return dataclasses.replace(self, **fills) if fills else self

    def inherit(self, train: "FineTune | None") -> "FineTune":
        """This fine-tune with its unset fields filled from a recipe's ``train:`` settings (``lr``: a tenth of
        train's; ``epochs`` is never inherited)."""
        if train is None:
            return self
        fills = {f: getattr(train, f) for f in init_fields(FineTune)
                 if f not in ("epochs", "lr") and getattr(self, f) is None and getattr(train, f) is not None}
        if self.lr is None and train.lr is not None:
            fills["lr"] = train.lr * self.LR_FACTOR
        return dataclasses.replace(self, **fills) if fills else self

    def fit_kwargs(self, trained_with: str | None = "sgd") -> dict[str, Any]:
        """Keyword arguments for :func:`compactnn.train.fit`: the set fields, with ``epochs``, ``optimizer`` and ``lr``
        always present (see the class docstring for the rule).

        Args:
            trained_with: the optimizer the model was trained with (``"sgd"``, ``"adam"``, ``"adamw"``), or None when
                unknown (then AdamW). The default keeps SGD, for schedules written for SGD.
        """
        skip = ("val_split", "keep_best", "loss", "teacher", "temperature", "alpha")
        out = {k: getattr(self, k) for k in init_fields(FineTune) if getattr(self, k) is not None and k not in skip}
        out.setdefault("epochs", self.DEFAULT_EPOCHS)
        out.setdefault("optimizer", "sgd" if trained_with == "sgd" else "adamw")
        out.setdefault("lr", self.DEFAULT_LR[out["optimizer"]])
        if self.loss is not None:
            out["loss_fn"] = self.loss
        return out


def _merge_finetune_defaults(obj: Any) -> None:
    """A :class:`FineTune` given to a field whose default is a FineTune keeps the default's values for the fields
    it leaves unset: ``finetune: {epochs: 5}`` changes the epochs of a method's own schedule, nothing else."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(f.default, FineTune) and isinstance(value, FineTune) and value is not f.default:
            object.__setattr__(obj, f.name, value.fill(f.default))


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``; for :meth:`Checked.validate`."""
    if not condition:
        raise ConfigError(message)


def to_dict(config: Any) -> dict[str, Any]:
    """The YAML-ready form of a config: ``{"method": ..., **fields}`` with tuples as lists, maps as dicts."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = plain(config)
    if isinstance(config, MethodConfig):
        out = {"method": type(config).method, **out}
    return out


def per_layer_fields(cls: type) -> list[str]:
    """Names of the fields of ``cls`` annotated :data:`PerLayer`."""
    return [n for n in init_fields(cls) if get_origin(_hints(cls)[n]) is Annotated
            and any(m is PER_LAYER for m in get_args(_hints(cls)[n])[1:])
            or _is_optional_per_layer(_hints(cls)[n])]


def _is_optional_per_layer(tp: Any) -> bool:
    if get_origin(tp) not in (Union, types.UnionType):
        return False
    return any(get_origin(a) is Annotated and any(m is PER_LAYER for m in get_args(a)[1:]) for a in get_args(tp))


__all__ = ["Checked", "MethodConfig", "FineTune", "TeacherSpec", "FrozenMap", "Range", "PerLayer", "Sparsity", "Fraction", "Ratio",
           "Bits", "PositiveInt", "NonNegativeInt", "Epochs", "BatchSize", "LearningRate", "NonNegative", "Seed",
           "Patterns", "build", "check", "check_fields", "coerce", "to_dict", "per_layer_fields", "label_of",
           "type_name", "short", "init_fields"]
