"""A product-quantization index: codes of a base set, searched by asymmetric (ADC) or symmetric (SDC) distances.

- ADC (Jegou et al. 2011): a query ``q`` is compared with the *reconstruction* of every base vector. Per query a
  lookup table ``T[j, c] = |q_j - codebook_j[c]|^2`` (``m x k``) is built once; the distance to a base vector with
  codes ``(c_1..c_m)`` is ``sum_j T[j, c_j]``, exactly ``|q - decode(codes)|^2`` (in the rotated space, which
  preserves distances). Search is batched over queries and vectorised over the base: the ``m`` tables of a chunk of
  queries are gathered by the codes and summed (``torch.index_select``), then ``torch.topk``; with the native
  kernels, one fused C pass over the codes per 16 queries keeps a ``k``-heap per query instead (``adc.c``).
- SDC: the query is encoded too and compared code to code with per-subspace centroid-to-centroid tables
  (``m x k x k``, built once): the same gather with ``T[j, c] = |codebook_j[qcode_j] - codebook_j[c]|^2``.

Memory: a chunk of ``chunk`` queries (default 16) holds a ``(base, queries)`` float32 distance block.
Results come nearest first; ties are broken by ``torch.topk`` (not stably).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .kmeans import native_kernels
from .quantizer import ProductQuantizer, check_vectors, train

Mode = Literal["adc", "sdc"]
SEARCH_CHUNK_BYTES = 1 << 27
#: Queries per ADC/SDC block: small enough that the ``(base, queries)`` block stays in cache (measured: 8-32 best).
QUERY_CHUNK = 16
#: Queries per call of the native scan (their tables, ``16 m k`` floats per 16 queries, are built first).
NATIVE_QUERIES = 256


class PQIndex:
    """Codes of a base set under a :class:`ProductQuantizer`, with exhaustive ADC/SDC search.

    Args:
        quantizer: the trained quantizer.
        codes: ``(n, m)`` codes of the base (``quantizer.encode``); None for an empty index (then :meth:`add`).
    """

    def __init__(self, quantizer: ProductQuantizer, codes: Tensor | None = None) -> None:
        self.quantizer = quantizer
        self.codes = torch.empty(0, quantizer.m, dtype=quantizer.code_dtype) if codes is None else codes
        if self.codes.dim() != 2 or self.codes.shape[1] != quantizer.m:
            raise DataError(f"codes must have shape (n, {quantizer.m}), got {tuple(self.codes.shape)}")
        if self.codes.numel() and (int(self.codes.min()) < 0 or int(self.codes.max()) >= quantizer.k):
            raise DataError(f"codes must lie in 0..{quantizer.k - 1}")
        self._sdc: Tensor | None = None
        self._flat: Tensor | None = None

    @classmethod
    def build(cls, x: Any, m: int, bits: int = 8, method: str = "pq", train_on: Any = None, **options: Any
              ) -> "PQIndex":
        """Train a quantizer (on ``train_on``, default ``x``) with :func:`compactnn.pq.train` and add ``x``."""
        x = check_vectors(x, "base vectors")
        pq = train(x if train_on is None else train_on, m, bits, method, **options)
        index = cls(pq)
        index.add(x)
        return index

    @property
    def ntotal(self) -> int:
        return self.codes.shape[0]

    @property
    def dim(self) -> int:
        return self.quantizer.dim

    def add(self, x: Any) -> Tensor:
        """Encode ``x`` and append its codes; returns the new codes."""
        new = self.quantizer.encode(check_vectors(x, "base vectors", self.dim))
        self.codes = torch.cat([self.codes, new]) if self.ntotal else new
        self._flat = None
        return new

    def _flat_codes(self) -> Tensor:
        """Codes as int64 offsets ``c + j k`` into a flattened ``(m k)`` table, laid out ``(m, n)``."""
        if self._flat is None or self._flat.shape[1] != self.ntotal:
            q = self.quantizer
            self._flat = (self.codes.to(torch.int64) + torch.arange(q.m) * q.k).t().contiguous()
        return self._flat

    def lookup_tables(self, queries: Tensor) -> Tensor:
        """ADC tables ``(nq, m, k)``: ``|q_j - codebook_j[c]|^2`` for transformed query sub-vectors."""
        q = self.quantizer
        y = q.transform(queries).reshape(-1, q.m, q.dsub).transpose(0, 1)  # (m, nq, dsub)
        b = q.codebooks
        d = torch.baddbmm((b * b).sum(-1).unsqueeze(1), y, b.transpose(1, 2), alpha=-2.0)  # (m, nq, k)
        return (d + (y * y).sum(-1, keepdim=True)).clamp_min_(0.0).transpose(0, 1).contiguous()

    def sdc_tables(self) -> Tensor:
        """SDC tables ``(m, k, k)``: squared distances between centroids of the same subspace."""
        if self._sdc is None:
            b = self.quantizer.codebooks
            self._sdc = torch.cdist(b.double(), b.double()).pow(2).float()
        return self._sdc

    def distances(self, tables: Tensor, ids: Tensor | None = None) -> Tensor:
        """``sum_j tables[:, j, codes[i, j]]`` for every base vector (or those in ``ids``), laid out ``(n, nq)``.

        The tables are transposed to ``(m k, nq)`` so that each code fetches one contiguous row of ``nq`` values
        (a vector copy rather than ``nq`` scalar gathers); with a small query chunk the block stays in cache.
        """
        q = self.quantizer
        cols = self._flat_codes() if ids is None else self._flat_codes()[:, ids]
        t = tables.reshape(tables.shape[0], q.m * q.k).t().contiguous()
        out = t.index_select(0, cols[0])
        for j in range(1, q.m):
            out += t.index_select(0, cols[j])
        return out

    def check_queries(self, queries: Any, k: int) -> Tensor:
        """Queries as a checked float32 tensor; one-line errors for a wrong dimension, NaN, or ``k`` too large."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, got {k!r}")
        if k > self.ntotal:
            raise ConfigError(f"k={k} is larger than the base ({self.ntotal} vectors); use k <= {self.ntotal}")
        return check_vectors(queries, "queries", self.dim)

    def _tables(self, qs: Tensor, mode: Mode) -> Tensor:
        """``(nq, m, k)`` ADC or SDC lookup tables of a chunk of queries."""
        if mode == "adc":
            return self.lookup_tables(qs)
        qcodes = self.quantizer.encode(qs).to(torch.int64)
        return self.sdc_tables()[torch.arange(self.quantizer.m), qcodes]

    def _search_native(self, lib, queries: Tensor, k: int, mode: Mode) -> tuple[Tensor, Tensor]:
        """The fused C scan (``adc.c``): tables of 16 queries laid out ``(m k, 16)``, one pass over the codes."""
        q = self.quantizer
        nq = queries.shape[0]
        dist = torch.empty(nq, k, dtype=torch.float32)
        ids = torch.empty(nq, k, dtype=torch.int64)
        codes = self.codes.contiguous()
        for s in range(0, nq, NATIVE_QUERIES):
            t = self._tables(queries[s:s + NATIVE_QUERIES], mode)
            nb = t.shape[0]
            pad = -nb % 16
            if pad:
                t = torch.cat([t, t.new_zeros(pad, q.m, q.k)])
            t = t.reshape(-1, 16, q.m * q.k).transpose(1, 2).contiguous()  # (blocks, m k, 16)
            if lib.cnn_adc_search(codes.data_ptr(), t.data_ptr(), self.ntotal, q.m, q.k, nb, k,
                                  dist[s:].data_ptr(), ids[s:].data_ptr(), torch.get_num_threads()):
                raise MemoryError("ADC search: out of memory for the result heaps")
        return dist, ids

    def search(self, queries: Any, k: int, mode: Mode = "adc", chunk: int = QUERY_CHUNK, native: bool | None = None
               ) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest base vectors of every query by ADC or SDC distance.

        Args:
            queries: ``(nq, D)`` vectors.
            k: results per query (at most the base size).
            mode: ``"adc"`` (tables of the query) or ``"sdc"`` (tables of the query's codes).
            chunk: queries per block of the torch path.
            native: the fused C scan of the native kernels (``COMPACTNN_NATIVE``; codes of at most 8 bits), which
                keeps a heap per query instead of a ``(base, queries)`` block: None: when they load, False: torch.

        Returns:
            ``(distances (nq, k) float32, ids (nq, k) int64)``, nearest first (the native path breaks ties by the
            lower id; torch's ``topk`` does not promise an order among ties).
        """
        if mode not in ("adc", "sdc"):
            raise ConfigError(f"search mode must be 'adc' or 'sdc', got {mode!r}")
        queries = self.check_queries(queries, k)
        nq = queries.shape[0]
        if mode == "sdc":
            self.sdc_tables()
        lib = native_kernels() if native is not False and self.codes.dtype == torch.uint8 else None
        if native and lib is None:
            raise ConfigError("the native ADC search needs the native kernels and codes of at most 8 bits "
                              "(compactnn.quantize.intonly.native.status() says why the kernels are off); "
                              "use native=None or False")
        if lib is not None:
            return self._search_native(lib, queries, k, mode)
        step = max(1, int(chunk))
        dist = torch.empty(nq, k, dtype=torch.float32)
        ids = torch.empty(nq, k, dtype=torch.int64)
        self._flat_codes()

        def work(s: int) -> None:
            tables = self._tables(queries[s:s + step], mode)
            top = torch.topk(self.distances(tables), k, dim=0, largest=False, sorted=True)
            dist[s:s + step], ids[s:s + step] = top.values.t(), top.indices.t()

        starts = range(0, nq, step)
        before = torch.get_num_threads()
        threads = min(before, len(starts))
        if threads <= 1:
            for s in starts:
                work(s)
            return dist, ids
        # one query chunk per thread, each single-threaded: fine-grained intra-op threading of these small
        # gathers stalls on a loaded machine (measured 10x slower with 2 threads than 1)
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(work, starts))
        finally:
            torch.set_num_threads(before)
        return dist, ids


def exact_search(base: Tensor, queries: Tensor, k: int, chunk_bytes: int = SEARCH_CHUNK_BYTES
                 ) -> tuple[Tensor, Tensor]:
    """Brute-force ``k`` nearest neighbours by squared L2 (float64 accumulation is not used: float32 BLAS, as
    faiss's flat index); ``(distances, ids)`` nearest first."""
    base = base.to(torch.float32)
    bn = (base * base).sum(1)
    step = max(1, int(chunk_bytes // (4 * max(1, base.shape[0]))))
    dists, idss = [], []
    for s in range(0, queries.shape[0], step):
        q = queries[s:s + step].to(torch.float32)
        d = torch.addmm(bn.unsqueeze(0), q, base.t(), alpha=-2.0) + (q * q).sum(1, keepdim=True)
        top = torch.topk(d, k, dim=1, largest=False, sorted=True)
        dists.append(top.values)
        idss.append(top.indices)
    return torch.cat(dists), torch.cat(idss)


def recall_at(ids: Tensor, truth: Tensor, r: int) -> float:
    """Fraction of queries whose true nearest neighbour ``truth[:, 0]`` is among the first ``r`` results."""
    return float((ids[:, :r] == truth[:, :1]).any(1).double().mean())


__all__ = ["PQIndex", "exact_search", "recall_at"]


class IVFPQIndex:
    """IVF-ADC (Jegou et al. 2011, section IV): a coarse k-means quantizer splits the base into ``nlist`` inverted
    lists; each vector's *residual* ``x - coarse[list]`` is product-quantized. A query visits its ``nprobe`` nearest
    lists and ranks their members by ADC on its residual to each list's centroid (one lookup table per probed list),
    so the distance is exactly ``|q - (coarse[list] + decode(code))|^2``. With ``nprobe = nlist`` the search is an
    exhaustive ADC over those reconstructions. When the probed lists hold fewer than ``k`` vectors the missing results
    are id ``-1`` at distance ``inf`` (as faiss).

    Args:
        coarse: ``(nlist, D)`` coarse centroids.
        quantizer: the residual quantizer.
        codes: ``(n, m)`` residual codes; lists: ``(n,)`` list of every vector (None for an empty index).
    """

    def __init__(self, coarse: Tensor, quantizer: ProductQuantizer, codes: Tensor | None = None,
                 lists: Tensor | None = None) -> None:
        self.coarse = coarse.to(torch.float32)
        self.pq = PQIndex(quantizer, codes)
        self.lists = torch.empty(0, dtype=torch.int64) if lists is None else lists.to(torch.int64)
        if self.lists.shape != (self.pq.ntotal,):
            raise DataError(f"lists must have shape ({self.pq.ntotal},), got {tuple(self.lists.shape)}")
        if self.lists.numel() and (int(self.lists.min()) < 0 or int(self.lists.max()) >= self.nlist):
            raise DataError(f"list ids must lie in 0..{self.nlist - 1}")
        self._order: tuple[Tensor, Tensor] | None = None

    @classmethod
    def build(cls, x: Any, nlist: int, m: int, bits: int = 8, method: str = "pq", iterations: int = 25,
              seed: int = 0, **options: Any) -> "IVFPQIndex":
        """Coarse k-means (``nlist`` centroids), a quantizer trained on the residuals, then every vector added."""
        from .kmeans import kmeans

        x = check_vectors(x, "base vectors")
        if not 1 <= nlist <= x.shape[0]:
            raise ConfigError(f"nlist must be in 1..{x.shape[0]} (the number of vectors), got {nlist}")
        coarse, labels, _ = kmeans(x, nlist, iterations, seed)
        pq = train(x - coarse[labels], m, bits, method, iterations=iterations, seed=seed, **options)
        index = cls(coarse, pq)
        index.add(x)
        return index

    @property
    def quantizer(self) -> ProductQuantizer:
        return self.pq.quantizer

    @property
    def nlist(self) -> int:
        return self.coarse.shape[0]

    @property
    def ntotal(self) -> int:
        return self.pq.ntotal

    @property
    def dim(self) -> int:
        return self.pq.dim

    @property
    def codes(self) -> Tensor:
        return self.pq.codes

    def add(self, x: Any) -> None:
        """Assign ``x`` to lists and append the codes of its residuals."""
        from .kmeans import assign

        x = check_vectors(x, "base vectors", self.dim)
        lists, _ = assign(x.unsqueeze(0), self.coarse.unsqueeze(0))
        self.pq.add(x - self.coarse[lists[0]])
        self.lists = torch.cat([self.lists, lists[0]])
        self._order = None

    def decode(self, ids: Tensor | None = None) -> Tensor:
        """Reconstructions ``coarse[list] + decode(code)`` of the base (or of ``ids``)."""
        codes, lists = (self.codes, self.lists) if ids is None else (self.codes[ids], self.lists[ids])
        return self.quantizer.decode(codes) + self.coarse[lists]

    def _lists_order(self) -> tuple[Tensor, Tensor]:
        if self._order is None:
            order = torch.argsort(self.lists, stable=True)
            offsets = torch.zeros(self.nlist + 1, dtype=torch.int64)
            offsets[1:] = torch.cumsum(torch.bincount(self.lists, minlength=self.nlist), 0)
            self._order = (order, offsets)
        return self._order

    def search(self, queries: Any, k: int, nprobe: int = 8) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest base vectors by IVF-ADC over the ``nprobe`` nearest lists: ``(distances, ids)``."""
        queries = self.pq.check_queries(queries, k)
        if isinstance(nprobe, bool) or not isinstance(nprobe, int) or nprobe < 1:
            raise ConfigError(f"nprobe must be a positive int, got {nprobe!r}")
        nprobe = min(nprobe, self.nlist)
        q = self.quantizer
        order, offsets = self._lists_order()
        flat = self.pq._flat_codes()  # (m, n)
        cd = torch.cdist(queries.double(), self.coarse.double())
        probes = torch.topk(cd, nprobe, dim=1, largest=False).indices
        dist = torch.full((queries.shape[0], k), float("inf"))
        ids = torch.full((queries.shape[0], k), -1, dtype=torch.int64)
        for i in range(queries.shape[0]):
            lists = probes[i]
            members = [order[offsets[l]:offsets[l + 1]] for l in lists.tolist()]
            sizes = torch.tensor([len(mm) for mm in members])
            cand = torch.cat(members)
            if cand.numel() == 0:
                continue
            tables = self.pq.lookup_tables(queries[i:i + 1] - self.coarse[lists])  # (nprobe, m, k)
            which = torch.repeat_interleave(torch.arange(len(members)), sizes)
            idx = flat[:, cand] + (which * (q.m * q.k)).unsqueeze(0)  # (m, nc)
            d = tables.reshape(-1)[idx].sum(0)
            top = torch.topk(d, min(k, cand.numel()), largest=False, sorted=True)
            dist[i, :top.values.numel()] = top.values
            ids[i, :top.values.numel()] = cand[top.indices]
        return dist, ids


__all__ += ["IVFPQIndex"]
