"""The one verb, :func:`compress`, and the registry of methods it dispatches through.

A method module defines a config (a frozen dataclass subclassing :class:`compactnn.config.MethodConfig`) and a
handler, and ties them with :func:`register_method`, as torchao's ``quantize_`` ties configs to handlers::

    @register_method(MagnitudePrune)
    def _magnitude_prune(model: nn.Module, config: MagnitudePrune, data, target: Target) -> nn.Module: ...

:func:`compress` resolves which layers the config touches (``layers``, ``exclude``, per-layer values) once, with
:func:`compactnn.layers.resolve`, and passes the :class:`~compactnn.layers.Target` to the handler.
"""

from __future__ import annotations

import copy
import fnmatch
import warnings
from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from .config import MethodConfig, build, short
from .errors import CompactnnError, ConfigError
from .layers import Target, resolve, uncompressed_baseline

Handler = Callable[[nn.Module, Any, Any, Target], nn.Module]
_HANDLERS: dict[type, Handler] = {}
_BY_NAME: dict[str, type] = {}


def register_method(config_cls: type) -> Callable[[Handler], Handler]:
    """Register ``handler(model, config, data, target)`` as the implementation of ``config_cls``."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig) and config_cls.method):
        raise TypeError(f"{config_cls!r} must subclass MethodConfig and set a 'method' name")

    def decorate(handler: Handler) -> Handler:
        if config_cls.method in _BY_NAME and _BY_NAME[config_cls.method] is not config_cls:
            raise TypeError(f"method name {config_cls.method!r} is registered twice")
        _HANDLERS[config_cls] = handler
        _BY_NAME[config_cls.method] = config_cls
        return handler

    return decorate


def list_methods(pattern: str = "*") -> list[str]:
    """Sorted registered method names matching the shell-style ``pattern``."""
    return sorted(n for n in _BY_NAME if fnmatch.fnmatchcase(n, pattern))


def describe_methods(pattern: str = "*") -> dict[str, str]:
    """``{name: one-line description}`` of the registered methods matching ``pattern``."""
    return {name: _BY_NAME[name].description for name in list_methods(pattern)}


def config_class(name: str) -> type:
    """The config class registered under ``name``; an error listing the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown method {short(name)}; valid methods are {', '.join(list_methods())}") from None


def from_dict(values: Any, where: str = "") -> MethodConfig:
    """Turn ``{"method": NAME, **fields}`` (e.g. a recipe stage) into the registered config, checking every key and
    value with the same checker as the Python constructor; ``where`` (``"recipe.yaml stages[0]"``) prefixes errors.
    """
    prefix = f"{where}: " if where else ""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{prefix}expected a mapping with a 'method' key, got {short(values)}")
    if "method" not in values:
        raise ConfigError(f"{prefix}missing 'method'; valid methods are {', '.join(list_methods())}")
    fields = dict(values)
    name = fields.pop("method")
    try:
        cls = config_class(name)
        return build(cls, fields, cls.method)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None


def compress(model: nn.Module, config: MethodConfig, data: Any = None, *, inplace: bool = False) -> nn.Module:
    """Compress ``model`` with the method that ``config``'s class names, and return the compressed module.

    Args:
        model: any ``nn.Module``.
        config: a registered method config, e.g. ``compactnn.prune.MagnitudePrune(sparsity=0.9)``.
        data: what the method calibrates or fine-tunes on: a :class:`compactnn.data.DataBundle`, a
            ``torch.utils.data.DataLoader`` or a ``Dataset`` of ``(input, target)`` pairs.
        inplace: work on ``model`` itself instead of a deep copy (saves memory on large models).
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(f"{type(config).__name__} is not a registered method config; valid methods are "
                          f"{', '.join(list_methods())}")
    if not isinstance(model, nn.Module):
        raise ConfigError(f"compress() takes an nn.Module, got {type(model).__name__}")
    if data is not None:
        from .data import as_bundle

        data = as_bundle(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the resolve below on the copy says it once
        resolve(model, config)  # before copying: a bad pattern costs no copy
    with uncompressed_baseline(model, config, data):
        work = model if inplace else copy.deepcopy(model)
        target = resolve(work, config)
        empty_before = set(_emptied(target))
        out = handler(work, config, data, target)
    _warn_emptied([n for n in _emptied(target) if n not in empty_before], type(config).method)
    if target.skipped:
        out.compactnn_skipped = {**getattr(out, "compactnn_skipped", {}), **target.skipped}
    return out


def _emptied(target: Target) -> list[str]:
    """The target's layers whose whole weight is zero."""
    out = []
    for name, layer in target.layers.items():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel() and not bool(weight.detach().any()):
            out.append(name)
    return out


def _warn_emptied(emptied: list[str], method: str) -> None:
    """One line naming the layers whose whole weight the method set to zero (never silence)."""
    if emptied:
        warnings.warn(f"{method}: every weight of {len(emptied)} layer(s) is now zero, so they pass nothing on: "
                      f"{', '.join(emptied[:8])}{' ...' if len(emptied) > 8 else ''}; lower the sparsity, use "
                      "scope 'layer', or exclude them", stacklevel=3)


__all__ = ["compress", "register_method", "list_methods", "describe_methods", "config_class", "from_dict",
           "CompactnnError"]
