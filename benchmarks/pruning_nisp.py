"""NISP vs L1-norm filter pruning on ResNet-20 (1-channel, Fashion-MNIST), at the same FLOPs, channels removed.

The trained dense ResNet-20 (``benchmarks/pretrained.py``) is pruned by NISP (Yu et al. 2018) under one global
budget (``BUDGET``: 50% of the MACs, allocated across layers by NISP's own scores, kept widths rounded to multiples
of 16; the paper's ResNet-56 figure is 43.6%), then fine-tuned. L1-norm filter pruning (Li et al. 2017) gets the same
budget and allocator, so the two differ only in the importance measure, and is fine-tuned the same way. A control
row fine-tunes the dense model with the same schedule, so the drop can also be read against equal training.
Everything (dense model, fine-tunes, sampled examples) is seeded by the run's seed.

Each row gives test accuracy, parameters, MACs (:func:`compactnn.report.count_macs`, batch 1), packed bytes, and
CPU latency at batch 256 (:func:`compactnn.report.measure_latency`: 2 threads, eval mode, ``torch.inference_mode``,
glibc kept from unmapping freed activations) in three forms of every model: eager, folded
(:func:`compactnn.report.inference_form`: BN folded, channels-last) and compiled (``inference_form(compile=True)``:
TorchInductor with freezing, which fuses ReLU and residual adds into the oneDNN convolutions; the headline). Timing:
5 runs; in each, all 9 model forms are timed round-robin (30 rounds after 3 warm-up passes, one pass of each per
round) and a run's speed-up is the dense median over the model's; the table gives the median over the runs and
their min-max. ``--quick`` runs on scikit-learn digits with a short training.

Run alone: ``python benchmarks/pruning_nisp.py [--quick]``; ``benchmarks/pruning.py`` imports :func:`run`.
"""

from __future__ import annotations

import copy
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

FULL = dict(train=dict(epochs=3, lr=0.05, batch_size=128), finetune=dict(epochs=3, lr=0.01, batch_size=128),
            samples=1000, repeats=20)
QUICK = dict(train=dict(epochs=15, lr=0.05, batch_size=64), finetune=dict(epochs=4, lr=0.01, batch_size=64),
             samples=300, repeats=7)
# The budget: 50% of the batch-1 MACs, allocated across layers by NISP itself (scope="global": channels ranked by
# score / group mean score, one threshold), kept widths rounded to multiples of 16 (oneDNN's AVX-512 convolutions
# block output channels by 16: widths between multiples run at the next multiple's cost). L1-filter gets the same
# budget and the same allocator, so the comparison is the importance measure alone. (Earlier versions hand-picked
# per-stage ratios.) How these settings were chosen, instead of the paper's 43.6% with round_to 8:
# - 45%, round_to 8: 1.43 +- 0.05x compiled over seeds 0 and 1 at 0.28 points lost: the 1.5x target missed;
# - a pilot (benchmarks/pruning_nisp_budgets.py, docs/results/pruning_nisp_budgets.md) prunes seed 1's dense model at
#   several budgets without fine-tuning and times the compiled forms side by side; it put 50%/round_to 8 at about
#   1.6x, but this benchmark then measured those widths at 1.50x on seed 2 (and 1.49x on seed 1, timed while another
#   job shared the CPU);
# - 50%/round_to 16 (about 1.7x in the pilot) lost 0.31 points on seed 1 after the same fine-tune (a scratch run);
#   this benchmark then measured 1.63 +- 0.03x at 0.61 +- 0.11 points over 3 seeds (docs/results/pruning.md).
BUDGET = dict(sparsity=0.5, scope="global", budget="macs", round_to=16)
THREADS = 2
RUNS = 3  # round-robin timing runs per seed; the table gives the median speed-up over them and their min-max
COLUMNS = ["model", "data", "method", "widths", "accuracy", "drop_points", "drop_vs_control", "params", "macs",
           "macs_removed", "packed_bytes", "eager_ms_b256", "eager_speedup", "folded_ms_b256", "folded_speedup",
           "latency_ms_b256", "speedup", "speedup_runs", "seconds"]


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


def _row(model, bundle, method, shape, seconds, dense=None) -> dict:
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    macs = total_macs(model, bundle.input_shape)
    return dict(model="resnet20", data=bundle.name, method=method, widths=shape, accuracy=round(acc, 4),
                drop_points=round(100 * ((dense or {}).get("accuracy", acc) - acc), 2) + 0.0,
                params=sum(p.numel() for p in model.parameters()), macs=macs,
                macs_removed=round(1 - macs / (dense or {}).get("macs", macs), 4),
                packed_bytes=cn.pack.packed_size(model), seconds=round(seconds, 1))


