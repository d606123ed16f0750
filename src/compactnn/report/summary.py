"""Per-layer summary of a model: params, nonzeros, packed bytes, bits per weight and MACs, with totals.

Sizes are measured, not estimated: per-tensor bytes come from :func:`compactnn.pack.tensor_bytes` and the total
``packed_bytes`` is the size of the real ``.cnz`` file (:func:`compactnn.pack.packed_size`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import atomic_write_text, ensure_dir
from .latency import measure_latency
from .macs import count_macs, layer_modules


@dataclass
class Report:
    """What :func:`summarize` measured for one model.

    Attributes:
        layers: one dict per layer with keys name, kind, shape, params, nonzero, bits_per_weight, bytes, macs
            (``macs`` is None when no input shape was known).
        totals: params, nonzero, packed_bytes, macs and, when data was given, accuracy.
        latency_ms: ``{batch_size: median ms}`` if latency was measured, else None.
        baseline: the Report of the uncompressed model, or None.
        name: the model's name (shown in titles; ``to_dict`` uses it as ``"model"`` unless told otherwise).
        data: the data set's name, if known.
    """

    layers: list[dict]
    totals: dict
    latency_ms: dict[int, float] | None = None
    baseline: "Report | None" = None
    name: str | None = None
    data: str | None = None

    # ---- report.json -------------------------------------------------------------------------------------------
    def _side(self, with_nonzero: bool) -> dict:
        t = self.totals
        out = {"accuracy": t.get("accuracy"), "params": t["params"]}
        if with_nonzero:
            out["nonzero"] = t["nonzero"]
        out.update(packed_bytes=t["packed_bytes"], macs=t["macs"])
        if self.latency_ms:
            out["latency_ms"] = {int(b): float(ms) for b, ms in self.latency_ms.items()}
        return out

    def ratios(self) -> dict:
        """``{"size": baseline packed_bytes / packed_bytes, "macs": baseline macs / macs}`` (None if unknown)."""
        if self.baseline is None:
            return {"size": None, "macs": None}
        return {key: _ratio(self.baseline.totals.get(src), self.totals.get(src))
                for key, src in (("size", "packed_bytes"), ("macs", "macs"))}

    def to_dict(self, stages: list[dict] | None = None, model_name: str | None = None,
                data_name: str | None = None) -> dict:
        """The report.json object of DESIGN.md: model, data, baseline, compressed, ratio, stages, layers.

        Args:
            stages: ``[{"method", "seconds", "accuracy"}, ...]`` filled by the caller (the recipe runner).
            model_name: the ``"model"`` value; defaults to ``self.name``.
            data_name: the ``"data"`` value; defaults to ``self.data``.

        ``baseline`` is None when there is no baseline; ``latency_ms`` is added to a side only if measured.
        """
        return {
            "model": model_name if model_name is not None else self.name,
            "data": data_name if data_name is not None else self.data,
            "baseline": self.baseline._side(False) if self.baseline is not None else None,
            "compressed": self._side(True),
            "ratio": self.ratios(),
            "stages": [dict(s) for s in (stages or [])],
            "layers": [dict(row) for row in self.layers],
        }

    # ---- markdown ----------------------------------------------------------------------------------------------
    def _totals_rows(self) -> tuple[list[str], list[list[str]]]:
        base, ratio = self.baseline, self.ratios()
        keys = [("accuracy", "accuracy", None), ("params", "params", None), ("nonzero", "nonzero", None),
                ("packed bytes", "packed_bytes", "size"), ("MACs", "macs", "macs")]
        header = ["", "baseline", "compressed", "ratio"] if base is not None else ["", "value"]
        rows = []
        for label, key, rkey in keys:
            fmt = _fmt_acc if key == "accuracy" else _fmt_int
            if key == "accuracy" and self.totals.get("accuracy") is None and (
                    base is None or base.totals.get("accuracy") is None):
                continue
            row = [label]
            if base is not None:
                row += [fmt(base.totals.get(key)), fmt(self.totals.get(key)),
                        f"{ratio[rkey]:.2f}x" if rkey and ratio[rkey] is not None else ""]
            else:
                row.append(fmt(self.totals.get(key)))
            rows.append(row)
        for b in sorted(set(self.latency_ms or {}) | set((base.latency_ms or {}) if base else {})):
            row = [f"latency ms (batch {b})"]
            if base is not None:
                before, after = (base.latency_ms or {}).get(b), (self.latency_ms or {}).get(b)
                row += [_fmt_ms(before), _fmt_ms(after), f"{before / after:.2f}x" if before and after else ""]
            else:
                row.append(_fmt_ms((self.latency_ms or {}).get(b)))
            rows.append(row)
        return header, rows

    def _layer_rows(self) -> tuple[list[str], list[list[str]]]:
        header = ["layer", "kind", "shape", "params", "nonzero", "bits/w", "bytes", "MACs"]
        before = {r["name"]: r for r in self.baseline.layers} if self.baseline is not None else None
        if before is not None:
            header += ["bytes before", "x smaller"]
        rows = []
        for r in self.layers:
            row = [r["name"] or "(root)", r["kind"], "x".join(map(str, r["shape"])) or "-", _fmt_int(r["params"]),
                   _fmt_int(r["nonzero"]), f"{r['bits_per_weight']:.2f}", _fmt_int(r["bytes"]), _fmt_int(r["macs"])]
            if before is not None:
                b = before.get(r["name"])
                row += [_fmt_int(b["bytes"]) if b else "-",
                        f"{b['bytes'] / r['bytes']:.2f}x" if b and r["bytes"] else ""]
            rows.append(row)
        total = ["total", "", "", _fmt_int(sum(r["params"] for r in self.layers)),
                 _fmt_int(sum(r["nonzero"] for r in self.layers)), "",
                 _fmt_int(sum(r["bytes"] for r in self.layers)), _fmt_int(self.totals.get("macs"))]
        if before is not None:
            total += [_fmt_int(sum(r["bytes"] for r in self.baseline.layers)), ""]
        rows.append(total)
        return header, rows

    def to_markdown(self, stages: list[dict] | None = None) -> str:
        """Markdown: a totals table (baseline, compressed, ratio), the stages if given, and the per-layer table.

        Args:
            stages: optional ``[{"method", "seconds", "accuracy"}, ...]`` shown as a table.

        The per-layer ``bytes`` are the layer's tensors as stored; their sum is below the file's ``packed bytes``,
        which also holds the manifest.
        """
        title = f"# Report: {self.name}" if self.name else "# Report"
        if self.data:
            title += f" on {self.data}"
        parts = [title, "", "## Totals", "", _md_table(*self._totals_rows())]
        if stages:
            rows = [[str(s.get("method", "")), _fmt_float(s.get("seconds"), 1), _fmt_acc(s.get("accuracy"))]
                    for s in stages]
            parts += ["", "## Stages", "", _md_table(["method", "seconds", "accuracy"], rows)]
        parts += ["", "## Layers", "", _md_table(*self._layer_rows(), left=3), ""]
        return "\n".join(parts)

    # ---- rich --------------------------------------------------------------------------------------------------
    def __rich__(self):
        from rich.console import Group
        from rich.table import Table

        tables = []
        for title, (header, rows) in (("Totals", self._totals_rows()), ("Layers", self._layer_rows())):
            table = Table(title=f"{self.name or 'model'}: {title}" if title == "Totals" else title)
            for i, h in enumerate(header):
                table.add_column(h, justify="left" if i < (3 if title == "Layers" else 1) else "right")
            for row in rows:
                table.add_row(*row)
            tables.append(table)
        return Group(*tables)

    def print(self, console=None) -> None:
        """Print the tables with rich (to ``console``, a ``rich.console.Console``, or the default one)."""
        from rich.console import Console

        (console or Console()).print(self)

    def __str__(self) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=140, force_terminal=False, color_system=None).print(self)
        return buf.getvalue()

    # ---- files -------------------------------------------------------------------------------------------------
    def write(self, out_dir, stages: list[dict] | None = None, model_name: str | None = None,
              data_name: str | None = None) -> dict[str, Path]:
        """Write ``report.json``, ``report.md`` and ``report.png`` into ``out_dir`` (created if missing), atomically.

        Args:
            out_dir: the output folder.
            stages: ``[{"method", "seconds", "accuracy"}, ...]`` for report.json and report.md.
            model_name: the ``"model"`` value in report.json (default ``self.name``).
            data_name: the ``"data"`` value in report.json (default ``self.data``).

        Returns:
            ``{"json": path, "markdown": path, "plot": path}``.
        """
        from .plot import plot_layer_sizes

        out = ensure_dir(out_dir)
        doc = self.to_dict(stages=stages, model_name=model_name, data_name=data_name)
        paths = {"json": out / "report.json", "markdown": out / "report.md", "plot": out / "report.png"}
        atomic_write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
        atomic_write_text(paths["markdown"], self.to_markdown(stages=stages))
        plot_layer_sizes(self, paths["plot"])
        return paths


def summarize(model: nn.Module, data=None, *, input_shape=None, baseline=None, latency: bool = False,
              repeats: int = 20,
              name: str | None = None) -> Report:
    """Measure ``model`` layer by layer and in total.

    Args:
        model: the (compressed) module.
        data: a DataBundle (accuracy on its ``.test``) or an ArrayDataset; gives accuracy through
            :func:`compactnn.train.evaluate` and the input shape. None skips accuracy.
        input_shape: one example's shape ``(C, H, W)``, for MACs and latency; defaults to the data's. With neither,
            ``macs`` are None and latency cannot be measured.
        baseline: the uncompressed model (summarized the same way) or its Report; None for no comparison.
        latency: also time the model at batch 1 and 256 (:func:`measure_latency`).
        repeats: timed runs per batch size (the median is reported).
        name: the model's name for titles and report.json; defaults to the class name.

    Layers are the modules that own parameters (see :func:`compactnn.report.macs.layer_modules`). A layer's
    ``bytes`` sums its parameters and buffers as the packer stores them, and ``bits_per_weight`` is
    ``8 * bytes / params``. ``totals["packed_bytes"]`` is the real ``.cnz`` file size.
    """
    from .. import pack

    if input_shape is None and data is not None:
        input_shape = getattr(data, "input_shape", None)
        if input_shape is None and hasattr(data, "x"):
            input_shape = tuple(data.x.shape[1:])
    if latency and input_shape is None:
        from ..errors import ConfigError

        raise ConfigError("latency=True needs input_shape=(C, H, W) or data= to build inputs; pass one of them")
    stored = pack.tensor_bytes(model)
    if _is_integer_model(model):
        layers = _integer_rows(model, stored)
        macs = {r["name"]: r["macs"] for r in layers}
        weights = [r for r in layers if r["params"]]
        totals: dict[str, Any] = {"params": sum(r["params"] for r in weights),
                                  "nonzero": sum(r["nonzero"] for r in weights)}
    else:
        macs = count_macs(model, input_shape) if input_shape is not None else None
        layers = [_layer_row(n, m, whole, stored, macs) for n, m, whole in layer_modules(model)]
        params = list(model.parameters())
        totals = {"params": sum(p.numel() for p in params),
                  "nonzero": sum(int(torch.count_nonzero(p.detach())) for p in params)}
    totals["packed_bytes"] = int(pack.packed_size(model))
    totals["macs"] = sum(macs.values()) if macs is not None else None
    if data is not None:
        from .. import train

        totals["accuracy"] = float(train.evaluate(model, data)["accuracy"])
    if isinstance(baseline, nn.Module):
        baseline = summarize(baseline, data, input_shape=input_shape, latency=latency, repeats=repeats, name=name)
    return Report(
        layers=layers,
        totals=totals,
        latency_ms=measure_latency(model, input_shape, repeats=repeats) if latency else None,
        baseline=baseline,
        name=name or type(model).__name__,
        data=getattr(data, "name", None),
    )


def _layer_row(name: str, module: nn.Module, whole: bool, stored: dict[str, int], macs: dict | None) -> dict:
    prefix = f"{name}." if name else ""
    params = list(module.parameters(recurse=whole))
    keys = [k for k in stored if k.startswith(prefix) and (whole or "." not in k[len(prefix):])]
    count = sum(p.numel() for p in params)
    nbytes = sum(int(stored[k]) for k in keys)
    weight = module._parameters.get("weight")
    shape = weight.shape if weight is not None else (params[0].shape if params else ())
    return {
        "name": name,
        "kind": type(module).__name__,
        "shape": [int(s) for s in shape],
        "params": count,
        "nonzero": sum(int(torch.count_nonzero(p.detach())) for p in params),
        "bits_per_weight": 8.0 * nbytes / count if count else 0.0,
        "bytes": nbytes,
        "macs": macs.get(name, 0) if macs is not None else None,
    }


def _is_integer_model(model: nn.Module) -> bool:
    from ..quantize.intonly.model import IntegerModel

    return isinstance(model, IntegerModel)


def _integer_rows(model: nn.Module, stored: dict[str, int]) -> list[dict]:
    """One row per op of an integer model (its program, not its modules): the int8 weights and int32 biases it
    holds, their stored bytes, and its MACs at batch 1 from the shapes the IR check computes."""
    import math

    from ..quantize.intonly.ir import check_program

    shapes = check_program(model)
    rows = []
    for op in model.ops:
        tensors = {field: getattr(model, name) for field, name in op.buffers().items()}
        weight, bias = tensors.get("weight"), tensors.get("bias")
        held = [t for t in (weight, bias) if t is not None]
        count = sum(t.numel() for t in held)
        nbytes = sum(int(stored.get(name, 0)) for name in op.buffers().values())
        macs = 0
        if weight is not None:  # conv: every output element takes (C/g)*kh*kw products; linear: in_features
            macs = math.prod(shapes[op.output]) * math.prod(weight.shape[1:])
        rows.append({
            "name": op.name or op.output,
            "kind": f"int8 {op.kind}",
            "shape": [int(v) for v in (weight.shape if weight is not None else shapes[op.output])],
            "params": count,
            "nonzero": sum(int(torch.count_nonzero(t)) for t in held),
            "bits_per_weight": 8.0 * nbytes / count if count else 0.0,
            "bytes": nbytes,
            "macs": macs,
        })
    return rows


def _ratio(before, after) -> float | None:
    if before is None or after is None or not after:
        return None
    return float(before) / float(after)


def _fmt_int(v) -> str:
    return "-" if v is None else f"{int(v):,}"


def _fmt_acc(v) -> str:
    return "-" if v is None else f"{100.0 * float(v):.2f}%"


def _fmt_float(v, digits: int) -> str:
    return "-" if v is None else f"{float(v):.{digits}f}"


def _fmt_ms(v) -> str:
    return "-" if v is None else f"{float(v):.3f}"


def _md_table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """A markdown table; the first ``left`` columns are left-aligned, the rest right-aligned (numbers)."""

    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |",
             "|" + "|".join("---" if i < left else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


