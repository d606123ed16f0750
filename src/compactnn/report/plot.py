"""Per-layer packed size, before vs after, as a PNG (matplotlib, Agg canvas: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..files import atomic_savefig


def _layer_bytes(layers) -> dict[str, int]:
    return {row["name"]: int(row["bytes"]) for row in layers}


def plot_layer_sizes(report, path) -> Path:
    """Draw grouped bars of each layer's packed bytes, baseline vs compressed, and save a PNG atomically.

    Layers are matched by name; a layer present on one side only gets a zero bar on the other. The y axis is
    logarithmic when the largest and smallest nonzero sizes differ by more than 100x.

    Args:
        report: a :class:`compactnn.report.Report` (its ``baseline`` may be None: then one bar per layer).
        path: the PNG file to write (its folder is created if missing).

    Returns:
        ``Path(path)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    after = _layer_bytes(report.layers)
    before = _layer_bytes(report.baseline.layers) if report.baseline is not None else {}
    names = list(before) + [n for n in after if n not in before]
    names = names or ["(no layers)"]
    labels = [n if n else "(root)" for n in names]
    x = np.arange(len(names))
    width = min(20.0, 2.0 + 0.45 * len(names))
    fig = Figure(figsize=(width, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    series = []
    if before:
        series.append(("baseline", [before.get(n, 0) for n in names], "#9aa5b1"))
    series.append(("compressed" if before else "packed", [after.get(n, 0) for n in names], "#1f6fb2"))
    bar = 0.8 / len(series)
    for i, (label, values, color) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * bar, values, bar, label=label, color=color)
    positive = [v for _, values, _ in series for v in values if v > 0]
    if positive and max(positive) > 100 * min(positive):
        ax.set_yscale("log")
    many = len(names) > 4
    ax.set_xticks(x, labels, rotation=45 if many else 0, ha="right" if many else "center",
                  fontsize=6 if len(names) > 30 else None)
    ax.set_ylabel("packed bytes")
    ax.set_title(f"Packed size per layer{': ' + report.name if report.name else ''}")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save_atomic(fig, Path(path))


def _save_atomic(fig, path: Path) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot write {path}: {err.strerror or err}; choose a writable folder") from err
    return atomic_savefig(path, fig, dpi=110)
