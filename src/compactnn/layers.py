"""Layer walking shared by the compression methods: pick the weight layers a method works on, strip the
training-time parametrizations (masks, codebooks) off them again, and run a method's fine-tuning.

Layers are picked by ``fnmatch`` patterns over module names as ``model.named_modules()`` gives them (``"fc1"``,
``"features.*"``, ``"layer?.0.conv*"``); a pattern also matches ``"<name>.weight"``. A pattern that matches no
layer is an error that lists the real layer names, so a typo never silently compresses nothing.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable

from torch import nn
from torch.nn.utils import parametrize

from .errors import ConfigError, ModelError

#: The layer classes whose ``weight`` the pruning and weight-quantization methods work on.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def weight_layers(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHT_LAYERS) -> dict[str, nn.Module]:
    """Every submodule of ``model`` that is an instance of ``kinds``, as ``{name: module}`` in module order.

    Args:
        model: the model to walk.
        kinds: layer classes to keep (default: Linear and Conv1d/2d/3d, subclasses included).
    """
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds) and name}


def _names_line(names: Iterable[str], limit: int = 30) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def select_layers(
    model: nn.Module,
    patterns: Iterable[str] | None = None,
    *,
    kinds: tuple[type[nn.Module], ...] = WEIGHT_LAYERS,
    what: str = "weight",
) -> dict[str, nn.Module]:
    """The layers of ``kinds`` whose names match any of ``patterns`` (all of them when ``patterns`` is None).

    Args:
        model: the model to walk.
        patterns: ``fnmatch`` patterns over module names (case-sensitive); ``None`` selects every layer of ``kinds``.
        kinds: layer classes that can be selected.
        what: word used in error messages for the kind of layer ("prunable", "quantizable", ...).

    Raises:
        ModelError: the model has no such layer, or a pattern matches none of them (the message lists the names).
    """
    layers = weight_layers(model, kinds)
    kind_names = "/".join(k.__name__ for k in kinds)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no {what} layers ({kind_names}); nothing to compress")
    if patterns is None:
        return layers
    if isinstance(patterns, str):
        patterns = (patterns,)
    patterns = tuple(patterns)
    if not patterns:
        raise ModelError(f"empty list of layer patterns; give at least one of: {_names_line(layers)}")
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {n for n in layers if fnmatchcase(n, pattern) or fnmatchcase(f"{n}.weight", pattern)}
        if not hits:
            raise ModelError(
                f"layer pattern {pattern!r} matches no {what} layer ({kind_names}); "
                f"layers are: {_names_line(layers)}"
            )
        chosen |= hits
    return {n: m for n, m in layers.items() if n in chosen}


def strip_parametrizations(module: nn.Module, name: str = "weight") -> None:
    """Bake the parametrization of ``module.<name>`` into a plain parameter and remove it, if there is one.

    Afterwards the module is again of its original class (e.g. a plain ``nn.Linear``), with no parametrizations,
    and its parameters are in their original order (so ``state_dict`` keys read ``weight, bias`` as usual).
    """
    if not parametrize.is_parametrized(module, name):
        return
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    params = module._parameters
    for key in ["weight", "bias"] + [k for k in list(params) if k not in ("weight", "bias")]:
        if key in params:
            params[key] = params.pop(key)  # re-insert in torch's usual order


#: Learning rate of a method's fine-tuning when its FineTune leaves ``lr`` unset.
FINETUNE_LR = 0.01


def require_data(data: Any, method: str) -> None:
    """Raise ConfigError unless ``data`` was given: ``method`` fine-tunes (call this before changing the model)."""
    if data is None:
        raise ConfigError(
            f"{method}: fine-tuning needs data; pass data=<DataBundle> to compress() or set finetune to null"
        )


def run_finetune(
    model: nn.Module,
    data: Any,
    finetune: Any,
    method: str,
    step_hooks: Iterable[Callable[[nn.Module, int, int], None]] = (),
) -> nn.Module:
    """Fine-tune ``model`` in place with :func:`compactnn.train.fit` as a method's ``FineTune`` settings say.

    Args:
        model: the model being compressed (possibly with masks or codebooks parametrizing its weights).
        data: the :class:`compactnn.data.DataBundle` to train on; ``None`` is a ConfigError naming ``method``.
        finetune: a :class:`compactnn.config.FineTune`; its unset ``lr`` becomes 0.01 (fine-tuning, not training).
        method: the method's registry name, for the error message.
        step_hooks: ``hook(model, step, total_steps)`` callables run after every optimizer step.
    """
    require_data(data, method)
    from .train import fit

    kwargs = {"lr": FINETUNE_LR, **finetune.fit_kwargs()}
    return fit(model, data, step_hooks=tuple(step_hooks), **kwargs)


__all__ = ["WEIGHT_LAYERS", "weight_layers", "select_layers", "strip_parametrizations", "run_finetune", "require_data",
           "FINETUNE_LR"]
