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
from common import aggregate, markdown_table, parser, seeds_arg  # noqa: E402
from compactnn.files import atomic_write, atomic_write_text  # noqa: E402

#: Per section: the columns averaged over seeds in the summary table.
SUMMARY = {
    "lc": ["accuracy", "drop", "packed_bytes", "ratio", "seconds"],
    "clipq": ["accuracy", "drop", "packed_bytes", "ratio", "seconds"],
    "nisp": ["accuracy", "drop_points", "drop_vs_control", "macs_removed", "eager_speedup", "folded_speedup",
             "speedup", "seconds"],
}

SECTIONS = {
    "lc": ("LC (learning-compression), LeNet-300-100", pruning_lc, pruning_lc.COLUMNS),
    "clipq": ("CLIP-Q, LeNet-300-100 and LeNet-5", pruning_clipq, pruning_clipq.COLUMNS),
    "nisp": ("NISP vs L1-norm filter pruning at the same MACs, ResNet-20", pruning_nisp, pruning_nisp.COLUMNS),
}


#: The command column of rows kept from a run made before the benchmark took --seeds.
EARLIER = "an earlier single-seed run with the previous settings (not rerun yet)"


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


def summary(rows: list[dict], key: str) -> list[dict]:
    """The section's rows averaged over seeds: one row per (model, method), ``mean ± std`` cells."""
    return aggregate([r for r in rows if r["section"] == key], ["model", "method"], SUMMARY[key])


def _mean(table: list[dict], model: str, method: str, value: str) -> tuple[float, float] | None:
    for r in table:
        if r["model"] == model and r["method"] == method and f"{value}_mean" in r:
            return r[f"{value}_mean"], r[f"{value}_std"]
    return None


def claims(rows: list[dict]) -> list[str]:
    """Each paper claim (or issue target) this benchmark checks, judged on the mean over seeds."""
    out = []

    def judge(text: str, ok: bool | None, section: str = "") -> None:
        if any(r["section"] == section and r.get("seed") == "earlier" for r in rows):
            text += f" [{EARLIER}]"
        out.append(f"- {text}: **{'held' if ok else 'not held'}**" if ok is not None else f"- {text}: not run")

    lc, cq, ni = summary(rows, "lc"), summary(rows, "clipq"), summary(rows, "nisp")
    d = _mean(lc, "lenet300", "LC ℓ0", "drop")
    judge(f"LC, 5% of LeNet-300-100's weights kept, drop <= 0.5 points (mean {d[0]:.2f} ± {d[1]:.2f})" if d
          else "LC ℓ0 drop <= 0.5 points", d[0] <= 0.5 if d else None, "lc")
    d, r = _mean(cq, "lenet300", "CLIP-Q", "drop"), _mean(cq, "lenet300", "CLIP-Q", "ratio")
    judge(f"CLIP-Q LeNet-300-100 >= 40x at <= 0.5 points (mean {r[0]:.1f}x, {d[0]:.2f} ± {d[1]:.2f} points)"
          if d and r else "CLIP-Q LeNet-300-100 >= 40x at <= 0.5 points", (d[0] <= 0.5 and r[0] >= 40) if d else None,
          "clipq")
    d, sp = _mean(ni, "resnet20", "NISP + fine-tune", "drop_points"), _mean(ni, "resnet20", "NISP + fine-tune",
                                                                               "speedup")
    judge(f"NISP ResNet-20, global MAC budget: >= 1.5x compiled at <= 1 point (mean {sp[0]:.2f}x, {d[0]:.2f} points)"
          if d and sp else "NISP >= 1.5x at <= 1 point", (sp[0] >= 1.5 and d[0] <= 1.0) if d and sp else None, "nisp")
    a, b = _mean(ni, "resnet20", "NISP + fine-tune", "accuracy"), _mean(ni, "resnet20", "L1-filter + fine-tune",
                                                                          "accuracy")
    if a and b:
        gap = 100 * (a[0] - b[0])
        noise = 100 * max(a[1], b[1])
        judge(f"NISP beats L1-norm at the same MACs (paper: NISP beats magnitude criteria): NISP {a[0]:.4f} vs L1 "
              f"{b[0]:.4f}, gap {gap:+.2f} points, seed std up to {noise:.2f}", gap > noise, "nisp")
    return out


