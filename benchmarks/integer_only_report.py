"""The report of benchmarks/integer_only.py: the markdown tables, the target lines and the plot, from its JSON state.

The state (docs/results/integer_only.json) holds the rows of every part run so far (``engines``, ``exactness_chunks``,
``onnx``, ``layers``, ``packing``) and the commands that made them; :func:`render` turns it into the markdown.
"""

from __future__ import annotations

import statistics

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common import markdown_table  # noqa: E402

COLUMNS = ["model", "engine", "accuracy", "ms_b1", "ms_b256", "x_ort_b1", "x_ort_b256", "x_torch_b256"]
ORT_INT8, TORCH_INT8, OURS = "ORT int8 (quantize_static)", "torch int8 (FX x86)", "compactnn int8 (fast)"
VARIANTS = {  # label -> IntegerOnly keyword arguments (besides calibration_batches and the QAT settings)
    "QAT": dict(mode="qat"),  # weight granularity: SETTINGS[model]["qat"]["per_channel"]
    "QAT, all per-channel": dict(mode="qat", per_channel=True),  # a row only where it differs from "QAT"
    "calibrate minmax": dict(mode="calibrate", calibration="minmax"),
    "calibrate percentile": dict(mode="calibrate", calibration="percentile"),
    "calibrate minmax, per-tensor": dict(mode="calibrate", calibration="minmax", per_channel=False),
    "QAT, 7-bit activations": dict(mode="qat", reduce_range=True),  # torch's x86 numerics (reduce_range)
}


def _per_round(ours: dict, base: list[dict], key: str) -> list[float]:
    """Ratios ours / fastest of ``base`` in each timing round (one value from the medians for older JSON)."""
    runs = [r.get(f"{key}_rounds") or [r[key]] for r in (ours, *base)]
    n = min(len(v) for v in runs)
    return [runs[0][i] / min(v[i] for v in runs[1:]) for i in range(n)]


def targets(rows: list[dict]) -> list[str]:
    """Verdicts on the median over timing rounds of the per-round ratio, with the rounds' range."""
    lines = []
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["engine"]: r for r in rows if r["model"] == name}
        ours, ort_r, tor = by.get(OURS, {}), by.get(ORT_INT8, {}), by.get(TORCH_INT8, {})
        if not all(r.get("ms_b1") and r.get("ms_b256") for r in (ours, ort_r, tor)):
            continue
        for key, base, goal, what in (("ms_b256", [ort_r, tor], 1.0, "the faster of torch and ORT int8"),
                                      ("ms_b1", [ort_r], 2.0, "ORT int8")):
            f = _per_round(ours, base, key)
            mid = statistics.median(f)
            spread = f" (rounds {min(f):.2f}-{max(f):.2f}x, {sum(v <= goal for v in f)} of {len(f)} met)" \
                if len(f) > 1 else ""
            lines.append(f"- {name}, batch {key[4:]}: compactnn / {what} = {mid:.2f}x, target <= {goal:g}x: "
                         f"{'met' if mid <= goal else 'missed'}{spread}")
    return lines


def accuracy_rows(rows: list[dict]) -> list[dict]:
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        by = {r["engine"]: r.get("accuracy") for r in rows if r["model"] == name}
        fp32 = by.get("fp32 eager")
        row = dict(model=name, fp32=fp32, fp32_finetuned=by.get("fp32 fine-tuned like QAT"), qat=by.get(OURS))
        for label in VARIANTS:
            if label != "QAT":
                row[label.replace("calibrate", "ptq")] = by.get(f"compactnn int8 ({label}, fast)")
        if fp32 is not None and row["qat"] is not None:
            row["qat_drop_points"] = round(100 * (fp32 - row["qat"]), 2)
        out.append(row)
    return out


def exactness_rows(state: dict) -> list[dict]:
    out = []
    for name, chunks in state.get("exactness_chunks", {}).items():
        keys = ("images", "outputs", "output_mismatches", "value_codes", "value_mismatches")
        row = dict(model=name, **{k: sum(c[k] for c in chunks) for k in keys})
        row.update(values_per_image=chunks[0]["values_compared"], ranges=" ".join(f"{c['start']}:{c['stop']}"
                                                                                   for c in chunks),
                   seconds=round(sum(c["seconds"] for c in chunks)))
        out.append(row)
    return out


