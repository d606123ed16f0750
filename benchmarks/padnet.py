"""PAD-Net benchmark on the synthetic scenes: single-task, plain multi-task, PAD-Net A/B/C and C's ablations.

Same encoder, same decoders, same data, same epochs for every row; three seeds (model initialisation and batch order;
the scenes are fixed). Runs in resumable parts so each locked job stays short: every finished (row, seed) run is
cached in ``docs/results/padnet_runs.json`` (keyed by the settings) and its model in ``runs/padnet/``; a rerun skips
cached runs. Parts::

    flock /tmp/cpu.lock python benchmarks/padnet.py all --budget 420   # repeat until it writes the report
    flock /tmp/cpu.lock python benchmarks/padnet.py train --budget 420 # only the training runs
    flock /tmp/cpu.lock python benchmarks/padnet.py compress            # magnitude pruning of PAD-Net C, seed 0
    flock /tmp/cpu.lock python benchmarks/padnet.py int8                # IntegerOnly(mixed=True) of PAD-Net C, seed 0
    python benchmarks/padnet.py report                                  # docs/results/padnet.{md,json,png}
    python benchmarks/padnet.py all --quick                             # everything, tiny, into runs/padnet-quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

import compactnn as cn  # noqa: E402
from compactnn import pack  # noqa: E402
from compactnn.files import atomic_savefig, atomic_write_text  # noqa: E402
from compactnn.report.macs import count_macs  # noqa: E402
from compactnn.tasks import TaskWeights, evaluate_dense, fit_dense, predict_dense  # noqa: E402

RESULTS = ROOT / "docs" / "results"
ROWS = ["single-depth", "single-semantics", "multi-task", "A", "B", "C",
        "C-no-depth", "C-no-normals", "C-no-contours", "C-no-semantics"]
LABELS = {"single-depth": "single-task depth", "single-semantics": "single-task semantics",
          "multi-task": "plain multi-task", "A": "PAD-Net A (concat)", "B": "PAD-Net B (messages)",
          "C": "PAD-Net C (gated messages)", "C-no-depth": "C w/o inter. depth",
          "C-no-normals": "C w/o inter. normals", "C-no-contours": "C w/o inter. contours",
          "C-no-semantics": "C w/o inter. semantics"}
FULL = dict(n_train=640, n_test=200, size=48, epochs=6, batch_size=32, lr=3e-3, seeds=[0, 1, 2])
LARGE = dict(n_train=1280, n_test=200, size=48, epochs=10, batch_size=32, lr=3e-3, seeds=[0, 1, 2])  # main rows only
QUICK = dict(n_train=48, n_test=16, size=32, epochs=1, batch_size=16, lr=3e-3, seeds=[0])
METRICS = ["rmse", "rel", "log10", "delta1", "delta2", "delta3", "pixel_acc", "miou"]


def settings_key(s: dict) -> str:
    body = json.dumps({k: s[k] for k in ("n_train", "n_test", "size", "epochs", "batch_size", "lr")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:10]


def build(row: str, s: dict, seed: int):
    variant = row.split("-no-")[0] if row.startswith("C-no-") else row
    model = cn.models.create("padnet", variant=variant, input_shape=(3, s["size"], s["size"]), num_classes=6,
                             seed=seed)
    weights = TaskWeights().without(row.split("-no-")[1]) if "-no-" in row else TaskWeights()
    return model, weights


class Cache:
    def __init__(self, path: Path):
        self.path = path
        self.runs = json.loads(path.read_text()) if path.is_file() else {}

    def get(self, key):
        return self.runs.get(key)

    def put(self, key, value):
        self.runs[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self.runs, indent=1, sort_keys=True) + "\n")


def load_data(s: dict):
    return cn.data.load("scenes", n_train=s["n_train"], n_test=s["n_test"], size=s["size"], seed=0)


def part_train(s: dict, out: Path, models: Path, budget: float, rows: list[str]) -> bool:
    cache = Cache(out / "padnet_runs.json")
    key = settings_key(s)
    groups = [[r for r in rows if "-no-" not in r], [r for r in rows if "-no-" in r]]  # main rows first
    todo = [(r, seed) for group in groups for seed in s["seeds"] for r in group
            if cache.get(f"{key}|{r}|{seed}") is None]
    if not todo:
        print("all runs done")
        return True
    start = time.time()
    data = load_data(s)
    print(f"data ready in {time.time() - start:.1f} s; {len(todo)} runs to do", flush=True)
    for row, seed in todo:
        elapsed = time.time() - start
        done = [v["seconds"] for v in cache.runs.values() if isinstance(v, dict) and v.get("settings") == key]
        guess = statistics.fmean(done) if done else 60.0
        if elapsed + guess > budget:
            print(f"budget reached after {elapsed:.0f} s; rerun to continue", flush=True)
            return False
        model, weights = build(row, s, seed)
        t0 = time.time()
        fit_dense(model, data, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=seed,
                  weights=weights, quiet=True)
        seconds = time.time() - t0
        metrics = evaluate_dense(model, data)
        models.mkdir(parents=True, exist_ok=True)
        pack.save(model.eval(), models / f"{key}-{row}-s{seed}.cnz", level=3)
        cache.put(f"{key}|{row}|{seed}", {"settings": key, "row": row, "seed": seed, "seconds": round(seconds, 1),
                                          "params": sum(p.numel() for p in model.parameters()), **metrics})
        print(f"{row:16s} seed {seed}: rmse {metrics.get('rmse', float('nan')):.3f} "
              f"miou {metrics.get('miou', float('nan')):.3f} ({seconds:.0f} s)", flush=True)
    print("all runs done")
    return True


def _masks_of(model):
    from compactnn.layers import weight_layers

    layers = weight_layers(model)
    return layers, {n: m.weight.detach() != 0 for n, m in layers.items()}


def ensure_model(s: dict, out: Path, models: Path, row: str, seed: int = 0) -> Path:
    """The saved model of a (row, seed) run; retrained with the same settings and seed when the file is gone
    (runs/ is not in the repository). Training is seeded, but float reductions differ with the thread count and
    the CPU, so a retrained model is close to, not identical with, the cached run (the difference is printed);
    rows computed from it (int8) also record the metrics of the float model they started from."""
    key = settings_key(s)
    path = models / f"{key}-{row}-s{seed}.cnz"
    if path.is_file():
        return path
    cached = Cache(out / "padnet_runs.json").get(f"{key}|{row}|{seed}")
    data = load_data(s)
    model, weights = build(row, s, seed)
    fit_dense(model, data, epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, weights=weights,
              quiet=True)
    metrics = evaluate_dense(model.eval(), data)
    models.mkdir(parents=True, exist_ok=True)
    pack.save(model, path, level=3)
    diff = ", ".join(f"{m} {metrics[m]:.4f} (cached {cached[m]:.4f})" for m in ("rmse", "miou")
                     if cached and m in cached and m in metrics)
    print(f"retrained {row} seed {seed}" + (f": {diff}" if diff else ""), flush=True)
    return path


def part_int8(s: dict, out: Path, models: Path) -> None:
    """Integer-only int8 of PAD-Net C (seed 0), post-training: ``IntegerOnly(mixed=True)``. The whole model does not
    convert (the distillation modules take several tensors and stay float); every part that does, encoder, heads
    and decoders with their transposed convs, runs in the integer engine with a quantize/dequantize at its
    borders."""
    import warnings

    from compactnn.quantize.intonly.method import IntegerOnly
    from compactnn.quantize.intonly.model import IntegerModel

    cache = Cache(out / "padnet_runs.json")
    key = settings_key(s)
    src = ensure_model(s, out, models, "C")
    data = load_data(s)
    base = pack.load(src).eval()
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = cn.compress(base, IntegerOnly(mixed=True), data=data)
    parts = [n for n, m in q.named_modules() if isinstance(m, IntegerModel)]
    int_weights = sum(int(b.numel()) for n, m in q.named_modules() if isinstance(m, IntegerModel)
                      for bn, b in m.named_buffers() if b.dtype == torch.int8)
    all_weights = sum(int(m.weight.numel()) for m in base.modules()
                      if isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() > 1)
    path = models / f"{key}-C-s0-int8-mixed.cnz"
    pack.save(q, path, level=3)
    back = pack.load(path).eval()
    x = data.test.x[:8]
    with torch.no_grad():
        a, b = back(x), q(x)
    same = all(torch.equal(a[k], b[k]) for k in a) if isinstance(a, dict) else bool(torch.equal(a, b))
    metrics = evaluate_dense(q, data)
    float_metrics = evaluate_dense(base, data)
    skipped = getattr(q, "compactnn_skipped", {})
    cache.put(f"{key}|compress|int8-mixed", {"settings": key, "bytes": path.stat().st_size, **metrics,
                                              "integer_parts": len(parts), "float_layers": sorted(skipped),
                                              "int8_weight_share": int_weights / all_weights,
                                              "reload_identical": same, "seconds": round(time.time() - t0, 1),
                                              "float": float_metrics, "float_bytes": src.stat().st_size})
    print(f"int8 mixed: {len(parts)} integer parts, {len(skipped)} float layers, {int_weights / all_weights:.1%} of "
          f"weights int8; rmse {metrics['rmse']:.4f} miou {metrics['miou']:.4f}; {path.stat().st_size:,} bytes",
          flush=True)


def part_compress(s: dict, out: Path, models: Path, sparsities=(0.5, 0.75, 0.9)) -> None:
    from compactnn.prune import MagnitudePrune
    from compactnn.prune.masks import masked

    cache = Cache(out / "padnet_runs.json")
    key = settings_key(s)
    src = ensure_model(s, out, models, "C")
    data = load_data(s)
    base = pack.load(src).eval()
    for sp in sparsities:
        ck = f"{key}|compress|magnitude-{sp}"
        if cache.get(ck) is not None:
            continue
        t0 = time.time()
        pruned = cn.compress(base, MagnitudePrune(sparsity=sp, finetune=None))
        oneshot = evaluate_dense(pruned, data)
        layers, masks = _masks_of(pruned)
        with masked(layers, masks):
            fit_dense(pruned, data, epochs=max(1, s["epochs"] // 5), batch_size=s["batch_size"], lr=s["lr"] / 10,
                      seed=0, quiet=True)
        tuned = evaluate_dense(pruned.eval(), data)
        path = models / f"{key}-C-s0-magnitude-{sp}.cnz"
        pack.save(pruned, path, level=3)
        back = pack.load(path).eval()
        x = data.test.x[:8]
        with torch.no_grad():
            same = bool(torch.equal(back(x), pruned(x)))
        zeros = sum(int((m.weight == 0).sum()) for m in layers.values())
        total = sum(m.weight.numel() for m in layers.values())
        cache.put(ck, {"settings": key, "sparsity": sp, "oneshot": oneshot, "finetuned": tuned,
                       "finetune_epochs": max(1, s["epochs"] // 5), "bytes": path.stat().st_size,
                       "zero_fraction": zeros / total, "reload_identical": same, "seconds": round(time.time() - t0, 1)})
        print(f"magnitude {sp}: rmse {tuned['rmse']:.3f} miou {tuned['miou']:.3f} bytes {path.stat().st_size}",
              flush=True)
    ck = f"{key}|compress|dense"
    if cache.get(ck) is None:
        cache.put(ck, {"settings": key, "bytes": src.stat().st_size, **evaluate_dense(base, data)})


def _agg(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def part_report(s: dict, out: Path, models: Path, name: str) -> None:
    cache = Cache(out / "padnet_runs.json")
    key = settings_key(s)
    runs = [v for k, v in cache.runs.items() if k.startswith(key + "|") and "row" in v]
    table = []
    for row in ROWS:
        rs = [r for r in runs if r["row"] == row]
        if not rs:
            continue
        entry = {"row": row, "model": LABELS[row], "seeds": sorted(r["seed"] for r in rs), "params": rs[0]["params"],
                 "seconds": round(statistics.fmean(r["seconds"] for r in rs), 1)}
        for m in METRICS:
            xs = [r[m] for r in rs if m in r]
            if xs:
                entry[f"{m}_mean"], entry[f"{m}_std"] = _agg(xs)
                entry[f"{m}_seeds"] = xs
        table.append(entry)
    by = {e["row"]: e for e in table}
    try:
        macs = {row: sum(count_macs(build(row, s, 0)[0].eval(), (3, s["size"], s["size"])).values())
                for row in by}
    except Exception as e:  # MACs are informative only
        print(f"MAC count skipped: {e}")
        macs = {}

    def cell(e, m):
        if f"{m}_mean" not in e:
            return "—"
        return f"{e[m + '_mean']:.3f} ± {e[m + '_std']:.3f}"

    lines = ["| model | params | MACs | RMSE ↓ | rel ↓ | log10 ↓ | δ1 ↑ | pixel acc ↑ | mIoU ↑ | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['model']} | {e['params']:,} | {macs.get(e['row'], 0) / 1e6:.1f}M | {cell(e, 'rmse')} | "
                     f"{cell(e, 'rel')} | {cell(e, 'log10')} | {cell(e, 'delta1')} | {cell(e, 'pixel_acc')} | "
                     f"{cell(e, 'miou')} | {e['seconds']:.0f} |")
    claims = []

    def compare(a, b, metric, lower_better):
        if a not in by or b not in by or f"{metric}_mean" not in by[a] or f"{metric}_mean" not in by[b]:
            return None
        ea, eb = by[a], by[b]
        diff = (eb[metric + "_mean"] - ea[metric + "_mean"]) * (1 if lower_better else -1)
        noise = max(ea[metric + "_std"], eb[metric + "_std"])
        pairs = list(zip(ea[metric + "_seeds"], eb[metric + "_seeds"]))
        wins = sum((x < y) if lower_better else (x > y) for x, y in pairs)
        if len(pairs) < 2:
            verdict = "one seed: no verdict"
        else:
            verdict = "holds" if diff > noise else ("better, within seed noise" if diff > 0 else "does not hold")
        claims.append({"claim": f"{LABELS[a]} beats {LABELS[b]} on {metric}", "margin": diff, "seed_std": noise,
                       "seed_wins": f"{wins}/{len(pairs)}", "verdict": verdict})
        return verdict

    for other, metric, low in [("multi-task", "rmse", True), ("single-depth", "rmse", True),
                               ("multi-task", "miou", False), ("single-semantics", "miou", False),
                               ("A", "rmse", True), ("A", "miou", False), ("B", "rmse", True), ("B", "miou", False)]:
        compare("C", other, metric, low)
    for task in ("depth", "normals", "contours", "semantics"):
        compare("C", f"C-no-{task}", "rmse", True)
        compare("C", f"C-no-{task}", "miou", False)
    claim_lines = ["| claim | margin (mean) | larger seed std | seeds won | verdict |", "|---|---|---|---|---|"]
    claim_lines += [f"| {c['claim']} | {c['margin']:+.4f} | {c['seed_std']:.4f} | {c['seed_wins']} | {c['verdict']} |"
                    for c in claims]
    comp = [v for k, v in cache.runs.items() if k.startswith(key + "|compress|magnitude")]
    dense = cache.get(f"{key}|compress|dense")
    int8 = cache.get(f"{key}|compress|int8-mixed")
    comp_lines = []
    if comp and dense:
        comp_lines = ["| PAD-Net C seed 0 | zero weights | packed bytes | RMSE | δ1 | pixel acc | mIoU | reload identical |",
                      "|---|---|---|---|---|---|---|---|",
                      f"| dense | 0 | {dense['bytes']:,} | {dense['rmse']:.3f} | {dense['delta1']:.3f} | "
                      f"{dense['pixel_acc']:.3f} | {dense['miou']:.3f} | — |"]
        for c in sorted(comp, key=lambda c: c["sparsity"]):
            for tag, m in (("one-shot", c["oneshot"]), (f"+{c['finetune_epochs']} ep. masked fine-tune",
                                                           c["finetuned"])):
                comp_lines.append(f"| magnitude {c['sparsity']:.0%}, {tag} | {c['zero_fraction']:.1%} | "
                                  f"{c['bytes']:,} | {m['rmse']:.3f} | {m['delta1']:.3f} | {m['pixel_acc']:.3f} | "
                                  f"{m['miou']:.3f} | {c['reload_identical'] if 'fine' in tag else '—'} |")
        if int8:
            f = int8["float"]
            comp_lines.append(f"| dense, the float model of the int8 row | 0 | {int8['float_bytes']:,} | "
                              f"{f['rmse']:.3f} | {f['delta1']:.3f} | {f['pixel_acc']:.3f} | {f['miou']:.3f} | — |")
            comp_lines.append(f"| integer-only int8 (mixed: {int8['int8_weight_share']:.1%} of weights int8) | 0 | "
                              f"{int8['bytes']:,} | {int8['rmse']:.3f} | {int8['delta1']:.3f} | "
                              f"{int8['pixel_acc']:.3f} | {int8['miou']:.3f} | {int8['reload_identical']} |")
    doc = {"settings": {**s, "key": key}, "rows": table, "claims": claims, "compression": {"dense": dense,
                                                                                         "magnitude": comp, "int8_mixed": int8}}
    atomic_write_text(out / f"{name}.json", json.dumps(doc, indent=1) + "\n")
    fig_rows = [r for r in ROWS[:6] if r in by]
    if all((models / f"{key}-{r}-s0.cnz").is_file() for r in fig_rows) or not (out / f"{name}.png").is_file():
        _figure(s, out / f"{name}.png", models, key, fig_rows)
    else:  # runs/ is not in the repository: keep the figure drawn when the models were at hand
        print(f"kept {out / name}.png: the seed-0 models of {', '.join(fig_rows)} are not all in {models}")
    scale = "" if name == "padnet" else " --scale large"
    env = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    md = [f"# PAD-Net on synthetic scenes\n",
          f"Settings: {s['n_train']} train / {s['n_test']} test scenes of {s['size']}x{s['size']} "
          f"(`load('scenes', seed=0)`), {s['epochs']} epochs, batch {s['batch_size']}, Adam lr {s['lr']} cosine, "
          f"seeds {', '.join(map(str, s['seeds']))} (init + batch order), mean ± sample std over seeds ({env}).",
          "Every row has the same encoder and decoders; the ablation rows are PAD-Net C trained with one intermediate "
          "task's loss weight set to 0 (same architecture).\n",
          "Command (each locked part <= 8 min; rerun until it writes this report; finished runs are cached in "
          "`padnet_runs.json`):\n",
          f"```\nflock /tmp/cpu.lock python benchmarks/padnet.py all --budget 420{scale}\n```\n",
          "\n".join(lines), "\n## The paper's claim at this scale\n",
          "A claim *holds* when the difference of means exceeds the larger of the two seed stds; *seeds won* pairs "
          "runs by seed.\n", "\n".join(claim_lines), "\n## Compression of PAD-Net C (seed 0)\n",
          ("Magnitude pruning (`compactnn.prune.MagnitudePrune`, global, one-shot) of every conv weight, then a masked "
           "fine-tune at lr/10 with the multi-task loss; sizes are `pack.save` bytes (zstd level 3). "
           + (_int8_text(int8) if int8 else "Integer-only int8 is not in this run (`padnet.py int8`).") + "\n"
           if comp_lines else
           "Not run at this scale.\n"), "\n".join(comp_lines), "\n## Reading\n", _reading(claims, s),
          f"\n![{name}]({name}.png)\n"]
    atomic_write_text(out / f"{name}.md", "\n".join(md) + "\n")
    print(f"wrote {out / name}.md/.json/.png")


def _int8_text(int8: dict) -> str:
    names = int8["float_layers"]
    return ("Integer-only int8 (`padnet.py int8`): `IntegerOnly(mixed=True)`, post-training calibration, no "
            f"fine-tune, on PAD-Net C seed 0 trained again with the same settings (its float scores are the row "
            f"above it): {int8['integer_parts']} parts run in the integer engine ({int8['int8_weight_share']:.1%} of "
            f"the weights are int8); {len(names)} modules stay float, with a quantize/dequantize at each border: "
            + ", ".join(f"`{n}`" for n in names[:8]) + (", ..." if len(names) > 8 else "")
            + " (the distillation modules take several tensors, which an integer part cannot yet).")


def _reading(claims: list[dict], s: dict) -> str:
    """What the claims table says, in words (generated from the numbers, not written by hand)."""
    held = [c["claim"] for c in claims if c["verdict"] == "holds"]
    within = [c["claim"] for c in claims if c["verdict"].startswith("better")]
    steps = s["epochs"] * -(-s["n_train"] // s["batch_size"])
    text = [f"- Training is short ({steps} Adam steps per run, chosen so that all runs fit the shared CPU); the "
            "models are far from converged, so this tests the paper's claim only at this small budget.",
            f"- Claims that hold (margin above the larger seed std): {'; '.join(held) if held else 'none'}.",
            f"- Better on the mean but within seed noise: {'; '.join(within) if within else 'none'}.",
            "- Everything else in the claims table goes the other way on the mean.",
            "- Ablation rows keep C's architecture and only drop one intermediate loss, so they measure what that "
            "task's supervision adds, not what its branch's capacity adds.",
            "- Pruning: `MagnitudePrune` selects Conv2d/Linear weights only, so the decoders' transposed convs stay "
            "dense; \"zero weights\" is the share of the selected weights."]
    return "\n".join(text) + "\n"


def _figure(s, path: Path, models: Path, key: str, rows: list[str], index: int = 3) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = load_data(dict(s, n_train=8))  # the test scenes do not depend on n_train
    ds = data.test
    x = ds.x[index:index + 1]
    cols = 2 + len(rows)
    fig, ax = plt.subplots(2, cols, figsize=(1.9 * cols, 4.0))
    vmax = float(ds.depth[index].max())
    ax[0, 0].imshow(ds.images(index).permute(1, 2, 0).numpy())
    ax[0, 0].set_title("input", fontsize=8)
    ax[1, 0].imshow(ds.normals[index].permute(1, 2, 0).numpy() * 0.5 + 0.5)
    ax[1, 0].set_title("GT normals", fontsize=8)
    ax[0, 1].imshow(ds.depth[index, 0].numpy(), vmin=0, vmax=vmax, cmap="viridis")
    ax[0, 1].set_title("GT depth", fontsize=8)
    ax[1, 1].imshow(ds.y[index].numpy(), vmin=0, vmax=5, cmap="tab10", interpolation="nearest")
    ax[1, 1].set_title("GT semantics", fontsize=8)
    for j, row in enumerate(rows):
        p = models / f"{key}-{row}-s0.cnz"
        for i in range(2):
            ax[i, 2 + j].axis("off")
        if not p.is_file():
            continue
        pred = predict_dense(pack.load(p).eval(), x)
        if "depth" in pred:
            ax[0, 2 + j].imshow(pred["depth"][0, 0].numpy(), vmin=0, vmax=vmax, cmap="viridis")
        if "semantics" in pred:
            ax[1, 2 + j].imshow(pred["semantics"][0].argmax(0).numpy(), vmin=0, vmax=5, cmap="tab10",
                                interpolation="nearest")
        ax[0, 2 + j].set_title(LABELS[row].replace(" (", "\n("), fontsize=7)
    for a in ax.ravel():
        a.set_xticks([])
        a.set_yticks([])
    fig.suptitle(f"test scene {index}: ground truth and predictions (seed 0); top depth, bottom semantics", fontsize=9)
    fig.tight_layout()
    atomic_savefig(path, fig, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["train", "compress", "int8", "report", "all"], nargs="?", default="all")
    p.add_argument("--quick", action="store_true", help="tiny settings, one seed, results in runs/padnet-quick")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which `train` starts no new run")
    p.add_argument("--rows", default=",".join(ROWS), help="rows to train, comma separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scale", choices=["small", "large"], default="small",
                   help="large: 2x the scenes and 10 epochs, main rows only, into padnet_large.*")
    p.add_argument("--out", type=Path, default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    s = dict(QUICK if a.quick else LARGE if a.scale == "large" else FULL)
    name = "padnet_large" if a.scale == "large" else "padnet"
    if a.scale == "large" and a.rows == ",".join(ROWS):
        a.rows = ",".join(ROWS[:6])
    out = a.out or (ROOT / "runs" / "padnet-quick" if a.quick else RESULTS)
    models = out / "models" if a.out else ROOT / "runs" / ("padnet-quick" if a.quick else "padnet") / "models"
    rows = [r for r in a.rows.split(",") if r]
    bad = sorted(set(rows) - set(ROWS))
    if bad:
        raise SystemExit(f"unknown rows {bad}; valid rows are {', '.join(ROWS)}")
    start = time.time()
    if a.part in ("train", "all"):
        done = part_train(s, out, models, a.budget, rows)
        if a.part == "train" or not done:
            return
        if a.scale == "large":
            part_report(s, out, models, name)
            return
        if time.time() - start > a.budget - 60:
            print("no time left for compress in this part; rerun to continue")
            return
    if a.part in ("compress", "all"):
        part_compress(s, out, models, sparsities=(0.5,) if a.quick else (0.5, 0.75, 0.9))
    if a.part in ("int8", "all"):
        part_int8(s, out, models)
    if a.part in ("report", "all"):
        part_report(s, out, models, name)


if __name__ == "__main__":
    main()
