"""Hostile .cnz files from the hardening audit (issue 17): each is refused with one PackError line, quickly and
without allocating much, or (skeletons) loads correctly without touching the skeleton before everything checks out."""

import json
import os
import resource
import struct
import sys

import numpy as np
import pytest
import torch
import zstandard
from torch import nn

from compactnn import pack
from compactnn.errors import PackError
from compactnn.pack import validate
from cnz_forge import put_blob, read_cnz, rewrite_manifest, write_cnz


def one_line(path, match, **kw):
    with pytest.raises(PackError, match=match) as err:
        pack.load(path, **kw)
    msg = str(err.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.cnz"
    pack.save(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), path)
    return path


# ------------------------------------------------------------------------------------------ files and headers
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.cnz"
    os.mkfifo(fifo)
    one_line(fifo, "not a regular file")
    with pytest.raises(PackError, match="not a regular file"):
        pack.read_manifest(fifo)


def test_huge_file_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.cnz"
    with open(big, "wb") as f:
        f.truncate((1 << 36) + 1)  # sparse: nothing is written, nothing may be read
    one_line(big, "more than the 68,719,476,736 a .cnz file may have")


def test_reserved_flags_are_refused(saved):
    raw = bytearray(saved.read_bytes())
    raw[10:12] = struct.pack("<H", 4)
    saved.write_bytes(bytes(raw))
    one_line(saved, "sets reserved header flags 0x0004")


# ------------------------------------------------------------------------------------------ manifest JSON
def test_manifest_of_many_empty_objects(saved, tmp_path):
    text = b'{"x": [' + b"{}," * 300_000 + b"{}]}"
    write_cnz(saved, text)
    one_line(saved, "more than 262,144 objects/lists")


def test_deeply_nested_lists(saved):
    write_cnz(saved, b"[" * 100_000 + b"]" * 100_000)
    one_line(saved, "nests deeper than 160 levels")


def test_duplicate_keys_are_refused(saved):
    manifest, data = read_cnz(saved)
    text = json.dumps(manifest).encode()
    text = text.replace(b'"data_bytes":', b'"data_bytes": 0, "data_bytes":', 1)
    write_cnz(saved, text, data)
    one_line(saved, "has the key 'data_bytes' twice")


def test_nan_constant_is_refused(saved):
    manifest, data = read_cnz(saved)
    text = json.dumps(manifest).encode().replace(b'"metadata": {}', b'"metadata": {"a": NaN}')
    write_cnz(saved, text, data)
    one_line(saved, "holds NaN")


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.update(metadata=5), "metadata must be an object, got int"),
    (lambda m: m["metadata"].update(input_shape=[1, 1e6, 1e6]), "input_shape must be a list of 1 to 5 positive ints"),
    (lambda m: m["metadata"].update(input_shape=[1, 100000, 100000]), "more than 16,777,216"),
    (lambda m: m.update(tensors=[]), "tensors must be an object"),
    (lambda m: m.update(extra=1), "unknown key"),
    (lambda m: m["tensors"]["0.weight"].update(shape=[2**27, 2**27]), "more than 17,179,869,184 elements"),
    (lambda m: m["tensors"]["0.weight"].update(requires_grad="yes"), "requires_grad are malformed"),
    (lambda m: m["tensors"]["0.weight"].update(payload_bytes=10**12), "payload_bytes 1000000000000 does not match"),
])
def test_manifest_schema(saved, edit, match):
    rewrite_manifest(saved, edit)
    one_line(saved, match)
    with pytest.raises(PackError, match=match):
        pack.read_manifest(saved)


# ------------------------------------------------------------------------------------------ module tree
def _child(m):
    return m["root"]["children"]["0"]


