"""MATLAB-compatible image functions against values worked out by hand from MATLAB's definitions."""

import math

import numpy as np
import pytest

from compactnn.errors import DataError
from compactnn.sr import matlab

# cubic(t) for a = -0.5, by hand: 1.5|t|^3 - 2.5|t|^2 + 1 on [0, 1]; -0.5|t|^3 + 2.5|t|^2 - 4|t| + 2 on (1, 2]
C025, C075, C125, C175 = 0.8671875, 0.2265625, -0.0703125, -0.0234375


def test_cubic_kernel_values():
    t = np.array([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, -0.75])
    want = [1.0, C025, 0.5625, C075, 0.0, C125, -0.0625, C175, 0.0, 0.0, C075]
    np.testing.assert_allclose(matlab.cubic(t), want, rtol=0, atol=1e-15)


def test_contributions_upscale_x2_drops_all_zero_columns_and_mirrors():
    idx, w = matlab.contributions(4, 8, 2.0)
    assert idx.shape == w.shape == (8, 4)  # 6 candidate taps, the first and last are always cubic(+-2.x) = 0
    # output 1 sits at u = 0.75: taps 1-based -1, 0, 1, 2 -> mirrored to 2, 1, 1, 2
    assert idx[0].tolist() == [1, 0, 0, 1]
    np.testing.assert_allclose(w[0], [C175, C075, C025, C125], atol=1e-15)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-15)
    # the last output mirrors the first
    assert idx[-1].tolist() == [2, 3, 3, 2]


def test_imresize_upscale_by_hand():
    col = np.array([10.0, 20.0, 30.0, 40.0])
    a = np.repeat(col[:, None], 3, axis=1)  # constant along rows: the column pass is the identity
    out = matlab.imresize(a, 2)
    assert out.shape == (8, 6)
    first = (C075 + C025) * 10 + (C175 + C125) * 20  # 1.09375 * 10 - 0.09375 * 20
    assert first == pytest.approx(9.0625)
    np.testing.assert_allclose(out[0], first, atol=1e-12)
    np.testing.assert_allclose(out[-1], (C075 + C025) * 40 + (C175 + C125) * 30, atol=1e-12)
    # interior sample at u = 2.25: taps 1..4 with cubic(1.25), cubic(0.25), cubic(0.75), cubic(1.75)
    np.testing.assert_allclose(out[3], C125 * 10 + C025 * 20 + C075 * 30 + C175 * 40, atol=1e-12)


def test_imresize_downscale_is_antialiased_by_hand():
    col = np.arange(1.0, 9.0)
    out = matlab.imresize(np.repeat(col[:, None], 2, axis=1), 0.5)
    assert out.shape == (4, 1)
    # output 1 at u = 1.5; kernel 0.5 cubic(0.5 t) over 8 taps 1-based -2..5, mirrored to 3 2 1 1 2 3 4 5
    taps = np.array([3, 2, 1, 1, 2, 3, 4, 5], dtype=float)
    w = 0.5 * np.array([C175, C125, C075, C025, C025, C075, C125, C175])
    assert w.sum() == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(float(w @ taps), abs=1e-12)
    # without antialiasing the plain kernel: u = 1.5, taps 1-based 0..3 (the all-zero end columns dropped)
    idx, wp = matlab.contributions(8, 4, 0.5, antialiasing=False)
    assert idx[0].tolist() == [0, 0, 1, 2]
    np.testing.assert_allclose(wp[0], [-0.0625, 0.5625, 0.5625, -0.0625], atol=1e-15)
    plain = matlab.imresize(np.repeat(col[:, None], 2, axis=1), 0.5, antialiasing=False)
    assert plain[0, 0] == pytest.approx(-0.0625 * 1 + 0.5625 * 1 + 0.5625 * 2 - 0.0625 * 3, abs=1e-12)


def test_imresize_keeps_constants_rows_first_and_the_input_class():
    a = np.full((6, 9), 0.3, dtype=np.float32)
    out = matlab.imresize(a, 1 / 3)
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_allclose(out, 0.3, atol=1e-6)
    rng = np.random.default_rng(0)
    img = rng.random((9, 12))
    # the separable resize equals R @ img @ C.T with the dense matrices
    r = matlab.resize_matrix(9, 3, 1 / 3)
    c = matlab.resize_matrix(12, 4, 1 / 3)
    np.testing.assert_allclose(matlab.imresize(img, 1 / 3), r @ img @ c.T, atol=1e-12)
    u8 = (img * 255).astype(np.uint8)
    out8 = matlab.imresize(u8, 2)
    assert out8.dtype == np.uint8
    rows = matlab.to_uint8(matlab.resize_matrix(9, 18, 2.0) @ u8.astype(float))  # rounded after the row pass
    np.testing.assert_array_equal(out8, matlab.to_uint8(rows.astype(float) @ matlab.resize_matrix(12, 24, 2.0).T))
    assert matlab.output_size(999, 1 / 3) == 333 and matlab.output_size(10, 0.25) == 3


