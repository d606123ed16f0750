"""Distillation benchmark (issue 12): Hinton KD, FitNets hints, Polino et al.'s quantized distillation and
differentiable quantization, and compressed students fine-tuned with and without a teacher, on Fashion-MNIST.

Run in parts (each resumable, each meant to run under the CPU lock for a few minutes)::

    flock /tmp/cpu.lock timeout 470 python benchmarks/distillation.py --part teacher   # repeat until exit code 0
    python benchmarks/distillation.py --part report

``--part teacher`` trains (or loads) the teacher and then runs, while ``--budget`` lasts, the parts lenet5,
lenet5-quant, lenet5-other and lenet5-hints; resnet20 and resnet20-quant (ResNet-20 students, distilled from the
ResNet-20 teacher: self-distillation) run only when named.

Every finished row is stored in the cache folder (``rows.json``), so a part that is cut short resumes where it
stopped; a part stops starting rows after ``--budget`` seconds and exits with code 3 while rows remain.

Data: Fashion-MNIST, a stratified 10,000-image subset of the training set (seed 0) and the full 10,000-image test
set. Teacher: ResNet-20, 3 epochs of SGD (lr 0.1, cosine, batch 128); ResNet-56 was the plan, but on the shared
2-core machine one epoch of it took 6.5 minutes. Students from scratch: LeNet-5 (5 epochs, SGD lr 0.05) and ResNet-20
(8 epochs, SGD lr 0.1). Compressed students start from the float "alone" student of the same
seed. Seeds change the student's initial weights and data order; the teacher is the same for every seed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compactnn as cn  # noqa: E402
from common import parser, seeds_arg  # noqa: E402
from compactnn.distill import DifferentiableQuantize, Distill, QuantizedDistill, TeacherOutputs  # noqa: E402
from pretrained import cache_dir  # noqa: E402

TEACHER = {"model": "resnet20", "epochs": 3, "lr": 0.1, "batch_size": 128}
TEACHER_NAME = "ResNet-20 teacher"
#: epochs of the teacher, LeNet-5, ResNet-20, quantized fine-tunes, DQ, other fine-tunes in the digits fallback
DIGITS_EPOCHS = (15, 20, 15, 6, 3, 6)
TRAIN_ROWS = 10_000


def load_data(args):
    if args.digits:  # scikit-learn's bundled 8x8 digits, whole (1,437 train / 360 test): the small fallback
        return cn.data.load("digits")
    full = cn.data.load("fashion-mnist", root=args.data_root)
    import dataclasses

    n = 300 if args.smoke else 2_000 if args.quick else TRAIN_ROWS
    test = full.test.subset(300 if args.smoke else 2_000, seed=0) if args.quick or args.smoke else full.test
    return dataclasses.replace(full, train=full.train.subset(n, seed=0), test=test)


def folder(args) -> Path:
    path = cache_dir() / ("distill-bench-smoke" if args.smoke else "distill-bench-quick" if args.quick
                          else "distill-bench-digits" if args.digits else "distill-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def teacher(args, bundle, train: bool = True):
    """The teacher (TEACHER), trained once (resumable: one checkpoint per epoch) and cached as a .cnz."""
    out = folder(args) / f"teacher-{TEACHER['model']}.cnz"
    if out.exists():
        return cn.pack.load(out)
    if not train:
        raise SystemExit("the teacher is not trained yet; run --part teacher first")
    epochs = 1 if args.quick or args.smoke else TEACHER["epochs"]
    model = cn.models.create(TEACHER["model"], data=bundle, seed=0)
    start = time.perf_counter()
    cn.train.fit(model, bundle, epochs=epochs, lr=TEACHER["lr"], batch_size=TEACHER["batch_size"], seed=0,
                 checkpoint=folder(args) / f"teacher-{TEACHER['model']}.ckpt", resume=True)
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    cn.pack.save(model, out, metadata={"model": TEACHER["model"], "epochs": epochs, "accuracy": acc,
                                       "seconds_last_part": time.perf_counter() - start})
    print(f"teacher {TEACHER['model']} {epochs} epochs: accuracy {acc:.4f}", flush=True)
    return model



STUDENT = {"lenet5": {"epochs": 5, "lr": 0.02}, "resnet20": {"epochs": 8, "lr": 0.1}}
HINTS = {"lenet5": ("conv2", "layer3"), "resnet20": ("layer3", "layer3")}
QUANT_FT = {"epochs": 2, "lr": 0.01, "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "weight_decay": 2.2e-4}
DQ_FT = {"epochs": 1, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0}
OTHER_FT = {"epochs": 2, "lr": 0.01, "optimizer": "sgd"}


class Memo(torch.nn.Module):
    """The teacher behind a per-example logits cache shared by every row of a process (the library caches per
    fine-tune; this saves the first epoch's teacher passes of every later row)."""

    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher
        self.outputs = TeacherOutputs(teacher, cache=True)

    def forward(self, x):
        return self.outputs(x)[0]


def rows_path(args) -> Path:
    return folder(args) / "rows.json"


def load_rows(args) -> list[dict]:
    path = rows_path(args)
    return json.loads(path.read_text()) if path.exists() else []


def save_row(args, row: dict) -> None:
    rows = [r for r in load_rows(args) if (r["student"], r["row"], r["seed"]) != (row["student"], row["row"], row["seed"])]
    rows.append(row)
    tmp = rows_path(args).with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1))
    os.replace(tmp, rows_path(args))
    print(f"{row['student']:8s} {row['row']:34s} seed {row['seed']}: accuracy {row['accuracy']:.4f}, "
          f"{row['bytes']:,} B, {row['seconds']:.0f} s", flush=True)


