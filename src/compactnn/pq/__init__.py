"""Product quantization: PQ, OPQ (parametric and non-parametric), the biresolution spectral PQ, ADC/SDC search.

``train(x, m, bits, method)`` gives a :class:`ProductQuantizer`; :class:`PQIndex` holds the codes of a base set and
searches it. ``ProductQuantize`` (YAML ``product-quantize``) product-quantizes weight rows. See :mod:`compactnn.pq.quantizer` for the methods (and our reading of the spectral paper) and
:mod:`compactnn.pq.index` for the search.
"""

from .index import IVFPQIndex, PQIndex, exact_search, recall_at
from .io import PQIndexModule, load_index, read_npy, read_vecs, save_index, write_vecs
from .kmeans import assign, kmeans
from .quantizer import METHODS, ProductQuantizer, eigenvalue_allocation, procrustes, train
from .weights import PQConv2d, PQLinear, ProductQuantize

__all__ = ["PQIndex", "IVFPQIndex", "ProductQuantizer", "train", "kmeans", "assign", "exact_search", "recall_at",
           "eigenvalue_allocation", "procrustes", "METHODS", "read_vecs", "write_vecs", "read_npy", "save_index",
           "load_index", "PQIndexModule", "ProductQuantize", "PQLinear", "PQConv2d"]
