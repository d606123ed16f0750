"""NISP vs L1-norm filter pruning on ResNet-20 (1-channel, Fashion-MNIST), at the same FLOPs, channels removed.

The trained dense ResNet-20 (``benchmarks/pretrained.py``) is pruned by NISP (Yu et al. 2018) at per-stage ratios
(``RATIOS``) with kept widths rounded to multiples of 8 (``round_to=8``), which removes about 45% of the MACs (the
paper's ResNet-56 figure is 43.6%), then fine-tuned. L1-norm filter pruning (Li et al. 2017) runs at the same ratios
and rounding, so both pruned models have the same shapes and MACs, and is fine-tuned the same way. Each row gives test accuracy,
parameters, MACs (:func:`compactnn.report.count_macs`, batch 1), packed bytes, and CPU latency at batch 256
(:func:`compactnn.report.measure_latency`: 2 threads, eval mode, ``torch.inference_mode``; median of 30 timed passes
after 3 warm-up passes, all models timed round-robin so load changes hit them alike), both as eager modules and in
the deployed form of :func:`compactnn.report.inference_form` (BN folded, channels-last). ``--quick`` runs on scikit-learn digits with a short training.

Run alone: ``python benchmarks/pruning_nisp.py [--quick]``; ``benchmarks/pruning.py`` imports :func:`run`.
"""

from __future__ import annotations

import statistics
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import compactnn as cn  # noqa: E402
from compactnn.config import FineTune  # noqa: E402
from compactnn.prune.l1filter import L1Filter  # noqa: E402
from compactnn.prune.nisp import NISP  # noqa: E402
from compactnn.prune.surgery import total_macs  # noqa: E402

FULL = dict(train=dict(epochs=3, lr=0.05, batch_size=128), finetune=dict(epochs=2, lr=0.01, batch_size=128),
            samples=1000, repeats=30)
QUICK = dict(train=dict(epochs=15, lr=0.05, batch_size=64), finetune=dict(epochs=4, lr=0.01, batch_size=64),
             samples=300, repeats=7)
# Stage 1 keeps its 16 residual channels and halves each block's inner ones (16 -> 8); stages 2 and 3 lose a quarter
# of every group (32 -> 24, 64 -> 48). With round_to=8 every width is a multiple of 8, which oneDNN's convolutions run
# much faster than odd widths: a uniform ratio of 0.242 (12/24/49 channels, 43% of MACs) measured only 1.43x.
RATIOS = {"layer1.*.conv1": 0.5, "layer2.*": 0.25, "layer3.*": 0.25}
ROUND_TO = 8
THREADS = 2
COLUMNS = ["model", "data", "method", "ratio", "accuracy", "drop_points", "params", "macs", "macs_removed",
           "packed_bytes", "eager_ms_b256", "eager_speedup", "latency_ms_b256", "speedup", "seconds"]


def latencies(models: list, shape, repeats: int) -> list[float]:
    """Median ms at batch 256 per model, timed round-robin (one pass of each model per round) so that a change
    in machine load hits every model alike; each call is :func:`compactnn.report.measure_latency`."""
    for m in models:  # warm-up passes
        cn.report.measure_latency(m, shape, batch_sizes=(256,), repeats=1, warmup=3, threads=THREADS)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(repeats):
        for i, m in enumerate(models):
            times[i].append(cn.report.measure_latency(m, shape, batch_sizes=(256,), repeats=1, warmup=0,
                                                      threads=THREADS)[256])
    return [statistics.median(t) for t in times]


def _row(model, bundle, method, ratio, seconds, dense=None) -> dict:
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    macs = total_macs(model, bundle.input_shape)
    return dict(model="resnet20", data=bundle.name, method=method, ratio=ratio, accuracy=round(acc, 4),
                drop_points=round(100 * ((dense or {}).get("accuracy", acc) - acc), 2),
                params=sum(p.numel() for p in model.parameters()), macs=macs,
                macs_removed=round(1 - macs / (dense or {}).get("macs", macs), 4),
                packed_bytes=cn.pack.packed_size(model), seconds=round(seconds, 1))


def run(bundle, quick: bool) -> list[dict]:
    """Rows for dense, NISP and L1-filter ResNet-20 on ``bundle`` (settings: QUICK or FULL)."""
    from pretrained import pretrained

    s = QUICK if quick else FULL
    t = time.perf_counter()
    dense_model = pretrained("resnet20", bundle, **s["train"])
    dense = _row(dense_model, bundle, "dense", "-", time.perf_counter() - t)
    print(f"dense: {dense}", flush=True)
    ft = FineTune(**s["finetune"])
    label = ", ".join(f"{k}: {v:g}" for k, v in RATIOS.items()) + f"; round_to {ROUND_TO}"

    t = time.perf_counter()
    torch.manual_seed(0)
    nisp = cn.compress(dense_model, NISP(ratio=RATIOS, round_to=ROUND_TO, samples=s["samples"], finetune=ft),
                       data=bundle)
    nisp_row = _row(nisp, bundle, "NISP + fine-tune", label, time.perf_counter() - t, dense)
    print(f"nisp: {nisp_row}", flush=True)

    t = time.perf_counter()
    torch.manual_seed(0)
    l1 = cn.compress(dense_model, L1Filter(ratio=RATIOS, round_to=ROUND_TO, finetune=ft), data=bundle)
    l1_row = _row(l1, bundle, "L1-filter + fine-tune", label, time.perf_counter() - t, dense)
    print(f"l1: {l1_row}", flush=True)
    rows = [dense, nisp_row, l1_row]
    models = [dense_model, nisp, l1]
    for name, m in zip(("nisp", "l1"), models[1:]):  # kept so that --retime can time them again on an idle machine
        cn.pack.save(m, _saved(name, bundle))
    time_rows(rows, models, bundle, s["repeats"])
    return rows


