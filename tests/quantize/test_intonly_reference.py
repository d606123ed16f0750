"""Reference integer kernels: exact accumulators, exact requantization, closeness to float, error paths."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compactnn.errors import CompactnnError
from compactnn.quantize.intonly import reference as ref
from compactnn.quantize.intonly.fixedpoint import INT32_MAX, INT32_MIN, requantize
from compactnn.quantize.intonly.qparams import (
    add_multipliers,
    asymmetric_uint8,
    bias_int32,
    concat_multipliers,
    dequantize,
    output_multiplier,
    quantize,
    relu_range,
    symmetric_int8,
)

# ------------------------------------------------------------------- exact rational TFLite definitions (Python ints)


def srdhm_exact(a, b):
    return INT32_MAX if a == b == INT32_MIN else math.floor(Fraction(a * b, 2**31) + Fraction(1, 2))


def rdbpot_exact(x, e):
    v = Fraction(x, 2**e)
    return math.floor(abs(v) + Fraction(1, 2)) * (1 if v >= 0 else -1)


def mbqm_exact(x, m0, shift):
    return rdbpot_exact(srdhm_exact(min(max(x * 2 ** max(shift, 0), INT32_MIN), INT32_MAX), m0), max(-shift, 0))


# ------------------------------------------------------------------------------------------------------ helpers


def make_layer(rng, shape_x, shape_w, per_channel, relu=False):
    """Float layer quantized the usual way: uint8 activations, int8 symmetric weights, int32 bias."""
    x = rng.normal(size=shape_x)
    if relu:
        x = np.maximum(x, 0)
    w = rng.normal(size=shape_w) * 0.3
    b = rng.normal(size=shape_w[0]) * 0.2
    s_x, z_x = asymmetric_uint8(x.min(), x.max())
    s_w, z_w = symmetric_int8(w, per_channel=per_channel, axis=0)
    q_x = quantize(x, s_x, z_x, 0, 255).astype(np.uint8)
    q_w = quantize(w, s_w, z_w, -127, 127, axis=0 if per_channel else None).astype(np.int8)
    q_b = bias_int32(b, s_x, s_w)
    x_d = dequantize(q_x, s_x, z_x)
    w_d = dequantize(q_w, s_w, 0, axis=0 if per_channel else None)
    return dict(q_x=q_x, z_x=z_x, s_x=s_x, q_w=q_w, s_w=s_w, q_b=q_b, b=b, x_d=x_d, w_d=w_d)


def out_params(y_float, s_x, s_w):
    s_y, z_y = asymmetric_uint8(y_float.min(), y_float.max())
    m0, sh = output_multiplier(s_x, s_w, s_y)
    return s_y, z_y, m0, sh


# ------------------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_exact_and_close_to_float(per_channel):
    rng = np.random.default_rng(0)
    L = make_layer(rng, (6, 40), (7, 40), per_channel)
    acc = ref.linear_acc(L["q_x"], L["z_x"], L["q_w"], L["q_b"])
    by_python = [[sum((int(a) - L["z_x"]) * int(w) for a, w in zip(row, wr)) + int(bb) for wr, bb in zip(L["q_w"], L["q_b"])]
                 for row in L["q_x"]]
    assert acc.tolist() == by_python
    y_float = L["x_d"] @ L["w_d"].T + L["b"]
    s_y, z_y, m0, sh = out_params(y_float, L["s_x"], L["s_w"])
    q_y = ref.linear(L["q_x"], L["z_x"], L["q_w"], L["q_b"], m0, sh, z_y)
    assert q_y.dtype == np.uint8 and q_y.shape == (6, 7)
    m0v, shv = np.broadcast_to(m0, (7,)), np.broadcast_to(sh, (7,))
    want = [[min(max(mbqm_exact(a, int(m0v[o]), int(shv[o])) + z_y, 0), 255) for o, a in enumerate(row)] for row in by_python]
    assert q_y.tolist() == want
    err = np.abs(dequantize(q_y, s_y, z_y) - np.clip(y_float, -z_y * s_y, (255 - z_y) * s_y))
    assert err.max() <= s_y


def test_linear_fused_relu6_range():
    rng = np.random.default_rng(1)
    L = make_layer(rng, (8, 16), (5, 16), False)
    y_float = L["x_d"] @ L["w_d"].T + L["b"]
    s_y, z_y, m0, sh = out_params(y_float, L["s_x"], L["s_w"])
    lo, hi = relu_range(z_y, s_y, "relu6")
    q_y = ref.linear(L["q_x"], L["z_x"], L["q_w"], L["q_b"], m0, sh, z_y, qmin=lo, qmax=hi)
    plain = ref.linear(L["q_x"], L["z_x"], L["q_w"], L["q_b"], m0, sh, z_y)
    np.testing.assert_array_equal(q_y, ref.clamp(plain, lo, hi))
    assert q_y.min() >= z_y


# ------------------------------------------------------------------------------------------------------- conv2d

CONV_CASES = [
    dict(shape_x=(2, 3, 7, 7), shape_w=(4, 3, 3, 3), stride=1, padding=1, dilation=1, groups=1),
    dict(shape_x=(1, 4, 9, 8), shape_w=(6, 2, 3, 2), stride=(2, 1), padding=(1, 0), dilation=1, groups=2),
    dict(shape_x=(2, 5, 6, 6), shape_w=(5, 1, 3, 3), stride=1, padding=1, dilation=1, groups=5),  # depthwise
    dict(shape_x=(1, 2, 9, 9), shape_w=(3, 2, 3, 3), stride=2, padding=2, dilation=2, groups=1),
    dict(shape_x=(3, 3, 4, 5), shape_w=(2, 3, 1, 1), stride=1, padding=0, dilation=1, groups=1),  # 1x1
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("per_channel", [False, True])
def test_conv2d_exact_and_close_to_float(case, per_channel):
    rng = np.random.default_rng(2)
    geo = {k: case[k] for k in ("stride", "padding", "dilation", "groups")}
    L = make_layer(rng, case["shape_x"], case["shape_w"], per_channel)
    acc = ref.conv2d_acc(L["q_x"], L["z_x"], L["q_w"], L["q_b"], **geo)
    # float64 conv of integer-valued arrays is exact (all sums < 2^53); zero padding of q_x − Z_x = Z_x padding
    x_int = torch.from_numpy(L["q_x"].astype(np.float64) - L["z_x"])
    want = F.conv2d(x_int, torch.from_numpy(L["q_w"].astype(np.float64)), torch.from_numpy(L["q_b"].astype(np.float64)), **geo)
    assert acc.dtype == np.int64
    np.testing.assert_array_equal(acc, want.numpy().astype(np.int64))
    y_float = F.conv2d(torch.from_numpy(L["x_d"]), torch.from_numpy(L["w_d"]), torch.from_numpy(L["b"]), **geo).numpy()
    s_y, z_y, m0, sh = out_params(y_float, L["s_x"], L["s_w"])
    q_y = ref.conv2d(L["q_x"], L["z_x"], L["q_w"], L["q_b"], m0, sh, z_y, **geo)
    assert q_y.dtype == np.uint8 and q_y.shape == y_float.shape
    np.testing.assert_array_equal(q_y, requantize(want.numpy().astype(np.int64), m0, sh, z_y, 0, 255, axis=1))
    err = np.abs(dequantize(q_y, s_y, z_y) - np.clip(y_float, -z_y * s_y, (255 - z_y) * s_y))
    assert err.max() <= s_y


def test_conv2d_requantize_matches_exact_rationals_per_channel():
    rng = np.random.default_rng(3)
    L = make_layer(rng, (1, 2, 5, 5), (3, 2, 3, 3), True)
    m0, sh = output_multiplier(L["s_x"], L["s_w"], 0.05)
    acc = ref.conv2d_acc(L["q_x"], L["z_x"], L["q_w"], L["q_b"], padding=1)
    q_y = ref.conv2d(L["q_x"], L["z_x"], L["q_w"], L["q_b"], m0, sh, 100, padding=1)
    for idx in np.ndindex(acc.shape):
        o = idx[1]
        assert q_y[idx] == min(max(mbqm_exact(int(acc[idx]), int(m0[o]), int(sh[o])) + 100, 0), 255)


@pytest.mark.parametrize("z_x", [0, 37, 255])
def test_conv2d_zero_input_gives_output_zero_point_exactly(z_x):
    q_x = np.full((2, 3, 5, 5), z_x, dtype=np.uint8)  # real 0 everywhere, padding included
    q_w = np.random.default_rng(4).integers(-127, 128, size=(4, 3, 3, 3)).astype(np.int8)
    q_y = ref.conv2d(q_x, z_x, q_w, np.zeros(4, dtype=np.int32), 2**30, -3, 77, padding=2, stride=2)
    assert np.all(q_y == 77)
    assert np.all(ref.conv2d_acc(q_x, z_x, q_w, None, padding=2) == 0)


# --------------------------------------------------------------------------------------------------------- pools


@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((3, 2), (1, 2), (1, 0))])
def test_max_pool2d_matches_torch(kernel, stride, padding):
    q = np.random.default_rng(5).integers(0, 256, size=(2, 3, 7, 6)).astype(np.uint8)
    got = ref.max_pool2d(q, kernel, stride, padding)
    want = F.max_pool2d(torch.from_numpy(q.astype(np.float64)), kernel, stride, padding).numpy()
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want.astype(np.uint8))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
@pytest.mark.parametrize("kernel, stride, padding", [(2, None, 0), (3, 2, 1), ((2, 3), 1, (1, 1))])
def test_avg_pool2d_tflite_rounding(dtype, kernel, stride, padding):
    info = np.iinfo(dtype)
    q = np.random.default_rng(6).integers(info.min, info.max + 1, size=(2, 2, 6, 7)).astype(dtype)
    got = ref.avg_pool2d(q, kernel, stride, padding)
    # exact: the mean of the in-bounds cells, rounded half away from zero (half up for uint8 sums)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    sh, sw = (kh, kw) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    assert got.dtype == dtype
    for n, c, i, j in np.ndindex(got.shape):
        r0, c0 = i * sh - ph, j * sw - pw
        cells = [int(q[n, c, r, s]) for r in range(max(r0, 0), min(r0 + kh, 6)) for s in range(max(c0, 0), min(c0 + kw, 7))]
        v = Fraction(sum(cells), len(cells))
        assert got[n, c, i, j] == math.floor(abs(v) + Fraction(1, 2)) * (1 if v >= 0 else -1)
    flt = F.avg_pool2d(torch.from_numpy(q.astype(np.float64)), kernel, stride, padding, count_include_pad=False)
    assert np.abs(got.astype(np.float64) - flt.numpy()).max() <= 0.5


def test_avg_pool2d_tie_rounds_up_for_uint8():
    q = np.array([[[[1, 2], [0, 0]]]], dtype=np.uint8)  # sum 3, count 4: 0.75 -> 1
    assert ref.avg_pool2d(q, 2).item() == 1
    q = np.array([[[[1, 1], [0, 0]]]], dtype=np.uint8)  # 0.5 -> 1 ((2 + 2) // 4)
    assert ref.avg_pool2d(q, 2).item() == 1
    q = np.array([[[[-1, -1], [0, 0]]]], dtype=np.int8)  # -0.5 -> -1 (int8 kernel: away from zero)
    assert ref.avg_pool2d(q, 2).item() == -1


# ----------------------------------------------------------------------------------------------------- add/concat


def add_exact(a, z1, b, z2, p, z_y, qmin=0, qmax=255):
    s1 = mbqm_exact((int(a) - z1) * 2 ** p["left_shift"], p["M0_1"], p["shift_1"])
    s2 = mbqm_exact((int(b) - z2) * 2 ** p["left_shift"], p["M0_2"], p["shift_2"])
    return min(max(mbqm_exact(s1 + s2, p["M0_y"], p["shift_y"]) + z_y, qmin), qmax)


@pytest.mark.parametrize("s1, z1, s2, z2, s_y, z_y", [(0.02, 128, 0.05, 10, 0.06, 90), (0.1, 0, 0.1, 0, 0.2, 0),
                                                      (0.003, 200, 0.04, 3, 0.01, 128)])
def test_add_matches_exact_tflite_definition_and_float(s1, z1, s2, z2, s_y, z_y):
    rng = np.random.default_rng(7)
    a = rng.integers(0, 256, size=(3, 50)).astype(np.uint8)
    b = rng.integers(0, 256, size=(3, 50)).astype(np.uint8)
    a[0, :4], b[0, :4] = [0, 255, 0, 255], [0, 255, 255, 0]
    p = add_multipliers(s1, s2, s_y)
    got = ref.add(a, z1, p["M0_1"], p["shift_1"], b, z2, p["M0_2"], p["shift_2"], z_y, p["M0_y"], p["shift_y"])
    assert got.dtype == np.uint8
    assert got.tolist() == [[add_exact(x, z1, y, z2, p, z_y) for x, y in zip(ra, rb)] for ra, rb in zip(a, b)]
    y_float = dequantize(a, s1, z1) + dequantize(b, s2, z2)
    err = np.abs(dequantize(got, s_y, z_y) - np.clip(y_float, -z_y * s_y, (255 - z_y) * s_y))
    assert err.max() <= s_y
    args = (a, z1, p["M0_1"], p["shift_1"], b, z2, p["M0_2"], p["shift_2"], z_y, p["M0_y"], p["shift_y"])
    got_relu = ref.add(*args, qmin=z_y)  # fused ReLU: the same codes, clamped at Z_y
    np.testing.assert_array_equal(got_relu, np.maximum(got, z_y))


def test_concat_pass_through_and_exact_requantization():
    rng = np.random.default_rng(8)
    xs = [rng.integers(0, 256, size=(2, c, 3, 3)).astype(np.uint8) for c in (2, 3, 1)]
    scales, zps, s_y, z_y = [0.1, 0.03, 0.4], [20, 128, 0], 0.1, 20
    mult = concat_multipliers(scales, zps, s_y, z_y)
    assert mult[0] is None
    got = ref.concat(xs, zps, mult, z_y, axis=1)
    assert got.shape == (2, 6, 3, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[:, :2], xs[0])  # identical params pass through
    for part, x, z, s, (m0, sh) in [(got[:, 2:5], xs[1], zps[1], scales[1], mult[1]),
                                    (got[:, 5:], xs[2], zps[2], scales[2], mult[2])]:
        L = min(20, sh + 31)
        want = np.vectorize(lambda q: min(max(mbqm_exact((int(q) - z) * 2**L, m0, sh - L) + z_y, 0), 255))(x)
        np.testing.assert_array_equal(part, want)
        # and agrees with TFLite's float formula round(q·s_i/s_y − Z_i·s_i/s_y) + Z_y up to a tie
        flt = np.clip(np.round((x.astype(np.float64) - z) * s / s_y) + z_y, 0, 255)
        assert np.abs(part.astype(np.float64) - flt).max() <= 1


def test_concat_small_values_are_rounded_once():
    m0, sh = concat_multipliers([0.03], [0], 0.1, 5)[0]  # M = 0.3: plain MBQM would turn q = 1 into 1, not 0
    got = ref.concat([np.array([1, 2, 5], dtype=np.uint8)], [0], [(m0, sh)], 0, axis=0)
    assert got.tolist() == [0, 1, 2]  # round(0.3), round(0.6), round(1.5) half away


# --------------------------------------------------------------------------------------------------------- errors

U8 = np.zeros((2, 4), dtype=np.uint8)
I8 = np.zeros((3, 4), dtype=np.int8)
X4 = np.zeros((1, 4, 5, 5), dtype=np.uint8)
W4 = np.zeros((2, 4, 3, 3), dtype=np.int8)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ref.linear(U8.astype(np.float32), 0, I8, None, 2**30, 0, 0), "q_x must have dtype uint8"),
        (lambda: ref.linear(U8, 0, I8.astype(np.uint8), None, 2**30, 0, 0), "q_w must have dtype int8"),
        (lambda: ref.linear(U8, 0, np.zeros((3, 5), np.int8), None, 2**30, 0, 0), "features"),
        (lambda: ref.linear(U8[0], 0, I8, None, 2**30, 0, 0), "2-D"),
        (lambda: ref.linear(U8, 0, I8, np.zeros(3, np.int64), 2**30, 0, 0), "q_b must have dtype int32"),
        (lambda: ref.linear(U8, 0, I8, np.zeros(2, np.int32), 2**30, 0, 0), "3 entries"),
        (lambda: ref.linear(U8, 256, I8, None, 2**30, 0, 0), "z_x"),
        (lambda: ref.linear(U8, 0, I8, None, 2**30, 0, 0, qmin=9, qmax=3), "qmin <= qmax"),
        (lambda: ref.linear_acc(U8 + 255, 0, I8 + 127, np.full(3, INT32_MAX, np.int32)), "overflows int32"),
        (lambda: ref.conv2d(X4, 0, W4, None, 2**30, 0, 0, groups=3), "groups"),
        (lambda: ref.conv2d(X4, 0, np.zeros((2, 4, 7, 7), np.int8), None, 2**30, 0, 0), "smaller than"),
        (lambda: ref.conv2d(X4, 0, W4, None, 2**30, 0, 0, stride=0), "stride"),
        (lambda: ref.conv2d(X4, 0, W4, None, 2**30, 0, 0, padding=(1, 2, 3)), "padding"),
        (lambda: ref.max_pool2d(X4, 2, padding=2), "half the kernel"),
        (lambda: ref.avg_pool2d(X4.astype(np.int32), 2), "uint8 or int8"),
        (lambda: ref.add(U8, 0, 2**30, 0, U8, 0, 2**30, 0, 0, 2**30, 0, left_shift=24), "left_shift"),
        (lambda: ref.concat([U8], [1], [None], 0), "zero point"),
        (lambda: ref.concat([U8, U8], [0], [None], 0), "one zero point"),
        (lambda: ref.concat([U8, X4], [0, 0], [None, None], 0), "do not fit"),
        (lambda: ref.clamp(np.zeros(2), 0, 1), "integer"),
    ],
)
def test_error_paths(call, match):
    with pytest.raises(CompactnnError, match=match) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
