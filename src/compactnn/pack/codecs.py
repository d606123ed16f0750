"""Exact tensor codecs for the ``.cnz`` format.

Every codec works on a tensor's *bit patterns* (its elements reinterpreted as unsigned integers of the same width),
so a decoded tensor is bit-identical to the one encoded: same dtype, shape and bits, which keeps ``-0.0`` apart from
``0.0`` and keeps NaN payloads. "Zero" for the sparse codec means the all-zero bit pattern (``+0.0``, ``0``,
``False``); ``-0.0`` is stored as a nonzero value. The only lossy step is ``encode_tensor(fp16=True)``, which rounds
float32/float64 tensors to the nearest fp16 value before the exact search (a tensor whose finite values would
overflow fp16 is kept exact).

Codecs (``meta["codec"]``):

* ``dense``: raw little-endian bytes of any supported dtype.
* ``fp16``: float32/float64/bfloat16 values that fp16 represents exactly, stored as fp16 bits.
* ``codebook``: K unique values (K <= 2**16) and their indices packed at ``b = ceil(log2 K)`` bits (0 bits if K == 1).
* ``sparse``: positions of the nonzero elements, as a relative index (Deep Compression style: b-bit gap codes, the
  code ``2**b - 1`` being a filler that skips that many zeros and, unlike Deep Compression's filler, stores no
  value; b chosen per tensor) or as a bitmask, whichever is
  smaller; the nonzero values are encoded by the best of dense / fp16 / codebook.
* ``affine``: torch quantized tensors (per-tensor or per-channel affine, qint8 / quint8 / qint32): the integer
  representation (encoded by the best exact codec), scale(s), zero point(s) and axis. Round trip keeps ``int_repr``,
  ``q_scale`` / ``q_zero_point`` (or per-channel scales, zero points and axis) exactly.

Auto selection tries the applicable codecs and keeps the one whose payload is smallest after a fast zstd pass
(``zstandard``, level 3); the container then compresses the winner at the requested level.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
import zstandard

from ..errors import PackError
from .bits import pack_bits, packed_len, unpack_bits, width
from .validate import QITEMSIZE as QITEMSIZE_RANGE
from .validate import check_scale, check_zero_point

DTYPES: dict[str, torch.dtype] = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8,
    "uint8": torch.uint8, "bool": torch.bool,
}
QDTYPES: dict[str, tuple[torch.dtype, torch.dtype]] = {  # quantized dtype -> (torch dtype, int_repr dtype)
    "qint8": (torch.qint8, torch.int8), "quint8": (torch.quint8, torch.uint8), "qint32": (torch.qint32, torch.int32),
}
CODECS = ("dense", "fp16", "codebook", "sparse", "affine")
_U = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}
_F = {4: "<f4", 8: "<f8"}
_SIGNED = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_LOCAL = threading.local()
_MAX_DEPTH = 3


@dataclass
class Encoded:
    """A codec's output: JSON-safe ``meta`` (with ``meta["codec"]``) and the binary ``payload``."""

    meta: dict
    payload: bytes


def dtype_name(dtype: torch.dtype) -> str:
    """Manifest name of a torch dtype, e.g. ``"float32"``."""
    return str(dtype).removeprefix("torch.")


def dtype_from_name(name: str) -> torch.dtype:
    """Torch dtype for a manifest dtype name; PackError if unknown."""
    if name in DTYPES:
        return DTYPES[name]
    if name in QDTYPES:
        return QDTYPES[name][0]
    raise PackError(f"unsupported dtype {name!r} in manifest; supported: {', '.join([*DTYPES, *QDTYPES])}")


def to_bits(t: torch.Tensor) -> np.ndarray:
    """Flat NumPy array of the tensor's bit patterns as unsigned integers of the element's width."""
    t = t.detach().cpu().contiguous().reshape(-1)
    if t.dtype not in DTYPES.values():
        raise PackError(f"cannot pack tensors of dtype {t.dtype}; convert it to one of {', '.join(DTYPES)}")
    size = t.element_size()
    if size == 1:
        return t.view(torch.uint8).numpy()
    return t.view(_SIGNED[size]).numpy().view(_U[size])


