"""Report part of benchmarks/decomposition.py: the plots, the verdicts against issue 5's targets and the notes."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from compactnn.files import atomic_savefig  # noqa: E402

from common import aggregate  # noqa: E402

#: The numbers averaged over seeds; the first three are shown as ``mean ± std`` in the table.
SPREAD = ["accuracy", "train_s", "s_per_epoch"]
SAME = ["params", "ratio_params", "packed_bytes", "ratio_bytes", "w_ih", "ratio_w_ih", "macs"]
GROUP = ["part", "model", "variant", "label"]


def _groups(rows: list[dict]) -> list[tuple[dict, list[dict]]]:
    """Seeded rows (parts a, b) grouped by (part, model, variant, label), with their :func:`common.aggregate` row."""
    seeded = [r for r in rows if not r["part"].startswith("c")]
    agg = aggregate(seeded, GROUP, SPREAD + SAME)
    out = []
    for a in agg:
        members = [r for r in seeded if all(r.get(k) == a[k] for k in GROUP)]
        out.append((a, members))
    return out


def _number(x: float):
    return int(round(x)) if abs(x - round(x)) < 1e-9 and abs(x) >= 1 else round(x, 4 if abs(x) < 1 else 2)


def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per setting of parts a and b with every number the mean over its seeds (for the verdicts, the
    discussion and the plots), plus ``<v>_std``, ``n_seeds`` and ``seeds``; part c rows unchanged. Keys lose their
    ``/s<seed>`` ending."""
    out = []
    for a, members in _groups(rows):
        first = members[0]
        row = {**first, "key": first["key"].rsplit("/s", 1)[0], "seeds": a["seeds"], "n_seeds": len(members)}
        for v in SPREAD + SAME:
            if f"{v}_mean" in a:
                row[v] = _number(a[f"{v}_mean"]) if v in SAME else a[f"{v}_mean"]
                row[f"{v}_std"] = a[f"{v}_std"]
        out.append(row)
    return out + [r for r in rows if r["part"].startswith("c")]


def table_rows(rows: list[dict]) -> list[dict]:
    """Rows for the table: per setting, ``mean ± std`` text for accuracy and times, the means of the other numbers;
    ``setting`` is the first seed's (per-seed details such as ALS errors are in the per-seed table)."""
    out = []
    for a, members in _groups(rows):
        row = {k: a[k] for k in GROUP}
        row["seeds"] = a["seeds"]
        row["setting"] = members[0].get("setting", "") + (f" [seed {members[0]['seed']}'s]" if len(members) > 1
                                                           and "ALS" in members[0].get("setting", "") else "")
        for v in SAME:
            if f"{v}_mean" in a:
                row[v] = _number(a[f"{v}_mean"])
        for v in SPREAD:
            if f"{v}_mean" in a:
                row[v] = a[v] if len(members) > 1 else _number(a[f"{v}_mean"])
        out.append(row)
    return out


def describe(train: dict) -> str:
    return f"{train['epochs']} ep {train.get('optimizer', 'sgd')} lr {train['lr']:g}"


def save_png(path: Path, fig) -> None:
    try:
        atomic_savefig(path, fig, dpi=120)
    finally:
        plt.close(fig)


def plot_trn(rows: list[dict], path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ["lenet300", "lenet5"]):
        sub = [r for r in rows if r["part"] == "a TRN" and r["model"] == name]
        dense = next((r for r in sub if r["variant"] == "dense"), None)
        if dense is None:
            ax.set_title(f"{name}: not run yet")
            continue
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


