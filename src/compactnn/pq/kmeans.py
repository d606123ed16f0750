"""Batched k-means for product quantization: one Lloyd run per subspace, all subspaces at once.

Product quantization clusters ``g`` groups of sub-vectors (one group per subspace) independently. Here the groups are
one ``(g, n, d)`` float32 tensor and every step is batched over them: the assignment is a batched matrix product
``|c|^2 - 2 x.c`` (``torch.baddbmm``) taken over row chunks so the ``(g, rows, k)`` distance block stays under
``chunk_bytes``; the update is one ``index_add_`` over all groups. (The 1-D k-means of Deep Compression lives in
:mod:`compactnn.cluster`; this is its many-dimensional, batched counterpart.)

Choices:

- init ``"k-means++"`` (Arthur & Vassilvitskii, 2007) runs on a seeded subsample of at most ``64 k`` points per group
  (the sequential seeding is memory-bound; on the full set it costs as much as many Lloyd steps, and the Lloyd
  steps that follow use all points); ``"random"`` picks ``k`` distinct points (Forgy, faiss's default).
- an empty cluster is moved onto the point farthest from its centroid in that group (as scikit-learn and
  :mod:`compactnn.cluster` do), so every code is used.
- Lloyd stops after ``iterations`` steps or at a fixed point (no label changes).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import ConfigError

#: Default memory bound (bytes) of one ``(groups, rows, k)`` float32 distance block. Small enough for the block to
#: stay in cache between the product and the ``min`` that reads it: 4 MiB assigned 16 x 60,000 8-d sub-vectors to
#: 256 centroids in 0.20 s on 2 threads here, against 0.62 s at 64 MiB and 0.33 s at 256 KiB
#: (``benchmarks/pq.py`` times whole trainings).
CHUNK_BYTES = 1 << 22


def _rows_per_chunk(groups: int, k: int, chunk_bytes: int) -> int:
    return max(1, int(chunk_bytes // (4 * max(1, groups) * max(1, k))))


def native_kernels():
    """The native kernel library (its float PQ kernels: ``assign.c``, ``adc.c``), or None (``COMPACTNN_NATIVE=off``,
    no compiler)."""
    from ..quantize.intonly import native

    return native.load()


def _assign_native(lib, x: Tensor, c: Tensor) -> tuple[Tensor, Tensor] | None:
    """The fused C search (``assign.c``), or None when it does not apply."""
    g, n, d = x.shape
    k = c.shape[1]
    kp = -(-k // 16) * 16
    ct = torch.zeros(g, d, kp, dtype=torch.float32)
    ct[:, :, :k] = c.transpose(1, 2)
    cn = torch.full((g, kp), float("inf"), dtype=torch.float32)
    cn[:, :k] = (c * c).sum(-1)
    x = x.contiguous()
    labels = torch.empty(g, n, dtype=torch.int64)
    dist = torch.empty(g, n, dtype=torch.float32)
    ptr = [t.data_ptr() for t in (x, ct, cn)]
    if lib.cnn_l2_argmin(*ptr, g, n, d, k, kp, labels.data_ptr(), dist.data_ptr(), torch.get_num_threads()):
        return None
    return labels, dist


def assign(x: Tensor, centroids: Tensor, chunk_bytes: int = CHUNK_BYTES, native: bool | None = None
           ) -> tuple[Tensor, Tensor]:
    """Nearest centroid of every sub-vector, per group.

    Args:
        x: ``(g, n, d)`` sub-vectors (float32).
        centroids: ``(g, k, d)``.
        chunk_bytes: bound on the bytes of one ``(g, rows, k)`` distance block (torch path).
        native: use the fused C search of the native kernels (``COMPACTNN_NATIVE``; a few times faster than torch
            here); None: when they load, False: torch only.

    Returns:
        ``(labels (g, n) int64, squared distances (g, n) float32)``; ties go to the lower centroid index (both paths;
        their float sums may round differently, so a near-tie can resolve the other way).
    """
    g, n, _ = x.shape
    k = centroids.shape[1]
    c = centroids.to(torch.float32).contiguous()
    lib = native_kernels() if native is not False else None
    if native and lib is None:
        raise ConfigError("the native kernels are not available (compactnn.quantize.intonly.native.status() says "
                          "why); use native=None or False")
    if lib is not None and x.dtype == torch.float32:
        out = _assign_native(lib, x, c)
        if out is not None:
            return out
    cn = (c * c).sum(-1).unsqueeze(1)  # (g, 1, k)
    labels = torch.empty(g, n, dtype=torch.int64)
    dist = torch.empty(g, n, dtype=torch.float32)
    step = _rows_per_chunk(g, k, chunk_bytes)
    ct = c.transpose(1, 2)
    for s in range(0, n, step):
        xs = x[:, s:s + step]
        d = torch.baddbmm(cn, xs, ct, alpha=-2.0)  # |c|^2 - 2 x.c, (g, rows, k)
        best, idx = d.min(dim=2)
        labels[:, s:s + step] = idx
        dist[:, s:s + step] = (best + (xs * xs).sum(-1)).clamp_min_(0.0)
    return labels, dist


def _kmeanspp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    g, n, d = x.shape
    size = min(n, 64 * k)
    if size < n:
        x = x[:, torch.randperm(n, generator=gen)[:size]]
    rows = torch.arange(g)
    first = torch.randint(size, (g,), generator=gen)
    centroids = torch.empty(g, k, d, dtype=torch.float32)
    centroids[:, 0] = x[rows, first]
    best = ((x - centroids[:, :1]) ** 2).sum(-1)  # (g, size)
    ones = torch.arange(1, size + 1, dtype=torch.float64)
    xx = (x * x).sum(-1, keepdim=True)  # (g, size, 1)
    cum = torch.empty(g, size, dtype=torch.float64)
    for j in range(1, k):
        # D^2 sampling by inverting the cumulative weights (torch.multinomial took 7 ms a call here)
        torch.cumsum(best.clamp_min(0.0), 1, dtype=torch.float64, out=cum)
        if not bool((cum[:, -1] > 0).all()):  # all points of a group on centres: any point will do
            cum = torch.where(cum[:, -1:] > 0, cum, ones)
        u = torch.rand(g, 1, generator=gen, dtype=torch.float64) * cum[:, -1:]
        pick = torch.searchsorted(cum, u, right=True).squeeze(1).clamp_max_(size - 1)
        c = x[rows, pick].unsqueeze(-1)  # (g, d, 1)
        centroids[:, j] = c[..., 0]
        # |x - c|^2 = |x|^2 + |c|^2 - 2 x.c, one batched product (the clamp above absorbs rounding below 0)
        near = torch.bmm(x, c).mul_(-2.0).add_(xx).add_((c * c).sum(1, keepdim=True))  # 2x faster than baddbmm here
        torch.minimum(best, near.squeeze(-1), out=best)
    return centroids


def _initial(x: Tensor, k: int, init: Any, gen: torch.Generator) -> Tensor:
    g, n, d = x.shape
    if isinstance(init, Tensor):
        if tuple(init.shape) != (g, k, d):
            raise ConfigError(f"k-means warm start: need centroids of shape {(g, k, d)}, got {tuple(init.shape)}")
        return init.to(torch.float32).clone()
    if init == "k-means++":
        return _kmeanspp(x, k, gen)
    if init == "random":
        idx = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(g)])
        return torch.gather(x, 1, idx.unsqueeze(-1).expand(g, k, d)).clone()
    raise ConfigError(f"unknown k-means init {init!r}; use 'k-means++', 'random' or a (groups, k, dim) tensor")


def update(x: Tensor, labels: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per-group cluster sums ``(g, k, d)`` (float64) and counts ``(g, k)`` of ``x`` under ``labels``."""
    g, n, d = x.shape
    flat = (labels + torch.arange(g).unsqueeze(1) * k).reshape(-1)
    sums = torch.zeros(g * k, d, dtype=torch.float64).index_add_(0, flat, x.reshape(g * n, d).double())
    counts = torch.bincount(flat, minlength=g * k)
    return sums.reshape(g, k, d), counts.reshape(g, k)


