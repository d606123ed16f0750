"""Training: ``fit`` (seeded, checkpointed, torchrun-aware) and ``evaluate`` (accuracy and loss)."""

from . import distributed
from .checkpoint import load_checkpoint, save_checkpoint
from .loop import evaluate, fit, lr_factor

__all__ = ["fit", "evaluate", "lr_factor", "save_checkpoint", "load_checkpoint", "distributed"]
