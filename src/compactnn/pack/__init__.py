"""Packed ``.cnz`` files: real bytes on disk, rebuilt without pickle.

``save(model, path)`` writes the module tree (allow-listed classes, JSON-safe attributes) and every parameter and
buffer, each with the smallest exact codec (dense, fp16, codebook, sparse, affine) and zstd. ``load(path)`` rebuilds
the model; ``load(path, model=skeleton)`` fills a skeleton for your own module classes. ``read_manifest(path)`` returns the
manifest; ``tensor_bytes`` / ``packed_size`` measure without writing. See :mod:`compactnn.pack.container` for the
file layout and :mod:`compactnn.pack.codecs` for the codecs and the exactness guarantee.
"""

from . import bits, codecs, spec
from .container import load, packed_size, read_manifest, save, tensor_bytes
from .spec import packable

__all__ = ["save", "load", "read_manifest", "tensor_bytes", "packed_size", "packable", "bits", "codecs", "spec"]
