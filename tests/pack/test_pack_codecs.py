"""Codec and bit-packing tests: every codec round-trips bit for bit (hypothesis), auto selection, quantized tensors."""

import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compactnn.errors import PackError
from compactnn.pack import bits, codecs
from compactnn.pack.codecs import decode_tensor, encode_tensor, from_bits, to_bits

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FORCED = ("dense", "fp16", "codebook", "sparse", "sparse-relative", "sparse-bitmask")


def roundtrip(t, enc):
    """Decode ``enc`` with ``t``'s shape and dtype."""
    return decode_tensor(enc.meta, enc.payload, list(t.shape), codecs.dtype_name(t.dtype))


def assert_bit_identical(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(to_bits(a), to_bits(b))


@st.composite
def tensors(draw, names=tuple(codecs.DTYPES)):
    """Tensors from raw bit patterns: mostly zeros, a small pool (codebook) and arbitrary patterns (NaN payloads,
    -0.0, subnormals, infinities)."""
    name = draw(st.sampled_from(names))
    dtype = codecs.DTYPES[name]
    top = 1 if dtype == torch.bool else 2 ** (8 * dtype.itemsize) - 1
    pool = draw(st.lists(st.integers(0, top), min_size=1, max_size=20))
    weights = draw(st.sampled_from(["zeros", "pool", "mixed", "random"]))
    elem = {"zeros": st.one_of(st.just(0), st.just(0), st.just(0), st.sampled_from(pool)),
            "pool": st.sampled_from(pool),
            "mixed": st.one_of(st.just(0), st.sampled_from(pool), st.integers(0, top)),
            "random": st.integers(0, top)}[weights]
    values = draw(st.lists(elem, max_size=300))
    n = len(values)
    shape = (n // 3, 3) if n % 3 == 0 and n else (n,)
    return from_bits(np.array(values, dtype=np.uint64), dtype, shape)


@SETTINGS
@given(data=st.data(), width=st.integers(0, 64))
def test_bits_roundtrip(data, width):
    values = data.draw(st.lists(st.integers(0, 2**width - 1), max_size=200))
    arr = np.array(values, dtype=np.uint64)
    packed = bits.pack_bits(arr, width)
    assert len(packed) == bits.packed_len(len(values), width)
    assert np.array_equal(bits.unpack_bits(packed, width, len(values)), arr)


def test_bits_layout_is_lsb_first():
    assert bits.pack_bits(np.array([1, 2, 3]), 2) == bytes([0b00111001])
    with pytest.raises(PackError, match="expected 1"):
        bits.unpack_bits(b"\x00\x00", 2, 3)


@SETTINGS
@given(t=tensors())
def test_auto_roundtrip_is_bit_identical(t):
    enc = encode_tensor(t)
    assert enc.meta["codec"] in codecs.CODECS
    assert_bit_identical(roundtrip(t, enc), t)


@SETTINGS
@given(t=tensors())
def test_every_applicable_codec_is_bit_identical(t):
    used = 0
    for codec in FORCED:
        try:
            enc = encode_tensor(t, codec=codec)
        except PackError:
            continue
        used += 1
        assert enc.meta["codec"] == codec.split("-")[0]
        assert_bit_identical(roundtrip(t, enc), t)
    assert used >= 1  # dense always applies


def test_auto_picks_the_smallest_candidate():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(4000, generator=g)
    t[torch.rand(4000, generator=g) < 0.9] = 0
    auto = encode_tensor(t)
    sizes = {c: codecs.cost(encode_tensor(t, codec=c).payload) for c in ("dense", "codebook", "sparse")}
    assert codecs.cost(auto.payload) == min(sizes.values())
    assert auto.meta["codec"] == "sparse"


def test_signed_zero_and_nan_payloads_survive():
    patterns = np.array([0, 0x80000000, 0x7FC00001, 0xFFC12345, 0x7F800000, 0x00000001, 0, 0], dtype=np.uint32)
    t = from_bits(patterns, torch.float32, (8,))
    for codec in ("dense", "codebook", "sparse-relative", "sparse-bitmask"):
        out = roundtrip(t, encode_tensor(t, codec=codec))
        assert np.array_equal(to_bits(out), patterns)
    with pytest.raises(PackError, match="does not apply"):  # NaN payload 0x7FC00001 is not fp16-exact
        encode_tensor(t, codec="fp16")


def test_fp16_is_chosen_only_when_exact():
    exact = torch.tensor([0.5, -1.25, 3.0, 1024.0, -0.0, 0.0, 7.5, 65504.0] * 50)
    enc = encode_tensor(exact, codec="fp16")
    assert len(enc.payload) == exact.numel() * 2
    assert_bit_identical(roundtrip(exact, enc), exact)
    with pytest.raises(PackError):
        encode_tensor(torch.tensor([0.1, 0.2]), codec="fp16")
    with pytest.raises(PackError):
        encode_tensor(torch.tensor([1, 2], dtype=torch.int32), codec="fp16")


def test_fp16_option_rounds_and_keeps_overflowing_tensors_exact():
    t = torch.randn(500, generator=torch.Generator().manual_seed(1))
    out = roundtrip(t, encode_tensor(t, fp16=True))
    assert out.dtype == torch.float32 and torch.equal(out, t.half().float())
    big = torch.tensor([1e6, 0.1])
    assert_bit_identical(roundtrip(big, encode_tensor(big, fp16=True)), big)


@pytest.mark.parametrize("k, width", [(1, 0), (2, 1), (16, 4), (17, 5), (256, 8)])
def test_codebook_width(k, width):
    t = torch.arange(k, dtype=torch.float32).repeat(10) * 0.37
    enc = encode_tensor(t, codec="codebook")
    assert enc.meta["k"] == k and enc.meta["bits"] == width
    assert enc.meta["parts"][0] == bits.packed_len(t.numel(), width)
    assert_bit_identical(roundtrip(t, enc), t)


def test_relative_index_uses_fillers_for_long_gaps():
    t = torch.zeros(600)
    t[[0, 1, 2, 3, 500]] = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    enc = encode_tensor(t, codec="sparse-relative")
    assert enc.meta["bits"] == 8 and enc.meta["entries"] == 6 and enc.meta["nnz"] == 5  # one filler of 255 zeros
    assert_bit_identical(roundtrip(t, enc), t)
    assert encode_tensor(t, codec="sparse").meta["index"] == "relative"  # 6 bytes beat a 75-byte bitmask


def test_dense_sparse_tensor_prefers_bitmask():
    t = torch.arange(1, 801, dtype=torch.float32)
    t[::2] = 0  # every other element: a gap code per value costs more than one bit per position
    enc = encode_tensor(t, codec="sparse")
    assert enc.meta["index"] == "bitmask"
    assert_bit_identical(roundtrip(t, enc), t)


def test_sparse_sixteen_values_is_far_below_dense():
    g = torch.Generator().manual_seed(0)
    levels = torch.linspace(-1, 1, 16)
    t = levels[torch.randint(0, 16, (256, 256), generator=g)]
    t[torch.rand(256, 256, generator=g) < 0.9] = 0
    enc = encode_tensor(t)
    assert enc.meta["codec"] == "sparse" and enc.meta["values"]["codec"] == "codebook"
    assert codecs.cost(enc.payload) < t.numel() * 4 / 8
    assert_bit_identical(roundtrip(t, enc), t)


@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8, torch.qint32])
def test_affine_per_tensor_roundtrip(qdtype):
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(2))
    q = torch.quantize_per_tensor(x, 0.0123, 3, qdtype)
    out = roundtrip(q, encode_tensor(q))
    assert out.dtype == qdtype and out.qscheme() == torch.per_tensor_affine
    assert torch.equal(out.int_repr(), q.int_repr())
    assert out.q_scale() == q.q_scale() and out.q_zero_point() == q.q_zero_point()


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("qdtype", [torch.qint8, torch.quint8])
def test_affine_per_channel_roundtrip(axis, qdtype):
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(3))
    n = x.shape[axis]
    scales = torch.linspace(0.01, 0.2, n, dtype=torch.float64)
    zps = torch.arange(n) if qdtype == torch.quint8 else torch.zeros(n, dtype=torch.int64)
    q = torch.quantize_per_channel(x, scales, zps, axis, qdtype)
    enc = encode_tensor(q)
    assert enc.meta["codec"] == "affine" and enc.meta["scheme"] == "per_channel"
    out = roundtrip(q, enc)
    assert out.dtype == qdtype and out.q_per_channel_axis() == axis
    assert torch.equal(out.int_repr(), q.int_repr())
    assert torch.equal(out.q_per_channel_scales(), q.q_per_channel_scales())
    assert torch.equal(out.q_per_channel_zero_points(), q.q_per_channel_zero_points())


