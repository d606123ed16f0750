"""The more integer ops (permute, reshape, slice, pad, lut, mul): exact results against independent NumPy/float64
formulas, every backend bit-identical (reference, torch engine, native C, ONNX exact in ONNX Runtime), and the
one-line errors of bad fields and shapes that do not chain."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
