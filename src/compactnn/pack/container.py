"""The ``.cnz`` container: save, load and read the manifest of packed models. Never pickles.

File layout (all integers little-endian)::

    offset 0   8 bytes   magic  b"\\x89CNZ\\r\\n\\x1a\\n"
           8   uint16    format version (1)
          10   uint16    flags (0, reserved)
          12   uint64    M = stored manifest length
          20   32 bytes  SHA-256 of the stored manifest
          52   M bytes   manifest: UTF-8 JSON, zstd-compressed
        52+M   ...       tensor blobs, back to back (``manifest["data_bytes"]`` in total)

Each blob is one tensor's codec payload, zstd-compressed (``zstandard``) when that makes it smaller. The manifest
holds, per blob, its offset (from the start of the blob area), stored length, SHA-256 and zstd flag. Candidate codecs
are ranked with a fast zstd level (3); the winner is then compressed at ``level``, except blobs that the fast pass
shrinks by less than 20% (float mantissa noise), which get at most level 9: levels past 12 are 10-50x slower there
and gain nothing (often lose a few bytes). The smallest of the tried outputs is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import sys

import torch
import zstandard
from torch import nn

from ..errors import OutputError, PackError
from ..files import atomic_write_bytes, open_regular
from . import codecs, spec, validate

MAGIC = b"\x89CNZ\r\n\x1a\n"
VERSION = 1
_HEADER = struct.Struct("<8sHHQ32s")


def _compress(payload: bytes, level: int) -> tuple[bytes, bool]:
    if level == 0 or not payload:
        return payload, False
    fast = codecs.compressor(min(level, 3)).compress(payload)
    best = fast
    if level > 3:  # blobs the fast pass barely shrinks (float noise) gain nothing past level 9, slowly
        structured = len(fast) < 0.8 * len(payload)
        strong = codecs.compressor(level if structured else min(level, 9)).compress(payload)
        best = min(fast, strong, key=len)
    return (best, True) if len(best) < len(payload) else (payload, False)


def _build(model: nn.Module, fp16: bool, level: int, metadata: dict | None = None) -> tuple[bytes, dict]:
    if not isinstance(model, nn.Module):
        raise PackError(f"save() needs an nn.Module, got {type(model).__name__}")
    if not (isinstance(level, int) and 0 <= level <= 22):
        raise PackError(f"zstd level must be an int in 0..22 (0 = no compression), got {level!r}")
    root, refs = spec.describe(model)
    entries, blobs, offset = {}, [], 0
    for ref in refs:
        t = ref["tensor"]
        entry = {"codec": "alias", "shape": list(t.shape), "dtype": codecs.dtype_name(t.dtype), "bytes": 0,
                 "raw_bytes": t.numel() * t.element_size(), "kind": ref["kind"], "persistent": ref["persistent"],
                 "requires_grad": ref["requires_grad"]}
        if ref["alias"] is not None:
            entry["alias"] = ref["alias"]
        else:
            enc = codecs.encode_tensor(t, fp16=fp16)
            stored, zipped = _compress(enc.payload, level)
            meta = dict(enc.meta)
            entry.update(codec=meta.pop("codec"), bytes=len(stored), offset=offset, zstd=zipped,
                         payload_bytes=len(enc.payload), sha256=hashlib.sha256(stored).hexdigest(), meta=meta)
            blobs.append(stored)
            offset += len(stored)
        entries[ref["name"]] = entry
    manifest = {
        "format": "cnz", "format_version": VERSION,
        "compactnn_version": getattr(sys.modules.get("compactnn"), "__version__", "unknown"),
        "torch_version": torch.__version__, "options": {"fp16": bool(fp16), "level": level},
        "root": root, "tensors": entries, "data_bytes": offset, "metadata": dict(metadata or {}),
    }
    try:
        text = json.dumps(manifest, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as err:
        raise PackError(f"metadata must be JSON-safe (str, numbers, lists, dicts): {err}") from None
    stored = codecs.compressor(max(level, 3)).compress(text)
    header = _HEADER.pack(MAGIC, VERSION, 0, len(stored), hashlib.sha256(stored).digest())
    return header + stored + b"".join(blobs), manifest


def _summary(manifest: dict, path: str, file_bytes: int) -> dict:
    return {**manifest, "path": path, "file_bytes": file_bytes,
            "manifest_bytes": file_bytes - _HEADER.size - manifest["data_bytes"]}


def save(model: nn.Module, path, *, fp16: bool = False, level: int = 19, metadata: dict | None = None) -> dict:
    """Write ``model`` to a ``.cnz`` file atomically (temp file in the same folder, then ``os.replace``).

    Args:
        model: the module to save. Its classes must be allow-listed to load without a skeleton; its plain
            attributes must be JSON-safe; parametrized or ``torch.nn.utils.prune``-d modules are refused.
        path: destination file (str or PathLike); its folder must exist.
        fp16: round float32/float64 tensors to fp16 (lossy, about half the size); default keeps every bit.
        level: zstd level 1..22 for the blobs and manifest; 0 stores blobs uncompressed.
        metadata: JSON-safe facts to keep beside the model (the CLI stores ``model``, ``data``, ``input_shape``);
            :func:`read_manifest` returns them under ``"metadata"``.

    Returns:
        The manifest as :func:`read_manifest` returns it.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OutputError(f"cannot write {path}: folder {folder} does not exist; create it first")
    data, manifest = _build(model, fp16, level, metadata)  # fails before anything touches the disk
    atomic_write_bytes(path, data)
    return _summary(manifest, path, len(data))


