"""LeNet-300-100 and the Caffe LeNet-5 (LeCun et al. 1998; the Caffe variant used by Han et al. 2015).

Constructor arguments are JSON-safe (ints and tuples) and kept as attributes, so ``compactnn.pack`` can rebuild the
modules from a manifest. Every activation is its own ``nn.ReLU`` module so that hooks and quantizers see each one.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..pack.spec import packable
from .registry import check_input_shape, register_model



@packable
class LeNet300(nn.Module):
    """Fully connected ``in-300-100-classes`` net with ReLU (LeNet-300-100).

    Args:
        input_shape: ``(C, H, W)`` of one input; ``C*H*W`` is the first layer's in-features (784 for MNIST).
        num_classes: outputs of the last layer.
        hidden: widths of the two hidden layers.
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 hidden: Sequence[int] = (300, 100)) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        if len(self.hidden) != 2:
            raise ModelError(f"LeNet300 takes two hidden widths, got {hidden!r}")
        c, h, w = self.input_shape
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c * h * w, self.hidden[0])
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(self.hidden[0], self.hidden[1])
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(self.hidden[1], self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


def lenet5_padding(input_shape: Sequence[int]) -> int:
    """Default conv padding for :class:`LeNet5`: 0 (the Caffe net) when H and W are >= 28, else 2.

    With padding 2 each 5x5 conv keeps its input size, so 8x8 digits still reach 2x2 after both pools.
    """
    _, h, w = input_shape
    return 0 if min(h, w) >= 28 else 2


@packable
class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5x5, maxpool 2, conv 50@5x5, maxpool 2, fc 500, ReLU, fc classes.

    Args:
        input_shape: ``(C, H, W)`` of one input; the flatten size is computed from it.
        num_classes: outputs of the last layer.
        padding: conv padding; ``None`` picks :func:`lenet5_padding` (0 for >= 28x28 inputs, 2 for smaller ones).
    """

    def __init__(self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
                 padding: int | None = None) -> None:
        super().__init__()
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = int(num_classes)
        self.padding = lenet5_padding(self.input_shape) if padding is None else int(padding)
        c, h, w = self.input_shape
        p = self.padding
        fh, fw = h, w
        for _ in range(2):  # conv 5x5 (stride 1) then maxpool 2 (floor)
            fh, fw = (fh + 2 * p - 4) // 2, (fw + 2 * p - 4) // 2
        if fh < 1 or fw < 1:
            raise ModelError(f"lenet5 input {h}x{w} is too small for padding {p}; use padding=2 or larger inputs")
        self.conv1 = nn.Conv2d(c, 20, 5, padding=p)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5, padding=p)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(50 * fh * fw, 500)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(500, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        return self.fc2(self.relu1(self.fc1(self.flatten(x))))


@register_model("lenet300", "LeNet-300-100: fully connected in-300-100-classes with ReLU")
def lenet300(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10,
             hidden: Sequence[int] = (300, 100)) -> LeNet300:
    """Build :class:`LeNet300` (266,610 parameters on 1x28x28 inputs)."""
    return LeNet300(input_shape, num_classes, hidden)


@register_model("lenet5", "LeNet-5 (Caffe): conv20-pool-conv50-pool-fc500-fc; padding 2 below 28x28")
def lenet5(input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, padding: int | None = None) -> LeNet5:
    """Build :class:`LeNet5` (431,080 parameters on 1x28x28 inputs)."""
    return LeNet5(input_shape, num_classes, padding)
