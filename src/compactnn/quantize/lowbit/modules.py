"""Trained low-bit layers as they are stored: integer codes plus a small float scale tensor.

:class:`LowBitConv2d` and :class:`LowBitLinear` are ``nn.Conv2d`` / ``nn.Linear`` subclasses whose ``weight`` is a
read-only property ``decode(codes, scale)`` (see :func:`.quantizers.decode`). The codes are an int8 (or int16)
tensor with few distinct values, so :mod:`compactnn.pack`'s codebook codec stores them at ``ceil(log2 K)`` bits
(ternary: 2 bits per weight, binary: 1), and the scales (one per layer, row or kernel position) cost a few floats.
The codes are kept as a non-trainable ``nn.Parameter`` so that parameter counts and reports see the weights.
Both classes are pack-allow-listed (:func:`compactnn.pack.spec.packable`), so ``pack.load`` rebuilds them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...pack.spec import packable
from .quantizers import decode

__all__ = ["LowBitConv2d", "LowBitConvTranspose2d", "LowBitLinear", "lowbit_from"]

_SKIP = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


class _LowBit:
    codes: nn.Parameter
    scale: Tensor
    decode_mode: str
    bits: int

    @property
    def weight(self) -> Tensor:  # type: ignore[override]
        """The float weight ``decode(codes, scale)`` (computed; not a parameter)."""
        return decode(self.codes, self.scale, self.decode_mode)

    def _fill(self, layer: nn.Module, codes: Tensor, scale: Tensor, decode_mode: str, bits: int) -> None:
        nn.Module.__init__(self)
        for k, v in layer.__dict__.items():
            if k not in _SKIP and not k.startswith("_forward") and not k.startswith("_backward") \
                    and not k.startswith("_state_dict") and not k.startswith("_load_state") and k != "training":
                if isinstance(v, (bool, int, float, str, tuple, list, type(None))):
                    self.__dict__[k] = v
        self.training = layer.training
        self.codes = nn.Parameter(codes.detach().clone(), requires_grad=False)
        self.register_buffer("scale", scale.detach().to(torch.float32).clone())
        bias = layer.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.decode_mode = str(decode_mode)
        self.bits = int(bits)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", bits={self.bits}, decode={self.decode_mode}, scales={tuple(self.scale.shape)}"


@packable
class LowBitConv2d(_LowBit, nn.Conv2d):
    """A Conv2d whose weight is ``decode(codes, scale)``; build with :func:`lowbit_from`."""

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, self.weight, self.bias)


@packable
class LowBitLinear(_LowBit, nn.Linear):
    """A Linear whose weight is ``decode(codes, scale)``; build with :func:`lowbit_from`."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)


@packable
class LowBitConvTranspose2d(_LowBit, nn.ConvTranspose2d):
    """A ConvTranspose2d whose weight is ``decode(codes, scale)`` (INQ quantizes transposed convs too)."""

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        return nn.ConvTranspose2d.forward(self, x, output_size)


def lowbit_from(layer: nn.Module, codes: Tensor, scale: Tensor, decode_mode: str = "linear",
                bits: int = 2) -> nn.Module:
    """The low-bit version of a plain ``nn.Conv2d`` / ``nn.ConvTranspose2d`` / ``nn.Linear`` (its
    hyper-parameters and bias kept)."""
    cls = (LowBitConv2d if isinstance(layer, nn.Conv2d) else
           LowBitConvTranspose2d if isinstance(layer, nn.ConvTranspose2d) else LowBitLinear)
    obj = cls.__new__(cls)
    obj._fill(layer, codes, scale, decode_mode, bits)
    return obj
