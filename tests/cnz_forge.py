"""Forging .cnz files for error-path tests: rewrite the manifest and give it a valid checksum again."""

import hashlib
import json
import struct

import zstandard

HEADER = struct.Struct("<8sHHQ32s")  # magic, version, flags, manifest length, manifest SHA-256


def manifest_span(raw: bytes) -> tuple[int, int]:
    return HEADER.size, HEADER.size + HEADER.unpack_from(raw)[3]


def rewrite_manifest(path, edit) -> None:
    """Apply ``edit`` to the decoded manifest and write it back with valid checksums (a forged file)."""
    raw = path.read_bytes()
    start, end = manifest_span(raw)
    manifest = json.loads(zstandard.ZstdDecompressor().decompress(raw[start:end]))
    edit(manifest)
    stored = zstandard.ZstdCompressor().compress(json.dumps(manifest).encode())
    magic, version, flags, _, _ = HEADER.unpack_from(raw)
    head = HEADER.pack(magic, version, flags, len(stored), hashlib.sha256(stored).digest())
    path.write_bytes(head + stored + raw[end:])


def read_cnz(path):
    """(manifest dict, data area bytes) of a .cnz file."""
    raw = path.read_bytes()
    start, end = manifest_span(raw)
    return json.loads(zstandard.ZstdDecompressor().decompress(raw[start:end])), raw[end:]


def write_cnz(path, manifest, data: bytes = b"", flags: int = 0, version: int = 1) -> None:
    """Write a complete, correctly signed .cnz file from a manifest (a dict, or raw JSON bytes) and a data area."""
    text = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    stored = zstandard.ZstdCompressor().compress(text)
    head = HEADER.pack(b"\x89CNZ\r\n\x1a\n", version, flags, len(stored), hashlib.sha256(stored).digest())
    path.write_bytes(head + stored + data)


def put_blob(manifest: dict, data: bytes, name: str, blob: bytes, **entry) -> bytes:
    """Append ``blob`` as tensor ``name``'s stored bytes (signed), update its entry; returns the new data area."""
    e = manifest["tensors"][name]
    e.update(offset=len(data), bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(), **entry)
    data = data + blob
    manifest["data_bytes"] = len(data)
    return data
