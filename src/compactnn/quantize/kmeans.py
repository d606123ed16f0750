"""Weight sharing by k-means, the quantization stage of Deep Compression (Han et al., ICLR 2016).

Per layer, the nonzero weights are clustered into ``2**bits`` centroids with 1-D k-means; every weight becomes its
centroid. Zeros (from pruning) stay zero and are not clustered: the zero is not one of the ``2**bits`` codes, the
packer stores it through its sparse codec. Fine-tuning trains the codebook: ``weight = table[index]`` with
``table = [0, *codebook]``, so the codebook's gradient is the sum of the weight gradients of each cluster (the
backward of indexing is a scatter-add), exactly the paper's centroid update. Baking leaves plain Linear/Conv layers
whose weights take at most ``2**bits`` distinct nonzero values.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..api import register_method
from ..cluster import inertia, kmeans_1d
from ..errors import TrainingDiverged
from ..config import FineTune, MethodConfig, Patterns, PerLayer, PositiveInt, Range, Seed
from ..layers import WEIGHT_LAYERS, Target, require_data, run_finetune, slot_of, strip_parametrizations

Init = Literal["linear", "density", "random"]


class SharedWeight(nn.Module):
    """Parametrization ``weight = [0, *codebook][index]``: the parametrized original IS the codebook.

    Args:
        index: int64 tensor of the weight's shape; 0 = a zero weight, ``j >= 1`` = ``codebook[j - 1]``.
        codebook: the initial codebook, shape ``(k,)``.
    """

    def __init__(self, index: Tensor, codebook: Tensor):
        super().__init__()
        self.register_buffer("index", index.to(torch.int64).clone())
        self.register_buffer("initial", codebook.detach().clone())

    def forward(self, codebook: Tensor) -> Tensor:
        return torch.cat([codebook.new_zeros(1), codebook])[self.index]

    def right_inverse(self, weight: Tensor) -> Tensor:
        """The least-squares codebook for these assignments: each cluster's mean weight (empty: initial value)."""
        k = self.initial.numel()
        flat, idx = weight.detach().reshape(-1).double(), self.index.reshape(-1)
        sums = torch.zeros(k + 1, dtype=torch.float64, device=flat.device).index_add_(0, idx, flat)
        counts = torch.bincount(idx, minlength=k + 1)
        fallback = torch.cat([self.initial.new_zeros(1), self.initial]).double()
        means = torch.where(counts > 0, sums / counts.clamp(min=1), fallback)
        return means[1:].to(weight.dtype)


def share_weights(module: nn.Module, index: Tensor, codebook: Tensor) -> None:
    """Parametrize ``module.weight`` as ``[0, *codebook][index]`` with a trainable codebook.

    The codebook starts as each cluster's mean weight (for k-means labels: the k-means centroids).
    """
    owner, name = slot_of(module)
    parametrize.register_parametrization(owner, name, SharedWeight(index, codebook), unsafe=True)


def codebook_of(module: nn.Module) -> nn.Parameter:
    """The trainable codebook of a module parametrized by :func:`share_weights`."""
    owner, name = slot_of(module)
    return getattr(owner.parametrizations, name).original


def cluster_weight(weight: Tensor, bits: int, init: Init = "linear", iterations: int = 100, seed: int = 0):
    """k-means the nonzero entries of ``weight`` into ``2**bits`` centroids.

    Returns ``(index, codebook)``: ``index`` int64 of the weight's shape (0 = zero weight, ``j`` = centroid
    ``j - 1``), ``codebook`` ``(2**bits,)`` in the weight's dtype; ``None`` if the weight is all zeros.
    """
    w = weight.detach()
    nonzero = w != 0
    if not bool(nonzero.any()):
        return None
    centroids, labels = kmeans_1d(w[nonzero].double().cpu().numpy(), 2**bits, init, iterations, seed)
    index = torch.zeros(w.shape, dtype=torch.int64, device=w.device)
    index[nonzero] = torch.from_numpy(labels).to(w.device) + 1
    return index, torch.from_numpy(centroids).to(device=w.device, dtype=w.dtype)


