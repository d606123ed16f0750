"""IDN super-resolution benchmark: the paper's table from the official Caffe weights, B100, a picture, the CPU
training curve and compressed IDNs.

Runs in parts (each well under 8 minutes of CPU on 2 cores) that merge their results into docs/results/idn.json;
every part rewrites idn.md (and ``--part figure`` idn.png) from the JSON:

    python benchmarks/idn.py --part table            # x2/x3/x4 on Set5 and Set14, IDN and bicubic, vs the paper
    python benchmarks/idn.py --part b100 --scales 2  # B100 (JPEG) per scale
    python benchmarks/idn.py --part figure           # crop of a Set14 image: bicubic / IDN / ground truth
    python benchmarks/idn.py --part train --run DIR  # the curve of a `compactnn sr train` run folder
    python benchmarks/idn.py --part compress ...     # pruning and k-means weight sharing (see --help)
    python benchmarks/idn.py --part int8 --scales 2,4        # integer-only int8: PSNR vs float, packed bytes
    python benchmarks/idn.py --part int8-time --scales 2     # 256x256 LR: float torch vs int8 side by side

Data: --data (default $COMPACTNN_SR_DATA, then ../shared/data), holding sr/ and idn/.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from compactnn.files import atomic_write, atomic_write_text  # noqa: E402
from compactnn.sr.caffe import import_idn  # noqa: E402
from compactnn.sr.evaluate import data_root, evaluate_set  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results"
PAPER = {  # data/README.md: Y-channel PSNR of the IDN paper (IDN, bicubic)
    (2, "Set5"): (37.83, 33.66), (2, "Set14"): (33.30, 30.24),
    (3, "Set5"): (34.11, 30.39), (3, "Set14"): (29.99, 27.55),
    (4, "Set5"): (31.82, 28.43), (4, "Set14"): (28.25, 26.00),
}


def load_json(out: Path) -> dict:
    p = out / "idn.json"
    return json.loads(p.read_text()) if p.exists() else {}


def save_json(out: Path, results: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "idn.json", json.dumps(results, indent=1) + "\n")
    atomic_write_text(out / "idn.md", render(results))


def command() -> str:
    return "python " + " ".join(["benchmarks/idn.py", *sys.argv[1:]])


def env() -> str:
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}"


def official(scale: int, data: Path):
    return import_idn(data / "idn" / f"IDN_x{scale}.caffemodel", scale)


def part_table(args, results: dict) -> None:
    rows = []
    for s in (2, 3, 4):
        model = official(s, args.data)
        for name in ("Set5", "Set14"):
            t0 = time.time()
            r = evaluate_set(model, name, data=args.data, quiet=True, bicubic=True)
            p_idn, p_bic = PAPER[(s, name)]
            rows.append({"scale": s, "set": name, "psnr": r["psnr"], "paper_psnr": p_idn,
                         "diff": r["psnr"] - p_idn, "bicubic_psnr": r["bicubic_psnr"], "paper_bicubic": p_bic,
                         "bicubic_diff": r["bicubic_psnr"] - p_bic, "ssim": r["ssim"],
                         "bicubic_ssim": r["bicubic_ssim"], "seconds": round(time.time() - t0, 1),
                         "images": r["images"]})
            print(f"x{s} {name}: IDN {r['psnr']:.4f} (paper {p_idn}), bicubic {r['bicubic_psnr']:.4f} "
                  f"(paper {p_bic})", flush=True)
    results["official"] = {"command": command(), "env": env(), "rows": rows}


def part_b100(args, results: dict) -> None:
    """B100 per scale, image by image, stopping after --budget seconds; a rerun continues where it stopped."""
    from compactnn.sr.evaluate import evaluate_image, set_files
    from compactnn.sr.images import read_image

    b = results.setdefault("b100", {"rows": [], "images": {}})
    b.setdefault("images", {})
    files = set_files("B100", args.data)
    t0 = time.time()
    for s in args.scales:
        done = b["images"].setdefault(str(s), {})
        model = official(s, args.data)
        for path in files:
            if path.stem in done:
                continue
            if time.time() - t0 > args.budget:
                print(f"budget reached; x{s}: {len(done)}/{len(files)} images done, run again", flush=True)
                return
            t1 = time.time()
            m = evaluate_image(model, read_image(path), s)
            done[path.stem] = {k: float(v) for k, v in m.items()} | {"seconds": round(time.time() - t1, 2)}
        rows = list(done.values())
        b["rows"] = [x for x in b["rows"] if x["scale"] != s] + [{
            "scale": s, "set": "B100", "images": len(rows),
            **{k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim")},
            "seconds": round(sum(r["seconds"] for r in rows), 1), "command": command()}]
        b["rows"].sort(key=lambda x: x["scale"])
        print(f"x{s} B100: IDN {b['rows'][-1]['psnr']:.4f}", flush=True)


def part_figure(args, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from compactnn.sr import matlab
    from compactnn.sr.evaluate import network_residual, set_files
    from compactnn.sr.images import read_image

    s, name = args.fig_scale, args.fig_image
    path = [p for p in set_files("Set14", args.data) if p.stem == name][0]
    rgb = matlab.modcrop(read_image(path), s)
    ycc = matlab.rgb2ycbcr(rgb.astype(np.float64) / 255).astype(np.float32)
    lr = matlab.imresize(ycc, 1.0 / s)
    bic = matlab.imresize(lr, float(s))
    panels = {"bicubic": bic.copy()}
    for label, model in [("IDN float (official weights)", official(s, args.data))] + extra_models(args, s):
        out = bic.copy()
        out[..., 0] += network_residual(model, lr[..., 0])
        panels[label] = out
    panels["ground truth"] = ycc
    r0, c0, size = args.fig_crop
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    gt8 = matlab.to_uint8(ycc[..., 0] * 255)
    info = []
    for ax, (label, img) in zip(axes, panels.items()):
        rgb8 = matlab.to_uint8(matlab.ycbcr2rgb(img.astype(np.float64)) * 255)
        ax.imshow(rgb8[r0: r0 + size, c0: c0 + size], interpolation="nearest")
        y8 = matlab.to_uint8(img[..., 0] * 255)
        p = matlab.psnr(matlab.shave(gt8, s), matlab.shave(y8, s))
        ax.set_title(label if label == "ground truth" else f"{label}\nY PSNR {p:.2f} dB", fontsize=9)
        ax.axis("off")
        info.append({"panel": label, "psnr_y_whole_image": None if label == "ground truth" else p})
    fig.suptitle(f"Set14 {name}, x{s}, crop {size}x{size} at ({r0}, {c0})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    atomic_write(args.out / "idn.png", lambda fh: fig.savefig(fh, format="png", dpi=110))
    results["figure"] = {"command": command(), "image": name, "scale": s, "crop": [r0, c0, size], "panels": info}


def extra_models(args, s: int) -> list:
    """The int8 IDN of --part int8 (converted now if --int8-dir does not hold it)."""
    from idn_int8 import int8_model  # noqa: PLC0415

    return [("IDN int8 (integer-only)", int8_model(args, s, official)[0])]


def part_train(args, results: dict) -> None:
    run = Path(args.run)
    cur = json.loads((run / "curve.json").read_text())
    results["train"] = {"command": "compactnn sr train --out RUN --scale 2 --l1-steps 2400 --l2-steps 400 --batch 8 "
                                   "--minutes 6 --data ../shared/data, repeated under the CPU lock (each run "
                                   "resumes the last; driven by a script calling compactnn.sr.train.train with "
                                   "these settings)",
                        "config": cur["config"], "curve": cur["curve"]}


def fmt(v, d=2):
    return "-" if v is None else f"{v:.{d}f}"


def render(results: dict) -> str:
    lines = ["# IDN super-resolution (Hui et al., CVPR 2018)", ""]
    off = results.get("official")
    if off:
        lines += ["## Official weights, official protocol (Y-channel PSNR, dB)", "",
                  f"Made by `{off['command']}` ({off['env']}). Weights: the authors' `IDN_x{{2,3,4}}.caffemodel` read by "
                  "our own protobuf reader (`compactnn import-caffe`); protocol: the authors' `test_IDN.m` "
                  "(MATLAB rgb2ycbcr, modcrop, antialiased bicubic imresize, uint8 rounding, shave s).", "",
                  "| scale | set | IDN (ours) | IDN (paper) | diff | bicubic (ours) | bicubic (paper) | diff | "
                  "IDN SSIM | bicubic SSIM |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in off["rows"]:
            lines.append(f"| x{r['scale']} | {r['set']} | {r['psnr']:.3f} | {r['paper_psnr']:.2f} | "
                         f"{r['diff']:+.3f} | {r['bicubic_psnr']:.3f} | {r['paper_bicubic']:.2f} | "
                         f"{r['bicubic_diff']:+.3f} | {r['ssim']:.4f} | {r['bicubic_ssim']:.4f} |")
        worst = max(max(abs(r["diff"]), abs(r["bicubic_diff"])) for r in off["rows"])
        lines += ["", f"Largest difference from the paper over the 12 cells: {worst:.3f} dB (target: within 0.02).",
                  ""]
    b = results.get("b100")
    if b and b["rows"]:
        lines += ["## B100 (JPEG files, so not the paper's PNG figure)", "",
                  "Made by `python benchmarks/idn.py --part b100 --scales S` (run again until every image is done).", "",
                  "| scale | IDN PSNR | IDN SSIM | bicubic PSNR | bicubic SSIM |", "|---|---|---|---|---|"]
        for r in b["rows"]:
            lines.append(f"| x{r['scale']} | {r['psnr']:.3f} | {r['ssim']:.4f} | {r['bicubic_psnr']:.3f} | "
                         f"{r['bicubic_ssim']:.4f} |")
        lines += ["", "data/README.md gives no paper figure for B100; these files are JPEG, so a comparison with a "
                  "PNG-based table would be approximate anyway.", ""]
    tr = results.get("train")
    if tr:
        c = tr["curve"]
        lines += ["## Training from scratch on the CPU", "", f"Made by `{tr['command']}`.", "",
                  f"Settings: `{json.dumps(tr['config'])}`. Data: B100 (JPEG) and scikit-image's bundled photos, "
                  "Y channel, rot90/flip augmentation. Target: Set5 x2 >= bicubic + 2.5 dB.", "",
                  "| step | train loss (L1, then L2) | Set5 x2 PSNR | bicubic | gain | wall seconds |",
                  "|---|---|---|---|---|---|"]
        for p in c:
            gain = p["psnr"] - p["bicubic_psnr"] if p.get("psnr") is not None else None
            lines.append(f"| {p['step']} | {fmt(p.get('loss'), 5)} | {fmt(p.get('psnr'), 3)} | "
                         f"{fmt(p.get('bicubic_psnr'), 3)} | {fmt(gain, 3)} | {p['seconds']} |")
        lines.append("")
    comp = results.get("compress")
    if comp:
        lines += ["## Compressed IDN (x2)", "", f"Made by `{comp['command']}` ({comp.get('env', '')}).", "",
                  "| model | Set5 PSNR | Set14 PSNR | packed bytes | vs float | Set5 seconds |",
                  "|---|---|---|---|---|---|"]
        for r in comp["rows"]:
            lines.append(f"| {r['name']} | {fmt(r.get('set5'), 3)} | {fmt(r.get('set14'), 3)} | "
                         f"{r['bytes']:,} | {r['ratio']:.2f}x | {fmt(r.get('seconds'), 1)} |")
        lines += ["", comp.get("notes", ""), ""]
    from idn_int8 import render as render_int8  # noqa: PLC0415

    lines += render_int8(results)
    fig = results.get("figure")
    if fig:
        lines += ["## Picture", "", f"Made by `{fig['command']}`: Set14 `{fig['image']}` x{fig['scale']}, "
                  "bicubic / IDN float / IDN int8 (integer-only) / ground truth"
                  + ("." if len(fig["panels"]) > 3 else " (IDN int8 not in this run)."), "", "![idn](idn.png)", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", required=True, choices=["table", "b100", "figure", "train", "compress", "int8",
                                                     "int8-time", "render"])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scales", type=lambda t: [int(v) for v in t.split(",")], default=[2, 3, 4])
    p.add_argument("--fig-image", default="zebra")
    p.add_argument("--fig-scale", type=int, default=4)
    p.add_argument("--fig-crop", type=lambda t: [int(v) for v in t.split(",")], default=[100, 180, 120])
    p.add_argument("--budget", type=float, default=420.0, help="seconds for --part b100 before it stops")
    p.add_argument("--run", default=None, help="run folder of `compactnn sr train` (--part train)")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from idn_int8 import add_args  # noqa: PLC0415

    add_args(p)
    args, rest = p.parse_known_args()
    args.data = data_root(args.data)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results = load_json(args.out)
    if args.part in ("int8", "int8-time"):
        from idn_int8 import part_int8, part_int8_time  # noqa: PLC0415

        (part_int8 if args.part == "int8" else part_int8_time)(args, results, official, command, env)
    elif args.part == "compress":
        from idn_compress import part_compress  # noqa: PLC0415

        part_compress(args, rest, results)
    elif args.part != "render":
        {"table": part_table, "b100": part_b100, "figure": part_figure, "train": part_train}[args.part](args, results)
    save_json(args.out, results)


if __name__ == "__main__":
    main()
