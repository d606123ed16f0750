"""Which layers a method touches, resolved once for every method: ``layers``, ``exclude`` and per-layer values.

:func:`compactnn.compress` calls :func:`resolve` with the model and the config, and hands the result, a
:class:`Target`, to the method. A method never parses patterns itself.

- ``layers``: ``fnmatch`` patterns over module names as ``model.named_modules()`` gives them (``"fc1"``,
  ``"features.*"``, ``"layer?.0.conv*"``); a pattern also matches ``"<name>.weight"``. ``None`` means every layer of
  the kinds the method handles (``config.kinds``).
- ``exclude``: patterns removed from that selection.
- per-layer values (:data:`compactnn.config.PerLayer` fields): ``{pattern: value}``; the exact layer name wins, else
  the first matching pattern in the mapping's order, else a ``"*"`` key; a layer that no key matches is left alone.

A pattern (in ``layers``, ``exclude`` or a per-layer mapping) that matches no layer is an error listing the real
layer names, so a typo never silently compresses nothing. This module also holds the fine-tuning every method shares
(:func:`run_finetune`) and the removal of training-time parametrizations (:func:`strip_parametrizations`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import warnings
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, Iterator

from torch import nn
from torch.nn.utils import parametrize

from .config import MethodConfig, per_layer_fields
from .errors import ConfigError, ModelError
from .graph.modules import weight_read_by_parent

#: The layer classes whose ``weight`` the pruning and weight-quantization methods work on.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class WeightSlot:
    """A weight that is not a layer's ``weight`` attribute: ``owner.<param>`` (an LSTM's ``weight_hh_l0``,
    ``MultiheadAttention.in_proj_weight``) or the ``weight`` of a module of no known kind (a user's layer).

    Methods with ``any_weight`` treat it like a layer: ``slot.weight`` reads the tensor, and :func:`slot_of` gives
    the ``(module, parameter name)`` to parametrize.
    """

    def __init__(self, owner: nn.Module, param: str):
        self.owner, self.param = owner, param

    @property
    def weight(self) -> Any:
        return getattr(self.owner, self.param)

    def __repr__(self) -> str:
        return f"WeightSlot({type(self.owner).__name__}.{self.param})"


def slot_of(layer: Any) -> tuple[nn.Module, str]:
    """``(module, parameter name)`` holding the weight of ``layer`` (a module, or a :class:`WeightSlot`)."""
    if isinstance(layer, WeightSlot):
        return layer.owner, layer.param
    return layer, "weight"


def other_weights(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHT_LAYERS) -> dict[str, WeightSlot]:
    """Every Parameter of >= 2 dims of ``model`` that is not the weight of a module of ``kinds``, as
    ``{"<module>.<parameter>": WeightSlot}`` in module order (parametrized weights count under their own name)."""
    out: dict[str, WeightSlot] = {}
    for name, module in model.named_modules():
        if isinstance(module, kinds) or isinstance(module, parametrize.ParametrizationList) \
                or ".parametrizations." in f".{name}.":
            continue
        params = dict(module.named_parameters(recurse=False))
        if parametrize.is_parametrized(module):
            params.update({k: getattr(module, k) for k in module.parametrizations})
        for param, value in params.items():
            if value.dim() >= 2:
                out[f"{name}.{param}" if name else param] = WeightSlot(module, param)
    return out


def weight_layers(model: nn.Module, kinds: tuple[type[nn.Module], ...] = WEIGHT_LAYERS,
                  any_weight: bool = False) -> dict[str, Any]:
    """Every submodule of ``model`` that is an instance of ``kinds``, as ``{name: module}`` in module order, and
    with ``any_weight`` every other weight of >= 2 dims as a :class:`WeightSlot` (see :func:`other_weights`)."""
    found: dict[str, Any] = {name: m for name, m in model.named_modules() if isinstance(m, kinds) and name}
    if any_weight:
        found.update(other_weights(model, kinds))
    return found


def names_line(names: Iterable[str], limit: int = 30) -> str:
    """``a, b, c, ... (n more)``: a list of names for a one-line message."""
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def matches(name: str, pattern: str) -> bool:
    """Whether layer ``name`` matches ``pattern`` (also tried against ``"<name>.weight"``)."""
    return fnmatchcase(name, pattern) or fnmatchcase(f"{name}.weight", pattern)


def _kind_names(kinds: tuple[type, ...]) -> str:
    return "/".join(k.__name__ for k in kinds)


def select_layers(model: nn.Module, patterns: Iterable[str] | None = None, *,
                  kinds: tuple[type[nn.Module], ...] = WEIGHT_LAYERS, what: str = "weight",
                  exclude: Iterable[str] = (), any_weight: bool = False) -> dict[str, Any]:
    """The layers of ``kinds`` (and with ``any_weight`` the other weights, see :func:`weight_layers`) whose names
    match any of ``patterns`` (all when None), less those in ``exclude``.

    Raises:
        ModelError: the model has no such layer, or a pattern matches none of them (the message lists the names).
    """
    layers = weight_layers(model, kinds, any_weight)
    if not layers:
        raise ModelError(f"{type(model).__name__} has no {what} layers ({_kind_names(kinds)}); nothing to compress")
    if isinstance(patterns, str):
        patterns = (patterns,)
    chosen = set(layers)
    if patterns is not None:
        patterns = tuple(patterns)
        if not patterns:
            raise ModelError(f"empty list of layer patterns; give at least one of: {names_line(layers)}")
        chosen = set()
        for pattern in patterns:
            hits = {n for n in layers if matches(n, pattern)}
            if not hits:
                raise ModelError(f"layer pattern {pattern!r} matches no {what} layer ({_kind_names(kinds)}); "
                                 f"layers are: {names_line(layers)}")
            chosen |= hits
    for pattern in (exclude,) if isinstance(exclude, str) else exclude:
        hits = {n for n in layers if matches(n, pattern)}
        if not hits:
            raise ModelError(f"exclude pattern {pattern!r} matches no {what} layer ({_kind_names(kinds)}); "
                             f"layers are: {names_line(layers)}")
        chosen -= hits
    return {n: m for n, m in layers.items() if n in chosen}


def pick(mapping: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """The value a per-layer mapping gives layer ``name``: ``(True, value)``, or ``(False, None)`` if none."""
    if name in mapping:
        return True, mapping[name]
    for key, value in mapping.items():
        if key != "*" and matches(name, key):
            return True, value
    if "*" in mapping:
        return True, mapping["*"]
    return False, None


@dataclasses.dataclass
class Target:
    """What :func:`resolve` found for one method and model.

    Attributes:
        layers: ``{name: module}`` the method works on, in module order.
        values: ``{field: {layer name: value}}`` for every per-layer field of the config.
        skipped: ``{layer name: reason}`` for layers the method was asked to touch but cannot handle (the method
            says so with a warning; the report lists them).
    """

    layers: dict[str, nn.Module]
    values: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)

    def value(self, field: str, name: str) -> Any:
        """The value of per-layer ``field`` for layer ``name``."""
        return self.values[field][name]

    def skip(self, name: str, reason: str, method: str) -> None:
        """Record that ``method`` leaves layer ``name`` alone, and warn in one line."""
        self.layers.pop(name, None)
        self.skipped[name] = reason
        warnings.warn(f"{method}: layer {name!r} left as it is: {reason}", stacklevel=3)


def resolve(model: nn.Module, config: MethodConfig) -> Target:
    """The :class:`Target` of ``config`` in ``model``: its ``layers`` less its ``exclude``, restricted to the layers
    its per-layer mappings give a value, with every per-layer value resolved.

    A config whose class sets no ``kinds`` does not pick layers (an empty target).
    """
    kinds = type(config).kinds
    if kinds is None:
        return Target(layers={})
    what = type(config).method or "compressible"
    any_weight = type(config).any_weight
    patterns = getattr(config, "layers", None)
    layers = select_layers(model, patterns, kinds=kinds, what=what, exclude=getattr(config, "exclude", None) or (),
                           any_weight=any_weight)
    skipped: dict[str, str] = {}
    if patterns is None and not any_weight:
        handled = "/".join(k.__name__ for k in kinds)
        for name, slot in other_weights(model, kinds).items():
            skipped[name] = f"{type(slot.owner).__name__}.{slot.param} is not a {handled} weight, which {what} handles"
        if skipped:
            warnings.warn(f"{what}: {len(skipped)} weight(s) left as they are, not being {handled} weights: "
                          f"{names_line(skipped, 8)}", stacklevel=3)
    if type(config).replaces:
        for name in list(layers):
            reason = weight_read_by_parent(model, name)
            if reason is None:
                continue
            if patterns is not None and name in patterns:
                raise ModelError(f"{what}: layer {name!r} cannot be replaced: {reason}; leave it out of layers")
            del layers[name]
            skipped[name] = f"{reason}, so a replacement layer cannot stand in for it"
            warnings.warn(f"{what}: layer {name!r} left as it is: {skipped[name]}", stacklevel=3)
    values: dict[str, dict[str, Any]] = {}
    for field in per_layer_fields(type(config)):
        setting = getattr(config, field)
        if not isinstance(setting, Mapping):
            values[field] = {n: setting for n in layers}
            continue
        for key in setting:
            if key != "*" and not any(matches(n, key) for n in layers):
                raise ModelError(f"{what}: {field} names {key!r}, which matches none of the selected layers; "
                                 f"they are: {names_line(layers)}")
        found = {n: pick(setting, n) for n in layers}
        layers = {n: m for n, m in layers.items() if found[n][0]}
        values[field] = {n: v for n, (ok, v) in found.items() if ok}
    for field in values:
        values[field] = {n: v for n, v in values[field].items() if n in layers}
    if not layers:
        raise ModelError(f"{what}: the settings leave no layer to compress; check layers, exclude and the "
                         "per-layer mappings")
    return Target(layers=layers, values=values, skipped=skipped)


def strip_parametrizations(module: Any, name: str = "weight") -> None:
    """Bake the parametrization of ``module.<name>`` into a plain parameter and remove it, if there is one
    (``module`` may be a :class:`WeightSlot`: then its own parameter).

    Afterwards the module is again of its original class (e.g. a plain ``nn.Linear``), with no parametrizations,
    and its parameters are in their original order (so ``state_dict`` keys read ``weight, bias`` as usual).
    """
    if isinstance(module, WeightSlot):
        module, name = slot_of(module)
    if not parametrize.is_parametrized(module, name):
        return
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    params = module._parameters
    order = list(module._flat_weights_names) if isinstance(module, nn.RNNBase) else ["weight", "bias"]
    for key in order + [k for k in list(params) if k not in order]:
        if key in params:
            params[key] = params.pop(key)  # re-insert in torch's usual order
    if isinstance(module, nn.RNNBase):
        module._init_flat_weights()  # the RNN kernels read this list, not the attributes


def require_data(data: Any, method: str) -> None:
    """Raise ConfigError unless ``data`` was given: ``method`` fine-tunes (call this before changing the model)."""
    if data is None:
        raise ConfigError(
            f"{method}: fine-tuning needs data; pass data=<DataBundle or DataLoader> to compress() or set finetune "
            "to null"
        )


_BASELINE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("compactnn_baseline", default=None)


def _val_split(data: Any, finetune: Any) -> tuple[Any, Any]:
    if not hasattr(data, "split_train"):
        raise ConfigError("finetune.val_split needs data that can be split (a DataBundle, or a map-style Dataset)")
    return data.split_train(finetune.val_split, seed=finetune.seed or 0)


@contextlib.contextmanager
def uncompressed_baseline(model: nn.Module, config: Any, data: Any) -> Iterator[None]:
    """While a method runs: the uncompressed model's accuracy on each fine-tune's validation split, so that
    :func:`run_finetune` can say when a fine-tune ends below it (only measured for fine-tunes with ``val_split``)."""
    from .config import FineTune
    from .train import evaluate

    scores = {}
    if data is not None:
        for f in dataclasses.fields(config):
            ft = getattr(config, f.name)
            if isinstance(ft, FineTune) and ft.val_split is not None and (ft.val_split, ft.seed) not in scores:
                scores[(ft.val_split, ft.seed)] = evaluate(model, _val_split(data, ft)[1])["accuracy"]
    token = _BASELINE.set(scores)
    try:
        yield
    finally:
        _BASELINE.reset(token)


def run_finetune(model: nn.Module, data: Any, finetune: Any, method: str,
                 step_hooks: Iterable[Callable[[nn.Module, int, int], None]] = (), **fit_args: Any) -> nn.Module:
    """Fine-tune ``model`` in place with :func:`compactnn.train.fit` as a method's :class:`FineTune` says.

    The optimizer and lr that the FineTune leaves unset follow :meth:`compactnn.config.FineTune.fit_kwargs`'s rule,
    from how the model was trained (``model.compactnn_training``, recorded by ``fit``). With ``val_split`` the
    fine-tune trains on the rest of the training set, keeps its best epoch on the held-out part (unless
    ``keep_best`` is False) and warns, in one line, when it ends below the uncompressed model there. With a
    ``teacher`` the loss is :func:`compactnn.distill.kd_loss` against it (unless ``fit_args`` gives a ``loss_fn``).

    Args:
        model: the model being compressed (possibly with masks or codebooks parametrizing its weights).
        data: the data to train on (a DataBundle, Dataset or DataLoader); ``None`` is a ConfigError naming ``method``.
        finetune: a :class:`compactnn.config.FineTune`.
        method: the method's registry name, for messages.
        step_hooks: ``hook(model, step, total_steps)`` callables run after every optimizer step.
        fit_args: further keyword arguments for ``fit`` (e.g. ``loss_fn``).
    """
    require_data(data, method)
    from .train import fit

    trained = getattr(model, "compactnn_training", None)
    kwargs = {**finetune.fit_kwargs(trained.get("optimizer") if isinstance(trained, Mapping) else None), **fit_args}
    if getattr(finetune, "teacher", None) is not None and "loss_fn" not in fit_args:
        from .distill import finetune_loss  # the teacher replaces cross-entropy by Hinton's loss (FineTune.teacher)

        kwargs["loss_fn"] = finetune_loss(finetune, data)
    if finetune.val_split is None:
        return fit(model, data, step_hooks=tuple(step_hooks), **kwargs)
    train_part, val_part = _val_split(data, finetune)
    keep = finetune.keep_best is not False
    fit(model, train_part, step_hooks=tuple(step_hooks), val=val_part, keep_best=keep, **kwargs)
    before = (_BASELINE.get() or {}).get((finetune.val_split, finetune.seed))
    after = getattr(model, "compactnn_val_accuracy", None)
    if before is not None and after is not None and after < before:
        warnings.warn(f"{method}: fine-tuning ended at validation accuracy {after:.4f}, below the uncompressed "
                      f"model's {before:.4f}; try more epochs, another lr, or less compression", stacklevel=2)
    return model


__all__ = ["WEIGHT_LAYERS", "WeightSlot", "slot_of", "other_weights", "Target", "resolve", "uncompressed_baseline", "weight_layers", "select_layers", "matches", "pick", "names_line",
           "strip_parametrizations", "run_finetune", "require_data"]