def verdicts(rows: list[dict]) -> str:
    out = []
    for name in ("lenet300", "lenet5"):
        sub = [r for r in rows if r["part"] == "a TRN" and r["model"] == name]
        dense = next((r for r in sub if r["variant"] == "dense"), None)
        if dense is None:
            continue
        floor = 10 if name == "lenet5" else 1  # the target is on LeNet-5; LeNet-300-100 is the sweep
        ok = [r for r in sub if r["variant"] != "dense" and r["ratio_params"] >= floor
              and r["accuracy"] >= dense["accuracy"] - 0.01]
        best = max(ok, key=lambda r: r["ratio_params"]) if ok else None
        verdict = (f"{'held: ' if name == 'lenet5' else ''}{best['variant']} {best['setting'].split(':')[0]} is "
                   f"{best['ratio_params']}x smaller (params; {best['ratio_bytes']}x packed) at "
                   f"{best['accuracy']:.2%} vs dense {dense['accuracy']:.2%}"
                   if best else f"{'did not hold: ' if name == 'lenet5' else ''}no setting tried is within 1 point")
        what = ">= 10x within 1 point of dense" if name == "lenet5" else "largest ratio within 1 point of dense"
        out.append(f"- **{name}, {what}** (means over the seeds in `seeds`): {verdict}.")
        for r in sub:  # the rows run over several seeds and LeNet-5's 10x rows (the target), each on its mean
            if r["variant"] != "dense" and (r.get("n_seeds", 1) > 1 or (name == "lenet5" and
                                                                       r["label"].startswith("10x"))):
                drop = 100 * (dense["accuracy"] - r["accuracy"])
                out.append(f"  - {r['variant']} {r['label']} ({r['n_seeds']} seed{'s' if r['n_seeds'] > 1 else ''} "
                           f"{r['seeds']}): "
                           f"{r['ratio_params']:.2f}x params, {r['ratio_bytes']:.2f}x packed"
                           f"{' (the packed file is below 10x)' if r['ratio_bytes'] < 10 <= r['ratio_params'] else ''}"
                           ", accuracy "
                           f"{r['accuracy']:.2%} ± {100 * r['accuracy_std']:.2f} vs dense {dense['accuracy']:.2%} ± "
                           f"{100 * dense.get('accuracy_std', 0):.2f} ({dense.get('n_seeds', 1)} seeds): "
                           f"{drop:+.2f} points lost on the mean; within 1 point: "
                           f"**{'held' if drop <= 1 else 'not held'}**.")
    rnn = {r["model"]: r for r in rows if r["part"] == "b RNN"}
    d = rnn.get("clip-lstm")
    for name in ("clip-bt-lstm", "clip-tt-lstm"):
        b = rnn.get(name)
        if d and b:
            held = b["ratio_w_ih"] >= 1000 and b["accuracy"] >= d["accuracy"] - 0.01
            out.append(f"- **{b['variant']} >= 1000x fewer W_ih params with accuracy >= dense LSTM - 1 point**: "
                       f"{'held' if held else 'did not hold'}: W_ih {b['w_ih']:,} vs {d['w_ih']:,} "
                       f"({b['ratio_w_ih']:,}x), accuracy {b['accuracy']:.2%} vs dense {d['accuracy']:.2%}.")
    lat = [r for r in rows if r["part"] == "c latency"]
    if lat:
        out.append(latency_verdicts(lat))
    return "\n".join(out)


def latency_verdicts(lat: list[dict]) -> str:
    """Issue 18's targets on the planned rows (the eager layer, plan chosen per call) and on the inference-form rows
    (:func:`compactnn.decompose.inference_form`): at least as fast as dense at batch 1 and 256, faster where the
    chosen plan's MACs are below half of dense; the planned BT-LSTM clip model no slower than the dense LSTM. An
    inference-form layer whose plan is ``dense`` is an ``nn.Linear`` / ``nn.Conv2d`` of the dense layer's shape: it
    runs the same op as the dense layer, so it is judged held whatever the timing noise says (the ratio is shown)."""
    out = []
    for r in lat:
        frozen = r["variant"].endswith("inference form")
        if not r["variant"].endswith("planned") and "planned W_ih" not in r["variant"] and not frozen:
            continue
        base = next((q for q in lat if q["model"] == r["model"] and "dense" in q["variant"]), None)
        before = next((q for q in lat if q["model"] == r["model"]
                       and q["variant"] == r["variant"].replace("planned W_ih", "before (rebuilt W_ih)")
                       .replace(" planned", " before").replace(" inference form", " before")), None)
        if base is None:
            continue
        parts = []
        for key, b in (("ms_b1", 1), ("ms_b256", 256)):
            ratio = r[key] / base[key]
            half = (r.get(f"macs_ratio_b{b}") or 1.0) < 0.5
            same = frozen and r.get(f"plan_b{b}") == "dense"
            ok = same or (ratio < 1.0 if half else ratio <= 1.0)
            was = f", before {before[key]:.3g} ms" if before else ""
            rule = ("dense plan: the dense layer itself" if same else
                    "MACs < 1/2 dense: must be faster" if half else "at least as fast")
            parts.append(f"b{b}: {r[key]:.3g} vs dense {base[key]:.3g} ms ({ratio:.2f}x{was}; {rule}: "
                         f"**{'held' if ok else 'not held'}**)")
        out.append(f"  - {r['model']} {r['variant']}: " + "; ".join(parts))
    return "- **Issue 18: factorized layers at least as fast as dense (faster where MACs < 1/2)**:\n" + "\n".join(out)