def kmeans(x: Tensor, k: int, iterations: int = 25, seed: int = 0, init: Any = "k-means++",
           chunk_bytes: int = CHUNK_BYTES, progress: Callable[[int], None] | None = None
           ) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's k-means run on ``g`` groups of points at once.

    Args:
        x: ``(g, n, d)`` or ``(n, d)`` points (converted to float32); needs ``n >= k``.
        k: clusters per group.
        iterations: at most this many Lloyd steps (0 = the init only, with its assignment).
        seed: seeds the init.
        init: ``"k-means++"``, ``"random"`` or a ``(g, k, d)`` tensor of starting centroids (a warm start).
        chunk_bytes: memory bound of one distance block (see :func:`assign`).
        progress: called with 1 after every Lloyd step (e.g. a tqdm ``update``).

    Returns:
        ``(centroids (g, k, d) float32, labels (g, n) int64, inertia (g,) float64)`` (no group axis when ``x`` was
        2-D). At a fixed point each centroid is the mean of its members and each label the nearest centroid.
    """
    flat = x.dim() == 2
    x = (x.unsqueeze(0) if flat else x).to(torch.float32).contiguous()
    g, n, d = x.shape
    if n < k:
        raise ConfigError(f"k-means needs at least k={k} points, got {n}; use fewer centroids (bits) or more data")
    gen = torch.Generator().manual_seed(int(seed))
    centroids = _initial(x, k, init, gen)
    labels, dist = assign(x, centroids, chunk_bytes)
    for _ in range(iterations):
        sums, counts = update(x, labels, k)
        means = (sums / counts.clamp_min(1).unsqueeze(-1)).to(torch.float32)
        centroids = torch.where((counts > 0).unsqueeze(-1), means, centroids)
        for gi in torch.nonzero((counts == 0).any(1)).reshape(-1).tolist():
            empty = torch.nonzero(counts[gi] == 0).reshape(-1)
            far = torch.argsort(dist[gi], descending=True, stable=True)[: empty.numel()]
            centroids[gi, empty[: far.numel()]] = x[gi, far]
        new_labels, dist = assign(x, centroids, chunk_bytes)
        if progress is not None:
            progress(1)
        done = torch.equal(new_labels, labels)
        labels = new_labels
        if done:
            break
    inertia = dist.double().sum(1)
    if flat:
        return centroids[0], labels[0], inertia[0]
    return centroids, labels, inertia


__all__ = ["kmeans", "assign", "update", "CHUNK_BYTES"]
