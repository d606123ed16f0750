"""What every benchmark shares: its command-line options and writing its three result files.

Each benchmark writes ``docs/results/<name>.md`` (the table), ``<name>.json`` (the same rows as a list of objects)
and ``<name>.png`` (the plot), each to a temporary file first and then renamed into place.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable

import torch

from compactnn.files import atomic_write, atomic_write_text

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a run of a few minutes, on small settings (tests use it)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the .md, .json and .png results")
    p.add_argument("--data-root", type=Path, default=os.environ.get("COMPACTNN_DATA"),
                   help="folder with the data set files (default: $COMPACTNN_DATA, then the loader's search order)")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    return p




def seeds_arg(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (the ``--seeds`` option)."""
    return [int(v) for v in text.split(",") if v.strip()]


def aggregate(rows: list[dict], keys: list[str], values: list[str]) -> list[dict]:
    """Rows grouped by ``keys`` (in first-seen order) with, for each of ``values``, ``<v>_mean``, ``<v>_std``
    (sample std, 0 for one seed) and a ``"<mean> ± <std>"`` text in ``<v>``; ``seeds`` lists the seeds seen."""
    import statistics

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    out = []
    for key, members in groups.items():
        row = dict(zip(keys, key))
        row["seeds"] = ",".join(str(m.get("seed", 0)) for m in members)
        for v in values:
            xs = [m[v] for m in members if isinstance(m.get(v), (int, float))]
            if not xs:
                continue
            mean = statistics.fmean(xs)
            std = statistics.stdev(xs) if len(xs) > 1 else 0.0
            row[f"{v}_mean"], row[f"{v}_std"] = mean, std
            digits = 4 if abs(mean) < 1 and v in ("accuracy",) else 2
            row[v] = f"{mean:.{digits}f} ± {std:.{digits}f}" if len(xs) > 1 else f"{mean:.{digits}f}"
        out.append(row)
    return out


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub markdown table of ``rows`` over ``columns``; floats get 4 significant decimals."""

    def cell(v):
        if isinstance(v, float):  # fractions (accuracy) to 4 decimals; ratios, times and the like to 2
            return f"{v:.4f}" if abs(v) < 1 else f"{v:,.2f}"
        if isinstance(v, int):
            return f"{v:,}"
        return "" if v is None else str(v).replace("|", "\\|")  # a "|" inside a cell would split it

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, out: Path, rows: list[dict], columns: list[str], title: str, notes: str,
                  plot: Callable) -> None:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>.png`` under ``out``; ``plot(fh)`` saves a PNG to a binary
    file object (``fig.savefig(fh, format="png")``)."""
    command = "python " + " ".join([f"benchmarks/{name}.py", *sys.argv[1:]])
    env = f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, {platform.python_version()}"
    md = f"# {title}\n\nMade by `{command}` ({env}).\n\n{markdown_table(rows, columns)}\n\n{notes.strip()}\n\n![{name}]({name}.png)\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / f"{name}.md", md)
    atomic_write_text(out / f"{name}.json", json.dumps(rows, indent=1) + "\n")
    atomic_write(out / f"{name}.png", plot)
