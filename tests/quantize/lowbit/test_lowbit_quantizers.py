"""Each low-bit quantizer's forward against a NumPy definition, its codes/decode round trip, and STE gradients."""

import math

import numpy as np
import pytest
import torch

from compactnn.quantize.lowbit.quantizers import (BinaryWeight, ClipQuant, DoReFaWeight, LSQQuant, LSQWeight,
                                                  Pow2Weight, SparseQuant, TernaryWeight, UniformWeight, decode,
                                                  fit_sparse, pow2_levels, sparse_quantize)


def _w(shape=(6, 4, 3, 3), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 0.1


def _axes(w, granularity):
    if granularity == "row":
        return tuple(range(1, w.ndim))
    if granularity == "pixel" and w.ndim == 4:
        return (0, 1)
    return tuple(range(w.ndim))


def np_sign(w):
    return np.where(w >= 0, 1.0, -1.0)


@pytest.mark.parametrize("granularity", ["layer", "row", "pixel"])
def test_binary_mean_scale_matches_numpy(granularity):
    w = _w()
    q = BinaryWeight(w, granularity, "mean")(w).detach().numpy()
    wn = w.numpy().astype(np.float64)
    alpha = np.abs(wn).mean(axis=_axes(wn, granularity), keepdims=True)
    np.testing.assert_allclose(q, alpha * np_sign(wn), rtol=1e-6)


def test_binary_sign_of_zero_is_plus_one():
    w = torch.tensor([[0.0, -1.0, 2.0]])
    q = BinaryWeight(w, "layer", "mean")(w)
    assert q.tolist() == [[1.0, -1.0, 1.0]]


def test_twn_matches_numpy():
    w = _w((8, 20))
    q = TernaryWeight(w, "layer", "mean", 0.7, "mean")(w).detach().numpy()
    wn = w.numpy().astype(np.float64)
    delta = 0.7 * np.abs(wn).mean()
    mask = np.abs(wn) > delta
    alpha = np.abs(wn)[mask].mean()
    np.testing.assert_allclose(q, alpha * np.sign(wn) * mask, rtol=1e-6)


@pytest.mark.parametrize("granularity", ["pixel", "row", "layer"])
def test_syq_ternary_matches_numpy(granularity):
    w = _w()
    q = TernaryWeight(w, granularity, "max", 0.05, "learned")(w).detach().numpy()
    wn = w.numpy().astype(np.float64)
    delta = 0.05 * np.abs(wn).max()
    alpha = np.abs(wn).mean(axis=_axes(wn, granularity), keepdims=True)  # init: mean |W| of the group
    np.testing.assert_allclose(q, alpha * np.sign(wn) * (np.abs(wn) > delta), rtol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_uniform_matches_numpy(bits):
    w = _w((5, 7))
    q = UniformWeight(w, bits, "row")(w).detach().numpy()
    wn = w.numpy().astype(np.float64)
    m = 2 ** (bits - 1) - 1
    s = np.abs(wn).max(axis=1, keepdims=True) / m
    ref = np.clip(np.sign(wn / s) * np.floor(np.abs(wn / s) + 0.5), -m, m) * s
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bits", [1, 2, 3, 4])
def test_dorefa_matches_numpy(bits):
    w = _w((5, 7))
    q = DoReFaWeight(w, bits)(w).detach().numpy()
    wn = w.numpy().astype(np.float64)
    if bits == 1:
        ref = np.abs(wn).mean() * np_sign(wn)
    else:
        n = 2 ** bits - 1
        t = np.tanh(wn)
        u = t / (2 * np.abs(t).max()) + 0.5
        ref = 2 * np.floor(u * n + 0.5) / n - 1
    np.testing.assert_allclose(q, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_lsq_weight_matches_numpy(bits):
    w = _w((5, 7))
    quant = LSQWeight(w, bits)
    s = float(quant.step.detach())
    assert s == pytest.approx(2 * float(w.abs().mean()) / math.sqrt(2 ** (bits - 1) - 1), rel=1e-6)
    q = quant(w).detach().numpy()
    v = np.clip(w.numpy().astype(np.float64) / s, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    np.testing.assert_allclose(q, np.sign(v) * np.floor(np.abs(v) + 0.5) * s, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("bits", [2, 3, 4, 5])
def test_pow2_matches_inq_rule(bits):
    w = _w((9, 11), seed=3)
    quant = Pow2Weight(w, bits)
    q = quant(w).detach().numpy().astype(np.float64)
    s = float(w.abs().max())
    n1 = math.floor(math.log2(4 * s / 3))
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    assert (quant.n1, quant.n2) == (n1, n2) == pow2_levels(w, bits)
    levels = [0.0] + [2.0 ** e for e in range(n2, n1 + 1)]
    for wi, qi in zip(w.numpy().reshape(-1).astype(np.float64), q.reshape(-1)):
        a = abs(wi)
        expect = 0.0
        for lo, beta in zip(levels[:-1], levels[1:]):
            if (lo + beta) / 2 <= a < 3 * beta / 2:
                expect = beta * np.sign(wi)
        assert qi == expect, (wi, qi, expect)
    assert len(np.unique(q)) <= 2 ** (bits - 1) + 1


@pytest.mark.parametrize("make", [
    lambda w: BinaryWeight(w, "pixel", "learned"),
    lambda w: BinaryWeight(w, "layer", "mean"),
    lambda w: TernaryWeight(w, "pixel", "max", 0.05, "learned"),
    lambda w: TernaryWeight(w, "layer", "mean", 0.7, "mean"),
    lambda w: TernaryWeight(w, "row", "half", 0.0, "fixed", torch.full((6, 1, 1, 1), 0.1)),
    lambda w: UniformWeight(w, 4, "row"),
    lambda w: DoReFaWeight(w, 1),
    lambda w: DoReFaWeight(w, 3),
    lambda w: LSQWeight(w, 2),
    lambda w: Pow2Weight(w, 5),
])
def test_codes_decode_to_the_forward_exactly(make):
    w = _w()
    quant = make(w)
    codes, scale = quant.codes(w)
    assert codes.dtype in (torch.int8, torch.int16)
    assert torch.equal(decode(codes, scale, quant.decode_mode), quant(w).detach())


# ----------------------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("make", [
    lambda w: BinaryWeight(w, "layer", "mean"),
    lambda w: TernaryWeight(w, "layer", "mean", 0.7, "mean"),
    lambda w: TernaryWeight(w, "pixel", "max", 0.05, "learned"),
    lambda w: UniformWeight(w, 3, "layer"),
])
def test_weight_ste_is_identity(make):
    w = _w().requires_grad_(True)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(9))
    (make(w.detach())(w) * g).sum().backward()
    assert torch.equal(w.grad, g)


@pytest.mark.parametrize("granularity", ["pixel", "row", "layer"])
@pytest.mark.parametrize("ternary", [True, False])
def test_syq_scale_gradient_is_the_summed_group_gradient(granularity, ternary):
    w = _w()
    quant = TernaryWeight(w, granularity, "max", 0.05, "learned") if ternary else \
        BinaryWeight(w, granularity, "learned")
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(4))
    q = quant(w)
    (q * g).sum().backward()
    # autograd of the plain product alpha[group] * t with t the (constant) ternary/binary codes
    t = (torch.sign(w) * (w.abs() > 0.05 * w.abs().max())) if ternary else torch.where(w >= 0, 1.0, -1.0)
    alpha = quant.scale.detach().clone().requires_grad_(True)
    ((alpha * t) * g).sum().backward()
    torch.testing.assert_close(quant.scale.grad, alpha.grad)
    summed = (g * t).numpy().sum(axis=_axes(w.numpy(), granularity), keepdims=True)  # the group sum, by NumPy
    np.testing.assert_allclose(quant.scale.grad.numpy(), summed, rtol=1e-5, atol=1e-6)


def test_dorefa_gradient_goes_through_tanh():
    w = _w((4, 5)).requires_grad_(True)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(2))
    (DoReFaWeight(w.detach(), 2)(w) * g).sum().backward()
    w2 = w.detach().clone().requires_grad_(True)
    t = torch.tanh(w2)
    ((2 * (t / (2 * t.detach().abs().max()) + 0.5) - 1) * g).sum().backward()  # rounding removed: the STE
    torch.testing.assert_close(w.grad, w2.grad)


