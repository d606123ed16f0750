"""CIFAR ResNets (He et al. 2016, "Deep Residual Learning", section 4.2): resnet20, resnet32, resnet56.

A 3x3 conv with 16 filters, then 3 stages of ``n = (depth - 2) / 6`` :class:`BasicBlock` s with 16, 32 and 64
channels (stages 2 and 3 start with stride 2), global average pooling and one linear layer.

Shortcut choice: the paper's CIFAR nets use option A (identity with zero-padded channels on downsampling, no
parameters). We use option B (a 1x1 conv + BN projection on the two downsampling blocks) because it is a plain
Conv/BN graph that structured pruning, folding and integer-only conversion handle without a special zero-pad op.
This adds 2 x (1x1 conv + BN) per net: resnet20 has 272,474 parameters here vs. 0.27M (269,722) with option A.

The residual sum is the explicit :class:`compactnn.graph.Add` module, so graph tools and quantizers can find (and replace) it.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..graph.markers import Add
from ..pack.spec import packable
from .registry import check_input_shape, register_model


@packable
class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    Args:
        in_planes: input channels.
        planes: output channels.
        stride: stride of the first conv; when it is not 1 or the channels change the shortcut is a 1x1 conv + BN
            (option B), otherwise ``nn.Identity``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.in_planes, self.planes, self.stride = int(in_planes), int(planes), int(stride)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()
        self.add = Add()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(self.add(out, self.shortcut(x)))


@packable
class ResNet(nn.Module):
    """CIFAR-style ResNet of ``depth = 6n + 2`` layers.

    Args:
        input_shape: ``(C, H, W)`` of one input (C sets the stem's in-channels; any H, W >= 1 works thanks to the
            global average pool).
        num_classes: outputs of the linear layer.
        depth: 20, 32, 56, ... (``(depth - 2) % 6 == 0``).
        widths: channels of the three stages.
    """

    def __init__(self, input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10, depth: int = 20,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        self.num_classes, self.depth = int(num_classes), int(depth)
        self.widths = tuple(int(w) for w in widths)
        if self.depth < 8 or (self.depth - 2) % 6:
            raise ModelError(f"ResNet depth must be 6n+2 (20, 32, 56, ...), got {depth}")
        if len(self.widths) != 3:
            raise ModelError(f"ResNet takes three stage widths, got {widths!r}")
        n = (self.depth - 2) // 6
        self.conv1 = nn.Conv2d(self.input_shape[0], self.widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.widths[0])
        self.relu = nn.ReLU()
        in_planes = self.widths[0]
        stages = []
        for i, planes in enumerate(self.widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(self.widths[2], self.num_classes)
        for m in self.modules():  # He et al. initialization
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.pool(x)))


def _resnet(depth: int):
    def factory(input_shape: Sequence[int] = (3, 32, 32), num_classes: int = 10,
                widths: Sequence[int] = (16, 32, 64)) -> ResNet:
        return ResNet(input_shape, num_classes, depth, widths)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"Build a CIFAR :class:`ResNet` of depth {depth} (option-B projection shortcuts)."
    return factory


for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}", f"CIFAR ResNet-{_depth} (He et al. 2016), 16/32/64 channels, "
                   "1x1-conv+BN shortcuts")(_resnet(_depth))
