"""Low-bit quantization on one shared core (issue 11): SYQ, ELQ, TSQ, INQ and the baselines BWN, TWN, DoReFa, LSQ.

- :mod:`.quantizers`: weight quantizers (binary, ternary, k-bit uniform, DoReFa, LSQ, power-of-two, incremental)
  and activation quantizers (clip [0, 1], TSQ sparse, LSQ) with straight-through estimators;
- :mod:`.core`: which layers, inserting the quantizers, hardening into :mod:`.modules` (integer codes + scales,
  packed at their real bit width by :mod:`compactnn.pack`);
- one file per method: :mod:`.syq`, :mod:`.elq`, :mod:`.tsq`, :mod:`.inq`, :mod:`.baselines`;
- :mod:`.convert`: a trained low-bit model with activations of <= 8 bits to the integer engine's ``IntegerModel``.
"""

from . import quantizers, modules, core  # noqa: F401
from .convert import to_integer
from .baselines import BWN, LSQ, TWN, DoReFa
from .elq import ELQ
from .inq import INQ
from .modules import LowBitConv2d, LowBitLinear
from .syq import SYQ
from .tsq import TSQ

__all__ = ["BWN", "DoReFa", "ELQ", "INQ", "LSQ", "LowBitConv2d", "LowBitLinear", "SYQ", "TSQ", "TWN", "to_integer"]
