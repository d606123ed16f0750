"""Conversion to IntegerModel on digits: accuracy close to the fake-quant model, engines bit-exact on lenet5 and
resnet20, parameters as the IR says, error paths."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compactnn as cn
from compactnn.errors import ConfigError, ModelError
from compactnn.quantize.intonly.calibrate import calibrate
from compactnn.quantize.intonly.convert import convert
from compactnn.quantize.intonly.model import IntegerModel, derived_weight_scales, weight_scales
from compactnn.quantize.intonly.qparams import symmetric_int8
from compactnn.quantize.intonly.qat import prepare


def _train(model, data, steps=150, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = data.train.x, data.train.y
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,))
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def lenet(digits):
    torch.manual_seed(0)
    return _train(cn.models.create("lenet5", data=digits), digits)


def _accuracy(model, data):
    with torch.no_grad():
        return (model(data.test.x).argmax(1) == data.test.y).float().mean().item()


def test_lenet5_conversion_accuracy_and_bit_exactness(lenet, digits):
    gm = prepare(lenet)
    calibrate(gm, digits, num_batches=4)
    im = convert(gm, digits.input_shape)
    acc_float, acc_fq, acc_int = _accuracy(lenet, digits), _accuracy(gm, digits), _accuracy(im, digits)
    assert acc_float > 0.85
    assert abs(acc_int - acc_fq) <= 0.01 and abs(acc_int - acc_float) <= 0.02
    with torch.no_grad():
        agree = (im(digits.test.x).argmax(1) == gm(digits.test.x).argmax(1)).float().mean().item()
    assert agree > 0.98
    q = im.quantize_input(digits.test.x)
    assert torch.equal(im.run_int(q, "fast"), im.run_int(q, "reference"))
    fast, slow = im.run_values(q[:50], "fast"), im.run_values(q[:50], "reference")
    assert all(torch.equal(fast[k], slow[k]) for k in slow)


def test_resnet20_small_bit_exact(digits):
    torch.manual_seed(0)
    model = _train(cn.models.create("resnet20", data=digits, widths=(4, 8, 8)), digits, steps=40)
    gm = prepare(model)
    calibrate(gm, digits, num_batches=2)
    im = convert(gm, digits.input_shape)
    assert [op.kind for op in im.ops].count("add") == 9
    q = im.quantize_input(digits.test.x)
    fast, slow = im.run_values(q, "fast"), im.run_values(q, "reference")
    assert all(torch.equal(fast[k], slow[k]) for k in slow)
    assert torch.equal(im.run_int(q), slow[im.output["value"]])
    assert abs(_accuracy(im, digits) - _accuracy(gm, digits)) <= 0.03


def test_ir_fields(lenet, digits):
    gm = prepare(lenet, per_channel=True)
    calibrate(gm, digits, num_batches=2)
    im = convert(gm, digits.input_shape)
    assert isinstance(im, IntegerModel) and im.input_shape == (1, 8, 8)
    assert im.input["value"] == "v0" and im.output["value"] == im.ops[-1].output
    for op in im.ops:
        assert set(op.inputs) <= set(im.values) and op.output in im.values
        if op.kind in ("conv2d", "linear"):
            w, b, m, s = (getattr(im, getattr(op, k)) for k in ("weight", "bias", "multiplier", "shift"))
            assert w.dtype == torch.int8 and w.abs().max() <= 127 and b.dtype == torch.int32
            assert m.dtype == torch.int32 and s.dtype == torch.int32 and m.shape == (w.shape[0],)
            assert bool(((m >= 2**30) & (m.long() < 2**31)).all())
            s_w, _ = symmetric_int8(gm.get_submodule(op.name).folded()[0], per_channel=True, axis=0)
            stored = getattr(im, op.weight_scale)  # the scales used at conversion, kept as metadata (issue 20)
            assert stored.dtype == torch.float64 and np.array_equal(stored.numpy(), s_w)
            ws = weight_scales(im, op)
            assert ws.dtype == np.float32 and ws.shape == (w.shape[0],)
            np.testing.assert_array_equal(ws, s_w.astype(np.float32))
            # and derived from M0 alone (what files from before the stored scales give): 31 bits of M0
            np.testing.assert_allclose(derived_weight_scales(im, op), s_w, rtol=2e-9)
    fc1 = next(op for op in im.ops if op.name == "fc1")
    assert fc1.activation == "relu" and fc1.qmin == im.values[fc1.output]["zero_point"]
    assert all(v["dtype"] == "uint8" and 0 <= v["zero_point"] <= 255 for v in im.values.values())
    gm_t = prepare(lenet, per_channel=False)
    calibrate(gm_t, digits, num_batches=1)
    im_t = convert(gm_t, digits.input_shape)
    assert getattr(im_t, im_t.ops[0].multiplier).shape == (1,)


def test_percentile_calibration_clips_ranges(lenet, digits):
    a, b = prepare(lenet), prepare(lenet)
    calibrate(a, digits, "minmax", num_batches=4)
    calibrate(b, digits, "percentile", percentile=99.0, num_batches=4)
    assert b.fc1.out_quant.max_val < a.fc1.out_quant.max_val
    im = convert(b, digits.input_shape)
    assert _accuracy(im, digits) > 0.8


def test_relu6_clamp_and_errors(digits):
    class Six(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 8)
            self.act = nn.ReLU6()

        def forward(self, x):
            return self.act(self.fc(x.flatten(1)))

    torch.manual_seed(0)
    model = Six()
    with torch.no_grad():
        model.fc.weight.mul_(20)
    gm = prepare(model)
    with pytest.raises(ModelError, match="never observed"):
        convert(gm, (1, 8, 8))
    calibrate(gm, digits, num_batches=1)
    im = convert(gm, (1, 8, 8))
    op = im.ops[-1]
    v = im.values[op.output]
    assert op.activation == "relu6" and op.qmin == v["zero_point"]
    assert op.qmax == min(255, v["zero_point"] + int(np.floor(6 / v["scale"] + 0.5)))
    assert im(digits.test.x).max() <= 6.0 + 1e-6
    with pytest.raises(ConfigError, match="needs data"):
        calibrate(prepare(model), None)


def test_functional_model_view_flatten_bit_exact():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(2, 4, 3, padding=1)
            self.b = nn.Conv2d(2, 4, 1)
            self.fc = nn.Linear(8 * 2 * 2, 3)

        def forward(self, x):
            y = F.relu6(self.a(x))
            z = torch.relu(self.b(x) + y)
            c = F.max_pool2d(torch.cat([y, z], dim=1), 2)
            return self.fc(c.view(c.size(0), -1))

    torch.manual_seed(0)
    gm = prepare(Functional())
    x = torch.randn(32, 2, 4, 4)
    calibrate(gm, [x])
    im = convert(gm, (2, 4, 4))
    assert [o.kind for o in im.ops] == ["conv2d", "conv2d", "add", "concat", "max_pool2d", "flatten", "linear"]
    q = im.quantize_input(x)
    fast, slow = im.run_values(q, "fast"), im.run_values(q, "reference")
    assert all(torch.equal(fast[k], slow[k]) for k in slow)
    with torch.no_grad():
        assert (im(x) - gm(x)).abs().max() <= 2 * im.output["scale"] + 1e-6


def test_packed_model_keeps_the_conversion_scales_and_inspect_reports_them(lenet, digits, tmp_path):
    """Issue 20: S_in, S_w and S_out are metadata saved in the .cnz; inspect() reports S_w as stored, independent of
    M0 (and S_w recomputed from M0 beside it, to audit the multipliers)."""
    from compactnn import pack
    from compactnn.quantize.intonly import inspect

    gm = prepare(lenet, per_channel="conv")
    calibrate(gm, digits, num_batches=2)
    im = convert(gm, digits.input_shape)
    pack.save(im, tmp_path / "m.cnz")
    loaded = pack.load(tmp_path / "m.cnz")
    rows = [r for r in inspect(loaded) if r["op"] in ("conv2d", "linear")]
    assert len(rows) == 4
    for row in rows:
        layer = gm.get_submodule(row["name"])
        s_w, _ = symmetric_int8(layer.folded()[0], per_channel=layer.per_channel, axis=0)
        np.testing.assert_array_equal(row["weight_scale"], np.atleast_1d(s_w))  # bit for bit, float64
        assert row["weight_scale"].dtype == np.float64
        np.testing.assert_allclose(row["weight_scale_from_M0"], row["weight_scale"], rtol=2e-9)
        assert row["input_scale"] == loaded.values[row["inputs"][0]]["scale"]
        assert row["output_scale"] == gm.get_submodule(row["name"]).out_quant.qparams()[0]
