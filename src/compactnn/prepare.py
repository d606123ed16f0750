"""Your own training loop: ``prepare(model, config)`` -> train as you like -> ``convert(model)``.

``compress`` runs a method's fine-tuning with :func:`compactnn.train.fit`. When you have your own loop (another
loss, a multi-task model, mixed precision, a framework's trainer), split the method in two, as torch.ao's
sparsifier (``prepare`` / ``squash_mask``) and torchao's QAT (``prepare`` / ``convert``) do::

    model = cn.prepare(model, cn.prune.MagnitudePrune(sparsity=0.9), data=calib)   # masks in place
    for x, y in loader:                                                          # any loop, any loss
        loss = my_loss(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
    model = cn.convert(model)                                                    # plain layers again

What ``prepare`` puts in the model, per method:

- ``magnitude-prune``: a mask parametrization on every selected weight (pruned weights stay exactly zero in every
  forward and get zero gradient); ``convert`` bakes the masks into plain weights. Only ``schedule: one-shot``: the
  AGP ramp needs the step count of compress's own loop.
- ``kmeans-quantize``: each weight becomes ``[0, *codebook][index]`` with a trainable codebook (train the codebook
  parameters your optimizer sees in ``model.parameters()`` after ``prepare``); ``convert`` writes the shared values
  into plain weights.
- ``integer-only``: BN folding and fake quantization (QAT) with ranges calibrated on ``data``; ``convert`` returns
  the :class:`~compactnn.quantize.intonly.model.IntegerModel`.
- ``syq``, ``bwn``, ``twn``, ``dorefa``, ``lsq``: the weight quantizers (with their learned scales) and activation
  quantizers in place, straight-through gradients; ``convert`` hardens the layers into their low-bit modules
  (codes + scales). INQ, ELQ and TSQ quantize in stages between trainings, so they run only through ``compress``.

Other methods register theirs with :func:`register_prepare`. ``prepare`` works on a copy unless ``inplace=True``;
build your optimizer on the prepared model's parameters.
"""

from __future__ import annotations

import copy
import weakref
from typing import Any, Callable

from torch import nn

from .api import config_class
from .config import MethodConfig
from .errors import ConfigError
from .layers import Target, resolve

#: ``prepare_fn(model, config, data, target) -> (model, convert_fn)``; ``convert_fn(model) -> model``.
PrepareFn = Callable[[nn.Module, Any, Any, Target], tuple[nn.Module, Callable[[nn.Module], nn.Module]]]
_PREPARE: dict[type, PrepareFn] = {}
_PENDING: "weakref.WeakKeyDictionary[nn.Module, tuple[str, Callable]]" = weakref.WeakKeyDictionary()


def register_prepare(config_cls: type) -> Callable[[PrepareFn], PrepareFn]:
    """Register the prepare/convert split of ``config_cls``'s method (see :data:`PrepareFn`)."""

    def decorate(fn: PrepareFn) -> PrepareFn:
        _PREPARE[config_cls] = fn
        return fn

    return decorate


def prepared_methods() -> list[str]:
    """Names of the methods that :func:`prepare` takes."""
    _load_builtin()
    return sorted(cls.method for cls in _PREPARE)


def prepare(model: nn.Module, config: MethodConfig, data: Any = None, *, inplace: bool = False) -> nn.Module:
    """Put ``config``'s training-time form into ``model`` (a copy unless ``inplace``) for your own training loop.

    The method's ``finetune`` setting is ignored: you train. Call :func:`convert` on the result when done.

    Raises:
        ConfigError: the method has no prepare/convert split (the message lists those that do), or a setting
            that needs compress's own loop.
    """
    _load_builtin()
    fn = _PREPARE.get(type(config))
    if fn is None:
        raise ConfigError(f"{type(config).method or type(config).__name__} has no prepare/convert split; use "
                          f"compress(), or one of: {', '.join(prepared_methods())}")
    if data is not None:
        from .data import as_bundle

        data = as_bundle(data)
    work = model if inplace else copy.deepcopy(model)
    prepared, finish = fn(work, config, data, resolve(work, config))
    _PENDING[prepared] = (type(config).method, finish)
    return prepared


def convert(model: nn.Module) -> nn.Module:
    """Finish what :func:`prepare` started on ``model`` and return the compressed model."""
    entry = _PENDING.pop(model, None)
    if entry is None:
        raise ConfigError("convert() takes a model returned by compactnn.prepare(); this one was not prepared "
                          "(or was converted already)")
    return entry[1](model)


def _load_builtin() -> None:
    if _PREPARE:
        return
    from .prune.magnitude import MagnitudePrune, magnitude_masks
    from .prune.masks import bake_masks, set_mask
    from .quantize.kmeans import KMeansQuantize, cluster_weight, share_weights
    from .layers import strip_parametrizations

    @register_prepare(MagnitudePrune)
    def _magnitude(model, config, data, target):
        if config.schedule != "one-shot":
            raise ConfigError("prepare() takes magnitude-prune with schedule 'one-shot'; the AGP ramp runs inside "
                              "compress()'s own fine-tuning")
        layers = target.layers
        masks = magnitude_masks({n: m.weight for n, m in layers.items()}, config.sparsity, config.scope)
        for name, module in layers.items():
            set_mask(module, masks[name])
        return model, lambda m: (bake_masks(layers), m)[1]

    @register_prepare(KMeansQuantize)
    def _kmeans(model, config, data, target):
        layers = target.layers
        for name, module in layers.items():
            bits = target.value("bits", name)
            found = cluster_weight(module.weight, bits, config.init, config.iterations, config.seed)
            if found is not None:
                share_weights(module, *found)

        def finish(m):
            for module in layers.values():
                strip_parametrizations(module, "weight")
            return m

        return model, finish

    from .api import _HANDLERS
    from .quantize.lowbit.base import PREPARE_ONLY
    from .quantize.lowbit.core import harden

    def lowbit(model, config, data, target):
        token = PREPARE_ONLY.set(True)
        try:
            prepared = _HANDLERS[type(config)](model, config, data, target)
        finally:
            PREPARE_ONLY.reset(token)
        return prepared, harden

    for name in ("syq", "bwn", "twn", "dorefa", "lsq"):  # one quantize-then-train pass each (not INQ/ELQ/TSQ)
        register_prepare(config_class(name))(lowbit)

    integer_cls = config_class("integer-only")

    @register_prepare(integer_cls)
    def _integer_only(model, config, data, target):
        from .quantize.intonly.calibrate import calibrate, calibration_batches
        from .quantize.intonly.convert import convert as to_integer
        from .quantize.intonly.method import _input_shape
        from .quantize.intonly.qat import prepare as qat_prepare

        batches = calibration_batches(data, config.calibration_batches)
        shape = _input_shape(model, data)
        prepared = qat_prepare(model, per_channel=config.per_channel, ema_decay=config.ema_decay,
                               act_delay=config.act_delay, freeze_bn_after=config.freeze_bn_after)
        calibrate(prepared, batches, config.calibration, config.percentile)
        return prepared, lambda m: to_integer(m, shape, engine=config.engine)


__all__ = ["prepare", "convert", "register_prepare", "prepared_methods"]