def widths(model) -> str:
    """Kept output channels of the convs, stage by stage: ``stem / stage1 inner-residual / ...``."""
    convs = {n: m.out_channels for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    parts = [str(convs.get("conv1"))]
    for stage in ("layer1", "layer2", "layer3"):
        inner = sorted({w for n, w in convs.items() if n.startswith(stage) and n.endswith("conv1")})
        resid = sorted({w for n, w in convs.items() if n.startswith(stage) and n.endswith("conv2")})
        parts.append(f"{'/'.join(map(str, inner))}-{'/'.join(map(str, resid))}")
    return " | ".join(parts)


def run(bundle, quick: bool, seed: int = 0) -> list[dict]:
    """Rows for dense, its fine-tuned control, NISP and L1-filter ResNet-20 on ``bundle`` (settings: QUICK or
    FULL), everything seeded by ``seed``; the control is not timed (it has the dense shapes)."""
    from pretrained import pretrained

    s = QUICK if quick else FULL
    t = time.perf_counter()
    dense_model = pretrained("resnet20", bundle, seed=seed, **s["train"])
    dense = _row(dense_model, bundle, "dense", "-", time.perf_counter() - t)
    print(f"dense: {dense}", flush=True)
    ft = FineTune(**s["finetune"], seed=seed)

    t = time.perf_counter()
    control_row = _row(control(dense_model, bundle, s, seed), bundle, "dense + same fine-tune (control)", "-",
                       time.perf_counter() - t, dense)
    print(f"control: {control_row}", flush=True)

    rows, models = [dense], [dense_model]
    for name, cfg in (("NISP", NISP(**BUDGET, samples=s["samples"], finetune=ft)),
                      ("L1-filter", L1Filter(**BUDGET, finetune=ft))):
        t = time.perf_counter()
        pruned = cn.compress(dense_model, cfg, data=bundle)
        row = _row(pruned, bundle, f"{name} + fine-tune", widths(pruned), time.perf_counter() - t, dense)
        print(f"{name}: {row}", flush=True)
        rows.append(row)
        models.append(pruned)
        cn.pack.save(pruned, _saved(name.lower(), bundle, seed))  # kept so that --retime can time them again
    for r in (*rows, control_row):
        r["drop_vs_control"] = round(100 * (control_row["accuracy"] - r["accuracy"]), 2) + 0.0
    time_rows(rows, models, bundle, s["repeats"])
    return [dense, control_row, *rows[1:]]


def control(dense_model, bundle, s: dict, seed: int = 0):
    """The dense model fine-tuned with the pruned models' schedule (``s["finetune"]``), cached next to the
    pretrained models: it tells how much of a pruned model's accuracy comes from the extra epochs alone."""
    from pretrained import cache_dir

    train, ft = s["train"], s["finetune"]
    path = cache_dir() / (f"resnet20-{bundle.name}-e{train['epochs']}-lr{train['lr']}-b{train['batch_size']}-sgd-"
                          f"s{seed}-init-control-e{ft['epochs']}-lr{ft['lr']}-b{ft['batch_size']}.cnz")
    if path.exists():
        return cn.pack.load(path)
    model = cn.train.fit(copy.deepcopy(dense_model), bundle, **FineTune(**ft, seed=seed).fit_kwargs())
    cn.pack.save(model, path)
    return model


def _saved(name: str, bundle, seed: int = 0):
    from pretrained import cache_dir

    return cache_dir() / f"pruned-resnet20-{name}-{bundle.name}-s{seed}.cnz"


def retime(rows: list[dict], bundle, quick: bool, seed: int = 0) -> list[dict]:
    """Time the models of a previous run again (dense from the cache, pruned ones saved by :func:`run`) and update
    the timing columns of its ``rows`` (dense, control, NISP, L1; the control is not timed), e.g. once the machine
    is idle."""
    from pretrained import pretrained

    s = QUICK if quick else FULL
    models = [pretrained("resnet20", bundle, seed=seed, **s["train"])]
    models += [cn.pack.load(_saved(n, bundle, seed)) for n in ("nisp", "l1-filter")]
    time_rows([r for r in rows if "control" not in r["method"]], models, bundle, s["repeats"])
    return rows


def time_rows(rows: list[dict], models: list, bundle, repeats: int, runs: int = RUNS) -> None:
    """Add latency and speed-up columns to ``rows`` (dense, NISP, L1) for three forms of each model: eager, folded
    (:func:`compactnn.report.inference_form`: BN folded, channels-last) and compiled (``inference_form(compile=
    True)``: Inductor with freezing, ReLU and adds fused into the oneDNN convs; the headline ``speedup``).

    ``runs`` round-robin runs of ``repeats`` rounds each; a run's speed-up is dense median / model median, the
    columns give the median over runs and ``speedup_runs`` their min-max.
    """
    forms = {"eager": [m.eval() for m in models], "folded": [cn.report.inference_form(m) for m in models],
             "compiled": [cn.report.inference_form(m, compile=True) for m in models]}
    x = torch.randn(64, *bundle.input_shape)
    with torch.inference_mode():
        for form, ms in forms.items():  # every deployed form computes the model's function
            for m, d in zip(models, ms):
                assert torch.allclose(m.eval()(x), d(x), atol=1e-4, rtol=1e-4), f"{form} form changed the outputs"
    flat = [m for ms in forms.values() for m in ms]
    per_run = timing_runs(flat, bundle.input_shape, repeats, runs, "(dense, nisp, l1) eager/folded/compiled")
    n = len(models)
    for f, (form, prefix) in enumerate((("eager", "eager_"), ("folded", "folded_"), ("compiled", ""))):
        for j, r in enumerate(rows):
            ms, speed, spread = summary(per_run, f * n + j, f * n)
            r[f"{prefix or 'latency_'}ms_b256"] = ms
            r[f"{prefix}speedup"] = speed
            if form == "compiled":
                r["speedup_runs"] = spread


def timing_runs(models: list, shape, repeats: int, runs: int, what: str) -> list[list[float]]:
    """``runs`` round-robin runs of :func:`latencies` over ``models``: per run, the median ms of each model."""
    per_run = []
    for i in range(runs):
        per_run.append(latencies(models, shape, repeats))
        print(f"run {i + 1}/{runs}, ms at batch 256 {what}:", [round(v, 1) for v in per_run[-1]], flush=True)
    return per_run


def summary(per_run: list[list[float]], j: int, ref: int) -> tuple[float, float, str]:
    """Model ``j`` against reference ``ref``: median ms over runs, median speed-up (a run's: ref ms / model ms) and
    the speed-ups' min-max."""
    speed = [run[ref] / run[j] for run in per_run]
    return (round(statistics.median(run[j] for run in per_run), 2), round(statistics.median(speed), 3),
            f"{min(speed):.2f}-{max(speed):.2f}")


def plot(rows: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = ["#888", "#36c", "#c63"]
    rows = [r for r in rows if r.get("speedup") is not None]  # the timed ones: dense, NISP, L1
    panels = (("macs", "MACs (batch 1)"), ("latency_ms_b256", "ms at batch 256 (compiled: Inductor, frozen)"))
    for ax, (key, label) in zip(axes, panels):
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
`compactnn.prune.surgery`, no masks). The budget is global (`NISP(sparsity={sparsity}, scope="global", budget="macs",
round_to={round_to})`): every channel's score is divided by its group's mean score, one threshold removes the lowest until
{sparsity:.0%} of the MACs are gone, and residual groups lose the same channels on every member of their adds; `widths` gives
the kept conv widths (stem | stage 1 inner-residual | stage 2 | stage 3). The classifier's outputs are never pruned.
L1-filter gets the same budget and allocator, with filter norms as scores. Both are fine-tuned 3 epochs at lr 0.01; `drop_vs_control` compares with the dense model fine-tuned the same
3 epochs (the dense reference itself is trained only 3 epochs, so extra epochs alone add accuracy).

Latency: `compactnn.report.measure_latency`, batch 256, 2 torch threads. 3 timing runs per seed; in each, the 9 model
forms are timed round-robin (20 rounds after 3 warm-up passes, one pass of each per round; 7 rounds in --quick), and a
run's speed-up is the dense form's median over the model's. `speedup` is the median over runs and `speedup_runs`
their min-max. Forms, each applied to dense and pruned models alike: `eager_*` plain modules (NCHW, separate BN);
`folded_*` `inference_form(model)` (BN folded into the convs, channels-last weights); `latency_ms_b256` and
`speedup` `inference_form(model, compile=True)`: torch.compile (Inductor, `dynamic=False`) with freezing, which
pre-packs weights and fuses ReLU and residual adds into the oneDNN convolutions. Every form's outputs are checked
equal to the eager model's. The compiled form is the fastest we found for the dense model (scratch run: 82 ms,
against 83 ms for TorchScript trace + freeze + `optimize_for_inference` and 93 ms folded).

