"""Tensor decompositions: factorized layers that replace dense ``nn.Linear`` / ``nn.Conv2d`` / LSTM input maps.

- :mod:`.tensor_ring`: Tensor Ring Nets (Wang et al., CVPR 2018): :class:`TRLinear`, :class:`TRConv2d`, plus the
  ring helpers :func:`merge_cores` (balanced pairwise merge), :func:`ring_to_tensor`, :func:`tree_merge_macs`.
- :mod:`.block_term`: Block-Term RNNs (Ye et al., CVPR 2018): :class:`BTLinear`, :class:`BTLSTM`, :class:`BTGRU`.
- :mod:`.method`: the ``tensor-ring`` method (:class:`TensorRing`): TR-SVD (tensorly) refined by ALS
  (:mod:`.trsvd`), layer replacement, fine-tuning.
- :mod:`.tt`: tensor-train baselines :class:`TTLinear`, :class:`TTLSTM`; :mod:`.tucker_cp`: :class:`TuckerConv2d`,
  :class:`CPConv2d` built from a trained conv.
- :mod:`.plan`: contraction planning (dense / merged / factorized evaluation, picked per input size by a time
  model, cached in inference); :mod:`.inference`: :func:`inference_form` freezes each factorized layer to its plan
  (TorchScript, ``torch.compile`` and ONNX export).
- :mod:`.shapes`: :func:`suggest_modes` (balanced factorization of a feature count), :func:`check_modes`,
  :func:`check_ranks`.

Every layer has ``full_weight()`` (the dense weight it stands for, laid out like the torch layer's) and
``macs(input, output)`` (what its real forward path multiplies, used by :func:`compactnn.report.count_macs`).
"""

from .block_term import BTGRU, BTLSTM, BTLinear
from .inference import inference_form, plans
from .method import TensorRing
from .shapes import check_modes, check_ranks, suggest_modes
from .tensor_ring import TRConv2d, TRLinear, merge_cores, ring_sigma, ring_to_tensor, tree_merge_macs
from .trsvd import factorize_conv, factorize_linear, tr_als, tr_svd
from .tt import TTLSTM, TTLinear
from .tucker_cp import CPConv2d, TuckerConv2d

__all__ = [
    "BTGRU", "BTLSTM", "BTLinear", "TRConv2d", "TRLinear", "TensorRing", "TTLinear", "TTLSTM", "TuckerConv2d",
    "CPConv2d", "inference_form", "plans", "tr_svd", "tr_als", "factorize_linear", "factorize_conv",
    "check_modes", "check_ranks", "merge_cores", "ring_sigma", "ring_to_tensor", "suggest_modes", "tree_merge_macs",
]
