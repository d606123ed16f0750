"""Gland segmentation (Xu et al., CVPR 2018, on the MICCAI 2015 GlaS challenge): the challenge's object-level
metrics, synthetic gland tiles with instance masks, and the GlaS file layout. Not yet built: the FCN, suggestive
annotation and the quantized FCNs (see the open issue)."""

from .glands import load_glas, synthetic_glands
from .metrics import object_dice, object_f1, object_hausdorff

__all__ = ["object_f1", "object_dice", "object_hausdorff", "synthetic_glands", "load_glas"]