What the profiles showed (torch.profiler and `ONEDNN_VERBOSE` in scratch scripts, not made by this script): (1) the
earlier eager ~1.0x came from the allocator, not the model: glibc unmapped and re-faulted the multi-MB activations
every pass (18,000 to 55,000 minor faults and 13 to 105 ms of system time per pass, different for each model and
run); `measure_latency` now keeps freed memory in the process (`steady_allocator`, the effect of the
jemalloc/tcmalloc preload of PyTorch's CPU tuning guide). (2) oneDNN's AVX-512 convolutions block output channels
by 16: a 16->8 conv took 4.5 ms against 4.8 ms for 16->16, and 24-wide convs ran at 80% of the 32-wide ones' MAC
rate, so the previous shape (stage 1 inner 8, stages 2-3 at 24/48, 45.2% of MACs) measured only 1.37x compiled. (3)
Unfused ReLU and adds cost about 20 ms per pass folded, about the same for dense and pruned models, hence the
compiled form. (Earlier versions of this benchmark hand-picked per-stage widths from such timings; the budget is now
allocated by the pruner.)

NISP's alpha = 0.5 is unverified; BN scaling by |gamma/sigma| and uniform max-pool spreading are our choices (see
`compactnn/prune/nisp.py`).""".format(**BUDGET)


def main() -> None:
    from common import parser, write_results

    p = parser(__doc__.splitlines()[0])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    rows = run(bundle, args.quick, seed=0)
    write_results("pruning_nisp", args.out, rows, COLUMNS, "NISP vs L1-norm filter pruning (ResNet-20)", NOTES,
                  lambda path: plot(rows, path))
    for r in rows:
        print({k: r.get(k) for k in COLUMNS})


if __name__ == "__main__":
    main()
