"""Fake quantization: TF FakeQuantWithMinMaxVars formula, STE gradient mask, weight quantizer, observers."""

import numpy as np
import pytest
import torch

from compactnn.errors import ConfigError, ModelError
from compactnn.quantize.intonly.fakequant import ActQuant, fake_quant, fake_quant_weight, round_half_away_t
from compactnn.quantize.intonly.qparams import nudged_range, quantize, symmetric_int8


def test_fake_quant_matches_hand_computation():
    # range [-1, 2] on 0..255: scale 3/255, zp = round(255/3) = 85, nudged range [-85 s, 170 s]
    s = 3.0 / 255.0
    x = torch.tensor([-5.0, -1.0, -0.004, 0.0, 0.007, 1.0, 1.9999, 5.0], dtype=torch.float64)
    y = fake_quant(x, -1.0, 2.0)
    lo, hi = -85 * s, 170 * s
    expect = []
    for v in x.tolist():
        c = min(max(v, lo), hi)
        expect.append(np.floor((c - lo) / s + 0.5) * s + lo)
    assert torch.allclose(y, torch.tensor(expect, dtype=torch.float64), atol=1e-12)
    assert y[3].item() == pytest.approx(0.0, abs=1e-15)  # real 0 is exact after nudging
    assert y[0].item() == pytest.approx(lo) and y[-1].item() == pytest.approx(hi)


def test_fake_quant_uses_nudged_range_and_grid():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3
    y = fake_quant(x, -2.3, 4.1)
    scale, zp, nmin, nmax = nudged_range(-2.3, 4.1)
    codes = (y / scale + zp).numpy()
    assert np.allclose(codes, np.round(codes), atol=1e-3)  # every output sits on the grid
    assert codes.min() >= -1e-3 and codes.max() <= 255 + 1e-3
    q = quantize(x.clamp(nmin, nmax), scale, zp, 0, 255)  # the converter's quantizer gives the same codes
    assert np.array_equal(np.round(codes).astype(np.int64), q)


def test_straight_through_gradient_mask():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.3, 0.99, 1.5, 4.0], requires_grad=True)
    fake_quant(x, -1.0, 1.0).sum().backward()
    _, _, nmin, nmax = nudged_range(-1.0, 1.0)
    inside = ((x >= nmin) & (x <= nmax)).float()
    assert torch.equal(x.grad, inside)
    assert x.grad[0] == 0 and x.grad[-1] == 0 and x.grad[2] == 1


def test_weight_fake_quant_matches_converter_quantizer():
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    for per_channel in (True, False):
        fq = fake_quant_weight(w, per_channel)
        s, _ = symmetric_int8(w, per_channel=per_channel)
        q = quantize(w, s, 0, -127, 127, axis=0 if per_channel else None)
        s_b = np.asarray(s).reshape(-1, 1, 1, 1) if per_channel else s
        assert np.allclose(fq.detach().numpy(), q * s_b, rtol=0, atol=1e-12)
        assert np.abs(q).max() == 127
    w.requires_grad_(True)
    fake_quant_weight(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # weights are never clipped: STE passes everything


def test_round_half_away():
    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49])
    assert round_half_away_t(x).tolist() == [-3, -2, -1, 1, 2, 3, 0]


def test_ema_observer_values():
    aq = ActQuant(ema_decay=0.9)
    aq.train()
    aq(torch.tensor([-1.0, 2.0]))
    assert aq.min_val.item() == pytest.approx(-1.0) and aq.max_val.item() == pytest.approx(2.0)
    aq(torch.tensor([-3.0, 4.0]))
    assert aq.min_val.item() == pytest.approx(0.9 * -1 + 0.1 * -3)
    assert aq.max_val.item() == pytest.approx(0.9 * 2 + 0.1 * 4)
    aq.eval()
    aq(torch.tensor([-100.0, 100.0]))  # eval: no observation
    assert aq.max_val.item() == pytest.approx(2.2)
    assert aq.qparams() == pytest.approx(nudged_range(-1.2, 2.2)[:2])


def test_activation_delay():
    aq = ActQuant(ema_decay=0.5, act_delay=2)
    aq.train()
    x = torch.linspace(-1, 1, 101)
    assert torch.equal(aq(x), x) and torch.equal(aq(x), x)  # first two training steps: float
    y = aq(x)
    assert not torch.equal(y, x)
    assert torch.equal(y, fake_quant(x, aq.min_val.item(), aq.max_val.item()))


def test_minmax_and_percentile_observers():
    aq = ActQuant()
    aq.observer, aq.calibrating = "minmax", True
    aq(torch.tensor([0.0, 1.0]))
    aq(torch.tensor([-2.0, 0.5]))
    assert (aq.min_val.item(), aq.max_val.item()) == (-2.0, 1.0)
    p = ActQuant()
    p.observer, p.calibrating, p.percentile = "percentile", True, 90.0
    data = torch.arange(101.0)
    p(data)
    assert p.max_val.item() == pytest.approx(90.0) and p.min_val.item() == pytest.approx(10.0)
    p(data + 10)
    assert p.max_val.item() == pytest.approx(95.0)  # mean of the per-batch percentiles


def test_errors():
    with pytest.raises(ConfigError):
        ActQuant(ema_decay=1.0)
    with pytest.raises(ModelError, match="never observed"):
        ActQuant().qparams()
