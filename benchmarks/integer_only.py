"""Integer-arithmetic-only inference (Jacob et al. 2018): accuracy, exactness, ONNX agreement, packing and speed.

For LeNet-5 and ResNet-20 (1-channel input) on Fashion-MNIST. The work comes in parts (``--parts``), which can be
run separately (each run updates its own sections of docs/results/integer_only.{md,json,png} and keeps the others):

- ``accuracy``: full test set accuracy of fp32, QAT int8 (``IntegerOnly(mode="qat")``), post-training calibration
  (min/max and percentile, per channel; min/max per tensor), and of every timed engine;
- ``exactness``: the NumPy reference engine against the fast engine, output codes and every intermediate value; the
  reference needs ~0.08 s per ResNet-20 image, so ``--check-range A:B`` runs part of the test set and the counts of
  disjoint parts add up in the JSON (the table says how many images are covered);
- ``onnx``: ORT on our ``exact`` export (the default) and on the ``qlinear`` export against the fast engine, end to end, and
  per layer (each ORT op fed exactly the codes our engine gave its inputs);
- ``pack``: packed file sizes of fp32 and integer models (per channel and per tensor) and bit-identical reload;
- ``timing``: in one process, on the same inputs, with the same thread count for every engine, the median of
  >= 20 runs after warm-up at batch 1 and batch 256 of
  - fp32 eager (the trained float model) and ORT fp32 (its ``torch.onnx.export``) for scale;
  - torch's own x86 int8: FX graph mode (``prepare_fx``/``convert_fx``, ``get_default_qconfig_mapping("x86")``,
    run eager on the fbgemm/x86 quantized kernels). PT2E is not used: torch 2.13 no longer ships
    ``torch.ao.quantization.quantize_pt2e`` (it moved to torchao, which is not installed);
  - ORT int8: ``onnxruntime.quantization.quantize_static`` on the fp32 ONNX export (QOperator, per-channel int8
    weights, uint8 activations, MinMax calibration over training images);
  - ORT running compactnn's own export (``compactnn.quantize.intonly.export.export_onnx``);
  - compactnn's fast engine (``IntegerModel`` with ``engine="fast"``), and its NumPy reference engine at batch 256.

The integer models are built once and cached next to the fp32 references (benchmarks/pretrained.py), so every part
sees the same models. ``--quick``: digits, LeNet-5 only, few epochs and repeats.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

import compactnn as cn
import integer_only_checks as checks
from integer_only_report import OURS, ORT_INT8, TORCH_INT8, VARIANTS, plot, render, targets
from common import parser
from pretrained import cache_dir, pretrained

from compactnn.files import atomic_write, atomic_write_text

warnings.filterwarnings("ignore", module="torch.ao")
warnings.filterwarnings("ignore", category=DeprecationWarning)

#: fp32 training (the cached reference), QAT (fine-tuning and IntegerOnly settings) and calibration images.
SETTINGS = {
    "lenet5": dict(train=dict(epochs=12, lr=0.01, batch_size=128),  # TFLite granularity: fc weights per tensor
                   qat=dict(finetune=dict(epochs=2, lr=0.002), per_channel="conv"), calib=2000),
    "resnet20": dict(train=dict(epochs=3, lr=0.05, batch_size=128),
                     qat=dict(finetune=dict(epochs=1, lr=0.002), freeze_bn_after=200, act_delay=0), calib=2000),
}
QUICK = dict(train=dict(epochs=15, lr=0.05, batch_size=64), qat=dict(finetune=dict(epochs=2, lr=0.002)), calib=500)
PARTS = ("accuracy", "exactness", "onnx", "pack", "timing")
SLOW_MS = 500.0  # an engine slower than this at batch 256 in the first timing round is not timed again


# ----------------------------------------------------------------------------------------------- engines


def ort_session(path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: x})[0]


def export_fp32(model, shape, path) -> None:
    x = torch.zeros(2, *shape)
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=False, input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "N"}, "output": {0: "N"}}, opset_version=17)


def ort_int8(fp32_path, out_path, calib_x: np.ndarray) -> None:
    """ORT's own static quantization: QOperator, per-channel int8 weights, uint8 activations, MinMax."""
    from onnxruntime import quantization as oq

    class Reader(oq.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib_x[i:i + 100]} for i in range(0, len(calib_x), 100)])

        def get_next(self):
            return next(self.it, None)

    oq.quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=oq.QuantFormat.QOperator,
                       per_channel=True, activation_type=oq.QuantType.QUInt8, weight_type=oq.QuantType.QInt8,
                       calibrate_method=oq.CalibrationMethod.MinMax)


