"""The integer ops IDN needs (issue 13): conv2d with a fused LeakyReLU, conv_transpose2d, resize_bicubic; each
against a brute-force int64 definition, reference == fast torch == native (every SIMD path) bit for bit, hostile op
fields as one-line errors, and a tiny IDN-shaped network converted and run bit-exactly."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compactnn import pack
from compactnn.errors import ModelError, PackError
from compactnn.quantize.intonly import ir
from compactnn.quantize.intonly import reference as ref
from compactnn.quantize.intonly.fixedpoint import multiply_by_quantized_multiplier, quantize_multiplier
from compactnn.quantize.intonly.model import IntegerModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnz_forge import rewrite_manifest  # noqa: E402


def _t(a, dt):
    return torch.from_numpy(np.ascontiguousarray(np.asarray(a, dtype=dt)))


# ------------------------------------------------------------------------------------------------ definitions


def _scatter_add(x, z, w, b, s, pt, pl, pb, pr):
    """Brute force: every (input pixel, input channel, tap) adds (q - Z)·w into the full output, then the crop."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * s[0] + kh, (wd - 1) * s[1] + kw), dtype=np.int64)
    for bi in range(n):
        for ci in range(c):
            for i in range(h):
                for j in range(wd):
                    v = int(x[bi, ci, i, j]) - z
                    for oc in range(o):
                        for ki in range(kh):
                            for kj in range(kw):
                                full[bi, oc, i * s[0] + ki, j * s[1] + kj] += v * int(w[ci, oc, ki, kj])
    ho, wo = full.shape[2] - pt - pb, full.shape[3] - pl - pr
    return full[:, :, pt:pt + ho, pl:pl + wo] + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("s, pads, k", [((2, 2), (7, 7, 8, 8), 17), ((3, 3), (6, 6, 8, 8), 17), ((4, 4), (5, 5, 8, 8), 17),
                                       ((2, 3), (0, 1, 2, 0), (3, 4)), ((1, 1), (1, 1, 1, 1), 3)])
def test_conv_transpose_accumulators_equal_a_scatter_add_loop(s, pads, k):
    rng = np.random.default_rng(sum(s) + sum(pads))
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.integers(0, 256, (1, 3, 3, 4), dtype=np.uint8)
    w = rng.integers(-127, 128, (3, 2, kh, kw)).astype(np.int8)
    b = rng.integers(-1000, 1000, 2).astype(np.int32)
    pt, pl, pb, pr = pads
    got = ref.conv_transpose2d_acc(x, 37, w, b, s, (pt, pl), (pb, pr))
    assert np.array_equal(got, _scatter_add(x, 37, w, b.astype(np.int64), s, pt, pl, pb, pr))


def test_conv_transpose_matches_torch_in_float64():
    """The definition equals torch's float conv_transpose2d of (q - Z) (exact in float64) with IDN's geometry."""
    rng = np.random.default_rng(0)
    for s in (2, 3, 4):
        x = rng.integers(0, 256, (2, 5, 6, 7), dtype=np.uint8)
        w = rng.integers(-127, 128, (5, 1, 17, 17)).astype(np.int8)
        got = ref.conv_transpose2d_acc(x, 9, w, None, s, 9 - s, 8)
        t = torch.nn.functional.conv_transpose2d(torch.from_numpy(x.astype(np.float64) - 9),
                                                 torch.from_numpy(w.astype(np.float64)), stride=s, padding=9 - s)
        assert got.shape == (2, 1, 6 * s, 7 * s)
        assert np.array_equal(got, t[..., :6 * s, :7 * s].numpy().astype(np.int64))


