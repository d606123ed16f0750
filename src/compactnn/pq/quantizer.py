"""Product quantizers: PQ, OPQ (parametric and non-parametric) and the biresolution spectral PQ.

A :class:`ProductQuantizer` maps a vector ``x`` (dimension ``D``) to ``y = (x - mean) R`` (``R`` orthogonal, the
identity for plain PQ), splits ``y`` into ``m`` consecutive sub-vectors of ``D / m`` numbers and stores, per
sub-vector, the index of its nearest of ``k = 2**bits`` centroids. Because ``R`` is orthogonal, distances between
transformed vectors equal distances between the originals, so search works in the transformed space.

Methods (:func:`train`):

- ``"pq"`` (Jegou et al., TPAMI 2011): ``R = I``, ``mean = 0``; k-means per subspace.
- ``"opq-parametric"`` (Ge et al., CVPR 2013, eigenvalue allocation): ``R`` = the PCA eigenvectors, dealt into the
  ``m`` subspaces so the products of the eigenvalues per subspace are balanced; then k-means per subspace. Our
  reading of the greedy rule: the ``m`` largest eigenvalues open one subspace each, every further eigenvalue (in
  descending order) goes to the non-full subspace with the smallest product (sum of logs) so far. (Letting the first
  eigenvalues compete against empty buckets would depend on the data's scale.)
- ``"opq"`` (non-parametric, Ge et al. 2013): start from the parametric ``R``, then alternate a few warm-started
  Lloyd steps per subspace with the orthogonal Procrustes update ``R = U V^T`` where ``U S V^T = X^T Y_hat`` (``Y_hat``
  the current reconstructions in the rotated space), which minimises ``|X R - Y_hat|`` over orthogonal ``R``.
- ``"spectral"``: the biresolution spectral framework (Mukherjee et al., CVPR 2018); see :func:`train_spectral`
  for our reading of it.

Rotation learning runs on a seeded sample of the training vectors (``sample``, default 20,000); the final codebooks
are trained on all of them. ``D`` must be divisible by ``m`` (no padding: the error names the valid choices).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..errors import ConfigError, DataError
from .kmeans import CHUNK_BYTES, assign, kmeans

Method = Literal["pq", "opq", "opq-parametric", "spectral"]
METHODS: tuple[str, ...] = ("pq", "opq", "opq-parametric", "spectral")


def divisors(n: int) -> list[int]:
    """Positive divisors of ``n``, ascending."""
    return [d for d in range(1, n + 1) if n % d == 0]


def check_vectors(x: Any, what: str = "vectors", dim: int | None = None) -> Tensor:
    """``x`` as a finite 2-D float32 tensor, or a one-line :class:`DataError` (NaN/inf, wrong shape or dimension)."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub":
            raise DataError(f"{what}: expected a numeric array, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, Tensor):
        raise DataError(f"{what}: expected an array or tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise DataError(f"{what}: expected a 2-D array (vectors, dimension), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"{what}: empty array of shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{what} have dimension {x.shape[1]}, the index expects {dim}")
    x = x.to(torch.float32)
    bad = ~torch.isfinite(x).all(1)
    if bool(bad.any()):
        first = int(torch.nonzero(bad)[0])
        raise DataError(f"{what}: {int(bad.sum())} vector(s) hold NaN or infinite values (first at row {first}); "
                        "remove or fix them")
    return x.contiguous()


def check_shape(dim: int, m: int, bits: int) -> None:
    """One-line :class:`ConfigError` unless ``m`` subspaces of ``bits``-bit codes fit dimension ``dim``."""
    if not 1 <= bits <= 16:
        raise ConfigError(f"bits per sub-code must be in 1..16, got {bits}")
    if m < 1 or dim % m:
        raise ConfigError(f"dimension {dim} cannot be split into {m} equal subspaces; choose a number of "
                          f"subspaces (bytes at 8 bits) that divides it: {', '.join(map(str, divisors(dim)[:24]))}")


@dataclasses.dataclass
class ProductQuantizer:
    """A trained product quantizer.

    Attributes:
        codebooks: ``(m, k, D/m)`` float32 centroids, subspace by subspace.
        mean: ``(D,)`` subtracted before the rotation (zeros for plain PQ).
        rotation: ``(D, D)`` orthogonal ``R`` (``y = (x - mean) R``), or None for the identity.
        method: the training method's name.
    """

    codebooks: Tensor
    mean: Tensor
    rotation: Tensor | None = None
    method: str = "pq"

    @property
    def m(self) -> int:
        return self.codebooks.shape[0]

    @property
    def k(self) -> int:
        return self.codebooks.shape[1]

    @property
    def dsub(self) -> int:
        return self.codebooks.shape[2]

    @property
    def dim(self) -> int:
        return self.m * self.dsub

    @property
    def code_dtype(self) -> torch.dtype:
        return torch.uint8 if self.k <= 256 else torch.int16 if self.k <= 32768 else torch.int32

    def transform(self, x: Tensor) -> Tensor:
        """``(x - mean) R`` as float32 ``(n, D)``."""
        y = x.to(torch.float32) - self.mean
        return y @ self.rotation if self.rotation is not None else y

    def split(self, y: Tensor) -> Tensor:
        """``(n, D)`` transformed vectors -> ``(m, n, D/m)`` sub-vectors."""
        return y.reshape(y.shape[0], self.m, self.dsub).transpose(0, 1).contiguous()

    def encode(self, x: Tensor, chunk_bytes: int = CHUNK_BYTES) -> Tensor:
        """Codes ``(n, m)`` (uint8 for ``k <= 256``) of the vectors ``x (n, D)``."""
        x = check_vectors(x, "vectors", self.dim)
        out = torch.empty(x.shape[0], self.m, dtype=self.code_dtype)
        step = max(1, (64 << 20) // (4 * self.dim))  # bound the transformed copy too
        for s in range(0, x.shape[0], step):
            labels, _ = assign(self.split(self.transform(x[s:s + step])), self.codebooks, chunk_bytes)
            out[s:s + step] = labels.t().to(self.code_dtype)
        return out

    def decode_transformed(self, codes: Tensor) -> Tensor:
        """Reconstructions in the transformed space, ``(n, D)``."""
        c = codes.to(torch.int64)
        parts = [self.codebooks[j, c[:, j]] for j in range(self.m)]
        return torch.cat(parts, dim=1)

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructions ``(n, D)`` of codes ``(n, m)`` in the original space."""
        y = self.decode_transformed(codes)
        if self.rotation is not None:
            y = y @ self.rotation.t()
        return y + self.mean

    def mse(self, x: Tensor) -> float:
        """Mean squared reconstruction error per vector (sum over dimensions, mean over vectors)."""
        x = check_vectors(x, "vectors", self.dim)
        y = self.transform(x)
        return float(((y - self.decode_transformed(self.encode(x))) ** 2).sum(1).double().mean())


# ----------------------------------------------------------------------------------------------------- rotations
def eigenvalue_allocation(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Parametric OPQ (Ge et al. 2013): the mean and the orthogonal ``R`` whose column blocks are PCA eigenvectors
    balanced so the product of eigenvalues is about equal in every subspace (greedy rule: module docstring)."""
    d = x.shape[1]
    mean = x.double().mean(0)
    xc = x.double() - mean
    cov = xc.t() @ xc / max(1, x.shape[0] - 1)
    vals, vecs = torch.linalg.eigh(cov)
    order = torch.argsort(vals, descending=True)
    vals, vecs = vals[order], vecs[:, order]
    cap = d // m
    floor = max(float(vals[0]) * 1e-12, 1e-30)
    logs = torch.log(vals.clamp_min(floor)).tolist()
    buckets: list[list[int]] = [[] for _ in range(m)]
    score = [0.0] * m
    for i, lv in enumerate(logs):
        if i < m:
            b = i
        else:
            b = min((j for j in range(m) if len(buckets[j]) < cap), key=lambda j: score[j])
        buckets[b].append(i)
        score[b] += lv
    cols = [i for b in buckets for i in b]
    return mean.float(), vecs[:, cols].float().contiguous()


def procrustes(a: Tensor, b: Tensor) -> Tensor:
    """Orthogonal ``R`` minimising ``|A R - B|_F``: ``U V^T`` with ``U S V^T = A^T B``."""
    u, _, vh = torch.linalg.svd((a.double().t() @ b.double()))
    return (u @ vh).float()


def _sample(x: Tensor, size: int | None, seed: int) -> Tensor:
    if size is None or size >= x.shape[0]:
        return x
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    return x[torch.randperm(x.shape[0], generator=gen)[:size]]


def _bar(total: int, desc: str, quiet: bool | None) -> Any:
    return tqdm(total=total, desc=desc, disable=True if quiet else None, leave=False)


def _split(y: Tensor, m: int) -> Tensor:
    return y.reshape(y.shape[0], m, y.shape[1] // m).transpose(0, 1).contiguous()


# ------------------------------------------------------------------------------------------------------- training
def train_pq(x: Tensor, m: int, bits: int = 8, iterations: int = 25, seed: int = 0, quiet: bool | None = None,
             mean: Tensor | None = None, rotation: Tensor | None = None, method: str = "pq",
             init: Any = "k-means++") -> ProductQuantizer:
    """k-means per subspace of ``(x - mean) R`` (plain PQ when ``mean``/``rotation`` are None)."""
    d = x.shape[1]
    mean = torch.zeros(d) if mean is None else mean
    pq = ProductQuantizer(torch.zeros(m, 2**bits, d // m), mean.float(), rotation, method)
    with _bar(iterations, f"{method} k-means", quiet) as bar:
        books, _, _ = kmeans(_split(pq.transform(x), m), 2**bits, iterations, seed, init, progress=bar.update)
    pq.codebooks = books
    return pq


def train_opq(x: Tensor, m: int, bits: int = 8, iterations: int = 25, seed: int = 0, quiet: bool | None = None,
              opq_iterations: int = 20, inner: int = 4, sample: int | None = 20000) -> ProductQuantizer:
    """Non-parametric OPQ: eigenvalue-allocation start, then ``opq_iterations`` rounds of (``inner`` warm-started
    Lloyd steps per subspace, Procrustes rotation update) on ``sample`` vectors; final codebooks on all of ``x``."""
    k = 2**bits
    xs = _sample(x, sample, seed)
    mean, rot = eigenvalue_allocation(xs, m)
    xc = xs - mean
    books: Any = "k-means++"
    with _bar(opq_iterations, "opq rotation", quiet) as bar:
        for it in range(opq_iterations):
            y = xc @ rot
            books, labels, _ = kmeans(_split(y, m), k, inner, seed + it, books)
            recon = torch.cat([books[j, labels[j]] for j in range(m)], dim=1)
            rot = procrustes(xc, recon)
            bar.update(1)
    # codebooks are expressed in the last rotation's subspaces: warm start the final k-means from them
    return train_pq(x, m, bits, iterations, seed, quiet, mean, rot, "opq", init=books)


def _pair_update(blocks: list[Tensor], basis: list[Tensor], i: int, j: int, r: int) -> None:
    """Best split of the span of subspaces ``i`` and ``j`` (fixed assignments): see :func:`train_spectral`.

    ``blocks[b]`` is ``(m, k, r)``: the columns of block ``b`` of every ``A_t``; ``basis[b]`` is ``(D, r)``. Blocks
    ``i`` and ``j`` are rotated for every ``t`` at once (new tensors, so nothing is copied back)."""
    both = torch.cat([blocks[i], blocks[j]], 2)  # (m, k, 2r)
    ai, aj = both[i], both[j]
    _, vecs = torch.linalg.eigh(ai.t() @ ai - aj.t() @ aj)  # symmetric up to rounding; eigh reads one triangle
    q = vecs.flip(1)  # eigenvectors by descending eigenvalue: the first r span subspace i's new block
    both = both @ q
    blocks[i], blocks[j] = both[..., :r], both[..., r:]
    w = torch.cat([basis[i], basis[j]], 1) @ q
    basis[i], basis[j] = w[:, :r], w[:, r:]


def spectral_objective(blocks: list[Tensor]) -> float:
    """``sum_i tr(U_i^T X^T H_i H_i^T X U_i)``: the between-cluster scatter kept by the subspaces (``blocks`` as in
    :func:`_pair_update`)."""
    return float(sum((blocks[i][i] ** 2).sum() for i in range(len(blocks))))


def train_spectral(x: Tensor, m: int, bits: int = 8, iterations: int = 25, seed: int = 0,
                   quiet: bool | None = None, outer: int = 5, sweeps: int = 5, inner: int = 4,
                   sample: int | None = 20000, history: list | None = None,
                   init: Literal["eigen", "natural", "best"] = "best") -> ProductQuantizer:
    """Biresolution spectral PQ (Mukherjee et al., CVPR 2018), as we read the paper's abstract and the authors'
    MATLAB code (``optimize_subspaces_blockcord.m`` and ``call_mmf.m``, read, not copied).

    Setting: ``X`` (``n x D``, centred), ``m`` mutually orthogonal subspaces with orthonormal bases ``U_i``
    (``D x r``, ``r = D / m``, ``sum_i U_i U_i^T = I``) and, per subspace, a clustering given by the column-normalised
    indicator ``H_i`` (``n x k``, column ``c`` = indicator of cluster ``c`` / ``sqrt(n_c)``). With centroids the cluster
    means in each subspace, the quantization error is::

        sum_i |X U_i - H_i H_i^T X U_i|^2 = |X|^2 - sum_i tr(U_i^T C_i U_i),   C_i = X^T H_i H_i^T X,

    so the "biresolution" objective (the coarse resolution: which subspace each direction goes to, i.e. the subspace
    projection; the fine one: the clusters inside it) is to maximise ``sum_i tr(C_i P_i)`` over the projections
    ``P_i = U_i U_i^T`` and the clusterings. This is a spectral problem: for a fixed pair ``(i, j)`` and the others
    fixed, ``P_i + P_j`` is the fixed projection onto ``span[U_i, U_j]`` (``2r``-dimensional; the MATLAB code gets
    it from ``eigs(I - sum_{others} P)``, we use ``W = [U_i, U_j]`` directly, the same span), and the best ``P_i`` is
    the top-``r`` eigenvectors of ``W^T (C_i - C_j) W``, ``P_j`` the other ``r`` (MATLAB takes a randomized SVD,
    which ranks by magnitude; ranking by signed eigenvalue is the exact maximiser, so we use ``eigh``).

    Algorithm (defaults as the MATLAB: ``T = sweeps = 5`` block-coordinate sweeps over all ``m (m - 1) / 2`` pairs,
    pairs in random order after the first sweep, stop when the objective stops rising; ``m`` and ``k`` are the
    caller's, 8 subspaces / 256 centroids in the CLI's default): start (``init``) from parametric OPQ's eigenvalue
    allocation (``"eigen"``, one of the MATLAB's initialisations), from the natural order of the coordinates
    (``"natural"``, plain PQ's subspaces, centred) or from the better of the two after ``inner`` Lloyd steps
    (``"best"``, the default; the MATLAB's ``initializeX`` also keeps the best of its candidate starts); then
    ``outer`` times (default 5: on 1,000 queries held out when it was chosen, FMNIST test images 1,000-1,999 and a
    second draw of the synthetic set of ``benchmarks/pq.py``, 8 gave the same recall@10 within 0.006 in up to 1.6x
    the time): ``inner`` warm-started Lloyd steps per subspace give ``H_i``; the pairwise eigen-updates give new
    subspaces; the centroids move to the cluster means in the new subspaces (the optimum for the fixed clusters,
    which also warm-starts the next Lloyd steps). Each step does not increase the quantization error on the
    sample. Finally the codebooks are trained on all of ``x`` (``iterations``
    Lloyd steps, warm-started). ``C_i`` is never formed: we keep ``A_i = diag(1/sqrt(n_c)) S_i B`` (``S_i`` the
    cluster sums, ``k x D``; ``B`` the current basis), so a pair update costs ``O(m k r^2)``. ``history``, if given,
    receives one dict per outer step (the sample's quantization error per vector, the objective, the sweeps run).
    """
    k = 2**bits
    d = x.shape[1]
    r = d // m
    xs = _sample(x, sample, seed)
    mean, rot = eigenvalue_allocation(xs, m)
    xc = xs - mean
    books: Any = "k-means++"
    if init == "natural":
        rot = torch.eye(d)
    elif init == "best":  # as the MATLAB's initializeX: the better start by the objective (here: the sample error)
        trials = []
        for cand in (rot, torch.eye(d)):
            c, _, inertia = kmeans(_split(xc @ cand, m), k, inner, seed)
            trials.append((float(inertia.sum()), cand, c))
        _, rot, books = min(trials, key=lambda t: t[0])
    gen = torch.Generator().manual_seed(int(seed) + 1)
    pairs = list(itertools.combinations(range(m), 2))
    best_err = math.inf
    best = (rot, books)
    with _bar(outer, "spectral subspaces", quiet) as bar:
        for it in range(outer):
            y = xc @ rot
            parts = _split(y, m)
            books, labels, inertia = kmeans(parts, k, inner, seed + it, books)
            err = float(inertia.sum())
            if history is not None:
                history.append({"outer": it, "sample_error": err / xs.shape[0]})
            if err < best_err:
                best_err, best = err, (rot, books)
            if m == 1:
                break
            # cluster sums of the whole (rotated) vectors, per subspace's clustering: (k, D) each
            counts = torch.stack([torch.bincount(labels[i], minlength=k) for i in range(m)])
            scale = counts.clamp_min(1).double().rsqrt().unsqueeze(-1)
            p = torch.stack([torch.zeros(k, d).index_add_(0, labels[i], y).double() * scale[i] for i in range(m)])
            blocks = list(p.split(r, 2))
            basis = list(torch.eye(d, dtype=torch.float64).split(r, 1))
            before = spectral_objective(blocks)
            for sweep in range(sweeps):
                order = pairs if sweep == 0 else [pairs[t] for t in torch.randperm(len(pairs), generator=gen)]
                for i, j in order:
                    _pair_update(blocks, basis, i, j, r)
                after = spectral_objective(blocks)
                if after - before <= 1e-9 * max(1.0, abs(before)):
                    break
                before = after
            if history is not None:
                history[-1].update(objective=after / xs.shape[0], sweeps=sweep + 1)
            rot = (rot.double() @ torch.cat(basis, 1)).float()
            # centroids = cluster means in the new subspaces: optimal for the current clusters
            books = torch.stack([(blocks[i][i] * scale[i]).float() for i in range(m)])
            bar.update(1)
    y = xc @ rot
    _, _, inertia = kmeans(_split(y, m), k, 0, seed, books)
    if float(inertia.sum()) > best_err:  # the last subspace step did not pay off on its own: keep the best seen
        rot, books = best
    return train_pq(x, m, bits, iterations, seed, quiet, mean, rot, "spectral", init=books)


def train(x: Any, m: int, bits: int = 8, method: Method = "pq", iterations: int = 25, seed: int = 0,
          quiet: bool | None = None, **options: Any) -> ProductQuantizer:
    """Train a product quantizer of ``m`` subspaces with ``2**bits`` centroids each.

    Args:
        x: ``(n, D)`` training vectors (array or tensor); finite, ``n >= 2**bits``, ``D`` divisible by ``m``.
        m: number of subspaces (code bytes at 8 bits).
        bits: bits per sub-code (``k = 2**bits`` centroids per subspace).
        method: ``"pq"``, ``"opq"``, ``"opq-parametric"`` or ``"spectral"``.
        iterations: Lloyd steps of the final codebook training.
        seed: seeds sampling and k-means.
        quiet: hide the progress bars (None: tqdm's default, shown on a terminal).
        options: method settings: ``opq``: ``opq_iterations``, ``inner``, ``sample``; ``spectral``: ``outer``,
            ``sweeps``, ``inner``, ``sample``.
    """
    if method not in METHODS:
        raise ConfigError(f"unknown PQ method {method!r}; choose one of {', '.join(METHODS)}")
    x = check_vectors(x, "training vectors")
    check_shape(x.shape[1], m, bits)
    if x.shape[0] < 2**bits:
        raise ConfigError(f"training needs at least {2**bits} vectors for {2**bits} centroids, got {x.shape[0]}; "
                          "use fewer bits or more vectors")
    if method == "pq":
        return train_pq(x, m, bits, iterations, seed, quiet, **options)
    if method == "opq-parametric":
        mean, rot = eigenvalue_allocation(_sample(x, options.pop("sample", None), seed), m)
        return train_pq(x, m, bits, iterations, seed, quiet, mean, rot, "opq-parametric", **options)
    if method == "opq":
        return train_opq(x, m, bits, iterations, seed, quiet, **options)
    return train_spectral(x, m, bits, iterations, seed, quiet, **options)


__all__ = ["ProductQuantizer", "train", "train_pq", "train_opq", "train_spectral", "eigenvalue_allocation",
           "procrustes", "check_vectors", "check_shape", "divisors", "spectral_objective", "METHODS"]
