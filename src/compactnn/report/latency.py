"""Wall-clock latency of the real module: median over repeated forward passes."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from ..errors import ConfigError
from .macs import example_input, run_forward


def measure_latency(
    model: nn.Module,
    input_shape,
    batch_sizes=(1, 256),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
) -> dict[int, float]:
    """Median milliseconds per forward pass of ``model`` for each batch size.

    Each pass is timed with ``time.perf_counter`` under ``torch.inference_mode`` with the model in eval mode; the
    train/eval flag of every submodule (and the torch thread count) is restored afterwards.

    Args:
        model: the module to time.
        input_shape: one example's shape without the batch dim, e.g. ``(C, H, W)``.
        batch_sizes: batch sizes to time, each a positive int.
        repeats: timed passes per batch size (>= 1); the median is reported.
        warmup: untimed passes run first per batch size (>= 0).
        threads: if set, ``torch.set_num_threads(threads)`` during the measurement.

    Returns:
        ``{batch_size: median_ms}``.
    """
    sizes = [int(b) for b in batch_sizes]
    if not sizes or any(b <= 0 for b in sizes):
        raise ConfigError(f"batch_sizes must be positive ints like (1, 256), got {batch_sizes!r}")
    if int(repeats) < 1 or int(warmup) < 0:
        raise ConfigError(f"need repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    if threads is not None and int(threads) < 1:
        raise ConfigError(f"threads must be a positive int or None, got {threads!r}")
    modes = {m: m.training for m in model.modules()}
    old_threads = torch.get_num_threads()
    result: dict[int, float] = {}
    try:
        model.eval()
        if threads is not None:
            torch.set_num_threads(int(threads))
        with torch.inference_mode():
            for b in sizes:
                x = example_input(model, input_shape, batch_size=b)
                for _ in range(int(warmup)):
                    run_forward(model, x)
                times = []
                for _ in range(int(repeats)):
                    start = time.perf_counter()
                    run_forward(model, x)
                    times.append((time.perf_counter() - start) * 1000.0)
                result[b] = statistics.median(times)
    finally:
        torch.set_num_threads(old_threads)
        for m, mode in modes.items():
            m.training = mode
    return result


def inference_form(model: nn.Module, fold_bn: bool = True, channels_last: bool = True) -> nn.Module:
    """A copy of ``model`` in the form one deploys on CPU: eval mode, BatchNorm folded into the preceding conv
    (``torch.fx.experimental.optimization.fuse``), and 4-D weights in ``channels_last`` (NHWC), the layout oneDNN's
    convolutions run fastest in. The copy computes the same function to float rounding.

    Speed-ups of pruned against dense models are fairest when both are timed in this form: eager NCHW with separate
    BN passes adds memory-bound work that does not shrink with the MACs.

    Args:
        model: the module (left untouched).
        fold_bn: fold Conv+BN pairs; models that torch.fx cannot trace are kept unfolded.
        channels_last: convert 4-D parameters and buffers to ``torch.channels_last``.
    """
    import copy

    out = copy.deepcopy(model).eval()
    if fold_bn:
        from torch.fx.experimental.optimization import fuse

        try:
            out = fuse(out)
        except Exception:  # noqa: BLE001 - untraceable models are timed unfolded
            pass
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out