def test_leaky_requantize_picks_the_side_by_the_accumulator_sign():
    acc = np.array([[-100000, -1, 0, 1, 100000]], dtype=np.int64)
    m, sh = quantize_multiplier(0.001)
    mn, sn = quantize_multiplier(0.00005)
    got = ref.leaky_requantize(acc, m, sh, mn, sn, 100, axis=None)
    assert got.tolist() == [[100 + int(np.round(-100000 * 0.00005)), 100, 100, 100, 200]]
    big = np.arange(-2**20, 2**20, 997, dtype=np.int64)[None]
    y = ref.leaky_requantize(big, m, sh, mn, sn, 128, axis=None)
    assert np.all(np.diff(y[0]) >= 0)  # non-decreasing
    exp = np.where(big < 0, multiply_by_quantized_multiplier(big, mn, sn), multiply_by_quantized_multiplier(big, m, sh))
    assert np.array_equal(y, np.clip(exp + 128, 0, 255))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_resize_bicubic_is_matlab_imresize_within_its_rounding(scale):
    """Codes at one scale (Z = 0, S_out = S_in): each output is MATLAB's float64 bicubic rounded, except where the
    exact value lies within the fixed-point error (weights to 2^-14, the rows pass to 2^-7 of a code) of a tie."""
    from compactnn.sr import matlab

    rng = np.random.default_rng(scale)
    x = rng.integers(0, 256, (1, 1, 13, 17), dtype=np.uint8)
    x[0, 0, :4, :4] = 255  # flat and saturated patches
    bits, mid = 14, 6
    m, sh = quantize_multiplier(2.0 ** -(2 * bits - mid))
    got = ref.resize_bicubic(x, 0, scale, m, sh, 0, bits, mid).astype(np.int64)
    exact = matlab.imresize(x[0, 0].astype(np.float64), float(scale))
    assert got.shape == (1, 1, 13 * scale, 17 * scale)
    assert np.all(np.abs(got[0, 0] - np.clip(exact, 0, 255)) <= 0.5 + 0.02)
    assert np.mean(got[0, 0] == np.clip(np.floor(exact + 0.5), 0, 255)) > 0.99
    assert np.all(got[0, 0, :2 * scale, :2 * scale] == 255)
    # taps: every output sample's weights sum to exactly 2^bits
    _, wts = ref.bicubic_taps(13, scale, bits)
    assert np.all(wts.sum(axis=1) == 1 << bits)


# ------------------------------------------------------------------------------------------------ programs


