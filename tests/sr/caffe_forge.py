"""Write small Caffe NetParameter files for the importer's tests (a protobuf encoder of a few lines)."""

import struct

import numpy as np

from compactnn.models.idn import IDN
from compactnn.sr.caffe import idn_layer_map


def varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def key(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    return key(field, 2) + varint(len(payload)) + payload


def vi(field: int, n: int) -> bytes:
    return key(field, 0) + varint(n)


def blob(arr: np.ndarray, legacy: bool = False, packed: bool = True) -> bytes:
    arr = np.asarray(arr, dtype=np.float32)
    if legacy:
        dims = list(arr.shape) + [1] * (4 - arr.ndim) if arr.ndim < 4 else list(arr.shape)
        head = b"".join(vi(f, d) for f, d in zip((1, 2, 3, 4), dims))
    else:
        head = ld(7, ld(1, b"".join(varint(d) for d in arr.shape)))
    if packed:
        data = ld(5, arr.astype("<f4").tobytes())
    else:
        data = b"".join(key(5, 5) + struct.pack("<f", v) for v in arr.ravel())
    return head + data


def layer(name: str, type_: str, blobs: list, stride: int | None = None, v1: bool = False) -> bytes:
    conv = b""
    if stride is not None:
        conv = vi(1, 1) + vi(3, 8) + vi(4, 17) + vi(6, stride)
    if v1:
        t = {"Convolution": 4, "Deconvolution": 39}[type_]
        return ld(2, ld(4, name.encode()) + vi(5, t) + b"".join(ld(6, blob(b)) for b in blobs)
                  + (ld(10, conv) if conv else b""))
    return ld(100, ld(1, name.encode()) + ld(2, type_.encode()) + b"".join(ld(7, blob(b)) for b in blobs)
              + (ld(106, conv) if conv else b""))


def idn_caffemodel(scale: int = 2, seed: int = 0, v1: bool = False, stride: int | None = -1, drop: str | None = None,
                   reshape: str | None = None) -> tuple[bytes, dict]:
    """A NetParameter with random IDN weights: (file bytes, {caffe layer name: [weight, bias]})."""
    rng = np.random.default_rng(seed)
    model = IDN(scale=scale)
    weights = {}
    parts = [ld(1, b"IDN_test"), layer("data", "Input", [], v1=False) if not v1 else b""]
    for cname, (path, ctype) in idn_layer_map().items():
        if cname == drop:
            continue
        m = model.get_submodule(path)
        w = rng.normal(0, 0.05, tuple(m.weight.shape)).astype(np.float32)
        b = rng.normal(0, 0.01, tuple(m.bias.shape)).astype(np.float32)
        if cname == reshape:
            w = w.reshape(w.shape[1], w.shape[0], *w.shape[2:])
        weights[cname] = [w, b]
        st = (scale if stride == -1 else stride) if cname == "upsample" else None
        parts.append(layer(cname, ctype, [w, b], stride=st, v1=v1))
        parts.append(layer("relu_" + cname, "ReLU", [], v1=False) if not v1 else b"")
    return b"".join(parts), weights