def from_bits(u: np.ndarray, dtype: torch.dtype, shape) -> torch.Tensor:
    """Inverse of :func:`to_bits`: a new tensor of ``dtype`` and ``shape`` from bit patterns ``u``."""
    size = dtype.itemsize
    arr = np.asarray(u).astype(_U[size])  # always a fresh, writable copy
    if arr.size != math.prod(shape):
        raise PackError(f"decoded {arr.size} values for shape {list(shape)}; file is corrupted")
    if size == 1:
        t = torch.from_numpy(arr)
    else:
        t = torch.from_numpy(arr.view(f"<i{size}")).view(dtype)
    return t.view(dtype).reshape(tuple(shape))


def compressor(level: int) -> zstandard.ZstdCompressor:
    """A zstd compressor for ``level``, cached per thread (compressor objects are not thread-safe)."""
    cache = _LOCAL.__dict__.setdefault("compressors", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level)
    return cache[level]


def cost(payload: bytes) -> int:
    """Bytes the payload is expected to take after the zstd stage (fast level), used to rank candidates."""
    if len(payload) < 32:
        return len(payload)
    return min(len(payload), len(compressor(3).compress(payload)))


def _best(cands: list[Encoded | None]) -> Encoded:
    cands = [c for c in cands if c is not None]
    return min(cands, key=lambda c: cost(c.payload))  # ties keep the earlier (simpler) codec


# ----------------------------------------------------------------------------------------------------- encoders
def _dense(u: np.ndarray) -> Encoded:
    return Encoded({"codec": "dense"}, u.astype(_U[u.dtype.itemsize], copy=False).tobytes())


