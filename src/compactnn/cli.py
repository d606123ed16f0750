"""The ``compactnn`` command: run, train, eval, report, list.

Bad input ends with one line on stderr (``error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import CompactnnError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="compactnn: make PyTorch models really smaller and faster.",
)
console = Console()
err_console = Console(stderr=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if value < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def print_before_after(result: dict) -> None:
    """The before/after table of a run: accuracy, params, nonzeros, packed bytes, MACs, and the ratios."""
    base, comp = result["baseline"], result["compressed"]
    metric = result.get("metric", "accuracy")
    table = Table(title=f"{result.get('model', '')} on {result.get('data', '')}")
    for col in ("", "before", "after", "ratio"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row(metric, _fmt(base.get(metric)), _fmt(comp.get(metric)), "")
    for stage in result.get("stages") or []:  # a recipe's teacher: its accuracy beside the student's
        if str(stage.get("method", "")).startswith("teacher"):
            table.add_row(f"{metric} of {stage['method']}", "", _fmt(stage.get("accuracy")), "")
    for key in ("params", "nonzero", "packed_bytes", "macs"):
        b, a = base.get(key, base.get("params") if key == "nonzero" else None), comp.get(key)
        ratio = f"{b / a:.1f}x" if isinstance(b, (int, float)) and a else ""
        table.add_row(key.replace("_", " "), _fmt(b), _fmt(a), ratio)
    for k, v in (base.get("latency_ms") or {}).items():
        a = (comp.get("latency_ms") or {}).get(k)
        table.add_row(f"latency ms @ batch {k}", f"{v:.3f}", f"{a:.3f}" if a else "-", f"{v / a:.2f}x" if a else "")
    console.print(table)


@app.command()
def run(
    recipe: Path = typer.Argument(..., help="YAML recipe, e.g. recipes/demo.yaml"),
    out: Path = typer.Option(..., "--out", "-o", help="output folder for model.cnz and the report"),
    force: bool = typer.Option(False, "--force", help="replace a non-empty output folder"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run a recipe: load data, build and train the model, compress it, pack it and report."""
    from .recipe import check_output_dir, load_recipe, run as run_recipe

    parsed = load_recipe(recipe)
    check_output_dir(out, force)
    result = run_recipe(parsed, out, force=force, quiet=True if quiet else None)
    print_before_after(result)
    console.print(f"wrote {out}/model.cnz, report.json, report.md, report.png")


