"""The one verb, :func:`compress`, and the registry of methods it dispatches through.

A method module defines a config (a frozen dataclass subclassing :class:`compactnn.config.MethodConfig`) and a
handler, and ties them with :func:`register_method`, as torchao's ``quantize_`` ties configs to handlers::

    @register_method(MagnitudePrune)
    def _magnitude_prune(model: nn.Module, config: MagnitudePrune, data: DataBundle | None) -> nn.Module: ...
"""

from __future__ import annotations

import copy
from typing import Any, Callable

from torch import nn

from .config import MethodConfig
from .errors import ConfigError

Handler = Callable[[nn.Module, Any, Any], nn.Module]
_HANDLERS: dict[type, Handler] = {}
_BY_NAME: dict[str, type] = {}


def register_method(config_cls: type) -> Callable[[Handler], Handler]:
    """Register ``handler`` as the implementation of ``config_cls`` (whose ``method`` is its YAML name)."""
    if not (isinstance(config_cls, type) and issubclass(config_cls, MethodConfig) and config_cls.method):
        raise TypeError(f"{config_cls!r} must subclass MethodConfig and set a 'method' name")

    def decorate(handler: Handler) -> Handler:
        if config_cls.method in _BY_NAME and _BY_NAME[config_cls.method] is not config_cls:
            raise TypeError(f"method name {config_cls.method!r} is registered twice")
        _HANDLERS[config_cls] = handler
        _BY_NAME[config_cls.method] = config_cls
        return handler

    return decorate


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(_BY_NAME)


def list_methods() -> dict[str, str]:
    """``{name: one-line description}`` of every registered method."""
    return {name: _BY_NAME[name].description for name in method_names()}


def config_class(name: str) -> type:
    """The config class registered under ``name``; an error listing the valid names otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; valid methods are {', '.join(method_names())}") from None


def compress(model: nn.Module, config: MethodConfig, data: Any = None, *, inplace: bool = False) -> nn.Module:
    """Compress ``model`` with the method that ``config``'s class names, and return the compressed module.

    Args:
        model: any ``nn.Module``.
        config: a registered method config, e.g. ``compactnn.prune.MagnitudePrune(sparsity=0.9)``.
        data: a :class:`compactnn.data.DataBundle`, for methods that calibrate or fine-tune.
        inplace: work on ``model`` itself instead of a deep copy (saves memory on large models).
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ConfigError(
            f"{type(config).__name__} is not a registered method config; valid methods are {', '.join(method_names())}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"compress() takes an nn.Module, got {type(model).__name__}")
    work = model if inplace else copy.deepcopy(model)
    return handler(work, config, data)