def packed_bytes(model, path: Path) -> int:
    cn.pack.save(model, path)
    return path.stat().st_size


def measure(args, bundle, student: str, row: str, seed: int, build, epochs: str, keep: bool = False) -> None:
    start = time.perf_counter()
    model = build()
    seconds = time.perf_counter() - start
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    path = folder(args) / (f"{student}-{row}-s{seed}.cnz" if keep else "last.cnz")
    save_row(args, {"student": student, "row": row, "seed": seed, "accuracy": acc, "bytes": packed_bytes(model, path),
                    "seconds": round(seconds, 1), "epochs": epochs})


def float_student(args, bundle, student: str, seed: int):
    path = folder(args) / f"{student}-alone-s{seed}.cnz"
    if not path.exists():
        return None
    return cn.pack.load(path)


def fresh(student: str, bundle, seed: int):
    return cn.models.create(student, data=bundle, seed=seed)


def train_ft(student: str, seed: int, **extra) -> cn.config.FineTune:
    s = STUDENT[student]
    return cn.config.FineTune(epochs=s["epochs"], lr=s["lr"], optimizer="sgd", seed=seed, **extra)


def plan(args, bundle, part: str, teacher_memo, teacher_raw):
    """(student, row, seed, build, epochs text, keep) for every row of ``part``."""
    seeds = args.seeds
    out = []
    if part in ("lenet5", "resnet20", "lenet5-hints"):
        st = part.split("-")[0]
        e = STUDENT[st]["epochs"]
        for seed in (seeds if st == "lenet5" else args.resnet_seeds):
            if part != "lenet5-hints":
                out.append((st, "alone", seed, lambda st=st, seed=seed: cn.train.fit(
                    fresh(st, bundle, seed), bundle, **train_ft(st, seed).fit_kwargs(), quiet=True), f"{e}", True))
                out.append((st, "KD (T=4, alpha=0.9)", seed, lambda st=st, seed=seed: cn.compress(
                    fresh(st, bundle, seed), Distill(teacher=teacher_memo, finetune=train_ft(st, seed)), bundle),
                    f"{e}", False))
            if part == "lenet5":
                continue
            s_layer, t_layer = HINTS[st]
            out.append((st, f"hints ({s_layer} <- teacher {t_layer}) + KD", seed, lambda st=st, seed=seed, a=s_layer,
                        b=t_layer: cn.compress(fresh(st, bundle, seed), Distill(
                            teacher=teacher_raw, features="hints", layers=(a,), teacher_layers=(b,),
                            finetune=train_ft(st, seed)), bundle), f"{e}", False))
    elif part in ("lenet5-quant", "resnet20-quant"):
        st = part.split("-")[0]
        exclude = None if st == "lenet5" else ("conv1", "fc")
        for seed in (seeds if st == "lenet5" else args.resnet_seeds):
            for bits in (4, 2):
                q = QUANT_FT["epochs"]
                for label, cfg in (
                    (f"{bits}-bit plain quantized training (CE)", QuantizedDistill(
                        bits=bits, exclude=exclude, finetune={**QUANT_FT, "seed": seed})),
                    (f"{bits}-bit quantized distillation", QuantizedDistill(
                        bits=bits, teacher=teacher_memo, exclude=exclude, finetune={**QUANT_FT, "seed": seed})),
                    (f"{bits}-bit differentiable quantization", DifferentiableQuantize(
                        bits=bits, teacher=teacher_memo, exclude=exclude, finetune={**DQ_FT, "seed": seed})),
                ):
                    epochs = f"{STUDENT[st]['epochs']} + {DQ_FT['epochs'] if 'differentiable' in label else q}"
                    out.append((st, label, seed, lambda st=st, seed=seed, cfg=cfg: cn.compress(
                        float_student(args, bundle, st, seed), cfg, bundle), epochs, False))
    elif part == "lenet5-other":
        st = "lenet5"
        o = OTHER_FT["epochs"]
        for seed in seeds:
            for label, make in (
                ("magnitude 90%", lambda ft: cn.prune.MagnitudePrune(sparsity=0.9, finetune=ft)),
                ("k-means 2-bit (Deep Compression)", lambda ft: cn.quantize.KMeansQuantize(bits=2, finetune=ft)),
            ) + tuple(syq_rows()):
                for with_teacher in (False, True):
                    ft = cn.config.FineTune(**OTHER_FT, seed=seed, teacher=teacher_memo if with_teacher else None)
                    out.append((st, f"{label}, fine-tuned {'with' if with_teacher else 'without'} teacher", seed,
                                lambda seed=seed, make=make, ft=ft: cn.compress(
                                    float_student(args, bundle, st, seed), make(ft), bundle),
                                f"{STUDENT[st]['epochs']} + {o}", False))
    return out


