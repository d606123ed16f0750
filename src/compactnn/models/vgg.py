"""VGG-Small for CIFAR, as used by LQ-Nets (Zhang et al. 2018) and most low-bit papers after it.

Six 3x3 conv layers (128-128-M-256-256-M-512-512-M), each followed by BN and ReLU, three 2x2 max-pools, and a
single linear classifier on the flattened ``512 x H/8 x W/8`` features (4.66M parameters on 3x32x32 inputs).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..pack.spec import packable
from .registry import check_input_shape, register_model


VGG_SMALL = (128, 128, "M", 256, 256, "M", 512, 512, "M")


@packable
class VGG(nn.Module):
    """VGG-style conv net: ``cfg`` lists conv widths (3x3, padding 1, BN, ReLU) and ``"M"`` for a 2x2 max-pool.

    Args:
        input_shape: ``(C, H, W)`` of one input; the classifier's in-features follow from it.
        num_classes: outputs of the classifier.
        cfg: layer list, by default :data:`VGG_SMALL`.
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                 cfg: Sequence[int | str] = VGG_SMALL) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = int(num_classes)
        self.cfg = tuple(v if v == "M" else int(v) for v in cfg)
        c, h, w = self.input_shape
        layers: list[nn.Module] = []
        for v in self.cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
                c = v
        if h < 1 or w < 1:
            pools = self.cfg.count("M")
            raise ModelError(f"VGG input {self.input_shape[1]}x{self.input_shape[2]} is too small for {pools} "
                             f"max-pools; use inputs of at least {2 ** pools}x{2 ** pools}")
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(c * h * w, self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


@register_model("vgg-small", "VGG-Small (LQ-Nets): 6 conv 128-128-256-256-512-512 with BN+ReLU, 3 pools, 1 FC")
def vgg_small(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10) -> VGG:
    """Build VGG-Small (:data:`VGG_SMALL`)."""
    return VGG(input_shape, num_classes, VGG_SMALL)
