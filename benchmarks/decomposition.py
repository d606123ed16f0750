"""Tensor decomposition: Tensor Ring Nets on LeNets and BT-LSTM on moving Fashion-MNIST, accuracy, size and speed.

(a) TRN (Wang et al., CVPR 2018) on Fashion-MNIST: LeNet-300-100 with the paper's mode shapes at R in {3,5,10,15}
(91 R^2 weights) and LeNet-5 (conv2, fc1, fc2 as tensor rings at per-layer compression ratios), each trained from
scratch and obtained from a trained model (``compactnn.compress`` with ``TensorRing``: TR-SVD + ALS, fine-tune).
(b) BT-LSTM (Ye et al., CVPR 2018) against a dense LSTM and a TT-LSTM on moving Fashion-MNIST (64x64 frames).
(c) Inference time of the factorized layers against the dense ones (batch 1 and 256, 2 threads).
Compression ratios come from parameter counts and from packed ``.cnz`` bytes. Writes docs/results/decomposition.*
and docs/results/decomposition_{rnn,latency}.png. ``--quick``: scikit-learn digits (and moving digits), ~2 minutes.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import compactnn as cn  # noqa: E402
from compactnn.config import FineTune  # noqa: E402
from compactnn.data import DataBundle  # noqa: E402
from compactnn.data.moving import load_moving_fashion_mnist, moving_bundle  # noqa: E402
from compactnn.decompose import BTLinear, TRConv2d, TRLinear  # noqa: E402
from compactnn.decompose.method import TensorRing, plan_layers  # noqa: E402
from compactnn.decompose.shapes import suggest_modes  # noqa: E402
from compactnn.decompose.tt import TTLinear  # noqa: E402
from compactnn.errors import ModelError  # noqa: E402
from compactnn.models.recurrent import RebuiltBTLinear, RebuiltTTLinear  # noqa: E402

from compactnn.files import atomic_savefig  # noqa: E402
from common import parser, write_results  # noqa: E402
from pretrained import pretrained  # noqa: E402

FULL = dict(  # about 20 minutes on 2 idle cores
    lenet300=dict(dense=dict(epochs=15, lr=0.05), scratch=dict(epochs=15, lr=0.05), ft=dict(epochs=8, lr=0.003),
                  ranks=(3, 5, 10, 15), sweeps=5),
    lenet5=dict(dense=dict(epochs=12, lr=0.01), scratch=dict(epochs=8, lr=0.01), ft=dict(epochs=5, lr=0.003),
                ratios=(10, 20), sweeps=4),
    rnn=dict(n_train=6000, n_test=1000, size=64, epochs=8, lr=2e-3, batch_size=64),
    repeats=10,
)
QUICK = dict(  # about 2 minutes
    lenet300=dict(dense=dict(epochs=15, lr=0.05), scratch=dict(epochs=15, lr=0.05), ft=dict(epochs=15, lr=0.003),
                  ranks=(3, 5, 10, 15), sweeps=3),
    lenet5=dict(dense=dict(epochs=15, lr=0.05), scratch=dict(epochs=10, lr=0.05), ft=dict(epochs=10, lr=0.003),
                ratios=(10, 20), sweeps=3),
    rnn=dict(n_train=1000, n_test=300, size=32, epochs=8, lr=2e-3, batch_size=32),
    repeats=5,
)
# the paper's LeNet-300-100 shapes: fc1 (4*7*4*7)->(3*4*5*5), fc2 (3*4*5*5)->(4*5*5), fc3 (4*5*5)->(2*5): 91 R^2
PAPER_OUT = {"fc1": (3, 4, 5, 5), "fc2": (4, 5, 5), "fc3": (2, 5)}
CELLS = [("clip-lstm", "dense LSTM"), ("clip-bt-lstm", "BT-LSTM"), ("clip-tt-lstm", "TT-LSTM")]
COLUMNS = ["part", "model", "variant", "setting", "params", "ratio_params", "packed_bytes", "ratio_bytes", "w_ih",
           "ratio_w_ih", "macs", "accuracy", "train_s", "s_per_epoch", "ms_b1", "ms_b256"]


def log(msg: str) -> None:
    print(f"[decomposition {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_row(model: nn.Module, ref: dict | None, input_shape) -> dict:
    """params, packed bytes, MACs (batch 1) and the ratios to the dense reference row ``ref``."""
    params, packed = nparams(model), cn.pack.packed_size(model)
    row = dict(params=params, packed_bytes=packed, macs=sum(cn.report.count_macs(model, input_shape).values()))
    row["ratio_params"] = round((ref or row)["params"] / params, 2)
    row["ratio_bytes"] = round((ref or row)["packed_bytes"] / packed, 2)
    return row


def fit_timed(model, bundle, **kw) -> float:
    start = time.perf_counter()
    cn.train.fit(model, bundle, seed=0, quiet=None, **kw)
    return time.perf_counter() - start


def accuracy(model, bundle) -> float:
    return round(cn.train.evaluate(model, bundle)["accuracy"], 4)


# ------------------------------------------------------------------------------------------------ (a) TRN
def lenet300_modes(in_features: int) -> tuple[dict, dict]:
    first = (4, 7, 4, 7) if in_features == 784 else suggest_modes(in_features, 4)
    return {"fc1": first, "fc2": PAPER_OUT["fc1"], "fc3": PAPER_OUT["fc2"]}, dict(PAPER_OUT)


def tr_compress(model, config_kw: dict, bundle, ft: dict, sweeps: int) -> tuple[nn.Module, str]:
    """``compactnn.compress`` with TensorRing: TR-SVD start, or a random start where TR-SVD's rank cap refuses the
    ranks; then ``sweeps`` ALS sweeps and fine-tuning."""
    for init in ("svd", "random"):
        cfg = TensorRing(**config_kw, init=init, als_sweeps=sweeps, finetune=FineTune(**ft))
        try:
            return cn.compress(model, cfg, data=bundle), f"{init} start + {sweeps} ALS sweeps"
        except ModelError as err:
            if init == "random":
                raise
            log(f"  TR-SVD start refused ({str(err)[:80]}...); random start")
    raise AssertionError("unreachable")


def replace_fresh(model: nn.Module, plan: dict) -> nn.Module:
    """Put freshly initialized TR layers (the planned modes and ranks) in place of the planned layers."""
    for name, p in plan.items():
        old = p["module"]
        if isinstance(old, nn.Linear):
            new = TRLinear(p["in_modes"], p["out_modes"], p["rank"])
        else:
            new = TRConv2d(p["in_modes"], p["out_modes"], old.kernel_size, p["rank"], stride=old.stride,
                           padding=old.padding, dilation=old.dilation)
        setattr(model, name, new)
    return model


def run_trn(name: str, bundle, s: dict) -> list[dict]:
    shape = bundle.input_shape
    dense = pretrained(name, bundle, batch_size=128, **s["dense"])  # cached: no training time to report
    ref = dict(part="a TRN", model=name, variant="dense", setting=f"{s['dense']['epochs']} ep SGD (cached)",
               accuracy=accuracy(dense, bundle))
    ref.update(size_row(dense, None, shape))
    rows = [ref]
    log(f"{name} dense: acc {ref['accuracy']:.4f}, {ref['params']:,} params")
    if name == "lenet300":
        in_modes, out_modes = lenet300_modes(math.prod(shape))
        settings = [(f"R={r}", dict(rank=r, in_modes=in_modes, out_modes=out_modes)) for r in s["ranks"]]
    else:
        settings = [(f"{r}x per layer", dict(ratio=float(r), layers=("conv2", "fc1", "fc2"))) for r in s["ratios"]]
    for label, cfg in settings:
        torch.manual_seed(0)
        plan = plan_layers(cn.models.create(name, data=bundle), TensorRing(**cfg))
        ranks = ", ".join(f"{k} R={v['rank']}" for k, v in plan.items())
        scratch = replace_fresh(cn.models.create(name, data=bundle), plan)
        secs = fit_timed(scratch, bundle, batch_size=128, **s["scratch"])
        row = dict(part="a TRN", model=name, variant="TR from scratch",
                   setting=f"{label}: {ranks}; {s['scratch']['epochs']} ep",
                   accuracy=accuracy(scratch, bundle), train_s=round(secs, 1))
        rows.append({**row, **size_row(scratch, ref, shape)})
        log(f"{name} scratch {label}: acc {row['accuracy']:.4f}, {rows[-1]['ratio_params']}x params")
        start = time.perf_counter()
        compressed, init = tr_compress(dense, cfg, bundle, s["ft"], s["sweeps"])
        row = dict(part="a TRN", model=name, variant="TR from trained",
                   setting=f"{label}: {ranks}; {init}, fine-tune {s['ft']['epochs']} ep",
                   accuracy=accuracy(compressed, bundle), train_s=round(time.perf_counter() - start, 1))
        rows.append({**row, **size_row(compressed, ref, shape)})
        log(f"{name} from trained {label}: acc {row['accuracy']:.4f}, {rows[-1]['ratio_params']}x params")
    return rows


# ------------------------------------------------------------------------------------------------ (b) RNN
def moving_data(quick: bool, s: dict, root) -> DataBundle:
    if not quick:
        return load_moving_fashion_mnist(root, n_train=s["n_train"], n_test=s["n_test"], size=s["size"])
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images / 16.0, np.ones((2, 2)))  # 16x16 digits in [0, 1]
    return moving_bundle(images[:1400], d.target[:1400], images[1400:], d.target[1400:], n_train=s["n_train"],
                         n_test=s["n_test"], seed=0, size=s["size"], name="moving-digits",
                         classes=[str(i) for i in range(10)])


def run_rnn(bundle: DataBundle, s: dict) -> tuple[list[dict], dict]:
    rows, models = [], {}
    ref = None
    for name, label in CELLS:
        torch.manual_seed(0)
        model = cn.models.create(name, data=bundle)
        secs = fit_timed(model, bundle, epochs=s["epochs"], lr=s["lr"], optimizer="adam", weight_decay=0.0,
                         batch_size=s["batch_size"])
        w_ih = model.input_weight_params()
        row = dict(part="b RNN", model=name, variant=label, accuracy=accuracy(model, bundle), w_ih=w_ih,
                   train_s=round(secs, 1), s_per_epoch=round(secs / s["epochs"], 2))
        row.update(size_row(model, ref, bundle.input_shape))
        ref = ref or row
        row["ratio_w_ih"] = round(ref["w_ih"] / w_ih, 1)
        rnn = model.rnn
        modes = (f"{rnn.in_modes}->{rnn.ih.out_modes}, ranks {rnn.ranks}"
                 + (f", N={rnn.blocks}" if hasattr(rnn, "blocks") else "") if hasattr(rnn, "in_modes") else "")
        row["setting"] = (f"{bundle.name} {tuple(bundle.input_shape)}, {s['epochs']} ep Adam {s['lr']}"
                          + (f"; {modes}" if modes else ""))
        rows.append(row)
        models[name] = model
        log(f"{label}: acc {row['accuracy']:.4f}, W_ih {w_ih:,} ({row['ratio_w_ih']}x), {row['s_per_epoch']} s/epoch")
    return rows, models


# ------------------------------------------------------------------------------------------------ (c) latency
def latency_rows(bundle300, bundle_rnn: DataBundle, models: dict, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    feats = math.prod(bundle_rnn.input_shape[1:])
    in300 = math.prod(bundle300.input_shape)
    modes300, _ = lenet300_modes(in300)
    bt = BTLinear(models["clip-bt-lstm"].rnn.in_modes, models["clip-bt-lstm"].rnn.ih.out_modes, 4, blocks=2)
    tt = TTLinear(bt.in_modes, bt.out_modes, 4)
    rb, rt = RebuiltBTLinear(bt.in_modes, bt.out_modes, 4, blocks=2), RebuiltTTLinear(bt.in_modes, bt.out_modes, 4)
    lenet5 = cn.models.create("lenet5", data=bundle300)
    c2 = lenet5.conv2
    plan = plan_layers(lenet5, TensorRing(ratio=10.0, layers=("conv2",)))["conv2"]
    trc = TRConv2d(plan["in_modes"], plan["out_modes"], c2.kernel_size, plan["rank"], padding=c2.padding)
    c2_in = (20, (bundle300.input_shape[1] + 2 * c2.padding[0] - 4) // 2, (bundle300.input_shape[2] + 2 * c2.padding[0] - 4) // 2)
    layers = [
        ("lenet300 fc1", "dense Linear", nn.Linear(in300, 300), (in300,)),
        ("lenet300 fc1", "TRLinear R=10", TRLinear(modes300["fc1"], PAPER_OUT["fc1"], 10), (in300,)),
        ("lenet5 conv2", "dense Conv2d", c2, c2_in),
        ("lenet5 conv2", f"TRConv2d R={plan['rank']}", trc, c2_in),
        ("LSTM W_ih", "dense Linear", nn.Linear(feats, 4 * 256), (feats,)),
        ("LSTM W_ih", "BTLinear factorized", bt, (feats,)),
        ("LSTM W_ih", "BTLinear rebuilt", rb, (feats,)),
        ("LSTM W_ih", "TTLinear factorized", tt, (feats,)),
        ("LSTM W_ih", "TTLinear rebuilt", rt, (feats,)),
    ]
    rows = []
    for layer, variant, mod, shape in layers:
        ms = cn.report.measure_latency(mod, shape, batch_sizes=(1, 256), repeats=repeats, warmup=2, threads=2)
        macs = sum(cn.report.count_macs(mod, shape).values())
        extra = getattr(mod, "rebuild_macs", getattr(mod, "merge_macs", None))
        setting = f"input {shape}" + (f"; + {extra():,} MACs per call (rebuild/merge)" if extra else "")
        rows.append(dict(part="c latency", model=layer, variant=variant, setting=setting, params=nparams(mod),
                         macs=macs, ms_b1=round(ms[1], 3), ms_b256=round(ms[256], 2)))
        log(f"latency {layer} {variant}: {ms[1]:.3f} ms @1, {ms[256]:.2f} ms @256")
    for name, label in CELLS:  # whole clip models (batch = clips of T frames)
        ms = cn.report.measure_latency(models[name], bundle_rnn.input_shape, batch_sizes=(1, 256), repeats=repeats,
                                       warmup=1, threads=2)
        rows.append(dict(part="c latency", model="clip model", variant=label + (" (rebuilt W_ih)" if "-" in label
                                                                                else ""),
                         setting=f"clips {tuple(bundle_rnn.input_shape)}", params=nparams(models[name]),
                         ms_b1=round(ms[1], 3), ms_b256=round(ms[256], 2)))
        log(f"latency clip {label}: {ms[1]:.3f} ms @1, {ms[256]:.2f} ms @256")
    return rows


# ------------------------------------------------------------------------------------------------ report
def save_png(path: Path, fig) -> None:
    try:
        atomic_savefig(path, fig, dpi=120)
    finally:
        plt.close(fig)


def plot_trn(rows: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ["lenet300", "lenet5"]):
        sub = [r for r in rows if r["part"] == "a TRN" and r["model"] == name]
        dense = next(r for r in sub if r["variant"] == "dense")
        ax.axhline(dense["accuracy"], color="#888", ls="--", label=f"dense {dense['accuracy']:.2%}")
        ax.axhline(dense["accuracy"] - 0.01, color="#ccc", ls=":", label="dense - 1 point")
        ticks = [1.0]
        ax.plot([1.0], [dense["accuracy"]], "k*", label="dense")
        for variant, style in [("TR from scratch", "o-"), ("TR from trained", "s-")]:
            pts = sorted((r["ratio_params"], r["accuracy"]) for r in sub if r["variant"] == variant)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=variant)
            ticks += [p[0] for p in pts]
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(sorted(set(ticks)), [f"{t:.3g}x" for t in sorted(set(ticks))], fontsize=7)
        ax.set_xlabel("compression ratio (parameters, log)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"Tensor Ring Nets: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def plot_rnn(rows: list[dict], path: Path) -> None:
    sub = [r for r in rows if r["part"] == "b RNN"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    names = [r["variant"] for r in sub]
    for ax, key, title, log_scale in [(axes[0], "w_ih", "W_ih parameters (log)", True),
                                      (axes[1], "accuracy", "test accuracy", False),
                                      (axes[2], "s_per_epoch", "training s / epoch", False)]:
        ax.bar(names, [r[key] for r in sub], color=["#888", "#36c", "#4a8"][:len(sub)])
        if log_scale:
            ax.set_yscale("log")
        ax.set_title(title)
    fig.tight_layout()
    save_png(path, fig)


def plot_latency(rows: list[dict], path: Path) -> None:
    sub = [r for r in rows if r["part"] == "c latency"]
    labels = [f"{r['model']}\n{r['variant']}" for r in sub]
    x = np.arange(len(sub))
    fig, ax = plt.subplots(figsize=(max(8, len(sub) * 0.9), 4.5))
    ax.bar(x - 0.2, [r["ms_b1"] for r in sub], 0.4, label="batch 1")
    ax.bar(x + 0.2, [r["ms_b256"] for r in sub], 0.4, label="batch 256")
    ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("ms per forward (median, log)")
    ax.legend()
    fig.tight_layout()
    save_png(path, fig)


def notes_text(rows: list[dict], quick: bool, tr_data: str, rnn_data: str) -> str:
    out = []
    for name in ("lenet300", "lenet5"):
        sub = [r for r in rows if r["part"] == "a TRN" and r["model"] == name]
        dense = next(r for r in sub if r["variant"] == "dense")
        ok = [r for r in sub if r["variant"] != "dense" and r["ratio_params"] >= 10
              and r["accuracy"] >= dense["accuracy"] - 0.01]
        best = max(ok, key=lambda r: r["ratio_params"]) if ok else None
        verdict = (f"held: {best['variant']} {best['setting'].split(':')[0]} is {best['ratio_params']}x smaller "
                   f"(params; {best['ratio_bytes']}x packed) at {best['accuracy']:.2%} vs dense {dense['accuracy']:.2%}"
                   if best else "did not hold at the ratios tried")
        out.append(f"- **{name}, >= 10x within 1 point of dense**: {verdict}.")
    rnn = {r["model"]: r for r in rows if r["part"] == "b RNN"}
    d, b = rnn.get("clip-lstm"), rnn.get("clip-bt-lstm")
    if d and b:
        held = b["ratio_w_ih"] >= 1000 and b["accuracy"] >= d["accuracy"] - 0.01
        out.append(f"- **BT-LSTM >= 1000x fewer W_ih params with accuracy >= dense - 1 point**: "
                   f"{'held' if held else 'did not hold'}: W_ih {b['w_ih']:,} vs {d['w_ih']:,} "
                   f"({b['ratio_w_ih']:,}x), accuracy {b['accuracy']:.2%} vs dense {d['accuracy']:.2%}.")
    lat = [r for r in rows if r["part"] == "c latency"]
    slower = []
    for r in lat:
        if "dense" in r["variant"]:
            continue
        base = next((q for q in lat if q["model"] == r["model"] and "dense" in q["variant"]), None)
        for key, b_size in (("ms_b1", 1), ("ms_b256", 256)):
            if base and r.get(key) and base.get(key) and r[key] > base[key]:
                slower.append(f"{r['model']} {r['variant']} at batch {b_size} ({r[key]:.3g} vs {base[key]:.3g} ms)")
    out.append("- **Factorized slower than dense**: " + ("; ".join(slower) if slower else "none measured") + ".")
    text = "\n".join(out)
    return f"""Targets (from issue 5):