def syq_rows():
    """The SYQ ternary row (weight_bits 2, 8-bit activations, SYQ's own Adam at 1e-4), when the lowbit helper's SYQ
    is registered (else it is reported as pending)."""
    if "syq" not in cn.list_methods():
        return []
    import dataclasses

    cls = cn.api.config_class("syq")
    return [("SYQ ternary (W2A8)", lambda ft: cls(weight_bits=2, act_bits=8, finetune=dataclasses.replace(
        ft, optimizer=None, lr=None)))]


_TEACHERS: dict = {}


def run_part(args, bundle, part: str, start: float) -> int:
    if not _TEACHERS:
        _TEACHERS["raw"] = teacher(args, bundle, train=False)
        _TEACHERS["memo"] = Memo(_TEACHERS["raw"])
    teacher_raw, teacher_memo = _TEACHERS["raw"], _TEACHERS["memo"]
    done = {(r["student"], r["row"], r["seed"]) for r in load_rows(args)}
    if ("teacher", TEACHER_NAME, 0) not in done:
        measure(args, bundle, "teacher", TEACHER_NAME, 0, lambda: teacher_raw, f"{TEACHER['epochs']}")
    todo = [p for p in plan(args, bundle, part, teacher_memo, teacher_raw) if (p[0], p[1], p[2]) not in done]
    for st, row, seed, build, epochs, keep in todo:
        if time.perf_counter() - start > args.budget:
            print(f"budget spent; {len(todo)} rows left in {part}: run it again", flush=True)
            return 3
        if "alone" not in row and st != "teacher" and part not in ("lenet5", "resnet20", "lenet5-hints") \
                and float_student(args, bundle, st, seed) is None:
            print(f"skip {st} {row} seed {seed}: run --part {st} first", flush=True)
            continue
        try:
            measure(args, bundle, st, row, seed, build, epochs, keep)
        except cn.errors.CompactnnError as err:  # e.g. a diverged run: recorded, the part goes on
            print(f"{st} {row} seed {seed}: failed: {err}", flush=True)
            save_row(args, {"student": st, "row": row, "seed": seed, "accuracy": float("nan"), "bytes": 0,
                            "seconds": 0.0, "epochs": epochs, "failed": str(err)})
        todo = todo[1:]
    return 0