def _saved(name: str, bundle):
    from pretrained import cache_dir

    return cache_dir() / f"pruned-resnet20-{name}-{bundle.name}.cnz"


def retime(rows: list[dict], bundle, quick: bool) -> list[dict]:
    """Time the models of a previous run again (dense from the cache, pruned ones saved by :func:`run`) and update
    the timing columns of its ``rows`` (dense, NISP, L1), e.g. once the machine is idle."""
    from pretrained import pretrained

    s = QUICK if quick else FULL
    models = [pretrained("resnet20", bundle, **s["train"])] + [cn.pack.load(_saved(n, bundle)) for n in ("nisp", "l1")]
    time_rows(rows, models, bundle, s["repeats"])
    return rows


def time_rows(rows: list[dict], models: list, bundle, repeats: int) -> None:
    """Add eager and deployed (:func:`compactnn.report.inference_form`) latency and speed-up columns to ``rows``."""
    deployed = [cn.report.inference_form(m) for m in models]
    x = torch.randn(64, *bundle.input_shape)
    with torch.inference_mode():
        for m, d in zip(models, deployed):  # the deployed form computes the same function
            assert torch.allclose(m.eval()(x), d(x), atol=1e-4, rtol=1e-4), "inference_form changed the outputs"
    ms = latencies(models + deployed, bundle.input_shape, repeats)
    eager, deploy = ms[:3], ms[3:]
    for r, e, d in zip(rows, eager, deploy):
        r.update(eager_ms_b256=round(e, 2), eager_speedup=round(eager[0] / e, 3), latency_ms_b256=round(d, 2),
                 speedup=round(deploy[0] / d, 3))
    print("ms at batch 256, eager (dense, nisp, l1):", [round(m, 1) for m in eager], "deployed:",
          [round(m, 1) for m in deploy], flush=True)


def plot(rows: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["#888", "#36c", "#c63"]
    for ax, key, label in ((axes[0], "macs", "MACs (batch 1)"), (axes[1], "latency_ms_b256", "ms at batch 256 (BN folded, channels-last)")):
        for r, c in zip(rows, colors):
            ax.scatter(r[key], r["accuracy"], color=c, s=60, label=r["method"])
            ax.annotate(f"{r['speedup']:.2f}x" if key != "macs" else f"-{r['macs_removed']:.0%}",
                        (r[key], r["accuracy"]), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"ResNet-20 on {rows[0]['data']}: NISP vs L1-norm filter pruning at the same MACs")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


NOTES = """Both pruned models are plain, smaller `nn.Conv2d`/`BatchNorm2d`/`Linear` modules (channels removed by
`compactnn.prune.surgery`, no masks). Ratios are per stage (`ratio` column; a pattern names a group's producers,
and residual groups lose the same channels on every member of their adds), and every kept width is rounded to a
multiple of 8: stage 1 keeps 16 residual and 8 inner channels, stages 2 and 3 keep 24 and 48. The classifier's
outputs are never pruned. L1 uses the same ratios, so both have the same shapes and MACs.

Latency: `compactnn.report.measure_latency`, batch 256, 2 torch threads, median of 30 timed passes after 3 warm-up
passes (7 passes in --quick); the models are timed round-robin, one pass each per round, so load changes hit them
alike. `latency_ms_b256` and `speedup` time every model in its deployed form, `compactnn.report.inference_form` (BN
folded into the convs, channels-last weights; outputs checked equal to the eager model's); `eager_ms_b256` and
`eager_speedup` time the same models as eager NCHW modules with separate BN passes.

An earlier run of this script (commit f15ae94) used one uniform ratio of 0.242 and exact widths (12/24/49 channels,
42.95% of MACs removed; NISP 0.9176, L1 0.9186). Deployed, it measured 1.43x for NISP and 1.58x for L1, although
their shapes were identical: a 10% timing spread. Odd widths run poorly in oneDNN, hence `round_to=8` here.

NISP's alpha = 0.5 is unverified; BN scaling by |gamma/sigma| and uniform max-pool spreading are our choices (see
`compactnn/prune/nisp.py`)."""


def main() -> None:
    from common import parser, write_results

    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    rows = run(bundle, args.quick)
    write_results("pruning_nisp", args.out, rows, COLUMNS, "NISP vs L1-norm filter pruning (ResNet-20)", NOTES,
                  lambda path: plot(rows, path))
    for r in rows:
        print({k: r[k] for k in COLUMNS})


if __name__ == "__main__":
    main()