{text}

Setup. (a) {tr_data}; LeNet-300-100 uses the paper's shapes (fc1 (4,7,4,7)->(3,4,5,5), fc2 (3,4,5,5)->(4,5,5),
fc3 (4,5,5)->(2,5): 91 R^2 core weights + biases; on 8x8 digits fc1's input modes are (2,2,4,4)); LeNet-5 factors conv2, fc1 and fc2 at the given
per-layer ratio (ranks from `TensorRing(ratio=...)`: the largest uniform rank at that ratio; conv1, 520 weights, stays
dense because a ring on its single input channel is larger than the layer). "from scratch" = the same layers freshly
initialized (variance-matched init) and trained with SGD; "from trained" = `compactnn.compress(dense,
TensorRing(...))`: TR-SVD start (random start + ALS where TR-SVD's rank cap refuses the rank), ALS sweeps, then
fine-tuning. `ratio_params` counts all parameters (biases and dense conv1 included), `ratio_bytes` the packed `.cnz`
files. (b) {rnn_data}; clips padded at the start to 10 frames; last hidden state -> Linear; Adam
(lr {QUICK['rnn']['lr'] if quick else FULL['rnn']['lr']}, cosine), batch {QUICK['rnn']['batch_size'] if quick else FULL['rnn']['batch_size']}, no weight decay; all cells hidden 256 (4x4x4x4). W_ih counts the input-to-hidden weights without bias: BT
N(sum I_k J_k R_k + prod R_k), TT sum r_(k-1) m_k n_k r_k. The BT/TT cells train with `ih_path="rebuilt"` (the
dense W_ih is rebuilt from the factors once per batch, then one GEMM: same parameters and function as the
mode-by-mode contraction, which for 4096 -> 1024 has growing intermediates and is slower on CPU). (c) median of
{QUICK['repeats'] if quick else FULL['repeats']} timed passes, 2 threads, `compactnn.report.measure_latency`; `macs` is per sample (or per
clip) at batch 1 and excludes the batch-independent core merge / weight rebuild given in `setting`.

Paper claims: TRN LeNet-5 11x without loss on MNIST; BT-LSTM above the dense LSTM on UCF11 with 17,388x fewer W_ih
parameters (our 64x64 frames allow at most 4096x1024 dense, so the ratio is {b['ratio_w_ih'] if b else '?'}x).
{'**Quick run**: digits and moving digits, tiny settings; the numbers only show the pipeline works.' if quick else ''}

![rnn](decomposition_rnn.png) ![latency](decomposition_latency.png)
"""


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default="a,b,c", help="comma-separated parts to run: a (TRN), b (RNN), c (latency)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    parts = set(args.parts.split(","))
    t_start = time.perf_counter()
    if args.quick:
        tr_bundle = cn.data.load("digits")
        tr_data = "scikit-learn digits (1437 train / 360 test)"
    else:
        tr_bundle = cn.data.load("fashion-mnist", root=args.data_root)
        tr_data = "Fashion-MNIST (60,000 train / 10,000 test)"
    rows: list[dict] = []
    if "a" in parts:
        for name in ("lenet300", "lenet5"):
            log(f"(a) TRN {name} on {tr_bundle.name}")
            rows += run_trn(name, tr_bundle, s[name])
    log("(b) generating moving clips")
    rnn_bundle = moving_data(args.quick, s["rnn"], args.data_root)
    rnn_data = (f"{rnn_bundle.name}: {len(rnn_bundle.train)} train / {len(rnn_bundle.test)} test clips of 6-10 "
                f"frames of {s['rnn']['size']}x{s['rnn']['size']}")
    rnn_rows, models = run_rnn(rnn_bundle, s["rnn"]) if "b" in parts or "c" in parts else ([], {})
    rows += rnn_rows if "b" in parts else []
    if "c" in parts:
        log("(c) latency")
        rows += latency_rows(tr_bundle, rnn_bundle, models, s["repeats"])
    notes = notes_text(rows, args.quick, tr_data, rnn_data) if {"a", "b", "c"} <= parts else "Partial run."
    args.out.mkdir(parents=True, exist_ok=True)
    write_results("decomposition", args.out, rows, COLUMNS, "Tensor decomposition: TRN and BT-LSTM", notes,
                  lambda path: plot_trn(rows, path) if "a" in parts else plt.figure().savefig(path, format="png"))
    if "b" in parts:
        plot_rnn(rows, args.out / "decomposition_rnn.png")
    if "c" in parts:
        plot_latency(rows, args.out / "decomposition_latency.png")
    log(f"done in {time.perf_counter() - t_start:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
