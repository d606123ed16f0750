"""Super-resolution commands: ``compactnn import-caffe`` and the ``compactnn sr`` sub-app (eval, upscale, train).

Mounted on the main app by importing this module from :mod:`compactnn.cli`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .cli import app, console
from .errors import CompactnnError, DataError, OutputError

sr_app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                     help="Super-resolution with IDN: evaluate with the official protocol, upscale images, train.")
app.add_typer(sr_app, name="sr")


def load_sr_model(file: Path, scale: Optional[int] = None):
    """A packed IDN model from ``file``; ``scale``, when given, must be the model's."""
    from . import pack

    model = pack.load(file)
    if not (hasattr(model, "residual") and isinstance(getattr(model, "scale", None), int)):
        raise DataError(f"{file} is not a super-resolution (IDN) model; make one with `compactnn import-caffe` or "
                        f"`compactnn sr train`")
    if scale is not None and scale != model.scale:
        raise DataError(f"{file} is an x{model.scale} model, not x{scale}; use an x{scale} model or --scale "
                        f"{model.scale}")
    return model.eval()


def _check_out(out: Path, force: bool, suffixes: tuple[str, ...]) -> None:
    if out.suffix.lower() not in suffixes:
        raise OutputError(f"--out {out} must end in {' or '.join(suffixes)}")
    if out.exists() and not force:
        raise OutputError(f"{out} exists; choose another --out or pass --force")
    if not out.parent.is_dir():
        raise OutputError(f"cannot write {out}: folder {out.parent} does not exist; create it first")


