"""The pruning papers on Fashion-MNIST: LC (LeNet-300-100), CLIP-Q (LeNet-300-100, LeNet-5), NISP (ResNet-20).

Runs the experiments of benchmarks/pruning_lc.py, pruning_clipq.py and pruning_nisp.py and writes
docs/results/pruning.{md,json,png}: one table per experiment, LC's per-layer budget, and a plot of accuracy against
packed size. ``--sections`` runs a subset; rows of the other sections are kept from the previous pruning.json, so the
slow sections can run one at a time.
"""

from __future__ import annotations

import json
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import compactnn as cn  # noqa: E402

import pruning_clipq  # noqa: E402
import pruning_lc  # noqa: E402
import pruning_nisp  # noqa: E402
from common import markdown_table, parser  # noqa: E402
from compactnn.files import atomic_write, atomic_write_text  # noqa: E402

SECTIONS = {
    "lc": ("LC (learning-compression), LeNet-300-100", pruning_lc, pruning_lc.COLUMNS),
    "clipq": ("CLIP-Q, LeNet-300-100 and LeNet-5", pruning_clipq, pruning_clipq.COLUMNS),
    "nisp": ("NISP vs L1-norm filter pruning at the same MACs, ResNet-20", pruning_nisp, pruning_nisp.COLUMNS),
}


def plot(rows: list[dict], path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for section, marker in zip(SECTIONS, "os^"):
        for model in sorted({r["model"] for r in rows if r["section"] == section}):
            sub = [r for r in rows if r["section"] == section and r["model"] == model and r.get("packed_bytes")]
            ax.scatter([r["packed_bytes"] for r in sub], [r["accuracy"] for r in sub], marker=marker,
                       label=f"{section}: {model}")
            for r in sub:
                ax.annotate(r["method"], (r["packed_bytes"], r["accuracy"]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("packed bytes (.cnz file, log)")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    plt.close(fig)


def markdown(rows: list[dict]) -> str:
    commands = list(dict.fromkeys(r.get("command") or f"`python benchmarks/pruning.py --sections {r['section']}`"
                                  for r in rows))
    parts = ["# Pruning: LC, CLIP-Q, NISP", "", f"Made by these runs (torch {torch.__version__}):", "",
             *[f"- {c}" for c in commands], ""]
    for key, (title, module, columns) in SECTIONS.items():
        sub = [r for r in rows if r["section"] == key]
        if not sub:
            continue
        parts += [f"## {title}", "", markdown_table(sub, columns), ""]
        if getattr(module, "NOTES", None):
            parts += [module.NOTES.strip(), ""]
        budgets = [(r["method"], b) for r in sub for b in r.get("budget", [])]
        if budgets:
            parts += ["Per-layer budget (weights kept):", "",
                      markdown_table([{"method": m, **b} for m, b in budgets],
                                     ["method", *[k for k in budgets[0][1]]]), ""]
    parts += ["![pruning](pruning.png)", ""]
    return "\n".join(parts)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sections", default="lc,clipq,nisp", help="comma-separated subset of lc, clipq, nisp")
    p.add_argument("--retime-nisp", action="store_true",
                   help="only time the NISP section's saved models again (e.g. on an idle machine); no training")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    chosen = [s for s in args.sections.split(",") if s]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown section {unknown[0]!r}; choose from {', '.join(SECTIONS)}")
    store = args.out / "pruning.json"
    if args.retime_nisp:
        old = json.loads(store.read_text()) if store.exists() else []
        nisp_rows = [r for r in old if r["section"] == "nisp"]
        if len(nisp_rows) != 4:
            raise SystemExit(f"--retime-nisp needs the 4 NISP rows in {store}; run --sections nisp first")
        pruning_nisp.retime(nisp_rows, bundle, args.quick)
        for r in nisp_rows:
            first = (r.get("command") or "`python benchmarks/pruning.py --sections nisp`").split(";")[0]
            r["command"] = f"{first}; timing columns: `python benchmarks/pruning.py --retime-nisp`"
        chosen, rows = [], old
    else:
        rows = [r for r in (json.loads(store.read_text()) if store.exists() else []) if r["section"] not in chosen]
    for key in chosen:
        start = time.perf_counter()
        print(f"== {key}", flush=True)
        new = SECTIONS[key][1].run(bundle, args.quick)
        rows += [{"section": key, "command": f"`python benchmarks/pruning.py --sections {key}`", **r} for r in new]
        print(f"== {key} done in {time.perf_counter() - start:.0f} s", flush=True)
        for r in new:
            print({k: r.get(k) for k in SECTIONS[key][2]}, flush=True)
    rows.sort(key=lambda r: list(SECTIONS).index(r["section"]))
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "pruning.md", markdown(rows))
    atomic_write_text(store, json.dumps(rows, indent=1) + "\n")
    atomic_write(args.out / "pruning.png", lambda fh: plot(rows, fh))


if __name__ == "__main__":
    main()
