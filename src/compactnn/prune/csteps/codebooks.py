"""Quantization C steps: nearest codeword, adaptive (k-means and exact 1-D DP) and fixed codebooks, binary and ternary."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ...cluster import kmeans_1d, optimal_kmeans_1d
from ...errors import ConfigError
from ._checks import _count, _float


def assign_to_codebook(w: Tensor, codebook: Tensor) -> Tensor:
    """Index (int64, shape of ``w``) of the nearest codeword for every weight, by binary search (O(n log K)).

    Args:
        w: weights (any shape).
        codebook: 1-D tensor of K ≥ 1 codewords, any order.

    Ties: a weight exactly half-way between two codewords goes to the smaller codeword; equal codewords resolve to
    the first listed. (With an ascending codebook this is exactly ``argmin_k |w − c_k|`` taking the first minimum.)
    """
    _float(w)
    c = _float(torch.as_tensor(codebook), "codebook").reshape(-1).to(device=w.device, dtype=w.dtype)
    if c.numel() == 0:
        raise ConfigError("codebook is empty; pass at least one codeword")
    sc, perm = torch.sort(c, stable=True)
    x = w.reshape(-1)
    hi = torch.searchsorted(sc, x).clamp(max=c.numel() - 1)
    lo = (hi - 1).clamp(min=0)
    pick = torch.where((x - sc.index_select(0, lo)).abs() <= (sc.index_select(0, hi) - x).abs(), lo, hi)
    first = torch.searchsorted(sc, sc)  # first of a run of equal codewords
    return perm.index_select(0, first).index_select(0, pick).reshape(w.shape)


def fixed_codebook(w: Tensor, codebook: Tensor) -> Tensor:
    """Quantization to a fixed codebook: ``θ_i = argmin_{c ∈ codebook} |w_i − c|`` (ties: see
    :func:`assign_to_codebook`). E.g. the unscaled ternary codebook is ``fixed_codebook(w, [-1., 0., 1.])``.

    Args:
        w: weights (any shape).
        codebook: 1-D tensor (or list) of codewords.
    """
    c = torch.as_tensor(codebook, dtype=w.dtype, device=w.device).reshape(-1)
    return c[assign_to_codebook(w, c)]


def _check_k(k: int, n: int) -> int:
    k = _count(k, "k", low=1)
    if k > n:
        raise ConfigError(f"codebook size k={k} exceeds the number of weights n={n}; use k <= n")
    return k


def adaptive_codebook(w: Tensor, k: int, init_centers: Tensor | None = None,
                      iterations: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive K-codebook C step: 1-D k-means (:func:`compactnn.cluster.kmeans_1d`), warm-started from the
    previous centres.

    Solves (locally) ``min_{C, Z} Σ_i (w_i − c_{z_i})²`` by Lloyd's rounds (nearest centre, ties to the smaller;
    centre = mean of its weights; an empty cluster moves onto the weight farthest from its centre) until the centres
    stop moving or after ``iterations`` rounds. Warm-started from the previous C step's centres the cost never
    exceeds that of the previous codebook. For the exact optimum use :func:`optimal_codebook_1d`.

    Args:
        w: weights (any shape), n ≥ k.
        k: codebook size K ≥ 1.
        init_centers: K starting centres (e.g. the previous C step's); ``None`` = the (2i+1)/(2K) quantiles of w.
        iterations: maximum Lloyd rounds (≥ 1).

    Returns:
        ``(centers (K,), assignments (int64, shape of w), θ = centers[assignments])``; centre order is that of
        ``init_centers`` (ascending for the default start).
    """
    _float(w)
    x = w.detach().reshape(-1)
    k = _check_k(k, x.numel())
    iterations = _count(iterations, "iterations", low=1)
    if init_centers is None:
        idx = (2 * torch.arange(k, device=x.device) + 1) * x.numel() // (2 * k)
        start = torch.sort(x).values.index_select(0, idx)
    else:
        start = _float(torch.as_tensor(init_centers), "init_centers").reshape(-1)
        if start.numel() != k:
            raise ConfigError(f"init_centers has {start.numel()} values but k={k}; pass exactly k centres")
    start = start.detach().cpu().double().numpy()
    centers, labels = kmeans_1d(x.cpu().double().numpy(), k, init=start, iterations=iterations)
    perm = np.argsort(start, kind="stable")  # sorted position j belongs to the init centre perm[j]
    c = np.empty(k)
    c[perm] = centers
    z = torch.as_tensor(perm[labels], device=w.device).reshape(w.shape)
    ct = torch.as_tensor(c, dtype=w.dtype, device=w.device)
    return ct, z, ct.index_select(0, z.reshape(-1)).reshape(w.shape)


