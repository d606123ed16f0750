"""Weight product quantization (``product-quantize``): rows of Linear / Conv weights cut into sub-vectors, each
replaced by the index of its nearest codeword; the codewords are then fine-tuned.

Layout (our choices, after Gong et al. 2014, "Compressing deep convolutional networks using vector quantization",
and Stock et al. 2020, "And the bit goes down"):

- a Linear weight ``(out, in)`` is read as ``out`` rows of ``in`` numbers; a Conv weight ``(out, in/groups, *kernel)``
  is reshaped to ``out`` rows of ``in/groups * prod(kernel)`` numbers (PyTorch's memory order). Each row is cut into
  ``row / block`` consecutive sub-vectors of ``block`` numbers.
- ``codebook="layer"`` (default): one codebook of ``k = 2**bits`` codewords per layer, shared by every sub-vector
  position (as Stock et al.); ``codebook="subspace"``: one codebook per sub-vector position (classic PQ, Gong et al.;
  the codebooks then cost ``row / block`` times more, which at LeNet sizes outweighs the layer).
- When ``block`` does not divide the row length, the layer uses the largest divisor of the row length not above
  ``block`` (e.g. 5 for a 100-wide row and ``block=8``); when a layer (or a position) has fewer sub-vectors than
  ``2**bits``, ``k`` is the largest power of two not above that count. Both are recorded on the module.
- Codewords are k-means centroids (:func:`compactnn.pq.kmeans`, k-means++ init). Fine-tuning trains the codewords
  (and biases, and every other parameter of the model) with the codes fixed: the gradient of a codeword is the sum of
  the gradients of the sub-vectors that use it (the backward of the indexing is a scatter-add).
- ``fp16_codebook``: after fine-tuning the codewords are rounded to float16 values (kept as float32 tensors, which
  the packer then stores exactly at 2 bytes each).

The result holds :class:`PQLinear` / :class:`PQConv2d` modules (packable): ``codes`` (uint8, ``(out, row/block)``) and
``codebook`` (``(g, k, block)``); the packer stores the codes at ``ceil(log2 k)`` bits or fewer.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..api import register_method
from ..config import FineTune, MethodConfig, Patterns, PerLayer, PositiveInt, Range, Seed
from ..graph import set_module
from ..layers import Target, require_data, run_finetune
from ..pack.spec import packable
from .kmeans import kmeans


def _decode(codebook: Tensor, codes: Tensor) -> Tensor:
    """Rows ``(out, positions * block)`` from codes ``(out, positions)`` and a codebook ``(g, k, block)``."""
    idx = codes.long()
    if codebook.shape[0] == 1:
        w = codebook[0][idx]
    else:
        w = codebook[torch.arange(codebook.shape[0], device=idx.device), idx]
    return w.reshape(codes.shape[0], -1)


class _PQWeight(nn.Module):
    """Shared part: ``codes`` buffer, ``codebook`` parameter, optional ``bias``; :meth:`weight` decodes."""

    def _setup(self, codes: Tensor, codebook: Tensor, bias: Tensor | None, shape: tuple[int, ...]) -> None:
        self.weight_shape = tuple(int(s) for s in shape)
        self.block = int(codebook.shape[2])
        self.register_buffer("codes", codes.to(torch.uint8 if codebook.shape[1] <= 256 else torch.int16))
        self.codebook = nn.Parameter(codebook.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def weight(self) -> Tensor:
        """The decoded dense weight, in the original layer's shape."""
        return _decode(self.codebook, self.codes).reshape(self.weight_shape)

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(self.codebook.shape[1])))


@packable
class PQLinear(_PQWeight):
    """A Linear layer whose weight rows are product-quantized (see :mod:`compactnn.pq.weights`)."""

    def __init__(self, codes: Tensor, codebook: Tensor, bias: Tensor | None, in_features: int,
                 out_features: int) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._setup(codes, codebook, bias, (out_features, in_features))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight(), self.bias)

    def macs(self, input: tuple, output: Tensor) -> int:
        """Those of the dense layer: ``rows * in * out``."""
        return (output.numel() // self.out_features) * self.in_features * self.out_features

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, block={self.block}, "
                f"k={self.codebook.shape[1]}, codebooks={self.codebook.shape[0]}")


