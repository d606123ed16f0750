"""Tensor Ring Nets: factorized layers equal the dense layers rebuilt from their cores (float64), ring identities,
parameter counts from the paper, init variance, errors, MACs and packing."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn.pack as pack
from compactnn.decompose import TRConv2d, TRLinear, merge_cores, ring_to_tensor, suggest_modes, tree_merge_macs
from compactnn.decompose.shapes import check_modes
from compactnn.errors import ModelError
from compactnn.report import count_macs


@pytest.mark.parametrize("in_modes,out_modes,ranks", [
    ((4, 7), (3, 5), 3),
    ((2, 3, 2), (4,), (2, 3, 4, 5)),
    ((5,), (2, 2, 3), (3, 1, 2, 4)),
    ((2, 2, 2, 2), (3, 2), 2),
])
def test_linear_equals_dense(f64, in_modes, out_modes, ranks):
    torch.manual_seed(0)
    layer = TRLinear(in_modes, out_modes, ranks)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, layer.in_features)
    w = layer.full_weight()
    assert w.shape == (layer.out_features, layer.in_features)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)
    no_bias = TRLinear(in_modes, out_modes, ranks, bias=False)
    assert no_bias.bias is None
    torch.testing.assert_close(no_bias(x[0]), x[0] @ no_bias.full_weight().T, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,dilation", [
    (3, 1, 0, 1), (3, 2, 1, 1), (3, 1, 2, 2), ((3, 1), (2, 1), (1, 0), 1), (1, 1, 0, 1), (5, 3, 2, (1, 2)),
])
def test_conv_equals_dense(f64, kernel, stride, padding, dilation):
    torch.manual_seed(1)
    layer = TRConv2d((2, 3), (2, 2), kernel, (2, 3, 4, 2, 3), stride=stride, padding=padding, dilation=dilation)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 6, 11, 10)
    w = layer.full_weight()
    assert w.shape == (4, 6, *layer.kernel_size)
    ref = F.conv2d(x, w, layer.bias, layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(layer(x), ref, rtol=1e-12, atol=1e-12)


def test_full_weight_is_the_ring_tensor(f64):
    torch.manual_seed(2)
    lin = TRLinear((2, 3), (4, 2, 2), 3)
    t = ring_to_tensor(lin.cores)
    assert t.shape == (2, 3, 4, 2, 2)
    torch.testing.assert_close(lin.full_weight(), t.reshape(6, 16).T)
    conv = TRConv2d((2, 2), (3,), (3, 2), 2)
    t = ring_to_tensor(conv.ring_cores())  # modes (C1, C2, kh*kw, D1)
    torch.testing.assert_close(conv.full_weight(), t.reshape(4, 3, 2, 3).permute(3, 0, 1, 2).reshape(3, 4, 3, 2))


def test_cyclic_shift_of_the_ring_permutes_the_modes(f64):
    torch.manual_seed(3)
    lin = TRLinear((2, 3, 2), (3, 2), (2, 3, 4, 2, 5))
    cores = [c.detach() for c in lin.cores]
    full = ring_to_tensor(cores)
    n = len(cores)
    for s in range(1, n):
        shifted = ring_to_tensor(cores[s:] + cores[:s])  # modes (s, ..., n-1, 0, ..., s-1)
        order = list(range(s, n)) + list(range(s))
        torch.testing.assert_close(shifted, full.permute(order), rtol=1e-12, atol=1e-12)
    # the layer's weight, read off the shifted ring and permuted back
    back = ring_to_tensor(cores[2:] + cores[:2]).permute(3, 4, 0, 1, 2)
    torch.testing.assert_close(lin.full_weight(), back.reshape(12, 6).T)


def test_ring_with_a_unit_rank_is_a_tensor_train(f64):
    torch.manual_seed(4)
    lin = TRLinear((2, 3), (2, 2), (1, 3, 2, 4))  # R_0 = 1 closes the ring through a bond of size 1
    u = [c.detach() for c in lin.cores]
    modes = lin.in_modes + lin.out_modes
    tt = torch.empty(modes)
    for idx in itertools.product(*(range(m) for m in modes)):  # explicit TT: U1[0,i1,:] U2[:,i2,:] ... Un[:,in,0]
        v = u[0][0, idx[0], :]
        for k in range(1, len(u)):
            v = v @ u[k][:, idx[k], :]
        tt[idx] = v[0]
    torch.testing.assert_close(lin.full_weight(), tt.reshape(6, 4).T, rtol=1e-12, atol=1e-12)


def test_tree_merge_equals_sequential_and_costs_less(f64):
    torch.manual_seed(5)
    cores = [torch.randn(3, m, 3) for m in (4, 7, 4, 7)]
    seq = cores[0]
    for c in cores[1:]:
        seq = torch.einsum("apb,bqc->apqc", seq, c).reshape(3, -1, 3)
    torch.testing.assert_close(merge_cores(cores), seq)
    shapes = [tuple(c.shape) for c in cores]
    assert tree_merge_macs(shapes) == 3 * 4 * 3 * 7 * 3 + 3 * 4 * 3 * 7 * 3 + 3 * 28 * 3 * 28 * 3
    sequential = 3 * 4 * 3 * 7 * 3 + 3 * 28 * 3 * 4 * 3 + 3 * 112 * 3 * 7 * 3
    assert tree_merge_macs(shapes) < sequential


@pytest.mark.parametrize("rank", [3, 5, 10, 15])
def test_lenet300_paper_shapes_give_91_r_squared(rank):
    layers = [TRLinear((4, 7, 4, 7), (3, 4, 5, 5), rank), TRLinear((3, 4, 5, 5), (4, 5, 5), rank),
              TRLinear((4, 5, 5), (2, 5), rank)]
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 300), (300, 100), (100, 10)]
    cores = sum(c.numel() for m in layers for c in m.cores)
    assert cores == 91 * rank ** 2
    assert sum(p.numel() for m in layers for p in m.parameters()) == 91 * rank ** 2 + 410


def test_conv_parameter_count():
    conv = TRConv2d((4, 4), (4, 8), 3, 6)
    assert sum(c.numel() for c in conv.cores) == 36 * (4 + 4 + 4 + 8) + 9 * 36
    assert conv.bias.numel() == 32


def _mean_variance(make, seeds=60):
    total = 0.0
    for s in range(seeds):
        torch.manual_seed(s)
        total += make().full_weight().pow(2).mean().item()
    return total / seeds


def test_init_gives_target_weight_variance(f64):
    lin = _mean_variance(lambda: TRLinear((4, 5, 5), (2, 5), 3))
    assert lin * 100 == pytest.approx(1.0, rel=0.15)
    conv = _mean_variance(lambda: TRConv2d((2, 3), (4, 2), 3, 4))
    assert conv * 54 / 2 == pytest.approx(1.0, rel=0.15)


def test_gradients_reach_every_core():
    layer = TRConv2d((2, 2), (3,), 3, 2, padding=1)
    layer(torch.randn(2, 4, 5, 5)).square().sum().backward()
    assert all(c.grad is not None and c.grad.abs().sum() > 0 for c in layer.cores)


def test_suggest_modes():
    assert suggest_modes(784, 4) == (4, 4, 7, 7)
    assert suggest_modes(300, 4) == (3, 4, 5, 5)
    assert suggest_modes(13, 3) == (1, 1, 13)
    for n, d in itertools.product(range(1, 97), range(1, 4)):
        got = suggest_modes(n, d)
        assert len(got) == d and math.prod(got) == n and list(got) == sorted(got)
        divisors = [k for k in range(1, n + 1) if n % k == 0]
        brute = min(sum(c) for c in itertools.product(divisors, repeat=d) if math.prod(c) == n)
        assert sum(got) == brute
    with pytest.raises(ModelError):
        suggest_modes(0, 2)
    with pytest.raises(ModelError):
        suggest_modes(10, 0)


def test_errors():
    with pytest.raises(ModelError, match="multiply to 112, not 784.*\\(7, 8, 14\\)"):
        TRLinear.from_shapes(784, 300, 3, 4, in_modes=(4, 7, 4))
    with pytest.raises(ModelError, match="out_modes"):
        check_modes((3, 4, 5), 300, "out_modes")
    with pytest.raises(ModelError, match="rank"):
        TRLinear((4, 7), (2, 5), 0)
    with pytest.raises(ModelError, match="rank"):
        TRLinear((4, 7), (2, 5), (3, -1, 3, 3))
    with pytest.raises(ModelError, match="needs 4 values"):
        TRLinear((4, 7), (2, 5), (3, 3))
    with pytest.raises(ModelError, match="in_modes"):
        TRLinear((4, 0), (2, 5), 3)
    with pytest.raises(ModelError, match="rank"):
        TRConv2d((2, 2), (3,), 3, 0)
    with pytest.raises(ModelError, match="stride"):
        TRConv2d((2, 2), (3,), 3, 2, stride=0)
    with pytest.raises(ModelError, match="expects 28 features"):
        TRLinear((4, 7), (2, 5), 2)(torch.randn(3, 27))
    with pytest.raises(ModelError, match="expects 4 features"):
        TRConv2d((2, 2), (3,), 3, 2)(torch.randn(1, 3, 8, 8))


def test_from_shapes_uses_balanced_modes():
    layer = TRLinear.from_shapes(784, 300, 4, 5)
    assert layer.in_modes == (4, 4, 7, 7) and layer.out_modes == (3, 4, 5, 5)
    layer = TRLinear.from_shapes(100, 10, 3, 2, d_out=2, out_modes=(2, 5))
    assert layer.in_modes == (4, 5, 5) and layer.out_modes == (2, 5)


def test_macs_counted_on_the_real_path():
    lin = TRLinear((4, 7, 4, 7), (3, 4, 5, 5), (2, 3, 4, 5, 6, 7, 8, 9))
    model = nn.Sequential(nn.Flatten(), lin)
    assert count_macs(model, (1, 28, 28)) == {"1": 2 * 6 * (784 + 300)}
    assert lin.merge_macs() == tree_merge_macs([tuple(c.shape) for c in lin.cores[:4]]) + \
        tree_merge_macs([tuple(c.shape) for c in lin.cores[4:]])
    conv = TRConv2d((2, 2), (3, 2), 3, (2, 3, 4, 5, 6), stride=2, padding=1)
    macs = count_macs(nn.Sequential(conv), (4, 8, 8))["0"]
    # R_0 = 2, R_d = 4, R_{d+1} = 5; 8x8 in, 4x4 out
    assert macs == 8 * 8 * 4 * 2 * 4 + 4 * 4 * 2 * 4 * 5 * 9 + 4 * 4 * 2 * 5 * 6


def test_pack_round_trip(tmp_path):
    model = nn.Sequential(TRConv2d((2, 2), (3,), 3, 2, padding=1), nn.Flatten(), TRLinear((3, 25), (2, 5), 3))
    pack.save(model, tmp_path / "tr.cnz")
    back = pack.load(tmp_path / "tr.cnz")
    assert isinstance(back[0], TRConv2d) and isinstance(back[2], TRLinear)
    assert back[0].ranks == (2, 2, 2, 2) and back[2].in_modes == (3, 25)
    x = torch.randn(2, 4, 5, 5)
    torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)