def test_lsq_step_gradient_matches_the_paper():
    bits = 2
    w = _w((4, 5))
    quant = LSQWeight(w, bits)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(1))
    (quant(w) * g).sum().backward()
    s = float(quant.step.detach())
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    v = w.double().numpy() / s
    d = np.where(v <= -qn, -qn, np.where(v >= qp, qp, np.sign(v) * np.floor(np.abs(v) + 0.5) - v))
    expect = (g.double().numpy() * d).sum() / math.sqrt(w.numel() * qp)
    assert float(quant.step.grad.reshape(())) == pytest.approx(expect, rel=1e-5)


# --------------------------------------------------------------------------------------- activation quantizers
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_clip_quant_forward_and_gradient(bits):
    x = torch.linspace(-0.5, 1.5, 201, dtype=torch.float32).requires_grad_(True)
    y = ClipQuant(bits)(x)
    n = 2 ** bits - 1
    ref = np.floor(np.clip(x.detach().numpy(), 0, 1) * n + 0.5) / n
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=0, atol=1e-7)
    y.sum().backward()
    inside = (x.detach() >= 0) & (x.detach() <= 1)
    assert torch.equal(x.grad, inside.float())


def test_sparse_quant_forward_and_gradient():
    eps, step, bits = 0.3, 0.5, 2
    x = torch.linspace(-1, 3, 401).requires_grad_(True)
    y = SparseQuant(bits, eps, step)(x)
    xn = x.detach().numpy().astype(np.float64)
    levels = 3
    ref = np.where(xn < eps, 0.0, np.clip(np.floor(xn / step + 0.5), 1, levels) * step)
    np.testing.assert_allclose(y.detach().numpy(), ref, atol=1e-6)
    assert len(np.unique(ref)) == 2 ** bits  # zero and 2^n - 1 levels
    y.sum().backward()
    inside = (x.detach() >= 0) & (x.detach() <= levels * step)
    assert torch.equal(x.grad, inside.float())


def test_fit_sparse_beats_a_grid_of_alternatives():
    x = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    eps, step, mse = fit_sparse(x, 2)
    r = torch.relu(x.double())
    assert mse == pytest.approx(float(((sparse_quantize(x.double(), eps, step, 3) - r) ** 2).mean()))
    for s in (0.3, 0.5, 0.8, 1.2):  # a few hand-picked settings are no better
        for e in (0.0, s / 4, s / 2):
            assert mse <= float(((sparse_quantize(x.double(), e, s, 3) - r) ** 2).mean()) + 1e-12


def test_lsq_activation_forward():
    q = LSQQuant(3)
    x = torch.randn(8, 10, generator=torch.Generator().manual_seed(5))
    y = q(x).detach().numpy()
    s = float(q.step.detach())
    assert s == pytest.approx(max(2 * float(x.abs().mean()) / math.sqrt(7), 1e-6), rel=1e-6)
    v = np.clip(x.numpy().astype(np.float64) / s, 0, 7)
    np.testing.assert_allclose(y, np.floor(v + 0.5) * s, rtol=1e-5, atol=1e-7)