@packable
class PQConv2d(_PQWeight):
    """A Conv2d layer (zero padding) whose weight rows are product-quantized."""

    def __init__(self, codes: Tensor, codebook: Tensor, bias: Tensor | None, conv: nn.Conv2d) -> None:
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride = tuple(conv.kernel_size), tuple(conv.stride)
        self.padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), int(conv.groups)
        self._setup(codes, codebook, bias, tuple(conv.weight.shape))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    def macs(self, input: tuple, output: Tensor) -> int:
        """Those of the dense conv: output elements times ``in/groups * prod(kernel)``."""
        return output.numel() * (self.in_channels // self.groups) * math.prod(self.kernel_size)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"block={self.block}, k={self.codebook.shape[1]}")


def block_for(row: int, block: int) -> int:
    """The sub-vector length used for rows of ``row`` numbers: the largest divisor of ``row`` not above ``block``."""
    return max(d for d in range(1, min(row, block) + 1) if row % d == 0)


def quantize_rows(w: Tensor, block: int, bits: int, codebook: str = "layer", iterations: int = 25,
                  seed: int = 0) -> tuple[Tensor, Tensor]:
    """Product-quantize the rows of ``w`` (``(out, row)``); returns ``(codes (out, row/block), codebook (g, k,
    block))`` with the rules of the module docstring (``block`` and ``k`` adjusted to the layer)."""
    w = w.detach().to(torch.float32).cpu()
    out, row = w.shape
    block = block_for(row, block)
    pos = row // block
    subs = w.reshape(out, pos, block)
    if codebook == "layer":
        x = subs.reshape(1, out * pos, block)
    else:
        x = subs.transpose(0, 1).contiguous()  # (pos, out, block)
    k = min(2**bits, 2 ** int(math.floor(math.log2(x.shape[1]))))
    books, labels, _ = kmeans(x, k, iterations, seed)
    codes = labels.reshape(out, pos) if codebook == "layer" else labels.t().contiguous()
    return codes, books


@dataclasses.dataclass(frozen=True)
class ProductQuantize(MethodConfig):
    """Product-quantize the weight rows of Linear/Conv2d layers and fine-tune the codewords.

    Args:
        block: sub-vector length (numbers per code); one value or ``{layer pattern: value}``.
        bits: ``2**bits`` codewords per codebook, 1..8 (codes of at most 8 bits); per layer too.
        codebook: ``"layer"`` (one codebook per layer, shared by all sub-vector positions) or ``"subspace"`` (one per
            position, classic PQ).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv2d.
        exclude: patterns of layers left alone.
        finetune: fine-tuning of the codewords (codes fixed); ``None`` = k-means only.
        fp16_codebook: round the final codewords to float16 values (stored at 2 bytes each).
        iterations: Lloyd steps per layer.
        seed: seeds the k-means++ init.
    """

    method = "product-quantize"
    description = "Product quantization of weight rows (k-means sub-vector codebooks) with codeword fine-tuning"
    kinds = (nn.Linear, nn.Conv2d)
    replaces = True
    example = {"block": 4, "bits": 4, "finetune": {"epochs": 1}}

    block: PerLayer[Annotated[int, Range(1, 1024, note="numbers per sub-vector")]] = 8
    bits: PerLayer[Annotated[int, Range(1, 8, note="bits per code")]] = 8
    codebook: Literal["layer", "subspace"] = "layer"
    layers: Patterns = None
    exclude: Patterns = None
    finetune: FineTune | None = FineTune()
    fp16_codebook: bool = True
    iterations: PositiveInt = 25
    seed: Seed = 0


@register_method(ProductQuantize)
def product_quantize(model: nn.Module, config: ProductQuantize, data: Any, target: Target) -> nn.Module:
    """Replace the selected layers of ``model`` by :class:`PQLinear` / :class:`PQConv2d`, fine-tune, return it."""
    if config.finetune is not None:
        require_data(data, config.method)
    new: dict[str, nn.Module] = {}
    for name, module in list(target.layers.items()):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            target.skip(name, f"padding_mode {module.padding_mode!r} (only 'zeros' is supported)", config.method)
            continue
        w = module.weight.detach()
        rows = w.reshape(w.shape[0], -1)
        codes, books = quantize_rows(rows, target.value("block", name), target.value("bits", name),
                                     config.codebook, config.iterations, config.seed)
        books = books.to(w.device)
        bias = module.bias
        if isinstance(module, nn.Linear):
            layer = PQLinear(codes.to(w.device), books, bias, module.in_features, module.out_features)
        else:
            layer = PQConv2d(codes.to(w.device), books, bias, module)
        layer.train(module.training)
        set_module(model, name, layer)
        new[name] = layer
    if config.finetune is not None and new:
        run_finetune(model, data, config.finetune, config.method)
    if config.fp16_codebook:
        with torch.no_grad():
            for layer in new.values():
                layer.codebook.copy_(layer.codebook.half().float())
    return model


__all__ = ["ProductQuantize", "PQLinear", "PQConv2d", "product_quantize", "quantize_rows", "block_for"]