@dataclasses.dataclass(frozen=True)
class KMeansQuantize(MethodConfig):
    """Deep Compression weight sharing: per layer, ``2**bits`` shared values found by k-means, then fine-tuned.

    Args:
        bits: bits per weight index, 1..8 (``2**bits`` centroids per layer; zeros are kept apart); one number or
            ``{layer pattern: bits}``.
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight and every other weight
            of >= 2 dims (LSTM/GRU matrices, attention projections, a user layer's ``weight``).
        exclude: patterns of layers left alone.
        init: centroid init: ``"linear"`` (the paper's best), ``"density"`` or ``"random"``.
        finetune: fine-tuning of the codebooks (assignments fixed); ``None`` = cluster only. The paper's update sums
            the gradients of a cluster's weights, so with plain SGD the step grows with the cluster size: a 2-bit
            LeNet-5 (~10^5 weights per centroid in fc1) diverges at SGD lr 0.01 within a few steps (a one-line error
            that says so); Adam is unaffected by the scale. So a ``FineTune`` that sets neither ``optimizer`` nor
            ``lr`` trains the codebooks with Adam at lr 1e-4 (not the general rule of following the model's own
            training optimizer).
        iterations: at most this many Lloyd iterations per layer.
        seed: random seed for ``init="random"``.
    """

    method = "kmeans-quantize"
    description = "Deep Compression k-means weight sharing with codebook fine-tuning"
    kinds = WEIGHT_LAYERS
    any_weight = True
    example = {"bits": 2, "finetune": {"epochs": 1}}

    bits: PerLayer[Annotated[int, Range(1, 8, note="bits per weight index")]] = 4
    layers: Patterns = None
    exclude: Patterns = None
    init: Init = "linear"
    finetune: FineTune | None = FineTune()
    iterations: PositiveInt = 100
    seed: Seed = 0


@register_method(KMeansQuantize)
def kmeans_quantize(model: nn.Module, config: KMeansQuantize, data: Any, target: Target) -> nn.Module:
    """Share weights in ``model`` in place as ``config`` says and return it (plain layers)."""
    layers = target.layers
    if config.finetune is not None:
        require_data(data, config.method)
    clusters = {}
    for name, module in layers.items():
        bits = target.value("bits", name)
        found = cluster_weight(module.weight, bits, config.init, config.iterations, config.seed)
        if found is None:  # an all-zero weight: every index 0, so it stays zero through fine-tuning too
            w = module.weight
            found = torch.zeros(w.shape, dtype=torch.int64, device=w.device), w.new_zeros(2**bits)
        clusters[name] = found
    if config.finetune is None:
        with torch.no_grad():
            for name, (index, codebook) in clusters.items():
                layers[name].weight.copy_(torch.cat([codebook.new_zeros(1), codebook])[index])
        return model
    ft = config.finetune
    if ft.optimizer is None and ft.lr is None:  # summed cluster gradients: a scale-free optimizer by default
        ft = dataclasses.replace(ft, optimizer="adam", lr=1e-4)
    try:
        for name, (index, codebook) in clusters.items():
            share_weights(layers[name], index, codebook)
        run_finetune(model, data, ft, config.method)
    except TrainingDiverged as err:
        big = max(int((index > 0).sum()) // max(codebook.numel(), 1) for index, codebook in clusters.values())
        raise TrainingDiverged(f"{err}: a centroid's gradient is the sum over its cluster (Deep Compression; here "
                               f"up to ~{big:,} weights per centroid), so SGD needs a far smaller lr than training "
                               "did; use optimizer='adam' (scale-free) or divide lr by the cluster size") from None
    finally:
        for name in clusters:
            strip_parametrizations(layers[name], "weight")
    return model


__all__ = ["KMeansQuantize", "kmeans_1d", "inertia", "cluster_weight", "share_weights", "codebook_of", "SharedWeight"]