@pytest.mark.parametrize("edit, match", [
    (lambda m: _child(m).update({"class": 5}), "class key '5' is not a class name"),
    (lambda m: _child(m).update(children=[]), "children is a list, not an object"),
    (lambda m: _child(m).update(attrs=[]), "attrs is a list, not an object"),
    (lambda m: _child(m).update({"class": "a" + ".b" * 3000}), "class key 'a.b.b.b"),
    (lambda m: _child(m).update({"class": "compactnn.x" + ".y" * 100}), "is not on the allow-list"),
    (lambda m: _child(m).update(attrs={}), "a Linear needs attribute .in_features."),
    (lambda m: _child(m)["attrs"].update(in_features={"f": "nan"}), "attribute in_features of a Linear is nan"),
    (lambda m: _child(m)["attrs"].update(in_features=1.5), "attribute in_features of a Linear is 1.5"),
    (lambda m: _child(m)["attrs"].update(_parameters=1), "would overwrite module internals"),
    (lambda m: _child(m)["attrs"].update(forward=1), "would replace the Linear method or property"),
    (lambda m: m["root"]["children"].update({"3": {"ref": ""}}), "which contains it"),
    (lambda m: _child(m)["children"].update({"x": {"ref": "0"}}), "which contains it"),
    (lambda m: m["root"]["children"].update({"a.b": None}), "is not a plain name"),
    (lambda m: _child(m)["params"].update(weight="nope"), "spec names tensor 'nope'"),
])
def test_module_tree(saved, edit, match):
    rewrite_manifest(saved, edit)
    one_line(saved, match)


def test_conv2d_without_attrs(tmp_path):
    path = tmp_path / "c.cnz"
    pack.save(nn.Sequential(nn.Conv2d(1, 2, 3)), path)
    rewrite_manifest(path, lambda m: _child(m).update(attrs={}))
    one_line(path, "a Conv2d needs attribute")


def _nest(m, depth):
    node = m["root"]
    for _ in range(depth):
        node["children"] = {"s": {"class": "torch.nn.Sequential", "attrs": {"training": True}, "params": {},
                                  "buffers": {}, "non_persistent": [], "children": {}}}
        node = node["children"]["s"]


@pytest.mark.parametrize("depth, match", [(450, "nests deeper than 160"), (70, "modules nest more than 64 deep")])
def test_deep_module_nesting(saved, depth, match):
    rewrite_manifest(saved, lambda m: _nest(m, depth))
    one_line(saved, match)


def test_compactnn_main_class_key_imports_nothing(saved, monkeypatch):
    for name in ("compactnn.__main__", "compactnn.cli"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "argv", ["host", "--help"])
    rewrite_manifest(saved, lambda m: _child(m).update({"class": "compactnn.__main__.X"}))
    one_line(saved, r"compactnn\.__main__\.X at path 0 is not on the allow-list")
    assert "compactnn.__main__" not in sys.modules and "compactnn.cli" not in sys.modules


# ------------------------------------------------------------------------------------------ codecs and bombs
def _forge_tensor(path, name, blob, shape, codec, meta, zstd=False, payload=None, dtype="float32"):
    manifest, data = read_cnz(path)
    numel = int(np.prod(shape, dtype=np.int64))
    size = validate.itemsize(dtype)
    data = put_blob(manifest, data, name, blob, shape=shape, codec=codec, meta=meta, zstd=zstd, dtype=dtype,
                    payload_bytes=len(blob) if payload is None else payload, raw_bytes=numel * size)
    write_cnz(path, manifest, data)


def test_sparse_bits0_huge_entries(saved):
    meta = {"index": "relative", "bits": 0, "entries": 2**27, "nnz": 0, "values": {"codec": "dense"}, "parts": [0, 0]}
    _forge_tensor(saved, "0.weight", b"", [2**27], "sparse", meta)
    before = rss_mb()
    one_line(saved, "2 stored bytes would decode to|0 stored bytes would decode to|at 0 bits is invalid")
    assert rss_mb() - before < 100


