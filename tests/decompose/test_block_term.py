"""Block-Term RNNs: BTLinear equals the dense layer rebuilt from its factors (float64), N = 1 is Tucker, the UCF11
parameter count from the paper, BT-LSTM / BT-GRU equal nn.LSTM / nn.GRU with the rebuilt input weight."""

import math

import pytest
import torch
from torch import nn

import compactnn.pack as pack
from compactnn.decompose import BTGRU, BTLSTM, BTLinear
from compactnn.errors import ModelError
from compactnn.report import count_macs


@pytest.mark.parametrize("in_modes,out_modes,ranks,blocks", [
    ((2, 3, 4), (3, 2, 2), (2, 3, 2), 3),
    ((5, 2, 3), (1, 4, 2), (3, 1, 2), 1),
    ((7,), (5,), 3, 2),
    ((2, 2, 3, 2), (2, 3, 1, 2), 2, 2),
])
def test_linear_equals_dense(f64, in_modes, out_modes, ranks, blocks):
    torch.manual_seed(0)
    layer = BTLinear(in_modes, out_modes, ranks, blocks=blocks)
    nn.init.normal_(layer.bias)
    x = torch.randn(2, 3, layer.in_features)
    w = layer.full_weight()
    assert w.shape == (layer.out_features, layer.in_features)
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)
    natural = layer.macs_per_sample()
    layer.order = tuple(range(len(in_modes)))  # any contraction order gives the same result
    torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-12, atol=1e-12)
    assert natural <= layer.macs_per_sample()


def test_weight_is_the_sum_of_blocks(f64):
    torch.manual_seed(1)
    layer = BTLinear((2, 3), (3, 2), (2, 2), blocks=2)
    w = torch.zeros(6, 6)
    for n in range(2):  # W(i1 i2, j1 j2) = sum_n sum_r G_n(r1, r2) A1(i1, j1, r1) A2(i2, j2, r2), written out
        for i1, i2, j1, j2 in torch.cartesian_prod(*(torch.arange(s) for s in (2, 3, 3, 2))).tolist():
            a1, a2 = layer.factors[0][n, i1, j1], layer.factors[1][n, i2, j2]
            w[j1 * 2 + j2, i1 * 3 + i2] += (layer.core[n] * a1[:, None] * a2[None, :]).sum()
    torch.testing.assert_close(layer.full_weight(), w)


def _tucker_layer():
    torch.manual_seed(2)
    layer = BTLinear((2, 3, 2), (3, 2, 4), (2, 3, 2), blocks=1)
    factors = [a[0].detach().reshape(a.shape[1] * a.shape[2], a.shape[3]) for a in layer.factors]  # (I_k J_k, R_k)
    return layer, layer.core[0].detach(), factors


def _as_weight(tucker: torch.Tensor) -> torch.Tensor:
    """(I1 J1, I2 J2, I3 J3) tensor -> (J1 J2 J3, I1 I2 I3) weight."""
    return tucker.reshape(2, 3, 3, 2, 2, 4).permute(1, 3, 5, 0, 2, 4).reshape(24, 12)


def test_one_block_is_a_tucker_layer(f64):
    layer, core, factors = _tucker_layer()
    full = core
    for k, u in enumerate(factors):  # mode-k product G x_k U_k, written out
        full = torch.movedim(torch.tensordot(u, full, dims=([1], [k])), 0, k)
    torch.testing.assert_close(layer.full_weight(), _as_weight(full))


def test_one_block_matches_tensorly_tucker(f64):
    tl = pytest.importorskip("tensorly")
    layer, core, factors = _tucker_layer()
    with tl.backend_context("numpy"):
        full = tl.tucker_to_tensor((core.numpy(), [u.numpy() for u in factors]))
    torch.testing.assert_close(layer.full_weight(), _as_weight(torch.from_numpy(full)))


def test_parameter_count_formula():
    layer = BTLinear((2, 3, 4), (3, 2, 2), (2, 3, 2), blocks=3, bias=False)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (2 * 3 * 2 + 3 * 2 * 3 + 4 * 2 * 2 + 2 * 3 * 2)


def test_ucf11_configuration_has_3392_parameters():
    lstm = BTLSTM((8, 20, 20, 18), (4, 4, 4, 4), 4, blocks=2)
    ih = lstm.ih
    assert ih.out_modes == (16, 4, 4, 4) and ih.out_features == 4 * 256
    factors = sum(f.numel() for f in ih.factors)
    assert factors == 2 * (8 * 16 * 4 + 20 * 4 * 4 + 20 * 4 * 4 + 18 * 4 * 4)
    assert factors + ih.core.numel() == 3392  # input-to-hidden, without the bias
    assert 57600 * 1024 // 3392 == 17388
    assert ih.bias.numel() == 1024 and lstm.hh.weight.shape == (1024, 256)
    # the cheapest mode order; dense would be 57600 * 1024 = 58,982,400 MACs
    assert ih.order == (1, 2, 3, 0) and ih.macs_per_sample() == 9_216_000


def _lstm_reference(m: BTLSTM) -> nn.LSTM:
    ref = nn.LSTM(m.input_size, m.hidden_size, batch_first=m.batch_first)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(m.ih.full_weight())
        ref.weight_hh_l0.copy_(m.hh.weight)
        ref.bias_ih_l0.copy_(m.ih.bias)
        ref.bias_hh_l0.zero_()
    return ref


