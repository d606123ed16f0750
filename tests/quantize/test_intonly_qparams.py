"""Quantization parameters: TF fake-quant nudging, symmetric weights, quantize/dequantize, bias, multipliers."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.errors import CompactnnError
from compactnn.quantize.intonly.fixedpoint import INT32_MAX, INT32_MIN, quantize_multiplier
from compactnn.quantize.intonly.qparams import (
    add_multipliers,
    asymmetric_uint8,
    bias_int32,
    concat_multipliers,
    dequantize,
    nudged_range,
    output_multiplier,
    quantize,
    relu_range,
    round_half_away,
    symmetric_int8,
)

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, allow_infinity=False)


# ----------------------------------------------------------------------------------------------------- nudging


@pytest.mark.parametrize(
    "rmin, rmax, qmin, qmax, want",
    [
        # (scale, Z, nudged_min, nudged_max) worked by hand
        (-1.0, 1.0, 0, 255, (2 / 255, 128, -128 * 2 / 255, 127 * 2 / 255)),  # Z from min = 127.5 -> 128 (away)
        (-0.1, 12.65, 0, 255, (0.05, 2, -0.1, 12.65)),  # already aligned: 0.1/0.05 = 2
        (-0.12, 12.63, 0, 255, (0.05, 2, -0.1, 12.65)),  # Z from min 2.4 -> 2; range slides up by 0.02
        (-0.13, 12.62, 0, 255, (0.05, 3, -0.15, 12.6)),  # Z from min 2.6 -> 3
        (0.5, 2.0, 0, 255, (2 / 255, 0, 0.0, 2.0)),  # min forced to 0
        (-3.0, -1.0, 0, 255, (3 / 255, 255, -3.0, 0.0)),  # max forced to 0
        (-1.0, 1.0, -127, 127, (1 / 127, 0, -1.0, 1.0)),  # narrow signed range
        (0.0, 0.0, 0, 255, (1.0, 0, 0.0, 255.0)),  # degenerate: scale 1
    ],
)
def test_nudged_range_hand_examples(rmin, rmax, qmin, qmax, want):
    scale, zp, nmin, nmax = nudged_range(rmin, rmax, qmin, qmax)
    assert zp == want[1] and isinstance(zp, int)
    np.testing.assert_allclose([scale, nmin, nmax], [want[0], want[2], want[3]], rtol=1e-12, atol=1e-12)


@settings(max_examples=300, deadline=None)
@given(finite, finite, st.sampled_from([(0, 255), (-128, 127), (-127, 127), (0, 15)]))
def test_nudged_range_properties(a, b, q):
    qmin, qmax = q
    rmin, rmax = min(a, b), max(a, b)
    scale, zp, nmin, nmax = nudged_range(rmin, rmax, qmin, qmax)
    assert qmin <= zp <= qmax and scale > 0
    assert quantize(0.0, scale, zp, qmin, qmax) == zp  # real 0 is the code Z exactly
    assert dequantize(zp, scale, zp) == 0.0
    assert nmin == (qmin - zp) * scale and nmax == (qmax - zp) * scale
    assert nmax - nmin == pytest.approx(scale * (qmax - qmin), rel=1e-12)
    assert nmin <= 0.0 <= nmax
    lo, hi = min(rmin, 0.0), max(rmax, 0.0)
    if hi > lo:  # the nudge moves the range by at most half a step
        assert abs(nmin - lo) <= scale / 2 * (1 + 1e-9) + 1e-300


def test_asymmetric_uint8_is_nudged_range():
    assert asymmetric_uint8(-0.12, 12.63) == nudged_range(-0.12, 12.63, 0, 255)[:2]


@pytest.mark.parametrize("args", [(1.0, -1.0), (float("nan"), 1.0), (0.0, float("inf")), (-1.0, 1.0, 5, 5)])
def test_nudged_range_errors(args):
    with pytest.raises(CompactnnError, match="nudged_range"):
        nudged_range(*args)


# ------------------------------------------------------------------------------------------------- symmetric


def test_symmetric_int8_per_tensor():
    w = np.array([[0.5, -1.27], [0.3, 0.0]])
    scale, zp = symmetric_int8(w)
    assert scale == pytest.approx(0.01) and zp == 0
    q = quantize(w, scale, zp, -127, 127)
    assert q.tolist() == [[50, -127], [30, 0]]


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_symmetric_int8_per_channel_and_zero_channel(axis):
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3, 2, 2))
    idx = [slice(None)] * 4
    idx[axis] = 1
    w[tuple(idx)] = 0.0  # an all-zero channel
    scale, zp = symmetric_int8(torch.from_numpy(w), per_channel=True, axis=axis)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    want = np.abs(moved).max(axis=1) / 127
    want[1] = 1.0  # documented: zero channel -> scale 1
    np.testing.assert_allclose(scale, want, rtol=0, atol=0)
    assert zp.tolist() == [0] * w.shape[axis]
    q = quantize(w, scale, zp, -127, 127, axis=axis)
    qm = np.abs(np.moveaxis(q, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
    assert qm.tolist() == [127 if i != 1 else 0 for i in range(w.shape[axis])]


def test_symmetric_int8_all_zero_and_errors():
    assert symmetric_int8(np.zeros(5)) == (1.0, 0)
    with pytest.raises(CompactnnError):
        symmetric_int8(np.array([1.0, np.nan]))
    with pytest.raises(CompactnnError):
        symmetric_int8(np.float64(1.0), per_channel=True)


# ------------------------------------------------------------------------------------------ quantize/dequantize


def test_quantize_rounds_half_away_from_zero_and_clamps():
    r = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.49999999999999994, 1000.0, -1000.0])
    assert quantize(r, 1.0, 0, -128, 127).tolist() == [1, -1, 2, -2, 3, -3, 0, 127, -128]
    assert quantize(np.array([0.25, 0.75]), 0.5, 10, 0, 255).tolist() == [11, 12]  # 0.5 -> 1, 1.5 -> 2
    assert round_half_away(np.array([2.5, -2.5, 0.5])).tolist() == [3.0, -3.0, 1.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=20), st.floats(0.001, 10.0), st.integers(0, 255))
def test_quantize_dequantize_roundtrip_within_half_step(values, scale, zp):
    r = np.array(values)
    q = quantize(r, scale, zp, 0, 255)
    assert q.dtype == np.int64 and q.min() >= 0 and q.max() <= 255
    inside = (r >= (0 - zp) * scale) & (r <= (255 - zp) * scale)
    err = np.abs(dequantize(q, scale, zp) - r)[inside]
    assert np.all(err <= scale / 2 * (1 + 1e-9))
    for v, got in zip(values, q):  # the exact rule on the float64 quotient (as TFLite rounds val / scale)
        f = Fraction(v / scale)
        want = int((abs(f) + Fraction(1, 2)).__floor__()) * (1 if f >= 0 else -1) + zp
        assert got == min(max(want, 0), 255)


def test_quantize_errors():
    with pytest.raises(CompactnnError):
        quantize(np.ones(3), 0.0, 0, 0, 255)
    with pytest.raises(CompactnnError):
        quantize(np.array([np.nan]), 1.0, 0, 0, 255)


# ------------------------------------------------------------------------------------------------------ bias


def test_bias_int32_per_tensor_and_per_channel():
    b = np.array([0.0, 0.013, -0.013, 1e9, -1e9])
    q = bias_int32(b, 0.1, 0.01)  # scale 1e-3
    assert q.dtype == np.int32
    assert q.tolist() == [0, 13, -13, INT32_MAX, INT32_MIN]
    q2 = bias_int32(torch.tensor([0.3, 0.3]), 0.5, np.array([0.2, 0.4]))  # scales 0.1 and 0.2
    assert q2.tolist() == [3, 2]  # 0.3/0.2 = 1.5 -> 2 (half away from zero, up to float error of 0.3)


def test_bias_int32_errors():
    with pytest.raises(CompactnnError):
        bias_int32(np.ones(2), 0.0, 1.0)


# --------------------------------------------------------------------------------------------- multipliers


def test_output_multiplier_scalar_and_per_channel():
    assert output_multiplier(0.02, 0.005, 0.1) == quantize_multiplier(0.02 * 0.005 / 0.1)
    sw = np.array([0.005, 0.01, 0.0])
    m0, sh = output_multiplier(0.02, sw, 0.1)
    assert m0.dtype == np.int64 and sh.dtype == np.int64
    assert list(zip(m0.tolist(), sh.tolist())) == [quantize_multiplier(0.02 * s / 0.1) for s in sw]


def test_add_multipliers_follow_tflite_prepare():
    got = add_multipliers(0.02, 0.05, 0.04)
    assert got["left_shift"] == 20
    assert (got["M0_1"], got["shift_1"]) == quantize_multiplier(0.02 / 0.1)
    assert (got["M0_2"], got["shift_2"]) == (2**30, 0)  # 0.05 / 0.1 = 0.5
    assert (got["M0_y"], got["shift_y"]) == quantize_multiplier(0.1 / (2**20 * 0.04))


def test_concat_multipliers_pass_through_identical():
    got = concat_multipliers([0.1, 0.1, 0.2], [5, 6, 5], 0.1, 5)
    assert got == [None, quantize_multiplier(1.0), quantize_multiplier(2.0)]
    with pytest.raises(ValueError):
        concat_multipliers([0.1], [1, 2], 0.1, 1)


# ---------------------------------------------------------------------------------------------- activations


@pytest.mark.parametrize(
    "z, s, kind, want",
    [
        (10, 0.05, "none", (0, 255)),
        (10, 0.05, "relu", (10, 255)),
        (10, 0.05, "relu6", (10, 130)),  # 6/0.05 = 120
        (10, 0.01, "relu6", (10, 255)),  # 600 steps: clipped to 255
        (0, 6 / 255, "relu6", (0, 255)),
        (128, 0.016, "relu6", (128, 255)),  # 6/0.016 = 375
        (128, 0.1, "relu_n1_to_1", (118, 138)),
        (100, 0.08, "relu6", (100, 175)),  # 6/0.08 = 75
        (3, 0.4, "relu6", (3, 18)),  # 6/0.4 = 15
        (3, 6 / 14.5, "relu6", (3, 18)),  # 6/S = 14.5 -> 15, half away from zero
    ],
)
def test_relu_range(z, s, kind, want):
    assert relu_range(z, s, kind) == want


def test_relu_range_errors():
    with pytest.raises(CompactnnError, match="relu6"):
        relu_range(0, 0.1, "gelu")
    with pytest.raises(CompactnnError):
        relu_range(0, 0.0, "relu")
