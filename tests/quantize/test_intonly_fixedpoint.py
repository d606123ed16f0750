"""Fixed-point primitives against exact rational arithmetic, and the torch versions against the NumPy definition."""

import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.errors import CompactnnError
from compactnn.quantize.intonly.fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_torch,
    quantize_multiplier,
    rdbpot,
    rdbpot_torch,
    requantize,
    requantize_torch,
    srdhm,
    srdhm_torch,
)

EDGES = [INT32_MIN, INT32_MIN + 1, -(2**30), -3, -2, -1, 0, 1, 2, 3, 2**30, INT32_MAX - 1, INT32_MAX]
int32 = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(EDGES))
near_limits = st.one_of(st.integers(INT32_MIN, INT32_MIN + 2**20), st.integers(INT32_MAX - 2**20, INT32_MAX))
multipliers = st.floats(min_value=2.0**-30, max_value=2.0**8, allow_nan=False, allow_infinity=False)


# ------------------------------------------------------------------------------------- exact rational definitions


def round_half_up(v: Fraction) -> int:
    return math.floor(v + Fraction(1, 2))


def round_half_away(v: Fraction) -> int:
    return math.floor(abs(v) + Fraction(1, 2)) * (1 if v >= 0 else -1)


def srdhm_exact(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    return round_half_up(Fraction(a * b, 2**31))  # nearest, ties toward +inf


def rdbpot_exact(x: int, e: int) -> int:
    return round_half_away(Fraction(x, 2**e))


def mbqm_exact(x: int, m0: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    return rdbpot_exact(srdhm_exact(min(max(x * 2**left, INT32_MIN), INT32_MAX), m0), right)


# ------------------------------------------------------------------------------------------------------- SRDHM


@settings(max_examples=500, deadline=None)
@given(int32, int32)
def test_srdhm_is_nearest_ties_toward_plus_infinity(a, b):
    assert int(srdhm(a, b)) == srdhm_exact(a, b)


@pytest.mark.parametrize(
    "a, b, want",
    [
        (-3, 2**30, -1),  # -1.5 -> -1: ties go toward +inf (PAPERS.md)
        (3, 2**30, 2),  # 1.5 -> 2
        (-1, 2**30, 0),  # -0.5 -> 0
        (1, 2**30, 1),  # 0.5 -> 1
        (-5, 2**30, -2),  # -2.5 -> -2
        (INT32_MIN, INT32_MIN, INT32_MAX),  # the only overflow: saturates
        (INT32_MIN, INT32_MAX, -(2**31 - 1)),
        (INT32_MAX, INT32_MAX, 2**31 - 2),
        (INT32_MIN, 1, -1),  # -2^31/2^31 = -1 exactly
        (0, INT32_MIN, 0),
    ],
)
def test_srdhm_explicit(a, b, want):
    assert int(srdhm(a, b)) == want
    assert int(srdhm_torch(torch.tensor(a, dtype=torch.int32), b)) == want


# ------------------------------------------------------------------------------------------------------- RDBPOT


@settings(max_examples=500, deadline=None)
@given(int32, st.integers(0, 31))
def test_rdbpot_is_round_half_away_from_zero(x, e):
    assert int(rdbpot(x, e)) == rdbpot_exact(x, e)


@pytest.mark.parametrize(
    "x, e, want",
    [
        (-3, 1, -2), (3, 1, 2), (-1, 1, -1), (1, 1, 1), (-5, 2, -1), (-6, 2, -2), (6, 2, 2), (5, 2, 1),
        (7, 0, 7), (INT32_MIN, 31, -1), (INT32_MAX, 31, 1), (-(2**30), 31, -1), (2**30, 31, 1),
        (2**30 - 1, 31, 0), (-(2**30) + 1, 31, 0), (INT32_MIN, 0, INT32_MIN),
    ],
)
def test_rdbpot_explicit(x, e, want):
    assert int(rdbpot(x, e)) == want
    assert int(rdbpot_torch(torch.tensor(x), e)) == want


# ------------------------------------------------------------------------------------------ quantize_multiplier


@settings(max_examples=500, deadline=None)
@given(st.floats(min_value=2.0**-31, max_value=2.0**30, allow_nan=False, allow_infinity=False))
def test_quantize_multiplier_range_and_error(M):
    m0, shift = quantize_multiplier(M)
    assert 2**30 <= m0 < 2**31
    approx = Fraction(m0) * Fraction(2) ** (shift - 31)
    assert abs(approx - Fraction(M)) <= Fraction(M) * Fraction(1, 2**31)


@pytest.mark.parametrize(
    "M, want",
    [
        (1 - 2.0**-33, (2**30, 1)),  # q·2^31 = 2^31 − 1/4 rounds to 2^31: halve and bump the shift
        (1 - 2.0**-32, (2**30, 1)),  # exact tie 2^31 − 1/2, away from zero -> 2^31 -> halved
        (0.5 + 2.0**-32, (2**30 + 1, 0)),  # tie 2^30 + 1/2 -> away from zero (half-even would give 2^30)
        (0.5 + 2.0**-33, (2**30, 0)),  # 2^30 + 1/4 -> down
        (1.0, (2**30, 1)),
        (0.5, (2**30, 0)),
        (0.75, (3 * 2**29, 0)),
        (2.0**-32, (2**30, -31)),  # smallest kept shift
        (2.0**-33, (0, 0)),  # shift -32 < -31: flushed to zero as TFLite
        (0.0, (0, 0)),
    ],
)
def test_quantize_multiplier_explicit(M, want):
    assert quantize_multiplier(M) == want


@pytest.mark.parametrize("bad", [-1e-9, -1.0, float("nan"), float("inf"), float("-inf")])
def test_quantize_multiplier_rejects(bad):
    with pytest.raises(ValueError, match="quantize_multiplier"):
        quantize_multiplier(bad)


# ----------------------------------------------------------------------------- multiply_by_quantized_multiplier


@settings(max_examples=400, deadline=None)
@given(st.one_of(int32, near_limits), multipliers)
def test_mbqm_matches_exact_two_step_rounding(x, M):
    m0, shift = quantize_multiplier(M)
    got = int(multiply_by_quantized_multiplier(x, m0, shift))
    assert got == mbqm_exact(x, m0, shift)
    if shift <= 0:  # no left shift, no saturation: within one unit of the exact product
        assert abs(got - Fraction(x) * m0 * Fraction(2) ** (shift - 31)) <= 1


@settings(max_examples=200, deadline=None)
@given(near_limits, st.integers(2**30, INT32_MAX), st.integers(-31, 0))
def test_mbqm_near_int32_limits_any_shift(x, m0, shift):
    assert int(multiply_by_quantized_multiplier(x, m0, shift)) == mbqm_exact(x, m0, shift)


def test_mbqm_double_rounding_differs_from_single_rounding():
    m0, shift = quantize_multiplier(0.3)  # 0.6·2^-1: SRDHM rounds 0.6 -> 1, RDBPOT rounds 0.5 -> 1
    assert int(multiply_by_quantized_multiplier(1, m0, shift)) == 1
    assert round_half_away(Fraction(m0) * Fraction(2) ** (shift - 31)) == 0  # single rounding of 0.3 gives 0


def test_mbqm_left_shift_saturates():
    m0, shift = quantize_multiplier(4.0)  # shift 3: x·8 overflows int32 for x > 2^28
    assert shift == 3
    assert int(multiply_by_quantized_multiplier(2**28 - 1, m0, shift)) == (2**28 - 1) * 4  # exact, no saturation
    assert int(multiply_by_quantized_multiplier(2**29, m0, shift)) == srdhm_exact(INT32_MAX, m0)
    assert int(multiply_by_quantized_multiplier(-(2**29), m0, shift)) == srdhm_exact(INT32_MIN, m0)
    assert int(multiply_by_quantized_multiplier(-1, m0, 40)) == srdhm_exact(INT32_MIN, m0)  # huge shift is fine


def test_mbqm_per_channel_along_axis():
    rng = np.random.default_rng(0)
    acc = rng.integers(-(2**24), 2**24, size=(2, 5, 3, 3))
    ms = [quantize_multiplier(M) for M in rng.uniform(1e-4, 3.0, size=5)]
    m0 = np.array([m for m, _ in ms])
    sh = np.array([s for _, s in ms])
    got = multiply_by_quantized_multiplier(acc, m0, sh, axis=1)
    for c in range(5):
        np.testing.assert_array_equal(got[:, c], multiply_by_quantized_multiplier(acc[:, c], m0[c], sh[c]))
    got_t = multiply_by_quantized_multiplier_torch(torch.from_numpy(acc).to(torch.int32), m0, sh, axis=1)
    np.testing.assert_array_equal(got_t.numpy(), got)
    np.testing.assert_array_equal(multiply_by_quantized_multiplier(acc.transpose(0, 2, 3, 1), m0, sh), got.transpose(0, 2, 3, 1))


def test_requantize_adds_zero_point_and_clamps():
    acc = np.array([-(2**31), -1000, -1, 0, 1, 999, 5000, INT32_MAX])
    m0, shift = quantize_multiplier(0.01)
    got = requantize(acc, m0, shift, 128, 10, 200)
    want = [min(max(mbqm_exact(int(a), m0, shift) + 128, 10), 200) for a in acc]
    assert got.tolist() == want
    assert requantize_torch(torch.from_numpy(acc), m0, shift, 128, 10, 200).tolist() == want


# ------------------------------------------------------------------------------------------------ torch == numpy


def _random_int32(rng, n):
    x = rng.integers(INT32_MIN, INT32_MAX, size=n, endpoint=True)
    return np.concatenate([x, np.array(EDGES)])


def test_torch_versions_equal_numpy_on_random_and_edge_inputs():
    rng = np.random.default_rng(1)
    n = 20000
    a, b = _random_int32(rng, n), _random_int32(rng, n)
    a_t, b_t = torch.from_numpy(a).to(torch.int32), torch.from_numpy(b)
    np.testing.assert_array_equal(srdhm_torch(a_t, b_t).numpy(), srdhm(a, b))
    grid_a, grid_b = np.meshgrid(np.array(EDGES), np.array(EDGES))
    np.testing.assert_array_equal(srdhm_torch(torch.from_numpy(grid_a), torch.from_numpy(grid_b)).numpy(), srdhm(grid_a, grid_b))
    e = rng.integers(0, 31, size=a.size, endpoint=True)
    np.testing.assert_array_equal(rdbpot_torch(a_t, torch.from_numpy(e)).numpy(), rdbpot(a, e))
    m0 = rng.integers(2**30, 2**31, size=a.size)
    sh = rng.integers(-31, 8, size=a.size, endpoint=True)
    want = multiply_by_quantized_multiplier(a, m0, sh)
    np.testing.assert_array_equal(multiply_by_quantized_multiplier_torch(a_t, torch.from_numpy(m0), torch.from_numpy(sh)).numpy(), want)
    np.testing.assert_array_equal(requantize_torch(a_t, m0, sh, 3, 0, 255).numpy(), requantize(a, m0, sh, 3, 0, 255))
    for i in rng.choice(a.size, 300, replace=False):  # and both equal the exact rational definition
        assert want[i] == mbqm_exact(int(a[i]), int(m0[i]), int(sh[i]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(int32, int32, st.integers(-31, 4)), min_size=1, max_size=8))
def test_torch_equals_numpy_property(rows):
    a, b, s = (np.array(c, dtype=np.int64) for c in zip(*rows))
    np.testing.assert_array_equal(srdhm_torch(torch.from_numpy(a), torch.from_numpy(b)).numpy(), srdhm(a, b))
    np.testing.assert_array_equal(
        multiply_by_quantized_multiplier_torch(torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(s)).numpy(),
        multiply_by_quantized_multiplier(a, b, s),
    )


# ----------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "call",
    [
        lambda: srdhm(2**31, 1),
        lambda: srdhm(np.array([1.5]), 1),
        lambda: rdbpot(1, 32),
        lambda: rdbpot(1, -1),
        lambda: multiply_by_quantized_multiplier(1, 2**30, -32),
        lambda: multiply_by_quantized_multiplier(np.zeros((2, 3), dtype=np.int64), np.ones((3, 1), dtype=np.int64), 0, axis=1),
        lambda: requantize(1, 2**30, 0, 0, 10, 5),
        lambda: srdhm_torch(torch.tensor([1.0]), 1),
        lambda: rdbpot_torch(torch.tensor([1]), 32),
        lambda: requantize_torch(torch.tensor([1]), 2**30, 0, 0, 10, 5),
    ],
)
def test_bad_inputs_raise_one_line_errors(call):
    with pytest.raises(CompactnnError) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
