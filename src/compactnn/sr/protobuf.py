"""A minimal protobuf wire-format reader, enough for Caffe's ``NetParameter`` (no generated code, no ``protobuf``).

A message is a sequence of ``(field number, wire type, value)``: wire type 0 is a varint, 1 a fixed 64-bit value,
2 a length-delimited byte range (sub-message, string, bytes or packed repeated numbers), 5 a fixed 32-bit value.
Groups (wire types 3 and 4) are obsolete and refused. Every length and offset is checked against the end of the
enclosing message, so a truncated or hostile file raises :class:`WireError` instead of reading past its end or
allocating more than its own size.
"""

from __future__ import annotations

import struct
from typing import Iterator

import numpy as np


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def read_varint(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos`` (at most 10 bytes, not past ``end``); returns ``(value, next position)``."""
    result = shift = 0
    for i in range(10):
        if pos >= end:
            raise WireError(f"varint runs past the end of its message at byte {pos}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if i == 9 and byte > 1:
                raise WireError(f"varint longer than 64 bits at byte {pos - 10}")
            return result, pos
        shift += 7
    raise WireError(f"varint longer than 10 bytes at byte {pos - 10}")


def iter_fields(buf: bytes | memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, object]]:
    """Yield ``(field, wire_type, value)`` for the message in ``buf[start:end]``.

    ``value`` is an int (wire types 0, 1, 5: the raw unsigned value) or a ``(begin, stop)`` byte range (wire type 2).
    """
    end = len(buf) if end is None else end
    if not 0 <= start <= end <= len(buf):
        raise WireError(f"message range {start}..{end} outside the {len(buf)}-byte buffer")
    pos = start
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise WireError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = read_varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise WireError(f"fixed64 field {field} runs past the end of its message")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 5:
            if pos + 4 > end:
                raise WireError(f"fixed32 field {field} runs past the end of its message")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        elif wire == 2:
            n, pos = read_varint(buf, pos, end)
            if n > end - pos:
                raise WireError(f"field {field} claims {n} bytes but only {end - pos} remain in its message")
            value = (pos, pos + n)
            pos += n
        else:
            raise WireError(f"unsupported wire type {wire} (field {field}) at byte {pos}")
        yield field, wire, value


def packed_varints(buf: bytes | memoryview, begin: int, stop: int) -> list[int]:
    """The varints packed in ``buf[begin:stop]``."""
    out, pos = [], begin
    while pos < stop:
        v, pos = read_varint(buf, pos, stop)
        out.append(v)
    return out


def packed_floats(buf: bytes | memoryview, begin: int, stop: int) -> np.ndarray:
    """Little-endian float32 values packed in ``buf[begin:stop]``."""
    if (stop - begin) % 4:
        raise WireError(f"packed float field of {stop - begin} bytes is not a multiple of 4")
    return np.frombuffer(buf, dtype="<f4", count=(stop - begin) // 4, offset=begin).astype(np.float32)


def packed_doubles(buf: bytes | memoryview, begin: int, stop: int) -> np.ndarray:
    """Little-endian float64 values packed in ``buf[begin:stop]``."""
    if (stop - begin) % 8:
        raise WireError(f"packed double field of {stop - begin} bytes is not a multiple of 8")
    return np.frombuffer(buf, dtype="<f8", count=(stop - begin) // 8, offset=begin).astype(np.float64)


def as_int64(v: int) -> int:
    """A varint read as protobuf int64 (two's complement)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def f32(v: int) -> float:
    """A fixed32 field's raw value read as float."""
    return struct.unpack("<f", struct.pack("<I", v))[0]


def f64(v: int) -> float:
    """A fixed64 field's raw value read as double."""
    return struct.unpack("<d", struct.pack("<Q", v))[0]
