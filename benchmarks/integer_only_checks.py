"""The checks of benchmarks/integer_only.py that are not timing: bit-exactness, ONNX agreement and packing.

- :func:`exactness`: the NumPy reference engine (the definition) against the fast engine, end to end (output codes)
  and on every layer (every value of the program), on a range of test images (the reference is slow on ResNet-20,
  so the benchmark can run the test set in parts and add the counts up).
- :func:`onnx_end_to_end` / :func:`onnx_per_layer`: ORT on our exports against the fast engine; per layer,
  each ORT op is fed exactly the codes our engine computed for its inputs. For conv/linear layers the per-layer
  check also counts how often ORT differs from the *single* rounding of the exact product ``acc·M0·2^(shift−31)``
  (half to even), computed in int64 from the reference accumulators: it is 0 when ORT's float32 requantization
  is exactly one correctly rounded step, so that every difference from compactnn is TFLite's double rounding.
- :func:`packing`: packed sizes of the fp32 model and the integer models, and whether the loaded file gives
  bit-identical output codes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import compactnn as cn
from compactnn.quantize.intonly import reference as ref
from compactnn.quantize.intonly.export import build_op_onnx


def _batches(n: int, batch: int):
    return [(i, min(n, i + batch)) for i in range(0, n, batch)]


@torch.inference_mode()
def exactness(im, x: torch.Tensor, batch: int = 100) -> dict:
    """Mismatching codes between the reference and the fast engine on float inputs ``x``: output and every value."""
    out_bad = layer_bad = layer_codes = 0
    worst: dict[str, int] = {}
    for a, b in _batches(len(x), batch):
        q = im.quantize_input(x[a:b])
        ref_v = im.run_values(q, engine="reference")
        fast_v = im.run_values(q, engine="fast")
        for name, r in ref_v.items():
            bad = int((r.numpy() != fast_v[name].numpy()).sum())
            layer_bad += bad
            layer_codes += r.numel()
            worst[name] = worst.get(name, 0) + bad
        out = im.output["value"]
        out_bad += int((ref_v[out].numpy() != fast_v[out].numpy()).sum())
    return dict(images=len(x), outputs=len(x) * int(np.prod(im.run_int(im.quantize_input(x[:1])).shape[1:])),
                output_mismatches=out_bad, value_codes=layer_codes, value_mismatches=layer_bad,
                values_compared=len(worst))


def ort_session(proto_or_path, threads: int = 1):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    src = proto_or_path.SerializeToString() if hasattr(proto_or_path, "SerializeToString") else str(proto_or_path)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


@torch.inference_mode()
def onnx_end_to_end(im, onnx_path, x: np.ndarray, threads: int, batch: int = 500) -> dict:
    """Output codes of ORT on an export vs. the fast engine: max |difference| and the fraction exactly equal."""
    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    s, z = np.float32(im.output["scale"]), int(im.output["zero_point"])
    diffs = []
    for a, b in _batches(len(x), batch):
        y = sess.run(None, {name: x[a:b]})[0]
        codes = np.rint(y / s).astype(np.int64) + z  # y = (q − Z)·S in float32: the nearest integer is q − Z
        ours = im.run_int(im.quantize_input(torch.from_numpy(x[a:b])), engine="fast").numpy().astype(np.int64)
        diffs.append(np.abs(codes - ours).reshape(-1))
    d = np.concatenate(diffs)
    return dict(outputs=int(d.size), max_code_diff=int(d.max()), exact_fraction=round(float((d == 0).mean()), 6),
                within_1="yes" if d.max() <= 1 else "no",
                diff_histogram=", ".join(f"{int(k)}: {int(v)}" for k, v in zip(*np.unique(d, return_counts=True))))


def _single_rounding(acc: np.ndarray, m0: np.ndarray, shift: np.ndarray, z: int, qmin: int, qmax: int) -> np.ndarray:
    """``clamp(round_half_even(acc · M0 / 2^(31 − shift)) + Z)`` in exact int64 arithmetic (shift <= 0 here)."""
    e = (31 - shift).astype(np.int64)
    num = acc.astype(np.int64) * m0.astype(np.int64)  # |acc| < 2^31, M0 < 2^31: fits int64
    den = np.left_shift(np.int64(1), e)
    q, r = np.divmod(num, den)
    up = (2 * r > den) | ((2 * r == den) & (q % 2 == 1))
    return np.clip(q + up + z, qmin, qmax)


@torch.inference_mode()
def onnx_per_layer(im, x: torch.Tensor, threads: int, batch: int = 500, rounding_images: int = 500) -> list[dict]:
    """Per op: ORT (the qlinear export) fed our engine's input codes vs. our output codes; see the module docstring."""
    sessions = [ort_session(build_op_onnx(im, i, mode="qlinear"), threads) for i in range(len(im.ops))]
    stats = [dict(index=i, op=op.kind, name=op.name, codes=0, mismatches=0, max_code_diff=0,
                  ort_vs_single_rounding=None, rounding_codes=0) for i, op in enumerate(im.ops)]
    for a, b in _batches(len(x), batch):
        vals = {k: v.numpy() for k, v in im.run_values(im.quantize_input(x[a:b]), engine="fast").items()}
        for i, op in enumerate(im.ops):
            y = sessions[i].run(None, {v: vals[v] for v in dict.fromkeys(op.inputs)})[0].astype(np.int64)
            d = np.abs(y - vals[op.output].astype(np.int64))
            st = stats[i]
            st["codes"] += d.size
            st["mismatches"] += int((d != 0).sum())
            st["max_code_diff"] = max(st["max_code_diff"], int(d.max()))
            if op.kind in ("conv2d", "linear") and a < rounding_images:
                single = _single_rounding_of(im, op, vals[op.inputs[0]][: rounding_images - a])
                bad = int((single != y[: rounding_images - a]).sum())
                st["ort_vs_single_rounding"] = (st["ort_vs_single_rounding"] or 0) + bad
                st["rounding_codes"] += single.size
    for st in stats:
        st["exact_fraction"] = round(1 - st["mismatches"] / st["codes"], 6)
    return stats


