"""Pruning methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`MagnitudePrune` (``magnitude-prune``): smallest-|w| pruning, one-shot or AGP, with masked fine-tuning.
- :class:`ClipQ` (``clip-q``): CLIP-Q (Tung & Mori, CVPR 2018): clip, partition, quantize during fine-tuning, with
  (p, b) per layer chosen by Bayesian optimization (optuna; shareable storage, see :mod:`.clipq_search`).
- :class:`NISP` (``nisp``): neuron importance score propagation (Yu et al., CVPR 2018), with physical removal of
  channels by :mod:`.surgery` over the dependency graph of :mod:`.graph`.
- :class:`L1Filter` (``l1-filter``): L1-norm filter pruning (Li et al., ICLR 2017), the structured baseline.
- :func:`sensitivity`: each layer pruned alone at a sweep of levels, no retraining.
- :class:`LC` (``lc``): the learning-compression algorithm (Carreira-Perpiñán & Idelbayev, CVPR 2018) with the
  closed-form C steps of :mod:`.csteps`.

Shared machinery: :mod:`.masks` (masks while training, baked away after), :mod:`.schedule` (one-shot and AGP).
"""

from .clipq import ClipQ, clip_quantize, clip_thresholds, stored_bits
from .clipq_search import open_study, search
from .graph import DependencyGraph, build_graph
from .l1filter import L1Filter, l1_ratio_for_macs
from .lc import LC, layer_budget, run_lc
from .magnitude import MagnitudePrune, magnitude_masks
from .masks import masked
from .nisp import NISP, nisp_scores
from .schedule import PruneSchedule, agp_sparsity
from .sensitivity import sensitivity, write_sensitivity
from .surgery import prune_channels, ratio_for_macs, total_macs

__all__ = ["DependencyGraph", "build_graph", "L1Filter", "l1_ratio_for_macs", "NISP", "nisp_scores", "sensitivity",
           "write_sensitivity", "prune_channels", "ratio_for_macs", "total_macs", "ClipQ", "clip_quantize", "clip_thresholds", "stored_bits", "open_study", "search", "LC", "layer_budget", "run_lc", "MagnitudePrune", "magnitude_masks", "masked", "PruneSchedule", "agp_sparsity"]
