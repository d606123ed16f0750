"""Model registry in the style of timm: ``@register_model(name, description)`` on a factory, ``create(name)``.

A factory has the signature ``f(input_shape=(C, H, W), num_classes=10, **options) -> nn.Module``. ``create`` fills
``input_shape`` and ``num_classes`` from a :class:`compactnn.data.DataBundle` when one is given.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ModelError

Factory = Callable[..., nn.Module]
_FACTORIES: dict[str, Factory] = {}
_DESCRIPTIONS: dict[str, str] = {}


def register_model(name: str, description: str) -> Callable[[Factory], Factory]:
    """Register ``factory`` under ``name`` (as used by :func:`create` and recipes' ``model: {name: ...}``).

    Args:
        name: registry name, e.g. ``"resnet20"``; registering a name twice is a programming error (``TypeError``).
        description: one line shown by ``compactnn list models``.
    """

    def decorate(factory: Factory) -> Factory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise TypeError(f"model name {name!r} is registered twice")
        _FACTORIES[name] = factory
        _DESCRIPTIONS[name] = description
        return factory

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Sorted registered model names matching the shell-style ``pattern`` (``fnmatch``, e.g. ``"resnet*"``)."""
    return sorted(n for n in _FACTORIES if fnmatch.fnmatchcase(n, pattern))


def describe_models(pattern: str = "*") -> dict[str, str]:
    """``{name: one-line description}`` for the registered models matching ``pattern``."""
    return {n: _DESCRIPTIONS[n] for n in list_models(pattern)}


def check_input_shape(input_shape: Any) -> tuple[int, int, int]:
    """``input_shape`` as a ``(C, H, W)`` tuple of positive ints; :class:`ModelError` otherwise."""
    try:
        shape = tuple(int(s) for s in input_shape)
        ok = len(shape) == 3 and all(s > 0 for s in shape) and all(int(s) == s for s in input_shape)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ModelError(f"input_shape must be (channels, height, width) of positive ints, got {input_shape!r}")
    return shape  # type: ignore[return-value]


def create(name: str, data: Any = None, *, seed: int | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``.

    Args:
        name: a name from :func:`list_models`.
        data: optional :class:`compactnn.data.DataBundle`; its ``input_shape`` and ``num_classes`` are used unless
            given explicitly in ``kwargs``.
        seed: make the initial weights deterministic: the factory runs under ``torch.manual_seed(seed)`` in a
            forked RNG state (the global RNG is left as it was). ``None`` draws from the global RNG.
        **kwargs: passed to the factory: ``input_shape=(C, H, W)``, ``num_classes`` and model-specific options.

    Raises:
        ModelError: unknown name (the message lists the valid names and close matches) or unknown option.
    """
    factory = _FACTORIES.get(name)
    if factory is None:
        close = difflib.get_close_matches(name, list(_FACTORIES), n=3)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ModelError(f"unknown model {name!r}; {hint}valid models are {', '.join(list_models())}")
    if data is not None:
        kwargs.setdefault("input_shape", tuple(data.input_shape))
        if getattr(data, "num_classes", None) is not None:
            kwargs.setdefault("num_classes", int(data.num_classes))
    params = inspect.signature(factory).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ModelError(
                f"model {name!r} has no option {', '.join(unknown)}; valid options are {', '.join(params)}"
            )
    if "input_shape" in kwargs:
        kwargs["input_shape"] = check_input_shape(kwargs["input_shape"])
    if "num_classes" in kwargs and (not isinstance(kwargs["num_classes"], int) or kwargs["num_classes"] < 1):
        raise ModelError(f"num_classes must be a positive int, got {kwargs['num_classes']!r}")
    if seed is None:
        return factory(**kwargs)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ModelError(f"seed must be an int in [0, 2**63), got {seed!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory(**kwargs)
