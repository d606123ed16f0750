"""Integer-arithmetic-only inference (Jacob et al. 2018): speed against torch and ONNX Runtime int8, and accuracy.

For LeNet-5 and ResNet-20 (1-channel input) on Fashion-MNIST, times in one process, on the same inputs, with the same
thread count for every engine, the median of >= 20 runs after warm-up at batch 1 and batch 256:

- fp32 eager (the trained float model) and ORT fp32 (its ``torch.onnx.export``) for scale;
- torch's own x86 int8: FX graph mode (``prepare_fx``/``convert_fx``, ``get_default_qconfig_mapping("x86")``, run
  eager on the fbgemm/x86 quantized kernels). PT2E is not used: torch 2.13 no longer ships
  ``torch.ao.quantization.quantize_pt2e`` (it moved to torchao, which is not installed);
- ORT int8: ``onnxruntime.quantization.quantize_static`` on the fp32 ONNX export (QOperator, per-channel int8 weights,
  uint8 activations, MinMax calibration over training images);
- ORT running compactnn's own export (``compactnn.quantize.intonly.export.export_onnx``);
- compactnn's fast engine (``IntegerModel`` with ``engine="fast"``), and its NumPy reference engine at batch 256.

Accuracy on the full test set: fp32, QAT int8 (``IntegerOnly(mode="qat")``), post-training calibration (min/max and
percentile), torch int8, ORT int8 and our ONNX. Also the bit-exactness of the reference and fast engines and the
agreement of ORT on our export with the fast engine. Writes docs/results/integer_only.{md,json,png}.
``--quick``: digits, LeNet-5 only, few epochs and repeats.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import compactnn as cn  # noqa: E402
from common import markdown_table, parser, write_results  # noqa: E402
from pretrained import pretrained  # noqa: E402

warnings.filterwarnings("ignore", module="torch.ao")
warnings.filterwarnings("ignore", category=DeprecationWarning)

SETTINGS = {
    "lenet5": dict(train=dict(epochs=12, lr=0.01, batch_size=128), qat=dict(epochs=2, lr=0.002), calib=2000),
    "resnet20": dict(train=dict(epochs=6, lr=0.1, batch_size=128), qat=dict(epochs=1, lr=0.002), calib=2000),
}
QUICK = dict(train=dict(epochs=15, lr=0.05, batch_size=64), qat=dict(epochs=2, lr=0.002), calib=500)
COLUMNS = ["model", "engine", "accuracy", "ms_b1", "ms_b256", "x_ort_b1", "x_ort_b256", "x_torch_b256"]
ORT_INT8, TORCH_INT8, OURS = "ORT int8 (quantize_static)", "torch int8 (FX x86)", "compactnn int8 (fast)"


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


def median_ms(fn, x, repeats: int, warmup: int = 5) -> float:
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


# ----------------------------------------------------------------------------------------------- compactnn


def integer_models(model, bundle, s, quick: bool) -> dict:
    """QAT and post-training calibrated integer models; empty when IntegerOnly is not there yet."""
    try:
        from compactnn.config import FineTune
        from compactnn.quantize.intonly.method import IntegerOnly
    except ImportError as err:
        print(f"IntegerOnly not available ({err}); timing the comparators only", flush=True)
        return {}
    nb = max(1, s["calib"] // 128)  # calibration batches of 128 training images
    out = {}
    for label, cfg, data in [
        ("calibrate minmax", IntegerOnly(mode="calibrate", calibration="minmax", calibration_batches=nb), bundle),
        ("calibrate percentile", IntegerOnly(mode="calibrate", calibration="percentile", calibration_batches=nb),
         bundle),
        ("QAT", IntegerOnly(mode="qat", calibration_batches=nb, finetune=FineTune(**s["qat"])), bundle),
    ]:
        t = time.perf_counter()
        out[label] = cn.compress(model, cfg, data=data).eval()
        print(f"  {label}: {time.perf_counter() - t:.1f} s", flush=True)
    return out


def input_codes(im, x: np.ndarray) -> torch.Tensor:
    return im.quantize_input(torch.from_numpy(x))


def run_codes(im, q: torch.Tensor, engine: str, batch: int = 500, quiet: bool = False) -> np.ndarray:
    with torch.inference_mode():
        parts = [im.run_int(q[i:i + batch], engine=engine).numpy() for i in
                 tqdm(range(0, len(q), batch), desc=f"{engine} engine", leave=False, disable=quiet)]
    return np.concatenate(parts).astype(np.int64)


# ----------------------------------------------------------------------------------------------- one model


def run_model(name: str, bundle, quick: bool, threads: int, repeats: int, tmp: Path,
              check_images: int | None = None) -> tuple[list[dict], dict]:
    s = {**SETTINGS[name], **(QUICK if quick else {})}
    print(f"== {name} on {bundle.name}", flush=True)
    model = pretrained(name, bundle, **s["train"]).eval()
    shape = tuple(bundle.input_shape)
    x_test, y_test = bundle.test.x.numpy(), bundle.test.y.numpy()
    calib_x = bundle.train.subset(s["calib"], seed=0).x
    inputs = {1: x_test[:1].copy(), 256: x_test[:256].copy()}

    engines: dict[str, object] = {"fp32 eager": torch_fn(model)}
    fp32_onnx, int8_onnx, ours_onnx = tmp / f"{name}_fp32.onnx", tmp / f"{name}_int8.onnx", tmp / f"{name}_ours.onnx"
    export_fp32(model, shape, fp32_onnx)
    engines["ORT fp32"] = ort_session(fp32_onnx, threads)
    engines[TORCH_INT8] = torch_fn(torch_int8(model, calib_x))
    ort_int8(fp32_onnx, int8_onnx, calib_x.numpy())
    engines[ORT_INT8] = ort_session(int8_onnx, threads)

    ims = integer_models(model, bundle, s, quick)
    extra: dict = {}
    if ims:
        from compactnn.quantize.intonly.export import export_onnx

        qat = ims["QAT"]
        qat.engine = "fast"
        export_onnx(qat, ours_onnx)
        engines["ORT (our export)"] = ort_session(ours_onnx, threads)
        export_onnx(qat, tmp / f"{name}_exact.onnx", mode="exact")
        engines["ORT (our export, exact)"] = ort_session(tmp / f"{name}_exact.onnx", threads)
        engines[OURS] = torch_fn(qat)

    rows = []
    acc = {}
    for label, fn in engines.items():
        logits = predict(fn, x_test)
        acc[label] = float((logits.argmax(1) == y_test).mean())
        row = dict(model=name, engine=label, accuracy=round(acc[label], 4))
        for b, x in inputs.items():
            n = repeats if b == 1 else max(20, repeats // 2)
            row[f"ms_b{b}"] = round(median_ms(fn, x if label != OURS else torch.from_numpy(x), n), 4)
        rows.append(row)
        print(f"  {label}: acc {row['accuracy']:.4f}, b1 {row['ms_b1']:.3f} ms, b256 {row['ms_b256']:.2f} ms",
              flush=True)
    if ims:
        qat = ims["QAT"]
        ref_fn = torch_fn(_with_engine(qat, "reference"))
        rows.append(dict(model=name, engine="compactnn int8 (reference)", accuracy=acc[OURS],
                         ms_b256=round(median_ms(ref_fn, torch.from_numpy(inputs[256]), 3 if quick else 5, 1), 2)))
        for label in ("calibrate minmax", "calibrate percentile"):
            a = float((predict(torch_fn(ims[label]), x_test).argmax(1) == y_test).mean())
            rows.append(dict(model=name, engine=f"compactnn int8 ({label}, fast)", accuracy=round(a, 4)))
        q = input_codes(qat, x_test[:check_images])
        fast, ref = run_codes(qat, q, "fast"), run_codes(qat, q, "reference")
        diff = np.abs(_onnx_codes(engines["ORT (our export)"], qat, x_test[:check_images]) - fast)
        diff_x = np.abs(_onnx_codes(engines["ORT (our export, exact)"], qat, x_test[:check_images]) - fast)
        extra = dict(model=name, outputs=int(fast.size), ref_fast_mismatches=int((fast != ref).sum()),
                     onnx_max_code_diff=int(diff.max()), onnx_exact_fraction=round(float((diff == 0).mean()), 6),
                     onnx_exact_mode_mismatches=int((diff_x != 0).sum()),
                     fp32=acc["fp32 eager"], qat=acc[OURS], qat_drop_points=round(100 * (acc["fp32 eager"] - acc[OURS]), 2))
        print(f"  bit-exactness: {extra['ref_fast_mismatches']} mismatching codes of {fast.size}; ONNX: max diff "
              f"{extra['onnx_max_code_diff']}, exact {extra['onnx_exact_fraction']:.4%}", flush=True)
    ort_row = next(r for r in rows if r["engine"] == ORT_INT8)
    torch_row = next(r for r in rows if r["engine"] == TORCH_INT8)
    for r in rows:
        if r.get("ms_b1"):
            r["x_ort_b1"] = round(r["ms_b1"] / ort_row["ms_b1"], 2)
        if r.get("ms_b256"):
            r["x_ort_b256"] = round(r["ms_b256"] / ort_row["ms_b256"], 2)
            r["x_torch_b256"] = round(r["ms_b256"] / torch_row["ms_b256"], 2)
    return rows, extra


def _with_engine(im, engine: str):
    other = copy.copy(im)  # shallow: shares the buffers
    other.engine = engine
    return other


def _onnx_codes(fn, im, x: np.ndarray) -> np.ndarray:
    y = predict(fn, x)
    s, z = im.output["scale"], im.output["zero_point"]
    return np.rint(y / np.float32(s)).astype(np.int64) + int(z)


def targets(rows: list[dict]) -> list[str]:
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["engine"]: r for r in rows if r["model"] == name}
        if OURS not in by:
            continue
        ours, ort_r, tor = by[OURS], by[ORT_INT8], by[TORCH_INT8]
        best = min(ort_r["ms_b256"], tor["ms_b256"])
        f256, f1 = ours["ms_b256"] / best, ours["ms_b1"] / ort_r["ms_b1"]
        lines.append(f"- {name}, batch 256: compactnn {ours['ms_b256']:.2f} ms vs. best int8 {best:.2f} ms: "
                     f"{'met' if f256 <= 1 else 'missed'} ({f256:.2f}x)")
        lines.append(f"- {name}, batch 1: compactnn {ours['ms_b1']:.3f} ms vs. 2x ORT int8 "
                     f"{2 * ort_r['ms_b1']:.3f} ms: {'met' if f1 <= 2 else 'missed'} ({f1:.2f}x ORT)")
    return lines


def plot(rows: list[dict], path) -> None:
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        sub = [r for r in rows if r["model"] == name and r.get("ms_b1")]
        width = 0.8 / max(1, len(sub))
        for i, r in enumerate(sub):
            ax.bar(np.arange(2) + i * width, [r["ms_b1"], r["ms_b256"]], width, label=r["engine"])
        ax.set_xticks(np.arange(2) + width * (len(sub) - 1) / 2, ["batch 1", "batch 256"])
        ax.set_yscale("log")
        ax.set_ylabel("median latency, ms (log)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=None, help="comma-separated registry names (default lenet5,resnet20)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per engine and batch size (>= 20)")
    p.add_argument("--check-images", type=int, default=None,
                   help="test images for the bit-exactness/ONNX checks (default: all; the NumPy reference engine "
                        "needs ~0.03-0.08 s per ResNet-20 image)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names = (args.models or ("lenet5" if args.quick else "lenet5,resnet20")).split(",")
    repeats = args.repeats or (20 if args.quick else 50)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    rows, extras = [], []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            r, e = run_model(name, bundle, args.quick, args.threads, repeats, Path(tmp), args.check_images)
            rows += r
            if e:
                extras.append(e)
    goal = targets(rows)
    notes = [
        f"Data: {bundle.name}, full test set ({len(bundle.test)} images) for accuracy; timing on its first 1 and "
        f"256 images, the median of {repeats} runs (batch 1) / {max(20, repeats // 2)} runs (batch 256) after 5 "
        f"warm-up runs, {args.threads} threads for every engine (torch.set_num_threads; ORT intra-op {args.threads}, "
        f"inter-op 1). Total run time {time.perf_counter() - t0:.0f} s.",
        "`x_ort_*` / `x_torch_*`: time divided by ORT int8's / torch int8's at that batch size.",
        "torch int8 is FX graph mode with the 'x86' qconfig (torch 2.13 no longer ships "
        "`torch.ao.quantization.quantize_pt2e`; it moved to torchao). ORT int8 is `quantize_static` on the fp32 "
        "ONNX export: QOperator, per-channel int8 weights, uint8 activations, MinMax over training images.",
        "Our ONNX export is QOperator: QuantizeLinear, QLinearConv, QGemm (com.microsoft, has the int32 bias), "
        "QLinearAdd, QLinearGlobalAveragePool, MaxPool on uint8, Flatten, DequantizeLinear. ORT requantizes in "
        "float32 and rounds half to even, compactnn in TFLite fixed point, hence the rare one-code differences. "
        "The exact export uses ConvInteger/MatMulInteger and int64 fixed-point ops (bit-identical, slower).",
    ]
    if goal:
        notes += ["## Targets", "\n".join(goal)]
    if extras:
        notes += ["## Bit-exactness and ONNX agreement (output codes over the full test set)",
                  markdown_table(extras, ["model", "outputs", "ref_fast_mismatches", "onnx_max_code_diff",
                                          "onnx_exact_fraction", "onnx_exact_mode_mismatches", "fp32", "qat",
                                          "qat_drop_points"]),
                  "`onnx_*`: ORT on our QOperator export vs. the fast engine (float32 requantization in ORT, so "
                  "one-code differences ripple through deep nets); `onnx_exact_mode_mismatches`: ORT on the "
                  "`mode=\"exact\"` export (integer ops, fixed-point requantization)."]
    for e in extras:  # the checks go into the JSON on the compactnn row of their model
        next(r for r in rows if r["model"] == e["model"] and r["engine"] == OURS).update(
            {k: v for k, v in e.items() if k != "model"})
    write_results("integer_only", args.out, rows, COLUMNS, "Integer-only inference: speed and accuracy", "\n\n".join(notes),
                  lambda path: plot(rows, path))
    for line in goal:
        print(line)


if __name__ == "__main__":
    main()
