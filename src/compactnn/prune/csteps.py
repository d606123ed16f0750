"""Closed-form C steps (compression projections) of the LC algorithm.

Carreira-Perpiñán & Idelbayev, "Model compression as constrained optimization" (CVPR 2018, parts I and II). In the
C step the weights ``w`` (already shifted by ``-λ/μ``) are fixed and we solve ``min_θ ‖w − Δ(θ)‖²`` (constraint form)
or ``min_θ μ/2‖w − Δ(θ)‖² + α·C(θ)`` (penalty form). Every function here is pure: it never modifies its input and
returns new tensors of the input's shape, dtype and device (float32 and float64 alike). Weights are treated as one
flat vector unless a function says otherwise.

Conventions (ties): magnitude ranks break ties by flat index (earlier index wins, lists of tensors are concatenated
in order); a hard threshold at exact equality gives 0; the nearest codeword at an exact midpoint is the smaller
codeword, and equal codewords resolve to the first listed; ``sign(0) = +1`` for the binary codebooks.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "l0_constraint", "l0_constraint_grouped", "l1_constraint", "l1_constraint_grouped", "l0_penalty",
    "l1_penalty", "adaptive_codebook", "optimal_codebook_1d", "assign_to_codebook", "fixed_codebook", "binary",
    "scaled_binary", "ternary", "scaled_ternary", "low_rank", "low_rank_factors", "additive_combination",
    "codebook_bits",
]


def _float(w: Tensor, name: str = "w") -> Tensor:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point torch.Tensor; convert it with .double() or .float()")
    return w


def _count(value: int, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}; pass a whole number")
    return int(value)


def _nonneg(value: float, name: str, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _concat(ws: Sequence[Tensor]) -> Tensor:
    if len(ws) == 0:
        raise ConfigError("ws is an empty list; pass at least one weight tensor")
    dtypes = {_float(w, "every tensor in ws").dtype for w in ws}
    if len(dtypes) > 1:
        raise ConfigError(f"tensors in ws have mixed dtypes {sorted(map(str, dtypes))}; cast them to one dtype")
    return torch.cat([w.reshape(-1) for w in ws])


def _split(flat: Tensor, ws: Sequence[Tensor]) -> list[Tensor]:
    parts = torch.split(flat, [w.numel() for w in ws])
    return [p.reshape(w.shape).clone() for p, w in zip(parts, ws)]


# ---------------------------------------------------------------------------------------------- sparsity


def l0_constraint(w: Tensor, kappa: int) -> Tensor:
    """Projection onto ``{θ : ‖θ‖₀ ≤ κ}``: ``argmin ‖w − θ‖²`` keeps the κ entries of largest ``|w|``, zeroes the rest.

    Args:
        w: weights (any shape).
        kappa: number of nonzeros allowed (``κ ≥ n`` returns a copy of ``w``).

    Ties in ``|w|`` go to the smaller flat index (a stable sort), so the result is deterministic.
    """
    _float(w)
    kappa = _count(kappa, "kappa")
    flat = w.reshape(-1)
    if kappa >= flat.numel():
        return w.clone()
    keep = torch.argsort(flat.abs(), descending=True, stable=True)[:kappa]
    out = torch.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(w.shape)


def l0_constraint_grouped(ws: Sequence[Tensor], kappa: int) -> list[Tensor]:
    """ℓ0 projection with one global budget κ over a list of tensors (the LC paper's budget over all layers).

    Equal to :func:`l0_constraint` on the concatenation of the flattened tensors, split back. Args: ``ws`` the
    tensors (one dtype); ``kappa`` the total number of nonzeros. Ties go to the earlier tensor, then earlier index.
    """
    return _split(l0_constraint(_concat(ws), kappa), ws)


def _l1_tau(a: Tensor, kappa: float) -> Tensor:
    """Duchi et al. (2008): the threshold τ with Σ max(a_i − τ, 0) = κ, for a ≥ 0 with Σ a > κ (sort, O(n log n))."""
    u = torch.sort(a, descending=True).values
    css = torch.cumsum(u, 0) - kappa
    j = torch.arange(1, u.numel() + 1, dtype=u.dtype, device=u.device)
    rho = int(torch.nonzero(u - css / j > 0).max())  # last index where the condition holds (0-based)
    return css[rho] / (rho + 1)


def l1_constraint(w: Tensor, kappa: float) -> Tensor:
    """Euclidean projection onto the ℓ1 ball ``{θ : ‖θ‖₁ ≤ κ}`` (Duchi, Shalev-Shwartz, Singer & Chandra, 2008).

    Closed form: if ``‖w‖₁ ≤ κ`` return ``w``; else ``θ = sign(w)·max(|w| − τ, 0)`` where τ > 0 solves
    ``Σ max(|w_i| − τ, 0) = κ`` (found by sorting ``|w|``, O(n log n)), so ``‖θ‖₁ = κ``. Example: ``w = [1, 1]``,
    ``κ = 1`` gives ``[0.5, 0.5]`` (the LC toolkit's version returns ``[1, 1]``, which is not the projection).

    Args:
        w: weights (any shape).
        kappa: radius κ ≥ 0 of the ball (``κ = 0`` gives zeros).
    """
    _float(w)
    kappa = _nonneg(kappa, "kappa")
    a = w.reshape(-1).abs()
    if float(a.sum()) <= kappa:
        return w.clone()
    if kappa == 0:
        return torch.zeros_like(w)
    tau = _l1_tau(a, kappa)
    return (torch.sign(w) * torch.clamp(w.abs() - tau, min=0)).reshape(w.shape)


def l1_constraint_grouped(ws: Sequence[Tensor], kappa: float) -> list[Tensor]:
    """ℓ1 projection with one global radius κ over a list of tensors (projection of their concatenation).

    Args: ``ws`` the tensors (one dtype); ``kappa`` the total ℓ1 radius.
    """
    return _split(l1_constraint(_concat(ws), kappa), ws)


def l0_penalty(w: Tensor, alpha: float, mu: float) -> Tensor:
    """Hard threshold, the minimizer of ``μ/2‖w − θ‖² + α‖θ‖₀``.

    Per element the cost is ``α`` for ``θ_i = w_i`` and ``μ/2·w_i²`` for ``θ_i = 0``, so keep ``w_i`` iff
    ``|w_i| > √(2α/μ)``. At exact equality both are optimal; we return 0 (the sparser one).

    Args:
        w: weights (any shape).
        alpha: penalty weight α ≥ 0.
        mu: LC penalty parameter μ > 0.
    """
    _float(w)
    t = math.sqrt(2 * _nonneg(alpha, "alpha") / _nonneg(mu, "mu", positive=True))
    return torch.where(w.abs() > t, w, torch.zeros_like(w))


def l1_penalty(w: Tensor, alpha: float, mu: float) -> Tensor:
    """Soft threshold, the minimizer of ``μ/2‖w − θ‖² + α‖θ‖₁``: ``θ = sign(w)·max(|w| − α/μ, 0)``.

    Args:
        w: weights (any shape).
        alpha: penalty weight α ≥ 0.
        mu: LC penalty parameter μ > 0.
    """
    _float(w)
    t = _nonneg(alpha, "alpha") / _nonneg(mu, "mu", positive=True)
    return torch.sign(w) * torch.clamp(w.abs() - t, min=0)


# ---------------------------------------------------------------------------------------------- codebooks


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


# ---------------------------------------------------------------------------------------------- low rank


def _matrix(W: Tensor) -> Tensor:
    _float(W, "W")
    if W.dim() < 2:
        raise ConfigError(f"low rank needs a weight with >= 2 dims, got shape {tuple(W.shape)}")
    return W.reshape(W.shape[0], -1)


def low_rank_factors(W: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Factors ``(U·diag(σ) (m, r), Vᵀ (r, p))`` of the best rank-r approximation (truncated SVD, torch.linalg.svd).

    Args:
        W: weight (out, in) or conv weight (out, in, kh, kw), reshaped to (out, in·kh·kw).
        rank: r ≥ 0, capped at min(m, p).
    """
    M = _matrix(W)
    r = min(_count(rank, "rank"), min(M.shape))
    U, S, Vh = torch.linalg.svd(M, full_matrices=False)
    return U[:, :r] * S[:r], Vh[:r].clone()


def low_rank(W: Tensor, rank: int) -> Tensor:
    """Rank-r C step: ``argmin_{rank(Θ) ≤ r} ‖W − Θ‖_F`` is the truncated SVD (Eckart–Young), with error² equal to
    the sum of the discarded σ².

    Args:
        W: 2-D weight (out, in); a conv weight (out, in, kh, kw) is reshaped to (out, in·kh·kw) and back.
        rank: r ≥ 0 (``r ≥ min(m, p)`` returns a copy).
    """
    A, B = low_rank_factors(W, rank)
    return (A @ B).reshape(W.shape)


# ---------------------------------------------------------------------------------------------- combination


def additive_combination(w: Tensor, steps: Sequence[Callable[[Tensor], Tensor]],
                         rounds: int = 10) -> list[Tensor]:
    """Additive combination ``Δ(θ) = θ_1 + … + θ_m``: block coordinate descent on ``‖w − Σ_j θ_j‖²``.

    Starting from all parts zero, each round sets in turn ``θ_j = step_j(w − Σ_{i≠j} θ_i)`` (e.g. quantization plus a
    sparse correction: ``θ_1 = Q(w − θ_2)``, ``θ_2 = S(w − θ_1)``). When every step is an exact projection (or, like a
    warm-started k-means, never worse than the part it replaces) the objective is non-increasing over rounds.

    Args:
        w: weights (any shape).
        steps: C steps, each ``f(residual) -> θ`` of the residual's shape (bind parameters with lambdas).
        rounds: number of passes over all steps (≥ 1; the LC paper uses about 10).

    Returns:
        The parts ``[θ_1, …, θ_m]``, each of the shape of ``w``.
    """
    _float(w)
    rounds = _count(rounds, "rounds", low=1)
    if len(steps) == 0:
        raise ConfigError("steps is empty; pass at least one C step")
    parts = [torch.zeros_like(w) for _ in steps]
    total = torch.zeros_like(w)
    for _ in range(rounds):
        for j, step in enumerate(steps):
            rest = total - parts[j]
            parts[j] = step(w - rest)
            total = rest + parts[j]
    return parts


def codebook_bits(n: int, k: int) -> int:
    """Storage in bits of n weights coded with a K-codebook: ``n·⌈log₂K⌉ + 32·K`` (float32 codewords; K = 1 costs
    no index bits).

    Args:
        n: number of weights (≥ 0).
        k: codebook size K (≥ 1).
    """
    n, k = _count(n, "n"), _count(k, "k", low=1)
    return n * (k - 1).bit_length() + 32 * k
