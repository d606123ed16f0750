"""Fast engine: requantizer equal to the fixed-point definition, bit-exact with the reference on every value, and
no floating-point operation between the input quantize and the output dequantize."""

import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from compactnn.quantize.intonly import reference as ref
from compactnn.quantize.intonly.calibrate import calibrate
from compactnn.quantize.intonly.convert import convert
from compactnn.quantize.intonly.engine import Requant, mbqm_fast
from compactnn.quantize.intonly.fixedpoint import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, requantize
from compactnn.quantize.intonly.qat import prepare


def _edge_accs(rng, n=4000):
    acc = rng.integers(INT32_MIN, INT32_MAX, n, dtype=np.int64, endpoint=True)
    small = rng.integers(-5000, 5000, n, dtype=np.int64)
    edges = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX, INT32_MAX - 1, -(1 << 30), 1 << 30], np.int64)
    return np.concatenate([acc, small, edges])


@pytest.mark.parametrize("shift", [-31, -20, -9, -1, 0, 1, 3])
@pytest.mark.parametrize("act", ["none", "relu"])
def test_requant_equals_definition_per_tensor(shift, act):
    rng = np.random.default_rng(abs(shift) + (act == "relu"))
    acc = _edge_accs(rng)
    for m0 in (1 << 30, (1 << 31) - 1, 1518500250, 0):
        z = int(rng.integers(0, 256))
        qmin, qmax = (z, 255) if act == "relu" else (0, 255)
        expect = requantize(acc, m0, shift, z, qmin, qmax)
        got = Requant(m0, shift, z, qmin, qmax)(torch.from_numpy(acc.copy())).numpy().astype(np.int64) + 128
        assert np.array_equal(got, expect)


def test_requant_per_channel_with_folded_bias():
    rng = np.random.default_rng(7)
    o = 9
    m0 = rng.integers(1 << 30, 1 << 31, o, dtype=np.int64)
    sh = np.array([-31, -24, -12, -5, -1, 0, 0, 2, -8], dtype=np.int64)
    bias = rng.integers(-(1 << 20), 1 << 20, o, dtype=np.int64)
    raw = rng.integers(-(1 << 24), 1 << 24, (500, o), dtype=np.int64)
    raw[0, :] = -(1 << 30)  # big negative accumulators
    for z, qmin, qmax in ((3, 0, 255), (200, 200, 255), (17, 17, 60)):
        expect = requantize(raw + bias, m0, sh, z, qmin, qmax, axis=1)
        rq = Requant(m0, sh, z, qmin, qmax, bias=torch.from_numpy(bias))
        got = rq(torch.from_numpy(raw.astype(np.int32))).numpy().astype(np.int64) + 128
        assert np.array_equal(got, expect)


def test_mbqm_fast_ties_and_saturation():
    xs = np.array([-3, 3, -(1 << 20), (1 << 20), INT32_MIN, INT32_MAX, 12345, -12345, 0, -1, 1] +
                  [k * (1 << 10) + (1 << 9) for k in range(-40, 40)], dtype=np.int64)  # ties for shift -11
    for m0, sh in ((1 << 30, 1), (1 << 30, -11), ((1 << 31) - 1, 5), (1 << 30, 0), (1431655765, -3)):
        got = mbqm_fast(torch.from_numpy(xs.copy()), m0, sh).numpy()
        assert np.array_equal(got, multiply_by_quantized_multiplier(xs, m0, sh))