def plan_check_text(checks: list[dict]) -> str:
    """The time model's choice against measurement: per layer and batch, every plan's modelled and measured time."""
    lines = ["Plan check (part c): the planner's choice (time model) against every plan measured in the same run; "
             "`loss` = measured time of the chosen plan / the fastest plan's.", "",
             "| layer | variant | batch | chosen | fastest | modelled us | measured us | MACs | loss |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in checks:
        fmt = lambda d: ", ".join(f"{k} {v:,.0f}" if isinstance(v, (int, float)) else f"{k} {v}"  # noqa: E731
                                  for k, v in d.items())
        lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['chosen']} | {r['fastest']} | "
                     f"{fmt(r['model_us'])} | {fmt(r['measured_us'])} | {fmt(r['macs'])} | {r['loss']:.2f} |")
    hit = sum(r["chosen"] == r["fastest"] for r in checks)
    worst = max(checks, key=lambda r: r["loss"])
    lines += ["", f"The model picked the measured fastest plan in {hit} of {len(checks)} cases; worst loss "
              f"{worst['loss']:.2f}x ({worst['model']} {worst['variant']}, batch {worst['batch']})."]
    return "\n".join(lines)


def discussion(rows: list[dict], n_test: int) -> str:
    """Where the papers' claims held, with the numbers of ``rows``."""
    out = []
    get = {r["key"]: r for r in rows}
    for part, name in (("a5", "LeNet-5"), ("a300", "LeNet-300-100")):
        dense = get.get(f"{part}/dense")
        pairs = [(get[k], get[k.replace("/scratch", "/trained")]) for k in get
                 if k.startswith(part + "/") and k.endswith("/scratch") and k.replace("/scratch", "/trained") in get]
        if not dense or not pairs:
            continue
        gains = ", ".join(f"{a['setting'].split(':')[0]}: {100 * (b['accuracy'] - a['accuracy']):+.2f}"
                          for a, b in pairs)
        helps = ("the trained start still helps" if all(b["accuracy"] > a["accuracy"] for a, b in pairs)
                 else "the trained start does not always help")
        out.append(f"- {name}: from trained minus from scratch, in points: {gains}. Trained weights are far from "
                   "low tensor-ring rank: the ALS fits have large relative errors (in `setting`; ALS itself recovers "
                   "exact rings, e.g. a rank-3 ring over 5 modes to < 1e-6 from random cores in "
                   "tests/decompose/test_trsvd.py), so the decomposed model starts far below dense (accuracy before "
                   f"fine-tuning in `setting`) and fine-tuning does most of the work; {helps}.")
        if part == "a5":
            loss = ", ".join(f"{r['ratio_params']}x {r['variant']}: {100 * (r['accuracy'] - dense['accuracy']):+.2f}"
                             for pair in pairs for r in pair)
            out.append(f"- Paper: LeNet-5 11x without loss on MNIST. Here, Fashion-MNIST, change in points vs dense: "
                       f"{loss}; 'without loss' did not hold, 'within 1 point' did where the verdict says so.")
    d, b = get.get("b/clip-lstm"), get.get("b/clip-bt-lstm")
    if d and b:
        se = 100 * math.sqrt(d["accuracy"] * (1 - d["accuracy"]) / n_test)
        diff = 100 * (b["accuracy"] - d["accuracy"])
        paper = ("was not reproduced; what held is 'no loss at >1000x fewer W_ih'" if diff < 15.6
                 else "was matched")
        n = min(d.get("n_seeds", 1), b.get("n_seeds", 1))
        if n > 1:
            seeds_se = 100 * math.sqrt((d["accuracy_std"] ** 2 + b["accuracy_std"] ** 2) / n)
            spread = math.sqrt(seeds_se ** 2 + 2 * se ** 2)  # seeds vary training; the 1000 test clips are a sample
            noise = ("within" if abs(diff) < 2 * spread else "beyond") + " noise of each other"
            how = (f"on the mean of {n} seeds (BT {b['accuracy']:.2%} ± {100 * b['accuracy_std']:.2f}, dense "
                   f"{d['accuracy']:.2%} ± {100 * d['accuracy_std']:.2f}); the seed-to-seed standard error of the "
                   f"difference is {seeds_se:.2f} points, but both are measured on the same {n_test} test clips, "
                   f"whose sampling error (about {se:.1f} points per accuracy) the seeds do not average out: with "
                   f"it the standard error of the difference is {spread:.1f} points, so the two are {noise} "
                   "(2 standard errors)")
        else:
            noise = ("within" if abs(diff) < 2 * math.sqrt(2) * se else "beyond") + " noise of each other"
            how = (f"from one seed; the binomial standard error of each accuracy on {n_test} test clips is about "
                   f"{se:.1f} points, so the two are {noise} (2 standard errors of the difference)")
        out.append(f"- BT-LSTM vs dense LSTM: {diff:+.2f} points {how}. The paper's +15.6 points on UCF11 (where "
                   f"the dense LSTM overfits 57,600-dim inputs) {paper}. "
                   + (f"BT-LSTM trained {d['s_per_epoch'] / b['s_per_epoch']:.2f}x faster per epoch here (rebuilt "
                      "W_ih, fewer parameters for Adam to update)." if max(d.get("s_per_epoch_std", 0),
                                                                            b.get("s_per_epoch_std", 0))
                      < 0.1 * min(d["s_per_epoch"], b["s_per_epoch"]) else
                      "Training times are not compared: some seeded runs shared the CPU with other jobs."))
    return "\n".join(out)