def tensor_bytes(model: nn.Module, *, fp16: bool = False, level: int = 19) -> dict[str, int]:
    """Stored bytes per tensor, as :func:`save` stores them. Keys are state_dict keys; a tied tensor counts 0 after
    its first key, and a module reachable at two paths is listed under its first path only.

    Args:
        model: the module.
        fp16: as in :func:`save`.
        level: as in :func:`save`.
    """
    _, manifest = _build(model, fp16, level)
    return {name: e["bytes"] for name, e in manifest["tensors"].items()}


def packed_size(model: nn.Module, *, fp16: bool = False, level: int = 19) -> int:
    """Size in bytes of the file :func:`save` would write (what ``os.path.getsize`` reports), without writing it.

    Args:
        model: the module.
        fp16: as in :func:`save`.
        level: as in :func:`save`.
    """
    data, _ = _build(model, fp16, level)
    return len(data)


MAX_FILE = 1 << 36  # 64 GiB: larger files are refused before reading


class _Source:
    """An opened, header-checked ``.cnz`` file: its checked manifest and the blob reader."""

    def __init__(self, reader, manifest: dict, mlen: int):
        self.reader, self.manifest, self.mlen = reader, manifest, mlen
        self.base = _HEADER.size + mlen

    def blob(self, offset: int, nbytes: int) -> bytes:
        data = self.reader.read_at(self.base + offset, nbytes)
        if len(data) != nbytes:
            raise PackError(f"{self.reader.path} changed while it was read; try again")
        return data


def _open(path) -> _Source:
    """Open and validate a ``.cnz`` file: regular file, header, manifest (checksum, size cap, schema), length.

    Nothing is read before the file is known to be a regular file of acceptable size; the magic, version and flags
    are checked before the manifest is read; the manifest's decompressed size is known (zstd frame header) and
    capped before it is decompressed. The caller closes ``source.reader``.
    """
    path = os.fspath(path)
    reader = open_regular(path, ".cnz file", PackError, MAX_FILE)
    try:
        raw = reader.read_at(0, _HEADER.size)
        if len(raw) < _HEADER.size:
            if raw[:8] == MAGIC[:len(raw[:8])] and raw:
                raise PackError(f"{path} is truncated ({len(raw)} bytes, the header alone needs {_HEADER.size})")
            raise PackError(f"{path} is not a .cnz file (wrong magic bytes)")
        magic, version, flags, mlen, msha = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise PackError(f"{path} is not a .cnz file (wrong magic bytes)")
        if version != VERSION:
            raise PackError(f"{path} uses .cnz format version {version}; this compactnn reads version {VERSION}, "
                            f"upgrade compactnn")
        if flags != 0:
            raise PackError(f"{path} sets reserved header flags 0x{flags:04x}; the file is corrupted or needs a "
                            f"newer compactnn")
        end = _HEADER.size + mlen
        if reader.size < end:
            raise PackError(f"{path} is truncated ({reader.size} bytes, the manifest ends at byte {end})")
        if mlen > validate.MAX_MANIFEST:
            raise PackError(f"{path}: stored manifest is {mlen:,} bytes, more than {validate.MAX_MANIFEST:,}")
        stored = reader.read_at(_HEADER.size, mlen)
        if hashlib.sha256(stored).digest() != msha:
            raise PackError(f"{path}: manifest checksum mismatch; the file is corrupted or was modified")
        text = _unzstd(stored, None, validate.MAX_MANIFEST, f"{path}: manifest")
        manifest = validate.parse_json(text, path)
        validate.check_manifest(manifest, path)
        data_bytes = manifest["data_bytes"]
        have = reader.size - end
        if have < data_bytes:
            raise PackError(f"{path} is truncated ({reader.size} bytes, expected {end + data_bytes})")
        if have > data_bytes:
            raise PackError(f"{path} has {have - data_bytes} unexpected trailing bytes; the file is corrupted")
        validate.budget(manifest, reader.size, path)
        return _Source(reader, manifest, mlen)
    except BaseException:
        reader.close()
        raise


