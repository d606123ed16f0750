"""Compressed IDN x2 (``python benchmarks/idn.py --part compress --variant NAME``): the library's magnitude pruning
and Deep Compression k-means weight sharing on the official x2 weights, fine-tuned with L2 on LR/HR patches from
B100 and scikit-image's photos, then scored on Set5/Set14 (official protocol), packed bytes (``pack.packed_size``)
and the wall time of the Set5 pass. One variant per run (each well under 8 minutes on 2 cores).

Only Conv2d weights are compressed: the library's methods act on Linear/Conv layers, so the 17x17 transposed conv
(18,496 weights) and all biases stay float32.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from compactnn import pack
from compactnn.api import compress
from compactnn.config import FineTune
from compactnn.prune import MagnitudePrune
from compactnn.quantize import KMeansQuantize
from compactnn.sr.caffe import import_idn
from compactnn.sr.evaluate import evaluate_set
from compactnn.sr.train import PatchSampler, default_sources

VARIANTS = {
    "float": [],
    "kmeans-6bit": [("kmeans", 6, False)],
    "kmeans-4bit": [("kmeans", 4, False)],
    "kmeans-4bit-ft": [("kmeans", 4, True)],
    "kmeans-3bit-ft": [("kmeans", 3, True)],
    "prune-50": [("prune", 0.5, False)],
    "prune-50-ft": [("prune", 0.5, True)],
    "prune-50-ft+kmeans-5bit-ft": [("prune", 0.5, True), ("kmeans", 5, True)],
}


def patches(data, n: int, patch: int = 29, seed: int = 0):
    sampler = PatchSampler(default_sources(data), 2, patch)
    lr, hr = sampler.sample(np.random.default_rng(seed), n, patch)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(lr, hr), batch_size=16, shuffle=True,
                                       generator=torch.Generator().manual_seed(seed))


def l2(model, x, y):
    return F.mse_loss(model(x)[..., 2:-2, 2:-2], y[..., 2:-2, 2:-2])


def part_compress(args, rest, results):
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--variant", required=True, help=f"comma-separated, of {', '.join(VARIANTS)}")
    p.add_argument("--patches", type=int, default=1280, help="fine-tuning patches (one epoch, batch 16)")
    p.add_argument("--lr", type=float, default=2e-5)
    opts = p.parse_args(rest)
    names = opts.variant.split(",")
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise SystemExit(f"unknown variant {bad[0]}; choose from {', '.join(VARIANTS)}")
    for name in names:
        run_variant(args, opts, name, results)


def run_variant(args, opts, variant, results):
    t0 = time.time()
    model = import_idn(args.data / "idn" / "IDN_x2.caffemodel", 2)
    float_bytes = pack.packed_size(model)
    loader = None
    steps = []
    for kind, value, ft in VARIANTS[variant]:
        finetune = None
        if ft:
            loader = loader or patches(args.data, opts.patches)
            finetune = FineTune(epochs=1, lr=opts.lr, optimizer="adam", weight_decay=0.0, loss=l2)
        cfg = (MagnitudePrune(sparsity=value, finetune=finetune) if kind == "prune"
               else KMeansQuantize(bits=value, finetune=finetune))
        model = compress(model, cfg, loader if ft else None)
        steps.append(f"{kind} {value}{' + fine-tune' if ft else ''}")
    model.eval()
    t_compress = time.time() - t0
    nbytes = pack.packed_size(model)
    t1 = time.time()
    r5 = evaluate_set(model, "Set5", data=args.data, quiet=True)
    t_set5 = time.time() - t1
    r14 = evaluate_set(model, "Set14", data=args.data, quiet=True)
    zeros = sum(int((m.weight == 0).sum()) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    row = {"name": variant, "steps": steps, "set5": r5["psnr"], "set14": r14["psnr"], "bytes": nbytes,
           "ratio": float_bytes / nbytes, "seconds": t_set5, "compress_seconds": round(t_compress, 1),
           "conv_zeros": zeros, "finetune": {"patches": opts.patches, "lr": opts.lr, "batch": 16, "epochs": 1,
                                             "loss": "L2", "optimizer": "adam"} if loader is not None else None}
    print(row, flush=True)
    comp = results.setdefault("compress", {"rows": []})
    comp["command"] = "python benchmarks/idn.py --part compress --variant NAME"
    comp["env"] = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    comp["notes"] = ("x2, official weights as the starting point; `vs float` = packed bytes of the float model / "
                     "packed bytes; Set5 seconds = wall time of the Set5 pass (2 threads, under the CPU lock). Only "
                     "Conv2d weights are compressed (the transposed conv and biases stay float32). Fine-tuning: one "
                     "epoch of L2 over the stated number of 29x29 LR patches, Adam, batch 16.")
    comp["rows"] = [r for r in comp["rows"] if r["name"] != variant] + [row]
    order = list(VARIANTS)
    comp["rows"].sort(key=lambda r: order.index(r["name"]))
