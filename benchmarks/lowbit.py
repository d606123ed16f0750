"""Low-bit quantization (issue 11): SYQ, ELQ, TSQ, INQ against BWN, TWN, DoReFa and LSQ on Fashion-MNIST.

Every method starts from the same cached float reference (``benchmarks/pretrained.py``) and trains for the same
number of epochs with the same optimizer (Adam, lr 1e-3, cosine, batch 128, no weight decay): ``--epochs`` (3 by
default). INQ and ELQ spend them as one epoch after each of their three partial quantization steps; TSQ as a third
in code learning and the rest after transformation learning. Cells: W1A32, W1A8 (SYQ), W2A32 (ternary or 2-bit),
W2A8, W2A2, W4A4, W3/W5 (INQ). ``accuracy`` is the fake-quantized model's (equal to the hardened model's) on the full
test set; ``int_accuracy`` the integer engine's after :func:`compactnn.quantize.lowbit.to_integer` (rows with
activations <= 8 bits); ``int_b256_ms`` its batch-256 latency next to the int8 model of the integer-only method.

Long runs are split: every finished cell is cached (``~/.cache/compactnn/bench/lowbit-*.json``) and a run stops
starting cells after ``--budget-minutes``; run it again (under ``flock /tmp/cpu.lock``) until every cell is done.
The tables and the plot are rewritten from the cache on every run.

    python benchmarks/lowbit.py --models lenet5                      # all cells, 3 epochs
    python benchmarks/lowbit.py --models resnet20 --cells syq-W2A8,tsq-W2A2,dorefa-W2A2 --train-subset 10000
    python benchmarks/lowbit.py --quick                              # digits, 1 epoch, a few cells
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import compactnn as cn  # noqa: E402
from common import markdown_table, parser, write_results  # noqa: E402
from compactnn.files import atomic_write_text  # noqa: E402
from compactnn.quantize import BWN, ELQ, INQ, LSQ, SYQ, TSQ, TWN, DoReFa, IntegerOnly  # noqa: E402
from compactnn.quantize.lowbit import to_integer  # noqa: E402
from compactnn.report.latency import measure_latency  # noqa: E402
from pretrained import cache_dir, pretrained  # noqa: E402

REFERENCE = {"lenet5": dict(epochs=12, lr=0.01, batch_size=128), "resnet20": dict(epochs=3, lr=0.05, batch_size=128)}
QUICK_REFERENCE = dict(epochs=15, lr=0.05, batch_size=64)


def cells(epochs: int, seed: int) -> dict[str, tuple[str, str, object, float]]:
    """``{cell id: (method, setting, config, data fraction)}``: every config makes the same number of optimizer
    steps. With ``epochs >= 3``, INQ/ELQ retrain ``epochs // 3`` epochs after each of their 3 partial steps and TSQ
    spends a third in code learning. With fewer epochs, INQ/ELQ retrain one epoch over a third of the training
    images after each step (fraction 1/3) and TSQ's code learning has no training of its own (fitted thresholds)."""
    ft = dict(epochs=epochs, optimizer="adam", lr=1e-3, weight_decay=0.0, batch_size=128, seed=seed)
    short = epochs < 3
    step = dict(ft, epochs=1 if short else epochs // 3)
    inc = 1 / 3 if short else 1.0
    portions = (0.5, 0.75, 0.875, 1.0)
    code = 0 if short else epochs // 3

    def tsq(a):
        return TSQ(act_bits=a, code_finetune=dict(ft, epochs=code) if a and code else None,
                   finetune=dict(ft, epochs=epochs - code if a else epochs))

    return {
        "syq-W1A32": ("SYQ", "W1A32", SYQ(weight_bits=1, act_bits=None, finetune=ft), 1.0),
        "bwn-W1A32": ("BWN", "W1A32", BWN(finetune=ft), 1.0),
        "dorefa-W1A32": ("DoReFa", "W1A32", DoReFa(weight_bits=1, act_bits=None, finetune=ft), 1.0),
        "elq-W1A32": ("ELQ", "W1A32", ELQ(weight_bits=1, portions=portions, finetune=step), inc),
        "syq-W1A8": ("SYQ", "W1A8", SYQ(weight_bits=1, act_bits=8, finetune=ft), 1.0),
        "syq-W2A32": ("SYQ", "W2A32", SYQ(weight_bits=2, act_bits=None, finetune=ft), 1.0),
        "twn-W2A32": ("TWN", "W2A32", TWN(finetune=ft), 1.0),
        "elq-W2A32": ("ELQ", "W2A32", ELQ(weight_bits=2, portions=portions, finetune=step), inc),
        "tsq-W2A32": ("TSQ", "W2A32", tsq(None), 1.0),
        "dorefa-W2A32": ("DoReFa", "W2A32", DoReFa(weight_bits=2, act_bits=None, finetune=ft), 1.0),
        "lsq-W2A32": ("LSQ", "W2A32", LSQ(weight_bits=2, act_bits=None, finetune=ft), 1.0),
        "syq-W2A8": ("SYQ", "W2A8", SYQ(weight_bits=2, act_bits=8, finetune=ft), 1.0),
        "tsq-W2A8": ("TSQ", "W2A8", tsq(8), 1.0),
        "twn-W2A8": ("TWN", "W2A8", TWN(act_bits=8, finetune=ft), 1.0),
        "dorefa-W2A8": ("DoReFa", "W2A8", DoReFa(weight_bits=2, act_bits=8, finetune=ft), 1.0),
        "lsq-W2A8": ("LSQ", "W2A8", LSQ(weight_bits=2, act_bits=8, finetune=ft), 1.0),
        "syq-W2A2": ("SYQ", "W2A2", SYQ(weight_bits=2, act_bits=2, finetune=ft), 1.0),
        "tsq-W2A2": ("TSQ", "W2A2", tsq(2), 1.0),
        "twn-W2A2": ("TWN", "W2A2", TWN(act_bits=2, finetune=ft), 1.0),
        "dorefa-W2A2": ("DoReFa", "W2A2", DoReFa(weight_bits=2, act_bits=2, finetune=ft), 1.0),
        "lsq-W2A2": ("LSQ", "W2A2", LSQ(weight_bits=2, act_bits=2, finetune=ft), 1.0),
        "dorefa-W4A4": ("DoReFa", "W4A4", DoReFa(weight_bits=4, act_bits=4, finetune=ft), 1.0),
        "lsq-W4A4": ("LSQ", "W4A4", LSQ(weight_bits=4, act_bits=4, finetune=ft), 1.0),
        "inq-W5A32": ("INQ", "W5A32", INQ(weight_bits=5, portions=portions, finetune=step), inc),
        "inq-W3A32": ("INQ", "W3A32", INQ(weight_bits=3, portions=portions, finetune=step), inc),
    }


#: The order cells run in (the issue's targets first), when --cells is not given.
PRIORITY = ("syq-W2A8", "twn-W2A32", "elq-W2A32", "tsq-W2A2", "dorefa-W2A2", "inq-W5A32", "inq-W3A32", "syq-W1A8",
            "lsq-W2A2", "lsq-W2A8", "syq-W2A32", "syq-W2A2", "dorefa-W2A8", "tsq-W2A8", "twn-W2A8", "twn-W2A2",
            "lsq-W4A4", "dorefa-W4A4", "syq-W1A32", "bwn-W1A32", "elq-W1A32", "dorefa-W1A32", "tsq-W2A32",
            "dorefa-W2A32", "lsq-W2A32")
QUICK_CELLS = ("syq-W2A8", "twn-W2A32", "elq-W2A32", "tsq-W2A2", "dorefa-W2A2", "lsq-W2A2", "inq-W5A32")


def _load_reference(name: str, bundle, quick: bool, seed: int):
    settings = QUICK_REFERENCE if quick else REFERENCE[name]
    legacy = cache_dir() / (f"{name}-{bundle.name}-e{settings['epochs']}-lr{settings['lr']}-b{settings['batch_size']}"
                            f"-sgd-s{seed}.cnz")
    if legacy.exists() and not quick:  # trained by an earlier version of pretrained() (same settings)
        return cn.pack.load(legacy), str(legacy.name)
    model = pretrained(name, bundle, seed=seed, **settings)
    return model, "pretrained(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"


def _accuracy(model, bundle) -> float:
    return float(cn.train.evaluate(model, bundle)["accuracy"])


def _cache(model_name: str, data_name: str, epochs: int, subset: int | None, seed: int) -> Path:
    return cache_dir() / f"lowbit-{model_name}-{data_name}-e{epochs}-sub{subset or 0}-s{seed}.json"


def _model_path(model_name: str, data_name: str, cid: str, args) -> Path:
    folder = cache_dir() / "lowbit-models"
    folder.mkdir(exist_ok=True)
    return folder / f"{model_name}-{data_name}-{cid}-e{args.epochs}-sub{args.train_subset or 0}-s{args.seed}.cnz"


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_model(name: str, bundle, args) -> None:
    seed = args.seed
    path = _cache(name, bundle.name, args.epochs, args.train_subset, seed)
    done = _read(path)
    ref, ref_source = _load_reference(name, bundle, args.quick, seed)
    ref.eval()
    train_bundle = bundle if not args.train_subset else dataclasses.replace(
        bundle, train=bundle.train.subset(args.train_subset, seed=seed))
    if "float" not in done:
        row = {"model": name, "method": "float", "setting": "W32A32", "accuracy": _accuracy(ref, bundle),
               "packed_bytes": int(cn.pack.packed_size(ref)), "train_seconds": 0.0, "reference": ref_source}
        row["int_accuracy"] = _accuracy(_int8(ref, bundle), bundle)
        done["float"] = row
        atomic_write_text(path, json.dumps(done, indent=1))
    start = time.time()
    todo = cells(args.epochs, seed)
    wanted = args.cells.split(",") if args.cells else (QUICK_CELLS if args.quick else list(PRIORITY))
    for cid in wanted:
        if cid in done:
            continue
        if (time.time() - start) / 60 > args.budget_minutes:
            print(f"budget of {args.budget_minutes} min used; run again to continue", flush=True)
            break
        method, setting, cfg, fraction = todo[cid]
        cell_bundle = train_bundle if fraction == 1.0 else dataclasses.replace(
            train_bundle, train=train_bundle.train.subset(int(round(fraction * len(train_bundle.train))), seed=seed))
        print(f"[{name}] {cid} ...", flush=True)
        torch.manual_seed(seed)
        t0 = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            small = cn.compress(copy.deepcopy(ref), cfg, data=cell_bundle).eval()
        secs = time.time() - t0
        row = {"model": name, "method": method, "setting": setting, "cell": cid, "epochs": args.epochs,
               "train_images": len(cell_bundle.train),
               "weight_bits": cfg.weight_bits, "act_bits": cfg.act_bits, "accuracy": _accuracy(small, bundle),
               "packed_bytes": int(cn.pack.packed_size(small)), "train_seconds": round(secs, 1)}
        if cfg.act_bits is not None and cfg.act_bits <= 8:
            try:
                im = to_integer(small, train_bundle)
                row["int_accuracy"] = _accuracy(im, bundle)
            except cn.errors.CompactnnError as err:
                row["int_error"] = str(err)
        cn.pack.save(small, _model_path(name, bundle.name, cid, args))
        done[cid] = row
        atomic_write_text(path, json.dumps(done, indent=1))
        print(f"  accuracy {row['accuracy']:.4f} ({secs:.0f} s)", flush=True)


def _int8(ref, bundle):
    return cn.compress(ref, IntegerOnly(mode="calibrate", calibration_batches=8), data=bundle)


def timing(name: str, bundle, args) -> None:
    """Batch-256 time of each A8 model's integer form against the int8 model of the integer-only method (calibrated
    from the same float reference), in ``--rounds`` alternating rounds; the median of each, and of the ratios."""
    import statistics

    path = _cache(name, bundle.name, args.epochs, args.train_subset, args.seed)
    done = _read(path)
    ref, _ = _load_reference(name, bundle, args.quick, args.seed)
    base = _int8(ref.eval(), bundle)
    train_bundle = bundle if not args.train_subset else dataclasses.replace(
        bundle, train=bundle.train.subset(args.train_subset, seed=args.seed))
    models = {cid: to_integer(cn.pack.load(_model_path(name, bundle.name, cid, args)), train_bundle)
              for cid, r in done.items() if cid != "float" and r.get("act_bits") == 8 and "int_error" not in r}
    times: dict[str, list[float]] = {cid: [] for cid in ["float", *models]}
    for r in range(args.rounds + 1):  # round 0 warms up (native kernels, allocator) and is not recorded
        for cid, m in [("float", base), *models.items()]:
            t = measure_latency(m, bundle.input_shape, batch_sizes=(256,), repeats=args.repeats)[256]
            if r:
                times[cid].append(t)
    for cid, ts in times.items():
        done[cid]["int_b256_ms"] = statistics.median(ts)
        if cid != "float":
            done[cid]["int_time_ratio"] = statistics.median(t / b for t, b in zip(ts, times["float"]))
    atomic_write_text(path, json.dumps(done, indent=1))


def collect(models: list[str], bundle_name: str, args) -> list[dict]:
    """Every cached row for ``models`` (all epoch/subset settings found, this seed), float reference first."""
    rows = []
    order = list(cells(args.epochs, args.seed))
    for name in models:
        for path in sorted(cache_dir().glob(f"lowbit-{name}-{bundle_name}-e*-sub*-s{args.seed}.json")):
            done = _read(path)
            if "float" not in done:
                continue
            ref = done["float"]
            if not any(r["model"] == name and r["method"] == "float" for r in rows):
                rows.append({**ref, "drop": 0.0, "ratio": 1.0})
            protocol = path.stem.split(f"{bundle_name}-")[1].rsplit("-s", 1)[0]  # e.g. e1-sub12000
            for cid in sorted((c for c in done if c != "float"), key=order.index):
                r = dict(done[cid])
                r["protocol"] = protocol
                r["drop"] = round(100 * (ref["accuracy"] - r["accuracy"]), 2)
                r["ratio"] = ref["packed_bytes"] / r["packed_bytes"]
                rows.append(r)
    return rows


def plot(rows: list[dict]):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    colors = {"float": "k", "SYQ": "tab:blue", "ELQ": "tab:green", "TSQ": "tab:red", "INQ": "tab:purple",
              "BWN": "tab:gray", "TWN": "tab:olive", "DoReFa": "tab:orange", "LSQ": "tab:cyan"}
    markers = {"W32A32": "*", "W1A32": "v", "W1A8": "<", "W2A32": "o", "W2A8": "s", "W2A2": "D", "W4A4": "^",
               "W5A32": "P", "W3A32": "X"}
    for ax, model in zip(axes[0], models):
        for r in rows:
            if r["model"] != model:
                continue
            ax.scatter(r["packed_bytes"] / 1024, 100 * r["accuracy"], c=colors.get(r["method"], "k"),
                       marker=markers.get(r["setting"], "o"), s=60)
        ax.set_xscale("log")
        ax.set_xlabel("packed file (KiB, log)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{model}, Fashion-MNIST")
        ax.grid(alpha=0.3)
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colors.items()]
        handles += [Line2D([], [], color="k", marker=mk, ls="", label=s) for s, mk in markers.items()]
        ax.legend(handles=handles, fontsize=7, ncol=2)
    fig.tight_layout()
    return lambda fh: fig.savefig(fh, format="png", dpi=110)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet5", help="comma-separated: lenet5, resnet20")
    p.add_argument("--cells", default="", help="comma-separated cell ids (default: all)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs of every method")
    p.add_argument("--train-subset", type=int, default=0, help="train on this many images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement")
    p.add_argument("--budget-minutes", type=float, default=7.0, help="start no new cell after this many minutes")
    p.add_argument("--report-only", action="store_true", help="only rewrite the results from the cache")
    p.add_argument("--timing", action="store_true", help="time the A8 models' integer forms against int8 (cached)")
    p.add_argument("--rounds", type=int, default=5, help="alternating timing rounds")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.epochs = 1
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    models = [m for m in args.models.split(",") if m]
    if not args.report_only:
        for name in models:
            timing(name, bundle, args) if args.timing else run_model(name, bundle, args)
    rows = collect(["lenet5", "resnet20"], bundle.name, args)
    columns = ["model", "method", "setting", "epochs", "train_images", "accuracy", "drop", "packed_bytes", "ratio",
               "train_seconds",
               "int_accuracy", "int_b256_ms", "int_time_ratio"]
    notes = NOTES + "\n" + verdicts(rows)
    write_results("lowbit", args.out, rows, columns,
                  "Low-bit quantization on Fashion-MNIST", notes, plot(rows))


