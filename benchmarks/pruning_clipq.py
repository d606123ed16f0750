"""CLIP-Q rows for the pruning benchmark: LeNet-300-100 and LeNet-5 on Fashion-MNIST.

Per model: the dense reference; CLIP-Q applied with the searched ``(p, bits)`` but no fine-tuning ("direct"); and
CLIP-Q after fine-tuning all layers together. ``(p, bits)`` per layer come from the GP search
(:mod:`compactnn.prune.clipq_search`) on 10% of the training set held out, under a global size target on the weights
(their stored bits at most ``1 / ratio`` of their fp32 bits, so that the whole packed file, with its fp32 biases and
manifest, lands at >= 40x smaller than the dense one). ``packed_bytes`` is the size of the ``.cnz`` file
:func:`compactnn.pack.save` writes; ``ratio`` is against the packed dense model. ``benchmarks/pruning.py`` imports
:func:`run`; run alone (``python benchmarks/pruning_clipq.py [--quick]``) it prints the rows. ``--quick`` uses digits.
"""

from __future__ import annotations

import copy
import time

import torch

import compactnn as cn
from compactnn.config import FineTune
from compactnn.prune.clipq import ClipQ
from compactnn.prune.clipq_search import search

from pretrained import pretrained  # noqa: E402

# The trained references other benchmarks use too (same cache entries): pruning_lc (lenet300), integer_only (lenet5).
# LeNet-300-100's weights target 45x (it was 55.6x, a 0.018 fraction of fp32 bits, with 15 fine-tuning epochs): the
# claim to check is <= 0.5 points at >= 40x, and over three seeds the 55.6x setting lost 0.47-0.73 points, so the
# search now spends the margin above 40x on bits, and the fine-tune runs 20 epochs.
SETTINGS = {
    "lenet300": dict(train=dict(epochs=20, lr=0.1, batch_size=128), trials=50, ratio=45.0,
                     finetune=dict(epochs=20, lr=0.01)),
    "lenet5": dict(train=dict(epochs=12, lr=0.01, batch_size=128), trials=50, ratio=1 / 0.018,
                   finetune=dict(epochs=10, lr=0.01)),
}
QUICK = {
    "lenet300": dict(train=dict(epochs=30, lr=0.05, batch_size=64), trials=15, ratio=1 / 0.03,
                     finetune=dict(epochs=8, lr=0.01)),
    "lenet5": dict(train=dict(epochs=15, lr=0.05, batch_size=64), trials=15, ratio=1 / 0.03,
                   finetune=dict(epochs=8, lr=0.01)),
}
SEARCH = dict(lam=0.1, sparsity_range=(0.6, 0.99), bits_range=(2, 6), heldout=0.1, sampler="gp", seed=0)
COLUMNS = ["model", "data", "method", "settings", "accuracy", "drop", "params", "nonzero", "packed_bytes", "ratio",
           "seconds"]


def measure(model, bundle, name: str, method: str, settings: str, seconds: float, dense: dict | None = None) -> dict:
    """One row: test accuracy, drop in points against ``dense``, parameter/nonzero counts, packed bytes and ratio."""
    acc = cn.train.evaluate(model, bundle)["accuracy"]
    size = cn.pack.packed_size(model)
    return dict(model=name, data=bundle.name, method=method, settings=settings, accuracy=round(acc, 4),
                drop=round(100 * (dense["accuracy"] - acc), 2) if dense else 0.0,
                params=sum(p.numel() for p in model.parameters()),
                nonzero=sum(int(torch.count_nonzero(p)) for p in model.parameters()), packed_bytes=size,
                ratio=round((dense["packed_bytes"] if dense else size) / size, 2), seconds=round(seconds, 1))


def describe(settings: dict[str, tuple[float, int]]) -> str:
    return ", ".join(f"{n} p={p:.3f} b={b}" for n, (p, b) in settings.items())


def run_model(name: str, bundle, quick: bool, quiet: bool | None = None, seed: int = 0) -> list[dict]:
    s = (QUICK if quick else SETTINGS)[name]
    ref = pretrained(name, bundle, seed=seed, **s["train"]).train(False)
    dense = measure(ref, bundle, name, "dense fp32", "reference", 0.0)
    rows = [dense]
    print(f"{name} dense: {dense['accuracy']:.4f}, {dense['packed_bytes']} bytes", flush=True)

    t = time.perf_counter()
    cfg = ClipQ(search=True, trials=s["trials"], ratio=s["ratio"], finetune=FineTune(**s["finetune"], seed=seed),
                study_name=f"clipq-{name}-{bundle.name}", **{**SEARCH, "seed": seed})
    found = search(ref, cfg, bundle, quiet=quiet)
    searched = time.perf_counter() - t
    chosen = describe(found.settings)
    print(f"{name} search ({searched:.0f} s): {chosen}; held-out error {found.error:.4f}, weight bits "
          f"{1 / found.ratio:.4f} of fp32", flush=True)
    fixed = dict(sparsity={n: v[0] for n, v in found.settings.items()}, bits={n: v[1] for n, v in found.settings.items()})
    direct = cn.compress(ref, ClipQ(**fixed, finetune=None))
    rows.append(measure(direct, bundle, name, "CLIP-Q direct", f"{chosen}; no fine-tuning", searched, dense))

    t = time.perf_counter()
    tuned = cn.compress(copy.deepcopy(ref), ClipQ(**fixed, finetune=cfg.finetune), data=bundle)
    ft = s["finetune"]
    settings = (f"{chosen}; {s['trials']} GP trials, weights <= {1 / s['ratio']:.3g} of fp32 bits, λ={SEARCH['lam']}; "
                f"fine-tune {ft['epochs']} ep lr {ft['lr']}")
    rows.append(measure(tuned, bundle, name, "CLIP-Q", settings, searched + time.perf_counter() - t, dense))
    for r in rows[1:]:
        print(f"{name} {r['method']}: {r['accuracy']:.4f} (drop {r['drop']} pts), {r['packed_bytes']} bytes, "
              f"{r['ratio']}x", flush=True)
    return rows


def run(bundle, quick: bool, quiet: bool | None = None, models=("lenet300", "lenet5"), seed: int = 0) -> list[dict]:
    """The CLIP-Q rows on ``bundle`` (Fashion-MNIST; digits with ``quick``) for ``models``; ``seed`` seeds the
    reference model (initial weights and training), the search and the fine-tune."""
    return [r for name in models for r in run_model(name, bundle, quick, quiet, seed)]


def main() -> None:
    from common import parser

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet300,lenet5", help="comma-separated registry names")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    bundle = cn.data.load("digits" if args.quick else "fashion-mnist", root=args.data_root)
    t = time.perf_counter()
    rows = run(bundle, args.quick, models=tuple(args.models.split(",")))
    for r in rows:
        print({k: r[k] for k in COLUMNS})
    print(f"total {time.perf_counter() - t:.0f} s")


if __name__ == "__main__":
    main()
