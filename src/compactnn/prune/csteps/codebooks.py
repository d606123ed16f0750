"""Quantization C steps: nearest codeword, adaptive (k-means and exact 1-D DP) and fixed codebooks, binary and ternary."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

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


def _lloyd_sorted(x: Tensor, c: Tensor, iterations: int) -> tuple[Tensor, int]:
    """Fast 1-D Lloyd rounds: clusters are runs of the sorted weights cut at centre midpoints, means come from
    float64 prefix sums, so a round costs O(K log n). Returns the centres and the number of rounds used."""
    xs = torch.sort(x).values
    csum = torch.cat([xs.new_zeros(1, dtype=torch.float64), torch.cumsum(xs.double(), 0)])
    last = None
    for used in range(1, iterations + 1):
        sc, perm = torch.sort(c, stable=True)
        cut = torch.searchsorted(xs, (sc[:-1] + sc[1:]) / 2, right=True)
        bounds = torch.cat([cut.new_zeros(1), cut, cut.new_full((1,), xs.numel())])
        if last is not None and torch.equal(bounds, last):
            return c, used - 1
        cnt = (bounds[1:] - bounds[:-1]).double()
        mean = ((csum[bounds[1:]] - csum[bounds[:-1]]) / cnt.clamp(min=1)).to(c.dtype)
        c = c.clone()
        c[perm] = torch.where(cnt > 0, mean, sc)
        last = bounds
    return c, iterations


def adaptive_codebook(w: Tensor, k: int, init_centers: Tensor | None = None,
                      iterations: int = 100) -> tuple[Tensor, Tensor, Tensor]:
    """Adaptive K-codebook C step: 1-D k-means (Lloyd), warm-started from the previous centres.

    Solves (locally) ``min_{C, Z} Σ_i (w_i − c_{z_i})²``. Lloyd alternates nearest-centre assignment (ties as in
    :func:`assign_to_codebook`) and centre = mean of its weights; it stops when the assignment stops changing (then
    ``(centers, assignments)`` is a Lloyd fixed point) or after ``iterations`` rounds. An empty cluster keeps its
    centre. Most rounds run on the sorted weights with prefix sums (O(K log n) each); the last ones use the exact
    nearest-centre rule. Warm-started from the previous C step's centres, the cost never exceeds that of the
    previous codebook. For the exact optimum use :func:`optimal_codebook_1d`.

    Args:
        w: weights (any shape), n ≥ k.
        k: codebook size K ≥ 1.
        init_centers: K starting centres (e.g. the previous C step's); ``None`` = the (2i+1)/(2K) quantiles of w
            (with many equal weights these may coincide and stay so; then start from :func:`optimal_codebook_1d`).
        iterations: maximum Lloyd rounds (≥ 1).

    Returns:
        ``(centers (K,), assignments (int64, shape of w), θ = centers[assignments])``; centre order is that of
        ``init_centers`` (ascending for the default start).
    """
    _float(w)
    x = w.reshape(-1)
    k = _check_k(k, x.numel())
    iterations = _count(iterations, "iterations", low=1)
    if init_centers is None:
        idx = (2 * torch.arange(k, device=x.device) + 1) * x.numel() // (2 * k)
        c = torch.sort(x).values.index_select(0, idx)
    else:
        c = _float(torch.as_tensor(init_centers), "init_centers").reshape(-1).to(device=x.device, dtype=x.dtype)
        if c.numel() != k:
            raise ConfigError(f"init_centers has {c.numel()} values but k={k}; pass exactly k centres")
        c = c.clone()
    c, used = _lloyd_sorted(x, c, iterations)
    z = assign_to_codebook(x, c)
    for _ in range(max(1, iterations - used)):  # exact rounds: ties and equal centres as documented
        cnt = torch.bincount(z, minlength=k)
        sums = torch.zeros(k, dtype=x.dtype, device=x.device).index_add_(0, z, x)
        c = torch.where(cnt > 0, sums / cnt.clamp(min=1).to(x.dtype), c)
        z_new = assign_to_codebook(x, c)
        done = torch.equal(z_new, z)
        z = z_new
        if done:
            break
    return c, z.reshape(w.shape), c.index_select(0, z).reshape(w.shape)


def optimal_codebook_1d(w: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Globally optimal 1-D k-means (Wu & Rokne 1989; Wang & Song's Ckmeans.1d.dp 2011) by dynamic programming.

    In 1-D an optimal clustering is contiguous in the sorted values. With ``D[m][b]`` the least cost of splitting the
    ``b`` smallest values into ``m`` clusters, ``D[m][b] = min_a D[m−1][a] + SSE(a, b)`` (SSE from prefix sums in
    O(1)). The best split point is monotone in ``b``, so each layer is filled by divide and conquer: O(K·n log n)
    time (numpy, one vectorized pass per recursion depth, float64), O(K·n) memory; meant for modest K.

    Args:
        w: weights (any shape), n ≥ k.
        k: codebook size K ≥ 1.

    Returns:
        ``(centers (K,) ascending, assignments (int64, shape of w), θ = centers[assignments])``. Centres are the
        cluster means; with fewer than K distinct values some centres repeat.
    """
    _float(w)
    x = w.detach().reshape(-1).cpu().double().numpy()
    n = x.size
    k = _check_k(k, n)
    order = np.argsort(x, kind="stable")
    s = x[order] - x.mean()  # centring improves the prefix-sum variance formula
    p1 = np.concatenate([[0.0], np.cumsum(s)])
    p2 = np.concatenate([[0.0], np.cumsum(s * s)])

    def sse(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # cost of the clusters s[a:b]
        return np.maximum(p2[b] - p2[a] - (p1[b] - p1[a]) ** 2 / (b - a), 0.0)

    prev = np.full(n + 1, np.inf)  # D[1][b]: one cluster holding the b smallest values
    prev[1:] = sse(np.zeros(n, dtype=np.int64), np.arange(1, n + 1))
    splits = np.zeros((k, n + 1), dtype=np.int64)
    for m in range(1, k):
        cur = np.full(n + 1, np.inf)
        # nodes: fill b in [lo, hi] knowing the best a lies in [alo, ahi]; one vectorized pass per recursion depth
        lo, hi, alo, ahi = (np.array([v], dtype=np.int64) for v in (m + 1, n, m, n - 1))
        while lo.size:
            b = (lo + hi) // 2
            length = np.minimum(ahi, b - 1) - alo + 1
            offsets = np.concatenate([[0], np.cumsum(length)[:-1]])
            pos = np.arange(int(length.sum()))
            a = np.repeat(alo - offsets, length) + pos
            vals = prev[a] + sse(a, np.repeat(b, length))
            best = np.minimum.reduceat(vals, offsets)
            first = np.minimum.reduceat(np.where(vals == np.repeat(best, length), pos, pos.size), offsets)
            abest = a[first]
            cur[b], splits[m, b] = best, abest
            lo, hi = np.concatenate([lo, b + 1]), np.concatenate([b - 1, hi])
            alo, ahi = np.concatenate([alo, abest]), np.concatenate([abest, ahi])
            keep = lo <= hi
            lo, hi, alo, ahi = lo[keep], hi[keep], alo[keep], ahi[keep]
        prev = cur
    bounds = [n]
    for m in range(k - 1, 0, -1):
        bounds.append(int(splits[m, bounds[-1]]))
    bounds.append(0)
    bounds.reverse()  # cluster m is sorted positions bounds[m]:bounds[m+1]
    xs = x[order]
    centers = np.array([xs[bounds[m]:bounds[m + 1]].mean() for m in range(k)])
    z_sorted = np.repeat(np.arange(k), np.diff(bounds))
    z = np.empty(n, dtype=np.int64)
    z[order] = z_sorted
    c = torch.as_tensor(centers, dtype=w.dtype, device=w.device)
    zt = torch.as_tensor(z, device=w.device).reshape(w.shape)
    return c, zt, c.index_select(0, zt.reshape(-1)).reshape(w.shape)


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
