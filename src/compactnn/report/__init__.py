"""Measure a model: per-layer params, nonzeros, packed bytes and MACs, latency, and before/after reports.

- :func:`count_macs` counts multiply-accumulates with forward hooks on the real module (``macs.py``).
- :func:`measure_latency` times the real module (with :func:`steady_allocator`, so page faults of freshly mapped
  activations are not timed); :func:`inference_form` is its deployed copy (BN folded, channels-last; or compiled
  with TorchInductor and freezing, ``compile=True``) (``latency.py``).
- :func:`summarize` builds a :class:`Report` (``summary.py``); ``Report.write`` saves report.json, report.md and
  a PNG of per-layer sizes (:func:`plot_layer_sizes`, ``plot.py``).
"""

from .latency import inference_form, measure_latency, steady_allocator
from .macs import count_macs, layer_modules
from .plot import plot_layer_sizes
from .summary import Report, summarize

__all__ = ["count_macs", "layer_modules", "measure_latency", "inference_form", "steady_allocator", "plot_layer_sizes",
           "Report", "summarize"]
