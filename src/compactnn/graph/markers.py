"""Marker modules: operations written as modules so that graph tools (structured pruning, integer-only
conversion, MAC counting) can see them in a trace and replace them. A model written with ``a + b`` or ``torch.cat``
works as well; the markers make the op's place in the model explicit and give it a name.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pack.spec import packable, register_alias


@packable
class Add(nn.Module):
    """Elementwise sum of two tensors: a residual join, as a module so tools can see and replace it."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


@packable
class Concat(nn.Module):
    """Concatenation of tensors along ``dim`` (channels by default), as a module.

    Args:
        dim: the dimension to concatenate along.
    """

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = int(dim)

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


register_alias("compactnn.models.resnet.Add", Add)  # files packed before Add moved here
