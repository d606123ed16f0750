"""Vector files and PQ index files.

- ``.fvecs`` / ``.ivecs`` / ``.bvecs`` (the SIFT1M / GIST1M layout of Jegou et al.): every vector is a little-endian
  int32 dimension ``d`` followed by ``d`` float32 / int32 / uint8 values. :func:`read_vecs` checks the first
  dimension, that the file length is a whole number of records, and that every record repeats the dimension, before
  it allocates anything.
- ``.npy`` (:func:`read_npy`): the header is read first and the data length checked against the file length; never
  unpickles (``allow_pickle=False``); only numeric dtypes.
- PQ indexes (:func:`save_index` / :func:`load_index`): a ``.cnz`` file written by :func:`compactnn.pack.save` (so
  checksummed, zstd-compressed, no pickle) holding one :class:`PQIndexModule` whose buffers are the codebooks, mean,
  rotation and codes; the manifest's metadata says ``{"kind": "pq-index", ...}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import pack
from ..errors import DataError, PackError
from ..files import atomic_write_bytes, open_regular
from ..pack.spec import packable
from .index import IVFPQIndex, PQIndex
from .quantizer import ProductQuantizer

VECS = {"fvecs": np.dtype("<f4"), "ivecs": np.dtype("<i4"), "bvecs": np.dtype("u1")}
MAX_DIM = 1 << 20


def _kind(path: Path, kind: str | None) -> str:
    kind = kind or path.suffix.lstrip(".").lower()
    if kind not in VECS:
        raise DataError(f"{path}: unknown vector file type {kind!r}; use .fvecs, .ivecs or .bvecs")
    return kind


def read_vecs(path: str | os.PathLike, kind: str | None = None, limit: int | None = None) -> np.ndarray:
    """Read a ``.fvecs`` / ``.ivecs`` / ``.bvecs`` file as an ``(n, d)`` array (float32 / int32 / uint8).

    Args:
        path: the file.
        kind: ``"fvecs"``, ``"ivecs"`` or ``"bvecs"``; default from the suffix.
        limit: read at most this many vectors (the first ones).

    Raises:
        DataError: missing file, bad dimension, a length that is not a whole number of records, or a record whose
            dimension differs from the first.
    """
    path = Path(path)
    kind = _kind(path, kind)
    item = VECS[kind]
    with open_regular(path, f"{kind} file", DataError) as checked:  # a regular file (never a FIFO), sized
        size = checked.size
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
            if len(head) < 4:
                raise DataError(f"{path}: {size} bytes is too short for a {kind} file (need at least 4)")
            d = int(np.frombuffer(head, "<i4")[0])
            if not 0 < d <= MAX_DIM:
                raise DataError(f"{path}: first vector dimension {d} is invalid (expected 1..{MAX_DIM}); "
                                f"not a {kind} file?")
            record = 4 + d * item.itemsize
            if size % record:
                raise DataError(f"{path}: {size} bytes is not a whole number of {record}-byte records "
                                f"(dimension {d}); the file is truncated or not {kind}")
            n = size // record if limit is None else min(size // record, max(0, int(limit)))
            fh.seek(0)
            raw = np.frombuffer(fh.read(n * record), dtype=np.uint8)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None
    if raw.size != n * record:
        raise DataError(f"{path}: file changed while reading (got {raw.size} bytes of {n * record})")
    rows = raw.reshape(n, record)
    dims = rows[:, :4].copy().view("<i4").reshape(n)
    wrong = np.flatnonzero(dims != d)
    if wrong.size:
        raise DataError(f"{path}: vector {int(wrong[0])} has dimension {int(dims[wrong[0]])}, the first has {d}; "
                        "the file is corrupted")
    return rows[:, 4:].copy().view(item).reshape(n, d).astype(item.newbyteorder("="))


def write_vecs(path: str | os.PathLike, x: Any, kind: str | None = None) -> Path:
    """Write an ``(n, d)`` array as ``.fvecs`` / ``.ivecs`` / ``.bvecs`` (atomically)."""
    path = Path(path)
    kind = _kind(path, kind)
    a = np.asarray(x)
    if a.ndim != 2 or a.shape[1] == 0:
        raise DataError(f"write_vecs needs a 2-D (n, d) array, got shape {a.shape}")
    n, d = a.shape
    rec = np.empty((n, 4 + d * VECS[kind].itemsize), dtype=np.uint8)
    rec[:, :4] = np.frombuffer(np.int32(d).astype("<i4").tobytes(), np.uint8)
    rec[:, 4:] = np.ascontiguousarray(a.astype(VECS[kind])).view(np.uint8).reshape(n, -1)
    return atomic_write_bytes(path, rec.tobytes())


def read_npy(path: str | os.PathLike, what: str = "array") -> np.ndarray:
    """A numeric ``.npy`` array, with its length checked against the header before reading; never unpickles."""
    path = Path(path)
    with open_regular(path, ".npy file", DataError) as checked:  # a regular file (never a FIFO), sized
        size = checked.size
    try:
        with open(path, "rb") as fh:
            try:
                version = np.lib.format.read_magic(fh)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, _, dtype = readers[version](fh)  # the header only: no data read yet
            except (ValueError, SyntaxError, TypeError) as err:
                raise DataError(f"{path}: not a valid .npy file ({str(err).splitlines()[0][:120]})") from None
            if dtype.hasobject or dtype.kind not in "fiub":
                raise DataError(f"{path}: {what} must be a numeric array, got dtype {dtype} (object arrays are "
                                "never loaded)")
            expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            have = size - fh.tell()
            if have != expected:
                raise DataError(f"{path}: the header says shape {shape} {dtype} ({expected} bytes) but the file "
                                f"holds {have}; it is truncated or corrupted")
        return np.load(path, allow_pickle=False)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror or err}") from None


@packable
class PQIndexModule(nn.Module):
    """A :class:`PQIndex` as a module of buffers, so :func:`compactnn.pack.save` can store it (no pickle).

    Buffers: ``codebooks (m, k, D/m)`` float32, ``mean (D,)``, ``rotation (D, D)`` (or ``(0,)`` for none), ``codes
    (n, m)`` (uint8 for ``k <= 256``); for an IVF index also ``coarse (nlist, D)`` and ``lists (n,)`` (int32; both
    ``(0,)`` otherwise). Attribute ``method``: the training method's name.
    """

    def __init__(self, index: PQIndex | IVFPQIndex) -> None:
        super().__init__()
        q = index.quantizer
        ivf = isinstance(index, IVFPQIndex)
        self.register_buffer("coarse", index.coarse.contiguous() if ivf else torch.empty(0))
        self.register_buffer("lists", index.lists.to(torch.int32) if ivf else torch.empty(0, dtype=torch.int32))
        self.method = str(q.method)
        self.register_buffer("codebooks", q.codebooks.detach().to(torch.float32).contiguous())
        self.register_buffer("mean", q.mean.detach().to(torch.float32).contiguous())
        rot = q.rotation if q.rotation is not None else torch.empty(0)
        self.register_buffer("rotation", rot.detach().to(torch.float32).contiguous())
        self.register_buffer("codes", index.codes.contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # an index is searched, not called
        raise TypeError("PQIndexModule stores an index; use compactnn.pq.load_index(path).search(...)")

    def to_index(self, where: str = "index") -> PQIndex | IVFPQIndex:
        """The :class:`PQIndex`, after checking the buffers' shapes and dtypes (a tampered file gives a PackError)."""
        b, mean, rot, codes = self.codebooks, self.mean, self.rotation, self.codes
        if b.dim() != 3 or b.dtype != torch.float32 or min(b.shape) < 1:
            raise PackError(f"{where}: codebooks must be a float32 (m, k, d) tensor, got {tuple(b.shape)} {b.dtype}")
        m, k, dsub = b.shape
        dim = m * dsub
        if tuple(mean.shape) != (dim,) or mean.dtype != torch.float32:
            raise PackError(f"{where}: mean must be float32 of shape ({dim},), got {tuple(mean.shape)}")
        if rot.numel() and (tuple(rot.shape) != (dim, dim) or rot.dtype != torch.float32):
            raise PackError(f"{where}: rotation must be float32 ({dim}, {dim}), got {tuple(rot.shape)}")
        if codes.dim() != 2 or codes.shape[1] != m or codes.dtype not in (torch.uint8, torch.int16, torch.int32):
            raise PackError(f"{where}: codes must be (n, {m}) integers, got {tuple(codes.shape)} {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= k):
            raise PackError(f"{where}: codes must lie in 0..{k - 1}")
        for name, t in (("codebooks", b), ("mean", mean), ("rotation", rot)):
            if not bool(torch.isfinite(t).all()):
                raise PackError(f"{where}: {name} holds NaN or infinite values")
        pq = ProductQuantizer(b.clone(), mean.clone(), rot.clone() if rot.numel() else None, str(self.method))
        coarse, lists = self.coarse, self.lists
        if not coarse.numel():
            return PQIndex(pq, codes.clone())
        if coarse.dim() != 2 or coarse.shape[1] != dim or coarse.dtype != torch.float32:
            raise PackError(f"{where}: coarse centroids must be float32 (nlist, {dim}), got {tuple(coarse.shape)}")
        if not bool(torch.isfinite(coarse).all()):
            raise PackError(f"{where}: coarse centroids hold NaN or infinite values")
        if tuple(lists.shape) != (codes.shape[0],) or lists.dtype != torch.int32:
            raise PackError(f"{where}: lists must be int32 of shape ({codes.shape[0]},), got {tuple(lists.shape)}")
        if lists.numel() and (int(lists.min()) < 0 or int(lists.max()) >= coarse.shape[0]):
            raise PackError(f"{where}: list ids must lie in 0..{coarse.shape[0] - 1}")
        return IVFPQIndex(coarse.clone(), pq, codes.clone(), lists.long())


def save_index(index: PQIndex | IVFPQIndex, path: str | os.PathLike, metadata: dict | None = None,
               level: int = 19) -> dict:
    """Write ``index`` to a ``.cnz`` file (atomically, via :func:`compactnn.pack.save`, zstd ``level``); returns the
    manifest."""
    q = index.quantizer
    meta = {"kind": "pq-index", "method": q.method, "m": q.m, "k": q.k, "dim": q.dim, "ntotal": index.ntotal,
            "nlist": getattr(index, "nlist", 0), **(metadata or {})}
    return pack.save(PQIndexModule(index), path, metadata=meta, level=level)


def load_index(path: str | os.PathLike) -> PQIndex | IVFPQIndex:
    """Read an index written by :func:`save_index` (checksums and shapes checked; no pickle)."""
    manifest = pack.read_manifest(path)
    if (manifest.get("metadata") or {}).get("kind") != "pq-index":
        raise PackError(f"{path} is a .cnz file but not a PQ index (build one with `compactnn pq build`)")
    module = pack.load(path)
    if not isinstance(module, PQIndexModule):
        raise PackError(f"{path}: holds a {type(module).__name__}, not a PQ index")
    return module.to_index(str(path))


__all__ = ["read_vecs", "write_vecs", "read_npy", "save_index", "load_index", "PQIndexModule"]