def _single_rounding_of(im, op, xq: np.ndarray) -> np.ndarray:
    zx = int(im.values[op.inputs[0]]["zero_point"])
    w, bias = getattr(im, op.weight).numpy(), getattr(im, op.bias).numpy()
    if op.kind == "conv2d":
        acc = ref.conv2d_acc(xq, zx, w, bias, op.stride, op.padding, op.dilation,
                             op.groups)
    else:
        acc = ref.linear_acc(xq, zx, w, bias)
    shape = [1, -1] + [1] * (acc.ndim - 2)
    m0 = getattr(im, op.multiplier).numpy().reshape(shape if getattr(im, op.multiplier).numel() > 1 else [])
    sh = getattr(im, op.shift).numpy().reshape(m0.shape)
    return _single_rounding(acc, m0, sh, int(im.values[op.output]["zero_point"]), op.qmin, op.qmax)


@torch.inference_mode()
def packing(name: str, fp32_model, ims: dict, x: torch.Tensor) -> list[dict]:
    """Packed sizes (zstd level 19, ``compactnn.pack.save``) and bit-identical reload of each integer model."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_bytes = cn.pack.save(fp32_model, Path(tmp) / "fp32.cnz")["file_bytes"]
        fp32_raw = sum(p.numel() * 4 for p in fp32_model.state_dict().values() if p.dtype == torch.float32)
        rows.append(dict(model=name, variant="fp32", file_bytes=fp32_bytes, tensor_bytes=fp32_raw, ratio=1.0))
        for label, im in ims.items():
            path = Path(tmp) / f"{label.replace(' ', '_')}.cnz"
            size = cn.pack.save(im, path)["file_bytes"]
            back = cn.pack.load(path)
            bad = 0
            for a, b in _batches(len(x), 1000):
                q = im.quantize_input(x[a:b])
                bad += int((im.run_int(q, engine="fast") != back.run_int(q, engine="fast")).sum())
            same = all(torch.equal(t, back.get_buffer(k)) for k, t in im.named_buffers())
            raw = sum(t.numel() * t.element_size() for t in im.buffers())
            codes = np.concatenate([t.numpy().ravel() for t in im.buffers() if t.dtype == torch.int8])
            freq = np.bincount(codes.astype(np.int64) + 128, minlength=256) / codes.size
            rows.append(dict(model=name, variant=label, file_bytes=size, tensor_bytes=raw,
                             ratio=round(fp32_bytes / size, 3), at_least_3_8x="yes" if fp32_bytes >= 3.8 * size else "no",
                             weight_bits=round(float(-(freq[freq > 0] * np.log2(freq[freq > 0])).sum()), 2),
                             reload_mismatches=bad,
                             buffers_identical="yes" if same else "no",
                             images=len(x)))
    return rows
