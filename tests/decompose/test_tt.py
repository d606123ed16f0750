"""TT-matrix baselines: TTLinear equals x W^T with W rebuilt from its cores (float64), rebuilt W matches an
independent elementwise definition, parameter/MAC counts, init variance, TT-LSTM equals nn.LSTM with the rebuilt
input weight, errors, packing."""

import itertools
import math

import pytest
import torch
from torch import nn

import compactnn.pack as pack
from compactnn.decompose.tt import TTLSTM, TTLinear, tt_ranks
from compactnn.errors import ModelError
from compactnn.report import count_macs


@pytest.mark.parametrize("in_modes,out_modes,ranks", [
    ((2, 3, 4), (3, 2, 2), (2, 3)),
    ((4, 7), (5, 2), 3),
    ((6,), (5,), 1),
    ((2, 2, 2, 2), (3, 1, 2, 2), (1, 2, 3, 4, 1)),
])
def test_forward_equals_dense(f64, in_modes, out_modes, ranks):
    torch.manual_seed(0)
    layer = TTLinear(in_modes, out_modes, ranks)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, layer.in_features)
    w = layer.full_weight()
    assert w.shape == (layer.out_features, layer.in_features)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)
    no_bias = TTLinear(in_modes, out_modes, ranks, bias=False)
    torch.testing.assert_close(no_bias(x[0]), x[0] @ no_bias.full_weight().T, rtol=1e-12, atol=1e-12)


def test_full_weight_is_product_of_core_slices(f64):
    torch.manual_seed(1)
    layer = TTLinear((2, 3, 2), (2, 2, 3), (3, 2))
    w = layer.full_weight()
    for i in itertools.product(*(range(m) for m in layer.in_modes)):
        for j in itertools.product(*(range(n) for n in layer.out_modes)):
            prod = torch.eye(1)
            for k, core in enumerate(layer.cores):
                prod = prod @ core[:, i[k], j[k], :]
            row = (j[0] * 2 + j[1]) * 3 + j[2]
            col = (i[0] * 3 + i[1]) * 2 + i[2]
            torch.testing.assert_close(w[row, col], prod[0, 0], rtol=1e-12, atol=1e-14)


def test_parameter_count_and_macs(f64):
    layer = TTLinear((4, 7, 4, 7), (3, 4, 5, 5), 4, bias=False)
    assert layer.ranks == (1, 4, 4, 4, 1)
    expected = 1 * 4 * 3 * 4 + 4 * 7 * 4 * 4 + 4 * 4 * 5 * 4 + 4 * 7 * 5 * 1
    assert sum(p.numel() for p in layer.parameters()) == expected
    per = (7 * 4 * 7) * 1 * 4 * 3 * 4 + (4 * 7) * 3 * 4 * 7 * 4 * 4 + 7 * (3 * 4) * 4 * 4 * 5 * 4 + \
        1 * (3 * 4 * 5) * 4 * 7 * 5 * 1
    assert layer.macs_per_sample() == per
    model = nn.Sequential(layer)
    macs = count_macs(model, (784,))
    assert sum(macs.values()) == per


def test_init_variance():
    torch.manual_seed(0)
    layer = TTLinear((8, 8, 8), (4, 4, 4), 6)
    w = layer.full_weight().detach()
    assert float(w.var()) == pytest.approx(1.0 / 512, rel=0.25)


def test_rank_one_is_kronecker(f64):
    layer = TTLinear((2, 3), (3, 2), 1)
    a = layer.core_0[0, :, :, 0].T  # (n_1, m_1)
    b = layer.core_1[0, :, :, 0].T
    torch.testing.assert_close(layer.full_weight(), torch.kron(a, b))


@pytest.mark.parametrize("ranks,match", [
    (0, "positive"), ((2,), "needs 2 inner ranks"), ((2, 3, 4, 2), "end ranks must be 1"), ((2, -1), "positive"),
])
def test_rank_errors(ranks, match):
    with pytest.raises(ModelError, match=match):
        TTLinear((2, 3, 4), (2, 2, 2), ranks)


def test_mode_count_mismatch_and_bad_input():
    with pytest.raises(ModelError, match="same number of modes"):
        TTLinear((2, 3), (6,), 2)
    layer = TTLinear((2, 3), (2, 2), 2)
    with pytest.raises(ModelError, match="expects 6 input features"):
        layer(torch.randn(4, 7))


def test_tt_ranks_forms():
    assert tt_ranks(3, 3) == (1, 3, 3, 1)
    assert tt_ranks((2, 5), 3) == (1, 2, 5, 1)
    assert tt_ranks((1, 2, 5, 1), 3) == (1, 2, 5, 1)
    assert tt_ranks(4, 1) == (1, 1)


def test_ttlstm_equals_nn_lstm(f64):
    torch.manual_seed(2)
    cell = TTLSTM((2, 3, 2), (2, 2, 2), 3)
    h = cell.hidden_size
    assert cell.ih.out_modes == (8, 2, 2) and torch.all(cell.ih.bias[h:2 * h] == 1.0)
    assert torch.all(cell.ih.bias[:h] == 0) and cell.hh.bias is None
    ref = nn.LSTM(12, h, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(cell.ih.full_weight())
        ref.bias_ih_l0.copy_(cell.ih.bias)
        ref.weight_hh_l0.copy_(cell.hh.weight)
        ref.bias_hh_l0.zero_()
    x = torch.randn(3, 5, 12)
    h0, c0 = torch.randn(1, 3, h), torch.randn(1, 3, h)
    y, (hn, cn) = cell(x, (h0, c0))
    y_ref, (hn_ref, cn_ref) = ref(x, (h0, c0))
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hn, hn_ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cn, cn_ref, rtol=1e-10, atol=1e-12)
    seq_first = TTLSTM((2, 3, 2), (2, 2, 2), 3, batch_first=False)
    seq_first.load_state_dict(cell.state_dict())
    torch.testing.assert_close(seq_first(x.transpose(0, 1))[0].transpose(0, 1), cell(x)[0])


def test_ttlstm_ucf11_parameters():
    cell = TTLSTM((8, 20, 20, 18), (4, 4, 4, 4), 4)
    weights = sum(c.numel() for c in cell.ih.cores)
    assert weights == 1 * 8 * 16 * 4 + 4 * 20 * 4 * 4 + 4 * 20 * 4 * 4 + 4 * 18 * 4 * 1
    assert 57600 * 1024 / weights > 3000
    with pytest.raises(ModelError, match="sequence"):
        cell(torch.randn(2, 57600))
    assert math.prod(cell.ih.out_modes) == 1024


def test_pack_roundtrip(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(TTLinear((2, 4), (3, 2), 2), nn.ReLU(), TTLinear((3, 2), (2, 5), (3,)))
    lstm = TTLSTM((2, 4), (2, 2), 2)
    for name, m, x in [("lin", model, torch.randn(4, 8)), ("lstm", lstm, torch.randn(2, 3, 8))]:
        path = tmp_path / f"{name}.cnz"
        pack.save(m, path)
        back = pack.load(path)
        assert type(back) is type(m)
        out, ref = back(x), m(x)
        if isinstance(out, tuple):
            out, ref = out[0], ref[0]
        assert torch.equal(out, ref)
        assert set(pack.tensor_bytes(m)) == set(m.state_dict())
