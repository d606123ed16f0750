"""Whole models through integer-only conversion with the more ops (lookup tables, mul, data movement): an SE block,
an attention-free token-mixing MLP, a hardswish net and an option-A ResNet shortcut convert whole; every engine
agrees bit for bit (reference, torch, native C, ONNX exact in ONNX Runtime); hostile files and forged ops are
refused with one line before any geometry reaches C."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compactnn import pack
from compactnn.errors import CompactnnError, ModelError, PackError
from compactnn.quantize.intonly import ir, native
from compactnn.quantize.intonly.calibrate import calibrate
from compactnn.quantize.intonly.convert import convert
from compactnn.quantize.intonly.engine import FastEngine
from compactnn.quantize.intonly.model import IntegerModel
from compactnn.quantize.intonly.native.program import NativeProgram
from compactnn.quantize.intonly.qat import prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnz_forge import rewrite_manifest  # noqa: E402


class SE(nn.Module):
    """Conv + SiLU, a squeeze-excitation gate (sigmoid) multiplying the features, pool, linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.head = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = F.silu(self.conv(x))
        g = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.head(F.max_pool2d(x * g, 2).flatten(1))


class Mixer(nn.Module):
    """Attention-free token mixing: 8 tokens of 8 features, a token MLP on the transpose, a channel MLP (GELU),
    slices of tokens and channels, a residual."""

    def __init__(self):
        super().__init__()
        self.tok, self.ch = nn.Linear(8, 8), nn.Linear(8, 16)
        self.act = nn.GELU()
        self.head = nn.Linear(12 * 4, 10)

    def forward(self, x):
        x = x.view(x.size(0), 8, 8)
        x = x + self.tok(x.transpose(1, 2)).transpose(1, 2)
        x = self.act(self.ch(x))
        x = x[:, ::2, 2:14]  # every other token, 12 channels
        x = x.permute(0, 2, 1).reshape(x.size(0), -1)
        return self.head(x)


class HardSwishNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(1, 8, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
        self.act = nn.Hardswish()
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.c1(x))
        a, b = x.chunk(2, dim=1)
        x = torch.tanh(self.c2(a)) * 0.5 + F.hardsigmoid(self.c2(torch.narrow(b, 1, 0, 4)))
        return self.fc(F.leaky_relu(x, 0.1).mean((2, 3)))


