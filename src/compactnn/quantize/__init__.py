"""Quantization methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`KMeansQuantize` (``kmeans-quantize``): Deep Compression k-means weight sharing with codebook fine-tuning.
- :class:`IntegerOnly` (``integer-only``): integer-arithmetic-only inference (Jacob et al., CVPR 2018): QAT with BN
  folding or post-training calibration, then an :class:`IntegerModel` that runs in int8/int32 only, bit-exact
  between its NumPy reference and its fast torch engine; ONNX export in :mod:`.intonly.export`.
- :mod:`.lowbit`: low-bit weights/activations on one core: :class:`SYQ`, :class:`ELQ`, :class:`TSQ`, :class:`INQ` and
  the baselines :class:`BWN`, :class:`TWN`, :class:`DoReFa`, :class:`LSQ`; weights stored at their real bit width.
"""

from . import intonly
from .intonly import IntegerModel, IntegerOnly
from .kmeans import KMeansQuantize, kmeans_1d
from . import lowbit
from .lowbit import BWN, ELQ, INQ, LSQ, SYQ, TSQ, TWN, DoReFa

__all__ = ["IntegerModel", "IntegerOnly", "KMeansQuantize", "intonly", "kmeans_1d", "lowbit", "BWN", "DoReFa", "ELQ",
           "INQ", "LSQ", "SYQ", "TSQ", "TWN"]