def test_sparse_bits0_small_shape(saved):
    meta = {"index": "relative", "bits": 0, "entries": 2**27, "nnz": 0, "values": {"codec": "dense"}, "parts": [0, 0]}
    _forge_tensor(saved, "0.weight", b"", [16, 8], "sparse", meta)
    one_line(saved, "sparse index of 134217728 codes at 0 bits is invalid for 128 elements")


def test_codebook_k1_huge_shape(saved):
    meta = {"k": 1, "bits": 0, "values": {"codec": "dense"}, "parts": [0, 4]}
    _forge_tensor(saved, "0.weight", b"\0\0\x80\x3f", [2**27], "codebook", meta)
    before = rss_mb()
    one_line(saved, "4 stored bytes would decode to 134,217,728 values.*decompression bomb")
    assert rss_mb() - before < 100


def test_zstd_frame_claiming_64_gib(saved):
    frame = struct.pack("<IB", 0xFD2FB528, 0xE0) + struct.pack("<Q", 64 << 30) + bytes([0x21, 0, 0]) + b"abcd"
    assert zstandard.frame_content_size(frame) == 64 << 30
    manifest, data = read_cnz(saved)
    data = put_blob(manifest, data, "0.weight", frame, zstd=True)
    write_cnz(saved, manifest, data)
    one_line(saved, "zstd frame claims 68,719,476,736 bytes, expected 512")


def test_zstd_bomb_of_1_gib_zeros(saved):
    cobj = zstandard.ZstdCompressor(level=3).compressobj(size=1 << 30)
    chunk = bytes(1 << 20)
    bomb = b"".join(cobj.compress(chunk) for _ in range(1024)) + cobj.flush()
    assert len(bomb) < 100_000
    before = rss_mb()
    _forge_tensor(saved, "0.weight", bomb, [1 << 28], "dense", {}, zstd=True, payload=1 << 30)
    one_line(saved, "would decode to 268,435,456 values.*decompression bomb")
    # the same blob declared with a small shape: the frame is refused by its declared size, before decompressing
    _forge_tensor(saved, "0.weight", bomb, [16, 8], "dense", {}, zstd=True, payload=512)
    one_line(saved, "zstd frame claims 1,073,741,824 bytes, expected 512")
    assert rss_mb() - before < 200


def test_sparse_64bit_gap_codes_are_refused(saved):
    meta = {"index": "relative", "bits": 64, "entries": 2, "nnz": 2, "values": {"codec": "dense"}, "parts": [16, 8]}
    blob = struct.pack("<QQ", 2**64 - 3, 5) + struct.pack("<ff", 1.0, 2.0)
    _forge_tensor(saved, "0.weight", blob, [16, 8], "sparse", meta)
    one_line(saved, "codes at 64 bits is invalid")


def test_sparse_62bit_gap_codes_cannot_wrap(saved):
    # codes that would sum past 2**63 in an int64 running sum (negative positions before the fix)
    meta = {"index": "relative", "bits": 62, "entries": 3, "nnz": 3, "values": {"codec": "dense"}, "parts": [24, 12]}
    codes = [2**62 - 2, 2**62 - 2, 3]
    bits = "".join(format(c, "062b")[::-1] for c in codes)
    packed = np.packbits(np.array([int(b) for b in bits] + [0] * (192 - len(bits)), np.uint8), bitorder="little")
    _forge_tensor(saved, "0.weight", packed.tobytes() + struct.pack("<fff", 1, 2, 3), [16, 8], "sparse", meta)
    one_line(saved, "sparse gap code skips past the end of the tensor")


def _quantized_file(tmp_path, per_channel=False):
    mod = nn.Identity()
    x = torch.linspace(-1, 1, 12).reshape(3, 4)
    q = torch.quantize_per_channel(x, torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64),
                                   torch.tensor([0, 1, 2]), 0, torch.qint8) if per_channel \
        else torch.quantize_per_tensor(x, 0.01, 3, torch.qint8)
    mod.register_buffer("q", q)
    path = tmp_path / "q.cnz"
    pack.save(mod, path)
    assert torch.equal(pack.load(path).q.int_repr(), q.int_repr())
    return path


