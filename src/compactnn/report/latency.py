"""Wall-clock latency of the real module (median over repeated forward passes), and the deployed form to time.

Two choices make CPU timings of conv nets steady and fair to small (pruned) models:

- The allocator. glibc's malloc serves large blocks (a batch-256 activation is several MB) with ``mmap`` and gives
  freed memory back to the kernel, so every pass page-faults its activations in again: on a ResNet-20 at batch
  256 that was 18,000-55,000 minor faults and 13-105 ms of system time per pass, varying from run to run.
  :func:`steady_allocator` (used by :func:`measure_latency` by default) keeps freed memory in the process, which is
  what the jemalloc/tcmalloc preload of PyTorch's CPU performance guide achieves.
- The deployed form. :func:`inference_form` folds BN into the convs and, with ``compile=True``, compiles the model
  with TorchInductor and weight freezing, which fuses ReLU and the residual add into the oneDNN convolutions:
  what one deploys a CPU model as in PyTorch 2. Time a pruned model and its dense reference in the same form.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import statistics
import time

import torch
from torch import nn

from ..errors import ConfigError
from ..graph.modules import eval_mode
from .macs import example_input, run_forward

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)
_steady = False


def steady_allocator() -> bool:
    """Make glibc keep freed memory in the process; True if applied (now or before), False off glibc.

    Sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB with ``mallopt``, so blocks below 1 GiB come from
    the heap and are reused instead of being unmapped and faulted in again on every forward pass. The setting is
    process-wide and stays (the process keeps up to the peak of its freed memory); it changes no results, only
    the time spent in the kernel.
    """
    global _steady
    if _steady:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to set
        return False
    _steady = bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    return _steady


def measure_latency(
    model: nn.Module,
    input_shape,
    batch_sizes=(1, 256),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = None,
    steady_memory: bool = True,
) -> dict[int, float]:
    """Median milliseconds per forward pass of ``model`` for each batch size.

    Each pass is timed with ``time.perf_counter`` under ``torch.inference_mode`` with the model in eval mode; the
    train/eval flag of every submodule (and the torch thread count) is restored afterwards.

    Args:
        model: the module to time.
        input_shape: one example's shape without the batch dim, e.g. ``(C, H, W)``.
        batch_sizes: batch sizes to time, each a positive int.
        repeats: timed passes per batch size (>= 1); the median is reported.
        warmup: untimed passes run first per batch size (>= 0); a compiled model compiles in its first pass.
        threads: if set, ``torch.set_num_threads(threads)`` during the measurement.
        steady_memory: call :func:`steady_allocator` first (process-wide, kept afterwards) so that page faults of
            freshly mapped activations are not timed.

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
    if steady_memory:
        steady_allocator()
    old_threads = torch.get_num_threads()
    result: dict[int, float] = {}
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with eval_mode(model), torch.inference_mode():
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
    return result


def inference_form(model: nn.Module, fold_bn: bool = True, channels_last: bool = True,
                   compile: bool = False) -> nn.Module:
    """A copy of ``model`` in the form one deploys on CPU; it computes the same function to float rounding.

    By default: eval mode, BatchNorm folded into the preceding conv (``torch.fx.experimental.optimization.fuse``),
    and 4-D weights in ``channels_last`` (NHWC), the layout oneDNN's convolutions run fastest in. Eager NCHW with
    separate BN passes adds memory-bound work that does not shrink with the MACs.

    With ``compile=True`` the folded copy is also compiled: ``torch.compile(dynamic=False)`` with TorchInductor's
    ``freezing``, which turns weights into constants, pre-packs them for oneDNN and fuses ReLU and residual adds
    into the convolutions. Compilation happens in the first call (seconds, needs a C compiler) and again for each
    new input shape; freezing applies to calls without autograd (``torch.inference_mode``/``no_grad``, as
    :func:`measure_latency` runs). ``channels_last`` is ignored then: Inductor picks conv layouts itself, and
    channels-last weights with a 1-channel input trip a stride assertion in Inductor (torch 2.13).

    Speed-ups of pruned against dense models are fair when both are timed in the same form.

    Args:
        model: the module (left untouched).
        fold_bn: fold Conv+BN pairs; models that torch.fx cannot trace are kept unfolded.
        channels_last: convert 4-D parameters and buffers to ``torch.channels_last`` (not with ``compile``).
        compile: compile with TorchInductor and freezing (see above).
    """
    import copy
    import warnings

    out = copy.deepcopy(model).eval()
    if fold_bn:
        with warnings.catch_warnings():  # its import defines torch.jit script methods, deprecated in torch 2.13
            warnings.simplefilter("ignore", DeprecationWarning)
            from torch.fx.experimental.optimization import fuse

        try:
            out = fuse(out)
        except Exception:  # noqa: BLE001 - untraceable models are timed unfolded
            pass
    if compile:
        return _Frozen(torch.compile(out, dynamic=False))
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    return out


class _Frozen(nn.Module):
    """Calls a module compiled by ``torch.compile`` with Inductor's ``freezing`` switched on, so that it holds for the
    (lazy) compilations of every input shape. ``torch.compile(options={"freezing": True})`` does not apply it in
    torch 2.13 (the generated code keeps plain convolutions), hence this wrapper around the global config."""

    def __init__(self, compiled: nn.Module) -> None:
        super().__init__()
        self.compiled = compiled

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config

        with inductor_config.patch(freezing=True):
            return self.compiled(*args, **kwargs)