NOTES = """
Protocol: each row starts from the float reference and trains `epochs` epochs over `train_images` training images
(Adam 1e-3, cosine, batch 128, no weight decay); every method of one protocol makes the same number of optimizer
steps (INQ/ELQ: one epoch over a third of the images after each of their three partial steps; TSQ: its fine-tune
after the layer fits; at >= 3 epochs TSQ spends a third in code learning). Accuracy on the full test set (10,000).
`drop` in points; `ratio` = the float model's packed bytes / the low-bit model's (first and last layers float,
included); `int_accuracy` = the integer engine after `compactnn.quantize.lowbit.to_integer` (activations <= 8 bits;
float row: the int8 model of the integer-only method, calibrated); `int_b256_ms` = batch-256 time of the integer form
(A8 rows; median of alternating rounds) and `int_time_ratio` its median ratio to the int8 model in the same rounds.

LeNet-5 (Caffe) has one ReLU, after fc1: its only quantized activation is the input of the float last layer, so the
A-bits of LeNet-5 rows barely matter; ResNet-20 (ReLU after every conv) is where act_bits bite.

Commands (each under `flock /tmp/cpu.lock`; the CPU was shared by 9 agents, so budgets are short):

    python benchmarks/lowbit.py --models lenet5 --budget-minutes 6                       # e3-sub0 rows
    python benchmarks/lowbit.py --models lenet5 --epochs 1 --train-subset 12000 --budget-minutes 6.5   # e1-sub12000
    python benchmarks/lowbit.py --report-only --epochs 1
"""


