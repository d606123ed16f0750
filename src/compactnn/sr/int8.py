"""Post-training integer-only (int8) IDN: calibration on training patches and conversion to an integer program.

The program (:class:`compactnn.models.idn.IntegerIDN`, ops of :mod:`compactnn.quantize.intonly.ir`) is IDN's graph
written out op by op (IDN's ``forward`` slices by ``x.shape`` and caches bicubic matrices, so it is not traced; this
module is its conversion hook):

- every conv (3x3, grouped 3x3, the 1x1 ``down``) is a ``conv2d`` with the LeakyReLU(0.05) fused into its
  requantization (``activation="leaky_relu"``: ``M`` on the positive side, ``0.05·M`` on the negative side, chosen
  by the sign of the int32 accumulator);
- the channel slice of each block (first 16 / last 48 channels of ``conv3``) is not an op: ``conv3`` is split into
  two convs of 16 and 48 output channels (the same weights), each with its own output scale. Float-identical, and
  the 16 kept channels get a scale of their own instead of sharing the 64 channels' range;
- the concat of the block input and the 16 kept channels (different scales) is ``concat`` into one calibrated
  scale; the add of the 80-channel tensors is TFLite's ``add``;
- the 17x17 stride-s transposed conv is ``conv_transpose2d`` with ``padding = 9 − s`` at the top/left and
  ``17 − s − (9 − s) = 8`` at the bottom/right (our float model's padding and cut to ``h·s``);
- the input: by default 16-bit, two uint8 planes (:meth:`compactnn.models.idn.IntegerIDN.split`: the uint8 code
  of the Y value at 1/255 and the remaining fraction of a code at 1/255 of a code); the protocol's low-resolution
  image is MATLAB's float ``imresize`` output, and rounding it to uint8 costs even the float IDN 0.09 dB on Set5 x2
  (0.04 dB at x4), nearly all through the bicubic branch. The network branch reads the first plane only (the first
  conv has zero weights on the second); the output layer's bicubic reads both;
- the bicubic branch and the final add: by default one op, ``conv_transpose2d_resize_add`` (the transposed conv's
  and the integer bicubic's int32 accumulators rescaled to 1/256 of an output code, summed, rounded once to scale
  1/255, zero point 0: the protocol's uint8 image); measured on Set5 x2 with the official weights, rounding the
  residual and the bicubic image to uint8 first (``fused=False``: ``conv_transpose2d``, ``resize_bicubic``,
  ``add``) costs about 0.1 dB more.

Weights: symmetric int8 per output channel (per tensor for the transposed conv, which has one output channel);
biases int32 at ``S_in·S_w``. Activations: asymmetric uint8 from the calibrated ranges (min/max, or the mean of
per-batch percentiles), the input at 1/255 with zero point 0 (uint8 Y codes exactly), the output at 1/255.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, ModelError

__all__ = ["calibration_patches", "convert_idn", "float_values"]

ONE = 1.0 / 255.0
#: the fine input plane: codes of (255·x − coarse code) · FINE + FINE_ZERO (:meth:`IntegerIDN.split`)
FINE = 255.0
FINE_ZERO = 128


def calibration_patches(scale: int, count: int = 64, patch: int = 48, seed: int = 0,
                        data: str | os.PathLike | None = None, files=None) -> torch.Tensor:
    """``count`` LR training patches (N, 1, patch, patch) from :class:`compactnn.sr.train.PatchSampler` over the
    training images (B100 and scikit-image's photos, :func:`compactnn.sr.train.default_sources`), rotation/flip
    augmented; Set5/Set14 are never used."""
    from .train import PatchSampler, default_sources

    files = default_sources(data) if files is None else files
    if not files:
        raise ConfigError("no training images for calibration (B100 in the shared data or scikit-image photos)")
    sampler = PatchSampler(list(files), scale, patch)
    lr, _ = sampler.sample(np.random.default_rng(seed), count, patch)
    return lr


def _leaky(t: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(t, 0.05)


def _conv(conv, x, w=None, b=None):
    w = conv.weight if w is None else w
    b = conv.bias if b is None else b
    return F.conv2d(x, w, b, conv.stride, conv.padding, conv.dilation, conv.groups)


@torch.no_grad()
def float_values(model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every value of the integer program's graph, computed in float by the IDN model (for calibration)."""
    v: dict[str, torch.Tensor] = {"x": x}
    h = v["c1"] = _leaky(_conv(model.conv1, x))
    h = v["c2"] = _leaky(_conv(model.conv2, h))
    for i, blk in enumerate(model.blocks):
        p = f"b{i}_"
        a = v[p + "a1"] = _leaky(_conv(blk.conv1, h))
        a = v[p + "a2"] = _leaky(_conv(blk.conv2, a))
        d = blk.distill
        keep = v[p + "keep"] = _leaky(_conv(blk.conv3, a, blk.conv3.weight[:d], blk.conv3.bias[:d]))
        rest = v[p + "rest"] = _leaky(_conv(blk.conv3, a, blk.conv3.weight[d:], blk.conv3.bias[d:]))
        z = v[p + "a4"] = _leaky(_conv(blk.conv4, rest))
        z = v[p + "a5"] = _leaky(_conv(blk.conv5, z))
        z = v[p + "a6"] = _leaky(_conv(blk.conv6, z))
        cat = v[p + "cat"] = torch.cat([h, keep], dim=1)
        s = v[p + "sum"] = cat + z
        h = v[p + "out"] = _leaky(_conv(blk.down, s))
    hh, ww = x.shape[-2:]
    v["res"] = model.upsample(h)[..., : hh * model.scale, : ww * model.scale]
    v["bic"] = model.bicubic(x)
    v["y"] = v["res"] + v["bic"]
    return v


def _observe(model, batches, method: str, percentile: float) -> dict[str, tuple[float, float]]:
    lo: dict[str, list] = {}
    hi: dict[str, list] = {}
    for x in batches:
        for k, t in float_values(model, x).items():
            t = t.detach().double().flatten()
            if method == "minmax":
                a, b = float(t.min()), float(t.max())
            else:
                q = torch.quantile(t[torch.randperm(t.numel())[:1 << 22]] if t.numel() > 1 << 22 else t,
                                   torch.tensor([1 - percentile / 100, percentile / 100], dtype=torch.float64))
                a, b = float(q[0]), float(q[1])
            lo.setdefault(k, []).append(a)
            hi.setdefault(k, []).append(b)
    if method == "minmax":
        return {k: (min(lo[k]), max(hi[k])) for k in lo}
    return {k: (float(np.mean(lo[k])), float(np.mean(hi[k]))) for k in lo}


@torch.no_grad()
def convert_idn(model, calibration: torch.Tensor, method: str = "minmax", percentile: float = 99.99,
                batch: int = 16, engine: str = "fast", weight_bits: int = 14, mid_shift: int = 6,
                nominal: tuple[int, int] = (32, 32), fused: bool = True, frac_bits: int = 8, planes: int = 2):
    """Post-training int8 IDN from a float IDN and calibration LR patches.

    Args:
        model: a float :class:`compactnn.models.idn.IDN` (LeakyReLU slope 0.05 everywhere, as published).
        calibration: float LR patches (N, 1, h, w) in [0, 1] (:func:`calibration_patches`).
        method: ``"minmax"`` or ``"percentile"`` (mean over batches of the ``100 − p`` / ``p`` percentiles).
        percentile: p for ``"percentile"``.
        batch: patches per calibration batch.
        engine: the integer model's default engine.
        weight_bits: fractional bits of the bicubic weights (``resize_bicubic``).
        mid_shift: the bicubic's right shift between the row and column passes.
        nominal: the (h, w) the stored program is checked for (any size runs).
        fused: the output layer as one ``conv_transpose2d_resize_add`` (the transposed conv and the bicubic summed
            at ``2^-frac_bits`` codes, rounded once); False: ``conv_transpose2d`` and ``resize_bicubic`` each to a
            uint8 image, then ``add`` (about 0.1 dB lower on Set5 x2: two extra roundings of half a code).
        frac_bits: fractional bits of the fused sum.
        planes: 2 (with ``fused``): the input is 16-bit, two uint8 planes (the code and its fraction,
            :meth:`compactnn.models.idn.IntegerIDN.split`); the network branch reads the first, the bicubic branch
            both. 1: one uint8 plane (the protocol's float LR image rounded to 1/255, which by itself costs a float
            IDN 0.09 dB on Set5 x2).

    Returns:
        :class:`compactnn.models.idn.IntegerIDN`.
    """
    from ..models.idn import IDN, IntegerIDN
    from ..quantize.intonly import ir
    from ..quantize.intonly.fixedpoint import quantize_multiplier
    from ..quantize.intonly.model import IntegerModel
    from ..quantize.intonly.qparams import (add_multipliers, asymmetric_uint8, bias_int32, output_multiplier,
                                            quantize, symmetric_int8)

    if not isinstance(model, IDN):
        raise ModelError(f"convert_idn needs a float IDN, got {type(model).__name__}")
    if method not in ("minmax", "percentile"):
        raise ConfigError(f"calibration must be 'minmax' or 'percentile', got {method!r}")
    for m in model.modules():
        if isinstance(m, torch.nn.LeakyReLU) and m.negative_slope != 0.05:
            raise ModelError(f"convert_idn expects LeakyReLU(0.05), got slope {m.negative_slope}")
    if not isinstance(calibration, torch.Tensor) or calibration.dim() != 4 or calibration.shape[1] != 1 or (
            calibration.shape[0] == 0):
        raise ConfigError("calibration must be a non-empty (N, 1, h, w) float tensor of LR patches")
    model = model.eval().float()
    ranges = _observe(model, calibration.float().split(batch), method, percentile)

    values: dict[str, dict] = {}
    tensors: dict[str, torch.Tensor] = {}
    ops: list = []

    def qv(name: str, scale: float | None = None, zp: int = 0) -> str:
        if scale is None:
            scale, zp = asymmetric_uint8(*ranges[name])
        values[name] = {"scale": float(scale), "zero_point": int(zp), "dtype": "uint8"}
        return name

    def i32(a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(np.atleast_1d(np.asarray(a)).astype(np.int32)))

    def conv(src: str, out: str, c, w=None, b=None, leaky: bool = True) -> str:
        w = (c.weight if w is None else w).detach().double().numpy()
        b = (c.bias if b is None else b).detach().double().numpy()
        s_in = values[src]["scale"]
        qv(out)
        s_out = values[out]["scale"]
        s_w, _ = symmetric_int8(w, per_channel=True, axis=0)
        k = f"{out}_"
        tensors[k + "w"] = torch.from_numpy(quantize(w, s_w, 0, -127, 127, axis=0).astype(np.int8))
        tensors[k + "b"] = torch.from_numpy(bias_int32(b, s_in, s_w))
        m0, sh = output_multiplier(s_in, s_w, s_out)
        tensors[k + "m"], tensors[k + "s"] = i32(m0), i32(sh)
        extra = {}
        if leaky:
            mn, sn = output_multiplier(s_in, 0.05 * s_w, s_out)
            tensors[k + "mn"], tensors[k + "sn"] = i32(mn), i32(sn)
            extra = dict(activation="leaky_relu", multiplier_neg=k + "mn", shift_neg=k + "sn")
        ops.append(ir.Conv2d(inputs=(src,), output=out, weight=k + "w", bias=k + "b", multiplier=k + "m",
                             shift=k + "s", stride=tuple(c.stride), padding=tuple(c.padding),
                             dilation=tuple(c.dilation), groups=int(c.groups), name=out, **extra))
        return out

    def add(a: str, b: str, out: str, scale=None, zp=0) -> str:
        qv(out, scale, zp)
        m = add_multipliers(values[a]["scale"], values[b]["scale"], values[out]["scale"])
        ops.append(ir.Add(inputs=(a, b), output=out, multiplier_a=m["M0_1"], shift_a=m["shift_1"],
                          multiplier_b=m["M0_2"], shift_b=m["shift_2"], multiplier_out=m["M0_y"],
                          shift_out=m["shift_y"], left_shift=m["left_shift"], name=out))
        return out

    planes = planes if fused else 1
    x = qv("x", ONE, 0)
    w1, b1 = model.conv1.weight, model.conv1.bias
    if planes == 2:  # the fine plane does not enter the network branch: zero weights
        w1 = torch.cat([w1, torch.zeros_like(w1)], dim=1)
    h = conv(x, "c1", model.conv1, w1, b1)
    h = conv(h, "c2", model.conv2)
    for i, blk in enumerate(model.blocks):
        p, d = f"b{i}_", blk.distill
        a = conv(h, p + "a1", blk.conv1)
        a = conv(a, p + "a2", blk.conv2)
        keep = conv(a, p + "keep", blk.conv3, blk.conv3.weight[:d], blk.conv3.bias[:d])
        rest = conv(a, p + "rest", blk.conv3, blk.conv3.weight[d:], blk.conv3.bias[d:])
        z = conv(rest, p + "a4", blk.conv4)
        z = conv(z, p + "a5", blk.conv5)
        z = conv(z, p + "a6", blk.conv6)
        cat = qv(p + "cat")
        ops.append(ir.Concat(inputs=(h, keep), output=cat, name=cat, multipliers=tuple(
            None if (values[v]["scale"], values[v]["zero_point"]) == (values[cat]["scale"], values[cat]["zero_point"])
            else quantize_multiplier(values[v]["scale"] / values[cat]["scale"]) for v in (h, keep))))
        s = add(cat, z, p + "sum")
        h = conv(s, p + "out", blk.down)
    # the transposed conv: one output channel, per-tensor weight scale
    up = model.upsample
    s_in = values[h]["scale"]
    w = up.weight.detach().double().numpy()
    s_w, _ = symmetric_int8(w)
    tensors["res_w"] = torch.from_numpy(quantize(w, s_w, 0, -127, 127).astype(np.int8))
    tensors["res_b"] = torch.from_numpy(bias_int32(up.bias.detach().double().numpy(), s_in, s_w))
    k, st, pad = up.kernel_size[0], up.stride[0], up.padding[0]
    geo = dict(weight="res_w", bias="res_b", multiplier="res_m", shift="res_s", stride=(st, st), padding=(pad, pad),
               padding_end=(k - st - pad, k - st - pad))
    gain = 2.0 ** (2 * weight_bits - mid_shift)
    if fused:  # one output layer: transposed conv + bicubic, rounded once (ir.ConvTransposeResizeAdd)
        y = qv("y", ONE, 0)
        m0, sh = output_multiplier(s_in, s_w * 2.0 ** frac_bits, ONE)
        tensors["res_m"], tensors["res_s"] = i32(m0), i32(sh)
        mb, sb = quantize_multiplier(values[x]["scale"] * 2.0 ** frac_bits / (ONE * gain))
        mf, sf = quantize_multiplier(values[x]["scale"] / FINE * 2.0 ** frac_bits / (ONE * gain))
        ops.append(ir.ConvTransposeResizeAdd(inputs=(h, x), output=y, scale=model.scale, resize_multiplier=mb,
                                             resize_shift=sb, weight_bits=weight_bits, mid_shift=mid_shift,
                                             frac_bits=frac_bits, name="upsample+bicubic", planes=planes,
                                             fine_multiplier=mf if planes == 2 else 0,
                                             fine_shift=sf if planes == 2 else 0,
                                             fine_zero_point=FINE_ZERO if planes == 2 else 0, **geo))
    else:  # uint8 residual and bicubic images, then the TFLite add
        res = qv("res")
        m0, sh = output_multiplier(s_in, s_w, values[res]["scale"])
        tensors["res_m"], tensors["res_s"] = i32(m0), i32(sh)
        ops.append(ir.ConvTranspose2d(inputs=(h,), output=res, name="upsample", **geo))
        bic = qv("bic")
        m0, sh = quantize_multiplier(values[x]["scale"] / (values[bic]["scale"] * gain))
        ops.append(ir.ResizeBicubic(inputs=(x,), output=bic, scale=model.scale, multiplier=m0, shift=sh,
                                    weight_bits=weight_bits, mid_shift=mid_shift, name="bicubic"))
        y = add(res, bic, "y", ONE, 0)
    core = IntegerModel((planes, *nominal), {"value": x, **{k: values[x][k] for k in ("scale", "zero_point")}},
                        {"value": y, **{k: values[y][k] for k in ("scale", "zero_point")}}, values, ops, tensors,
                        engine=engine)
    return IntegerIDN(model.scale, core, engine=engine, planes=planes)
