"""The typed integer IR: every op type has a kernel in every backend, the dict form round-trips (old files load), and
invalid programs are refused with one line on build, on load (forged ``.cnz`` files) and at the native entry point
(issue 17 item 1: geometry never reaches C unchecked)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compactnn import pack
from compactnn.errors import CompactnnError, ModelError, PackError
from compactnn.quantize.intonly import ir, native
from compactnn.quantize.intonly.model import IntegerModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cnz_forge import rewrite_manifest  # noqa: E402

BACKENDS = ("reference", "fast", "native", "onnx_qlinear", "onnx_exact")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", sorted(ir.OPS))
def test_every_op_type_has_a_kernel_in_every_backend(backend, kind):
    tables = ir.load_backends()
    assert set(BACKENDS) <= set(tables), f"backend(s) {set(BACKENDS) - set(tables)} registered no kernel table"
    assert ir.OPS[kind] in tables[backend].table, f"backend {backend!r} has no kernel for op {kind!r}"


def test_a_missing_kernel_is_one_clear_error():
    table = ir.Kernels("probe")
    try:
        assert table.missing() == sorted(ir.OPS, key=list(ir.OPS).index)
        with pytest.raises(ModelError, match="probe backend has no kernel for integer op 'flatten'"):
            table.get(ir.Flatten(inputs=("a",), output="b"))
    finally:
        del ir.BACKENDS["probe"]


EXAMPLES = [
    ir.Conv2d(inputs=("v0",), output="v1", weight="w", bias="b", multiplier="m", shift="s", stride=(2, 1),
              padding=(1, 0), dilation=(1, 2), groups=1, activation="relu", qmin=3, qmax=255, weight_scale="ws",
              name="conv"),
    ir.Linear(inputs=("v0",), output="v1", weight="w", bias="b", multiplier="m", shift="s"),
    ir.MaxPool2d(inputs=("v0",), output="v1", kernel=(3, 3), stride=(2, 2), padding=(1, 1)),
    ir.AvgPool2d(inputs=("v0",), output="v1", kernel=(2, 2), stride=(2, 2)),
    ir.GlobalAvgPool(inputs=("v0",), output="v1"),
    ir.Flatten(inputs=("v0",), output="v1"),
    ir.Add(inputs=("a", "b"), output="c", multiplier_a=1 << 30, shift_a=0, multiplier_b=1 << 30, shift_b=-1,
           multiplier_out=(1 << 31) - 1, shift_out=-19, left_shift=20, qmin=0, qmax=200),
    ir.Concat(inputs=("a", "b"), output="c", multipliers=(None, (1 << 30, -2))),
    ir.Permute(inputs=("v0",), output="v1", dims=(0, 2, 3, 1)),
    ir.Reshape(inputs=("v0",), output="v1", shape=(4, 9)),
    ir.Slice(inputs=("v0",), output="v1", axis=1, start=2, stop=9, step=3),
    ir.Pad(inputs=("v0",), output="v1", axis=1, before=2, after=2),
    ir.Lut(inputs=("v0",), output="v1", table="t", function="sigmoid"),
    ir.Mul(inputs=("a", "b"), output="c", multiplier=1 << 30, shift=-7, qmin=0, qmax=255),
    ir.Softmax(inputs=("v0",), output="v1", table="t", multiplier=65536 * 255),
    ir.ConvTranspose2d(inputs=("v0",), output="v1", weight="w", bias="b", multiplier="m", shift="s", stride=(2, 3),
                       padding=(1, 2), padding_end=(0, 1)),
    ir.ResizeBicubic(inputs=("v0",), output="v1", scale=3, multiplier=1 << 30, shift=-21),
    ir.ConvTransposeResizeAdd(inputs=("f", "x"), output="y", weight="w", bias="b", multiplier="m", shift="s",
                              stride=(2, 2), padding=(7, 7), padding_end=(8, 8), scale=2, resize_multiplier=1 << 30,
                              resize_shift=-13, frac_bits=8),
]


def test_examples_cover_every_op_type():
    assert {type(op) for op in EXAMPLES} == set(ir.OPS.values())


@pytest.mark.parametrize("op", EXAMPLES, ids=lambda op: op.kind)
def test_dict_form_round_trips_through_json(op):
    import json

    d = json.loads(json.dumps(op.to_dict()))
    assert d["op"] == op.kind and ir.op_from_dict(d) == op


def test_legacy_dict_forms_load():
    """The dicts main wrote before the typed IR (lists, no name on pools, no weight_scale) are accepted."""
    old = [{"op": "conv2d", "inputs": ["v0"], "output": "v1", "weight": "w0", "bias": "b0", "multiplier": "m0",
            "shift": "s0", "activation": "none", "qmin": 0, "qmax": 255, "name": "conv1", "stride": [1, 1],
            "padding": [2, 2], "dilation": [1, 1], "groups": 1},
           {"op": "max_pool2d", "inputs": ["v1"], "output": "v2", "kernel": [2, 2], "stride": [2, 2],
            "padding": [0, 0]},
           {"op": "concat", "inputs": ["v1", "v2"], "output": "v3", "axis": 1, "multipliers": [[1 << 30, 0], None],
            "left_shift": 20, "qmin": 0, "qmax": 255, "name": "cat_0"}]
    old.append({**old[0], "output": "v4", "weight_range": "r0"})  # a metadata field of earlier builds: dropped
    ops = [ir.op_from_dict(d) for d in old]
    assert ops[3] == dataclasses.replace(ops[0], output="v4")
    assert ops[0].stride == (1, 1) and ops[0].weight_scale is None and ops[1].name == ""
    assert ops[2].multipliers == ((1 << 30, 0), None)


@pytest.mark.parametrize("d, msg", [
    ({"op": "lstm", "inputs": ["a"], "output": "b"}, "unknown integer op 'lstm'"),
    ({"op": "flatten", "inputs": ["a"], "output": "b", "colour": 1}, "unknown field"),
    ({"op": "flatten", "inputs": "a", "output": "b"}, "inputs must be a list"),
    ({"op": "flatten", "inputs": ["a", "b"], "output": "c"}, "takes 1 input"),
    ({"op": "flatten", "inputs": ["a"]}, "output"),
    ({"op": "avg_pool2d", "inputs": ["a"], "output": "b", "kernel": [0, 0], "stride": [1, 1]}, "kernel must be in"),
    ({"op": "max_pool2d", "inputs": ["a"], "output": "b", "kernel": [2, 2], "stride": [2, 2], "padding": [2, 0]},
     "at most half the kernel"),
    ({"op": "max_pool2d", "inputs": ["a"], "output": "b", "kernel": [2.5, 2], "stride": [2, 2]}, "integer"),
    ({"op": "max_pool2d", "inputs": ["a"], "output": "b", "kernel": [True, 2], "stride": [2, 2]}, "integer"),
    ({"op": "add", "inputs": ["a", "b"], "output": "c", "multiplier_a": -1, "shift_a": 0, "multiplier_b": 1,
      "shift_b": 0, "multiplier_out": 1, "shift_out": 0}, "M0 must be in"),
    ({"op": "add", "inputs": ["a", "b"], "output": "c", "multiplier_a": 1, "shift_a": 99, "multiplier_b": 1,
      "shift_b": 0, "multiplier_out": 1, "shift_out": 0}, "shift must be in"),
    ({"op": "add", "inputs": ["a", "b"], "output": "c", "multiplier_a": 1, "shift_a": 0, "multiplier_b": 1,
      "shift_b": 0, "multiplier_out": 1, "shift_out": 0, "left_shift": 40}, "left_shift"),
    ({"op": "concat", "inputs": ["a", "b"], "output": "c", "multipliers": [None]}, "one multiplier"),
    ({"op": "concat", "inputs": ["a"], "output": "c", "multipliers": [None], "axis": 2}, "axis"),
    ({"op": "linear", "inputs": ["a"], "output": "b", "weight": "w", "bias": "b", "multiplier": "m", "shift": "s",
      "qmin": 9, "qmax": 3}, "qmin <= qmax"),
    ({"op": "linear", "inputs": ["a"], "output": "b", "weight": "w", "bias": "b", "multiplier": "m", "shift": "s",
      "activation": "gelu"}, "activation"),
])
def test_bad_fields_are_one_line_errors(d, msg):
    with pytest.raises(ModelError, match=msg) as err:
        ir.op_from_dict(d)
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------- programs


def build(h=12, w=12, rng=None) -> IntegerModel:
    """A small valid program: conv 3x3 (pad 1) -> max pool 4 -> avg pool -> flatten -> linear -> linear."""
    rng = np.random.default_rng(0) if rng is None else rng
    values = {f"v{i}": {"scale": 0.05 * (i + 1), "zero_point": 10 * i, "dtype": "uint8"} for i in range(7)}
    for a, b in (("v2", "v1"), ("v3", "v1"), ("v4", "v1")):  # pools and flatten keep their input's scale
        values[a] = dict(values[b])
    hp, wp = h // 4, w // 4
    k = (max(1, hp // 5), max(1, wp // 5))
    f = 4 * (hp // k[0]) * (wp // k[1])

    def weighted(i, o, shape):
        return {f"w{i}": torch.tensor(rng.integers(-127, 128, shape), dtype=torch.int8),
                f"b{i}": torch.tensor(rng.integers(-999, 999, o), dtype=torch.int32),
                f"m{i}": torch.full((o,), 1 << 30, dtype=torch.int32),
                f"s{i}": torch.full((o,), -12, dtype=torch.int32),
                f"ws{i}": torch.full((o,), 0.01, dtype=torch.float64)}

    tensors = {**weighted(0, 4, (4, 1, 3, 3)), **weighted(1, 16, (16, f)), **weighted(2, 10, (10, 16))}

    def wfields(i):
        return dict(weight=f"w{i}", bias=f"b{i}", multiplier=f"m{i}", shift=f"s{i}", weight_scale=f"ws{i}")

    ops = [ir.Conv2d(inputs=("v0",), output="v1", padding=(1, 1), name="conv", **wfields(0)),
           ir.MaxPool2d(inputs=("v1",), output="v2", kernel=(4, 4), stride=(4, 4), name="pool"),
           ir.AvgPool2d(inputs=("v2",), output="v3", kernel=k, stride=k, name="avg"),
           ir.Flatten(inputs=("v3",), output="v4"),
           ir.Linear(inputs=("v4",), output="v5", name="fc1", **wfields(1)),
           ir.Linear(inputs=("v5",), output="v6", name="fc2", **wfields(2))]
    return IntegerModel((1, h, w), {"value": "v0", **values["v0"]}, {"value": "v6", **values["v6"]}, values, ops,
                        tensors)


def test_the_test_program_is_valid_and_runs_bit_exact():
    im = build(200, 200)
    assert im.validate()["v4"] == (4 * 5 * 5,) and build().validate()["v4"] == (36,)
    q = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 1, 200, 200), dtype=np.uint8))
    assert torch.equal(im.run_int(q, "fast"), im.run_int(q, "reference"))


def _set_op(m: dict, index: int, **fields) -> None:
    """Edit op ``index`` in a decoded manifest (attrs are encoded: a dict is {"d": {...}})."""
    op = m["root"]["attrs"]["ops"][index]["d"]
    op.update(fields)


#: issue 17 item 1, one case each: (op index, forged fields, what the one-line error says)
CASES = {
    "avg_pool2d kernel [0,0]": (2, dict(kernel=[0, 0]), "kernel must be in"),
    "pool kernel [4000,1] stride [-1,1]": (1, dict(kernel=[4000, 1], stride=[-1, 1]), "stride must be in"),
    "pool kernel [4000,1] larger than input": (1, dict(kernel=[4000, 1]), "larger than the padded input"),
    "dilation [-500,-500]": (0, dict(dilation=[-500, -500]), "dilation must be in"),
    "conv padding [-99,0] on 1x200x200": (0, dict(padding=[-99, 0]), "padding must be in"),
    "stride 0": (0, dict(stride=[0, 1]), "stride must be in"),
    "groups 0": (0, dict(groups=0), "groups must be in"),
    "groups not dividing channels": (0, dict(groups=3), "does not fit"),
    "unknown value name": (4, dict(inputs=["nope"]), "reads value 'nope'"),
    "unknown buffer name": (0, dict(weight="nope"), "names buffer 'nope'"),
    "narrow linear weight": (4, dict(weight="w2"), "weight must have shape"),
    "shapes that do not chain": (5, dict(inputs=["v4"]), "weight must have shape"),
    "multiplier out of range": (4, dict(multiplier="b1"), "multipliers must be in"),
}


@pytest.mark.parametrize("case", CASES)
def test_forged_file_is_refused_on_load(tmp_path, case):
    index, fields, msg = CASES[case]
    path = tmp_path / "m.cnz"
    pack.save(build(200, 200), path)
    rewrite_manifest(path, lambda m: _set_op(m, index, **fields))
    with pytest.raises(PackError, match=msg) as err:
        pack.load(path)
    assert "\n" not in str(err.value) and "invalid" in str(err.value)


@pytest.mark.parametrize("forge, msg", [
    (lambda m: m["root"]["attrs"]["values"]["d"]["v3"]["d"].update(scale=float("nan")), "manifest holds NaN"),  # refused by the JSON check first
    (lambda m: m["root"]["attrs"]["values"]["d"]["v3"]["d"].update(scale=-1.0), "scales must be finite"),
    (lambda m: m["root"]["attrs"]["values"]["d"]["v3"]["d"].update(zero_point=300), r"zero_point must be in"),
    (lambda m: m["root"]["attrs"]["values"]["d"].pop("v5"), "no entry"),
    (lambda m: m["root"]["attrs"].update(ops=5), "ops must be a list"),
    (lambda m: m["root"]["attrs"].update(ops=[{"d": {"op": "lstm"}}]), "unknown integer op"),
    (lambda m: m["root"]["attrs"].update(input_shape={"t": [1, 1000000, 1000000]}), "more than"),
    (lambda m: m["root"]["attrs"]["output"]["d"].update(value="v9"), "output must name a value"),
])
def test_forged_values_and_shapes_are_refused_on_load(tmp_path, forge, msg):
    path = tmp_path / "m.cnz"
    pack.save(build(), path)
    rewrite_manifest(path, forge)
    with pytest.raises(PackError, match=msg) as err:
        pack.load(path)
    assert "\n" not in str(err.value)


def test_cli_on_a_forged_file_is_one_line_and_nonzero(tmp_path, capsys):
    from compactnn.cli import main

    path = tmp_path / "m.cnz"
    pack.save(build(200, 200), path)
    rewrite_manifest(path, lambda m: _set_op(m, 2, kernel=[0, 0]))
    with pytest.raises(SystemExit) as done:
        main(["export", str(path), str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code != 0 and len(err) == 1 and "kernel" in err[0]


def test_good_file_round_trips_with_stored_scales(tmp_path):
    im = build()
    path = tmp_path / "m.cnz"
    pack.save(im, path)
    loaded = pack.load(path)
    assert loaded.ops == im.ops and torch.equal(loaded.ws0, im.ws0)
    assert pack.read_manifest(path)["root"]["attrs"]["ops"][0]["d"]["weight_scale"] == "ws0"


def test_old_file_without_stored_scales_loads(tmp_path):
    """A file as main wrote it before the typed IR: op dicts without weight_scale nor pool names."""
    path = tmp_path / "m.cnz"
    pack.save(build(), path)

    def legacy(m):
        for op in m["root"]["attrs"]["ops"]:
            op["d"].pop("weight_scale", None)
            if op["d"]["op"] in ("max_pool2d", "avg_pool2d", "flatten"):
                op["d"].pop("name", None)

    rewrite_manifest(path, legacy)
    loaded = pack.load(path)
    assert loaded.ops[0].weight_scale is None and loaded.ops[1].name == ""
    q = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 1, 12, 12), dtype=np.uint8))
    assert torch.equal(loaded.run_int(q, "fast"), build().run_int(q, "reference"))


# --------------------------------------------------------------------------------------------------- native entry


def _native_lib():
    lib = native.load("auto")
    if lib is None:
        pytest.skip(f"no native kernels: {native.status('auto')}")
    return lib


def _forge_op(im: IntegerModel, index: int, **fields) -> None:
    """Alter an op object in place, bypassing its validating constructor (what a bug or a hostile caller could do)."""
    op = im.ops[index]
    for k, v in fields.items():
        object.__setattr__(op, k, v)


@pytest.mark.parametrize("case", CASES)
def test_native_entry_point_rechecks_the_program(case):
    from compactnn.quantize.intonly.native.program import NativeProgram

    lib = _native_lib()
    index, fields, msg = CASES[case]
    im = build(200, 200)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    _forge_op(im, index, **fields)
    with pytest.raises(ModelError, match=msg) as err:
        NativeProgram.build(im, lib)
    assert "\n" not in str(err.value)
    im.invalidate()
    with pytest.raises(ModelError, match=msg):  # the torch engine and the reference check it too
        im.fast_engine()
    with pytest.raises(CompactnnError, match=msg):
        im.run_int(torch.zeros((1, 1, 200, 200), dtype=torch.uint8), "reference")


def test_native_entry_point_refuses_a_narrow_linear_weight_buffer():
    """A linear weight narrower than its input: an error in every engine (the fast engine used to zero-pad it)."""
    from compactnn.quantize.intonly.native.program import NativeProgram

    lib = _native_lib()
    im = build()
    im.w1 = im.w1[:, :-1].contiguous()
    with pytest.raises(ModelError, match=r"weight must have shape \(O, 36\)"):
        NativeProgram.build(im, lib)
    im.invalidate()
    q = torch.zeros((1, 1, 12, 12), dtype=torch.uint8)
    for engine in ("fast", "reference"):
        with pytest.raises(ModelError, match="weight must have shape"):
            im.run_int(q, engine)


def test_build_refuses_an_invalid_program():
    im = build()
    ops = list(im.ops)
    ops[1] = dataclasses.replace(ops[1], kernel=(13, 13), stride=(1, 1))
    with pytest.raises(ModelError, match="larger than the padded input"):
        IntegerModel(im.input_shape, im.input, im.output, im.values, ops, dict(im.named_buffers()))
    with pytest.raises(ModelError, match="stride must be in"):
        dataclasses.replace(ops[0], stride=(0, 0))


# --------------------------------------------------------------------------------------------------- fuzzing

HOSTILE = [0, 1, 2, 3, -1, -500, 4000, 2**31, 2**63, -(2**31), 1.5, float("nan"), True, None, "x", "v1", "v3",
           "nope", [], [0], [0, 0], [1, 1], [2, 3], [-1, 1], [4000, 1], [1, 2, 3], [[1, 2], None], {"a": 1}]


def test_mutated_programs_are_refused_or_run_exactly():
    """1500 random mutations of one or two fields of a valid program (sizes, strides, names, multipliers, shapes): each is
    refused with one CompactnnError line at build, or runs and the native kernels equal the reference exactly. A
    crash (SIGFPE/SIGSEGV) would end the test process."""
    from compactnn.quantize.intonly.native.program import NativeProgram

    lib = native.load("auto")
    base = build()
    tensors = dict(base.named_buffers())
    rng = np.random.default_rng(17)
    q = torch.from_numpy(rng.integers(0, 256, (2, 1, 12, 12), dtype=np.uint8))
    outcomes = {"refused": 0, "ran": 0}
    for case in range(1500):
        ops = [op.to_dict() for op in base.ops]
        for _ in range(1 + int(rng.integers(2))):
            i = int(rng.integers(len(ops)))
            keys = [k for k in ops[i] if k != "op"] + ["kernel", "stride", "padding", "groups", "inputs"]
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
        assert torch.equal(im.fast_engine().run(q), want)
    assert outcomes["refused"] > 500 and outcomes["ran"] > 20, outcomes


def test_programs_with_mutated_buffers_are_refused_or_run_exactly():
    """500 programs whose buffers are swapped for tensors of random shape and dtype: refused with one line, or the
    native kernels equal the reference (the fan-in / int32 checks then decide between raising and running)."""
    from compactnn.quantize.intonly.native.program import NativeProgram

    lib = native.load("auto")
    base = build()
    ops = [op.to_dict() for op in base.ops]
    rng = np.random.default_rng(23)
    q = torch.from_numpy(rng.integers(0, 256, (2, 1, 12, 12), dtype=np.uint8))
    dtypes = [torch.int8, torch.int32, torch.uint8, torch.float32, torch.float64, torch.int64]
    ran = 0
    for case in range(500):
        tensors = dict(base.named_buffers())
        name = sorted(tensors)[int(rng.integers(len(tensors)))]
        old = tensors[name]
        shape = list(old.shape) if rng.random() < 0.5 else [int(v) for v in rng.integers(0, 40, rng.integers(1, 5))]
        if shape and rng.random() < 0.5:
            shape[int(rng.integers(len(shape)))] += int(rng.integers(-2, 3))
        dt = old.dtype if rng.random() < 0.5 else dtypes[int(rng.integers(len(dtypes)))]
        shape = [max(v, 0) for v in shape]
        tensors[name] = torch.from_numpy(rng.integers(-(2**31), 2**31, shape)).to(dt)
        try:
            im = IntegerModel(base.input_shape, base.input, base.output, base.values, ops, tensors)
        except CompactnnError as err:
            assert "\n" not in str(err), (case, name)
            continue
        ran += 1
        try:
            want = im.run_int(q, "reference")
        except CompactnnError:  # e.g. an int32 accumulator overflow: every engine raises it
            with pytest.raises(CompactnnError):
                im.fast_engine().run(q)
            continue
        prog = None if lib is None else NativeProgram.build(im, lib)  # None: a fan-in the C kernels do not take
        if prog is not None:
            assert torch.equal(prog.run(q), want), (case, name, shape, dt)
        assert torch.equal(im.fast_engine().run(q), want)
    assert ran > 20