def _program(h=7, w=9, s=3, groups=4, seed=0) -> IntegerModel:
    """leaky conv -> leaky grouped conv -> concat -> add -> conv_transpose2d; resize_bicubic; final add."""
    rng = np.random.default_rng(seed)
    c = 8
    ten = {}

    def conv(k, cin, cout, g=1, shift=(-12, -8), m0=(1 << 30, 1 << 31)):
        ten[k + "w"] = _t(rng.integers(-127, 128, (cout, cin // g, 3, 3)), np.int8)
        ten[k + "b"] = _t(rng.integers(-3000, 3000, cout), np.int32)
        ten[k + "m"] = _t(rng.integers(*m0, cout), np.int32)
        ten[k + "s"] = _t(rng.integers(*shift, cout), np.int32)
        ten[k + "mn"] = _t(rng.integers(1 << 30, 1 << 31, cout), np.int32)
        ten[k + "sn"] = _t(rng.integers(shift[0] - 5, shift[1] - 4, cout), np.int32)
        return dict(weight=k + "w", bias=k + "b", multiplier=k + "m", shift=k + "s", multiplier_neg=k + "mn",
                    shift_neg=k + "sn", activation="leaky_relu", padding=(1, 1), groups=g)

    ten["tw"] = _t(rng.integers(-127, 128, (2 * c, 1, 17, 17)), np.int8)
    ten["tb"], ten["tm"], ten["ts"] = _t([77], np.int32), _t([1 << 30], np.int32), _t([-9], np.int32)
    ten["tm2"], ten["ts2"] = _t([1 << 30], np.int32), _t([-9 + 8], np.int32)  # the same, times 2^frac_bits
    ops = [ir.Conv2d(inputs=("x",), output="a", **conv("c1", 1, c)),
           ir.Conv2d(inputs=("a",), output="g", **conv("c2", c, c, groups, (-9, -6))),
           ir.Conv2d(inputs=("a",), output="big", **conv("c3", c, 20, 1, (1, 2), (1 << 19, 1 << 20))),  # unfolded requantization
           ir.Concat(inputs=("a", "g"), output="cat", multipliers=((1 << 30, 0), (1 << 30, -1))),
           ir.ConvTranspose2d(inputs=("cat",), output="r", weight="tw", bias="tb", multiplier="tm", shift="ts",
                              stride=(s, s), padding=(9 - s, 9 - s), padding_end=(8, 8)),
           ir.ResizeBicubic(inputs=("x",), output="u", scale=s, multiplier=1 << 30, shift=-21),
           ir.ConvTransposeResizeAdd(inputs=("cat", "x"), output="y2", weight="tw", bias="tb", multiplier="tm2",
                                     shift="ts2", stride=(s, s), padding=(9 - s, 9 - s), padding_end=(8, 8), scale=s,
                                     resize_multiplier=1 << 30, resize_shift=-21 + 8, frac_bits=8),
           ir.Concat(inputs=("x", "x"), output="xx", multipliers=(None, (1 << 30, 0))),
           ir.ConvTransposeResizeAdd(inputs=("cat", "xx"), output="y3", weight="tw", bias="tb", multiplier="tm2",
                                     shift="ts2", stride=(s, s), padding=(9 - s, 9 - s), padding_end=(8, 8), scale=s,
                                     resize_multiplier=1 << 30, resize_shift=-21 + 8, frac_bits=8, planes=2,
                                     fine_multiplier=1 << 30, fine_shift=-21, fine_zero_point=128)]
    m = {k: v for k, v in zip(("M0_1", "shift_1", "M0_2", "shift_2", "M0_y", "shift_y"),
                               (1 << 30, 0, 1 << 30, -1, 1 << 30, -19))}
    ops.append(ir.Add(inputs=("r", "u"), output="y", multiplier_a=m["M0_1"], shift_a=m["shift_1"],
                      multiplier_b=m["M0_2"], shift_b=m["shift_2"], multiplier_out=m["M0_y"], shift_out=m["shift_y"]))
    zps = dict(x=0, a=40, g=90, big=128, cat=60, r=128, u=20, y=0, y2=5, xx=0, y3=5)
    vals = {k: {"scale": 0.01, "zero_point": z, "dtype": "uint8"} for k, z in zps.items()}
    return IntegerModel((1, h, w), {"value": "x", "scale": 0.01, "zero_point": 0},
                        {"value": "y3", "scale": 0.01, "zero_point": 5}, vals, ops, ten)


@pytest.fixture
def native_mode():
    old = os.environ.get("COMPACTNN_NATIVE")
    yield
    if old is None:
        os.environ.pop("COMPACTNN_NATIVE", None)
    else:
        os.environ["COMPACTNN_NATIVE"] = old


@pytest.mark.parametrize("s", [2, 3, 4])
@pytest.mark.parametrize("kind", ["off", "vnni", "avx2", "generic"])
def test_reference_equals_fast_and_native_bit_for_bit(s, kind, native_mode):
    from compactnn.quantize.intonly import native

    if kind in ("vnni", "avx2") and not native._cpu_has({"vnni": "avx512_vnni", "avx2": "avx2"}[kind]):
        pytest.skip(f"no {kind} on this CPU")
    os.environ["COMPACTNN_NATIVE"] = kind
    model = _program(s=s, seed=s)
    model.invalidate()
    eng = model.fast_engine()
    if kind != "off" and eng.native is None:
        pytest.skip(f"native kernels ({kind}) do not build here: {native.status()}")
    q = torch.from_numpy(np.random.default_rng(s).integers(0, 256, (2, 1, 7, 9), dtype=np.uint8))
    a, b = model.run_values(q, "reference"), model.run_values(q, "fast")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(model.run_int(q, "fast"), a["y3"])
    assert not torch.equal(a["y2"], a["y3"])
    # the fused output layer is the transposed conv plus the bicubic, rounded once (within one code of the sum of
    # the separately rounded branches, which carry two roundings)
    tr = a["r"].int() - 128
    inside = (a["r"] % 255 != 0) & (a["u"] % 255 != 0) & (a["y2"] % 255 != 0)  # no branch saturated
    assert inside.float().mean() > 0.5
    assert (a["y2"].int() - 5 - (tr + a["u"].int() - 20))[inside].abs().max() <= 1
    for k in ("a", "g", "big", "r", "u", "y", "y2", "y3"):  # not degenerate: codes spread over the range
        assert len(torch.unique(a[k])) > 8, k
    assert (a["a"] < 40).any() and (a["a"] > 40).any()  # both sides of the leaky requantization are used


def _hostile(**fields):
    base = dict(inputs=("v0",), output="v1", weight="w", bias="b", multiplier="m", shift="s")
    base.update(fields)
    return base


@pytest.mark.parametrize("kind, fields, msg", [
    ("conv2d", dict(activation="leaky_relu"), "needs the buffers multiplier_neg"),
    ("conv2d", dict(multiplier_neg="m", shift_neg="s"), "only read by activation 'leaky_relu'"),
    ("conv2d", dict(activation="leaky", multiplier_neg="m", shift_neg="s"), "activation must be one of"),
    ("conv_transpose2d", dict(stride=[0, 2]), "stride must be in"),
    ("conv_transpose2d", dict(padding_end=[-1, 0]), "padding_end must be in"),
    ("conv_transpose2d", dict(activation="leaky_relu"), "activation must be one of"),
    ("resize_bicubic", dict(scale=0, multiplier=1, shift=0), "scale must be in"),
    ("resize_bicubic", dict(scale=2, multiplier=1, shift=0, weight_bits=16, mid_shift=2), "int32 intermediates"),
    ("resize_bicubic", dict(scale=2, multiplier=-5, shift=0), "output M0 must be in"),
])
def test_hostile_op_dicts_are_one_line_errors(kind, fields, msg):
    d = {"op": kind, **(_hostile(**fields) if kind != "resize_bicubic" else dict(inputs=["v0"], output="v1",
                                                                                   **fields))}
    with pytest.raises(ModelError, match=msg) as err:
        ir.op_from_dict(d)
    assert "\n" not in str(err.value)


def _forge_op(m, index, **fields):
    m["root"]["attrs"]["ops"][index]["d"].update(fields)


@pytest.mark.parametrize("index, fields, msg", [
    (4, dict(padding=[40, 40], padding_end=[40, 40]), "remove the whole"),
    (4, dict(weight="c1w"), "does not fit 16 input channels"),
    (0, dict(multiplier_neg="tm"), "multiplier_neg and shift_neg must have the multiplier's shape"),
    (0, dict(shift_neg="c1w"), "must have dtype int32"),
    (5, dict(scale=100), "scale must be in"),
    (5, dict(mid_shift=30), "mid_shift <= weight_bits"),
    (1, dict(groups=3), "does not fit"),
])
def test_forged_idn_ops_in_a_file_are_refused_on_load(tmp_path, index, fields, msg):
    path = tmp_path / "m.cnz"
    pack.save(_program(), path)
    rewrite_manifest(path, lambda m: _forge_op(m, index, **fields))
    with pytest.raises(PackError, match=msg) as err:
        pack.load(path)
    assert "\n" not in str(err.value)


def test_exporters_refuse_the_idn_ops_with_one_line(tmp_path):
    tables = ir.load_backends()
    op = ir.ResizeBicubic(inputs=("v0",), output="v1", scale=2, multiplier=1 << 30, shift=-21)
    for backend in ("onnx_qlinear", "onnx_exact"):
        with pytest.raises(ModelError, match="does not support"):
            tables[backend].get(op)(None, 0, op)


# ------------------------------------------------------------------------------------------------ tiny IDN


@pytest.fixture(scope="module")
def tiny_idn():
    from compactnn.models.idn import IDN
    from compactnn.sr.int8 import convert_idn

    torch.manual_seed(0)
    model = IDN(scale=3, blocks=1).eval()
    with torch.no_grad():
        model.upsample.weight.mul_(4.0)  # a residual of visible size (torch's default init makes it tiny)
    cal = torch.rand(8, 1, 12, 12)
    return model, convert_idn(model, cal, nominal=(12, 12)), cal


def test_tiny_idn_unfused_output_layer_runs_bit_exactly(tiny_idn):
    from compactnn.sr.int8 import convert_idn

    model, q, tiny_cal = tiny_idn
    q2 = convert_idn(model, tiny_cal, nominal=(12, 12), fused=False)
    assert [op.kind for op in q2.core.ops][-3:] == ["conv_transpose2d", "resize_bicubic", "add"]
    codes = q2.program(10, 13).quantize_input(torch.rand(2, 1, 10, 13))
    assert torch.equal(q2.run_int(codes, "reference"), q2.run_int(codes, "fast"))
    x = tiny_cal[:3, :, 1:11, :]
    with torch.no_grad():  # both output layers approximate the float model; the fused one is not worse
        yf = model(x).clamp(0, 1)
        e1, e2 = (q(x) - yf).pow(2).mean(), (q2(x) - yf).pow(2).mean()
    assert e1 <= e2 * 1.05


def test_tiny_idn_converts_and_runs_bit_exactly(tiny_idn, tmp_path):
    model, q, tiny_cal = tiny_idn
    x = torch.rand(2, 1, 10, 13)
    codes = q.split(x)
    assert codes.shape == (2, 2, 10, 13) and q.planes == 2
    # the two planes hold 255·x to 1/510 of a code
    t = codes[:, :1].double() + (codes[:, 1:].double() - 128) / 255
    assert (t - 255 * x.double()).abs().max() <= 0.5 / 255 + 1e-9
    a, b = q.run_int(codes, "reference"), q.run_int(codes, "fast")
    assert a.shape == (2, 1, 30, 39) and torch.equal(a, b)
    x8 = torch.round(x * 255) / 255  # an uint8 image: the fine plane is flat
    assert (q.split(x8)[:, 1] == 128).all()
    x = tiny_cal[:3, :, 1:11, :]  # inside the calibrated ranges (a fresh random image may leave them)
    kinds = [op.kind for op in q.core.ops]
    assert {"conv2d", "concat", "add", "conv_transpose2d_resize_add"} <= set(kinds)
    assert sum(op.activation == "leaky_relu" for op in q.core.ops if op.kind == "conv2d") == 2 + 7 + 1
    with torch.no_grad():
        yf, yq = model(x), q(x)
    err = (yf.clamp(0, 1) - yq).abs()
    assert 0.02 < yf.std() and err.mean() < 2 / 255 and err.max() < 8 / 255
    path = tmp_path / "tiny.cnz"
    pack.save(q, path)
    back = pack.load(path)
    assert back.scale == 3 and torch.equal(back(x), yq)
    assert torch.allclose(back.residual(x) + model.bicubic(x), yq, atol=1e-5)


def test_tiny_idn_file_with_a_forged_program_is_one_line(tiny_idn, tmp_path):
    _, q, _ = tiny_idn
    path = tmp_path / "tiny.cnz"
    pack.save(q, path)

    def forge(m):
        ops = m["root"]["children"]["core"]["attrs"]["ops"]
        ops[-1]["d"].update(padding=[99, 99])  # the output layer
    rewrite_manifest(path, forge)
    with pytest.raises(PackError, match="remove the whole") as err:
        pack.load(path)
    assert "\n" not in str(err.value)


def test_convert_idn_refuses_bad_input(tiny_idn):
    from compactnn.sr.int8 import convert_idn

    model, _, _ = tiny_idn
    with pytest.raises(ModelError, match="needs a float IDN"):
        convert_idn(torch.nn.Linear(2, 2), torch.rand(1, 1, 8, 8))
    with pytest.raises(Exception, match="calibration must be"):
        convert_idn(model, torch.rand(1, 3, 8, 8))