def plot(state: dict, fh) -> None:
    rows, layers = state.get("engines", []), state.get("layers", [])
    names = list(dict.fromkeys([r["model"] for r in rows] + [r["model"] for r in layers]))
    fig, axes = plt.subplots(2, max(1, len(names)), figsize=(7 * max(1, len(names)), 8), squeeze=False)
    for ax, name in zip(axes[0], names):
        sub = [r for r in rows if r["model"] == name and r.get("ms_b1") and r.get("ms_b256")]
        if not sub:
            ax.text(0.5, 0.5, "timing not run yet (--parts timing)", ha="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        width = 0.8 / max(1, len(sub))
        for i, r in enumerate(sub):
            ax.bar(np.arange(2) + i * width, [r["ms_b1"], r["ms_b256"]], width, label=r["engine"])
        ax.set_xticks(np.arange(2) + width * (len(sub) - 1) / 2, ["batch 1", "batch 256"])
        ax.set_yscale("log")
        ax.set_ylabel("median latency, ms (log)")
        ax.set_title(f"{name}: speed")
        ax.legend(fontsize=7)
    for ax, name in zip(axes[1], names):
        sub = [r for r in layers if r["model"] == name]
        ax.bar([r["index"] for r in sub], [100 * (1 - r["exact_fraction"]) for r in sub], color="tab:red")
        ax.set_xlabel("op index")
        ax.set_ylabel("% codes differing (all differ by 1)")
        ax.set_title(f"{name}: ORT qlinear export vs. compactnn, per layer (same input codes)")
    fig.tight_layout()
    fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)


NOTES = """\
torch int8 is FX graph mode with the 'x86' qconfig (torch 2.13 no longer ships
`torch.ao.quantization.quantize_pt2e`; it moved to torchao). ORT int8 is `quantize_static` on the fp32 ONNX export:
QOperator, per-channel int8 weights, uint8 activations, MinMax over training images.

Our ONNX export (`compactnn export`) has two modes. `exact`, the default, spells the integer program in
ConvInteger/MatMulInteger and int64 fixed-point ops: bit-identical to our engines, slow in ORT (elementwise int64
requantization). `qlinear` (`--qlinear`) uses ORT's fused kernels: QuantizeLinear, QLinearConv, QGemm
(com.microsoft, has the int32 bias), QLinearAdd, QLinearGlobalAveragePool, MaxPool on uint8, Flatten,
DequantizeLinear: fast, but not bit-exact (see the ONNX section)."""

ONNX_NOTES = """\
Why the `qlinear` export differs: ORT requantizes a QLinearConv/QGemm accumulator with one float32 multiply and
one rounding (half to even), i.e. a *single* rounding of `acc·M`; compactnn follows TFLite's default
`RDBPOT(SRDHM(acc, M0), n)`, which rounds twice (first to 2^-n of a code, then to a code). The two differ exactly
when `acc·M` lies within 2^-(n+1) of a half, i.e. on about 2^-n of the codes (n = 7..9 here: 0.05-0.25% per
layer), and then by one code. The column `ort_vs_single_rounding` counts, on the first 500 test images, the codes
where ORT differs from the exact single rounding (half to even) of `acc·M0·2^(shift-31)` computed in int64: 0 or a
handful in millions (where `acc·M` is within float32 precision of a half), so ORT's float32 arithmetic and the
exported scales are not the cause; the per-layer differences are the double rounding. No choice of exported float
scales or int32 biases makes a single rounding reproduce a double rounding (the difference depends on `acc`, not
affinely), so a QLinear or QDQ graph matches compactnn per layer within one code but not bit for bit. End to end,
the one-code differences of each layer feed the next ones and add up in a deep net (ResNet-20: 19 conv layers).
The `exact` export, the default (ONNX integer ops: ConvInteger/MatMulInteger plus the fixed-point requantization in int64 ops)
is bit-identical."""


