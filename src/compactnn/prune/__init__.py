"""Pruning methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`MagnitudePrune` (``magnitude-prune``): smallest-|w| pruning, one-shot or AGP, with masked fine-tuning.
- :class:`ClipQ` (``clip-q``): CLIP-Q (Tung & Mori, CVPR 2018): clip, partition, quantize during fine-tuning, with
  (p, b) per layer chosen by Bayesian optimization (optuna; shareable storage, see :mod:`.clipq_search`).
- :class:`LC` (``lc``): the learning-compression algorithm (Carreira-Perpiñán & Idelbayev, CVPR 2018) with the
  closed-form C steps of :mod:`.csteps`.

Shared machinery: :mod:`.masks` (masks while training, baked away after), :mod:`.schedule` (one-shot and AGP).
"""

from .clipq import ClipQ, clip_quantize, clip_thresholds, stored_bits
from .clipq_search import open_study, search
from .lc import LC, layer_budget, run_lc
from .magnitude import MagnitudePrune, magnitude_masks
from .masks import masked
from .schedule import PruneSchedule, agp_sparsity

__all__ = ["ClipQ", "clip_quantize", "clip_thresholds", "stored_bits", "open_study", "search", "LC", "layer_budget", "run_lc", "MagnitudePrune", "magnitude_masks", "masked", "PruneSchedule", "agp_sparsity"]