def test_unsupported_dtype_and_bad_codec_names():
    with pytest.raises(PackError, match="complex64"):
        encode_tensor(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(PackError, match="unknown codec 'zip'"):
        encode_tensor(torch.zeros(3), codec="zip")
    with pytest.raises(PackError, match="needs a torch quantized tensor"):
        encode_tensor(torch.zeros(3), codec="affine")


def test_decode_rejects_malformed_meta():
    t = torch.arange(40, dtype=torch.float32) % 4
    enc = encode_tensor(t, codec="codebook")
    with pytest.raises(PackError, match="unknown codec 'nope'"):
        decode_tensor({**enc.meta, "values": {"codec": "nope"}}, enc.payload, [40], "float32")
    with pytest.raises(PackError, match="do not add up"):
        decode_tensor(enc.meta, enc.payload + b"x", [40], "float32")
    with pytest.raises(PackError):
        decode_tensor(enc.meta, enc.payload, [41], "float32")
    with pytest.raises(PackError, match="unsupported dtype"):
        decode_tensor(enc.meta, enc.payload, [40], "float128")
    three = torch.tensor([0.5, 1.5, 2.5] * 4)
    enc3 = encode_tensor(three, codec="codebook")  # k=3 at 2 bits: index 3 is out of range
    bad = b"\xff" + enc3.payload[1:]
    with pytest.raises(PackError, match="index out of range"):
        decode_tensor(enc3.meta, bad, [12], "float32")


def test_million_parameter_tensor_packs_quickly():
    t = torch.randn(1000, 1000, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    enc = encode_tensor(t)
    pruned = t.clone()
    pruned[pruned.abs() < 1.5] = 0
    enc2 = encode_tensor(pruned)
    assert time.perf_counter() - start < 3.0
    assert enc.meta["codec"] == "dense" and enc2.meta["codec"] == "sparse"
