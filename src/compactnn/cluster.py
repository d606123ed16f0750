"""One-dimensional clustering shared by every method that builds a codebook (Deep Compression's k-means, the LC
algorithm's adaptive codebooks, ...): Lloyd's k-means with one rule for empty clusters (moved onto the values
farthest from their centres, as scikit-learn does), and the exact optimum by dynamic programming.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError


def _assign(sorted_values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid of each value; ``centroids`` sorted. Boundaries are the midpoints (ties go to the lower)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2.0
    return np.searchsorted(midpoints, sorted_values, side="left").astype(np.int64)


def _initial_centroids(sorted_values: np.ndarray, k: int, init: Any, seed: int) -> np.ndarray:
    if not isinstance(init, str):  # given centres (a warm start)
        c = np.sort(np.asarray(init, dtype=np.float64).reshape(-1))
        if c.size != k or not np.all(np.isfinite(c)):
            raise ConfigError(f"init centres: need {k} finite values, got {c.size}")
        return c
    lo, hi = sorted_values[0], sorted_values[-1]
    if init == "linear":  # evenly spaced over [min, max]: the paper's best, it keeps the rare large weights
        return np.linspace(lo, hi, k)
    if init == "density":  # evenly spaced on the CDF's y axis: the quantiles
        return np.quantile(sorted_values, (np.arange(k) + 0.5) / k)
    if init == "random":  # Forgy: k distinct values of the data
        rng = np.random.default_rng(seed)
        return np.sort(rng.choice(np.unique(sorted_values), size=k, replace=False))
    raise ConfigError(f"unknown k-means init {init!r}; use 'linear', 'density', 'random' or an array of centres")


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
    values: Any, k: int, init: Any = "linear", iterations: int = 100, seed: int = 0
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
            data values, seeded), or k starting centres (a warm start, e.g. the previous solution's).
        iterations: at most this many Lloyd iterations; it stops earlier at the fixed point (no centroid moves).
        seed: random seed for ``init="random"``.

    At the fixed point each centroid is the mean of its members and each value's label is its nearest centroid.
    With ``k`` at least the number of distinct values, the centroids are those values (padded with the largest).
    A cluster left empty is moved onto the value farthest from its centroid (as sklearn does), so all ``k``
    codes get used.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ConfigError("kmeans_1d needs at least one value")
    if k < 1:
        raise ConfigError(f"kmeans_1d needs k >= 1, got {k}")
    order = np.argsort(x, kind="stable")
    xs = x[order]
    distinct = np.unique(xs)
    if distinct.size <= k and isinstance(init, str):
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


def optimal_kmeans_1d(values: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Globally optimal 1-D k-means (Wu & Rokne 1989; Wang & Song's Ckmeans.1d.dp 2011) by dynamic programming.

    In 1-D an optimal clustering is contiguous in the sorted values. With ``D[m][b]`` the least cost of splitting the
    ``b`` smallest values into ``m`` clusters, ``D[m][b] = min_a D[m−1][a] + SSE(a, b)`` (SSE from prefix sums in
    O(1)). The best split point is monotone in ``b``, so each layer is filled by divide and conquer: O(K·n log n)
    time (numpy, one vectorized pass per recursion depth, float64), O(K·n) memory; meant for modest K.

    Args:
        values: the data (any array-like, flattened), n ≥ k.
        k: number of clusters K ≥ 1.

    Returns:
        ``(centers (K,) float64 ascending, labels (n,) int64)``. Centres are the cluster means; with fewer than K
        distinct values some centres repeat.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not 1 <= k <= max(n, 1) or n == 0:
        raise ConfigError(f"optimal_kmeans_1d needs 1 <= k <= n (n={n} values), got k={k!r}")
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
    return centers, z


__all__ = ["kmeans_1d", "optimal_kmeans_1d", "inertia"]
