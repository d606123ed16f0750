"""Read Caffe ``.caffemodel`` files (a ``NetParameter`` protobuf) and import the official IDN weights.

No Caffe and no ``protobuf`` package: :mod:`compactnn.sr.protobuf` walks the wire format. The fields read:

- ``NetParameter``: ``name`` (1), ``layer`` (100, ``LayerParameter``) and the legacy ``layers`` (2, V1);
- ``LayerParameter``: ``name`` (1), ``type`` (2), ``blobs`` (7), ``convolution_param`` (106);
- ``V1LayerParameter``: ``name`` (4), ``type`` (5, an enum: 4 = Convolution, 39 = Deconvolution), ``blobs`` (6),
  ``convolution_param`` (10);
- ``BlobProto``: ``shape`` (7, ``BlobShape.dim`` = 1), the legacy ``num/channels/height/width`` (1-4), ``data`` (5,
  float32, packed or not) and ``double_data`` (8);
- ``ConvolutionParameter``: ``num_output`` (1), ``pad`` (3), ``kernel_size`` (4), ``group`` (5), ``stride`` (6).

:func:`import_idn` maps every IDN layer by name (``conv1``, ``conv2``, ``conv3_1``...``conv6_6``, ``down1``...``down4``,
``upsample``), checks every blob's shape against the model and refuses, in one line, a file that is not an IDN
``NetParameter`` (not protobuf, truncated, layers missing or duplicated, wrong shapes, non-finite weights, a
transposed conv whose stride is not the requested scale).

Scale check: the official files are training nets whose ``upsample`` layer records ``stride`` = s (and whose
``bicubic`` Python layer records ``up_scale``). When the file records a stride it must equal ``scale``; a file that
records none is accepted for the scale asked (the weights' shapes do not depend on it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .protobuf import WireError, as_int64, f32, f64, iter_fields, packed_doubles, packed_floats, packed_varints

MAX_FILE_BYTES = 1 << 30
V1_TYPES = {4: "Convolution", 39: "Deconvolution"}


@dataclass
class CaffeLayer:
    """One layer of a Caffe net: its name, type, weight blobs and (for conv layers) convolution settings."""

    name: str
    type: str
    blobs: list = field(default_factory=list)
    conv: dict = field(default_factory=dict)


def _text(buf, rng) -> str:
    try:
        return bytes(buf[rng[0]: rng[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"a layer name/type at byte {rng[0]} is not UTF-8 text") from None


def _blob(buf, begin: int, stop: int) -> np.ndarray:
    shape: list[int] | None = None
    legacy = {}
    floats: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    for f, w, v in iter_fields(buf, begin, stop):
        if f == 7 and w == 2:
            dims: list[int] = []
            for g, w2, u in iter_fields(buf, *v):
                if g == 1 and w2 == 2:
                    dims.extend(as_int64(d) for d in packed_varints(buf, *u))
                elif g == 1 and w2 == 0:
                    dims.append(as_int64(u))
            shape = dims
        elif f in (1, 2, 3, 4) and w == 0:
            legacy[f] = as_int64(v)
        elif f == 5 and w == 2:
            floats.append(packed_floats(buf, *v))
        elif f == 5 and w == 5:
            floats.append(np.array([f32(v)], dtype=np.float32))
        elif f == 8 and w == 2:
            doubles.append(packed_doubles(buf, *v))
        elif f == 8 and w == 1:
            doubles.append(np.array([f64(v)]))
    if shape is None:
        shape = [legacy.get(k, 1) for k in (1, 2, 3, 4)] if legacy else None
    data = np.concatenate(floats) if floats else (np.concatenate(doubles).astype(np.float32) if doubles else None)
    if data is None:
        data = np.zeros(0, dtype=np.float32)
    if shape is None:
        shape = [data.size]
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=object)) != data.size:
        raise WireError(f"a blob has shape {shape} but holds {data.size} values")
    return data.reshape(shape)


def _conv_param(buf, begin: int, stop: int) -> dict:
    out: dict = {}
    for f, w, v in iter_fields(buf, begin, stop):
        names = {1: "num_output", 3: "pad", 4: "kernel_size", 5: "group", 6: "stride"}
        if f in names:
            vals = packed_varints(buf, *v) if w == 2 else [v] if w == 0 else []
            out.setdefault(names[f], []).extend(vals)
    return out


def read_net(source: str | os.PathLike | bytes) -> tuple[str, list[CaffeLayer]]:
    """Parse a ``.caffemodel`` (path or bytes): the net's name and its layers, in file order.

    Raises:
        DataError: the file is missing, too large, or not a well-formed ``NetParameter`` with layers.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf, where = bytes(source), "caffemodel"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise DataError(f"{path} does not exist or is not a file; give the path of a .caffemodel")
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise DataError(f"{path} is {size:,} bytes, over the {MAX_FILE_BYTES:,}-byte limit for a caffemodel")
        buf = path.read_bytes()
    name = ""
    layers: list[CaffeLayer] = []
    try:
        for f, w, v in iter_fields(buf):
            if f == 1 and w == 2:
                name = _text(buf, v)
            elif f in (100, 2) and w == 2:
                v1 = f == 2
                layer = CaffeLayer(name="", type="")
                for g, w2, u in iter_fields(buf, *v):
                    if g == (4 if v1 else 1) and w2 == 2:
                        layer.name = _text(buf, u)
                    elif not v1 and g == 2 and w2 == 2:
                        layer.type = _text(buf, u)
                    elif v1 and g == 5 and w2 == 0:
                        layer.type = V1_TYPES.get(u, f"V1:{u}")
                    elif g == (6 if v1 else 7) and w2 == 2:
                        layer.blobs.append(_blob(buf, *u))
                    elif g == (10 if v1 else 106) and w2 == 2:
                        layer.conv = _conv_param(buf, *u)
                layers.append(layer)
    except WireError as err:
        raise DataError(f"{where} is not a valid Caffe NetParameter ({err}); is it a .caffemodel?") from None
    if not layers:
        raise DataError(f"{where} is not a Caffe model: no layers found in it; is it a .caffemodel?")
    return name, layers


