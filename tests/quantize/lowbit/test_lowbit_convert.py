"""Low-bit models to the integer engine: the scaled float form is exact, levels are carried, engines agree."""

import copy
import dataclasses
import warnings

import pytest
import torch
from torch import nn

import compactnn as cn
from compactnn.errors import ModelError
from compactnn.quantize import DoReFa, LSQ, SYQ
from compactnn.quantize.intonly import inspect, int_mismatches
from compactnn.quantize.lowbit import LowBitConv2d, LowBitLinear
from compactnn.quantize.lowbit.convert import _plain, float_form, to_integer
from compactnn.quantize.lowbit.quantizers import ClipQuant, LSQQuant


@pytest.fixture(scope="module")
def digits_small():
    full = cn.data.load("digits")
    return dataclasses.replace(full, train=full.train.subset(512, seed=0))


def _lowbit(name, cfg, data, train_epochs=0):
    model = cn.models.create(name, data=data, seed=0)
    if train_epochs:
        cn.train.fit(model, data, epochs=train_epochs, lr=0.05, quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cn.compress(model, cfg, data=data).eval()


def _unrounded(model):
    """The same model with every activation quantizer's rounding removed (clip only)."""
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, (ClipQuant, LSQQuant)):
            step, n = mod.grid()
            cn.graph.set_module(m, name, nn.Hardtanh(0.0, step * n))
    return m


def _plain_double(model):
    m = copy.deepcopy(model)
    for name, mod in list(m.named_modules()):
        if isinstance(mod, (LowBitConv2d, LowBitLinear)):
            cn.graph.set_module(m, name, _plain(mod))
    return m.double()


@pytest.mark.parametrize("name", ["lenet300", "resnet20"])
def test_float_form_is_the_model_with_scaled_relu6(name, digits_small):
    """BN folding and the scale propagation (residual adds included) are exact: checked in float64."""
    q = _lowbit(name, DoReFa(weight_bits=2, act_bits=3, finetune=None), digits_small)
    gm, levels = float_form(_plain_double(q))
    assert levels == 7
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in gm.modules()) == sum(isinstance(m, ClipQuant) for m in q.modules())
    x = digits_small.test.x[:64].double()
    with torch.no_grad():
        torch.testing.assert_close(gm(x), _unrounded(_plain_double(q))(x), rtol=1e-9, atol=1e-9)
        gm32, _ = float_form(q)  # float32: equal up to rounding
        torch.testing.assert_close(gm32(x.float()), _unrounded(q)(x.float()), rtol=0, atol=1e-2)


@pytest.mark.parametrize("cfg", [SYQ(act_bits=8, finetune={"epochs": 2, "lr": 1e-3}),
                                 DoReFa(weight_bits=2, act_bits=4, finetune={"epochs": 2})])
def test_trained_model_converts_and_agrees(cfg, digits_small):
    q = _lowbit("lenet300", cfg, digits_small, train_epochs=3)
    im = to_integer(q, digits_small)
    x, y = digits_small.test.x, digits_small.test.y
    with torch.no_grad():
        a, b = q(x), im(x)
    assert int_mismatches(im, x) == 0  # fast and reference engines bit-exact
    agree = float((a.argmax(1) == b.argmax(1)).float().mean())
    assert agree >= 0.97
    acc_fake, acc_int = float((a.argmax(1) == y).float().mean()), float((b.argmax(1) == y).float().mean())
    assert abs(acc_fake - acc_int) <= 0.02
    levels = 2 ** cfg.act_bits - 1
    relu6 = [r for r in inspect(im) if r.get("activation") == "relu6"]
    assert relu6 and all(r["qmin"] == 0 and r["qmax"] == levels for r in relu6)  # the quantizer's levels exactly
    assert all(r["output_scale"] == pytest.approx(6.0 / levels) and r["output_zero_point"] == 0 for r in relu6)


def test_lsq_ranges_joined_by_a_residual_add_are_refused(digits_small):
    q = _lowbit("resnet20", LSQ(weight_bits=2, act_bits=2, finetune=None), digits_small)
    acts = [m for m in q.modules() if isinstance(m, LSQQuant)]
    with torch.no_grad():
        for i, m in enumerate(acts):
            m.step.fill_(0.1 + 0.01 * i)
    with pytest.raises(ModelError, match="different ranges"):
        to_integer(q, digits_small)


def test_more_than_eight_activation_bits_are_refused(digits_small):
    q = _lowbit("lenet300", DoReFa(weight_bits=2, act_bits=9, finetune=None), digits_small)
    with pytest.raises(ModelError, match="at most 8"):
        to_integer(q, digits_small)
