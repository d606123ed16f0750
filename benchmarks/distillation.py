"""Distillation benchmark (issue 12): Hinton KD, FitNets hints, Polino et al.'s quantized distillation and
differentiable quantization, and compressed students fine-tuned with and without a teacher, on Fashion-MNIST.

Run in parts (each resumable, each meant to run under the CPU lock for a few minutes)::

    flock /tmp/cpu.lock timeout 470 python benchmarks/distillation.py --part teacher   # repeat until it says done
    flock /tmp/cpu.lock python benchmarks/distillation.py --part lenet5
    ...
    python benchmarks/distillation.py --part report

Every finished row is stored in the cache folder (``rows.json``), so a part that is cut short resumes where it stopped.
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
from common import parser  # noqa: E402
from pretrained import cache_dir  # noqa: E402

TEACHER = {"model": "resnet56", "epochs": 8, "lr": 0.1, "batch_size": 128}
TRAIN_ROWS = 10_000


def load_data(args):
    full = cn.data.load("fashion-mnist", root=args.data_root)
    import dataclasses

    n = 2_000 if args.quick else TRAIN_ROWS
    test = full.test.subset(2_000, seed=0) if args.quick else full.test
    return dataclasses.replace(full, train=full.train.subset(n, seed=0), test=test)


def folder(args) -> Path:
    path = cache_dir() / ("distill-bench-quick" if args.quick else "distill-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


def teacher(args, bundle, train: bool = True):
    """The ResNet-56 teacher, trained once (resumable: one checkpoint per epoch) and cached as a .cnz."""
    out = folder(args) / "teacher-resnet56.cnz"
    if out.exists():
        return cn.pack.load(out)
    if not train:
        raise SystemExit("the teacher is not trained yet; run --part teacher first")
    epochs = 1 if args.quick else TEACHER["epochs"]
    model = cn.models.create(TEACHER["model"], data=bundle, seed=0)
    start = time.perf_counter()
    cn.train.fit(model, bundle, epochs=epochs, lr=TEACHER["lr"], batch_size=TEACHER["batch_size"], seed=0,
                 checkpoint=folder(args) / "teacher.ckpt", resume=True)
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    cn.pack.save(model, out, metadata={"model": TEACHER["model"], "epochs": epochs, "accuracy": acc,
                                       "seconds_last_part": time.perf_counter() - start})
    print(f"teacher {TEACHER['model']} {epochs} epochs: accuracy {acc:.4f}", flush=True)
    return model


def main(argv=None):
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--part", default="teacher", help="teacher | lenet5 | resnet20 | report")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    bundle = load_data(args)
    if args.part == "teacher":
        teacher(args, bundle)
        print("done", flush=True)


if __name__ == "__main__":
    main()
