"""The more integer ops (permute, reshape, slice, pad, lut, mul): exact results against independent NumPy/float64
formulas, every backend bit-identical (reference, torch engine, native C, ONNX exact in ONNX Runtime), and the
one-line errors of bad fields and shapes that do not chain."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn.errors import ModelError
from compactnn.quantize.intonly import ir, native
from compactnn.quantize.intonly.fixedpoint import quantize_multiplier
from compactnn.quantize.intonly.model import IntegerModel
from compactnn.quantize.intonly.native.program import NativeProgram


def _vals(names, scale=0.05, zp=7):
    return {v: {"scale": scale, "zero_point": zp, "dtype": "uint8"} for v in names}


def program(input_shape, ops, tensors=None, values=None, out=None) -> IntegerModel:
    names = ["v0"] + [op.output for op in ops]
    values = {**_vals(names), **(values or {})}
    out = out or ops[-1].output
    return IntegerModel(input_shape, {"value": "v0", **{k: values["v0"][k] for k in ("scale", "zero_point")}},
                        {"value": out, **{k: values[out][k] for k in ("scale", "zero_point")}}, values, ops,
                        tensors or {})


def all_backends(im: IntegerModel, q: torch.Tensor) -> torch.Tensor:
    """The reference result after checking the torch engine, the native program and the exact ONNX export equal it
    bit for bit."""
    want = im.run_int(q, "reference")
    old = native.mode()
    from compactnn.quantize.intonly.engine import FastEngine

    torch_engine = FastEngine(im, native="off")
    assert torch.equal(torch_engine.run(q), want), "torch engine"
    lib = native.load("auto")
    if lib is not None:
        prog = NativeProgram.build(im, lib)
        assert prog is not None, "the native program should cover these ops"
        assert torch.equal(prog.run(q), want), "native"
        vals = prog.run(q, all_values=True)
        ref_vals = im.run_values(q, "reference")
        for k in ref_vals:
            assert torch.equal(vals[k], ref_vals[k]), f"native value {k}"
    assert old == native.mode()
    ort = pytest.importorskip("onnxruntime")
    from compactnn.quantize.intonly.export import build_onnx

    x = im.dequantize_output  # noqa: F841 (the float path: quantize, program, dequantize)
    xf = ((q.double() - im.input["zero_point"]) * im.input["scale"]).float()
    sess = ort.InferenceSession(build_onnx(im, mode="exact").SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": xf.numpy()})[0]
    assert np.array_equal(got, im(xf).detach().numpy()), "onnx exact"
    assert torch.equal(im.quantize_input(xf), q)
    return want


def codes(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8))


# --------------------------------------------------------------------------------------------------- data movement


def test_slice_matches_numpy_slicing_on_every_axis():
    q = codes((3, 6, 9, 10))
    ops = [ir.Slice(inputs=("v0",), output="v1", axis=1, start=1, stop=5),  # channels 1..4
           ir.Slice(inputs=("v1",), output="v2", axis=2, start=0, stop=9, step=2),
           ir.Slice(inputs=("v2",), output="v3", axis=3, start=3, stop=10, step=3)]
    got = all_backends(program((6, 9, 10), ops), q)
    assert np.array_equal(got.numpy(), q.numpy()[:, 1:5, 0:9:2, 3:10:3])


def test_permute_reshape_pad_match_numpy():
    q = codes((2, 4, 6, 6), seed=1)
    ops = [ir.Reshape(inputs=("v0",), output="v1", shape=(4, 36)),
           ir.Permute(inputs=("v1",), output="v2", dims=(0, 2, 1)),  # (36, 4): tokens x channels
           ir.Slice(inputs=("v2",), output="v3", axis=2, start=1, stop=4),
           ir.Reshape(inputs=("v3",), output="v4", shape=(3, 6, 6)),
           ir.Permute(inputs=("v4",), output="v5", dims=(0, 3, 1, 2)),
           ir.Pad(inputs=("v5",), output="v6", axis=1, before=2, after=1)]
    got = all_backends(program((4, 6, 6), ops), q).numpy()
    x = q.numpy().reshape(2, 4, 36).transpose(0, 2, 1)[:, :, 1:4].reshape(2, 3, 6, 6).transpose(0, 3, 1, 2)
    want = np.pad(x, ((0, 0), (2, 1), (0, 0), (0, 0)), constant_values=7)  # zero point 7 = real 0
    assert np.array_equal(got, want)


def test_token_linear_runs_row_by_row():
    rng = np.random.default_rng(3)
    t = {"w": torch.tensor(rng.integers(-127, 128, (5, 8)), dtype=torch.int8),
         "b": torch.tensor(rng.integers(-500, 500, 5), dtype=torch.int32),
         "m": torch.tensor([1 << 30], dtype=torch.int32), "s": torch.tensor([-9], dtype=torch.int32)}
    ops = [ir.Reshape(inputs=("v0",), output="v1", shape=(8, 8)),
           ir.Linear(inputs=("v1",), output="v2", weight="w", bias="b", multiplier="m", shift="s"),
           ir.Permute(inputs=("v2",), output="v3", dims=(0, 2, 1))]
    q = codes((3, 1, 8, 8), seed=2)
    got = all_backends(program((1, 8, 8), ops, t), q).numpy()
    acc = (q.numpy().reshape(3, 8, 8).astype(np.int64) - 7) @ t["w"].numpy().T.astype(np.int64) + t["b"].numpy()
    from compactnn.quantize.intonly.fixedpoint import requantize

    assert np.array_equal(got, requantize(acc, 1 << 30, -9, 7, 0, 255).transpose(0, 2, 1))


@pytest.mark.parametrize("op, shape, msg", [
    (ir.Slice(inputs=("v0",), output="v1", axis=4, start=0, stop=1), (3, 4, 4), "beyond the input"),
    (ir.Slice(inputs=("v0",), output="v1", axis=1, start=0, stop=9), (3, 4, 4), "beyond the size 3"),
    (ir.Permute(inputs=("v0",), output="v1", dims=(0, 2, 1)), (3, 4, 4), "do not fit"),
    (ir.Reshape(inputs=("v0",), output="v1", shape=(5, 5)), (3, 4, 4), "cannot reshape"),
    (ir.Pad(inputs=("v0",), output="v1", axis=5, before=1, after=1), (3, 4, 4), "beyond the input"),
])
def test_shapes_that_do_not_chain_are_one_line_errors(op, shape, msg):
    with pytest.raises(ModelError, match=msg) as err:
        program(shape, [op])
    assert "\n" not in str(err.value)


def test_data_movement_must_keep_qparams():
    op = ir.Slice(inputs=("v0",), output="v1", axis=1, start=0, stop=2)
    with pytest.raises(ModelError, match="must keep its input's scale"):
        program((3, 4, 4), [op], values={"v1": {"scale": 0.1, "zero_point": 7, "dtype": "uint8"}})


@pytest.mark.parametrize("d, msg", [
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": 0, "start": 0, "stop": 1}, "axis must be in"),
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": 1, "start": 3, "stop": 3}, "start < stop"),
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": 1, "start": -1, "stop": 3}, "start must be in"),
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": 1, "start": 0, "stop": 3, "step": 0}, "step must be in"),
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": 1, "start": 0, "stop": 2**40}, "stop must be in"),
    ({"op": "slice", "inputs": ["a"], "output": "b", "axis": "1", "start": 0, "stop": 3}, "integer"),
    ({"op": "permute", "inputs": ["a"], "output": "b", "dims": [1, 0]}, "keeps the batch first"),
    ({"op": "permute", "inputs": ["a"], "output": "b", "dims": [0, 1, 1]}, "permutation"),
    ({"op": "permute", "inputs": ["a"], "output": "b", "dims": "012"}, "list of"),
    ({"op": "reshape", "inputs": ["a"], "output": "b", "shape": [0, 4]}, "shape entry must be in"),
    ({"op": "reshape", "inputs": ["a"], "output": "b", "shape": [-1, 4]}, "shape entry must be in"),
    ({"op": "reshape", "inputs": ["a"], "output": "b", "shape": []}, "list of 1 to"),
    ({"op": "pad", "inputs": ["a"], "output": "b", "axis": 1, "before": -1, "after": 0}, "before must be in"),
    ({"op": "pad", "inputs": ["a"], "output": "b", "axis": 1, "before": 0, "after": 2**40}, "after must be in"),
])
def test_bad_fields_are_one_line_errors(d, msg):
    with pytest.raises(ModelError, match=msg) as err:
        ir.op_from_dict(d)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------- lut and mul


def _round_half_away(v: float) -> int:
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


#: independent float64 definitions (the math module, not torch)
FUNCTIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + math.exp(-x)),
    "tanh": math.tanh,
    "hardswish": lambda x: x * min(max(x + 3.0, 0.0), 6.0) / 6.0,
    "hardsigmoid": lambda x: min(max(x + 3.0, 0.0), 6.0) / 6.0,
    "silu": lambda x: x / (1.0 + math.exp(-x)),
    "gelu": lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
    "leaky_relu": lambda x: x if x >= 0 else 0.2 * x,
}
FORMS = {  # the nn module and the function / method forms of each
    "sigmoid": (nn.Sigmoid(), torch.sigmoid, lambda x: x.sigmoid(), F.sigmoid),
    "tanh": (nn.Tanh(), torch.tanh, lambda x: x.tanh()),
    "hardswish": (nn.Hardswish(), F.hardswish),
    "hardsigmoid": (nn.Hardsigmoid(), F.hardsigmoid),
    "silu": (nn.SiLU(), F.silu),
    "gelu": (nn.GELU(), F.gelu),
    "leaky_relu": (nn.LeakyReLU(0.2), lambda x: F.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, negative_slope=0.2)),
}


class _Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = act if isinstance(act, nn.Module) else None
        self.fn = None if isinstance(act, nn.Module) else act

    def forward(self, x):
        y = self.fc(x)
        return self.act(y) if self.act is not None else self.fn(y)


def _convert(model, x):
    from compactnn.quantize.intonly.calibrate import calibrate
    from compactnn.quantize.intonly.convert import convert
    from compactnn.quantize.intonly.qat import prepare

    gm = prepare(model)
    calibrate(gm, [x])
    return convert(gm, tuple(x.shape[1:]))


@pytest.mark.parametrize("fname, form", [(f, i) for f in FORMS for i in range(len(FORMS[f]))])
def test_lut_table_is_the_float64_formula_on_all_256_codes(fname, form):
    torch.manual_seed(hash(fname) % 1000 + form)
    x = torch.randn(64, 6) * 3
    im = _convert(_Act(FORMS[fname][form]), x)
    (lut,) = [op for op in im.ops if isinstance(op, ir.Lut)]
    assert lut.function == fname
    si, zi = im.values[lut.inputs[0]]["scale"], im.values[lut.inputs[0]]["zero_point"]
    so, zo = im.values[lut.output]["scale"], im.values[lut.output]["zero_point"]
    want = [min(max(_round_half_away(FUNCTIONS[fname](si * (q - zi)) / so) + zo, 0), 255) for q in range(256)]
    table = getattr(im, lut.table).numpy()
    assert table.tolist() == want
    # every backend maps every code through it
    values = {"v0": {"scale": si, "zero_point": zi, "dtype": "uint8"}, "v1": {"scale": so, "zero_point": zo,
                                                                            "dtype": "uint8"}}
    one = program((256,), [ir.Lut(inputs=("v0",), output="v1", table="t", function=fname)],
                  {"t": torch.from_numpy(table.copy())}, values)
    got = all_backends(one, torch.arange(256, dtype=torch.uint8).reshape(1, 256))
    assert got[0].tolist() == want


def _mbqm(x: int, m0: int, shift: int) -> int:
    """TFLite MultiplyByQuantizedMultiplier in Python integers (independent of compactnn's fixedpoint)."""
    left, right = max(shift, 0), max(-shift, 0)
    x = min(max(x * (1 << left), -(2**31)), 2**31 - 1)
    ab = x * m0
    num = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    hi = num // (1 << 31) if num >= 0 else -((-num) // (1 << 31))  # C truncation
    if right == 0:
        return hi
    mask = (1 << right) - 1
    return (hi >> right) + ((hi & mask) > (mask >> 1) + (hi < 0))


@pytest.mark.parametrize("sa, za, sb, zb, so, zo, qmin", [
    (0.02, 128, 0.004, 0, 0.01, 100, 0),  # M < 1 (right shift)
    (0.1, 3, 0.2, 250, 0.001, 7, 0),  # M = 20: left shift, saturation
    (0.05, 0, 0.05, 0, 0.02, 40, 40),  # a fused ReLU clamp
])
def test_mul_equals_tflite_formula_on_all_65536_code_pairs(sa, za, sb, zb, so, zo, qmin):
    m0, shift = quantize_multiplier(sa * sb / so)
    values = {"v0": {"scale": sa, "zero_point": za, "dtype": "uint8"}, "a": {"scale": sa, "zero_point": za,
                                                                           "dtype": "uint8"},
              "b0": {"scale": sa, "zero_point": za, "dtype": "uint8"},
              "b": {"scale": sb, "zero_point": zb, "dtype": "uint8"},
              "y": {"scale": so, "zero_point": zo, "dtype": "uint8"}}
    ident = torch.arange(256, dtype=torch.uint8)  # relabels codes with b's scale and zero point
    ops = [ir.Slice(inputs=("v0",), output="a", axis=1, start=0, stop=1),
           ir.Slice(inputs=("v0",), output="b0", axis=1, start=1, stop=2),
           ir.Lut(inputs=("b0",), output="b", table="ident"),
           ir.Mul(inputs=("a", "b"), output="y", multiplier=m0, shift=shift, qmin=qmin,
                  activation="relu" if qmin else "none")]
    im = program((2, 256, 256), ops, {"ident": ident}, values)
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), indexing="ij")).astype(np.uint8)
    got = all_backends(im, torch.from_numpy(grid[None]))[0, 0].numpy()
    want = np.array([[min(max(_mbqm((a - za) * (b - zb), m0, shift) + zo, qmin), 255) for b in range(256)]
                     for a in range(256)])
    assert np.array_equal(got, want)


