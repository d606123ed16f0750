"""Tensor decomposition: Tensor Ring Nets on LeNets and BT-LSTM on moving Fashion-MNIST, accuracy, size and speed.

(a) TRN (Wang et al., CVPR 2018) on Fashion-MNIST: LeNet-300-100 with the paper's mode shapes at R in {3,5,10,15}
(91 R^2 weights) and LeNet-5 (conv2, fc1, fc2 as tensor rings at per-layer compression ratios), each trained from
scratch and obtained from a trained model (``compactnn.compress`` with ``TensorRing``: TR-SVD + ALS, fine-tune).
(b) BT-LSTM (Ye et al., CVPR 2018) against a dense LSTM and a TT-LSTM on moving Fashion-MNIST (64x64 frames).
(c) Inference time of the factorized layers against the dense ones (batch 1 and 256, 2 threads).
Compression ratios come from parameter counts and from packed ``.cnz`` bytes. Writes docs/results/decomposition.*
and docs/results/decomposition_{rnn,latency}.png. ``--quick``: scikit-learn digits (and moving digits), ~3 minutes.

Runs are split into parts so that each stays short on a shared CPU: ``--parts`` takes ``a300`` (LeNet-300-100),
``a5`` (LeNet-5), ``b-lstm``, ``b-bt``, ``b-tt`` (one clip model each), ``c`` (latency), the groups ``a``, ``b``,
``all``, or ``report`` (run nothing, rewrite the .md and plots from the JSON); ``--ranks`` / ``--ratios`` restrict
a300 / a5 to some settings. Every row keeps the command that made it, and each run merges its rows into the
existing ``decomposition.json`` (replacing rows with the same key; ``--fresh`` starts over), then rewrites the .md
table and plots from all rows, listing every command.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import compactnn as cn  # noqa: E402
from compactnn.data import DataBundle  # noqa: E402
from compactnn.data.moving import load_moving_fashion_mnist, moving_bundle  # noqa: E402
from compactnn.decompose import BTLinear, TRConv2d, TRLinear  # noqa: E402
from compactnn.decompose.inference import freeze_conv, freeze_linear  # noqa: E402
from compactnn.decompose.method import TensorRing, plan_layers  # noqa: E402
from compactnn.decompose.shapes import suggest_modes  # noqa: E402
from compactnn.decompose.trsvd import conv_tensor, linear_tensor, ring_error  # noqa: E402
from compactnn.decompose.tt import TTLinear  # noqa: E402
from compactnn.models.recurrent import RebuiltBTLinear, RebuiltTTLinear  # noqa: E402

from common import markdown_table, parser, seeds_arg  # noqa: E402
from compactnn.files import atomic_write, atomic_write_text  # noqa: E402
from decomposition_report import (describe, mean_rows, notes_text, plan_check_text, plot_latency,  # noqa: E402
                                  plot_rnn, plot_trn, table_rows)
from pretrained import pretrained  # noqa: E402

# TR training: Adam (no weight decay, cosine to 0) from scratch and for fine-tuning; the dense references are the
# cached SGD models shared with the other benchmarks (benchmarks/pretrained.py).
ADAM = dict(optimizer="adam", weight_decay=0.0)
FULL = dict(  # per part, on 2 cores: a300 ~10 min, a5 ~12 min per ratio, b-* ~5 min each, c ~2 min
    lenet300=dict(dense=dict(epochs=20, lr=0.1), scratch=dict(epochs=12, lr=2e-3, **ADAM),
                  ft=dict(epochs=8, lr=1e-3, **ADAM), ranks=(3, 5, 10, 15), sweeps=10),
    lenet5=dict(dense=dict(epochs=12, lr=0.01), scratch=dict(epochs=15, lr=2e-3, **ADAM),
                ft=dict(epochs=10, lr=1e-3, **ADAM), ratios=(10, 11, 20), sweeps=8),
    rnn=dict(n_train=6000, n_test=1000, size=64, epochs=8, batch_size=64, dropout=0.25,
             lr={"clip-lstm": 1e-3, "clip-bt-lstm": 5e-3, "clip-tt-lstm": 5e-3}),
    repeats=10,
)
QUICK = dict(  # about 3 minutes
    lenet300=dict(dense=dict(epochs=15, lr=0.05), scratch=dict(epochs=15, lr=2e-3, **ADAM),
                  ft=dict(epochs=10, lr=1e-3, **ADAM), ranks=(3, 5, 10, 15), sweeps=3),
    lenet5=dict(dense=dict(epochs=15, lr=0.05), scratch=dict(epochs=10, lr=2e-3, **ADAM),
                ft=dict(epochs=10, lr=1e-3, **ADAM), ratios=(10, 20), sweeps=3),
    rnn=dict(n_train=1000, n_test=300, size=32, epochs=8, batch_size=32, dropout=0.25,
             lr={"clip-lstm": 1e-3, "clip-bt-lstm": 5e-3, "clip-tt-lstm": 5e-3}),
    repeats=5,
)
PARTS = ("a300", "a5", "b-lstm", "b-bt", "b-tt", "c")
GROUPS = {"a": ("a300", "a5"), "b": ("b-lstm", "b-bt", "b-tt"), "all": PARTS}
# the paper's LeNet-300-100 shapes: fc1 (4*7*4*7)->(3*4*5*5), fc2 (3*4*5*5)->(4*5*5), fc3 (4*5*5)->(2*5): 91 R^2
PAPER_OUT = {"fc1": (3, 4, 5, 5), "fc2": (4, 5, 5), "fc3": (2, 5)}
CELLS = [("clip-lstm", "dense LSTM"), ("clip-bt-lstm", "BT-LSTM"), ("clip-tt-lstm", "TT-LSTM")]
CELL_PART = {"b-lstm": "clip-lstm", "b-bt": "clip-bt-lstm", "b-tt": "clip-tt-lstm"}
COLUMNS = ["part", "model", "variant", "setting", "seeds", "params", "ratio_params", "packed_bytes", "ratio_bytes", "w_ih",
           "ratio_w_ih", "macs", "accuracy", "train_s", "s_per_epoch", "ms_b1", "ms_b256"]


def log(msg: str) -> None:
    print(f"[decomposition {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def size_row(model: nn.Module, ref: dict | None, input_shape) -> dict:
    """params, packed bytes, MACs (batch 1) and the ratios to the dense reference row ``ref``."""
    params, packed = nparams(model), cn.pack.packed_size(model)
    row = dict(params=params, packed_bytes=packed, macs=sum(cn.report.count_macs(model, input_shape).values()))
    row["ratio_params"] = round((ref or row)["params"] / params, 2)
    row["ratio_bytes"] = round((ref or row)["packed_bytes"] / packed, 2)
    return row


def fit_timed(model, bundle, seed: int = 0, **kw) -> float:
    start = time.perf_counter()
    cn.train.fit(model, bundle, **{"seed": seed, "quiet": None, **kw})
    return time.perf_counter() - start


def accuracy(model, bundle) -> float:
    return round(cn.train.evaluate(model, bundle)["accuracy"], 4)


# ------------------------------------------------------------------------------------------------ (a) TRN
def lenet300_modes(in_features: int) -> tuple[dict, dict]:
    first = (4, 7, 4, 7) if in_features == 784 else suggest_modes(in_features, 4)
    return {"fc1": first, "fc2": PAPER_OUT["fc1"], "fc3": PAPER_OUT["fc2"]}, dict(PAPER_OUT)


def tr_compress(dense, config_kw: dict, bundle, ft: dict, sweeps: int, seed: int = 0) -> tuple[nn.Module, str, float]:
    """``compactnn.compress`` with TensorRing(init="auto") and no fine-tuning: per layer a TR-SVD start, or a random
    start where TR-SVD's rank cap refuses the ranks, then ``sweeps`` ALS sweeps; then fine-tuning with
    ``cn.train.fit`` (what ``TensorRing(finetune=...)`` runs), so that the ALS fit and the accuracy before
    fine-tuning can be reported. Returns ``(model, description, accuracy before fine-tuning)``."""
    small = cn.compress(dense, TensorRing(**config_kw, init="auto", als_sweeps=sweeps, seed=seed, finetune=None))
    errors = []
    for name, m in small.named_modules():
        if isinstance(m, (TRLinear, TRConv2d)):
            w = dense.get_submodule(name).weight
            t = (linear_tensor(w, m.in_modes, m.out_modes) if isinstance(m, TRLinear)
                 else conv_tensor(w, m.in_modes, m.out_modes))
            cores = m.cores if isinstance(m, TRLinear) else m.ring_cores()
            errors.append(f"{name} {ring_error(t, [c.detach() for c in cores]):.2f}")
    before = accuracy(small, bundle)
    cn.train.fit(small, bundle, batch_size=128, seed=seed, quiet=None, **ft)
    return small, f"{sweeps} ALS sweeps (rel. error {', '.join(errors)}; acc before fine-tune {before:.2%})", before


def replace_fresh(model: nn.Module, plan: dict) -> nn.Module:
    """Put freshly initialized TR layers (the planned modes and ranks) in place of the planned layers."""
    for name, p in plan.items():
        old = p["module"]
        if isinstance(old, nn.Linear):
            new = TRLinear(p["in_modes"], p["out_modes"], p["rank"])
        else:
            new = TRConv2d(p["in_modes"], p["out_modes"], old.kernel_size, p["rank"], stride=old.stride,
                           padding=old.padding, dilation=old.dilation)
        setattr(model, name, new)
    return model


def run_trn(name: str, bundle, s: dict, only: list | None, seed: int = 0,
            variants: tuple = ("scratch", "trained")) -> list[dict]:
    """Dense reference, then per setting (rank or ratio; ``only`` keeps some): TR from scratch and from trained.

    ``seed`` seeds the model init (the dense reference's and the fresh TR layers'), the data order of every
    training and the random ALS start; ``variants`` picks ``scratch`` and/or ``trained``."""
    shape = bundle.input_shape
    # cached per seed: no training time to report
    dense = pretrained(name, bundle, batch_size=128, seed=seed, **s["dense"])
    part = "a300" if name == "lenet300" else "a5"
    ref = dict(key=f"{part}/dense/s{seed}", part="a TRN", model=name, variant="dense", label="", seed=seed,
               setting=f"{describe(s['dense'])} (cached)", accuracy=accuracy(dense, bundle))
    ref.update(size_row(dense, None, shape))
    rows = [ref]
    log(f"{name} dense: acc {ref['accuracy']:.4f}, {ref['params']:,} params")
    if name == "lenet300":
        in_modes, out_modes = lenet300_modes(math.prod(shape))
        settings = [(f"R={r}", dict(rank=r, in_modes=in_modes, out_modes=out_modes)) for r in only or s["ranks"]]
    else:
        settings = [(f"{r:g}x per layer", dict(ratio=float(r), layers=("conv2", "fc1", "fc2")))
                    for r in only or s["ratios"]]
    for label, cfg in settings:
        torch.manual_seed(seed)
        plan = plan_layers(cn.models.create(name, data=bundle), TensorRing(**cfg))
        ranks = ", ".join(f"{k} R={v['rank']}" for k, v in plan.items())
        scratch = replace_fresh(cn.models.create(name, data=bundle), plan)
        if "scratch" in variants:
            secs = fit_timed(scratch, bundle, seed=seed, batch_size=128, **s["scratch"])
            row = dict(key=f"{part}/{label}/scratch/s{seed}", part="a TRN", model=name, variant="TR from scratch",
                       label=label, seed=seed, setting=f"{label}: {ranks}; {describe(s['scratch'])}",
                       accuracy=accuracy(scratch, bundle), train_s=round(secs, 1))
            rows.append({**row, **size_row(scratch, ref, shape)})
            log(f"{name} scratch {label} seed {seed}: acc {row['accuracy']:.4f}, {rows[-1]['ratio_params']}x params")
        if "trained" not in variants:
            continue
        start = time.perf_counter()
        compressed, init, _ = tr_compress(dense, cfg, bundle, s["ft"], s["sweeps"], seed=seed)
        row = dict(key=f"{part}/{label}/trained/s{seed}", part="a TRN", model=name, variant="TR from trained",
                   label=label, seed=seed,
                   setting=f"{label}: {ranks}; {init}, fine-tune {describe(s['ft'])}",
                   accuracy=accuracy(compressed, bundle), train_s=round(time.perf_counter() - start, 1))
        rows.append({**row, **size_row(compressed, ref, shape)})
        log(f"{name} from trained {label} seed {seed}: acc {row['accuracy']:.4f}, {rows[-1]['ratio_params']}x params")
    return rows


# ------------------------------------------------------------------------------------------------ (b) RNN
def moving_data(quick: bool, s: dict, root) -> DataBundle:
    if not quick:
        return load_moving_fashion_mnist(root, n_train=s["n_train"], n_test=s["n_test"], size=s["size"])
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images / 16.0, np.ones((2, 2)))  # 16x16 digits in [0, 1]
    return moving_bundle(images[:1400], d.target[:1400], images[1400:], d.target[1400:], n_train=s["n_train"],
                         n_test=s["n_test"], seed=0, size=s["size"], name="moving-digits",
                         classes=[str(i) for i in range(10)])


def run_rnn(bundle: DataBundle, s: dict, names: list[str], seed: int = 0) -> list[dict]:
    """Train the clip models ``names`` (Adam, cosine, dropout) and return their rows (ratios filled in later).
    ``seed`` seeds the model init and the data order (the clips themselves are fixed)."""
    rows = []
    for name, label in CELLS:
        if name not in names:
            continue
        torch.manual_seed(seed)
        model = cn.models.create(name, data=bundle, dropout=s["dropout"])
        lr = s["lr"][name]
        secs = fit_timed(model, bundle, seed=seed, epochs=s["epochs"], lr=lr, optimizer="adam", weight_decay=0.0,
                         batch_size=s["batch_size"])
        w_ih = model.input_weight_params()
        row = dict(key=f"b/{name}/s{seed}", part="b RNN", model=name, variant=label, label="", seed=seed,
                   accuracy=accuracy(model, bundle),
                   w_ih=w_ih, train_s=round(secs, 1), s_per_epoch=round(secs / s["epochs"], 2))
        row.update(size_row(model, None, bundle.input_shape))
        rnn = model.rnn
        modes = (f"{rnn.in_modes}->{rnn.ih.out_modes}, ranks {rnn.ranks}"
                 + (f", N={rnn.blocks}" if hasattr(rnn, "blocks") else "") if hasattr(rnn, "in_modes") else "")
        row["setting"] = (f"{bundle.name} {tuple(bundle.input_shape)}, {len(bundle.train)} clips, {s['epochs']} ep "
                          f"Adam lr {lr:g}, dropout {s['dropout']}" + (f"; {modes}" if modes else ""))
        rows.append(row)
        log(f"{label} seed {seed}: acc {row['accuracy']:.4f}, W_ih {w_ih:,}, {row['s_per_epoch']} s/epoch")
    return rows


def fill_rnn_ratios(rows: list[dict]) -> None:
    """Ratios of the clip models to the dense LSTM row of the same seed (else of any seed; when there is one)."""
    dense = [r for r in rows if r["part"] == "b RNN" and r["model"] == "clip-lstm"]
    for r in rows:
        ref = next((q for q in dense if q.get("seed") == r.get("seed")), dense[0] if dense else None)
        if r["part"] == "b RNN" and ref is not None:
            r["ratio_w_ih"] = round(ref["w_ih"] / r["w_ih"], 1)
            r["ratio_params"] = round(ref["params"] / r["params"], 2)
            r["ratio_bytes"] = round(ref["packed_bytes"] / r["packed_bytes"], 2)


# ------------------------------------------------------------------------------------------------ (c) latency
def _planned(mod: nn.Module) -> list[nn.Module]:
    """The planned factorized layers in ``mod`` (itself or, for clip models, the cell's input map)."""
    return [m for m in mod.modules() if hasattr(m, "plan_for") and hasattr(m, "planned_forward")]


def _set_mode(mod: nn.Module, mode: str) -> None:
    for m in _planned(mod):
        m.plan_mode = mode


def time_side_by_side(entries: list[tuple], batch: int, rounds: int, reps: int) -> list[float]:
    """Median ms per forward of each ``(module, mode, input)``: ``rounds`` rounds, each timing every entry in turn
    (``reps`` passes, median), all in this process; the result is the median over rounds. ``mode`` is set as every
    planned layer's ``plan_mode`` before its passes (None: leave it)."""
    per = [[] for _ in entries]
    with torch.inference_mode():
        for mod, mode, x in entries:  # warm up: caches built, plans chosen
            if mode is not None:
                _set_mode(mod, mode)
            for _ in range(2):
                mod(x)
        for _ in range(rounds):
            for k, (mod, mode, x) in enumerate(entries):
                if mode is not None:
                    _set_mode(mod, mode)
                ts = []
                for _ in range(reps):
                    t0 = time.perf_counter()
                    mod(x)
                    ts.append(time.perf_counter() - t0)
                per[k].append(statistics.median(ts) * 1e3)
    return [statistics.median(v) for v in per]


def latency_rows(tr_shape: tuple, clip_shape: tuple, rounds: int, lenet5_ratio: float) -> list[dict]:
    """Time each factorized layer (and clip model) against its dense counterpart, side by side in one process at
    batch 1 and 256: ``before`` is the layer's own forward as it ran before planning (the training path, forced
    with ``plan_mode="train"``), ``planned`` the planner's choice (``plan_mode="auto"``); every forced plan is timed
    too, to check the time model's choice against measurement (rows of part ``c plans``)."""
    cn.report.latency.steady_allocator()
    torch.manual_seed(0)
    models = {name: cn.models.create(name, input_shape=clip_shape).eval() for name, _ in CELLS}
    feats = math.prod(clip_shape[1:])
    in300 = math.prod(tr_shape)
    modes300, _ = lenet300_modes(in300)
    bt = BTLinear(models["clip-bt-lstm"].rnn.in_modes, models["clip-bt-lstm"].rnn.ih.out_modes, 4, blocks=2)
    tt = TTLinear(bt.in_modes, bt.out_modes, 4)
    rb, rt = RebuiltBTLinear(bt.in_modes, bt.out_modes, 4, blocks=2), RebuiltTTLinear(bt.in_modes, bt.out_modes, 4)
    lenet5 = cn.models.create("lenet5", input_shape=tr_shape)
    c2, f1 = lenet5.conv2, lenet5.fc1
    plans = plan_layers(lenet5, TensorRing(ratio=lenet5_ratio, layers=("conv2", "fc1")))
    plan, pf = plans["conv2"], plans["fc1"]
    trc = TRConv2d(plan["in_modes"], plan["out_modes"], c2.kernel_size, plan["rank"], padding=c2.padding)
    trf = TRLinear(pf["in_modes"], pf["out_modes"], pf["rank"])
    side = [(n + 2 * c2.padding[0] - 4) // 2 for n in tr_shape[1:]]
    c2_in = (20, side[0], side[1])
    groups = [  # (layer name, dense label, dense module, [(label, factorized module)], input shape)
        ("lenet300 fc1", "dense Linear", nn.Linear(in300, 300),
         [("TRLinear R=10", TRLinear(modes300["fc1"], PAPER_OUT["fc1"], 10))], (in300,)),
        ("lenet5 conv2", "dense Conv2d", c2, [(f"TRConv2d R={plan['rank']}", trc)], c2_in),
        ("lenet5 fc1", "dense Linear", f1, [(f"TRLinear R={pf['rank']}", trf)], (f1.in_features,)),
        ("LSTM W_ih", "dense Linear", nn.Linear(feats, 4 * 256),
         [("BTLinear factorized", bt), ("BTLinear rebuilt", rb), ("TTLinear factorized", tt),
          ("TTLinear rebuilt", rt)], (feats,)),
    ]
    rows = []
    frozen_plan: dict = {}
    for layer, dense_label, dense, facts, shape in groups:
        dense.eval()
        res: dict = {}
        for b in (1, 256):
            x = torch.randn(b, *shape)
            entries = [(dense, None, x)]
            labels = [("dense", None)]
            for label, mod in facts:
                mod.eval()
                cands = list(mod.plan_for(tuple(x.shape) if x.dim() == 4 else b, "auto").times)
                for mode in ["train", "auto", *cands]:
                    entries.append((mod, mode, x))
                    labels.append((label, mode))
                frozen = (freeze_conv(mod, tuple(x.shape), "auto") if x.dim() == 4 else freeze_linear(mod, b, "auto"))
                entries.append((frozen, None, x))
                labels.append((label, "frozen"))
                frozen_plan[(label, b)] = frozen.plan
            reps = 20 if b == 1 else 5
            times = time_side_by_side(entries, b, rounds, reps)
            res[b] = dict(zip(labels, times))
        base = dict(part="c latency", model=layer)
        macs_dense = sum(cn.report.count_macs(dense, shape).values())
        rows.append(dict(base, key=f"c/{layer}/dense", variant=dense_label, setting=f"input {shape}",
                         params=nparams(dense), macs=macs_dense, ms_b1=round(res[1][("dense", None)], 4),
                         ms_b256=round(res[256][("dense", None)], 3)))
        for label, mod in facts:
            choice = {b: mod.plan_for((b, *shape) if len(shape) == 3 else b, "auto") for b in (1, 256)}
            extra = getattr(mod, "rebuild_macs", getattr(mod, "merge_macs", None))
            before_set = f"input {shape}; old forward" + (f" (+ {extra():,} MACs per call rebuild/merge)" if extra
                                                          else "")
            rows.append(dict(base, key=f"c/{layer}/{label}/before", variant=f"{label} before", setting=before_set,
                             params=nparams(mod), macs=sum(cn.report.count_macs(mod, shape).values()),
                             ms_b1=round(res[1][(label, "train")], 4), ms_b256=round(res[256][(label, "train")], 3)))
            ratio = {b: choice[b].macs[choice[b].plan] / (b * macs_dense) for b in (1, 256)}
            rows.append(dict(base, key=f"c/{layer}/{label}/planned", variant=f"{label} planned",
                             setting=(f"input {shape}; plan b1: {choice[1].plan}, b256: {choice[256].plan}; MACs vs "
                                      f"dense b1 {ratio[1]:.2f}, b256 {ratio[256]:.2f}"),
                             plan_b1=choice[1].plan, plan_b256=choice[256].plan, macs_ratio_b1=round(ratio[1], 3),
                             macs_ratio_b256=round(ratio[256], 3), params=nparams(mod),
                             macs=choice[1].macs[choice[1].plan],
                             ms_b1=round(res[1][(label, "auto")], 4), ms_b256=round(res[256][(label, "auto")], 3)))
            rows.append(dict(base, key=f"c/{layer}/{label}/frozen", variant=f"{label} inference form",
                             setting=(f"input {shape}; decompose.inference_form: plan b1: {frozen_plan[(label, 1)]}, "
                                      f"b256: {frozen_plan[(label, 256)]}"),
                             plan_b1=frozen_plan[(label, 1)], plan_b256=frozen_plan[(label, 256)],
                             macs_ratio_b1=round(ratio[1], 3), macs_ratio_b256=round(ratio[256], 3),
                             params=nparams(mod), macs=choice[1].macs[choice[1].plan],
                             ms_b1=round(res[1][(label, "frozen")], 4), ms_b256=round(res[256][(label, "frozen")], 3)))
            for b in (1, 256):
                measured = {m: res[b][(label, m)] for m in choice[b].times}
                fastest = min(measured, key=measured.get)
                rows.append(dict(part="c plans", key=f"cp/{layer}/{label}/{b}", model=layer, variant=label, batch=b,
                                 chosen=choice[b].plan, fastest=fastest,
                                 model_us={k: v for k, v in choice[b].times.items()},
                                 measured_us={k: round(v * 1e3, 1) for k, v in measured.items()},
                                 macs={k: v for k, v in choice[b].macs.items()},
                                 loss=round(measured[choice[b].plan] / measured[fastest], 3)))
            log(f"latency {layer} {label}: before {res[1][(label, 'train')]:.3f}/{res[256][(label, 'train')]:.2f} "
                f"planned ({choice[1].plan}/{choice[256].plan}) {res[1][(label, 'auto')]:.3f}/"
                f"{res[256][(label, 'auto')]:.2f} dense {res[1][('dense', None)]:.3f}/{res[256][('dense', None)]:.2f}")
    # whole clip models (batch = clips of T frames): dense LSTM, BT/TT before (rebuilt W_ih every call), planned
    res = {}
    for b in (1, 256):
        x = torch.randn(b, *clip_shape)
        entries = [(models["clip-lstm"], None, x)]
        for name in ("clip-bt-lstm", "clip-tt-lstm"):
            entries += [(models[name], "train", x), (models[name], "auto", x)]
        res[b] = time_side_by_side(entries, b, rounds, 10 if b == 1 else 2)
    names = [("clip-lstm", "dense LSTM", None), ("clip-bt-lstm", "BT-LSTM before (rebuilt W_ih)", "train"),
             ("clip-bt-lstm", "BT-LSTM planned W_ih", "auto"), ("clip-tt-lstm", "TT-LSTM before (rebuilt W_ih)",
                                                                "train"),
             ("clip-tt-lstm", "TT-LSTM planned W_ih", "auto")]
    for k, (name, label, mode) in enumerate(names):
        ih = models[name].rnn.ih if mode else None
        setting = f"clips {tuple(clip_shape)}"
        if mode == "auto":
            rows_b = {b: b * clip_shape[0] for b in (1, 256)}
            setting += "; W_ih plan b1: {}, b256: {}".format(*(ih.plan_for(rows_b[b], "auto").plan
                                                               for b in (1, 256)))
        rows.append(dict(key=f"c/clip/{name}/{mode or 'dense'}", part="c latency", model="clip model",
                         variant=label, setting=setting, params=nparams(models[name]),
                         ms_b1=round(res[1][k], 3), ms_b256=round(res[256][k], 2)))
        log(f"latency clip {label}: {res[1][k]:.3f} ms @1, {res[256][k]:.2f} ms @256")
    return rows


def parse_parts(text: str) -> list[str]:
    parts: list[str] = []
    for item in text.split(","):
        item = item.strip()
        if item == "report":  # run nothing: rewrite the .md and plots from decomposition.json
            continue
        if item not in PARTS and item not in GROUPS:
            raise SystemExit(f"unknown part {item!r}; valid parts are {', '.join(PARTS + tuple(GROUPS))}")
        parts += list(GROUPS.get(item, (item,)))
    return list(dict.fromkeys(parts))


def load_rows(path: Path, quick: bool) -> list[dict]:
    """Rows of an earlier run of the same kind (quick or full), or none. Rows from before ``--seeds`` (no ``seed``)
    were made with seed 0: they get ``seed`` 0, a ``label`` and the ``/s0`` key of the new rows, so a seed-0 rerun
    replaces them."""
    if not path.exists():
        return []
    rows = [r for r in json.loads(path.read_text()) if r.get("quick", False) == quick and "key" in r]
    for r in rows:
        if not r["part"].startswith("c") and "seed" not in r:
            r["seed"] = 0
            r["key"] += "/s0"
            r["label"] = r["setting"].split(":")[0] if r["part"] == "a TRN" and r["variant"] != "dense" else ""
    return rows


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """``old`` with rows of the same key replaced by ``new`` (new rows appended), in part order."""
    keys = {r["key"] for r in new}
    if any(r["part"] == "c latency" for r in new):  # a latency run replaces every earlier latency row
        old = [r for r in old if not r["part"].startswith("c")]
    rows = [r for r in old if r["key"] not in keys] + new
    order = {"a TRN": 0, "b RNN": 1, "c latency": 2, "c plans": 3}
    model_order = {"lenet300": 0, "lenet5": 1}
    cells = {name: k for k, (name, _) in enumerate(CELLS)}
    return sorted(rows, key=lambda r: (order[r["part"]], model_order.get(r["model"], 2), cells.get(r["model"], 0),
                                       r.get("ratio_params") or 0 if r["part"] == "a TRN" else 0,
                                       r.get("variant", "") if r["part"] == "a TRN" else "", r.get("seed", 0)))


def write_all(out: Path, rows: list[dict], notes: str, plot) -> None:
    """``decomposition.md`` (parts a and b as mean ± std over seeds, then every seed's row, then part c),
    ``decomposition.json`` (every row, one per seed) and ``decomposition.png``."""
    env = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {platform.python_version()}"
    seeded = [r for r in rows if not r["part"].startswith("c")]
    lat = [r for r in rows if r["part"] == "c latency"]
    checks = [r for r in rows if r["part"] == "c plans"]
    md = ["# Tensor decomposition: TRN and BT-LSTM", "",
          f"Last run: `python benchmarks/decomposition.py {' '.join(sys.argv[1:])}` ({env}).", "",
          "Parts a and b: mean ± std over the seeds in `seeds` (sample std; one seed: no spread).", "",
          markdown_table(table_rows(seeded), COLUMNS), ""]
    if lat:
        md += ["Part c (latency, side by side in one process; `before` = the layer's forward before planning, "
               "`planned` = the eager layer running the planner's choice, named in `setting`; `inference form` = "
               "the layer frozen to the plan chosen for each batch size by `compactnn.decompose.inference_form` (a "
               "`dense` plan is an `nn.Linear` / `nn.Conv2d`); made by "
               + ", ".join(f"`{c}`" for c in dict.fromkeys(r.get("command", "") for r in lat)) + "):", "",
               markdown_table(lat, ["model", "variant", "setting", "params", "macs", "ms_b1", "ms_b256"]), ""]
    if checks:
        md += [plan_check_text(checks), ""]
    md += [notes.strip(), "", "<details><summary>Every seed of parts a and b</summary>", "",
           markdown_table(seeded, ["seed", *[c for c in COLUMNS if c != "seeds"]]), "", "</details>", "",
           "![decomposition](decomposition.png)", ""]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "decomposition.md", "\n".join(md))
    atomic_write_text(out / "decomposition.json", json.dumps(rows, indent=1) + "\n")
    atomic_write(out / "decomposition.png", plot)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--parts", default="all", help=f"comma-separated parts: {', '.join(PARTS)} or a, b, all")
    p.add_argument("--ranks", default=None, help="a300 only these ranks (comma-separated), e.g. 3,5")
    p.add_argument("--ratios", default=None, help="a5 only these per-layer ratios (comma-separated), e.g. 10")
    p.add_argument("--fresh", action="store_true", help="drop the rows of earlier runs instead of merging")
    p.add_argument("--seeds", type=seeds_arg, default=[0],
                   help="comma-separated seeds of parts a and b (model init, data order, random ALS start); each "
                        "(setting, seed) is one row, the table gives mean ± std over the seeds present")
    p.add_argument("--rounds", type=int, default=7, help="part c: timing rounds (median over rounds)")
    p.add_argument("--variants", default="scratch,trained",
                   help="parts a300/a5: scratch and/or trained (comma-separated), to split long runs")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else FULL
    parts = parse_parts(args.parts)
    t_start = time.perf_counter()
    command = "python " + " ".join(["benchmarks/decomposition.py", *sys.argv[1:]])
    rows: list[dict] = []
    if {"a300", "a5"} & set(parts):
        if args.quick:
            tr_bundle = cn.data.load("digits")
            tr_data = "scikit-learn digits (1437 train / 360 test)"
        else:
            tr_bundle = cn.data.load("fashion-mnist", root=args.data_root)
            tr_data = "Fashion-MNIST (60,000 train / 10,000 test)"
        for part, name, only in (("a300", "lenet300", args.ranks), ("a5", "lenet5", args.ratios)):
            if part in parts:
                log(f"(a) TRN {name} on {tr_bundle.name}")
                pick = [int(v) if part == "a300" else float(v) for v in only.split(",")] if only else None
                variants = tuple(v for v in args.variants.split(",") if v)
                for seed in args.seeds:
                    rows += [{**r, "data": tr_data} for r in run_trn(name, tr_bundle, s[name], pick, seed, variants)]
    cells = [CELL_PART[q] for q in parts if q in CELL_PART]
    if cells:
        log("(b) generating moving clips")
        rnn_bundle = moving_data(args.quick, s["rnn"], args.data_root)
        rnn_data = (f"{rnn_bundle.name}: {len(rnn_bundle.train)} train / {len(rnn_bundle.test)} test clips of 6-10 "
                    f"frames of {s['rnn']['size']}x{s['rnn']['size']}")
        for seed in args.seeds:
            rows += [{**r, "data": rnn_data} for r in run_rnn(rnn_bundle, s["rnn"], cells, seed)]
    if "c" in parts:
        log("(c) latency")
        tr_shape = (1, 8, 8) if args.quick else (1, 28, 28)
        rows += latency_rows(tr_shape, (10, s["rnn"]["size"], s["rnn"]["size"]), args.rounds,
                             float(s["lenet5"]["ratios"][0]))
    for r in rows:
        r.update(command=command, quick=bool(args.quick))
    old = [] if args.fresh else load_rows(args.out / "decomposition.json", bool(args.quick))
    rows = merge(old, rows)
    fill_rnn_ratios(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    has = {r["part"] for r in rows}
    write_all(args.out, rows, notes_text(rows, args.quick, s),
              lambda fh: plot_trn(mean_rows(rows), fh) if "a TRN" in has else plt.figure().savefig(fh, format="png"))
    if "b RNN" in has:
        plot_rnn(mean_rows(rows), args.out / "decomposition_rnn.png")
    if "c latency" in has:
        plot_latency(rows, args.out / "decomposition_latency.png")
    log(f"done in {time.perf_counter() - t_start:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
