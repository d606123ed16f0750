"""TR-SVD (tensorly) + ALS: weight reshapes match TRLinear/TRConv2d, ALS never raises the error and beats TR-SVD,
exact rings are recovered, factored layers equal the dense layer with the rebuilt weight (float64), bad ranks."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("tensorly")

from compactnn.decompose.tensor_ring import TRConv2d, TRLinear, ring_to_tensor  # noqa: E402
from compactnn.decompose.trsvd import (  # noqa: E402
    conv_tensor, decompose, factorize_conv, factorize_linear, linear_tensor, random_ring, ring_error, tr_als, tr_svd,
)
from compactnn.errors import ModelError  # noqa: E402


def test_linear_tensor_is_trlinear_layout(f64):
    layer = TRLinear((2, 3), (4, 2), 2)
    t = ring_to_tensor(layer.cores)
    torch.testing.assert_close(linear_tensor(layer.full_weight(), (2, 3), (4, 2)), t)


def test_conv_tensor_is_trconv_layout(f64):
    layer = TRConv2d((2, 3), (2, 2), (3, 2), 2)
    t = ring_to_tensor(layer.ring_cores())
    torch.testing.assert_close(conv_tensor(layer.full_weight(), (2, 3), (2, 2)), t)


def test_tr_svd_full_rank_is_exact(f64):
    torch.manual_seed(0)
    t = torch.randn(3, 4, 5)
    cores = tr_svd(t, (1, 3, 5))  # R0 = 1: a tensor train, exact at the unfolding ranks
    assert [tuple(c.shape) for c in cores] == [(1, 3, 3), (3, 4, 5), (5, 5, 1)]
    assert ring_error(t, cores) < 1e-12


def test_tr_svd_pads_to_requested_ranks(f64):
    torch.manual_seed(0)
    t = torch.randn(4, 2, 9)  # mode 2 (size 9) allows R*R <= 8
    cores = tr_svd(t, 2)
    assert [tuple(c.shape) for c in cores] == [(2, 4, 2), (2, 2, 2), (2, 9, 2)]
    assert ring_error(t, cores) < 1.0


def test_tr_svd_rank_too_large_suggests_als(f64):
    t = torch.randn(4, 7, 4, 7)
    with pytest.raises(ModelError, match="init='random'") as err:
        tr_svd(t, 4)  # 16 > max min(n_k, N/n_k) = 7
    assert "rank <= 2" in str(err.value) and "\n" not in str(err.value)


def test_rank_must_be_positive(f64):
    with pytest.raises(ModelError, match="positive"):
        tr_svd(torch.randn(3, 4), 0)


def test_als_error_nonincreasing_and_below_svd(f64):
    torch.manual_seed(1)
    t = torch.randn(4, 6, 5, 3)
    cores = tr_svd(t, 2)
    svd_err = ring_error(t, cores)
    _, errors = tr_als(t, cores, sweeps=8)
    assert errors[0] == pytest.approx(svd_err)
    assert all(b <= a + 1e-10 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < svd_err - 1e-3


def test_als_recovers_exact_ring_from_random_start(f64):
    true = random_ring((4, 5, 6, 3), 2, seed=3)
    t = ring_to_tensor(true)
    _, errors = decompose(t, 2, init="random", sweeps=40, seed=0)
    assert all(b <= a + 1e-10 for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-6


def test_random_ring_std(f64):
    cores = random_ring((8, 8, 8), 3, std=0.5, seed=0)
    assert float(ring_to_tensor(cores).std()) == pytest.approx(0.5, rel=0.3)


def test_factorize_linear_equals_dense_with_rebuilt_weight(f64):
    torch.manual_seed(2)
    dense = nn.Linear(24, 10)
    new, errors = factorize_linear(dense, (4, 6), (2, 5), 2, sweeps=3)
    assert isinstance(new, TRLinear)
    assert new.core_0.dtype == torch.float64
    x = torch.randn(7, 24)
    w = new.full_weight()
    torch.testing.assert_close(new(x), F.linear(x, w, dense.bias), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new.bias, dense.bias)
    rel = float((w - dense.weight).detach().norm() / dense.weight.detach().norm())
    assert rel == pytest.approx(errors[-1], rel=1e-9)


def test_factorize_linear_enough_rank_is_exact(f64):
    torch.manual_seed(3)
    dense = nn.Linear(6, 4, bias=False)
    new, errors = factorize_linear(dense, (6,), (4,), (1, 4), sweeps=0)  # a matrix SVD at full rank
    assert errors[-1] < 1e-12 and new.bias is None
    torch.testing.assert_close(new.full_weight(), dense.weight, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), ((3, 1), 2, (1, 0), 1), (1, 1, 0, 1),
                                                            (3, 1, 2, 2)])
def test_factorize_conv_equals_conv_with_rebuilt_kernel(f64, kernel, stride, padding, dilation):
    torch.manual_seed(4)
    conv = nn.Conv2d(12, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    new, errors = factorize_conv(conv, (3, 4), (2, 2), 2, sweeps=2)
    assert isinstance(new, TRConv2d)
    x = torch.randn(2, 12, 8, 7)
    w = new.full_weight()
    assert w.shape == conv.weight.shape
    ref = F.conv2d(x, w, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(new(x), ref, rtol=1e-10, atol=1e-12)
    assert float((w - conv.weight).detach().norm() / conv.weight.detach().norm()) == pytest.approx(errors[-1], rel=1e-9)
    assert all(b <= a + 1e-10 for a, b in zip(errors, errors[1:]))


def test_factorize_conv_rejects_groups(f64):
    with pytest.raises(ModelError, match="groups=2"):
        factorize_conv(nn.Conv2d(4, 4, 3, groups=2), (2, 2), (2, 2), 1)


def test_factorize_bad_modes_propose_factorization(f64):
    with pytest.raises(ModelError, match=r"such as \(4, 6\)"):
        factorize_linear(nn.Linear(24, 10), (5, 5), (2, 5), 2)


def test_als_recovers_rank_3_ring_from_random_start(f64):
    # an exact ring of rank 3 over 5 modes (all <= 7, where TR-SVD cannot start at rank 3) is recovered by ALS
    true = random_ring((4, 7, 4, 7, 3), 3, seed=1)
    t = ring_to_tensor(true)
    with pytest.raises(ModelError, match="init='random' or 'auto'"):
        tr_svd(t, 3)
    _, errors = decompose(t, 3, init="random", sweeps=30, seed=10)
    assert errors[-1] < 1e-6


def test_auto_init_is_svd_when_allowed_else_random(f64):
    torch.manual_seed(0)
    t = torch.randn(4, 6, 5, 3)
    auto, svd = decompose(t, 2, init="auto", sweeps=0)[0], decompose(t, 2, init="svd", sweeps=0)[0]
    assert all(torch.equal(a, b) for a, b in zip(auto, svd))
    auto, rnd = decompose(t, 4, init="auto", sweeps=0, seed=3)[0], decompose(t, 4, init="random", sweeps=0, seed=3)[0]
    assert all(torch.equal(a, b) for a, b in zip(auto, rnd))
    with pytest.raises(ModelError, match="init must be 'svd', 'random' or 'auto'"):
        decompose(t, 2, init="tucker")