def test_to_uint8_rounds_halves_away_from_zero_and_saturates():
    x = np.array([-0.5, -0.4, 0.5, 1.5, 2.5, 254.5, 255.5, 300.0, np.nan, 0.49999])
    assert matlab.to_uint8(x).tolist() == [0, 0, 1, 2, 3, 255, 255, 255, 0, 0]


def test_rgb2ycbcr_by_hand():
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    ycc = matlab.rgb2ycbcr(rgb)
    assert ycc.dtype == np.uint8
    # white: 16 + 219 = 235; red: Y 16 + 65.481 -> 81, Cb 128 - 37.797 -> 90, Cr 128 + 112 = 240
    # green: Y 16 + 128.553 = 144.553 -> 145, Cb 128 - 74.203 = 53.797 -> 54, Cr 128 - 93.786 = 34.214 -> 34
    assert ycc[0].tolist() == [[235, 128, 128], [16, 128, 128], [81, 90, 240], [145, 54, 34]]
    f = matlab.rgb2ycbcr(rgb.astype(np.float64) / 255)
    np.testing.assert_allclose(f[0, 0], [235 / 255, 128 / 255, 128 / 255], atol=1e-12)
    np.testing.assert_allclose(f[0, 2, 0] * 255, 16 + 65.481, atol=1e-9)
    back = matlab.ycbcr2rgb(f)
    np.testing.assert_allclose(back, rgb / 255, atol=1e-12)
    np.testing.assert_array_equal(matlab.ycbcr2rgb(ycc)[0, :2], [[255, 255, 255], [0, 0, 0]])
    with pytest.raises(DataError):
        matlab.rgb2ycbcr(np.zeros((2, 2), dtype=np.uint8))


def test_modcrop_and_shave():
    a = np.arange(5 * 7).reshape(5, 7)
    assert matlab.modcrop(a, 2).shape == (4, 6) and matlab.modcrop(a, 3).shape == (3, 6)
    np.testing.assert_array_equal(matlab.modcrop(a, 2), a[:4, :6])
    np.testing.assert_array_equal(matlab.shave(a, 1), a[1:4, 1:6])
    assert matlab.shave(a, 0) is a


def test_psnr_by_hand():
    a = np.zeros((2, 2), dtype=np.uint8)
    b = a.copy()
    b[0, 0] = 255  # mse = 255^2 / 4, rmse = 127.5
    assert matlab.psnr(a, b) == pytest.approx(20 * math.log10(2))
    assert matlab.psnr(a, a) == math.inf


def test_ssim_matches_a_brute_force_window_sum():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (12, 13)).astype(float)
    b = np.clip(a + rng.normal(0, 20, a.shape), 0, 255)
    x = np.arange(-5, 6)
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2 * 1.5 ** 2))
    g /= g.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(2):
        for j in range(3):
            p, q = a[i: i + 11, j: j + 11], b[i: i + 11, j: j + 11]
            m1, m2 = (g * p).sum(), (g * q).sum()
            v1, v2, v12 = (g * p * p).sum() - m1 ** 2, (g * q * q).sum() - m2 ** 2, (g * p * q).sum() - m1 * m2
            vals.append((2 * m1 * m2 + c1) * (2 * v12 + c2) / ((m1 ** 2 + m2 ** 2 + c1) * (v1 + v2 + c2)))
    assert matlab.ssim(a, b) == pytest.approx(np.mean(vals), abs=1e-12)
    assert matlab.ssim(a, a) == pytest.approx(1.0)
    flat1, flat2 = np.full((11, 11), 100.0), np.full((11, 11), 50.0)
    assert matlab.ssim(flat1, flat2) == pytest.approx((2 * 100 * 50 + c1) / (100 ** 2 + 50 ** 2 + c1))
    assert math.isnan(matlab.ssim(a[:10, :10], b[:10, :10]))