@app.command("import-caffe")
def import_caffe(
    file: Path = typer.Argument(..., help="an official IDN_x{2,3,4}.caffemodel"),
    scale: int = typer.Option(..., "--scale", help="upscaling factor the file was trained for (2, 3 or 4)"),
    out: Path = typer.Option(..., "--out", "-o", help="the packed model to write (.cnz)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
) -> None:
    """Import the official IDN Caffe weights into a packed compactnn model."""
    from . import pack
    from .sr.caffe import import_idn

    if scale not in (2, 3, 4):
        raise CompactnnError(f"--scale must be 2, 3 or 4, got {scale}")
    _check_out(out, force, (".cnz",))
    model = import_idn(file, scale)
    pack.save(model, out, metadata={"model": "idn", "scale": scale, "source": Path(file).name,
                                    "input_shape": [1, 32, 32]})
    n = sum(p.numel() for p in model.parameters())
    console.print(f"imported {file} as IDN x{scale} ({n:,} parameters); wrote {out} ({out.stat().st_size:,} bytes)")


@sr_app.command("eval")
def sr_eval(
    file: Path = typer.Argument(..., help="a packed IDN model (.cnz)"),
    set_: str = typer.Option("Set5", "--set", help="Set5, Set14 or B100"),
    data: Optional[Path] = typer.Option(None, "--data", help="folder holding sr/Set5, sr/Set14, sr/B100 (default: "
                                        "$COMPACTNN_SR_DATA or ../shared/data)"),
    scale: Optional[int] = typer.Option(None, "--scale", help="check that the model is for this scale"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
    bicubic: bool = typer.Option(False, "--bicubic", help="also report the bicubic baseline"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Per-image and mean PSNR/SSIM on the Y channel with the IDN authors' test protocol."""
    from rich.table import Table

    from .sr.evaluate import evaluate_set, set_files

    set_files(set_, data)  # a missing/unknown set fails before the model is loaded
    model = load_sr_model(file, scale)
    result = evaluate_set(model, set_, data=data, quiet=True if (quiet or as_json) else None, bicubic=bicubic)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"{file.name} on {result['set']} x{result['scale']} (Y, official protocol)")
    cols = ["image", "PSNR", "SSIM"] + (["bicubic PSNR", "bicubic SSIM"] if bicubic else [])
    for c in cols:
        table.add_column(c, justify="left" if c == "image" else "right")

    def f(v, d):
        return "-" if v is None else f"{v:.{d}f}"

    for r in result["images"] + [dict(result, name="mean")]:
        row = [r["name"], f(r["psnr"], 2), f(r["ssim"], 4)]
        if bicubic:
            row += [f(r["bicubic_psnr"], 2), f(r["bicubic_ssim"], 4)]
        table.add_row(*row)
    console.print(table)


@sr_app.command("upscale")
def sr_upscale(
    image: Path = typer.Argument(..., help="an 8-bit colour image (PNG, BMP, JPEG, ...)"),
    model_file: Path = typer.Option(..., "--model", "-m", help="a packed IDN model (.cnz)"),
    out: Path = typer.Option(..., "--out", "-o", help="the PNG to write"),
    scale: Optional[int] = typer.Option(None, "--scale", help="check that the model is for this scale"),
    tile: int = typer.Option(128, "--tile", help="LR tile size in pixels (bounds memory)"),
    force: bool = typer.Option(False, "--force", help="replace an existing output file"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Upscale a colour image: Y by the network, Cb/Cr bicubic; tiled, with a progress bar for large images."""
    from .sr.images import read_image, write_png
    from .sr.upscale import upscale_rgb

    _check_out(out, force, (".png",))
    rgb = read_image(image, allow_gray=False)
    model = load_sr_model(model_file, scale)
    big = upscale_rgb(model, rgb, tile=tile, quiet=True if quiet else None)
    write_png(out, big)
    console.print(f"wrote {out} ({big.shape[1]}x{big.shape[0]}, x{model.scale})")


@sr_app.command("train")
def sr_train(
    out: Path = typer.Option(..., "--out", "-o", help="run folder (checkpoint.pt, model.cnz, curve.json); "
                             "an existing checkpoint there is resumed"),
    scale: int = typer.Option(2, "--scale"),
    images: Optional[List[Path]] = typer.Option(None, "--images", help="training image folders/files (default: "
                                                "B100 and scikit-image's photos)"),
    data: Optional[Path] = typer.Option(None, "--data", help="shared data folder (B100, Set5 for the curve)"),
    l1_steps: int = typer.Option(1600, "--l1-steps"),
    l2_steps: int = typer.Option(300, "--l2-steps"),
    batch: int = typer.Option(16, "--batch"),
    lr: float = typer.Option(3e-4, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="stop this part after so many minutes "
                                            "(run again to resume)"),
    quick: bool = typer.Option(False, "--quick", help="a few steps on small patches (smoke test)"),
    no_eval: bool = typer.Option(False, "--no-eval", help="skip the Set5 evaluation for the curve"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Train IDN on a CPU: L1 on LR patches, then L2 fine-tuning on larger patches; resumable."""
    from .sr.train import TrainConfig, quick_config, train

    if scale not in (2, 3, 4):
        raise CompactnnError(f"--scale must be 2, 3 or 4, got {scale}")
    if min(l1_steps, l2_steps, batch) < 0 or batch == 0 or not lr > 0:
        raise CompactnnError("--l1-steps/--l2-steps must be >= 0, --batch >= 1 and --lr > 0")
    cfg = quick_config(scale) if quick else TrainConfig(scale=scale, l1_steps=l1_steps, l2_steps=l2_steps,
                                                         batch=batch, lr=lr, lr2=lr / 10, seed=seed)
    r = train(out, cfg, sources=images, data=data, minutes=minutes, eval_set=None if no_eval else "Set5",
              quiet=True if quiet else None)
    last = r["curve"][-1] if r["curve"] else {}
    psnr = f", Set5 PSNR {last['psnr']:.2f} dB" if last.get("psnr") is not None else ""
    state = "done" if r["done"] else "paused (run again to resume)"
    console.print(f"step {r['step']}/{r['total']} {state}{psnr}; wrote {out}/model.cnz and curve.json")
