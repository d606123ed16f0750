"""Gland segmentation (Xu et al., CVPR 2018, on the MICCAI 2015 GlaS challenge): the challenge's object-level
metrics. Not yet built here: the synthetic glands, the FCN, suggestive annotation and the quantized FCNs."""

from .metrics import object_dice, object_f1, object_hausdorff

__all__ = ["object_f1", "object_dice", "object_hausdorff"]