def _to_half(u: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """fp16 bit patterns of float bit patterns ``u`` (NumPy for float32/64, torch for bfloat16)."""
    if dtype == torch.bfloat16:
        return to_bits(from_bits(u, dtype, (u.size,)).to(torch.float16))
    return u.view(_F[dtype.itemsize]).astype(np.float16).view(np.uint16)


def _from_half(h: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    """Inverse widening of :func:`_to_half`; the exactness check and the decoder both use it."""
    if dtype == torch.bfloat16:
        return to_bits(from_bits(h, torch.float16, (h.size,)).to(dtype))
    return h.view(np.float16).astype(_F[dtype.itemsize]).view(_U[dtype.itemsize])


def _fp16(u: np.ndarray, dtype: torch.dtype) -> Encoded | None:
    if dtype not in (torch.float32, torch.float64, torch.bfloat16):
        return None
    if dtype != torch.bfloat16:
        f = u.view(_F[dtype.itemsize])
        if np.any(np.isfinite(f) & (np.abs(f) > 65504)):  # overflows fp16 (and would warn when cast)
            return None
    half = _to_half(u, dtype)
    if not np.array_equal(_from_half(half, dtype), u):
        return None
    return Encoded({"codec": "fp16"}, half.astype("<u2").tobytes())


def _codebook(u: np.ndarray, dtype: torch.dtype) -> Encoded | None:
    if u.size < 2:
        return None
    uniq, inv = np.unique(u, return_inverse=True)
    k = len(uniq)
    if k > 2**16 or k >= u.size:
        return None
    bits = width(k - 1)
    idx = pack_bits(inv.reshape(-1), bits)
    vals = _best([_dense(uniq), _fp16(uniq, dtype)])
    meta = {"codec": "codebook", "k": k, "bits": bits, "values": vals.meta, "parts": [len(idx), len(vals.payload)]}
    return Encoded(meta, idx + vals.payload)


def _relative_bits(gaps: np.ndarray) -> tuple[int, int]:
    """Best code width for zero-run lengths ``gaps``: returns (bits, number of codes)."""
    if gaps.size == 0:
        return 1, 0
    best = None
    for b in range(1, min(width(int(gaps.max())) + 2, 63)):
        entries = gaps.size + int((gaps // (2**b - 1)).sum())
        if best is None or packed_len(entries, b) < packed_len(best[1], best[0]):
            best = (b, entries)
    return best


def _sparse(u: np.ndarray, dtype: torch.dtype, index: str | None = None) -> Encoded | None:
    n = u.size
    mask = u != 0
    pos = np.flatnonzero(mask)
    nnz = pos.size
    if n == 0 or (nnz == n and index is None):
        return None
    gaps = np.diff(pos, prepend=-1) - 1  # zeros before each nonzero
    bits, entries = _relative_bits(gaps)
    if index is None:
        index = "relative" if packed_len(entries, bits) < packed_len(n, 1) else "bitmask"
    if index == "relative":
        m = 2**bits - 1
        fill = gaps // m
        codes = np.full(entries, m, dtype=np.uint64)
        codes[np.cumsum(fill + 1) - 1] = gaps % m
        idx = pack_bits(codes, bits)
        meta = {"codec": "sparse", "index": "relative", "bits": bits, "entries": entries}
    elif index == "bitmask":
        idx = np.packbits(mask, bitorder="little").tobytes()
        meta = {"codec": "sparse", "index": "bitmask"}
    else:
        raise PackError(f"unknown sparse index {index!r}; use 'relative' or 'bitmask'")
    nz = u[pos]
    vals = _best([_dense(nz), _fp16(nz, dtype), _codebook(nz, dtype)])
    meta.update(nnz=int(nnz), values=vals.meta, parts=[len(idx), len(vals.payload)])
    return Encoded(meta, idx + vals.payload)


def _affine(t: torch.Tensor) -> Encoded:
    scheme = t.qscheme()
    ints = encode_tensor(t.int_repr())
    if scheme == torch.per_tensor_affine:
        meta = {"codec": "affine", "scheme": "per_tensor", "scale": float(t.q_scale()).hex(),
                "zero_point": int(t.q_zero_point()), "ints": ints.meta, "parts": [len(ints.payload)]}
        return Encoded(meta, ints.payload)
    if scheme == torch.per_channel_affine:
        scales = _dense(to_bits(t.q_per_channel_scales().to(torch.float64)))
        zps = encode_tensor(t.q_per_channel_zero_points().to(torch.int64))
        meta = {"codec": "affine", "scheme": "per_channel", "axis": int(t.q_per_channel_axis()),
                "channels": int(t.shape[t.q_per_channel_axis()]), "ints": ints.meta, "zero_points": zps.meta,
                "parts": [len(ints.payload), len(scales.payload), len(zps.payload)]}
        return Encoded(meta, ints.payload + scales.payload + zps.payload)
    raise PackError(f"quantization scheme {scheme} is not supported; use per-tensor or per-channel affine")


def encode_tensor(t: torch.Tensor, *, fp16: bool = False, codec: str | None = None) -> Encoded:
    """Encode one tensor exactly (or fp16-rounded when ``fp16=True``).

    Args:
        t: the tensor; any dtype in ``DTYPES`` or a torch quantized tensor (qint8/quint8/qint32).
        fp16: round float32/float64 tensors to fp16 first (lossy); other dtypes are unaffected.
        codec: force one codec instead of the automatic choice: ``"dense"``, ``"fp16"``, ``"codebook"``,
            ``"sparse"``, ``"sparse-relative"``, ``"sparse-bitmask"`` or ``"affine"``. PackError if not applicable.

    Returns:
        :class:`Encoded` whose meta names the codec; decode with :func:`decode_tensor`.
    """
    if t.is_quantized:
        if codec not in (None, "affine"):
            raise PackError(f"quantized tensors only use the 'affine' codec, not {codec!r}")
        return _affine(t.detach().cpu())
    if codec == "affine":
        raise PackError("the 'affine' codec needs a torch quantized tensor")
    dtype = t.dtype
    if fp16 and dtype in (torch.float32, torch.float64):
        rounded = t.detach().cpu().to(torch.float16).to(dtype)
        if torch.equal(torch.isfinite(rounded), torch.isfinite(t.detach().cpu())):
            t = rounded
    u = to_bits(t)
    makers = {
        "dense": lambda: _dense(u), "fp16": lambda: _fp16(u, dtype), "codebook": lambda: _codebook(u, dtype),
        "sparse": lambda: _sparse(u, dtype), "sparse-relative": lambda: _sparse(u, dtype, "relative"),
        "sparse-bitmask": lambda: _sparse(u, dtype, "bitmask"),
    }
    if codec is None:
        return _best([makers[name]() for name in ("dense", "fp16", "codebook", "sparse")])
    if codec not in makers:
        raise PackError(f"unknown codec {codec!r}; choose from {', '.join(makers)}, affine")
    enc = makers[codec]()
    if enc is None:
        raise PackError(f"codec {codec!r} does not apply to this tensor (dtype {dtype}, {u.size} values)")
    return enc


# ----------------------------------------------------------------------------------------------------- decoders
def _split(payload: bytes, parts) -> list[bytes]:
    if not isinstance(parts, list) or not all(isinstance(p, int) and p >= 0 for p in parts) \
            or sum(parts) != len(payload):
        raise PackError(f"codec parts {parts!r} do not add up to the {len(payload)}-byte payload; file is corrupted")
    out, at = [], 0
    for p in parts:
        out.append(payload[at:at + p])
        at += p
    return out


def _decode_flat(meta: dict, payload: bytes, dtype: torch.dtype, count: int, depth: int = 0) -> np.ndarray:
    if depth > _MAX_DEPTH:
        raise PackError("codec nesting is too deep; file is corrupted")
    name = meta.get("codec")
    size = dtype.itemsize
    if name == "dense":
        if len(payload) != count * size:
            raise PackError(f"dense data holds {len(payload)} bytes, expected {count * size}; file is corrupted")
        return np.frombuffer(payload, dtype=_U[size])
    if name == "fp16":
        if dtype not in (torch.float32, torch.float64, torch.bfloat16) or len(payload) != count * 2:
            raise PackError(f"fp16 data does not fit {count} values of {dtype}; file is corrupted")
        return _from_half(np.frombuffer(payload, dtype="<u2").astype(np.uint16), dtype)
    if name == "codebook":
        k, bits = int(meta["k"]), int(meta["bits"])
        if not 1 <= k <= 2**16 or bits != width(k - 1):
            raise PackError(f"codebook of {k} values at {bits} bits is invalid; file is corrupted")
        idx_data, val_data = _split(payload, meta["parts"])
        idx = unpack_bits(idx_data, bits, count)
        if count and int(idx.max()) >= k:
            raise PackError("codebook index out of range; file is corrupted")
        return _decode_flat(meta["values"], val_data, dtype, k, depth + 1)[idx]
    if name == "sparse":
        nnz = int(meta["nnz"])
        idx_data, val_data = _split(payload, meta["parts"])
        if meta["index"] == "relative":
            bits, entries = int(meta["bits"]), int(meta["entries"])
            if not (1 <= bits <= 62 and 0 <= entries <= count):
                raise PackError(f"sparse index of {entries} codes at {bits} bits is invalid; file is corrupted")
            codes = unpack_bits(idx_data, bits, entries)  # uint64, each < 2**62
            m = 2**bits - 1
            real = codes != np.uint64(m)
            if entries and int(codes.max(initial=0, where=real)) >= max(count, 1):
                raise PackError("sparse gap code skips past the end of the tensor; file is corrupted")
            steps = codes  # in place: step = code + 1 for a value, m for a filler
            np.add(steps, np.uint64(1), out=steps, where=real)
            # every step is >= 1 and the last position must be < count: check the total in float64 first, so the
            # int64 running sum below cannot wrap to negative positions (64-bit codes of a forged file)
            if entries and float(np.sum(steps, dtype=np.float64)) > count:
                raise PackError("sparse gap codes run past the end of the tensor; file is corrupted")
            run = steps.view(np.int64)
            np.cumsum(run, out=run)
            run -= 1
            pos = run[real]
            del steps, run, codes
        elif meta["index"] == "bitmask":
            if len(idx_data) != packed_len(count, 1):
                raise PackError("sparse bitmask has the wrong length; file is corrupted")
            pos = np.flatnonzero(np.unpackbits(np.frombuffer(idx_data, np.uint8), count=count, bitorder="little"))
        else:
            raise PackError(f"unknown sparse index {meta['index']!r}; file is corrupted")
        if pos.size != nnz or (nnz and (pos[-1] >= count or pos[0] < 0)):
            raise PackError("sparse positions do not fit the tensor; file is corrupted")
        out = np.zeros(count, dtype=_U[size])
        out[pos] = _decode_flat(meta["values"], val_data, dtype, nnz, depth + 1)
        return out
    raise PackError(f"unknown codec {name!r}; the file needs a newer compactnn or is corrupted")


def _decode_affine(meta: dict, payload: bytes, qdtype: str, shape: list[int]) -> torch.Tensor:
    if qdtype not in QDTYPES:
        raise PackError(f"the affine codec needs a quantized dtype, not {qdtype!r}; file is corrupted")
    int_dtype = QDTYPES[qdtype][1]
    parts = _split(payload, meta["parts"])
    ints = from_bits(_decode_flat(meta["ints"], parts[0], int_dtype, math.prod(shape)), int_dtype, shape)
    if meta["scheme"] == "per_tensor":
        scale = check_scale(meta["scale"])
        zero_point = check_zero_point(meta["zero_point"], qdtype)
        return torch._make_per_tensor_quantized_tensor(ints, scale, zero_point)
    if meta["scheme"] == "per_channel":
        axis, ch = int(meta["axis"]), int(meta["channels"])
        if not 0 <= axis < len(shape) or shape[axis] != ch or len(parts) != 3:
            raise PackError("per-channel axis does not fit the tensor shape; file is corrupted")
        scales = from_bits(_decode_flat({"codec": "dense"}, parts[1], torch.float64, ch), torch.float64, (ch,))
        zps = from_bits(_decode_flat(meta["zero_points"], parts[2], torch.int64, ch), torch.int64, (ch,))
        if ch and not bool(torch.isfinite(scales).all() and (scales > 0).all() and (scales <= 3.4e38).all()):
            raise PackError("per-channel affine scales must be finite and positive; file is corrupted")
        _, lo, hi = QITEMSIZE_RANGE[qdtype]
        if ch and not bool(((zps >= lo) & (zps <= hi)).all()):
            raise PackError(f"per-channel zero points are outside {lo}..{hi} for {qdtype}; file is corrupted")
        return torch._make_per_channel_quantized_tensor(ints, scales, zps, axis)
    raise PackError(f"unknown quantization scheme {meta['scheme']!r}; file is corrupted")


def decode_tensor(meta: dict, payload: bytes, shape, dtype: str) -> torch.Tensor:
    """Decode a tensor written by :func:`encode_tensor`.

    Args:
        meta: the codec meta (``Encoded.meta``).
        payload: the codec payload (``Encoded.payload``), already zstd-decompressed.
        shape: the tensor's shape (list of ints).
        dtype: manifest dtype name, e.g. ``"float32"`` or ``"qint8"``.

    Returns:
        A new tensor, bit-identical to the encoded one. Malformed input raises PackError.
    """
    try:
        if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
            raise PackError(f"invalid shape {shape!r}; file is corrupted")
        if not isinstance(meta, dict) or meta.get("codec") not in CODECS:
            name = meta.get("codec") if isinstance(meta, dict) else meta
            raise PackError(f"unknown codec {name!r}; the file needs a newer compactnn or is corrupted")
        if meta["codec"] == "affine":
            return _decode_affine(meta, payload, dtype, list(shape))
        torch_dtype = dtype_from_name(dtype)
        if dtype not in DTYPES:
            raise PackError(f"codec {meta['codec']!r} cannot hold dtype {dtype!r}; file is corrupted")
        flat = _decode_flat(meta, payload, torch_dtype, math.prod(shape))
        return from_bits(flat, torch_dtype, shape)
    except PackError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, OverflowError, AttributeError) as e:
        msg = " ".join(str(e).split())[:200]
        raise PackError(f"malformed codec data ({type(e).__name__}: {msg}); file is corrupted") from None