def render(state: dict, goal: list[str]) -> str:
    rows = state.get("engines", [])
    parts = ["# Integer-only inference: accuracy, exactness, ONNX agreement, packing, speed", "Made by (in this order):",
             "\n".join(f"- `{c}`" for c in state.get("commands", [])),
             f"Environment: {state.get('env', '')}."]
    settings = state.get("settings", {})
    if settings:
        parts += ["Settings (fp32 reference tag and the IntegerOnly configs):",
                  "\n".join(f"- {m}: fp32 `{v['fp32']}`; QAT `{v.get('QAT', '')}`" for m, v in settings.items())]
    acc = accuracy_rows(rows)
    if acc:
        cols = ["model", "fp32", "fp32_finetuned", "qat", "qat_drop_points"] + [k.replace("calibrate", "ptq") for k in VARIANTS
                                                              if k != "QAT"]
        parts += ["## Accuracy (full test set)", markdown_table(acc, cols),
                  "`qat`: IntegerOnly(mode='qat') run on the fast engine, with ResNet-20's weights per channel and "
                  "LeNet-5's as TFLite's int8 spec has them (`per_channel='conv'`: convs per channel, linear layers "
                  "per tensor); `QAT, all per-channel`: LeNet-5's QAT with per-channel linear weights too. `qat_drop_points`: "
                  "fp32 minus qat, in points. QAT fine-tunes, so `fp32_finetuned` is the control: the fp32 model "
                  "fine-tuned with the same schedule and no quantization. `ptq *`: post-training calibration only "
                  "(no training) on 15 batches of 128 training images (1,920 images; QAT calibrates on the same "
                  "before fine-tuning)."]
    ex = exactness_rows(state)
    if ex:
        parts += ["## Bit-exactness: NumPy reference engine vs. fast engine (QAT model)",
                  markdown_table(ex, ["model", "images", "outputs", "output_mismatches", "values_per_image",
                                      "value_codes", "value_mismatches", "ranges", "seconds"]),
                  "`output_mismatches`: differing output codes; `value_mismatches`: differing codes over every value "
                  "of the program (input, and every op's output: each layer), summed over the images."]
    if state.get("onnx"):
        parts += ["## ONNX agreement, end to end (QAT model, full test set)",
                  markdown_table(state["onnx"], ["model", "export", "outputs", "max_code_diff", "exact_fraction",
                                                 "within_1", "diff_histogram"])]
    if state.get("layers"):
        parts += ["## ONNX agreement per layer (`qlinear` export; each op fed our engine's input codes)",
                  markdown_table(state["layers"], ["model", "index", "op", "name", "codes", "mismatches",
                                                   "max_code_diff", "exact_fraction", "ort_vs_single_rounding",
                                                   "rounding_codes"]),
                  ONNX_NOTES]
    if state.get("packing"):
        parts += ["## Packing (`compactnn.pack.save`, zstd level 19)",
                  markdown_table(state["packing"], ["model", "variant", "file_bytes", "tensor_bytes", "ratio", "at_least_3_8x",
                                                    "weight_bits",
                                                    "reload_mismatches", "buffers_identical", "images"]),
                  "`ratio`: fp32 file bytes / this file's bytes (3 decimals in the JSON); `tensor_bytes`: raw bytes of the "
                  "tensors before compression; `reload_mismatches`: output codes of the loaded file "
                  "that differ from the model saved, over the test set. Per-channel int8 rows each span the whole "
                  "[-127, 127] range (`weight_bits`: order-0 entropy of all int8 weight codes, bits per code) and barely "
                  "compress, while "
                  "the fp32 file compresses 8%; with one scale per tensor the codes of most rows use a narrower "
                  "range. For LeNet-5, whose fc1 holds 93% of the weights, that decides the 3.8x line."]
    if any(r.get("ms_b1") for r in rows):
        t = state.get("timing", {})
        timed = [r for r in rows if r.get("ms_b1") or r.get("ms_b256")]
        parts += ["## Speed", markdown_table(timed, COLUMNS),
                  "Timing on the first 1 and 256 test images, the median of "
                  + ", ".join(f"{m}: {v['repeats']} runs (batch 1) / {max(20, v['repeats'] // 2)} runs (batch 256)"
                              for m, v in t.items())
                  + " after 5 warm-up runs, repeated in " + ", ".join(f"{m}: {v.get('rounds', 1)}" for m, v in t.items())
                  + " rounds (every engine once per round; the table gives the median over rounds; engines slower "
                    "than 0.5 s at batch 256 are timed in the first round only), the same thread count for every "
                    "engine (torch.set_num_threads; ORT "
                    "intra-op threads, inter-op 1). `x_ort_*` / `x_torch_*`: time divided by ORT int8's / torch "
                    "int8's at that batch size. The reference engine row is timed at batch 256 only."]
        if goal:
            parts += ["### Targets", "\n".join(goal)]
    elif rows:
        parts += ["## Engines", markdown_table(rows, ["model", "engine", "accuracy"])]
    parts += [NOTES, "![integer_only](integer_only.png)"]
    return "\n\n".join(parts) + "\n"
