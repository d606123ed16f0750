"""The int8 (integer-only) IDN parts of benchmarks/idn.py (issue 13): PSNR of the post-training int8 model vs float,
packed bytes, and the time of a 256x256 LR image, int8 vs float torch side by side in one process.

    python benchmarks/idn.py --part int8 --scales 2,4        # convert, Set5/Set14 float vs int8, packed bytes
    python benchmarks/idn.py --part int8-time --scales 2      # 256x256 LR: float torch vs int8, rounds; per-op profile

The converted models are kept in --int8-dir (default /tmp/compactnn-idn-int8), outside the repository.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from compactnn import pack
from compactnn.sr.evaluate import evaluate_set
from compactnn.sr.int8 import calibration_patches, convert_idn


def add_args(p) -> None:
    p.add_argument("--int8-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "compactnn-idn-int8")
    p.add_argument("--calib", type=int, default=64, help="calibration patches")
    p.add_argument("--calib-patch", type=int, default=48, help="calibration LR patch size")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "percentile"])
    p.add_argument("--percentile", type=float, default=99.99)
    p.add_argument("--rounds", type=int, default=5, help="timing rounds (--part int8-time)")
    p.add_argument("--size", type=int, default=256, help="LR size of the timing image")


def int8_model(args, s: int, official, rebuild: bool = False):
    """The int8 x``s`` model: loaded from --int8-dir, or converted (and saved there)."""
    args.int8_dir.mkdir(parents=True, exist_ok=True)
    tag = f"{args.calib_method}-{args.calib}x{args.calib_patch}"
    path = args.int8_dir / f"idn_x{s}_int8_{tag}.cnz"
    if path.exists() and not rebuild:
        return pack.load(path), path, None
    t0 = time.time()
    cal = calibration_patches(s, count=args.calib, patch=args.calib_patch, seed=0, data=args.data)
    q = convert_idn(official(s, args.data), cal, method=args.calib_method, percentile=args.percentile)
    seconds = time.time() - t0
    pack.save(q, path, metadata={"model": "idn-int8", "scale": s, "calibration": tag})
    return q, path, seconds


def part_int8(args, results: dict, official, command, env) -> None:
    sec = results.setdefault("int8", {})
    rows = {(r["scale"], r["set"]): r for r in sec.get("rows", [])}
    tmp = args.int8_dir
    tmp.mkdir(parents=True, exist_ok=True)
    for s in args.scales:
        model = official(s, args.data)
        fpath = tmp / f"idn_x{s}_float.cnz"
        pack.save(model, fpath)
        q, qpath, conv_s = int8_model(args, s, official, rebuild=True)
        fbytes, qbytes = fpath.stat().st_size, qpath.stat().st_size
        for name in ("Set5", "Set14"):
            t0 = time.time()
            rf = evaluate_set(model, name, data=args.data, quiet=True)
            t1 = time.time()
            rq = evaluate_set(q, name, data=args.data, quiet=True)
            t2 = time.time()
            rows[(s, name)] = {"scale": s, "set": name, "float_psnr": rf["psnr"], "int8_psnr": rq["psnr"],
                               "drop": rf["psnr"] - rq["psnr"], "float_ssim": rf["ssim"], "int8_ssim": rq["ssim"],
                               "float_bytes": fbytes, "int8_bytes": qbytes, "ratio": fbytes / qbytes,
                               "float_seconds": round(t1 - t0, 1), "int8_seconds": round(t2 - t1, 1),
                               "convert_seconds": None if conv_s is None else round(conv_s, 1),
                               "calibration": f"{args.calib_method} on {args.calib} LR patches of "
                                              f"{args.calib_patch}x{args.calib_patch} (PatchSampler, seed 0)",
                               "command": command(), "env": env(),
                               "images": [{"name": a["name"], "float": a["psnr"], "int8": b["psnr"]}
                                          for a, b in zip(rf["images"], rq["images"])]}
            print(f"x{s} {name}: float {rf['psnr']:.4f}, int8 {rq['psnr']:.4f} (drop {rf['psnr'] - rq['psnr']:.4f} dB); "
                  f"{fbytes:,} -> {qbytes:,} bytes ({fbytes / qbytes:.2f}x)", flush=True)
    sec["rows"] = sorted(rows.values(), key=lambda r: (r["scale"], r["set"]))


def _timing_image(size: int) -> torch.Tensor:
    """A natural 256x256 LR Y image: scikit-image's astronaut, Y channel, bicubic-downscaled to ``size``."""
    from compactnn.sr import matlab

    try:
        import skimage.data

        rgb = skimage.data.astronaut()
    except ImportError:  # any content times the same
        rgb = (np.random.default_rng(0).random((512, 512, 3)) * 255).astype(np.uint8)
    y = matlab.rgb2ycbcr(rgb)[..., 0].astype(np.float32) / 255
    lr = matlab.imresize(y, size / y.shape[0])[:size, :size]
    return torch.from_numpy(np.ascontiguousarray(lr))[None, None]