def optimal_codebook_1d(w: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Globally optimal K-codebook of ``w`` (:func:`compactnn.cluster.optimal_kmeans_1d`, Wu & Rokne's dynamic
    program): ``(centers (K,) ascending, assignments (int64, shape of w), θ = centers[assignments])``."""
    _float(w)
    k = _check_k(k, w.numel())
    centers, labels = optimal_kmeans_1d(w.detach().reshape(-1).cpu().double().numpy(), k)
    c = torch.as_tensor(centers, dtype=w.dtype, device=w.device)
    z = torch.as_tensor(labels, device=w.device).reshape(w.shape)
    return c, z, c.index_select(0, z.reshape(-1)).reshape(w.shape)


def binary(w: Tensor) -> Tensor:
    """Codebook {−1, +1}: ``θ = sign(w)`` with ``sign(0) = +1`` (both codewords are equally near 0; we pick +1).

    Args:
        w: weights (any shape).
    """
    _float(w)
    return torch.where(w >= 0, torch.ones_like(w), -torch.ones_like(w))


def scaled_binary(w: Tensor) -> Tensor:
    """Codebook {−a, +a} with a ≥ 0 free: ``θ = a·sign(w)`` (``sign(0) = +1``) with ``a = mean|w|``.

    For a fixed a the best code is sign(w); then ``‖w − a·s‖² = ‖w‖² − 2aΣ|w| + n·a²`` is least at ``a = mean|w|``.

    Args:
        w: weights (any shape). The scale is ``a = θ.abs().max()``.
    """
    _float(w)
    return binary(w) * w.abs().mean()


def ternary(w: Tensor) -> Tensor:
    """Scaled ternary codebook {−a, 0, +a}, a ≥ 0 free: the exact minimizer of ``‖w − θ‖²``.

    With ``|w|`` sorted descending, ``j* = argmax_j (Σ_{i≤j} |w|_(i))/√j`` and ``a = mean of the top j*``; then
    ``θ = a·sign(w)`` where ``|w| > a/2``, else 0 (at exactly a/2 both are optimal; we give 0).
    Why exact: for a support S of size j with matched signs the best a is ``mean_S |w|`` and the cost is
    ``‖w‖² − (Σ_S |w|)²/j``, which for fixed j is least when S is the top j; hence (j*, a) is optimal. For that a
    the per-element best code is the ``a/2`` threshold, whose cost is ≤ that of the top-j* support, so it is
    optimal too. ``argmax`` takes the smallest j among ties.

    Args:
        w: weights (any shape). The scale is ``a = θ.abs().max()``.
    """
    _float(w)
    a_sorted = torch.sort(w.reshape(-1).abs(), descending=True).values
    if a_sorted.numel() == 0:
        return w.clone()
    css = torch.cumsum(a_sorted, 0)
    j = torch.arange(1, css.numel() + 1, dtype=w.dtype, device=w.device)
    jstar = int(torch.argmax(css / torch.sqrt(j)))
    a = css[jstar] / (jstar + 1)
    return torch.where(w.abs() > a / 2, a * torch.sign(w), torch.zeros_like(w))


scaled_ternary = ternary  # the LC toolkit calls it "scaled ternary"; a is free in both names


def codebook_bits(n: int, k: int) -> int:
    """Storage in bits of n weights coded with a K-codebook: ``n·⌈log₂K⌉ + 32·K`` (float32 codewords; K = 1 costs
    no index bits).

    Args:
        n: number of weights (≥ 0).
        k: codebook size K (≥ 1).
    """
    n, k = _count(n, "n"), _count(k, "k", low=1)
    return n * (k - 1).bit_length() + 32 * k