class OptionA(nn.Module):
    """A ResNet option-A shortcut: strided slicing and channel zero padding."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 8, 3, 2, 1)
        self.fc = nn.Linear(8 * 16, 10)

    def forward(self, x):
        x = F.relu(self.c1(x))
        y = self.c2(x) + F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2), "constant", 0)
        return self.fc(F.relu(y).flatten(1))


def _int_model(model: nn.Module, seed: int = 0) -> tuple[IntegerModel, torch.Tensor]:
    torch.manual_seed(seed)
    for p in model.parameters():
        nn.init.normal_(p, std=0.4)
    x = torch.rand(96, 1, 8, 8) * 2
    model.eval()
    gm = prepare(model)
    calibrate(gm, [x[:64]])
    return convert(gm, (1, 8, 8)), x


def _agree(im: IntegerModel, x: torch.Tensor) -> None:
    q = im.quantize_input(x)
    want = im.run_int(q, "reference")
    assert torch.equal(FastEngine(im, native="off").run(q), want)
    lib = native.load("auto")
    if lib is not None:
        prog = NativeProgram.build(im, lib)
        assert prog is not None and torch.equal(prog.run(q), want)
        assert torch.equal(prog.run_float(x.contiguous(), im.input["scale"], im.input["zero_point"],
                                          im.output["scale"], im.output["zero_point"]), im.dequantize_output(want))
    ort = pytest.importorskip("onnxruntime")
    from compactnn.quantize.intonly.export import build_onnx

    sess = ort.InferenceSession(build_onnx(im).SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(sess.run(None, {"input": x.numpy()})[0], im.dequantize_output(want).numpy())
    sess = ort.InferenceSession(build_onnx(im, mode="qlinear").SerializeToString(),
                                providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]  # ORT's own float roundings: close, not bit-exact
    assert np.abs(got - im.dequantize_output(want).numpy()).max() <= 8 * im.output["scale"] + 1e-6


@pytest.mark.parametrize("cls, kinds", [
    (SE, {"lut", "mul", "global_avg_pool"}),
    (Mixer, {"reshape", "permute", "slice", "lut", "add"}),
    (HardSwishNet, {"lut", "slice", "global_avg_pool"}),
    (OptionA, {"slice", "pad", "add"}),
])
def test_models_convert_whole_and_every_engine_agrees(cls, kinds):
    float_model = cls()
    im, x = _int_model(float_model)
    assert kinds <= {op.kind for op in im.ops}
    _agree(im, x)
    with torch.no_grad():
        ref = float_model(x)
    err = (im(x) - ref).abs().mean() / ref.abs().mean()
    assert err < 0.15, f"integer model far from the float one: relative error {err:.3f}"


def test_se_gate_multiplies_with_broadcast():
    im, _ = _int_model(SE())
    shapes = im.validate()
    (mul,) = [op for op in im.ops if isinstance(op, ir.Mul)]
    assert sorted(shapes[v] for v in mul.inputs) == [(8, 1, 1), (8, 8, 8)]


def test_packed_model_round_trips(tmp_path):
    im, x = _int_model(Mixer())
    pack.save(im, tmp_path / "m.cnz")
    back = pack.load(tmp_path / "m.cnz")
    assert back.ops == im.ops and torch.equal(back(x), im(x))


# --------------------------------------------------------------------------------------------------- refusals


class Softmaxed(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return torch.softmax(self.fc(x.flatten(1)), 1)


class FoldsBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x.reshape(-1, 8)).reshape(x.size(0), -1)


def test_integer_only_refuses_an_unsupported_op_with_its_source_line():
    with pytest.raises(ModelError, match=r"'softmax'.*\(at test_intonly_more_convert.py:\d+: return torch.softmax") \
            as err:
        prepare(Softmaxed())
    assert "\n" not in str(err.value)


def test_a_view_that_folds_the_batch_is_refused():
    gm = prepare(FoldsBatch())
    calibrate(gm, [torch.rand(8, 1, 8, 8)])
    with pytest.raises(ModelError, match="changes the batch dimension") as err:
        convert(gm, (1, 8, 8))
    assert "\n" not in str(err.value)


def test_mixed_mode_now_keeps_gates_and_slices_integer():
    import compactnn as cn
    from compactnn.quantize import IntegerOnly

    data = cn.data.load("digits")
    small = dataclasses.replace(data, train=data.train.subset(128), test=data.test.subset(64))
    out = cn.compress(SE(), IntegerOnly(mode="calibrate", mixed=True, calibration_batches=1), data=small)
    assert type(out).__name__ == "IntegerModel"  # converts whole: no float part left


#: (op kind, forged fields, what the one-line error says)
FORGED = [
    ("slice", dict(stop=4000), "beyond the size"),
    ("slice", dict(axis=5), "beyond the input"),
    ("slice", dict(start=-3), "start must be in"),
    ("permute", dict(dims=[0, 1, 1]), "permutation"),
    ("permute", dict(dims=[0, 1, 2, 3, 4]), "do not fit"),
    ("reshape", dict(shape=[1000, 1000]), "cannot reshape"),
    ("reshape", dict(shape=[-1]), "shape entry"),
    ("lut", dict(table="w0"), "dtype uint8"),
    ("lut", dict(table="nope"), "names buffer"),
    ("mul", dict(shift=99), "shift must be in"),
    ("mul", dict(inputs=["v1", "nope"]), "reads value .nope."),
]


def _forge_target(im: IntegerModel, kind: str) -> int:
    return next(i for i, op in enumerate(im.ops) if op.kind == kind)


@pytest.mark.parametrize("kind, fields, msg", FORGED)
def test_hostile_cnz_op_dict_is_one_line_pack_error(tmp_path, kind, fields, msg):
    im, _ = _int_model(Mixer() if kind in ("slice", "permute", "reshape") else SE())
    i = _forge_target(im, kind)
    path = tmp_path / "m.cnz"
    pack.save(im, path)
    rewrite_manifest(path, lambda m: m["root"]["attrs"]["ops"][i]["d"].update(fields))
    with pytest.raises(PackError, match=msg) as err:
        pack.load(path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind, fields, msg", FORGED[:7])
def test_native_entry_point_rechecks_forged_ops(kind, fields, msg):
    lib = native.load("auto")
    if lib is None:
        pytest.skip(native.status("auto"))
    im, _ = _int_model(Mixer())
    op = im.ops[_forge_target(im, kind)]
    for k, v in fields.items():  # bypass the validating constructor, as a bug or a hostile caller could
        object.__setattr__(op, k, tuple(v) if isinstance(v, list) else v)
    with pytest.raises(ModelError, match=msg) as err:
        NativeProgram.build(im, lib)
    assert "\n" not in str(err.value)


HOSTILE = [0, 1, 2, 3, -1, 7, 8, 16, 4000, 2**31, 1.5, True, None, "v1", "t5", [], [0], [0, 1], [0, 2, 1],
           [1, 0, 2], [8, 8], [64], [4, 16], [2, 2, 16], [0, 1, 2, 3]]


def test_mutated_programs_are_refused_or_run_exactly():
    """400 random mutations of the mixer's and the SE net's ops: refused with one line at build, or the native
    kernels and the torch engine equal the reference exactly (a crash would end the test process)."""
    lib = native.load("auto")
    rng = np.random.default_rng(11)
    outcomes = {"refused": 0, "ran": 0}
    for base in (_int_model(Mixer())[0], _int_model(SE())[0]):
        tensors = dict(base.named_buffers())
        q = torch.from_numpy(rng.integers(0, 256, (2, 1, 8, 8), dtype=np.uint8))
        for case in range(200):
            ops = [op.to_dict() for op in base.ops]
            i = int(rng.integers(len(ops)))
            keys = [k for k in ops[i] if k not in ("op", "name")]
            key = keys[int(rng.integers(len(keys)))]
            ops[i][key] = HOSTILE[int(rng.integers(len(HOSTILE)))]
            try:
                im = IntegerModel(base.input_shape, base.input, base.output, base.values, ops, tensors)
            except CompactnnError as err:
                assert "\n" not in str(err), (case, key)
                outcomes["refused"] += 1
                continue
            outcomes["ran"] += 1
            want = im.run_int(q, "reference")
            prog = None if lib is None else NativeProgram.build(im, lib)
            if prog is not None:
                assert torch.equal(prog.run(q), want), (case, i, key, ops[i][key])
            assert torch.equal(FastEngine(im, native="off").run(q), want)
    assert outcomes["refused"] > 150 and outcomes["ran"] > 10, outcomes