def torch_int8(model, calib_x: torch.Tensor):
    """torch's FX graph-mode post-training quantization with the 'x86' backend (fbgemm + onednn kernels)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (calib_x[:1],))
    with torch.inference_mode():
        for i in range(0, len(calib_x), 100):
            prepared(calib_x[i:i + 100])
    return convert_fx(prepared)


def int8_isa() -> str:
    """The CPU's int8 extensions: our kernels use AVX-512 VNNI (else AVX2); torch's oneDNN also uses AMX-INT8 tiles,
    which change the batch-256 comparison (check with ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI)."""
    from compactnn.quantize.intonly.native import _cpu_flags

    flags = set(_cpu_flags().split())
    return ("CPU int8: " + ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in
                                     (("AVX-512 VNNI", "avx512_vnni"), ("AVX2", "avx2"), ("AMX-INT8", "amx_int8")))
            + " (torch's oneDNN int8 convolutions use AMX when present; our kernels do not)")


def median_ms(fn, x, repeats: int, warmup: int = 5) -> float:
    """Median wall-clock ms of ``fn(x)`` over ``repeats`` runs after ``warmup`` runs. A pause first lets the thread
    pools of the engine timed before (ORT's spin-waiting workers) go idle, so they do not steal this one's cores."""
    time.sleep(0.5)
    for _ in range(warmup):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def predict(fn, x: np.ndarray, batch: int = 500) -> np.ndarray:
    """Outputs of ``fn`` (numpy in, numpy or tensor out) over ``x`` in batches."""
    outs = []
    for i in range(0, len(x), batch):
        y = fn(x[i:i + batch])
        outs.append(y.detach().numpy() if isinstance(y, torch.Tensor) else np.asarray(y))
    return np.concatenate(outs)


def torch_fn(model):
    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x) if isinstance(x, np.ndarray) else x)
    return run


# ----------------------------------------------------------------------------------------------- integer models



def integer_model(label: str, model, fp32_tag: str, bundle, s: dict):
    """The integer model ``label`` of VARIANTS for this fp32 model, built once and cached as a .cnz file."""
    from compactnn.config import FineTune
    from compactnn.quantize.intonly.method import IntegerOnly

    kw = dict(VARIANTS[label], calibration_batches=max(1, s["calib"] // 128))
    if kw["mode"] == "qat":
        q = {**s["qat"], **VARIANTS[label]}  # the variant's own settings win over the model's QAT defaults
        kw.update(q, finetune=FineTune(**q["finetune"]))
    cfg = IntegerOnly(**kw)
    digest = hashlib.sha1(repr(cfg).encode()).hexdigest()[:10]
    path = cache_dir() / f"intonly-{fp32_tag}-{label.replace(' ', '').replace(',', '-')}-{digest}.cnz"
    same = sorted(cache_dir().glob(f"intonly-{fp32_tag}-*-{digest}.cnz"))  # the same config under another label
    if path.exists() or same:
        return cn.pack.load(path if path.exists() else same[0]).eval(), cfg
    t = time.perf_counter()
    im = cn.compress(model, cfg, data=bundle).eval()
    print(f"  built {label} in {time.perf_counter() - t:.0f} s (cached in {path})", flush=True)
    cn.pack.save(im, path, metadata={"config": repr(cfg)})
    return im, cfg


def fp32_finetuned(model, fp32_tag: str, bundle, s: dict):
    """Control for QAT: the fp32 model fine-tuned with QAT's schedule but no quantization (cached)."""
    ft = s["qat"]["finetune"]
    path = cache_dir() / f"{fp32_tag}-finetuned-e{ft['epochs']}-lr{ft['lr']}.cnz"
    if path.exists():
        return cn.pack.load(path).eval()
    tuned = copy.deepcopy(model)
    cn.train.fit(tuned, bundle, **ft)  # what run_finetune does for IntegerOnly's FineTune(**ft)
    cn.pack.save(tuned, path)
    return tuned.eval()


def fingerprint(im) -> str:
    """Short hash of an integer model's buffers and ops, so counts from different runs are only added when equal."""
    h = hashlib.sha1(json.dumps([op.to_dict() for op in im.ops], sort_keys=True, default=str).encode())
    for k, t in sorted(im.state_dict().items()):
        h.update(k.encode() + t.numpy().tobytes())
    return h.hexdigest()[:12]


def accuracy(fn, x: np.ndarray, y: np.ndarray) -> float:
    return round(float((predict(fn, x).argmax(1) == y).mean()), 4)


# ----------------------------------------------------------------------------------------------- one model


def run_model(name: str, bundle, args, parts: set, state: dict, tmp: Path) -> None:
    s = {**SETTINGS[name], **(QUICK if args.quick else {})}
    print(f"== {name} on {bundle.name}", flush=True)
    model = pretrained(name, bundle, **s["train"]).eval()
    tr = s["train"]
    fp32_tag = f"{name}-{bundle.name}-e{tr['epochs']}-lr{tr['lr']}-b{tr['batch_size']}"
    shape = tuple(bundle.input_shape)
    x_test, y_test = bundle.test.x.numpy(), bundle.test.y.numpy()
    calib_x = bundle.train.subset(s["calib"], seed=0).x
    ims, cfgs = {}, {}
    for label in VARIANTS:
        ims[label], cfgs[label] = integer_model(label, model, fp32_tag, bundle, s)
        if label != "QAT" and cfgs[label] == cfgs["QAT"]:  # e.g. "QAT, all per-channel" where QAT is already
            del ims[label], cfgs[label]
    qat = ims["QAT"]
    qat.engine = "fast"
    state.setdefault("settings", {})[name] = dict(fp32=fp32_tag, **{k: repr(v) for k, v in cfgs.items()})

    if parts & {"accuracy", "timing"}:
        engines: dict[str, object] = {"fp32 eager": torch_fn(model)}
        fp32_onnx, int8_onnx = tmp / f"{name}_fp32.onnx", tmp / f"{name}_int8.onnx"
        export_fp32(model, shape, fp32_onnx)
        engines["ORT fp32"] = ort_session(fp32_onnx, args.threads)
        engines[TORCH_INT8] = torch_fn(torch_int8(model, calib_x))
        ort_int8(fp32_onnx, int8_onnx, calib_x.numpy())
        engines[ORT_INT8] = ort_session(int8_onnx, args.threads)
        from compactnn.quantize.intonly.export import export_onnx

        export_onnx(qat, tmp / f"{name}_qlinear.onnx", mode="qlinear")
        engines["ORT (our export, qlinear)"] = ort_session(tmp / f"{name}_qlinear.onnx", args.threads)
        export_onnx(qat, tmp / f"{name}_exact.onnx", mode="exact")
        engines["ORT (our export, exact)"] = ort_session(tmp / f"{name}_exact.onnx", args.threads)
        engines[OURS] = torch_fn(qat)
        rows = state.setdefault("engines", [])
        if "accuracy" in parts:
            for label, fn in engines.items():
                _row(rows, name, label)["accuracy"] = accuracy(fn, x_test, y_test)
                print(f"  {label}: accuracy {_row(rows, name, label)['accuracy']:.4f}", flush=True)
            label = "fp32 fine-tuned like QAT"
            _row(rows, name, label)["accuracy"] = accuracy(torch_fn(fp32_finetuned(model, fp32_tag, bundle, s)),
                                                           x_test, y_test)
            for label, im in ims.items():
                if label != "QAT":
                    _row(rows, name, f"compactnn int8 ({label}, fast)")["accuracy"] = accuracy(torch_fn(im), x_test,
                                                                                                y_test)
        if "timing" in parts:
            inputs = {1: x_test[:1].copy(), 256: x_test[:256].copy()}
            times: dict[str, dict[int, list[float]]] = {label: {1: [], 256: []} for label in engines}
            for rnd in range(args.rounds):  # every engine once per round, so slow drifts of the machine hit all
                for label, fn in engines.items():
                    if rnd and times[label][256][0] > SLOW_MS:
                        continue  # the exact ONNX export: far from the targets, timed in the first round only
                    for b, x in inputs.items():
                        n = args.repeats if b == 1 else max(20, args.repeats // 2)
                        times[label][b].append(round(median_ms(fn, x if label != OURS else torch.from_numpy(x), n), 4))
                print(f"  round {rnd + 1}/{args.rounds}: " + ", ".join(
                    f"{label} {t[1][-1]:.3f}/{t[256][-1]:.2f}" for label, t in times.items()), flush=True)
            for label, t in times.items():
                row = _row(rows, name, label)
                for b in inputs:
                    row[f"ms_b{b}"], row[f"ms_b{b}_rounds"] = round(statistics.median(t[b]), 4), t[b]
            ref_fn = torch_fn(_with_engine(qat, "reference"))
            _row(rows, name, "compactnn int8 (reference)")["ms_b256"] = round(
                median_ms(ref_fn, torch.from_numpy(inputs[256]), 3 if args.quick else 5, 1), 2)
            state.setdefault("timing", {})[name] = dict(repeats=args.repeats, threads=args.threads, rounds=args.rounds)
        _ratios(rows, name)

    if "exactness" in parts:
        a, b = args.check_range
        b = min(b, len(x_test))
        print(f"  exactness on test images {a}:{b} ...", flush=True)
        t = time.perf_counter()
        res = checks.exactness(qat, torch.from_numpy(x_test[a:b]))
        res.update(start=a, stop=b, model_id=fingerprint(qat), seconds=round(time.perf_counter() - t, 1))
        chunks = [c for c in state.setdefault("exactness_chunks", {}).get(name, [])
                  if c["model_id"] == res["model_id"] and (c["stop"] <= a or c["start"] >= b)]
        state["exactness_chunks"][name] = sorted(chunks + [res], key=lambda c: c["start"])
        print(f"  {res['output_mismatches']} of {res['outputs']} output codes and {res['value_mismatches']} of "
              f"{res['value_codes']} codes of all values differ ({res['seconds']} s)", flush=True)

    if "onnx" in parts:
        from compactnn.quantize.intonly.export import export_onnx

        rows = [r for r in state.get("onnx", []) if r["model"] != name]
        for mode in ("exact", "qlinear"):
            path = export_onnx(qat, tmp / f"{name}_{mode}.onnx", mode=mode)
            r = checks.onnx_end_to_end(qat, path, x_test, args.threads)
            rows.append(dict(model=name, export=mode, **r))
            print(f"  ONNX {mode}: max diff {r['max_code_diff']}, exact {r['exact_fraction']:.4%}", flush=True)
        state["onnx"] = rows
        layers = checks.onnx_per_layer(qat, torch.from_numpy(x_test), args.threads)
        state["layers"] = [r for r in state.get("layers", []) if r["model"] != name] + [
            dict(model=name, **r) for r in layers]

    if "pack" in parts:
        granularity = {True: "per-channel", "conv": "per-channel conv, per-tensor linear"}[cfgs["QAT"].per_channel]
        chosen = {f"int8 {granularity} (QAT)": ims["QAT"]}
        if "QAT, all per-channel" in ims:
            chosen["int8 per-channel (QAT, all per-channel)"] = ims["QAT, all per-channel"]
        chosen["int8 per-tensor (calibrate minmax)"] = ims["calibrate minmax, per-tensor"]
        rows = checks.packing(name, model, chosen, torch.from_numpy(x_test))
        state["packing"] = [r for r in state.get("packing", []) if r["model"] != name] + rows
        for r in rows:
            print(f"  packed {r['variant']}: {r['file_bytes']} bytes, {r['ratio']}x", flush=True)


def _row(rows: list[dict], model: str, engine: str) -> dict:
    for r in rows:
        if r["model"] == model and r["engine"] == engine:
            return r
    rows.append(dict(model=model, engine=engine))
    return rows[-1]


def _ratios(rows: list[dict], name: str) -> None:
    by = {r["engine"]: r for r in rows if r["model"] == name}
    ort_r, torch_r = by.get(ORT_INT8, {}), by.get(TORCH_INT8, {})
    for r in by.values():
        for key, base, col in (("ms_b1", ort_r, "x_ort_b1"), ("ms_b256", ort_r, "x_ort_b256"),
                               ("ms_b256", torch_r, "x_torch_b256")):
            if r.get(key) and base.get(key):
                r[col] = round(r[key] / base[key], 2)


def _with_engine(im, engine: str):
    other = copy.copy(im)  # shallow: shares the buffers
    other.engine = engine
    return other


def _check_range(text: str) -> tuple[int, int]:
    a, _, b = text.partition(":")
    return int(a or 0), int(b or 10**9)


def main() -> None:
    import platform
    import sys

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated registry names (default lenet5,resnet20)")
    p.add_argument("--parts", default=",".join(PARTS),
                   help=f"comma-separated subset of {','.join(PARTS)}; 'report' only rewrites the .md/.png from the JSON")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per engine and batch size (>= 20)")
    p.add_argument("--rounds", type=int, default=None, help="timing rounds over all engines (default 5, quick 2)")
    p.add_argument("--check-range", type=_check_range, default=(0, 10**9),
                   help="test images A:B for the exactness part (default: all); disjoint parts add up")
    p.add_argument("--fresh", action="store_true", help="start the results afresh instead of updating them")
    args = p.parse_args()
    parts = set(args.parts.split(","))
    if not parts <= {*PARTS, "report"}:
        p.error(f"unknown parts {sorted(parts - set(PARTS))}; choose from {','.join(PARTS)}")
    torch.set_num_threads(args.threads)
    names = (args.models or ("lenet5" if args.quick else "lenet5,resnet20")).split(",")
    args.repeats = args.repeats or (20 if args.quick else 50)
    args.rounds = args.rounds or (2 if args.quick else 5)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    json_path = Path(args.out) / "integer_only.json"
    state: dict = {}
    if json_path.exists() and not args.fresh:
        old = json.loads(json_path.read_text())
        state = old if isinstance(old, dict) else {}
    command = "python " + " ".join(["benchmarks/integer_only.py", *sys.argv[1:]])
    if parts != {"report"}:
        state["commands"] = list(dict.fromkeys(state.get("commands", []) + [command]))
    state["env"] = (f"torch {torch.__version__}, {args.threads} threads, {platform.machine()}, "
                    f"Python {platform.python_version()}; data {bundle.name}; {int8_isa()}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names if parts != {"report"} else []:
            run_model(name, bundle, args, parts, state, Path(tmp))
    goal = targets(state.get("engines", []))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "integer_only.md", render(state, goal))
    atomic_write_text(json_path, json.dumps(state, indent=1) + "\n")
    atomic_write(out / "integer_only.png", lambda fh: plot(state, fh))
    for line in goal:
        print(line)


if __name__ == "__main__":
    main()
