"""Pruning methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`MagnitudePrune` (``magnitude-prune``): smallest-|w| pruning, one-shot or AGP, with masked fine-tuning.
- :class:`ClipQ` (``clip-q``): CLIP-Q (Tung & Mori, CVPR 2018): clip, partition, quantize during fine-tuning, with
  (p, b) per layer chosen by Bayesian optimization (optuna; shareable storage, see :mod:`.clipq_search`).
- :class:`NISP` (``nisp``) and :class:`L1Filter` (``l1-filter``): neuron importance score propagation (Yu et al.,
  CVPR 2018) and L1-norm filter pruning (Li et al., ICLR 2017), two importance measures of one structured pruner
  (:mod:`.structured`), which removes channels physically (:mod:`.surgery`, the layer table of :mod:`.layer_rules`)
  over the dependency graph of :mod:`.graph`.
- :func:`sensitivity`: each layer pruned alone at a sweep of levels, no retraining.
- :class:`LC` (``lc``): the learning-compression algorithm (Carreira-Perpiñán & Idelbayev, CVPR 2018) with the
  closed-form C steps of :mod:`.csteps`.

Shared machinery: :mod:`.masks` (masks while training, baked away after), :mod:`.schedule` (one-shot and AGP).
"""

from .clipq import ClipQ
from .clipq_ops import clip_quantize, clip_thresholds, stored_bits
from .clipq_search import open_study, search
from .graph import DependencyGraph, build_graph
from .l1filter import L1Filter
from .layer_rules import register_layer
from .lc import LC, layer_budget, run_lc
from .magnitude import MagnitudePrune, magnitude_masks
from .masks import masked
from .nisp import NISP, NISPImportance, nisp_scores
from .schedule import PruneSchedule, agp_sparsity
from .sensitivity import sensitivity, write_sensitivity
from .structured import Structured, l1_importance, prune_structured
from .surgery import prune_channels, total_macs

__all__ = ["DependencyGraph", "build_graph", "L1Filter", "NISP", "NISPImportance", "nisp_scores", "sensitivity",
           "write_sensitivity", "prune_channels", "total_macs", "ClipQ", "clip_quantize", "clip_thresholds",
           "stored_bits", "open_study", "search", "LC", "layer_budget", "run_lc", "MagnitudePrune", "magnitude_masks",
           "masked", "PruneSchedule", "agp_sparsity", "Structured", "l1_importance", "prune_structured",
           "register_layer"]