def report(args) -> None:
    from common import aggregate, write_results

    rows = load_rows(args)
    if not any(r["student"] == "teacher" for r in rows):
        raise SystemExit(f"no rows in {rows_path(args)} yet; run --part teacher first")
    teacher_acc = next(r["accuracy"] for r in rows if r["student"] == "teacher")
    failed = [r for r in rows if r.get("failed")]
    rows = [r for r in rows if not r.get("failed")]
    for r in rows:
        r["drop"] = 100 * (teacher_acc - r["accuracy"])  # points below the teacher
    order = {"teacher": 0, "lenet5": 1, "resnet20": 2}
    rows.sort(key=lambda r: (order.get(r["student"], 9), r["seed"]))
    table = aggregate(rows, ["student", "row"], ["accuracy", "drop", "bytes", "seconds"])
    for t in table:
        t["epochs"] = next(r["epochs"] for r in rows if (r["student"], r["row"]) == (t["student"], t["row"]))
        t["bytes"] = f"{t['bytes_mean']:,.0f}"
    if "syq" not in cn.list_methods():
        table.append({"student": "lenet5", "row": "SYQ ternary, fine-tuned with / without teacher",
                      "accuracy": "pending (SYQ not merged)"})
    mean = {(t["student"], t["row"]): t.get("accuracy_mean") for t in table}
    measured = {(r["student"], r["row"], r["seed"]) for r in rows}
    planned = [(st, row, seed) for part in ("lenet5", "lenet5-quant", "lenet5-other", "lenet5-hints", "resnet20",
                                            "resnet20-quant")
               for st, row, seed, *_ in plan(args, None, part, None, None)]
    missing = [f"{st} / {row} / seed {seed}" for st, row, seed in planned if (st, row, seed) not in measured]
    measured = {(r["student"], r["row"], r["seed"]) for r in rows}
    notes = settings_text() + "\n\n" + claims(mean)
    if failed:
        notes += "\n\n## Failed runs\n\n" + "\n".join(f"- {r['student']} / {r['row']} / seed {r['seed']}: "
                                                       f"{r['failed']}" for r in failed)
    if missing:
        notes += "\n\n## Not run (CPU time ran out)\n\n" + "\n".join(f"- {m}" for m in missing)
    for t in table:
        t["drop (points)"] = t.pop("drop", None)
        t["packed bytes"] = t.pop("bytes", None)
        t["train seconds"] = t.pop("seconds", None)
    columns = ["student", "row", "seeds", "epochs", "accuracy", "drop (points)", "packed bytes", "train seconds"]

    def plot(fh):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 6))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        shown = [t for t in table if t.get("accuracy_mean") is not None]
        ax.barh(range(len(shown)), [t["accuracy_mean"] for t in shown],
                xerr=[t.get("accuracy_std", 0) for t in shown], color="tab:blue")
        ax.set_yticks(range(len(shown)))
        ax.set_yticklabels([f"{t['student']}: {t['row']}" for t in shown], fontsize=7)
        ax.invert_yaxis()
        lo = min(t["accuracy_mean"] for t in shown)
        ax.set_xlim(max(0, lo - 0.05), 1)
        ax.axvline(teacher_acc, color="k", ls="--", lw=1)
        ax.set_xlabel("test accuracy (Fashion-MNIST), mean ± std over seeds; dashed: teacher")
        fig.tight_layout()
        fig.savefig(fh, format="png", dpi=120)

    if args.digits:
        notes = notes.replace("Fashion-MNIST, a stratified", "NOT Fashion-MNIST: this is the fallback run on scikit-learn's "
                              "8x8 digits (all 1,437 training and 360 test images), with the epochs of DIGITS_EPOCHS; "
                              "the Fashion-MNIST plan is a stratified")
    write_results("distillation_digits" if args.digits else "distillation", args.out, table, columns,
                  "Distillation: KD, hints, quantized distillation" + (" (digits fallback)" if args.digits else ""),
                  notes, plot)


def settings_text() -> str:
    return f"""## Settings

- Data: Fashion-MNIST, a stratified {TRAIN_ROWS:,}-image subset of the 60,000 training images (seed 0); accuracy on
  the full 10,000-image test set. No augmentation, so the teacher's logits are computed once per training image and
  reused (the first KD row of a process pays the teacher's pass over the training set in its seconds).
- Teacher: ResNet-20 trained {TEACHER['epochs']} epochs (SGD, lr {TEACHER['lr']}, cosine, batch 128, seed 0); the
  same teacher for every seed and row. "drop" is in points below the teacher. ResNet-56 was planned; one epoch of it
  took 6.5 minutes on the shared CPU, so the cheaper ResNet-20 teaches (a deeper net with 13x LeNet-5's MACs).
- Students from scratch: LeNet-5 {STUDENT['lenet5']['epochs']} epochs at lr {STUDENT['lenet5']['lr']}, ResNet-20
  {STUDENT['resnet20']['epochs']} epochs at lr {STUDENT['resnet20']['lr']} (SGD, momentum 0.9, weight decay 5e-4,
  cosine, batch 128). KD: T = 4, alpha = 0.9 (batchmean KL). Hints: FitNets 1x1 regressor, weight 100, plus KD.
- Quantized rows start from the float "alone" student of the same seed and fine-tune {QUANT_FT['epochs']} epochs
  (SGD Nesterov 0.9, lr {QUANT_FT['lr']}, weight decay 2.2e-4): plain = the same quantizer with cross-entropy only;
  quantized distillation = 0.7 T^2 KL + 0.3 CE at T = 2; buckets of 256, min-max scaling, deterministic rounding.
  Differentiable quantization: {DQ_FT['epochs']} epochs of Adam at lr {DQ_FT['lr']} on the points only (our
  choice for this short budget; the authors use SGD at 1e-5 for 10-20 epochs, not tried here), same loss. LeNet-5: every layer quantized;
  ResNet-20: first conv and last FC left in float (as the paper).
- Pruned / k-means rows: from the float student, {OTHER_FT['epochs']} epochs of SGD at lr {OTHER_FT['lr']}, with
  ``FineTune(teacher=...)`` (T = 4, alpha = 0.9) or without.
- Packed bytes: the .cnz file as written. Train seconds: wall time of the row's training under the CPU lock (2
  threads)."""


