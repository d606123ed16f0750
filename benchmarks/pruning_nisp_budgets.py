"""How NISP's global MAC budget and ``round_to`` turn into widths and compiled speed on ResNet-20 (no fine-tuning).

Speed depends on the kept widths only, not on the weights' values, so this pilot prunes one seed's trained dense
ResNet-20 (the cached model of ``benchmarks/pruning_nisp.py``) at several budgets without fine-tuning, and times the
compiled forms (``inference_form(compile=True)``) side by side with the dense one: ``--runs`` runs of ``--rounds``
round-robin rounds at batch 256, a run's speed-up is dense median / model median, the table gives the median over
runs and their min-max. It chose ``pruning_nisp.BUDGET``. Accuracy is not a column: before fine-tuning, the pruned
ResNet-20s of a scratch run of this pilot were all at chance (the residual groups lose channels on every member of
their adds), and the fine-tuned accuracy is what ``pruning_nisp.py`` measures.

Run: ``python benchmarks/pruning_nisp_budgets.py [--seed 1]`` (about 5 minutes; the dense model is trained first
if it is not cached). Writes docs/results/pruning_nisp_budgets.{md,json,png}.
"""

from __future__ import annotations

import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import compactnn as cn  # noqa: E402
from common import parser, write_results  # noqa: E402
from compactnn.prune.l1filter import L1Filter  # noqa: E402
from compactnn.prune.nisp import NISP  # noqa: E402
from compactnn.prune.surgery import total_macs  # noqa: E402
import pruning_nisp  # noqa: E402

#: (method, MAC sparsity, round_to)
SETTINGS = [("NISP", 0.45, 8), ("NISP", 0.45, 16), ("NISP", 0.5, 8), ("NISP", 0.5, 16), ("NISP", 0.55, 8),
            ("L1-filter", 0.45, 8), ("L1-filter", 0.5, 8)]
COLUMNS = ["method", "sparsity", "round_to", "widths", "macs_removed", "latency_ms_b256", "speedup", "speedup_runs"]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=1, help="which seed's dense model (cached by pruning_nisp.py)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from pretrained import pretrained

    s = pruning_nisp.QUICK if args.quick else pruning_nisp.FULL
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    dense = pretrained("resnet20", bundle, seed=args.seed, **s["train"])
    d_macs = total_macs(dense, bundle.input_shape)
    rows = [dict(method="dense", sparsity=0.0, round_to="-", widths=pruning_nisp.widths(dense), macs_removed=0.0)]
    models = [dense]
    for method, sparsity, round_to in SETTINGS:
        t = time.perf_counter()
        extra = {"samples": s["samples"]} if method == "NISP" else {}
        cfg = (NISP if method == "NISP" else L1Filter)(sparsity=sparsity, scope="global", budget="macs",
                                                       round_to=round_to, finetune=None, **extra)
        pruned = cn.compress(dense, cfg, data=bundle)
        rows.append(dict(method=method, sparsity=sparsity, round_to=round_to, widths=pruning_nisp.widths(pruned),
                         macs_removed=round(1 - total_macs(pruned, bundle.input_shape) / d_macs, 4)))
        models.append(pruned)
        print(rows[-1], f"{time.perf_counter() - t:.0f} s", flush=True)
    compiled = [cn.report.inference_form(m, compile=True) for m in models]
    per_run = pruning_nisp.timing_runs(compiled, bundle.input_shape, args.rounds, args.runs,
                                       "(dense, then each setting)")
    for j, r in enumerate(rows):
        ms, speed, spread = pruning_nisp.summary(per_run, j, 0)
        r.update(latency_ms_b256=ms, speedup=speed, speedup_runs=spread, seed=args.seed, data=bundle.name)

    def plot(fh) -> None:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            marker = {"dense": "s", "NISP": "o", "L1-filter": "^"}[r["method"]]
            ax.scatter(r["macs_removed"], r["speedup"], marker=marker, color="#36c" if r["round_to"] == 16 else "#c63")
            ax.annotate(f"{r['method']} r{r['round_to']}", (r["macs_removed"], r["speedup"]), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
        ax.axhline(1.5, color="#888", lw=0.8, ls="--")
        ax.set_xlabel("MACs removed")
        ax.set_ylabel("compiled speed-up at batch 256")
        ax.set_title(f"ResNet-20 seed {args.seed}: budget -> widths -> speed (no fine-tune)", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(fh, format="png", dpi=120)
        plt.close(fig)

    notes = (f"Seed {args.seed}'s dense ResNet-20 on {bundle.name}, pruned with `scope=\"global\", budget=\"macs\"` "
             f"and no fine-tuning; {args.runs} timing runs of {args.rounds} round-robin rounds (batch 256, "
             f"{args.threads} threads, compiled forms). `widths`: stem | stage 1 inner-residual | stage 2 | stage 3.")
    write_results("pruning_nisp_budgets", args.out, rows, COLUMNS, "NISP budget pilot: widths and compiled speed",
                  notes, plot)


if __name__ == "__main__":
    main()
