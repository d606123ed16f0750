"""Native (C) kernels of the fast engine: bit-exact with the NumPy reference and the pure-torch path on random and
edge-case layers, integer-only, and the build cache (atomic, race-safe, clean fallback without a compiler)."""

import os
import re
import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from compactnn.errors import ModelError
from compactnn.quantize.intonly import native
from compactnn.quantize.intonly.engine import FastEngine
from compactnn.quantize.intonly.fixedpoint import INT32_MAX, INT32_MIN
from compactnn.quantize.intonly.model import IntegerModel, run_reference
from compactnn.quantize.intonly.qparams import add_multipliers

pytestmark = pytest.mark.skipif(native.load("auto") is None, reason=f"no native kernels: {native.status('auto')}")
# every kernel path this CPU can run, forced as COMPACTNN_NATIVE=avx2|vnni|generic would (issue 18), and torch
KINDS = ("auto", "generic", "off") + tuple(k for k in ("avx2", "vnni") if native.load(k) is not None)


class Builder:
    """A hand-made IntegerModel with random integer parameters (any M0/shift/bias, not only calibrated ones)."""

    def __init__(self, rng, shape, z_in):
        self.rng, self.tensors, self.ops = rng, {}, []
        self.shape = {"v0": tuple(shape)}
        self.values = {"v0": {"scale": 0.1, "zero_point": int(z_in), "dtype": "uint8"}}

    def _new(self, shape, z=None):
        name = f"v{len(self.values)}"
        z = int(self.rng.integers(0, 256)) if z is None else int(z)
        self.values[name] = {"scale": 0.1, "zero_point": z, "dtype": "uint8"}
        self.shape[name] = tuple(shape)
        return name

    def _requant(self, i, o, m0=None, shift=None, bias=None, k=1):
        rng = self.rng
        self.tensors[f"m{i}"] = torch.tensor(rng.integers(1 << 30, 1 << 31, o) if m0 is None else
                                             np.broadcast_to(m0, (o,)), dtype=torch.int32)
        self.tensors[f"s{i}"] = torch.tensor(rng.integers(-18, -4, o) if shift is None else
                                             np.broadcast_to(shift, (o,)), dtype=torch.int32)
        self.tensors[f"b{i}"] = torch.tensor(rng.integers(-(1 << 16), 1 << 16, o) if bias is None else
                                             np.broadcast_to(bias, (o,)), dtype=torch.int32)

    def conv(self, x, o, k, stride=1, padding=0, dilation=1, groups=1, qmin=0, qmax=255, z=None, **rq):
        c, h, w = self.shape[x]
        kh, kw = (k, k) if isinstance(k, int) else k
        i = len(self.ops)
        self.tensors[f"w{i}"] = torch.tensor(self.rng.integers(-127, 128, (o, c // groups, kh, kw)), dtype=torch.int8)
        self._requant(i, o, **rq)
        s, p, d = [(v, v) if isinstance(v, int) else v for v in (stride, padding, dilation)]
        ho, wo = (h + 2 * p[0] - d[0] * (kh - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (kw - 1) - 1) // s[1] + 1
        out = self._new((o, ho, wo), z)
        self.ops.append(dict(op="conv2d", inputs=[x], output=out, weight=f"w{i}", bias=f"b{i}", multiplier=f"m{i}",
                             shift=f"s{i}", stride=list(s), padding=list(p), dilation=list(d), groups=groups,
                             activation="none", qmin=qmin, qmax=qmax, name=f"conv{i}"))
        return out

    def linear(self, x, o, qmin=0, qmax=255, z=None, **rq):
        (f,) = self.shape[x]
        i = len(self.ops)
        self.tensors[f"w{i}"] = torch.tensor(self.rng.integers(-127, 128, (o, f)), dtype=torch.int8)
        self._requant(i, o, **rq)
        out = self._new((o,), z)
        self.ops.append(dict(op="linear", inputs=[x], output=out, weight=f"w{i}", bias=f"b{i}", multiplier=f"m{i}",
                             shift=f"s{i}", activation="none", qmin=qmin, qmax=qmax, name=f"fc{i}"))
        return out

    def op(self, kind, inputs, shape, z=None, **kw):
        out = self._new(shape, self.values[inputs[0]]["zero_point"] if z is None else z)
        self.ops.append(dict(op=kind, inputs=list(inputs), output=out, name=f"{kind}{len(self.ops)}", **kw))
        return out

    def add(self, a, b, qmin=0, qmax=255):
        m = add_multipliers(*self.rng.uniform(0.01, 0.2, 3))
        return self.op("add", [a, b], self.shape[a], z=int(self.rng.integers(0, 256)), multiplier_a=m["M0_1"],
                       shift_a=m["shift_1"], multiplier_b=m["M0_2"], shift_b=m["shift_2"], multiplier_out=m["M0_y"],
                       shift_out=m["shift_y"], left_shift=m["left_shift"], activation="none", qmin=qmin, qmax=qmax)

    def model(self, out):
        v0 = self.values["v0"]
        return IntegerModel(self.shape["v0"], {"value": "v0", **{k: v0[k] for k in ("scale", "zero_point")}},
                            {"value": out, "scale": 0.1, "zero_point": self.values[out]["zero_point"]}, self.values,
                            self.ops, self.tensors)


def _check(im, n=3, seed=0, lo=0, hi=256):
    q = torch.from_numpy(np.random.default_rng(seed).integers(lo, hi, (n, *im.input_shape), dtype=np.uint8))
    ref = {k: torch.from_numpy(v) for k, v in run_reference(im, q.numpy()).items()}
    for kind in KINDS:
        eng = FastEngine(im, kind)
        assert (eng.native is None) == (kind == "off")
        got = eng.run(q, all_values=True)
        for name in ref:
            assert torch.equal(got[name], ref[name]), (kind, name)
        assert torch.equal(eng.run(q), ref[im.output["value"]]), kind
        assert torch.equal(eng.run(q[:1]), ref[im.output["value"]][:1]), kind


@pytest.mark.parametrize("c,o,k,stride,padding,dilation,groups", [
    (1, 16, 3, 1, 1, 1, 1), (1, 20, 5, 1, 0, 1, 1), (3, 33, 3, 2, 1, 1, 1), (16, 70, (3, 2), (2, 1), (1, 2), 1, 1),
    (5, 7, 3, 1, 2, 2, 1), (8, 8, 3, 1, 1, 1, 8), (8, 12, 3, 2, 2, 2, 4), (6, 4, 1, 1, 0, 1, 1)])
def test_conv_random_layers(c, o, k, stride, padding, dilation, groups):
    rng = np.random.default_rng(c * 100 + o)
    b = Builder(rng, (c, 9, 11), z_in=int(rng.integers(1, 255)))  # padding uses a non-zero zero point
    y = b.conv("v0", o, k, stride, padding, dilation, groups)
    y = b.conv(y, 9, 3, padding=1, qmin=b.values[y]["zero_point"])  # fused ReLU clamp
    _check(b.model(y), n=5, seed=o)


def test_linear_pool_flatten_add_concat_program():
    rng = np.random.default_rng(3)
    b = Builder(rng, (3, 12, 12), z_in=77)
    c1 = b.conv("v0", 18, 3, padding=1)
    c2 = b.conv(c1, 18, 3, padding=1)
    a = b.add(c1, c2, qmin=40)
    mp = b.op("max_pool2d", [a], (18, 6, 6), kernel=[3, 3], stride=[2, 2], padding=[1, 1])
    ap = b.op("avg_pool2d", [mp], (18, 5, 5), kernel=[2, 2], stride=[1, 1])
    b.op("max_pool2d", [a], (18, 5, 11), kernel=[3, 2], stride=[2, 1], padding=[0, 0])  # the unpadded kernel
    c3 = b.conv(ap, 5, 1)
    cat = b.op("concat", [ap, c3], (23, 5, 5), z=100, axis=1, left_shift=20, qmin=0, qmax=255,
               multipliers=[[1518500250, -1], [1 << 30, 0]])
    g = b.op("global_avg_pool", [cat], (23, 1, 1))
    f = b.op("flatten", [cat], (23 * 25,))
    f2 = b.op("flatten", [g], (23,))
    l1 = b.linear(f, 37)
    l2 = b.linear(f2, 37)
    s = b.add(l1, l2)
    out = b.linear(s, 10, qmin=3, qmax=250)
    _check(b.model(out), n=6)


@pytest.mark.parametrize("padding,o", [(0, 20), (1, 50), (2, 3)])
def test_conv_then_2x2_max_pool_fused(padding, o):
    """A conv whose only consumer is a 2x2/2 max pool is pooled before requantization (odd sizes floor)."""
    rng = np.random.default_rng(o)
    b = Builder(rng, (2, 9, 11), z_in=200)
    c = b.conv("v0", o, 3, padding=padding, qmin=150)
    ho, wo = b.shape[c][1:]
    mp = b.op("max_pool2d", [c], (o, ho // 2, wo // 2), kernel=[2, 2], stride=[2, 2], padding=[0, 0])
    im = b.model(b.conv(mp, 4, 1))
    assert len(FastEngine(im, "auto").native.fused) == 2
    _check(im, n=7, seed=padding)


@pytest.mark.parametrize("block,conv_is_a,clamp,form", [
    ("input", False, (0, 255), "split"), ("input", True, (30, 220), "split"), ("c5", True, (40, 200), "split"),
    ("c16", False, (20, 240), "split"), ("c16", True, (0, 255), "fold"), ("c5", False, (10, 250), "fold"),
    ("input", True, (0, 255), "fold"), ("c5", False, (0, 255), "table"), ("c16", True, (25, 230), "table")])
def test_residual_add_fused_into_conv_equals_unfused(block, conv_is_a, clamp, form):
    """A conv whose only use is an Add writes the Add's codes from its epilogue: the same codes as the unfused program
    (conv, then the table Add) and the reference, saturating clamps included, with 1 and 2 threads. The larger-scale
    input's rescale is exactly linear; the other takes the int32 split form (``split``), the int64 folded form
    (``fold``: a right shift too large for the split), or the Add's table is used (``table``: a left shift rules the
    folded form out). ``block``: a residual block on 5 channels (20 outputs: a partial channel block), on 16 channels
    of 30-pixel rows (the row-tile kernel, 14 + 14 + 2 pixels), or two convs of the 1-channel input (the pipelined
    short-reduction kernel)."""
    from compactnn.quantize.intonly.native import AddFuse

    rng = np.random.default_rng(len(block) + 3 * conv_is_a + len(form) + clamp[0])
    deep = block != "input"
    b = Builder(rng, {"input": (1, 9, 11), "c5": (5, 9, 11), "c16": (16, 5, 30)}[block], z_in=90)
    o = 20 if block == "c5" else 16
    c1 = b.conv("v0", o, 3, padding=1, qmin=b.values["v0"]["zero_point"] if deep else 0)
    c2 = b.conv(c1 if deep else "v0", o, 3, padding=1)  # no clamp: the [x*M0 < 0] rounding term is live
    y = b.add(c2, c1, *clamp) if conv_is_a else b.add(c1, c2, *clamp)
    add = b.ops[-1]
    add["shift_out"] += 4  # a 16x finer output scale: many codes saturate
    small = "a" if add["shift_a"] < 0 else "b"  # the smaller-scale input (the other has M0 = 2^30, shift 0)
    if form == "fold":
        add[f"shift_{small}"] = -21
    if form == "table":
        add["shift_a"] = 1  # a left shift: exact in the reference, no folded form
    im = b.model(y)
    q = torch.from_numpy(rng.integers(0, 256, (9, *im.input_shape), dtype=np.uint8))
    ref = {k: torch.from_numpy(v) for k, v in run_reference(im, q.numpy()).items()}
    assert ((ref[y] == clamp[0]) | (ref[y] == clamp[1])).any()  # saturation happens
    threads = torch.get_num_threads()
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            for kind in ("auto", "generic", *(k for k in ("avx2",) if k in KINDS)):
                eng = FastEngine(im, kind)
                fused = [a for a in eng.native.keep.arrays if isinstance(a, AddFuse)]
                assert len(eng.native.fused) == 2 and len(fused) == 1 and fused[0].conv_is_a == conv_is_a
                f = fused[0]
                assert f.fast == (form != "table") and (form == "table" or bool(f.alpha_s) != bool(f.alpha_r))
                assert form != "split" or bool(f.shs) != bool(f.shr)
                assert form != "fold" or not (f.shs or f.shr)
                unfused = eng.run(q, all_values=True)
                assert all(torch.equal(unfused[k], ref[k]) for k in ref), (t, kind)
                assert torch.equal(eng.run(q), ref[y]) and torch.equal(eng.run(q[:1]), ref[y][:1]), (t, kind)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("shift", [-31, -20, -1, 0, 2])
def test_requant_ties_and_int32_limits(shift):
    """M0 = 2^30 makes ties of both roundings frequent; biases push accumulators to the int32 limits; shift > 0
    takes the left-shift path, large folded biases the int64 path."""
    rng = np.random.default_rng(shift + 40)
    for m0, bias in ((1 << 30, None), ((1 << 31) - 1, INT32_MAX - 255 * 127 * 4 - 5),
                     (1 << 30, INT32_MIN + 255 * 127 * 4 + 5), (1 << 30, 0), (0, 123)):
        b = Builder(rng, (4,), z_in=0 if bias is not None and bias > 0 else 255)
        y = b.linear("v0", 40, m0=m0, shift=shift, bias=bias if bias is not None else rng.integers(-999, 999, 40),
                     z=int(rng.integers(0, 256)))
        _check(b.model(y), n=64, seed=shift & 7)


def test_overflow_raises_like_the_reference():
    b = Builder(np.random.default_rng(0), (4,), z_in=0)
    y = b.linear("v0", 3, bias=INT32_MAX - 10)
    b.tensors["w0"].fill_(127)
    im = b.model(y)
    q = torch.full((2, 4), 255, dtype=torch.uint8)
    with pytest.raises(ModelError, match="overflows int32"):
        run_reference(im, q.numpy())
    for kind in ("auto", "generic"):
        with pytest.raises(ModelError, match="overflows int32"):
            FastEngine(im, kind).run(q)


def test_zoo_model_native_vs_torch_vs_reference():
    from test_intonly_engine import _zoo_int

    im, _, x = _zoo_int()
    _check_codes = im.quantize_input(x)
    ref = im.run_values(_check_codes, "reference")
    for kind in KINDS:
        got = FastEngine(im, kind).run(_check_codes, all_values=True)
        assert all(torch.equal(got[k], ref[k]) for k in ref), kind


def test_native_run_has_no_float_op_and_kernels_have_no_float_type():
    from test_intonly_engine import Recorder, _zoo_int

    im, _, x = _zoo_int()
    q = im.quantize_input(x[:5])
    eng = FastEngine(im, "auto")
    with Recorder() as rec:
        eng.run(q)
        eng.run(q, all_values=True)
    assert rec.seen and not [f for f, d in rec.seen if any(t.is_floating_point or t.is_complex for t in d)]
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", "".join(f.read_text() for f in native.SOURCES + native.HEADERS),
                  flags=re.S)
    assert not re.search(r"\b(float|double|__m512[dh]?|__m256[dh]?|_ps|_pd)\b", code)


def test_env_switch_and_missing_compiler(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPACTNN_NATIVE", "off")
    assert native.mode() == "off" and native.load() is None
    b = Builder(np.random.default_rng(1), (5,), z_in=3)
    assert FastEngine(b.model(b.linear("v0", 4))).native is None
    monkeypatch.setenv("COMPACTNN_NATIVE", "auto")
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.setattr(native.shutil, "which", lambda name: None)
    assert native.load() is None and "no C compiler" in native.status()


def test_build_is_atomic_when_processes_race(tmp_path):
    code = ("from compactnn.quantize.intonly import native; lib = native.load('generic'); "
            "assert lib is not None, native.status('generic'); print(lib.cnn_simd())")
    env = {**os.environ, "COMPACTNN_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    files = sorted(os.listdir(tmp_path / "native"))
    assert len(files) == 2 and files[0].startswith("kernels-") and files[0].endswith(".so"), files
    assert files[1] == files[0] + ".sha256"  # no temporary file left behind


def test_forward_float_equals_the_checked_path():
    """The native quantize/dequantize (io.c) give the model's own codes and floats, ties and infinities included."""
    from test_intonly_engine import _zoo_int

    im, _, x = _zoo_int()
    x = x[:9].clone()
    s = im.input["scale"]
    x[0, 0, :5, :5] = (torch.arange(-12, 13, dtype=torch.float64).reshape(5, 5) + 0.5).mul(s).float()  # near ties
    x[1, 1, 0, :4] = torch.tensor([float("inf"), -float("inf"), 1e30, -1e30])
    eng = im.fast_engine()
    assert torch.equal(eng.forward_float(im, x), im.dequantize_output(im.run_int(im.quantize_input(x), "reference")))
    assert eng.forward_float(im, x.double()) is None and eng.forward_float(im, x[:, :1]) is None
    assert FastEngine(im, "off").forward_float(im, x) is None


def test_model_with_built_native_engine_deep_copies():
    import copy

    b = Builder(np.random.default_rng(2), (2, 6, 6), z_in=9)
    im = b.model(b.conv("v0", 5, 3, padding=1))
    q = torch.randint(0, 256, (2, 2, 6, 6), dtype=torch.uint8)
    y = im.run_int(q)
    assert im.fast_engine().native is not None and torch.equal(copy.deepcopy(im).run_int(q), y)


# ------------------------------------------------------------------------------------------------ build cache safety


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    """An empty cache folder and no library loaded yet in this process."""
    monkeypatch.setenv("COMPACTNN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_cache", {})
    monkeypatch.setattr(native, "_why", {})
    return tmp_path / "cache" / "native"


def _plant(path, marker):
    """A shared object that, when loaded, creates ``marker`` (what a planted library would do, harmlessly)."""
    src = path.with_suffix(".c")
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void pwn(void) '
                   f'{{ FILE *f = fopen("{marker}", "w"); if (f) fclose(f); }}\nint cnn_simd(void) {{ return 7; }}\n')
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(path), str(src)], check=True, capture_output=True)
    src.unlink()


@pytest.mark.parametrize("sidecar", ["genuine", "missing"])
def test_a_planted_library_with_the_right_name_is_not_loaded(fresh_cache, monkeypatch, tmp_path, sidecar):
    assert native.load("generic") is not None
    name = native.status("generic").split(":")[0]
    so = fresh_cache / name
    assert so.exists() and (fresh_cache / (name + ".sha256")).exists()
    marker = tmp_path / "planted-code-ran"
    so.unlink()
    _plant(so, marker)
    if sidecar == "missing":
        (fresh_cache / (name + ".sha256")).unlink()
    monkeypatch.setattr(native, "_cache", {})
    lib = native.load("generic")
    assert not marker.exists(), "the planted library was loaded"
    assert lib is not None and lib.cnn_simd() == 0  # the genuine kernels, rebuilt over the planted file
    monkeypatch.setattr(native, "_cache", {})
    assert native.load("generic").cnn_simd() == 0 and not marker.exists()  # and the rebuilt file verifies


def test_cache_folders_are_created_private_under_a_permissive_umask(fresh_cache):
    old = os.umask(0)
    try:
        fd = native.open_cache_dir()
        os.close(fd)
    finally:
        os.umask(old)
    for d in (fresh_cache, fresh_cache.parent):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_a_group_or_world_writable_cache_folder_is_refused(fresh_cache, mode):
    fresh_cache.mkdir(parents=True)
    os.chmod(fresh_cache, mode)
    with pytest.warns(RuntimeWarning, match="writable by group or others"):
        assert native.load("generic") is None
    assert "writable by group or others" in native.status("generic") and "\n" not in native.status("generic")
    assert os.listdir(fresh_cache) == []  # nothing was written there


def test_a_cache_folder_owned_by_someone_else_is_refused(fresh_cache, monkeypatch):
    """Simulated: the current user's uid is made to differ from the folder's owner."""
    fresh_cache.mkdir(parents=True, mode=0o700)
    monkeypatch.setattr(native, "_euid", lambda: os.geteuid() + 1)
    with pytest.warns(RuntimeWarning, match="owned by uid"):
        assert native.load("generic") is None
    assert "owned by uid" in native.status("generic")


def test_a_symlinked_cache_folder_is_refused(fresh_cache, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    fresh_cache.parent.mkdir(mode=0o700)
    fresh_cache.symlink_to(elsewhere)
    with pytest.warns(RuntimeWarning, match="symlink"):
        assert native.load("generic") is None


def test_a_cached_file_writable_by_others_is_not_loaded(fresh_cache, monkeypatch):
    assert native.load("generic") is not None
    name = native.status("generic").split(":")[0]
    os.chmod(fresh_cache / name, 0o666)
    fd = native.open_cache_dir()
    try:
        assert native._read_verified(fd, name) is None
    finally:
        os.close(fd)
    monkeypatch.setattr(native, "_cache", {})
    assert native.load("generic") is not None  # rebuilt (a fresh private file)
    assert not stat.S_IMODE(os.stat(fresh_cache / name).st_mode) & 0o022


@pytest.mark.parametrize("serial", [0, 1 << 40])
def test_preplanned_runs_serial_or_threaded_are_bit_exact(monkeypatch, serial):
    """Issue 18: one preplanned run per (thread, batch) with its arena and bound pointers, one thread below the work
    threshold; either way the codes and floats equal the reference."""
    from compactnn.quantize.intonly.native import program
    from test_intonly_engine import _zoo_int

    monkeypatch.setattr(program, "SERIAL_MACS", serial)
    im, _, x = _zoo_int()
    torch.set_num_threads(2)
    try:
        nat = FastEngine(im, "auto").native
        q = im.quantize_input(x[:7])
        want = run_reference(im, q.numpy())
        assert torch.equal(nat.run(q), torch.from_numpy(want[im.output["value"]]))
        plan = nat._plan(7, False)
        assert plan.threads == (1 if serial else 2) and nat._plan(7, False) is plan  # planned once
        assert all(torch.equal(v, torch.from_numpy(want[k])) for k, v in nat.run(q, all_values=True).items())
        y = nat.run_float(x[:7].contiguous(), im.input["scale"], im.input["zero_point"], im.output["scale"],
                          im.output["zero_point"])
        assert torch.equal(y, im.dequantize_output(torch.from_numpy(want[im.output["value"]])))
    finally:
        torch.set_num_threads(1)


def test_forced_kernel_paths_report_what_they_run(monkeypatch):
    for kind in ("vnni", "avx2", "generic"):
        monkeypatch.setenv("COMPACTNN_NATIVE", kind)
        assert native.mode() == kind
        lib = native.load()
        if lib is None:
            assert "no" in native.status() or "did not" in native.status()
            continue
        assert native.SIMD[lib.cnn_simd()] == kind and f"simd={kind}" in native.status()
    monkeypatch.setenv("COMPACTNN_NATIVE", "sse9")
    assert native.mode() == "auto"


def test_seven_bit_codes_take_the_8bit_products_exactly():
    """A model whose input codes are at most 127 (input qmax 127) and whose convs clamp at 127: on the AVX2 path each
    conv reading such codes multiplies 8-bit values (vpmaddubsw, Conv.u7), with the same codes as the reference at the
    extremes (codes 0 and 127, weights -127..127); a conv reading a value that may hold 255 keeps the 16-bit
    products; codes above 127 are refused."""
    if "avx2" not in KINDS:
        pytest.skip("no AVX2 kernels on this machine")
    from compactnn.quantize.intonly.native import Conv

    rng = np.random.default_rng(7)
    b = Builder(rng, (16, 9, 11), z_in=100)
    c1 = b.conv("v0", 20, 3, padding=1, qmax=127, z=int(rng.integers(0, 128)))
    c2 = b.conv(c1, 16, 3, padding=1, qmax=127, z=int(rng.integers(0, 128)))
    c3 = b.conv(c2, 16, 3, padding=1, z=int(rng.integers(0, 128)))  # no clamp at 127: its output may hold 255
    c4 = b.conv(c3, 16, 1, z=int(rng.integers(0, 128)))
    im = b.model(c4)
    im.input = {**im.input, "qmax": 127}
    q = rng.integers(0, 128, (5, *im.input_shape), dtype=np.uint8)
    q[0] = 127
    q[1, :, ::2] = 0
    ref = {k: torch.from_numpy(v) for k, v in run_reference(im, q).items()}
    eng = FastEngine(im, "avx2")
    assert [c.u7 for c in eng.native.keep.arrays if isinstance(c, Conv)] == [1, 1, 1, 0]
    got = eng.run(torch.from_numpy(q), all_values=True)
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    q[2, 0, 0, 0] = 128
    with pytest.raises(ModelError, match="input qmax 127"):
        eng.run(torch.from_numpy(q))
    with pytest.raises(ModelError, match="input qmax 127"):
        im.run_int(torch.from_numpy(q))