def verdicts(rows: list[dict]) -> str:
    """The issue's targets judged on the rows present (per model and protocol); missing ones said so."""
    lines = ["## Targets", ""]
    for model in ("lenet5", "resnet20"):
        ref = next((r for r in rows if r["model"] == model and r["method"] == "float"), None)
        protos = sorted({r["protocol"] for r in rows if r["model"] == model and "protocol" in r})
        if ref is None or not protos:
            lines.append(f"- {model}: not measured (no CPU time left for it in this session).")
            continue
        for proto in protos:
            got = {r["cell"]: r for r in rows if r["model"] == model and r.get("protocol") == proto}

            def acc(c):
                return got[c]["accuracy"] if c in got else None

            def drop(c):
                return 100 * (ref["accuracy"] - got[c]["accuracy"]) if c in got else None

            missing: list[str] = []

            def say(text, ok):
                if ok is None:
                    missing.append(text.split(" (")[0])
                else:
                    lines.append(f"- {model} {proto}: {text}: " + ("held" if ok else "did not hold"))

            d = drop("syq-W2A8")
            say(f"SYQ ternary W2A8 within 1.0 point of float ({'-' if d is None else f'{d:+.2f}'})",
                None if d is None else d <= 1.0)
            d = drop("syq-W1A8")
            say(f"SYQ binary W1A8 within 2.5 points ({'-' if d is None else f'{d:+.2f}'})",
                None if d is None else d <= 2.5)
            d = drop("tsq-W2A2")
            say(f"TSQ W2A2 within 2.0 points ({'-' if d is None else f'{d:+.2f}'})", None if d is None else d <= 2.0)
            a, b = acc("tsq-W2A2"), acc("dorefa-W2A2")
            say(f"TSQ W2A2 better than DoReFa W2A2 ({a} vs {b})", None if a is None or b is None else a > b)
            for bits in ("W2A32", "W1A32"):
                a, b = acc(f"elq-{bits}"), acc(f"{'twn' if bits == 'W2A32' else 'bwn'}-{bits}")
                say(f"ELQ {bits} >= {'TWN' if bits == 'W2A32' else 'BWN'} ({a} vs {b})",
                    None if a is None or b is None else a >= b)
            d = drop("inq-W5A32")
            say(f"INQ 5-bit no loss, <= 0.2 points ({'-' if d is None else f'{d:+.2f}'})",
                None if d is None else d <= 0.2)
            d = drop("inq-W3A32")
            say(f"INQ 3-bit within 1 point ({'-' if d is None else f'{d:+.2f}'})", None if d is None else d <= 1.0)
            tern = [r for c, r in got.items() if c.split("-")[0] in ("syq", "twn", "elq", "tsq") and "W2" in c]
            if tern:
                worst = min(r["ratio"] for r in tern)
                say(f"ternary packed file >= 10x smaller than fp32 (smallest ratio {worst:.1f}x)", worst >= 10)
            a8 = [r for r in got.values() if r.get("act_bits") == 8]
            if a8:
                gaps = [abs(r["accuracy"] - r["int_accuracy"]) * 100 for r in a8 if "int_accuracy" in r]
                say(f"A8 models convert, integer engine within 0.2 points of fake-quant (largest gap "
                    f"{max(gaps):.2f})" if gaps else "A8 conversion", (max(gaps) <= 0.2) if gaps else False)
                ratios = [r["int_time_ratio"] for r in a8 if "int_time_ratio" in r]
                say(f"A8 integer form no slower than int8 at batch 256 (median ratios "
                    f"{', '.join(f'{x:.2f}' for x in ratios) or '-'})", (max(ratios) <= 1.05) if ratios else None)
            for setting in ("W2A2", "W2A8", "W2A32"):
                lsq = acc(f"lsq-{setting}")
                if lsq is None:
                    continue
                behind = [f"{c.split('-')[0].upper()} {100 * (lsq - r['accuracy']):+.2f}" for c, r in got.items()
                          if r["setting"] == setting and r["method"] in ("SYQ", "ELQ", "TSQ")
                          and r["accuracy"] < lsq]
                if behind:
                    lines.append(f"- {model} {proto}: behind LSQ at {setting} (points LSQ leads by): "
                                 + ", ".join(behind))
            if missing:
                lines.append(f"- {model} {proto}: not measured: " + "; ".join(missing))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