def markdown(rows: list[dict]) -> str:
    commands = list(dict.fromkeys(r.get("command") or f"`python benchmarks/pruning.py --sections {r['section']}`"
                                  for r in rows))
    parts = ["# Pruning: LC, CLIP-Q, NISP", "", f"Made by these runs (torch {torch.__version__}):", "",
             *[f"- {c}" for c in commands], "", "## Claims, judged on the mean over seeds", "", *claims(rows), ""]
    for key, (title, module, columns) in SECTIONS.items():
        sub = [r for r in rows if r["section"] == key]
        if not sub:
            continue
        table = summary(rows, key)
        parts += [f"## {title}", "", f"Mean ± std over seeds ({len({r.get('seed', 0) for r in sub})} seeds):", "",
                  markdown_table(table, ["model", "method", "seeds", *SUMMARY[key]]), "",
                  "<details><summary>Every seed</summary>", "", markdown_table(sub, ["seed", *columns]), "",
                  "</details>", ""]
        if getattr(module, "NOTES", None):
            parts += [module.NOTES.strip(), ""]
        budgets = [(f"{r['method']} (seed {r.get('seed', 0)})", b) for r in sub for b in r.get("budget", [])]
        if budgets:
            parts += ["Per-layer budget (weights kept):", "",
                      markdown_table([{"method": m, **b} for m, b in budgets],
                                     ["method", *[k for k in budgets[0][1]]]), ""]
    parts += ["![pruning](pruning.png)", ""]
    return "\n".join(parts)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sections", default="lc,clipq,nisp", help="comma-separated subset of lc, clipq, nisp")
    p.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2],
                   help="comma-separated seeds (model init, data order, search); rows of other seeds are kept")
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
    saved = json.loads(store.read_text()) if store.exists() else []
    old = [r for r in saved if "seed" in r]
    # rows from before --seeds stay, marked, until their section is rerun with seeds
    rerun = {r["section"] for r in old} | set(chosen)
    old += [dict(r, seed="earlier", command=EARLIER) for r in saved
            if "seed" not in r and r["section"] not in rerun]
    if args.retime_nisp:
        for seed in args.seeds:
            nisp_rows = [r for r in old if r["section"] == "nisp" and r.get("seed", 0) == seed]
            if len(nisp_rows) != 4:
                raise SystemExit(f"--retime-nisp needs the 4 NISP rows of seed {seed} in {store}; run --sections "
                                 f"nisp --seeds {seed} first")
            pruning_nisp.retime(nisp_rows, bundle, args.quick, seed)
            for r in nisp_rows:
                first = r["command"].split(";")[0]
                r["command"] = f"{first}; timing columns: `python benchmarks/pruning.py --retime-nisp --seeds {seed}`"
        chosen, rows = [], old
    else:
        rows = [r for r in old if not (r["section"] in chosen and (r.get("seed", 0) in args.seeds
                                                                   or r.get("seed") == "earlier"))]
    for key in chosen:
        for seed in args.seeds:
            start = time.perf_counter()
            print(f"== {key}, seed {seed}", flush=True)
            new = SECTIONS[key][1].run(bundle, args.quick, seed=seed)
            command = f"`python benchmarks/pruning.py --sections {key} --seeds {seed}`"
            rows += [{"section": key, "seed": seed, "command": command, **r} for r in new]
            print(f"== {key}, seed {seed} done in {time.perf_counter() - start:.0f} s", flush=True)
            for r in new:
                print({k: r.get(k) for k in SECTIONS[key][2]}, flush=True)
            write(args.out, rows)  # after every (section, seed): a later failure keeps what is done
    write(args.out, rows)


def write(out, rows: list[dict]) -> None:
    """``pruning.md``, ``.json`` and ``.png`` from all rows so far."""
    def order(r):  # rows of an earlier unseeded run ("earlier") come before seeded ones
        seed = r.get("seed", 0)
        return (list(SECTIONS).index(r["section"]), isinstance(seed, int), seed if isinstance(seed, int) else 0)

    rows.sort(key=order)
    store = out / "pruning.json"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "pruning.md", markdown(rows))
    atomic_write_text(store, json.dumps(rows, indent=1) + "\n")
    atomic_write(out / "pruning.png", lambda fh: plot(rows, fh))


if __name__ == "__main__":
    main()
