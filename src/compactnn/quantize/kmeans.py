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
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from ..api import register_method
from ..config import FineTune, MethodConfig, check
from ..layers import require_data, run_finetune, select_layers, strip_parametrizations

Init = Literal["linear", "density", "random"]


def _assign(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each value; ``centroids`` sorted. Boundaries are the midpoints (ties go to the lower)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, sorted_values, side="left").astype(np.int64)


def _initial_centroids(sorted_values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    lo, hi = sorted_values[0], sorted_values[-1]
    if init == "linear":  # evenly spaced over [min, max]: the paper's best, it keeps the rare large weights
        return np.linspace(lo, hi, k)
    if init == "density":  # evenly spaced on the CDF's y axis: the quantiles
        return np.quantile(sorted_values, (np.arange(k) + 0.5) / k)
    if init == "random":  # Forgy: k distinct values of the data
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(np.unique(sorted_values), size=k, replace=False))
    raise ValueError(f"unknown k-means init {init!r}; use 'linear', 'density' or 'random'")


def _relocate_empty(xs: np.ndarray, centroids: np.ndarray, labels: np.ndarray, counts: np.ndarray,
                    sums: np.ndarray) -> None:
    """Move each empty cluster onto one of the values farthest from their centroids, as sklearn's Lloyd does.

    Linear init over heavy-tailed weights leaves clusters empty in the tails; relocating them puts every code to
    use (lower inertia) instead of wasting it. Updates ``counts`` and ``sums`` in place.
    """
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return
    distance = (xs - centroids[labels]) ** 2
    farthest = np.argsort(-distance, kind="stable")[: empty.size]
    for cluster, i in zip(empty, farthest):
        old = labels[i]
        sums[old] -= xs[i]
        counts[old] -= 1
        sums[cluster] = xs[i]
        counts[cluster] = 1


def kmeans_1d(
    values: Any, k: int, init: Init = "linear", iterations: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Exact Lloyd's algorithm on 1-D data; returns ``(centroids (k,) float64 sorted, labels (n,) int64)``.

    In 1-D the nearest centroid is found from the sorted centroids' midpoints with ``searchsorted``, and the
    centroid update is a ``bincount``: O(n) per iteration, all vectorized. We do not use sklearn's ``KMeans``:
    it is built for many dimensions, and its inits are k-means++/random; Han et al.'s linear and density
    inits are what matter here. The tests check that both reach the same inertia from the same start.

    Args:
        values: the data, any array-like (flattened); at least one value.
        k: number of clusters (centroids), >= 1.
        init: ``"linear"`` (evenly spaced over [min, max]), ``"density"`` (quantiles), ``"random"`` (k distinct
            data values, seeded).
        iterations: at most this many Lloyd iterations; it stops earlier at the fixed point (no centroid moves).
        seed: random seed for ``init="random"``.

    At the fixed point each centroid is the mean of its members and each value's label is its nearest centroid.
    With ``k`` at least the number of distinct values, the centroids are those values (padded with the largest).
    A cluster left empty is moved onto the value farthest from its centroid (as sklearn does), so all ``k``
    codes get used.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError("kmeans_1d needs at least one value")
    if k < 1:
        raise ValueError(f"kmeans_1d needs k >= 1, got {k}")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    distinct = np.unique(xs)
    if distinct.size <= k:
        centroids = np.concatenate([distinct, np.full(k - distinct.size, distinct[-1])])
    else:
        centroids = _initial_centroids(xs, k, init, seed)
        for _ in range(iterations):
            labels = _assign(xs, centroids)
            counts = np.bincount(labels, minlength=k)
            sums = np.bincount(labels, weights=xs, minlength=k)
            _relocate_empty(xs, centroids, labels, counts, sums)
            updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
            updated.sort()  # relocation breaks the order that 1-D Lloyd otherwise keeps
            if np.array_equal(updated, centroids):
                break
            centroids = updated
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = _assign(xs, centroids)
    return centroids, labels


def inertia(values: Any, centroids: np.ndarray, labels: np.ndarray) -> float:
    """Sum of squared distances of ``values`` to their assigned centroids."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return float(((x - np.asarray(centroids)[labels]) ** 2).sum())


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
    parametrize.register_parametrization(module, "weight", SharedWeight(index, codebook), unsafe=True)


def codebook_of(module: nn.Module) -> nn.Parameter:
    """The trainable codebook of a module parametrized by :func:`share_weights`."""
    return module.parametrizations.weight.original


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
        bits: bits per weight index, 1..8 (``2**bits`` centroids per layer; zeros are kept apart).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight.
        init: centroid init: ``"linear"`` (the paper's best), ``"density"`` or ``"random"``.
        finetune: fine-tuning of the codebooks (assignments fixed); ``None`` = cluster only. ``lr`` defaults to 0.01.
        iterations: at most this many Lloyd iterations per layer.
        seed: random seed for ``init="random"``.
    """

    method = "kmeans-quantize"
    description = "Deep Compression k-means weight sharing with codebook fine-tuning"

    bits: int = 4
    layers: tuple[str, ...] | None = None
    init: Init = "linear"
    finetune: FineTune | None = FineTune()
    iterations: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        check(
            isinstance(self.bits, int) and not isinstance(self.bits, bool) and 1 <= self.bits <= 8,
            f"kmeans-quantize: bits must be an integer in 1..8, got {self.bits!r}",
        )
        check(
            self.init in ("linear", "density", "random"),
            f"kmeans-quantize: init must be 'linear', 'density' or 'random', got {self.init!r}",
        )
        check(
            self.layers is None or (len(self.layers) > 0 and all(isinstance(p, str) for p in self.layers)),
            f"kmeans-quantize: layers must be a non-empty list of name patterns or null, got {self.layers!r}",
        )
        check(
            isinstance(self.iterations, int) and self.iterations >= 1,
            f"kmeans-quantize: iterations must be a positive integer, got {self.iterations!r}",
        )


@register_method(KMeansQuantize)
def kmeans_quantize(model: nn.Module, config: KMeansQuantize, data: Any = None) -> nn.Module:
    """Share weights in ``model`` in place as ``config`` says and return it (plain layers)."""
    layers = select_layers(model, config.layers, what="quantizable")
    if config.finetune is not None:
        require_data(data, config.method)
    clusters = {}
    for name, module in layers.items():
        found = cluster_weight(module.weight, config.bits, config.init, config.iterations, config.seed)
        if found is None:  # an all-zero weight: every index 0, so it stays zero through fine-tuning too
            w = module.weight
            found = torch.zeros(w.shape, dtype=torch.int64, device=w.device), w.new_zeros(2**config.bits)
        clusters[name] = found
    if config.finetune is None:
        with torch.no_grad():
            for name, (index, codebook) in clusters.items():
                layers[name].weight.copy_(torch.cat([codebook.new_zeros(1), codebook])[index])
        return model
    try:
        for name, (index, codebook) in clusters.items():
            share_weights(layers[name], index, codebook)
        run_finetune(model, data, config.finetune, config.method)
    finally:
        for name in clusters:
            strip_parametrizations(layers[name], "weight")
    return model


__all__ = ["KMeansQuantize", "kmeans_1d", "inertia", "cluster_weight", "share_weights", "codebook_of", "SharedWeight"]
