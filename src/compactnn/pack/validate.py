"""One validation of a ``.cnz`` manifest before anything in it is used.

:func:`parse_json` turns the decompressed manifest into Python values under fixed limits, and :func:`check_manifest`
checks it against the schema of the format, so that decoding and rebuilding only ever see well-typed, bounded values.
Every failure is one :class:`~compactnn.errors.PackError` line.

Limits (all fixed; a file that exceeds one is refused, whatever its checksums say):

* manifest: at most :data:`MAX_MANIFEST` bytes decompressed, :data:`MAX_CONTAINERS` JSON objects/arrays,
  :data:`MAX_ITEMS` commas, nesting depth :data:`MAX_JSON_DEPTH`; no duplicate keys (``object_pairs_hook``), no
  ``NaN``/``Infinity``, no non-finite floats, ints of at most 30 digits;
* tensors: at most :data:`MAX_TENSORS`, each of at most :data:`MAX_NDIM` dims and :data:`MAX_NUMEL` elements; every
  codec's payload length is computed from its meta and shape and must equal ``payload_bytes`` exactly; the stored
  bytes must lie inside the data area;
* expansion, one fixed ratio for every codec and for zstd: a tensor's working size while decoding (its element
  count x :data:`WORK_BYTES`, the int64 index arrays the sparse and codebook decoders use) and its codec payload
  may each exceed :data:`EXPANSION` times its stored bytes by at most :data:`TENSOR_SLACK`; all tensors together
  may decode to at most :data:`EXPANSION` times the file size plus :data:`TOTAL_SLACK` bytes. Per codec, the
  inherent expansion is dense 1x, fp16 up to 4x, codebook/sparse indices up to 64x, and unbounded for a 1-value
  codebook, an all-zero sparse tensor or a zstd frame (1 GiB of zeros is 41 KB): the rule bounds them all, so a
  small file can never make ``load`` allocate much (an 8 KB file: at most ~16 MiB per tensor, ~40 MiB in all).
  The price: a float32 tensor more than 128x smaller on disk than dense (beyond the 8 MiB slack), such as a
  16M-weight layer pruned to 99.9 %, is refused as a bomb.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from ..errors import PackError
from .bits import packed_len, width

MAX_MANIFEST = 16 << 20
MAX_CONTAINERS = 1 << 18
MAX_ITEMS = 1 << 21
MAX_JSON_DEPTH = 160
MAX_TENSORS = 100_000
MAX_NDIM = 8
MAX_NUMEL = 1 << 34
EXPANSION = 1024
WORK_BYTES = 8
TENSOR_SLACK = 8 << 20
TOTAL_SLACK = 32 << 20
MAX_META_DEPTH = 3
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_HEX64 = re.compile(r"[0-9a-f]{64}")

ITEMSIZE = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
            "uint8": 1, "bool": 1}
QITEMSIZE = {"qint8": ("int8", -128, 127), "quint8": ("uint8", 0, 255), "qint32": ("int32", -2**31, 2**31 - 1)}
FLOATS = ("float64", "float32", "float16", "bfloat16")


def _fail(msg: str):
    raise PackError(msg)


# ------------------------------------------------------------------------------------------------------- JSON
def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            _fail(f"manifest has the key {key[:60]!r} twice in one object; the file is corrupted or forged")
        out[key] = value
    return out


def _constant(name):
    _fail(f"manifest holds {name}, which JSON does not allow; the file is corrupted")


def _float(text):
    value = float(text)
    if not math.isfinite(value):
        _fail(f"manifest holds the out-of-range number {text[:40]}; the file is corrupted")
    return value


def _int(text):
    if len(text) > 30:
        _fail("manifest holds an integer of more than 30 digits; the file is corrupted")
    return int(text)


def parse_json(text: bytes, where: str) -> Any:
    """Parse manifest JSON under the limits in the module docstring (checked on the bytes before parsing)."""
    if len(text) > MAX_MANIFEST:
        _fail(f"{where}: manifest is {len(text):,} bytes, more than {MAX_MANIFEST:,}; the file is corrupted")
    opens = text.count(b"{") + text.count(b"[")
    closes = text.count(b"}") + text.count(b"]")
    if opens > MAX_CONTAINERS or closes > MAX_CONTAINERS:
        _fail(f"{where}: manifest has more than {MAX_CONTAINERS:,} objects/lists; the file is corrupted")
    if text.count(b",") > MAX_ITEMS:
        _fail(f"{where}: manifest has more than {MAX_ITEMS:,} items; the file is corrupted")
    bare = _STRING.sub(b'""', text)
    arr = np.frombuffer(bare, dtype=np.uint8)
    at = np.flatnonzero((arr == 0x7B) | (arr == 0x5B) | (arr == 0x7D) | (arr == 0x5D))
    if at.size:
        step = np.where((arr[at] == 0x7B) | (arr[at] == 0x5B), 1, -1).astype(np.int32)
        if int(np.cumsum(step).max()) > MAX_JSON_DEPTH:
            _fail(f"{where}: manifest nests deeper than {MAX_JSON_DEPTH} levels; the file is corrupted")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_constant, parse_float=_float,
                          parse_int=_int)
    except PackError as err:
        raise PackError(f"{where}: {err}") from None
    except (ValueError, RecursionError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        msg = " ".join(str(err).split())[:120]
        raise PackError(f"{where}: manifest is not valid JSON ({type(err).__name__}: {msg}); "
                        f"the file is corrupted") from None


# ----------------------------------------------------------------------------------------------------- schema
def is_int(v) -> bool:
    return type(v) is int


def _int_in(v, lo, hi) -> bool:
    return type(v) is int and lo <= v <= hi


def _keys(d: dict, required: set, optional: set, where: str) -> None:
    missing = required - d.keys()
    if missing:
        _fail(f"{where} lacks {', '.join(sorted(missing))}; the file is corrupted")
    extra = d.keys() - required - optional
    if extra:
        _fail(f"{where} has unknown key(s) {', '.join(repr(k[:40]) for k in sorted(extra)[:3])}; the file is "
              f"corrupted or needs a newer compactnn")


def _is_json_value(v, depth=0) -> bool:
    if depth > MAX_JSON_DEPTH:
        return False
    if v is None or type(v) in (bool, int, float, str):
        return True
    if type(v) is list:
        return all(_is_json_value(x, depth + 1) for x in v)
    if type(v) is dict:
        return all(_is_json_value(x, depth + 1) for x in v.values())
    return False


MAX_INPUT_NUMEL = 1 << 24


def check_input_shape(value, where: str) -> tuple[int, ...]:
    """An ``input_shape`` (from metadata or a user): 1..5 ints >= 1 with at most 2**24 values per example."""
    if not (type(value) in (list, tuple) and 1 <= len(value) <= 5 and all(_int_in(v, 1, 1 << 24) for v in value)):
        _fail(f"{where}: input_shape must be a list of 1 to 5 positive ints, got {str(value)[:60]}")
    if math.prod(value) > MAX_INPUT_NUMEL:
        _fail(f"{where}: input_shape {list(value)} has {math.prod(value):,} values per example, more than "
              f"{MAX_INPUT_NUMEL:,}")
    return tuple(value)


def check_manifest(manifest: Any, where: str) -> None:
    """Check the manifest's top level and every tensor entry (types, bounds, payload sizes); see module docstring.

    The module tree under ``root`` is checked by :func:`compactnn.pack.spec.plan` when a model is rebuilt.
    """
    if type(manifest) is not dict:
        _fail(f"{where}: manifest is a {type(manifest).__name__}, not an object; the file is corrupted")
    _keys(manifest, {"format", "format_version", "root", "tensors", "data_bytes"},
          {"compactnn_version", "torch_version", "options", "metadata"}, f"{where}: manifest")
    if manifest["format"] != "cnz" or manifest["format_version"] != 1:
        _fail(f"{where}: manifest names format {str(manifest['format'])[:20]!r} version "
              f"{str(manifest['format_version'])[:20]}; expected cnz version 1")
    for key in ("compactnn_version", "torch_version"):
        if key in manifest and not (type(manifest[key]) is str and len(manifest[key]) <= 100):
            _fail(f"{where}: manifest {key} must be a short string; the file is corrupted")
    if "options" in manifest and type(manifest["options"]) is not dict:
        _fail(f"{where}: manifest options must be an object; the file is corrupted")
    meta = manifest.get("metadata", {})
    if type(meta) is not dict or not _is_json_value(meta):
        _fail(f"{where}: manifest metadata must be an object, got {type(meta).__name__}; the file is corrupted")
    if "input_shape" in meta:
        check_input_shape(meta["input_shape"], f"{where}: metadata")
    if type(manifest["root"]) is not dict:
        _fail(f"{where}: manifest root must be an object; the file is corrupted")
    if not _int_in(manifest["data_bytes"], 0, 1 << 50):
        _fail(f"{where}: manifest data_bytes must be an int >= 0; the file is corrupted")
    tensors = manifest["tensors"]
    if type(tensors) is not dict:
        _fail(f"{where}: manifest tensors must be an object; the file is corrupted")
    if len(tensors) > MAX_TENSORS:
        _fail(f"{where}: manifest lists {len(tensors):,} tensors, more than {MAX_TENSORS:,}")
    seen: dict[str, dict] = {}
    for name, entry in tensors.items():
        check_entry(name, entry, seen, manifest["data_bytes"])
        seen[name] = entry


_ENTRY = {"codec", "shape", "dtype", "bytes", "raw_bytes", "kind", "persistent", "requires_grad"}
_BLOB = {"offset", "zstd", "payload_bytes", "sha256", "meta"}


def numel(shape) -> int:
    return math.prod(shape)


def itemsize(dtype: str) -> int:
    return ITEMSIZE[dtype] if dtype in ITEMSIZE else ITEMSIZE[QITEMSIZE[dtype][0]]


def check_entry(name: str, entry: Any, earlier: dict, data_bytes: int) -> None:
    """Check one tensor entry; ``earlier`` holds the entries before it (aliases may only point back)."""
    what = f"tensor {name[:80]!r}"
    if len(name) > 1000:
        _fail(f"{what}...: name longer than 1000 characters; the file is corrupted")
    if type(entry) is not dict:
        _fail(f"{what} has a malformed manifest entry; the file is corrupted")
    codec = entry.get("codec")
    if codec != "alias" and codec not in ("dense", "fp16", "codebook", "sparse", "affine"):
        _fail(f"{what} uses unknown codec {str(codec)[:40]!r}; the file needs a newer compactnn or is corrupted")
    blob = _BLOB if codec != "alias" else set()
    try:
        _keys(entry, _ENTRY | blob | ({"alias"} if codec == "alias" else set()), set(), what)
    except PackError as err:
        raise PackError(f"{err} (malformed manifest entry)") from None
    shape, dtype = entry["shape"], entry["dtype"]
    if not (type(shape) is list and len(shape) <= MAX_NDIM and all(_int_in(s, 0, MAX_NUMEL) for s in shape)):
        _fail(f"{what}: shape must be a list of at most {MAX_NDIM} ints >= 0, got {str(shape)[:60]}")
    if numel(shape) > MAX_NUMEL:
        _fail(f"{what}: shape {shape} has more than {MAX_NUMEL:,} elements; the file is corrupted")
    if type(dtype) is not str or (dtype not in ITEMSIZE and dtype not in QITEMSIZE):
        _fail(f"{what}: unsupported dtype {str(dtype)[:30]!r} in manifest; supported: "
              f"{', '.join([*ITEMSIZE, *QITEMSIZE])}")
    if entry["kind"] not in ("parameter", "buffer") or type(entry["persistent"]) is not bool \
            or type(entry["requires_grad"]) is not bool:
        _fail(f"{what}: kind/persistent/requires_grad are malformed; the file is corrupted")
    if entry["requires_grad"] and dtype not in FLOATS:
        _fail(f"{what}: only float tensors can require gradients, not {dtype}; the file is corrupted")
    if entry["raw_bytes"] != numel(shape) * itemsize(dtype):
        _fail(f"{what}: raw_bytes {str(entry['raw_bytes'])[:30]} does not match shape {shape} of {dtype}; "
              f"the file is corrupted")
    if codec == "alias":
        first = entry["alias"]
        if type(first) is not str or first not in earlier or earlier[first]["codec"] == "alias":
            _fail(f"{what} aliases unknown tensor {str(first)[:80]!r}; the file is corrupted")
        if earlier[first]["shape"] != shape or earlier[first]["dtype"] != dtype or entry["bytes"] != 0:
            _fail(f"{what} aliases {first[:80]!r} but its shape or dtype differs; the file is corrupted")
        return
    offset, nbytes, pbytes = entry["offset"], entry["bytes"], entry["payload_bytes"]
    if not (_int_in(offset, 0, data_bytes) and _int_in(nbytes, 0, data_bytes) and offset + nbytes <= data_bytes):
        _fail(f"{what} lies outside the data area; the file is corrupted")
    if type(entry["zstd"]) is not bool or type(entry["sha256"]) is not str or not _HEX64.fullmatch(entry["sha256"]):
        _fail(f"{what} has a malformed manifest entry (zstd/sha256); the file is corrupted")
    if type(entry["meta"]) is not dict:
        _fail(f"{what} has a malformed manifest entry (meta); the file is corrupted")
    try:
        expect = payload_size({"codec": codec, **entry["meta"]}, dtype, shape)
    except PackError as err:
        raise PackError(f"{what}: {err}") from None
    if pbytes != expect:
        _fail(f"{what}: payload_bytes {str(pbytes)[:30]} does not match its codec, which needs {expect}; "
              f"the file is corrupted")
    if not entry["zstd"] and nbytes != pbytes:
        _fail(f"{what}: stores {nbytes} bytes uncompressed but its payload is {pbytes}; the file is corrupted")
    work = numel(shape) * WORK_BYTES
    if work > EXPANSION * nbytes + TENSOR_SLACK or pbytes > EXPANSION * nbytes + TENSOR_SLACK:
        _fail(f"{what}: {nbytes:,} stored bytes would decode to {numel(shape):,} values ({pbytes:,} payload "
              f"bytes), more than {EXPANSION}x plus {TENSOR_SLACK >> 20} MiB allows; refused as a decompression bomb")


def _parts(meta: dict, n: int) -> list[int]:
    parts = meta.get("parts")
    if not (type(parts) is list and len(parts) == n and all(_int_in(p, 0, 1 << 50) for p in parts)):
        _fail(f"codec parts {str(parts)[:40]} are malformed; file is corrupted")
    return parts


def payload_size(meta: dict, dtype: str, shape: list, depth: int = 0) -> int:
    """Exact payload length in bytes that ``meta`` needs for ``shape`` of ``dtype``; PackError if the meta is not
    one the encoder can write (wrong keys or types, out-of-range widths, counts above the element count)."""
    count = numel(shape)
    codec = meta.get("codec")
    if codec == "affine":
        if depth or dtype not in QITEMSIZE:
            _fail(f"the affine codec needs a quantized dtype, not {dtype!r}; file is corrupted")
        int_dtype = QITEMSIZE[dtype][0]
        scheme = meta.get("scheme")
        if scheme == "per_tensor":
            _keys(meta, {"codec", "scheme", "scale", "zero_point", "ints", "parts"}, set(), "affine meta")
            check_scale(meta["scale"])
            check_zero_point(meta["zero_point"], dtype)
            parts = _parts(meta, 1)
            if parts[0] != _flat_size(meta["ints"], int_dtype, count, 1):
                _fail("affine integer part has the wrong length; file is corrupted")
            return parts[0]
        if scheme == "per_channel":
            _keys(meta, {"codec", "scheme", "axis", "channels", "ints", "zero_points", "parts"}, set(), "affine meta")
            axis, ch = meta["axis"], meta["channels"]
            if not (_int_in(axis, 0, len(shape) - 1) and shape[axis] == ch):
                _fail("per-channel axis does not fit the tensor shape; file is corrupted")
            parts = _parts(meta, 3)
            if parts[0] != _flat_size(meta["ints"], int_dtype, count, 1) or parts[1] != 8 * ch \
                    or parts[2] != _flat_size(meta["zero_points"], "int64", ch, 1):
                _fail("affine parts have the wrong lengths; file is corrupted")
            return sum(parts)
        _fail(f"unknown quantization scheme {str(scheme)[:30]!r}; file is corrupted")
    if dtype not in ITEMSIZE:
        _fail(f"codec {str(codec)[:30]!r} cannot hold dtype {dtype!r}; file is corrupted")
    return _flat_size(meta, dtype, count, depth)


def _flat_size(meta: Any, dtype: str, count: int, depth: int) -> int:
    if type(meta) is not dict:
        _fail("codec meta must be an object; file is corrupted")
    if depth > MAX_META_DEPTH:
        _fail("codec nesting is too deep; file is corrupted")
    codec = meta.get("codec")
    size = ITEMSIZE[dtype]
    if codec == "dense":
        _keys(meta, {"codec"}, set(), "dense meta")
        return count * size
    if codec == "fp16":
        _keys(meta, {"codec"}, set(), "fp16 meta")
        if dtype not in ("float32", "float64", "bfloat16"):
            _fail(f"fp16 data cannot hold {dtype}; file is corrupted")
        return count * 2
    if codec == "codebook":
        _keys(meta, {"codec", "k", "bits", "values", "parts"}, set(), "codebook meta")
        k, bits = meta["k"], meta["bits"]
        if not (_int_in(k, 1, 2**16) and k <= max(count, 1) and _int_in(bits, 0, 16) and bits == width(k - 1)):
            _fail(f"codebook of {str(k)[:20]} values at {str(bits)[:20]} bits is invalid for {count} elements; "
                  f"file is corrupted")
        if meta["values"].get("codec") not in ("dense", "fp16") if type(meta["values"]) is dict else True:
            _fail("codebook values must be dense or fp16; file is corrupted")
        parts = _parts(meta, 2)
        if parts[0] != packed_len(count, bits) or parts[1] != _flat_size(meta["values"], dtype, k, depth + 1):
            _fail("codebook parts have the wrong lengths; file is corrupted")
        return sum(parts)
    if codec == "sparse":
        index = meta.get("index")
        nnz = meta.get("nnz")
        if not _int_in(nnz, 0, count):
            _fail(f"sparse nnz {str(nnz)[:20]} does not fit {count} elements; file is corrupted")
        if index == "relative":
            _keys(meta, {"codec", "index", "bits", "entries", "nnz", "values", "parts"}, set(), "sparse meta")
            bits, entries = meta["bits"], meta["entries"]
            # each code is a value or a filler that skips 2**bits - 1 >= 1 zeros, so entries <= count
            if not (_int_in(bits, 1, 62) and _int_in(entries, nnz, count)):
                _fail(f"sparse index of {str(entries)[:20]} codes at {str(bits)[:20]} bits is invalid for {count} "
                      f"elements; file is corrupted")
            idx = packed_len(entries, bits)
        elif index == "bitmask":
            _keys(meta, {"codec", "index", "nnz", "values", "parts"}, set(), "sparse meta")
            idx = packed_len(count, 1)
        else:
            _fail(f"unknown sparse index {str(index)[:30]!r}; file is corrupted")
        if meta["values"].get("codec") not in ("dense", "fp16", "codebook") if type(meta["values"]) is dict else True:
            _fail("sparse values must be dense, fp16 or codebook; file is corrupted")
        parts = _parts(meta, 2)
        if parts[0] != idx or parts[1] != _flat_size(meta["values"], dtype, nnz, depth + 1):
            _fail("sparse parts have the wrong lengths; file is corrupted")
        return sum(parts)
    _fail(f"unknown codec {str(codec)[:30]!r}; the file needs a newer compactnn or is corrupted")


def check_scale(text: Any) -> float:
    """A per-tensor affine scale: a float hex string of a finite value in (0, 3.4e38]."""
    try:
        value = float.fromhex(text) if type(text) is str and len(text) <= 40 else math.nan
    except (ValueError, OverflowError):
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 3.4e38):
        _fail(f"affine scale {str(text)[:40]!r} is not a finite positive number; file is corrupted")
    return value


def check_zero_point(value: Any, dtype: str) -> int:
    """An affine zero point: an int in the range of ``dtype``'s integers."""
    _, lo, hi = QITEMSIZE[dtype]
    if not _int_in(value, lo, hi):
        _fail(f"affine zero point {str(value)[:30]} is outside {lo}..{hi} for {dtype}; file is corrupted")
    return value


def budget(manifest: dict, file_bytes: int, where: str) -> None:
    """Refuse a file whose tensors together decode to more than :data:`EXPANSION` x its size + :data:`TOTAL_SLACK`."""
    total = sum(numel(e["shape"]) * itemsize(e["dtype"]) for e in manifest["tensors"].values()
                if e["codec"] != "alias")
    if total > EXPANSION * file_bytes + TOTAL_SLACK:
        _fail(f"{where}: {file_bytes:,} bytes would decode to {total:,} bytes of tensors, more than {EXPANSION}x "
              f"plus {TOTAL_SLACK >> 20} MiB; refused as a decompression bomb")