@app.command()
def train(
    out: Path = typer.Option(..., "--out", "-o", help="where to write the trained model (.cnz)"),
    model: str = typer.Option("lenet300", help="registry model name (see `compactnn list models`)"),
    data: str = typer.Option("digits", help="data set name (see `compactnn list datasets`)"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding the data set's files"),
    epochs: int = typer.Option(10),
    lr: float = typer.Option(0.1),
    batch_size: int = typer.Option(128),
    optimizer: str = typer.Option("sgd", help="sgd, adam or adamw"),
    seed: int = typer.Option(0),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train a registry model and pack it."""
    from . import data as cn_data
    from . import models, pack
    from . import train as cn_train

    from .outputs import check_output_file
    from .recipe import ModelSpec, create_model

    check_output_file(out, force)
    bundle = cn_data.load(data, root=data_root)
    net = create_model(ModelSpec(name=model), bundle, seed)
    cn_train.fit(net, bundle, epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, seed=seed,
                 quiet=True if quiet else None)
    acc = cn_train.evaluate(net, bundle)["accuracy"]
    pack.save(net, out, metadata={"model": model, "data": data, "input_shape": list(bundle.input_shape)})
    console.print(f"{model} on {data}: test accuracy {acc:.4f}; wrote {out} ({out.stat().st_size:,} bytes)")


@app.command("eval")
def eval_(
    file: Path = typer.Argument(..., help="a packed model (.cnz)"),
    data: str = typer.Option("digits", help="data set name"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding the data set's files"),
) -> None:
    """Evaluate a packed model on a data set's test split."""
    from . import data as cn_data
    from . import pack
    from . import train as cn_train

    net = pack.load(file)
    bundle = cn_data.load(data, root=data_root)
    try:
        metrics = cn_train.evaluate(net, bundle)
    except (RuntimeError, ValueError, TypeError, IndexError) as err:  # as `report` does (report.macs.run_forward)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CompactnnError(f"{file} cannot be evaluated on {data} (input shape {tuple(bundle.input_shape)}): "
                             f"{first}; evaluate it on the data set it was trained for") from None
    console.print(f"{file}: accuracy {metrics['accuracy']:.4f}, loss {metrics['loss']:.4f}")


@app.command()
def report(
    file: Path = typer.Argument(..., help="a packed model (.cnz)"),
    data: Optional[str] = typer.Option(None, help="data set for accuracy and input shape (default: as packed)"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding the data set's files"),
    latency: bool = typer.Option(False, help="also time batch 1 and batch 256"),
) -> None:
    """Print the per-layer table of a packed model: params, nonzeros, bits per weight, bytes, MACs."""
    from . import data as cn_data
    from . import pack
    from . import report as cn_report

    net = pack.load(file)
    meta = pack.read_manifest(file).get("metadata") or {}
    bundle = cn_data.load(data, root=data_root) if data else None
    shape = tuple(meta["input_shape"]) if "input_shape" in meta and bundle is None else None
    summary = cn_report.summarize(net, bundle, input_shape=shape, latency=latency, name=file.name)
    summary.print(console)
    console.print(f"file size: {file.stat().st_size:,} bytes")


@app.command()
def export(
    file: Path = typer.Argument(..., help="a packed integer-only model (.cnz) from the integer-only method"),
    out: Path = typer.Argument(..., help="the ONNX file to write"),
    qlinear: bool = typer.Option(False, "--qlinear", help="ORT's fused QLinearConv/QGemm/QLinearAdd kernels: much "
                                 "faster, but up to one code per layer away from compactnn (not bit-exact)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
) -> None:
    """Export an integer-only model to ONNX. By default the graph is bit-identical to compactnn's engines in ONNX
    Runtime (ConvInteger/MatMulInteger and the fixed-point requantization in integer ops); --qlinear uses ORT's
    faster QLinearConv/QGemm/QLinearAdd instead."""
    from .quantize.intonly.export import export_file

    from .outputs import check_output_file

    check_output_file(out, force)
    export_file(file, out, mode="qlinear" if qlinear else "exact")
    console.print(f"wrote {out} ({out.stat().st_size:,} bytes)")
    if not qlinear:
        console.print("bit-identical to compactnn's engines in ONNX Runtime; --qlinear gives ORT's much faster "
                      "QLinear kernels (not bit-exact)")


@app.command()
def sensitivity(
    file: Path = typer.Argument(..., help="a packed model (.cnz)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for sensitivity.csv and sensitivity.png"),
    data: str = typer.Option("digits", help="data set whose test split is scored"),
    data_root: Optional[Path] = typer.Option(None, help="folder holding the data set's files"),
    levels: str = typer.Option("0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9", help="comma-separated fractions pruned"),
    layers: Optional[str] = typer.Option(None, help="comma-separated layer name patterns (default: all)"),
    structured: bool = typer.Option(False, "--structured", help="prune whole filters instead of single weights"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Prune each layer alone at a sweep of levels, without retraining, and plot accuracy against sparsity."""
    from .prune.sensitivity import run_sensitivity_cli

    try:
        fractions = [float(v) for v in levels.split(",") if v.strip()]
    except ValueError:
        raise CompactnnError(f"--levels must be comma-separated numbers in [0, 1), got {levels!r}") from None
    result = run_sensitivity_cli(file, data, out, fractions, data_root=data_root,
                                 layers=layers.split(",") if layers else None, structured=structured,
                                 quiet=True if quiet else None)
    console.print(f"wrote {result['csv']} and {result['png']} ({len(result['rows'])} rows)")


@app.command("list")
def list_(what: str = typer.Argument("all", help="methods, models, datasets or all")) -> None:
    """List the registered methods, models and data sets."""
    from . import api, data, models

    tables = {
        "methods": api.describe_methods,
        "models": models.describe_models,
        "datasets": data.describe_datasets,
    }
    if what != "all" and what not in tables:
        raise CompactnnError(f"cannot list {what!r}; choose one of methods, models, datasets, all")
    for name, get in tables.items():
        if what in ("all", name):
            table = Table(title=name)
            table.add_column("name")
            table.add_column("description")
            for key, desc in get().items():
                table.add_row(key, desc)
            console.print(table)


from .cli_user import mount as _mount_user  # noqa: E402

_mount_user(app)
from .cli_distill import mount as _mount_distill  # noqa: E402

_mount_distill(app)
from . import cli_sr  # noqa: E402,F401  (mounts import-caffe and the sr sub-app)
from .cli_pq import app as _pq_app  # noqa: E402

app.add_typer(_pq_app, name="pq")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app, turning input errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="compactnn")
    except CompactnnError as err:
        err_console.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
