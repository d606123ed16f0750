"""Gland segmentation with quantized FCNs (Xu et al., CVPR 2018, on the MICCAI 2015 GlaS challenge).

- :mod:`.metrics`: the challenge's object F1, object Dice and object Hausdorff on instance-label maps;
- :mod:`.glands`: seeded synthetic H&E-like gland tiles with instance masks, and the GlaS file layout;
- :mod:`.fcn`: a small U-Net shaped FCN, its training (BCE + soft Dice), instances by connected components;
- :mod:`.suggest`: suggestive annotation (bootstrap FCNs, uncertainty, representativeness, greedy max-cover).

The quantized FCNs are ``compress(fcn, INQ(weight_bits=..., act_bits=..., finetune=FineTune(loss=seg_loss)),
data=DataLoader of (image, mask))``: INQ from :mod:`compactnn.quantize`.
"""

from .fcn import GlandFCN, evaluate_fcn, instances, seg_loss, train_fcn
from .glands import load_glas, synthetic_glands
from .metrics import object_dice, object_f1, object_hausdorff
from .suggest import max_cover, random_selection, suggest

__all__ = ["object_f1", "object_dice", "object_hausdorff", "synthetic_glands", "load_glas", "GlandFCN",
           "train_fcn", "evaluate_fcn", "instances", "seg_loss", "suggest", "random_selection", "max_cover"]
