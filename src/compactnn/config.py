"""Configs: frozen dataclasses that name a method and its settings, and their YAML form.

A method config subclasses :class:`MethodConfig`, sets the class attributes ``method`` (the YAML name) and
``description`` (one line for ``compactnn list methods``), and is registered with its handler by
:func:`compactnn.api.register_method`. :func:`from_dict` turns ``{"method": "magnitude-prune", "sparsity": 0.9}``
into the config object, checking every key and type; :func:`to_dict` is its inverse.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

from .errors import ConfigError


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base class of every method config. Subclasses are frozen dataclasses."""

    method: ClassVar[str] = ""
    description: ClassVar[str] = ""


@dataclasses.dataclass(frozen=True)
class FineTune:
    """Training settings for the fine-tuning that many methods run after (or while) compressing.

    In a recipe, ``optimizer``, ``schedule``, ``batch_size`` and ``weight_decay`` left at ``None`` take the recipe's
    ``train:`` values; ``lr`` left at ``None`` takes the method's fine-tuning default (lower than training's), and
    anything else unset takes :func:`compactnn.train.fit`'s default.
    """

    epochs: int = 5
    lr: float | None = None
    optimizer: Literal["sgd", "adam", "adamw"] | None = None
    schedule: Literal["cosine", "step", "constant"] | None = None
    batch_size: int | None = None
    weight_decay: float | None = None

    def fit_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for :func:`compactnn.train.fit`, leaving out unset fields."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if get_origin(tp) in (tuple, list):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it in the field's type (lists become tuples)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        inner = None  # the error from the arm the value is shaped like: a mapping for a dataclass, a list for a tuple
        for arg in get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                shaped = (isinstance(value, dict) and dataclasses.is_dataclass(arg)) or (
                    isinstance(value, (list, tuple)) and get_origin(arg) in (tuple, list)
                )
                inner = inner or (err if shaped else None)
        raise inner or ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise ConfigError(f"{where}: expected one of {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis] or [Any]
        return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, refusing unknown keys and missing required fields."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r}; valid keys are {', '.join(sorted(fields)) or '(none)'}"
        )
    kwargs = {}
    for name, f in fields.items():
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}: missing required field {name!r} ({_type_name(hints[name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from None


def build(cls: type, values: dict[str, Any], where: str | None = None) -> Any:
    """Public form of the checked dataclass builder, for recipe sections that are dataclasses too."""
    return _build(cls, values, where or cls.__name__)


def from_dict(values: dict[str, Any], where: str = "stage") -> MethodConfig:
    """Turn ``{"method": NAME, **fields}`` into the registered config, checking keys and types."""
    from .api import config_class, method_names

    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping with a 'method' key, got {values!r}")
    if "method" not in values:
        raise ConfigError(f"{where}: missing 'method'; valid methods are {', '.join(method_names())}")
    fields = dict(values)
    name = fields.pop("method")
    return _build(config_class(name), fields, f"{where} ({name})")


def to_dict(config: Any) -> dict[str, Any]:
    """The YAML-ready form of a config: ``{"method": ..., **fields}`` with tuples as lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    out = plain(config)
    if isinstance(config, MethodConfig):
        out = {"method": type(config).method, **out}
    return out


def check(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition``; for ``__post_init__`` validation."""
    if not condition:
        raise ConfigError(message)


__all__ = ["MethodConfig", "FineTune", "from_dict", "to_dict", "build", "check"]