@pytest.mark.parametrize("edit, match", [
    ({"scale": "nan"}, "affine scale 'nan' is not a finite positive number"),
    ({"scale": float("-inf").hex()}, "affine scale '-inf' is not a finite positive number"),
    ({"scale": (0.0).hex()}, "is not a finite positive number"),
    ({"zero_point": 300}, "affine zero point 300 is outside -128..127 for qint8"),
])
def test_affine_scale_and_zero_point(tmp_path, edit, match):
    path = _quantized_file(tmp_path)
    rewrite_manifest(path, lambda m: m["tensors"]["q"]["meta"].update(edit))
    one_line(path, match)


def test_affine_per_channel_nan_scale(tmp_path):
    path = _quantized_file(tmp_path, per_channel=True)
    manifest, data = read_cnz(path)
    e = manifest["tensors"]["q"]
    payload = zstandard.ZstdDecompressor().decompress(data[e["offset"]:e["offset"] + e["bytes"]]) if e["zstd"] \
        else data[e["offset"]:e["offset"] + e["bytes"]]
    first = e["meta"]["parts"][0]
    payload = payload[:first] + struct.pack("<d", float("nan")) + payload[first + 8:]
    data = put_blob(manifest, data, "q", payload, zstd=False)
    write_cnz(path, manifest, data)
    one_line(path, "per-channel affine scales must be finite and positive")


# ------------------------------------------------------------------------------------------ skeletons
class Inner(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.scale = 2.0

    def forward(self, x):
        return self.fc(x) * self.scale


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Inner()
        self.deeper = nn.Sequential(Inner(), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.deeper(self.inner(x)))


def test_skeleton_with_nested_custom_classes_loads(tmp_path):
    torch.manual_seed(1)
    model = Outer()
    model.inner.scale = 3.0
    path = tmp_path / "o.cnz"
    pack.save(model, path)
    torch.manual_seed(2)
    skeleton = Outer()
    loaded = pack.load(path, model=skeleton)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), model(x)) and loaded.inner.scale == 3.0
    assert loaded is skeleton and loaded.deeper[0] is skeleton.deeper[0]


def test_failed_load_leaves_the_skeleton_untouched(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "o.cnz"
    pack.save(Outer(), path)
    # a blob that fails its checksum, and a tree error found late (in the last module): both after Outer is planned
    manifest, data = read_cnz(path)
    manifest["tensors"]["head.bias"]["sha256"] = "0" * 64
    write_cnz(path, manifest, data)
    skeleton = Outer()
    state = {k: v.clone() for k, v in skeleton.state_dict().items()}
    mods = dict(skeleton.named_modules())
    one_line(path, "checksum mismatch", model=skeleton)
    assert dict(skeleton.named_modules()) == mods
    assert all(torch.equal(v, state[k]) for k, v in skeleton.state_dict().items())
    manifest["tensors"]["head.bias"]["sha256"] = read_cnz(tmp_path / "o.cnz")[0]["tensors"]["head.bias"]["sha256"]
    manifest["root"]["children"]["head"]["attrs"]["out_features"] = "x"
    write_cnz(path, manifest, data)
    one_line(path, "attribute out_features of a Linear", model=skeleton)
    assert dict(skeleton.named_modules()) == mods


def test_registry_api_is_explicit():
    assert pack.spec.lookup("compactnn.models.lenet.LeNet300") is not None or pack.spec.allowed()
    assert pack.spec.lookup("os.system") is None and pack.spec.lookup(5) is None

    @pack.packable
    class Custom(nn.Module):
        pass

    assert pack.spec.lookup(pack.spec.class_key(Custom)) is Custom
