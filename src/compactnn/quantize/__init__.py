"""Quantization methods. Importing this package registers them with :func:`compactnn.compress`.

- :class:`KMeansQuantize` (``kmeans-quantize``): Deep Compression k-means weight sharing with codebook fine-tuning.
"""

from .kmeans import KMeansQuantize, kmeans_1d

__all__ = ["KMeansQuantize", "kmeans_1d"]