def test_mul_broadcasts_a_gate_over_features():
    rng = np.random.default_rng(5)
    m0, shift = quantize_multiplier(0.05 * 0.01 / 0.03)
    values = {"v0": {"scale": 0.05, "zero_point": 9, "dtype": "uint8"},
              "g": {"scale": 0.05, "zero_point": 9, "dtype": "uint8"},
              "s": {"scale": 0.01, "zero_point": 0, "dtype": "uint8"},
              "y": {"scale": 0.03, "zero_point": 60, "dtype": "uint8"}}
    table = torch.from_numpy(rng.integers(0, 256, 256, dtype=np.uint8))
    ops = [ir.GlobalAvgPool(inputs=("v0",), output="g"), ir.Lut(inputs=("g",), output="s", table="t"),
           ir.Mul(inputs=("v0", "s"), output="y", multiplier=m0, shift=shift)]
    q = codes((3, 5, 4, 7), seed=6)
    got = all_backends(program((5, 4, 7), ops, {"t": table}, values), q).numpy()
    x = q.numpy().astype(np.int64)
    gate = table.numpy()[(x.sum(axis=(2, 3), keepdims=True) + 14) // 28]
    want = np.vectorize(lambda a, b: min(max(_mbqm((a - 9) * b, m0, shift) + 60, 0), 255))(x, gate.astype(np.int64))
    assert np.array_equal(got, want)


def test_mul_shapes_must_broadcast():
    ops = [ir.Slice(inputs=("v0",), output="a", axis=2, start=0, stop=2),
           ir.Mul(inputs=("v0", "a"), output="y", multiplier=1 << 30, shift=0)]
    with pytest.raises(ModelError, match="do not broadcast") as err:
        program((3, 4, 4), ops)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("d, msg", [
    ({"op": "lut", "inputs": ["a"], "output": "b", "table": "t", "function": "exp"}, "function must be one of"),
    ({"op": "lut", "inputs": ["a"], "output": "b", "table": 5}, "buffer field 'table'"),
    ({"op": "mul", "inputs": ["a"], "output": "b", "multiplier": 1, "shift": 0}, "takes 2 input"),
    ({"op": "mul", "inputs": ["a", "b"], "output": "c", "multiplier": -1, "shift": 0}, "M0 must be in"),
    ({"op": "mul", "inputs": ["a", "b"], "output": "c", "multiplier": 1, "shift": 40}, "shift must be in"),
    ({"op": "mul", "inputs": ["a", "b"], "output": "c", "multiplier": 1, "shift": 0, "qmin": 300}, "qmin must be in"),
])
def test_bad_lut_and_mul_fields_are_one_line_errors(d, msg):
    with pytest.raises(ModelError, match=msg) as err:
        ir.op_from_dict(d)
    assert "\n" not in str(err.value)


def test_lut_table_buffer_must_be_256_uint8_codes():
    op = ir.Lut(inputs=("v0",), output="v1", table="t")
    for bad, msg in ((torch.zeros(255, dtype=torch.uint8), "shape"), (torch.zeros(256, dtype=torch.int8), "dtype")):
        with pytest.raises(ModelError, match=msg):
            program((4,), [op], {"t": bad})