def claims(mean: dict) -> str:
    def get(st, row):
        return mean.get((st, row))

    lines = ["## Claims (judged on the mean over seeds)", ""]

    def judge(text, a, b, cond):
        if a is None or b is None:
            lines.append(f"- {text}: not measured")
        else:
            lines.append(f"- {text}: {'holds' if cond(a, b) else 'does not hold'} ({a:.4f} vs {b:.4f})")

    for st in ("lenet5", "resnet20"):
        judge(f"{st}: KD student >= student alone", get(st, "KD (T=4, alpha=0.9)"), get(st, "alone"),
              lambda a, b: a >= b)
        judge(f"{st}: 4-bit quantized distillation >= 4-bit plain quantized training",
              get(st, "4-bit quantized distillation"), get(st, "4-bit plain quantized training (CE)"),
              lambda a, b: a >= b)
        judge(f"{st}: 4-bit quantized distillation within 1 point of the float student",
              get(st, "4-bit quantized distillation"), get(st, "alone"), lambda a, b: a >= b - 0.01)
        judge(f"{st}: 2-bit differentiable quantization >= 2-bit quantized distillation",
              get(st, "2-bit differentiable quantization"), get(st, "2-bit quantized distillation"),
              lambda a, b: a >= b)
    for label in ("magnitude 90%", "k-means 2-bit (Deep Compression)", "SYQ ternary (W2A8)"):
        judge(f"lenet5: {label} fine-tuned with the teacher no worse than without",
              get("lenet5", f"{label}, fine-tuned with teacher"), get("lenet5", f"{label}, fine-tuned without teacher"),
              lambda a, b: a >= b)
    return "\n".join(lines)


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--part", default="teacher",
                   help="teacher | lenet5 | lenet5-quant | lenet5-other | resnet20 | resnet20-quant | report")
    p.add_argument("--seeds", type=seeds_arg, default=[0, 1, 2], help="LeNet-5 seeds")
    p.add_argument("--resnet-seeds", type=seeds_arg, default=[0], help="ResNet-20 seeds")
    p.add_argument("--budget", type=float, default=400, help="start no new row after this many seconds")
    p.add_argument("--digits", action="store_true", help="the small fallback: sklearn digits, more epochs, all "
                                                            "parts (writes distillation_digits.*)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of every code path (300 images, a "
                                                           "ResNet-20 teacher): for checking the script")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.digits:
        for d, e in zip((TEACHER, STUDENT["lenet5"], STUDENT["resnet20"], QUANT_FT, DQ_FT, OTHER_FT), DIGITS_EPOCHS):
            d["epochs"] = e
    if args.quick or args.smoke:  # 2,000 (smoke: 300) training images, one epoch everywhere, one seed
        for d in (*STUDENT.values(), QUANT_FT, DQ_FT, OTHER_FT):
            d["epochs"] = 1
        args.seeds, args.resnet_seeds = [0], [0]
    if args.part == "report":
        report(args)
        return 0
    bundle = load_data(args)
    start = time.perf_counter()
    if args.part == "teacher":  # then the LeNet-5 parts, while the budget lasts
        teacher(args, bundle)
        print("teacher done", flush=True)
        args.part = "lenet5,lenet5-quant,lenet5-other,lenet5-hints" + (",resnet20,resnet20-quant" if args.digits
                                                                            else "")
    for part in args.part.split(","):
        code = run_part(args, bundle, part, start)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
