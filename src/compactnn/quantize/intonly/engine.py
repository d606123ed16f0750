"""The fast engine of :class:`.model.IntegerModel`: native C kernels or torch integer kernels, bit-identical to
:mod:`.reference`.

When the C kernels of :mod:`.native` build on this machine (system C compiler, cached; ``COMPACTNN_NATIVE=off``
disables them), a run is one C call per op on uint8 NHWC codes (:mod:`.native.program`: direct convolution with
AVX-512 VNNI and a fused requantizer, the residual Add fused into the preceding conv's epilogue (its reference
table checks the fast form), conv + 2x2 max pool fused before requantization), and
:meth:`FastEngine.forward_float` also does the input quantize / output dequantize natively. Otherwise (no compiler,
an op the native program lacks, or batch 0) the torch path below runs.

How the torch path stays exact and fast:

- **Layout.** Activations live as int8 ``q − 128`` (so ``torch._int_mm``, which needs int8 × int8 → int32, takes
  them directly) in channels-last layout ``(N, H, W, C)``, so a conv's im2col matrix is one strided copy and its
  GEMM output ``(N·Ho·Wo, O)`` is already the next layer's input.
- **Zero points.** ``Σ (q − Z)·w = Σ (q − 128)·w + (128 − Z)·Σ w``: the second term is folded with the int32 bias
  into one int64 constant per output channel, computed once when the engine is built. Padding uses ``Z − 128``.
- **Requantization.** TFLite's ``RDBPOT(SRDHM(acc·2^left, M0), right)`` in int64, rewritten to few ops:
  ``SRDHM(a, M0) = (a·M0 + 2^30) >> 31`` (floor; exact since ``M0 >= 0`` so the INT32_MIN case cannot occur) and
  ``RDBPOT(y, e) = (y + 2^(e−1) − [y < 0]) >> e`` for ``e > 0``, merged into one shift
  ``(a·M0 + 2^30 + 2^(e−1)·2^31 − 2^31·[a·M0 + 2^30 < 0] + (Z_out − 128)·2^(31+e)) >> (31 + e)``. The ``[y < 0]``
  term is skipped when the clamp makes it irrelevant (``qmin >= Z_out``, fused ReLU). The bias is folded in as
  ``acc·M0 + bias·M0`` when that is exact in int64 (checked when the engine is built). This requantizer is tested
  equal to :func:`.fixedpoint.requantize` (the definition) on random, tie and int32-limit accumulators; the torch
  versions in :mod:`.fixedpoint` validate their inputs (a min/max reduction and a host sync per call), which costs
  more than the requantization itself here.
- **Max pool after conv.** Requantization is non-decreasing in the accumulator, so ``maxpool(requant(acc)) ==
  requant(maxpool(acc))``: a conv whose only consumer is a max pool is pooled before requantization (4× fewer
  elements for 2×2 pools). Per-value runs (``all_values=True``) do not fuse.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from compactnn.errors import ModelError

from . import ir
from .fixedpoint import INT32_MAX, INT32_MIN
from .reduce import check_input_codes

__all__ = ["FastEngine", "KERNELS", "Requant", "mbqm_fast"]

_I64 = torch.int64
#: The torch engine's kernel table (see :mod:`.ir`): ``kernel(engine, model, op, zp) -> fn(*inputs) -> output``
#: on int8 ``q − 128`` values in NHWC (or (N, F)) layout.
KERNELS = ir.Kernels("fast")


def mbqm_fast(a: Tensor, m0: int, shift: int) -> Tensor:
    """``MultiplyByQuantizedMultiplier`` (TFLite double rounding) on an int64 tensor of int32 values, in place.

    Args:
        a: int64 tensor (overwritten).
        m0: multiplier in [0, 2^31).
        shift: shift, positive = left.
    """
    left, right = min(max(shift, 0), 31), max(-shift, 0)
    if left:
        a.bitwise_left_shift_(left).clamp_(INT32_MIN, INT32_MAX)
    a.mul_(m0)
    if right:
        t = (a + (1 << 30)).bitwise_right_shift_(63).bitwise_and_(-(1 << 31))
        a.add_(t)
        a.add_((1 << 30) + ((1 << (right - 1)) << 31))
    else:
        a.add_(1 << 30)
    return a.bitwise_right_shift_(31 + right)


class Requant:
    """Requantize accumulators to int8 ``q − 128``: ``clamp(MBQM(acc + bias) + Z_out, qmin, qmax) − 128``.

    Args:
        m0: multipliers, scalar or per output channel (the last axis).
        shift: shifts, same shape (positive = left).
        z_out: output zero point.
        qmin: lowest output code.
        qmax: highest output code.
        bias: int64 per-channel constant added to the accumulator first (or None); when there is no left shift it
            is folded into the multiply as ``acc·M0 + bias·M0`` (exact in int64, checked here).
    """

    def __init__(self, m0, shift, z_out: int, qmin: int, qmax: int, bias: Tensor | None = None) -> None:
        m0 = np.asarray(m0, dtype=np.int64).reshape(-1)
        sh = np.asarray(shift, dtype=np.int64).reshape(-1)
        if m0.min(initial=0) < 0:
            raise ModelError("requantization multipliers must be >= 0")
        left, right = np.clip(sh, 0, 31), np.maximum(-sh, 0)
        scalar = m0.size == 1

        def const(v):
            return int(v[0]) if scalar else torch.from_numpy(np.ascontiguousarray(v))

        self.left = const(left) if left.any() else None
        self.m0 = const(m0)
        self.m0_t = torch.from_numpy(m0.copy())  # 1-D int64: int32 acc · m0_t promotes to int64
        half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
        total = 31 + right
        self.fold_zp = bool(right.max() <= 23)
        k2 = half << 31
        if self.fold_zp:
            k2 = k2 + np.left_shift(np.int64(z_out - 128), total)
        self.neg = bool((right > 0).any()) and qmin < z_out
        self.kc = const(np.where(right > 0, -(1 << 31), 0))
        self.bias = None if bias is None else bias.to(_I64)
        k1 = np.full(m0.shape, 1 << 30, dtype=object)
        self.fold_bias = False
        if bias is not None and self.left is None:
            bm = [int(b) * int(m) + (1 << 30) for b, m in zip(bias.tolist(), np.broadcast_to(m0, bias.shape))]
            if all(abs(v) + (1 << 62) < (1 << 63) for v in bm):
                k1, self.fold_bias = np.array(bm, dtype=np.int64), True
        k1 = np.asarray(k1, dtype=np.int64)
        if self.neg:
            self.k1, self.k2 = torch.from_numpy(k1), const(k2)
        else:
            self.k1, self.k2 = torch.from_numpy(k1 + k2), 0
        self.total = const(total)
        self.zp = int(z_out) - 128
        self.lo, self.hi = int(qmin) - 128, int(qmax) - 128

    def __call__(self, acc: Tensor) -> Tensor:
        """``acc``: int32 (or int64, then overwritten) accumulators; returns int8."""
        if self.fold_bias:
            u = torch.mul(acc, self.m0_t)
        else:
            u = acc.to(_I64) if self.bias is None else torch.add(acc, self.bias)
            if self.left is not None:
                u.bitwise_left_shift_(self.left).clamp_(INT32_MIN, INT32_MAX)
            u.mul_(self.m0)
        u.add_(self.k1)
        if self.neg:
            t = u.bitwise_right_shift(63).bitwise_and_(self.kc)
            u.add_(t).add_(self.k2)
        u.bitwise_right_shift_(self.total)
        if not self.fold_zp:
            u.add_(self.zp)
        return u.clamp_(self.lo, self.hi).to(torch.int8)


def _windows(x: Tensor, k, s, d=(1, 1)) -> Tensor:
    """Sliding windows of an NHWC tensor: ``(N, Ho, Wo, kh, kw, C)`` view."""
    n, h, w, c = x.shape
    sn, sh_, sw_, sc = x.stride()
    ho, wo = (h - d[0] * (k[0] - 1) - 1) // s[0] + 1, (w - d[1] * (k[1] - 1) - 1) // s[1] + 1
    return x.as_strided((n, ho, wo, k[0], k[1], c), (sn, s[0] * sh_, s[1] * sw_, d[0] * sh_, d[1] * sw_, sc))


def _pad(x: Tensor, p, fill: int) -> Tensor:
    if p == (0, 0):
        return x
    return torch.nn.functional.pad(x, (0, 0, p[1], p[1], p[0], p[0]), value=fill)  # integer constant_pad_nd


def _max_pool(x: Tensor, k, s, p, fill: int) -> Tensor:
    """Max pool of an NHWC tensor, separably: maxima of strided slices along W, then along H (``kh + kw − 2``
    elementwise ops; ``amax`` over window axes is far slower for integer tensors)."""
    x = _pad(x, p, fill)
    _, h, w, _ = x.shape
    ho, wo = (h - k[0]) // s[0] + 1, (w - k[1]) // s[1] + 1
    t = x[:, :, 0:(wo - 1) * s[1] + 1:s[1]]
    if k[1] > 1:
        t = torch.maximum(t, x[:, :, 1:(wo - 1) * s[1] + 2:s[1]])
        for j in range(2, k[1]):
            torch.maximum(t, x[:, :, j:(wo - 1) * s[1] + 1 + j:s[1]], out=t)
    r = t[:, 0:(ho - 1) * s[0] + 1:s[0]]
    if k[0] > 1:
        r = torch.maximum(r, t[:, 1:(ho - 1) * s[0] + 2:s[0]])
        for i in range(2, k[0]):
            torch.maximum(r, t[:, i:(ho - 1) * s[0] + 1 + i:s[0]], out=r)
    return r.contiguous()


class _Conv:
    """im2col + ``torch._int_mm`` (groups == 1), per-group GEMMs, or a depthwise multiply-add path."""

    def __init__(self, model, op: ir.Conv2d, z_in: int, z_out: int) -> None:
        w = getattr(model, op.weight)
        self.out_ch, self.cg, kh, kw = w.shape
        self.k, self.s = (kh, kw), op.stride
        self.p, self.d, self.groups = op.padding, op.dilation, op.groups
        self.fill = z_in - 128
        wl = w.to(_I64)
        self.bias = getattr(model, op.bias).to(_I64) + (128 - z_in) * wl.sum(dim=(1, 2, 3))
        self.depthwise = self.groups > 1 and self.cg == 1 and self.out_ch == self.groups
        og = self.out_ch // self.groups
        wt = w.permute(0, 2, 3, 1)  # (O, kh, kw, C/g): the im2col column order
        if self.depthwise:
            self.wd = wt.reshape(self.out_ch, kh, kw).permute(1, 2, 0).to(torch.int32).contiguous()  # (kh, kw, C)
        else:
            self.wg = [wt[g * og:(g + 1) * og].reshape(og, -1).contiguous() for g in range(self.groups)]
        self.leaky = getattr(op, "activation", "none") == "leaky_relu"
        if self.leaky:  # both sides without the bias (added once in finish, where its sign picks the side)
            self.rq_pos = Requant(getattr(model, op.multiplier).numpy(), getattr(model, op.shift).numpy(), z_out,
                                  op.qmin, op.qmax)
            self.rq_neg = Requant(getattr(model, op.multiplier_neg).numpy(), getattr(model, op.shift_neg).numpy(),
                                  z_out, op.qmin, op.qmax)
        else:
            self.requant = Requant(getattr(model, op.multiplier).numpy(), getattr(model, op.shift).numpy(),
                                   z_out, op.qmin, op.qmax, bias=self.bias)

    def acc(self, x: Tensor) -> Tensor:
        """int32 ``Σ (q − 128)·w`` as ``(N, Ho, Wo, O)`` (the bias and zero-point term are added later)."""
        x = _pad(x, self.p, self.fill)
        win = _windows(x, self.k, self.s, self.d)
        n, ho, wo = win.shape[:3]
        if self.depthwise:
            acc = torch.zeros((n, ho, wo, self.out_ch), dtype=torch.int32)
            for i in range(self.k[0]):
                for j in range(self.k[1]):
                    acc += win[:, :, :, i, j].to(torch.int32) * self.wd[i, j]
            return acc
        if self.groups == 1 and win.shape[-1] < 8 and n * ho * wo >= 4096:  # few channels, many rows: build cols^T row by row (long contiguous runs)
            kh, kw, c = win.shape[3:]
            cols_t = torch.empty((kh, kw, c, n, ho, wo), dtype=torch.int8)
            for i in range(kh):
                for j in range(kw):
                    cols_t[i, j] = win[:, :, :, i, j].permute(3, 0, 1, 2)
            return torch._int_mm(cols_t.view(kh * kw * c, -1).t(), self.wg[0].t()).view(n, ho, wo, self.out_ch)
        if self.groups == 1:
            cols = win.reshape(n * ho * wo, -1)
            return torch._int_mm(cols, self.wg[0].t()).view(n, ho, wo, self.out_ch)
        parts = []
        for g in range(self.groups):
            cols = win[..., g * self.cg:(g + 1) * self.cg].reshape(n * ho * wo, -1)
            parts.append(torch._int_mm(cols, self.wg[g].t()))
        return torch.cat(parts, dim=1).view(n, ho, wo, self.out_ch)

    def finish(self, acc: Tensor) -> Tensor:
        if self.leaky:  # reference.leaky_requantize: the side is chosen by the sign of acc + bias
            v = torch.add(acc, self.bias)
            neg = v < 0
            return torch.where(neg, self.rq_neg(v.clone()), self.rq_pos(v))
        return self.requant(acc)


class FastEngine:
    """Compiled fast program of an :class:`.model.IntegerModel` (constants precomputed once).

    When the native kernels build (:mod:`.native`), runs are one C call per op (:mod:`.native.program`); else, or
    with ``native="off"``, the torch ops below.

    Args:
        model: the integer model.
        native: ``"auto"``, ``"vnni"``, ``"avx2"``, ``"generic"`` (portable C loops) or ``"off"``; default
            ``COMPACTNN_NATIVE``.
    """

    def __init__(self, model, native: str | None = None) -> None:
        from . import native as nat
        from .native.program import NativeProgram

        ir.check_program(model, metadata=False)
        lib = nat.load(native)
        self.native = None if lib is None else NativeProgram.build(model, lib)
        self.input_value = model.input["value"]
        self.output_value = model.output["value"]
        self.input_qmax = int(model.input.get("qmax", 255))  # 127 with 7-bit activations
        zp = {k: int(v["zero_point"]) for k, v in model.values.items()}
        consumers: dict[str, int] = {}
        for op in model.ops:
            for name in op.inputs:
                consumers[name] = consumers.get(name, 0) + 1
        self.steps = []  # (inputs, output, fn)
        for op in model.ops:
            self.steps.append((op.inputs, op.output, KERNELS.get(op)(self, model, op, zp)))
        # fused program: conv -> max_pool2d (no padding) when the conv output has no other use
        self.fused = []
        i, n = 0, len(model.ops)
        while i < n:
            op = model.ops[i]
            nxt = model.ops[i + 1] if i + 1 < n else None
            if (isinstance(op, ir.Conv2d) and isinstance(nxt, ir.MaxPool2d) and nxt.inputs == (op.output,)
                    and consumers.get(op.output) == 1 and op.output != self.output_value
                    and nxt.padding == (0, 0)):
                conv = self.steps[i][2].__self__.conv
                k, s = nxt.kernel, nxt.stride

                def fn(x, conv=conv, k=k, s=s):
                    return conv.finish(_max_pool(conv.acc(x), k, s, (0, 0), INT32_MIN))

                self.fused.append((op.inputs, nxt.output, fn))
                i += 2
                continue
            self.fused.append(self.steps[i])
            i += 1
        self.shapes: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------------------- run
    def forward_float(self, model, x: Tensor) -> Tensor | None:
        """``model.forward(x)`` in three native calls (quantize, program, dequantize), bit-identical to
        ``model.dequantize_output(model.run_int(model.quantize_input(x)))``; None when the native program is off
        or ``x`` is not a CPU float32 tensor of the model's input shape (the caller then takes the checked path,
        which also raises the errors)."""
        nat = self.native
        if (nat is None or not isinstance(x, Tensor) or x.dtype != torch.float32 or x.device.type != "cpu"
                or x.dim() != len(model.input_shape) + 1 or tuple(x.shape[1:]) != model.input_shape
                or x.shape[0] == 0):
            return None
        return nat.run_float(x.detach().contiguous(), float(model.input["scale"]), int(model.input["zero_point"]),
                             float(model.output["scale"]), int(model.output["zero_point"]))

    @staticmethod
    def _to_internal(q: Tensor) -> Tensor:
        x = (q ^ 128).view(torch.int8)
        return x.permute(0, 2, 3, 1).contiguous() if x.dim() == 4 else x.contiguous()

    @staticmethod
    def _to_codes(x: Tensor) -> Tensor:
        q = x.view(torch.uint8) ^ 128
        return q.permute(0, 3, 1, 2).contiguous() if q.dim() == 4 else q

    def run(self, q: Tensor, all_values: bool = False):
        """Run on uint8 codes (PyTorch layout); the uint8 output, or every value by name if ``all_values``."""
        check_input_codes(q, self.input_qmax)
        if self.native is not None and q.shape[0] > 0:
            return self.native.run(q, all_values)
        env = {self.input_value: self._to_internal(q)}
        for ins, out, fn in (self.steps if all_values else self.fused):
            env[out] = fn(*[env[i] for i in ins])
        if all_values:
            return {k: self._to_codes(v) for k, v in env.items()}
        return self._to_codes(env[self.output_value])


class _ConvStep:
    def __init__(self, conv: _Conv) -> None:
        self.conv = conv

    def __call__(self, x: Tensor) -> Tensor:
        return self.conv.finish(self.conv.acc(x))


# ------------------------------------------------------------------------------------------------------ kernels


@KERNELS.register(ir.Conv2d)
def _conv2d(engine, model, op: ir.Conv2d, zp: dict):
    return _ConvStep(_Conv(model, op, zp[op.inputs[0]], zp[op.output])).__call__


@KERNELS.register(ir.Linear)
def _linear(engine, model, op: ir.Linear, zp: dict):
    w = getattr(model, op.weight)
    bias = getattr(model, op.bias).to(_I64) + (128 - zp[op.inputs[0]]) * w.to(_I64).sum(dim=1)
    rq = Requant(getattr(model, op.multiplier).numpy(), getattr(model, op.shift).numpy(), zp[op.output], op.qmin,
                 op.qmax, bias=bias)
    wtt = w.contiguous().t()
    o = w.shape[0]

    def linear(x):
        if x.dim() == 2:
            return rq(torch._int_mm(x, wtt))
        return rq(torch._int_mm(x.reshape(-1, x.shape[-1]), wtt)).view(*x.shape[:-1], o)  # (N, T, F): row by row

    return linear


@KERNELS.register(ir.MaxPool2d)
def _max_pool2d(engine, model, op: ir.MaxPool2d, zp: dict):
    k, s, p = op.kernel, op.stride, op.padding
    return lambda x: _max_pool(x, k, s, p, -128)


def _avg(k, s):
    def avg(x):
        if k is None:
            total, cnt = x.sum(dim=(1, 2), keepdim=True, dtype=torch.int32), x.shape[1] * x.shape[2]
        else:
            total, cnt = _windows(x, k, s).sum(dim=(3, 4), dtype=torch.int32), k[0] * k[1]
        return torch.div(total.add_(cnt // 2), cnt, rounding_mode="floor").to(torch.int8)

    return avg


@KERNELS.register(ir.AvgPool2d)
def _avg_pool2d(engine, model, op: ir.AvgPool2d, zp: dict):
    return _avg(op.kernel, op.stride)


@KERNELS.register(ir.GlobalAvgPool)
def _global_avg_pool(engine, model, op: ir.GlobalAvgPool, zp: dict):
    return _avg(None, None)


@KERNELS.register(ir.Flatten)
def _flatten(engine, model, op: ir.Flatten, zp: dict):
    return lambda x: x.permute(0, 3, 1, 2).reshape(x.shape[0], -1) if x.dim() == 4 else x.reshape(x.shape[0], -1)


@KERNELS.register(ir.Add)
def _add(engine, model, op: ir.Add, zp: dict):
    ins, out = op.inputs, op.output
    za, zb = zp[ins[0]] - 128, zp[ins[1]] - 128
    ls = op.left_shift
    rq = Requant(op.multiplier_out, op.shift_out, zp[out], op.qmin, op.qmax)

    def add(a, b):
        xa = mbqm_fast((a.to(_I64) - za).bitwise_left_shift_(ls), op.multiplier_a, op.shift_a)
        xb = mbqm_fast((b.to(_I64) - zb).bitwise_left_shift_(ls), op.multiplier_b, op.shift_b)
        return rq(xa.add_(xb))

    return add


@KERNELS.register(ir.Concat)
def _concat(engine, model, op: ir.Concat, zp: dict):
    ls, zy = op.left_shift, zp[op.output] - 128
    lo, hi = op.qmin - 128, op.qmax - 128
    parts = []
    for name, m in zip(op.inputs, op.multipliers):
        if m is None:  # pass-through: the input already has the output's scale and zero point
            parts.append(None)
            continue
        L = min(ls, int(m[1]) + 31)
        parts.append((zp[name] - 128, L, int(m[0]), int(m[1]) - L))

    def one(x, part):
        if part is None:
            return x.clamp(lo, hi)
        z, L, m0, sh = part
        return mbqm_fast((x.to(_I64) - z).bitwise_left_shift_(L), m0, sh).add_(zy).clamp_(lo, hi).to(torch.int8)

    def cat(*xs):
        return torch.cat([one(x, part) for x, part in zip(xs, parts)], dim=-1)  # NHWC channels / (N, F)

    return cat


# ------------------------------------------------------------------------------------------ data movement, lut, mul
# Values of rank 3 are NHWC here (4-D tensors); data movement works on the PyTorch layout and converts back.


def _pt(x: Tensor) -> Tensor:
    return x.permute(0, 3, 1, 2) if x.dim() == 4 else x


def _internal(y: Tensor) -> Tensor:
    return y.permute(0, 2, 3, 1).contiguous() if y.dim() == 4 else y.contiguous()


@KERNELS.register(ir.Permute)
def _permute(engine, model, op: ir.Permute, zp: dict):
    dims = op.dims
    return lambda x: _internal(_pt(x).permute(dims))


@KERNELS.register(ir.Reshape)
def _reshape(engine, model, op: ir.Reshape, zp: dict):
    shape = op.shape
    return lambda x: _internal(_pt(x).reshape(x.shape[0], *shape))


@KERNELS.register(ir.Slice)
def _slice(engine, model, op: ir.Slice, zp: dict):
    index = (slice(None),) * op.axis + (slice(op.start, op.stop, op.step),)
    return lambda x: _internal(_pt(x)[index])


@KERNELS.register(ir.Pad)
def _pad_op(engine, model, op: ir.Pad, zp: dict):
    fill, axis, widths = zp[op.inputs[0]] - 128, op.axis, [op.before, op.after]

    def pad(x):
        t = _pt(x)
        return _internal(torch.nn.functional.pad(t, [0, 0] * (t.dim() - 1 - axis) + widths, value=fill))

    return pad


@KERNELS.register(ir.Lut)
def _lut(engine, model, op: ir.Lut, zp: dict):
    table = getattr(model, op.table).to(torch.int64)
    # internal byte b = q ^ 128 (read as uint8) -> internal byte of table[q]
    t2 = ((table[torch.arange(256) ^ 128] ^ 128).to(torch.uint8)).view(torch.int8)
    return lambda x: t2[x.view(torch.uint8).to(_I64)]


@KERNELS.register(ir.Mul)
def _mul(engine, model, op: ir.Mul, zp: dict):
    za, zb = zp[op.inputs[0]] - 128, zp[op.inputs[1]] - 128
    rq = Requant(op.multiplier, op.shift, zp[op.output], op.qmin, op.qmax)
    return lambda a, b: rq(torch.mul(a.to(_I64) - za, b.to(_I64) - zb))  # same-rank values broadcast in NHWC too


@KERNELS.register(ir.Softmax)
def _softmax(engine, model, op: ir.Softmax, zp: dict):
    table, m, zy = getattr(model, op.table).to(_I64), op.multiplier, zp[op.output] - 128

    def softmax(x):
        x = x.to(_I64)
        e = table[x.amax(dim=-1, keepdim=True) - x]
        den = e.sum(dim=-1, keepdim=True).bitwise_left_shift_(16)
        y = torch.div(e.mul_(m).add_(den >> 1), den, rounding_mode="floor")  # non-negative: floor = trunc
        return y.add_(zy).clamp_(-128, 127).to(torch.int8)

    return softmax


class _Buffers:
    """A stand-in model holding named tensors (for building a conv from derived weights)."""

    def __init__(self, **tensors) -> None:
        self.__dict__.update(tensors)


def phase_conv(w: np.ndarray, stride, padding, padding_end) -> dict:
    """A transposed conv (groups 1) as a stride-1 conv with ``s_h·s_w·O`` output channels and a depth-to-space.

    Per axis (kernel K, stride s): ``T = ceil(K / s)``; full output row ``F = m·s + a`` (phase ``a``) is
    ``Σ_t x[m − t]·w[a + t·s]``, i.e. a correlation of the input padded by ``T − 1`` with the flipped sub-kernel
    ``v_a[j] = w[a + (T − 1 − j)·s]`` (0 past K). The conv's padding uses the input zero point, so positions no
    input reaches contribute 0 in the ``(q − Z)`` domain, as the definition. Channel ``(a·s_w + b)·O + o`` holds
    phase (a, b) of output channel o; the op's output pixel (Y, X) is conv pixel ``((Y + pt) // s_h,
    (X + pl) // s_w)``, channel of phase ``((Y + pt) % s_h, (X + pl) % s_w)``. The accumulators are the
    definition's exactly (the same products, summed in another order, in exact integer arithmetic).

    Returns:
        ``{"weight": int8 (s_h·s_w·O, C, T_h, T_w), "pad": (T_h − 1, T_w − 1), "stride", "crop": (pt, pl),
        "out_channels": O}``.
    """
    ci, o, kh, kw = w.shape
    sh, sw = stride
    th, tw = -(-kh // sh), -(-kw // sw)
    wp = np.zeros((sh * sw * o, ci, th, tw), dtype=np.int8)
    for a in range(sh):
        for b in range(sw):
            for j in range(th):
                ki = a + (th - 1 - j) * sh
                if ki >= kh:
                    continue
                for l_ in range(tw):
                    kj = b + (tw - 1 - l_) * sw
                    if kj >= kw:
                        continue
                    wp[(a * sw + b) * o:(a * sw + b + 1) * o, :, j, l_] = w[:, :, ki, kj].T
    return {"weight": wp, "pad": (th - 1, tw - 1), "stride": (sh, sw), "crop": tuple(padding), "out_channels": o}


def depth_to_space_crop(y: Tensor, s, o: int, crop, out_hw) -> Tensor:
    """NHWC ``(N, H', W', s_h·s_w·O)`` phase-conv output -> ``(N, Ho, Wo, O)`` (see :func:`phase_conv`)."""
    n, hp, wp_, _ = y.shape
    sh, sw = s
    full = y.view(n, hp, wp_, sh, sw, o).permute(0, 1, 3, 2, 4, 5).reshape(n, hp * sh, wp_ * sw, o)
    return full[:, crop[0]:crop[0] + out_hw[0], crop[1]:crop[1] + out_hw[1]].contiguous()


def _phase_model(model, op, z_in: int):
    """(stand-in model, conv2d op, phase dict) of a conv_transpose2d op."""
    pc = phase_conv(getattr(model, op.weight).numpy(), op.stride, op.padding, op.padding_end)
    rep = op.stride[0] * op.stride[1]
    m, sft = getattr(model, op.multiplier), getattr(model, op.shift)
    tile = (lambda t: t.repeat(rep)) if m.shape[0] > 1 else (lambda t: t)
    fake = _Buffers(weight=torch.from_numpy(pc["weight"]), bias=getattr(model, op.bias).repeat(rep),
                    multiplier=tile(m), shift=tile(sft))
    conv = ir.Conv2d(inputs=op.inputs[:1], output=op.output, weight="weight", bias="bias", multiplier="multiplier",
                     shift="shift", padding=pc["pad"], activation=op.activation, qmin=op.qmin, qmax=op.qmax,
                     name=op.name)
    return fake, conv, pc


@KERNELS.register(ir.ConvTranspose2d)
def _conv_transpose2d(engine, model, op: ir.ConvTranspose2d, zp: dict):
    fake, conv, pc = _phase_model(model, op, zp[op.inputs[0]])
    step = _Conv(fake, conv, zp[op.inputs[0]], zp[op.output])
    kh, kw = getattr(model, op.weight).shape[2:]

    def run(x):
        h, w = x.shape[1:3]
        ho = (h - 1) * op.stride[0] + kh - op.padding[0] - op.padding_end[0]
        wo = (w - 1) * op.stride[1] + kw - op.padding[1] - op.padding_end[1]
        return depth_to_space_crop(step.finish(step.acc(x)), op.stride, pc["out_channels"], pc["crop"], (ho, wo))

    return run


def _resize_acc(x: Tensor, z: int, scale: int, bits: int, e: int) -> Tensor:
    """int64 accumulators of resize_bicubic (reference.resize_bicubic_acc) on NHWC ``q − 128`` codes."""
    from .reference import bicubic_taps

    n, h, w, c = x.shape
    ir_, wr = (torch.from_numpy(a) for a in bicubic_taps(h, scale, bits))
    ic, wc = (torch.from_numpy(a) for a in bicubic_taps(w, scale, bits))
    xc = x.to(_I64) - z  # q - Z
    t = (xc[:, ir_] * wr[None, :, :, None, None]).sum(dim=2)  # rows: (N, Ho, W, C)
    if e:
        t = (t + ((1 << (e - 1)) - (t < 0).to(_I64))).bitwise_right_shift_(e)  # RDBPOT: halves away from zero
    return (t[:, :, ic] * wc[None, None, :, :, None]).sum(dim=3)  # columns: (N, Ho, Wo, C)


@KERNELS.register(ir.ResizeBicubic)
def _resize_bicubic(engine, model, op: ir.ResizeBicubic, zp: dict):
    z = zp[op.inputs[0]] - 128
    rq = Requant(op.multiplier, op.shift, zp[op.output], op.qmin, op.qmax)
    return lambda x: rq(_resize_acc(x, z, op.scale, op.weight_bits, op.mid_shift))


def combine_fraction_torch(acc_t: Tensor, m_t, s_t, acc_b: Tensor, m_b: int, s_b: int, frac: int, z_y: int,
                           qmin: int, qmax: int, acc_f: Tensor | None = None, m_f: int = 0, s_f: int = 0) -> Tensor:
    """:func:`.reference.combine_fraction` on NHWC int64 tensors (per-channel multipliers along the last axis);
    returns int8 ``q − 128``."""
    from .fixedpoint import multiply_by_quantized_multiplier_torch as mbqm

    u = mbqm(acc_t, m_t, s_t, axis=-1) + mbqm(acc_b, m_b, s_b)
    if acc_f is not None:
        u = u + mbqm(acc_f, m_f, s_f)
    u.clamp_(INT32_MIN, INT32_MAX)
    if frac:
        u = (u + ((1 << (frac - 1)) - (u < 0).to(_I64))).bitwise_right_shift_(frac)
    return u.add_(z_y).clamp_(qmin, qmax).sub_(128).to(torch.int8)


@KERNELS.register(ir.ConvTransposeResizeAdd)
def _conv_transpose_resize_add(engine, model, op: ir.ConvTransposeResizeAdd, zp: dict):
    f_name, x_name = op.inputs
    fake, conv, pc = _phase_model(model, op, zp[f_name])
    step = _Conv(fake, conv, zp[f_name], zp[op.output])
    kh, kw = getattr(model, op.weight).shape[2:]
    m_t = getattr(model, op.multiplier).to(_I64)
    s_t = getattr(model, op.shift).to(_I64)
    zx = zp[x_name] - 128

    def run(f, x):
        h, w = f.shape[1:3]
        ho = (h - 1) * op.stride[0] + kh - op.padding[0] - op.padding_end[0]
        wo = (w - 1) * op.stride[1] + kw - op.padding[1] - op.padding_end[1]
        acc = step.acc(f).to(_I64) + step.bias  # with the bias and the zero-point fold: the definition's acc_t
        acc_t = depth_to_space_crop(acc, op.stride, pc["out_channels"], pc["crop"], (ho, wo))
        o = x.shape[-1] // op.planes
        acc_b = _resize_acc(x[..., :o], zx, op.scale, op.weight_bits, op.mid_shift)
        acc_f = _resize_acc(x[..., o:], op.fine_zero_point - 128, op.scale, op.weight_bits, op.mid_shift) if (
            op.planes == 2) else None
        return combine_fraction_torch(acc_t, m_t if m_t.numel() > 1 else int(m_t[0]), s_t if s_t.numel() > 1
                                      else int(s_t[0]), acc_b, op.resize_multiplier, op.resize_shift,
                                      op.frac_bits, zp[op.output], op.qmin, op.qmax, acc_f, op.fine_multiplier,
                                      op.fine_shift)

    return run
