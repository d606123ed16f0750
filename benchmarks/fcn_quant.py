"""Quantized FCNs for gland segmentation (Xu et al., CVPR 2018) on synthetic GlaS-like tiles.

Per seed (tiles, model init, bootstrap and selection): a pool of labelled-to-be tiles and a test set. Rows:

- float FCN trained on every pool tile;
- float FCN on a 50% and a 25% budget, chosen at random or by suggestive annotation (both start from the same
  random sixth of the pool and add a sixth per round);
- INQ-quantized FCNs (power-of-two weights at 5 and 3 bits, activations as in the float model) fine-tuned from
  the float FCN of each suggested set.

Every FCN trains for the same number of optimizer steps whatever its budget (so a small budget is not also a
short training), with Adam and random flips.

Columns: GlaS object F1, object Dice, object Hausdorff (images where it is finite), packed bytes, ratio. Claims
checked on the mean over seeds: suggestive annotation >= random at each budget; quantized >= float on the small
budget (the paper's "quantization reduces overfitting"); packed >= 4x smaller.

    python benchmarks/fcn_quant.py --seeds 0,1,2        # writes docs/results/fcn_quant.{md,json,png}
    python benchmarks/fcn_quant.py --quick --seeds 0    # small pool and few epochs
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import compactnn as cn  # noqa: E402
from common import aggregate, markdown_table, parser, seeds_arg  # noqa: E402
from compactnn.config import FineTune  # noqa: E402
from compactnn.files import atomic_write, atomic_write_text  # noqa: E402
from compactnn.segment import evaluate_fcn, instances, random_selection, seg_loss, suggest, synthetic_glands  # noqa: E402
from compactnn.segment.fcn import predict, train_fcn  # noqa: E402

COLUMNS = ["setting", "labels", "f1", "dice", "hausdorff", "packed_bytes", "ratio", "seconds"]


def settings(quick: bool) -> dict:
    if quick:
        return dict(pool=24, test=12, size=48, width=8, steps=60, rounds_models=2, inq_steps=15)
    return dict(pool=48, test=32, size=64, width=16, steps=240, rounds_models=4, inq_steps=60)


def epochs(steps: int, images: int, batch: int = 8) -> int:
    """Epochs giving about ``steps`` optimizer steps on ``images`` tiles: every budget trains as long (in steps)."""
    return max(1, -(-steps * batch // images))


def packed(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        cn.pack.save(model, Path(tmp) / "m.cnz")
        return os.path.getsize(Path(tmp) / "m.cnz")


def select(x, y, budget: int, step: int, how: str, s: dict, seed: int) -> list[int]:
    labelled = list(np.random.default_rng(seed).choice(len(x), size=step, replace=False))
    round_ = 0
    while len(labelled) < budget:
        batch = min(step, budget - len(labelled))
        if how == "random":
            labelled += random_selection(len(x), labelled, batch, seed=seed * 100 + round_)
        else:
            labelled += suggest(x, y, labelled, batch, models=s["rounds_models"], candidates=2 * batch,
                                epochs=epochs(s["steps"] // 2, len(labelled)), width=max(4, s["width"] // 2),
                                seed=seed * 100 + round_)
        round_ += 1
    return sorted(int(i) for i in labelled)


def inq(model, x, y, bits: int, s: dict):
    loader = DataLoader(TensorDataset(torch.tensor(x), torch.tensor(y).long()), batch_size=8, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    config = cn.quantize.INQ(weight_bits=bits, finetune=FineTune(epochs=epochs(s["inq_steps"], len(x)), lr=5e-4,
                                                                  optimizer="adam", loss=seg_loss))
    return cn.compress(model, config, data=loader)


def run_seed(seed: int, s: dict) -> tuple[list[dict], dict]:
    x, y = synthetic_glands(s["pool"], size=s["size"], seed=1000 + seed)
    xt, yt = synthetic_glands(s["test"], size=s["size"], seed=2000 + seed)
    rows, models = [], {}

    def add(setting: str, idx: list[int], model, start: float) -> None:
        scores = evaluate_fcn(model, xt, yt)
        rows.append({"seed": seed, "setting": setting, "labels": len(idx), **scores, "packed_bytes": packed(model),
                     "seconds": round(time.perf_counter() - start, 1)})
        models[setting] = model

    start = time.perf_counter()
    everything = list(range(len(x)))
    add("float, all labels", everything,
        train_fcn(x, y, epochs=epochs(s["steps"], len(x)), width=s["width"], seed=seed), start)
    step = len(x) // 6
    for share, budget in (("50%", len(x) // 2), ("25%", len(x) // 4)):
        for how in ("random", "suggestive"):
            start = time.perf_counter()
            idx = select(x, y, budget, step, how, s, seed)
            net = train_fcn(x[idx], y[idx], epochs=epochs(s["steps"], len(idx)), width=s["width"], seed=seed)
            add(f"float, {share} {how}", idx, net, start)
            if how == "suggestive":
                for bits in (5, 3):
                    start = time.perf_counter()
                    add(f"INQ {bits}-bit, {share} suggestive", idx, inq(net, x[idx], y[idx], bits, s), start)
    full = rows[0]["packed_bytes"]
    for r in rows:
        r["ratio"] = round(full / r["packed_bytes"], 2)
    example = {"image": xt[0], "gt": yt[0],
               "float": instances(predict(models["float, 25% suggestive"], xt[:1])[0]),
               "quantized": instances(predict(models["INQ 5-bit, 25% suggestive"], xt[:1])[0])}
    return rows, example


def claims(table: list[dict]) -> list[str]:
    def mean(setting: str, value: str):
        for r in table:
            if r["setting"] == setting:
                return r.get(f"{value}_mean"), r.get(f"{value}_std")
        return None, None

    out = []
    for share in ("50%", "25%"):
        (a, sa), (b, sb) = mean(f"float, {share} suggestive", "f1"), mean(f"float, {share} random", "f1")
        if a is not None and b is not None:
            out.append(f"- suggestive >= random at {share} (object F1 {a:.3f} ± {sa:.3f} vs {b:.3f} ± {sb:.3f}): "
                       f"**{'held' if a >= b else 'not held'}**" + (" (within the seed std)" if abs(a - b) <= max(sa, sb)
                                                                     else ""))
    for bits in (5, 3):
        (q, sq), (f, sf) = mean(f"INQ {bits}-bit, 25% suggestive", "f1"), mean("float, 25% suggestive", "f1")
        if q is not None and f is not None:
            out.append(f"- INQ {bits}-bit >= float on the 25% budget (object F1 {q:.3f} ± {sq:.3f} vs {f:.3f} ± "
                       f"{sf:.3f}): **{'held' if q >= f else 'not held'}**"
                       + (" (within the seed std)" if abs(q - f) <= max(sq, sf) else ""))
    r, _ = mean("INQ 5-bit, 25% suggestive", "ratio")
    if r is not None:
        out.append(f"- packed >= 4x smaller than the float FCN (5-bit: {r:.2f}x): **{'held' if r >= 4 else 'not held'}**")
    return out


def write(out: Path, rows: list[dict], example: dict | None, command: str) -> None:
    table = aggregate(rows, ["setting"], ["labels", "f1", "dice", "hausdorff", "packed_bytes", "ratio", "seconds"])
    seeds = sorted({r["seed"] for r in rows})
    md = ["# Quantized FCNs for gland segmentation (Xu et al., CVPR 2018), synthetic GlaS-like tiles", "",
          f"Made by `{command}` (torch {torch.__version__}); {len(seeds)} seed(s): {seeds}. Mean ± std over seeds.",
          "", "## Claims, judged on the mean", "", *claims(table), "",
          markdown_table(table, ["setting", "seeds", "labels", "f1", "dice", "hausdorff", "packed_bytes", "ratio",
                                 "seconds"]), "",
          "Hausdorff is averaged over the test tiles where it is finite (a tile where no gland was found has none).",
          "Transposed convs and the first and last layers stay float in the INQ models (INQ's default).", "",
          "![fcn_quant](fcn_quant.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "fcn_quant.json", json.dumps(rows, indent=1) + "\n")
    atomic_write_text(out / "fcn_quant.md", "\n".join(md))
    if example is not None:
        fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
        panels = [("image", np.transpose(example["image"], (1, 2, 0))), ("ground truth", example["gt"]),
                  ("float FCN (25% suggestive)", example["float"]), ("INQ 5-bit", example["quantized"])]
        for ax, (title, img) in zip(axes, panels):
            ax.imshow(img, cmap=None if img.ndim == 3 else "tab20", interpolation="nearest")
            ax.set_title(title, fontsize=8)
            ax.axis("off")
        fig.tight_layout()
        atomic_write(out / "fcn_quant.png", lambda fh: fig.savefig(fh, format="png", dpi=110))
        plt.close(fig)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = settings(args.quick)
    store = args.out / "fcn_quant.json"
    rows = [r for r in (json.loads(store.read_text()) if store.exists() and not args.quick else [])
            if r["seed"] not in args.seeds]
    example = None
    for seed in args.seeds:
        new, ex = run_seed(seed, s)
        rows += new
        example = example or ex
        for r in new:
            print({k: r[k] for k in COLUMNS}, flush=True)
    seeds = ",".join(str(v) for v in sorted({r["seed"] for r in rows}))
    write(args.out, rows, example, f"python benchmarks/fcn_quant.py{' --quick' if args.quick else ''} --seeds {seeds}")


if __name__ == "__main__":
    main()