def _unzstd(blob: bytes, size: int | None, cap: int, what: str) -> bytes:
    """Decompress one zstd frame whose header must state its content size (``size`` if given, else <= ``cap``);
    the output buffer is allocated at that known, capped size."""
    try:
        declared = zstandard.frame_content_size(blob)
    except zstandard.ZstdError as e:
        raise PackError(f"{what}: cannot decompress ({e}); the file is corrupted") from None
    if declared < 0:
        raise PackError(f"{what}: zstd frame does not state its size; the file is corrupted")
    if (size is not None and declared != size) or declared > cap:
        raise PackError(f"{what}: zstd frame claims {declared:,} bytes, expected "
                        f"{size if size is not None else f'at most {cap}'}; the file is corrupted")
    try:
        out = zstandard.ZstdDecompressor().decompress(blob, max_output_size=max(declared, 1))
    except zstandard.ZstdError as e:
        raise PackError(f"{what}: cannot decompress ({e}); the file is corrupted") from None
    if len(out) != declared:
        raise PackError(f"{what}: decompressed to {len(out)} bytes, expected {declared}; the file is corrupted")
    return out


def _decode(name: str, entry: dict, source: _Source) -> torch.Tensor:
    blob = source.blob(entry["offset"], entry["bytes"])
    if hashlib.sha256(blob).hexdigest() != entry["sha256"]:
        raise PackError(f"tensor {name!r}: checksum mismatch; the file is corrupted or was modified")
    payload_bytes = entry["payload_bytes"]
    if entry["zstd"]:
        blob = _unzstd(blob, payload_bytes, payload_bytes, f"tensor {name!r}")
    if len(blob) != payload_bytes:
        raise PackError(f"tensor {name!r}: payload is {len(blob)} bytes, expected {payload_bytes}; file is corrupted")
    meta = {"codec": entry["codec"], **entry["meta"]}
    try:
        return codecs.decode_tensor(meta, blob, entry["shape"], entry["dtype"])
    except PackError as e:
        raise PackError(f"tensor {name!r}: {e}") from None


def load(path, model: nn.Module | None = None) -> nn.Module:
    """Load a ``.cnz`` file written by :func:`save`. Validates the whole file before using it; never unpickles.

    Validation, in order: only a regular file of at most 64 GiB is opened; magic, version and reserved flags; the
    manifest's checksum, its capped decompressed size, its JSON limits and schema
    (:mod:`compactnn.pack.validate`); the file length; the decoded-size budget; the module tree
    (:func:`compactnn.pack.spec.plan`: registry classes only, never an import by name); then every blob's
    checksum and codec data. Only then is anything built, and only after everything is built is a skeleton touched.

    Args:
        path: the file (str or PathLike).
        model: optional skeleton, needed only when the file holds module classes that are not allow-listed (your own
            classes): such modules are taken from the skeleton at the same path (same class required) and refilled
            in place with the saved attributes, children and tensors. Allow-listed modules are always rebuilt.
            A file that fails to load leaves the skeleton unchanged.

    Returns:
        The module, with the saved train/eval mode and ``requires_grad`` flags, on the CPU.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise PackError(f"load(model=...) needs an nn.Module skeleton, got {type(model).__name__}")
    spec.import_registering()
    source = _open(path)
    try:
        manifest = source.manifest
        entries = manifest["tensors"]
        checked = spec.plan(manifest["root"], entries, skeleton=model)
        tensors: dict[str, torch.Tensor] = {}
        requires_grad: dict[str, bool] = {}
        for name, entry in entries.items():
            if entry["codec"] == "alias":
                tensors[name] = tensors[entry["alias"]]
            else:
                tensors[name] = _decode(name, entry, source)
            requires_grad[name] = entry["requires_grad"]
    finally:
        source.reader.close()
    return spec.rebuild(manifest["root"], tensors, requires_grad, skeleton=model, entries=entries, checked=checked)


def read_manifest(path) -> dict:
    """Read a ``.cnz`` file's manifest (checks the header, the manifest checksum and the file length; blobs are not
    decoded).

    Args:
        path: the file (str or PathLike).

    Returns:
        The manifest dict with keys ``format`` ("cnz"), ``format_version``, ``compactnn_version``,
        ``torch_version``, ``options`` ({"fp16", "level"}), ``root`` (module spec tree, see
        :mod:`compactnn.pack.spec`), ``data_bytes`` (blob area size), ``metadata`` (as given to :func:`save`), ``tensors``, plus ``path``, ``file_bytes``
        (``os.path.getsize``) and ``manifest_bytes`` (stored manifest size). ``tensors`` maps each state_dict key to
        ``{"codec", "shape", "dtype", "bytes" (stored bytes in the file), "raw_bytes" (numel * element size),
        "kind" ("parameter"/"buffer"), "persistent", "requires_grad"}`` and, for a blob, ``offset``, ``zstd``,
        ``payload_bytes``, ``sha256`` and ``meta`` (codec details); a tied tensor has codec ``"alias"``, 0 bytes and
        ``alias`` naming the first key.
    """
    source = _open(path)
    source.reader.close()
    return _summary(source.manifest, os.fspath(path), source.reader.size)