def notes_text(rows: list[dict], quick: bool, s: dict) -> str:
    """The notes under the table; ``s`` is the settings the rows were made with (FULL or QUICK). Verdicts and the
    discussion use the means over seeds."""
    commands = list(dict.fromkeys(r["command"] for r in rows if r.get("command")))
    rows = mean_rows(rows)
    info = {r["part"]: r.get("data", "") for r in rows}
    return f"""The line above names the last run only. The rows come from these commands (each merges its rows into
decomposition.json by key; every one ran under `flock /tmp/cpu.lock`):

{chr(10).join(f"    {c}" for c in commands)}

Targets (from issue 5):

{verdicts(rows)}

Discussion:

{discussion(rows, s['rnn']['n_test'])}

Setup. (a) {info.get('a TRN', '')}; LeNet-300-100 uses the paper's shapes (fc1 (4,7,4,7)->(3,4,5,5), fc2
(3,4,5,5)->(4,5,5), fc3 (4,5,5)->(2,5): 91 R^2 core weights + biases); LeNet-5 factors conv2, fc1 and fc2 at the
given per-layer ratio (ranks from `TensorRing(ratio=...)`: the largest uniform rank at that ratio; conv1, 520
weights, stays dense because a ring on its single input channel is larger than the layer). "from scratch" = the same
TR layers freshly initialized (variance-matched init) and trained ({describe(s['lenet5']['scratch'])} for LeNet-5,
{describe(s['lenet300']['scratch'])} for LeNet-300-100, cosine schedule, no weight decay); "from trained" =
`compactnn.compress(dense, TensorRing(init="auto", ...))`: TR-SVD start where its rank cap allows the rank, else
random cores, then ALS sweeps (the relative Frobenius error of each layer's fit is in `setting`), then fine-tuning.
`ratio_params` counts all parameters (biases and the dense conv1 included), `ratio_bytes` the packed `.cnz` files.
(b) {info.get('b RNN', '')}; clips padded at the start to 10 frames; last hidden state -> Linear; dropout
{s['rnn']['dropout']} on the input features and on the last hidden state; Adam (cosine to 0; lr per model in
`setting`: the factorized cells take a 5x larger lr than the dense one; our notes on the BT-RNN paper record no
learning rate or dropout, so these are our choices, made before the run and not tuned), batch
{s['rnn']['batch_size']}, no weight decay; all cells hidden 256 (4x4x4x4). W_ih counts the input-to-hidden weights
without bias: BT N(sum I_k J_k R_k + prod R_k), TT sum r_(k-1) m_k n_k r_k. The BT/TT cells train with
`ih_path="rebuilt"` (the dense W_ih is rebuilt from the factors once per batch, then one GEMM: same parameters and
function as the mode-by-mode contraction, which for 4096 -> 1024 has growing intermediates and is slower on CPU).
s/epoch is wall-clock training time per epoch on 2 threads (the seeded reruns of 5 Dec ran while other jobs used
the CPU outside the lock: their train_s is inflated ~2.5x; accuracies are unaffected, seed 0 reproduced the earlier
run's accuracies exactly). (c) all variants of a layer timed side by side in one process
(`time_side_by_side`: rounds x entries, each entry `reps` passes, median per round, then the median over rounds;
2 threads, inference mode, steady allocator); `before` runs the layer's own factorized forward (the code path every
call took before planning: merge or rebuild every call), `planned` the inference path of
`compactnn.decompose.plan` (the time model's choice for that input size: `dense` = cached rebuilt weight + one GEMM,
`merged` = cached merged cores + the optimal contraction chain, `factorized` = mode by mode); `macs` of a planned row
is the chosen plan's per-call MACs at batch 1. Weights are fresh (time does not depend on them).

Paper claims: TRN LeNet-5 11x without loss on MNIST; BT-LSTM above the dense LSTM on UCF11 with 17,388x fewer W_ih
parameters (our 64x64 frames allow at most 4096x1024 dense, so the ratio is smaller).
{'**Quick run**: digits and moving digits, tiny settings; the numbers only show the pipeline works.' if quick else ''}

![rnn](decomposition_rnn.png) ![latency](decomposition_latency.png)
"""
