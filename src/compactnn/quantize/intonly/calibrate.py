"""Post-training calibration of a prepared model: run a few batches through it and record activation ranges.

``"minmax"`` keeps the running min and max of every activation over all batches; ``"percentile"`` keeps the mean
over batches of the ``100 − p`` and ``p`` percentiles (p = 99.99 by default), which clips rare outliers. The model
runs in eval mode (BN uses running statistics, as after conversion) with fake quantization off while observing,
and is left in eval mode with fake quantization on.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from compactnn.errors import ConfigError

from .fakequant import ActQuant

__all__ = ["calibrate", "calibration_batches"]


def calibration_batches(data: Any, batches: int, batch_size: int = 128) -> list[Tensor]:
    """The first ``batches`` input batches of ``data``'s training set (a DataBundle, ArrayDataset or tensor).

    Args:
        data: a :class:`compactnn.data.DataBundle` (its ``.train``), an ArrayDataset (``.x``) or a float tensor.
        batches: how many batches (>= 1).
        batch_size: samples per batch.

    Raises:
        ConfigError: ``data`` is None or holds no samples.
    """
    if data is None:
        raise ConfigError("integer-only: calibration needs data; pass data=<DataBundle> to compress() (calibrating "
                          "without data is not possible)")
    if batches < 1 or batch_size < 1:
        raise ConfigError(f"calibration needs batches >= 1 and batch_size >= 1, got {batches}, {batch_size}")
    if hasattr(data, "head"):  # a DataBundle or a user's DataLoader/Dataset (compactnn.data.as_bundle)
        x = data.head(batches * batch_size)
    else:
        x = getattr(getattr(data, "train", data), "x", getattr(data, "train", data))
    if not isinstance(x, Tensor) or x.numel() == 0:
        raise ConfigError("integer-only: calibration data has no samples; pass a DataBundle, a DataLoader or a "
                          "Dataset with a training set")
    return [x[i:i + batch_size] for i in range(0, min(len(x), batches * batch_size), batch_size)]


@torch.no_grad()
def calibrate(model: nn.Module, batches: Iterable[Tensor] | Any, method: str = "minmax", percentile: float = 99.99,
              num_batches: int = 8, quiet: bool | None = None) -> nn.Module:
    """Observe activation ranges of a prepared model on ``batches`` (replacing what was observed before).

    Args:
        model: a model from :func:`.qat.prepare`.
        batches: an iterable of input tensors, or data accepted by :func:`calibration_batches`.
        method: ``"minmax"`` or ``"percentile"``.
        percentile: the upper percentile for ``"percentile"`` (in (50, 100]).
        num_batches: how many batches to take when ``batches`` is data rather than a list of tensors.
        quiet: hide the progress bar (default: hidden when not a TTY).

    Returns:
        ``model`` (calibrated in place, in eval mode, fake quantization on).

    Raises:
        ConfigError: no data, an unknown method or a bad percentile.
    """
    if method not in ("minmax", "percentile"):
        raise ConfigError(f"calibration must be 'minmax' or 'percentile', got {method!r}")
    if not 50.0 < percentile <= 100.0:
        raise ConfigError(f"percentile must be in (50, 100], got {percentile}")
    if batches is None or not (isinstance(batches, (list, tuple)) and all(isinstance(b, Tensor) for b in batches)):
        batches = calibration_batches(batches, num_batches)
    if not batches:
        raise ConfigError("integer-only: calibration got no batches; pass data with at least one sample")
    observers = [m for m in model.modules() if isinstance(m, ActQuant)]
    saved = [(m.observer, m.enabled) for m in observers]
    model.eval()
    for m in observers:
        m.reset()
        m.observer, m.percentile, m.calibrating = method, float(percentile), True
    try:
        for x in tqdm(batches, desc="calibrate", disable=quiet if quiet is not None else None, leave=False):
            model(x)
    finally:
        for m, (obs, en) in zip(observers, saved):
            m.observer, m.enabled, m.calibrating = obs, True, False
    return model
