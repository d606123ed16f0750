"""Deep Compression's pipeline (Han et al. 2016) on Fashion-MNIST: dense -> pruned -> k-means quantized -> packed.

For LeNet-300-100 and LeNet-5, each step's row gives the test accuracy, the parameter and nonzero counts, and the
bytes of the packed ``.cnz`` file (measured with ``os.path.getsize``), with the ratio to the packed dense fp32 model.
Writes docs/results/deep_compression.{md,json,png}. ``--quick`` runs on scikit-learn digits with few epochs.
"""

from __future__ import annotations

import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import compactnn as cn  # noqa: E402
from compactnn.config import FineTune  # noqa: E402
from compactnn.prune import MagnitudePrune  # noqa: E402
from compactnn.quantize import KMeansQuantize  # noqa: E402

from common import parser, write_results  # noqa: E402

# Deep Compression kept 8% of LeNet-300-100's weights and 8% of LeNet-5's; fc layers at 5-6 bits.
SETTINGS = {
    "lenet300": dict(train=dict(epochs=20, lr=0.1, batch_size=128), sparsity=0.92, bits=5,
                     prune_ft=dict(epochs=12, lr=0.02), quant_ft=dict(epochs=4, lr=0.002)),
    # Caffe's LeNet solver uses lr 0.01; at 0.05 with momentum 0.9 training diverged (loss nan) on Fashion-MNIST
    "lenet5": dict(train=dict(epochs=12, lr=0.01, batch_size=128), sparsity=0.92, bits=5,
                   prune_ft=dict(epochs=8, lr=0.005), quant_ft=dict(epochs=3, lr=0.001)),
}
QUICK = dict(train=dict(epochs=30, lr=0.05, batch_size=64), prune_ft=dict(epochs=15, lr=0.02),
             quant_ft=dict(epochs=5, lr=0.005))
COLUMNS = ["model", "data", "step", "settings", "accuracy", "params", "nonzero", "packed_bytes", "ratio", "seconds"]


def measure(model, bundle, step, settings, seconds, name, dense_bytes=None) -> dict:
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    params = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    size = cn.pack.packed_size(model)
    return dict(model=name, data=bundle.name, step=step, settings=settings, accuracy=round(acc, 4), params=params,
                nonzero=nonzero, packed_bytes=size, ratio=round((dense_bytes or size) / size, 2),
                seconds=round(seconds, 1))


def run_model(name: str, bundle, quick: bool) -> list[dict]:
    s = {**SETTINGS[name], **(QUICK if quick else {})}
    torch.manual_seed(0)
    model = cn.models.create(name, data=bundle)
    t = time.perf_counter()
    cn.train.fit(model, bundle, seed=0, **s["train"])
    rows = [measure(model, bundle, "dense fp32", f"{s['train']['epochs']} epochs", time.perf_counter() - t, name)]
    dense = rows[0]["packed_bytes"]

    t = time.perf_counter()
    prune = MagnitudePrune(sparsity=s["sparsity"], schedule="agp", finetune=FineTune(**s["prune_ft"]))
    pruned = cn.compress(model, prune, data=bundle)
    rows.append(measure(pruned, bundle, "pruned", f"keep {1 - s['sparsity']:.0%}, AGP, {s['prune_ft']['epochs']} ep",
                        time.perf_counter() - t, name, dense))

    t = time.perf_counter()
    quant = cn.compress(pruned, KMeansQuantize(bits=s["bits"], finetune=FineTune(**s["quant_ft"])), data=bundle)
    rows.append(measure(quant, bundle, "pruned + quantized", f"{s['bits']}-bit k-means, {s['quant_ft']['epochs']} ep",
                        time.perf_counter() - t, name, dense))
    return rows


def plot(rows: list[dict], path) -> None:
    names = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        sub = [r for r in rows if r["model"] == name]
        bars = ax.bar([r["step"] for r in sub], [r["packed_bytes"] for r in sub], color=["#888", "#4a8", "#36c"])
        for bar, r in zip(bars, sub):
            ax.annotate(f"{r['accuracy']:.2%}\n{r['ratio']:.1f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("packed bytes (log)")
        ax.set_title(f"{name} on {sub[0]['data']}")
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet300,lenet5", help="comma-separated registry names")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    names = args.models.split(",")
    store = args.out / "deep_compression.json"  # rows of models not run now are kept from the last run
    old = json.loads(store.read_text()) if store.exists() else []
    kept = [r for r in old if r["model"] not in names and r["data"] == bundle.name]
    rows = kept + [r for name in names for r in run_model(name, bundle, args.quick)]
    notes = (
        "Each step starts from the previous one. `packed_bytes` is the size of the `.cnz` file that "
        "`compactnn.pack.save` writes (codec chosen per tensor, zstd stage); `ratio` is against the packed dense "
        "fp32 model. Deep Compression reported 40x for LeNet-300-100 and 39x for LeNet-5 on MNIST. "
        "With `--models`, rows of the other models are kept from the previous run of this script."
    )
    write_results("deep_compression", args.out, rows, COLUMNS, "Deep Compression: prune, quantize, pack", notes,
                  lambda path: plot(rows, path))
    for r in rows:
        print({k: r[k] for k in COLUMNS})


if __name__ == "__main__":
    main()
