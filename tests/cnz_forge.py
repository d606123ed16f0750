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
