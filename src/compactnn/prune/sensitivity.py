"""Pruning sensitivity: prune each layer alone at a sweep of levels, without retraining, and record test accuracy.

The tool behind ``compactnn sensitivity MODEL.cnz --data digits --out DIR`` (:func:`run_sensitivity_cli`). It shows
which layers tolerate pruning (flat curves) and which do not, to pick per-layer ratios. Unstructured mode zeroes
the smallest-|w| weights of the layer (:func:`.magnitude.keep_top`); structured mode zeroes whole output filters
of smallest L1 norm (weights and bias, a mask: no surgery, so every layer can be probed alone). The layer's
original weights are restored after each level.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..files import atomic_write_bytes, ensure_dir
from ..layers import select_layers
from .magnitude import keep_top

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
COLUMNS = ["layer", "level", "sparsity", "accuracy", "params"]


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in levels)
    except (TypeError, ValueError):
        out = ()
    if not out or any(not 0.0 <= v < 1.0 for v in out):
        raise ConfigError(f"sensitivity levels must be fractions in [0, 1) like 0.1,0.5,0.9, got {levels!r}")
    return out


def _mask(weight: torch.Tensor, level: float, structured: bool) -> torch.Tensor:
    if structured:
        norms = weight.detach().abs().flatten(1).sum(1)
        rows = keep_top(norms, round((1.0 - level) * norms.numel()))
        return rows.reshape(-1, *([1] * (weight.dim() - 1))).expand_as(weight)
    return keep_top(weight.detach().abs(), round((1.0 - level) * weight.numel()))


def sensitivity(model: nn.Module, data: Any, levels: Sequence[float] = LEVELS, layers: Sequence[str] | None = None,
                structured: bool = False, quiet: bool | None = None) -> list[dict]:
    """Accuracy after pruning each layer alone at each level (no retraining); one row per (layer, level).

    Args:
        model: the trained model (left unchanged: weights are restored).
        data: a :class:`compactnn.data.DataBundle` (its test split is used) or an ``ArrayDataset``.
        levels: fractions pruned, each in [0, 1); a level-0 row per layer holds the dense accuracy.
        layers: ``fnmatch`` patterns of the Linear/Conv layers to probe; ``None`` = all of them.
        structured: zero whole output filters (smallest L1 norm) instead of single weights.
        quiet: hide the progress bar (``None``: hide when stderr is not a terminal).

    Returns:
        rows ``{"layer", "level", "sparsity" (fraction of the layer's weights now zero), "accuracy", "params"}``.
    """
    from ..train import evaluate

    levels = _check_levels(levels)
    chosen = select_layers(model, layers, what="prunable")
    dense = float(evaluate(model, data)["accuracy"])
    rows: list[dict] = []
    quiet = (not sys.stderr.isatty()) if quiet is None else quiet
    bar = tqdm(total=len(chosen) * len(levels), desc="sensitivity", disable=quiet)
    try:
        for name, mod in chosen.items():
            w = mod.weight
            b = getattr(mod, "bias", None)
            saved = (w.detach().clone(), None if b is None else b.detach().clone())
            rows.append(dict(layer=name, level=0.0, sparsity=float((w == 0).float().mean()), accuracy=dense,
                             params=w.numel()))
            for level in levels:
                keep = _mask(w, level, structured)
                with torch.no_grad():
                    w.mul_(keep.to(w.dtype))
                    if structured and b is not None:
                        b.mul_(keep.flatten(1)[:, 0].to(b.dtype))
                acc = float(evaluate(model, data)["accuracy"])
                rows.append(dict(layer=name, level=level, sparsity=float((w == 0).float().mean()), accuracy=acc,
                                 params=w.numel()))
                with torch.no_grad():
                    w.copy_(saved[0])
                    if b is not None:
                        b.copy_(saved[1])
                bar.update(1)
    finally:
        bar.close()
    return rows


def write_sensitivity(rows: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``sensitivity.csv`` and ``sensitivity.png`` (accuracy vs sparsity, one line per layer) atomically.

    Args:
        rows: the output of :func:`sensitivity`.
        out_dir: folder to write into (created if missing).

    Returns:
        ``{"csv": path, "png": path}``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = ensure_dir(out_dir)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in COLUMNS} for r in rows)
    atomic_write_bytes(out / "sensitivity.csv", text.getvalue().encode())

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for layer in dict.fromkeys(r["layer"] for r in rows):
        sub = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["level"])
        ax.plot([r["level"] for r in sub], [r["accuracy"] for r in sub], marker="o", ms=3, label=layer)
    ax.set_xlabel("fraction pruned in the layer (others dense, no retraining)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Pruning sensitivity per layer")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len({r["layer"] for r in rows}) > 10 else 1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(out / "sensitivity.png", buf.getvalue())
    return {"csv": out / "sensitivity.csv", "png": out / "sensitivity.png"}


def run_sensitivity_cli(cnz_path: str | os.PathLike, data_name: str = "digits",
                        out_dir: str | os.PathLike = "sensitivity", levels: Sequence[float] = LEVELS,
                        data_root: str | os.PathLike | None = None, layers: Sequence[str] | None = None,
                        structured: bool = False, quiet: bool | None = None) -> dict[str, Any]:
    """What ``compactnn sensitivity MODEL.cnz --data NAME --out DIR`` runs: load, sweep, write.

    Args:
        cnz_path: the packed model.
        data_name: data set name for :func:`compactnn.data.load` (its test split is used).
        out_dir: folder for ``sensitivity.csv`` and ``sensitivity.png``.
        levels: fractions pruned per layer, each in [0, 1).
        data_root: folder holding the data set's files.
        layers: layer name patterns (``None`` = every Linear/Conv).
        structured: zero whole filters instead of single weights.
        quiet: hide the progress bar.

    Returns:
        ``{"rows": rows, "csv": path, "png": path}``.
    """
    from .. import data as cn_data
    from .. import pack

    levels = _check_levels(levels)
    model = pack.load(cnz_path)
    rows = sensitivity(model, cn_data.load(data_name, root=data_root), levels, layers, structured, quiet)
    return {"rows": rows, **write_sensitivity(rows, out_dir)}


__all__ = ["sensitivity", "write_sensitivity", "run_sensitivity_cli", "LEVELS"]
