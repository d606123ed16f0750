"""Data sets as in-memory tensors: ``load(name) -> DataBundle`` with normalized float32 train and test sets.

Names: ``digits`` (default; scikit-learn's bundled 8x8 digits, no files needed), ``fashion-mnist`` and ``mnist``
(IDX files), ``cifar10`` (python pickle batches). File-based sets are searched for in ``root``, ``$COMPACTNN_DATA``,
the Debian package folder and the user cache, and downloaded (checksum-verified) only when found nowhere; see
:mod:`compactnn.data.fetch`. New families add a loader with :func:`register_dataset`.
"""

from .bundle import ArrayDataset, DataBundle, describe_datasets, list_datasets, load, register_dataset
from .user import UserData, as_bundle
from . import cifar, digits, idx  # noqa: F401  (register the built-in data sets)
from . import moving  # noqa: F401  (registers moving-fashion-mnist)
from . import scenes, nyu  # noqa: F401  (register scenes and nyu-depth-v2)
from .idx import read_idx, write_idx

__all__ = [
    "ArrayDataset",
    "DataBundle",
    "describe_datasets",
    "list_datasets",
    "UserData",
    "as_bundle",
    "load",
    "register_dataset",
    "read_idx",
    "write_idx",
]
