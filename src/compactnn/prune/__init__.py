"""Pruning methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`MagnitudePrune` (``magnitude-prune``): smallest-|w| pruning, one-shot or AGP, with masked fine-tuning.

Shared machinery: :mod:`.masks` (masks while training, baked away after), :mod:`.schedule` (one-shot and AGP).
"""

from .magnitude import MagnitudePrune, magnitude_masks
from .masks import masked
from .schedule import PruneSchedule, agp_sparsity

__all__ = ["MagnitudePrune", "magnitude_masks", "masked", "PruneSchedule", "agp_sparsity"]