def _profile(model, prog, x: torch.Tensor) -> list:
    """Seconds of each step of the native program (one run)."""
    nat = prog.fast_engine().native
    if nat is None:
        return []
    q = model.split(x).to(torch.uint8)  # the input codes (two planes by default), as IntegerIDN.forward makes them
    n = 1
    plan = nat._plan(n, False)
    nat._put(plan, q.contiguous().data_ptr(), n)
    out = []
    for (fn, ptrs, name) in plan.calls:
        t0 = time.perf_counter()
        fn(ptrs, n, plan.threads)
        out.append((name, time.perf_counter() - t0))
    return out


@torch.no_grad()
def part_int8_time(args, results: dict, official, command, env) -> None:
    sec = results.setdefault("int8", {})
    timing = {t["scale"]: t for t in sec.get("timing", [])}
    x = _timing_image(args.size)
    for s in args.scales:
        model = official(s, args.data).eval()
        q, _, _ = int8_model(args, s, official)
        prog = q.program(args.size, args.size)
        kinds = {op.output: (op.kind + ("+leaky" if getattr(op, "activation", "") == "leaky_relu" else "")
                             + (f" g{op.groups}" if getattr(op, "groups", 1) > 1 else "")) for op in prog.ops}
        native = prog.fast_engine().native is not None
        model(x), q(x)  # warm-up (engine build, caches)
        tf, tq = [], []
        for _ in range(args.rounds):  # side by side, alternating
            t0 = time.perf_counter()
            model(x)
            t1 = time.perf_counter()
            q(x)
            t2 = time.perf_counter()
            tf.append(t1 - t0)
            tq.append(t2 - t1)
        prof = _profile(q, prog, x)
        by_kind: dict = {}
        for name, sec_ in prof:
            k = kinds.get(name, name)
            by_kind[k] = by_kind.get(k, 0.0) + sec_
        timing[s] = {"scale": s, "size": args.size, "rounds": args.rounds, "native": native,
                     "float_seconds": tf, "int8_seconds": tq, "float_median": statistics.median(tf),
                     "int8_median": statistics.median(tq), "speedup": statistics.median(tf) / statistics.median(tq),
                     "profile": {k: round(v, 4) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
                     "profile_total": round(sum(v for _, v in prof), 4), "command": command(), "env": env()}
        print(f"x{s} {args.size}x{args.size}: float torch {statistics.median(tf):.3f} s, int8 "
              f"{statistics.median(tq):.3f} s (x{timing[s]['speedup']:.2f}); profile {timing[s]['profile']}",
              flush=True)
    sec["timing"] = sorted(timing.values(), key=lambda t: t["scale"])


def render(results: dict) -> list:
    sec = results.get("int8")
    if not sec:
        return []
    lines = ["## Integer-only int8 IDN (post-training)", ""]
    rows = sec.get("rows", [])
    if rows:
        r0 = rows[0]
        lines += [f"Made by `{r0['command']}` ({r0['env']}). Official weights converted by `compactnn.sr.int8."
                  f"convert_idn`, calibrated with {r0['calibration']}; evaluated with the official protocol "
                  "(`sr eval`). Every op is integer: convs with LeakyReLU fused in the requantization, concat, add, "
                  "and the output layer as one op (`conv_transpose2d_resize_add`: the 17x17 transposed conv and the "
                  "integer bicubic summed at 1/256 of a code, rounded once); the input is 16-bit as two uint8 "
                  "planes (code and fraction, `IntegerIDN.split`), the output uint8 codes at 1/255.", "",
                  "| scale | set | float PSNR | int8 PSNR | drop (dB) | float SSIM | int8 SSIM | float bytes | "
                  "int8 bytes | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| x{r['scale']} | {r['set']} | {r['float_psnr']:.3f} | {r['int8_psnr']:.3f} | "
                         f"{r['drop']:.3f} | {r['float_ssim']:.4f} | {r['int8_ssim']:.4f} | {r['float_bytes']:,} | "
                         f"{r['int8_bytes']:,} | {r['ratio']:.2f}x |")
        lines += ["", "Targets: drop <= 0.15 dB on Set5 x2 and x4; ratio >= 3.8x (float .cnz of the official weights "
                  "vs the int8 .cnz).", ""]
    tim = sec.get("timing", [])
    if tim:
        t0 = tim[0]
        lines += ["### Time of one 256x256 LR image (2 cores)", "",
                  f"Made by `{t0['command']}` ({t0['env']}): float torch (`IDN.forward`, fp32) and the int8 model "
                  "(`IntegerIDN.forward`: quantize, the native program, dequantize) alternate in one process, "
                  f"{t0['rounds']} rounds each after a warm-up; medians.", "",
                  "| scale | float torch s | int8 s | int8 speed-up | native program |", "|---|---|---|---|---|"]
        for t in tim:
            lines.append(f"| x{t['scale']} | {t['float_median']:.3f} | {t['int8_median']:.3f} | "
                         f"{t['speedup']:.2f}x | {'yes' if t['native'] else 'no (torch engine)'} |")
        lines += ["", "Per-op profile of one int8 run (seconds, summed by op kind):", ""]
        for t in tim:
            lines.append(f"- x{t['scale']}: " + ", ".join(f"{k} {v:.3f}" for k, v in t["profile"].items())
                         + f" (total {t['profile_total']:.3f})")
        lines.append("")
    return lines