def idn_layer_map(blocks: int = 4) -> dict[str, tuple[str, str]]:
    """Caffe layer name -> (model module path, Caffe type) for IDN."""
    out = {"conv1": ("conv1", "Convolution"), "conv2": ("conv2", "Convolution")}
    for b in range(blocks):
        for k in range(1, 7):
            out[f"conv{b + 3}_{k}"] = (f"blocks.{b}.conv{k}", "Convolution")
        out[f"down{b + 1}"] = (f"blocks.{b}.down", "Convolution")
    out["upsample"] = ("upsample", "Deconvolution")
    return out


def import_idn(source: str | os.PathLike | bytes, scale: int):
    """Build :class:`compactnn.models.idn.IDN` for ``scale`` and fill it from an official IDN ``.caffemodel``.

    Caffe stores conv weights as (out, in/groups, kh, kw) and deconv weights as (in, out, kh, kw): the layouts of
    ``nn.Conv2d`` and ``nn.ConvTranspose2d``, so blobs are copied as they are.

    Raises:
        DataError: (one line) not a caffemodel, not IDN, a blob of the wrong shape, non-finite values, or a file
            made for another scale.
    """
    from ..models.idn import IDN

    where = "caffemodel" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
    model = IDN(scale=scale)
    _, layers = read_net(source)
    by_name: dict[str, CaffeLayer] = {}
    for layer in layers:
        if layer.name in by_name and layer.blobs:
            raise DataError(f"{where} has two layers named {layer.name!r}; not an IDN caffemodel")
        if layer.blobs or layer.name not in by_name:
            by_name[layer.name] = layer
    expected = idn_layer_map()
    missing = [n for n in expected if n not in by_name]
    if missing:
        raise DataError(f"{where} is not an IDN caffemodel: layer {missing[0]!r} is missing "
                        f"({len(missing)} of {len(expected)} IDN layers missing)")
    state = {}
    for cname, (path, ctype) in expected.items():
        layer = by_name[cname]
        if layer.type != ctype:
            raise DataError(f"{where}: layer {cname!r} is a {layer.type or 'untyped'} layer, IDN needs {ctype}")
        module = model.get_submodule(path)
        want = [tuple(module.weight.shape), tuple(module.bias.shape)]
        got = [tuple(b.shape) for b in layer.blobs]
        if got != want:
            raise DataError(f"{where}: layer {cname!r} has blobs of shapes {got}, IDN needs {want}; "
                            f"not an IDN caffemodel")
        for arr in layer.blobs:
            if not np.all(np.isfinite(arr)):
                raise DataError(f"{where}: layer {cname!r} holds non-finite weights; the file is corrupted")
        state[f"{path}.weight"] = torch.from_numpy(np.ascontiguousarray(layer.blobs[0], dtype=np.float32))
        state[f"{path}.bias"] = torch.from_numpy(np.ascontiguousarray(layer.blobs[1], dtype=np.float32))
    conv = by_name["upsample"].conv
    stride = conv.get("stride", [])
    if stride and any(s != scale for s in stride):
        raise DataError(f"{where} is an IDN x{stride[0]} model (its transposed conv has stride {stride[0]}), "
                        f"not x{scale}; pass --scale {stride[0]}")
    if conv.get("kernel_size", [17]) != [17] or conv.get("pad", [8]) != [8]:
        raise DataError(f"{where}: layer 'upsample' has kernel {conv.get('kernel_size')} and pad {conv.get('pad')},"
                        f" IDN needs kernel 17 and pad 8")
    model.load_state_dict(state, strict=True)
    return model.eval()