def test_lstm_one_step_by_hand(f64):
    torch.manual_seed(3)
    m = BTLSTM((2, 3), (2, 2), 2, blocks=2)
    h = m.hidden_size
    assert torch.equal(m.ih.bias[h:2 * h], torch.ones(h)) and not m.ih.bias[:h].any() and not m.ih.bias[2 * h:].any()
    x, h0, c0 = torch.randn(3, 1, 6), torch.randn(3, h), torch.randn(3, h)
    gates = x[:, 0] @ m.ih.full_weight().T + m.ih.bias + h0 @ m.hh.weight.T
    i, f, g, o = gates.chunk(4, dim=1)
    c1 = torch.sigmoid(f) * c0 + torch.sigmoid(i) * torch.tanh(g)
    h1 = torch.sigmoid(o) * torch.tanh(c1)
    out, (hn, cn) = m(x, (h0, c0))
    torch.testing.assert_close(out[:, 0], h1)
    torch.testing.assert_close(hn, h1[None])
    torch.testing.assert_close(cn, c1[None])


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_equals_nn_lstm(f64, batch_first):
    torch.manual_seed(4)
    m = BTLSTM((2, 3, 2), (2, 2, 1), (2, 2, 1), blocks=2, batch_first=batch_first)
    ref = _lstm_reference(m)
    x = torch.randn(3, 5, 12) if batch_first else torch.randn(5, 3, 12)
    h0, c0 = torch.randn(1, 3, 4), torch.randn(1, 3, 4)
    out, (hn, cn) = m(x, (h0, c0))
    ref_out, (ref_h, ref_c) = ref(x, (h0, c0))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(hn, ref_h)
    torch.testing.assert_close(cn, ref_c)
    torch.testing.assert_close(m(x)[0], ref(x)[0])  # zero initial state


def test_gru_equals_nn_gru(f64):
    torch.manual_seed(5)
    m = BTGRU((2, 3), (2, 3), 2, blocks=3)
    with torch.no_grad():
        m.ih.bias.normal_()
        m.hh.bias.normal_()
    ref = nn.GRU(6, 6, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(m.ih.full_weight())
        ref.weight_hh_l0.copy_(m.hh.weight)
        ref.bias_ih_l0.copy_(m.ih.bias)
        ref.bias_hh_l0.copy_(m.hh.bias)
    x, h0 = torch.randn(2, 4, 6), torch.randn(1, 2, 6)
    out, hn = m(x, h0)
    ref_out, ref_h = ref(x, h0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(hn, ref_h)
    assert m.ih.out_modes == (6, 3)


def test_init_gives_target_weight_variance(f64):
    total = 0.0
    for s in range(60):
        torch.manual_seed(s)
        total += BTLinear((2, 3, 4), (3, 2, 2), 2, blocks=2).full_weight().pow(2).mean().item()
    assert total / 60 * 24 == pytest.approx(1.0, rel=0.15)


def test_errors():
    with pytest.raises(ModelError, match="same number of modes"):
        BTLinear((2, 3), (6,), 2)
    with pytest.raises(ModelError, match="rank"):
        BTLinear((2, 3), (3, 2), 0)
    with pytest.raises(ModelError, match="needs 2 values"):
        BTLinear((2, 3), (3, 2), (2, 2, 2))
    with pytest.raises(ModelError, match="blocks"):
        BTLinear((2, 3), (3, 2), 2, blocks=0)
    with pytest.raises(ModelError, match="multiply to 5, not 6"):
        BTLinear.from_shapes(6, 6, 2, 2, in_modes=(5, 1))
    with pytest.raises(ModelError, match="expects 6 input features"):
        BTLinear((2, 3), (3, 2), 2)(torch.randn(4, 5))
    with pytest.raises(ModelError, match=r"expects a sequence \(B, T, 6\)"):
        BTLSTM((2, 3), (2, 2), 2)(torch.randn(4, 6))
    with pytest.raises(ModelError, match="hidden_modes"):
        BTGRU((2, 3), (2, -2), 2)


def test_macs_counted_on_the_real_path():
    layer = BTLinear((2, 3, 4), (3, 2, 2), (2, 3, 2), blocks=3)
    assert layer.order == (2, 1, 0)
    # mode 2 (I=4, J=2, R=2), then mode 1 (3, 2, 3), then mode 0 (2, 3, 2), then the cores
    per = 3 * (6 * 1 * 4 * 2 * 2 + 2 * 4 * 3 * 2 * 3 + 1 * 24 * 2 * 3 * 2 + 12 * 12)
    assert layer.macs_per_sample() == per
    assert count_macs(nn.Sequential(layer), (5, 24)) == {"0": 5 * per}
    lstm = BTLSTM((2, 3), (2, 2), 2)
    assert count_macs(nn.Sequential(lstm), (7, 6)) == {"0": 7 * (lstm.ih.macs_per_sample() + 4 * 16)}


def test_pack_round_trip(tmp_path):
    model = nn.Sequential(BTLSTM((2, 3), (2, 2), (2, 1), blocks=2))
    gru = BTGRU((2, 3), (3, 1), 2, batch_first=False)
    pack.save(model, tmp_path / "lstm.cnz")
    pack.save(gru, tmp_path / "gru.cnz")
    back, gru_back = pack.load(tmp_path / "lstm.cnz"), pack.load(tmp_path / "gru.cnz")
    x = torch.randn(2, 5, 6)
    assert isinstance(back[0], BTLSTM) and back[0].ih.order == model[0].ih.order
    torch.testing.assert_close(back(x)[0], model(x)[0], rtol=0, atol=0)
    torch.testing.assert_close(gru_back(x)[0], gru(x)[0], rtol=0, atol=0)
    assert math.prod(gru_back.hidden_modes) == gru_back.hidden_size == 3
