"""Distillation: Hinton et al.'s knowledge distillation for any stage, feature distillation (FitNets hints,
attention transfer), and Polino et al.'s quantized distillation and differentiable quantization.

- :func:`kd_loss`: ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE``, the KL averaged per example.
- A ``teacher`` on any :class:`compactnn.config.FineTune` makes that fine-tune distil (every method that fine-tunes
  through :func:`compactnn.layers.run_finetune`).
- :class:`Distill` (``distill``): train the given student against a teacher, optionally with hints or attention.
- :class:`QuantizedDistill` (``quantized-distill``) and :class:`DifferentiableQuantize`
  (``differentiable-quantize``): Polino et al. (ICLR 2018); results pack as :class:`QuantizedLayer` (integer codes
  and per-bucket scales).
"""

from .features import attention_map
from .kd import TeacherOutputs, finetune_loss, kd_loss, load_teacher
from .method import Distill
from .polino import DifferentiableQuantize, QuantizedDistill, QuantizedLayer, decode, encode, quantize

__all__ = ["kd_loss", "load_teacher", "finetune_loss", "TeacherOutputs", "attention_map", "Distill",
           "QuantizedDistill", "DifferentiableQuantize", "QuantizedLayer", "quantize", "encode", "decode"]