class Zoo(nn.Module):
    """Every supported op: strided/padded/depthwise/grouped/dilated conv, BN, ReLU6, add, cat, pools, flatten."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(2, 8, 3, stride=2, padding=1)
        self.bn0 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.gc = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pw = nn.Conv2d(8, 4, 1)
        self.pw2 = nn.Conv2d(8, 4, 1, bias=False)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.avg = nn.AvgPool2d(2, stride=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 6)
        self.fc2 = nn.Linear(6, 5)

    def forward(self, x):
        c0 = F.relu6(self.bn0(self.conv0(x)))
        d = torch.relu(self.bn1(self.dw(c0)))
        a = F.relu(self.gc(d) + c0)
        c = torch.cat([self.pw(a), self.pw2(c0)], dim=1)
        m = self.avg(self.pool(c))
        h = F.relu(self.fc(torch.flatten(self.gap(m), 1)))
        return self.fc2(h)


def _zoo_int(per_channel=True):
    torch.manual_seed(0)
    model = Zoo()
    with torch.no_grad():
        for bn in (model.bn0, model.bn1):
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
    gm = prepare(model, per_channel=per_channel)
    x = torch.randn(64, 2, 12, 12)
    calibrate(gm, [x[:32], x[32:]])
    return convert(gm, (2, 12, 12)), gm, x


@pytest.mark.parametrize("per_channel", [True, False])
def test_every_value_bit_exact_zoo(per_channel):
    im, gm, x = _zoo_int(per_channel)
    kinds = [op.kind for op in im.ops]
    assert {"conv2d", "add", "concat", "max_pool2d", "avg_pool2d", "global_avg_pool", "flatten", "linear"} <= set(kinds)
    assert {op.groups for op in im.ops if op.kind == "conv2d"} == {1, 2, 8}
    q = im.quantize_input(x)
    fast, slow = im.run_values(q, "fast"), im.run_values(q, "reference")
    assert fast.keys() == slow.keys() and len(fast) == len(im.ops) + 1
    for name in slow:
        assert fast[name].dtype == torch.uint8 and torch.equal(fast[name], slow[name]), name
    assert torch.equal(im.run_int(q, "fast"), slow[im.output["value"]])  # fused program too
    for i in (0, 7):  # batch 1 (GEMMs with M = 1)
        assert torch.equal(im.run_int(q[i:i + 1], "fast"), im.run_int(q[i:i + 1], "reference"))
    with torch.no_grad():
        fq = gm(x)
    out = im(x)
    assert (out.argmax(1) == fq.argmax(1)).float().mean() > 0.9  # integer model follows the fake-quant model
    assert (out - fq).abs().max() < 6 * im.output["scale"]


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        dtypes = {t.dtype for t in tree_leaves((args, kwargs, out)) if isinstance(t, torch.Tensor)}
        self.seen.append((str(func), dtypes))
        return out


@pytest.mark.parametrize("native", ["off", "auto"])
def test_no_float_op_between_quantize_and_dequantize(monkeypatch, native):
    monkeypatch.setenv("COMPACTNN_NATIVE", native)
    im, _, x = _zoo_int()
    q = im.quantize_input(x[:5])
    with Recorder() as rec:
        y = im.run_int(q)
        im.run_values(q)
    assert y.dtype == torch.uint8 and len(rec.seen) > 50
    names = {f for f, _ in rec.seen}
    assert any("_int_mm" in f for f in names) == (im.fast_engine().native is None)
    assert native == "auto" or im.fast_engine().native is None
    floats = [(f, d) for f, d in rec.seen if any(t.is_floating_point or t.is_complex for t in d)]
    assert floats == []
    with Recorder() as rec:  # the recorder does see float ops (the check can fail)
        im(x[:2])
    assert any(any(t.is_floating_point for t in d) for _, d in rec.seen)


def test_reference_engine_touches_integer_arrays_only(monkeypatch):
    im, _, x = _zoo_int()
    calls = []

    def checked(fn):
        def wrapper(*args, **kwargs):
            for a in tree_leaves((list(args), kwargs)):
                if isinstance(a, np.ndarray):
                    assert a.dtype.kind in "iu", (fn.__name__, a.dtype)
                else:
                    assert not isinstance(a, (float, torch.Tensor)), (fn.__name__, type(a))
            out = fn(*args, **kwargs)
            assert out.dtype == np.uint8
            calls.append(fn.__name__)
            return out
        return wrapper

    for name in ("conv2d", "linear", "max_pool2d", "avg_pool2d", "add", "concat"):
        monkeypatch.setattr(ref, name, checked(getattr(ref, name)))
    q = im.quantize_input(x[:4])
    out = im.run_int(q, engine="reference")
    assert out.dtype == torch.uint8
    assert {"conv2d", "linear", "max_pool2d", "avg_pool2d", "add", "concat"} <= set(calls)


@pytest.mark.parametrize("native", ["off", "auto"])
def test_concat_pass_through_input_is_bit_exact(monkeypatch, native):
    """A concat input that already has the output's scale and zero point passes through (multiplier None)."""
    monkeypatch.setenv("COMPACTNN_NATIVE", native)
    im, _, x = _zoo_int()
    i, cat = next((i, op) for i, op in enumerate(im.ops) if op.kind == "concat")
    first = cat.inputs[0]
    im.values[first] = dict(im.values[cat.output])
    ops = list(im.ops)
    ops[i] = cat = dataclasses.replace(cat, multipliers=(None, *cat.multipliers[1:]))
    im.ops = ops
    q = im.quantize_input(x)
    fast, slow = im.run_values(q, "fast"), im.run_values(q, "reference")
    assert torch.equal(fast[cat.output], slow[cat.output])
    assert torch.equal(im.run_int(q, "fast"), slow[im.output["value"]])
