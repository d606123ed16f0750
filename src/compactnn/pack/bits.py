"""Fixed-width bit packing of unsigned integers, vectorized with NumPy.

Values are laid out little-endian at the bit level: value ``i`` occupies bits ``[i*b, (i+1)*b)`` of the stream, least
significant bit first, and bytes are filled from their least significant bit (``np.packbits(bitorder="little")``).
"""

from __future__ import annotations

import numpy as np

from ..errors import PackError

_WHOLE = {8: "<u1", 16: "<u2", 32: "<u4", 64: "<u8"}


def packed_len(count: int, bits: int) -> int:
    """Bytes taken by ``count`` values of ``bits`` bits each.

    Args:
        count: number of values.
        bits: width of each value in bits (0..64).
    """
    return (count * bits + 7) // 8


def width(max_value: int) -> int:
    """Smallest bit width that holds every value in ``0..max_value`` (0 when ``max_value`` is 0).

    Args:
        max_value: the largest value to store (>= 0).
    """
    return int(max_value).bit_length()


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack non-negative integers into a ``bits``-wide bit stream.

    Args:
        values: 1-D array of unsigned (or non-negative) integers, each < 2**bits.
        bits: field width, 0..64. With 0 bits nothing is stored (every value must be 0).

    Returns:
        ``packed_len(len(values), bits)`` bytes.
    """
    v = np.ascontiguousarray(values).reshape(-1)
    if not 0 <= bits <= 64:
        raise PackError(f"bit width {bits} is out of range 0..64")
    if bits == 0 or v.size == 0:
        return b""
    v = v.astype(np.uint64, copy=False)
    if bits in _WHOLE:
        return v.astype(_WHOLE[bits]).tobytes()
    planes = np.empty((v.size, bits), dtype=np.uint8)
    for j in range(bits):  # one bit plane at a time keeps memory at n*bits bytes
        planes[:, j] = (v >> np.uint64(j)) & np.uint64(1)
    return np.packbits(planes.reshape(-1), bitorder="little").tobytes()


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`.

    Args:
        data: the packed stream; must hold exactly ``packed_len(count, bits)`` bytes.
        bits: field width used when packing, 0..64.
        count: number of values to read.

    Returns:
        1-D ``np.uint64`` array of ``count`` values.
    """
    if not 0 <= bits <= 64:
        raise PackError(f"bit width {bits} is out of range 0..64")
    if count < 0 or len(data) != packed_len(count, bits):
        raise PackError(f"bit stream holds {len(data)} bytes, expected {packed_len(count, bits)}; file is corrupted")
    if bits == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    if bits in _WHOLE:
        return np.frombuffer(data, dtype=_WHOLE[bits]).astype(np.uint64)
    out = np.zeros(count, dtype=np.uint64)
    raw = np.frombuffer(data, dtype=np.uint8)
    step = 1 << 16  # values per chunk: a multiple of 8, so every chunk starts on a byte boundary
    for start in range(0, count, step):  # in chunks, so the bit planes never take more than step * bits bytes
        n = min(step, count - start)
        first = start * bits // 8
        planes = np.unpackbits(raw[first:first + (n * bits + 7) // 8], count=n * bits, bitorder="little")
        planes = planes.reshape(n, bits)
        chunk = out[start:start + n]
        for j in range(bits):
            chunk |= planes[:, j].astype(np.uint64) << np.uint64(j)
    return out
