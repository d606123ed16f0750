"""The native program of an :class:`..model.IntegerModel`: one C call per op on uint8 NHWC codes in one buffer.

Built once per model (weights packed, zero points folded into int64 biases, lookup tables built with the NumPy
definition in :mod:`..fixedpoint`); a run allocates one uint8 arena (all values, 64-byte aligned, with slack for
the kernels' 4-byte reads past a row) and calls the kernels with raw pointers. The kernels take integer buffers
only. Choices:

- **Activations are uint8 codes q** (not q − 128): ``vpdpbusd`` multiplies u8 × s8, so ``Σ q·w`` is exact in int32
  while ``K·255·127 < 2^31`` (checked here) and ``Σ (q − Z)·w + b = Σ q·w + (b − Z·Σ w)``.
- **Requantization** takes the folded int64 form of ``kernels.h`` (bias as the accumulators' start value, one
  multiply and one shift per half of 16 lanes) where the weights and shifts prove it exact and overflow-free, else
  the definition with overflow checks.
- **Add:** its 256 x 256 table of output codes is built with the reference. An Add whose input is a conv output used
  by it alone runs in that conv's epilogue (no pass over memory): in the folded form (each input rescaled, then the
  sum; an input whose rescale is exactly linear is one multiply) when that equals the table on all 65536 code
  pairs, else through the table. Concat uses per-input tables of the requantized code.
- **Overflow:** where the reference raises (an accumulator or an add's sum outside int32) the kernels set a flag
  and this raises the same :class:`ModelError`.

:meth:`NativeProgram.build` returns None for a model it does not cover (an op kind, axis or fan-in it has no
kernel for); the engine then runs the pure-torch path.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import torch
from torch import Tensor

from compactnn.errors import ModelError

from .. import ir
from .. import reference as ref
from ..fixedpoint import INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier
from ..reduce import has_clamp
from . import AddFuse, Conv, Requant

__all__ = ["KERNELS", "NativeProgram", "unsupported"]

#: The native backend's kernel table (see :mod:`..ir`): ``kernel(program, model, op, shapes, zp) -> (run, shape)``
#: where ``run(pointers, n, threads)`` calls C (pointers: the inputs', the output's, the scratch) and returns
#: nonzero on an int32 overflow.
KERNELS = ir.Kernels("native")


#: Below this many multiply-adds per run (batch x the program's per-sample MACs), one thread runs it.
SERIAL_MACS = 1 << 21


class _Unsupported(Exception):
    pass


def unsupported(program, model, op, shapes, zp):
    """The native kernel of an op type the C kernels do not cover: the model runs on the torch engine instead."""
    raise _Unsupported(op.kind)


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


class _Keep:
    """Keeps numpy arrays alive and hands out their addresses."""

    def __init__(self) -> None:
        self.arrays: list = []

    def __call__(self, a: np.ndarray) -> int:
        a = np.ascontiguousarray(a)
        self.arrays.append(a)
        return a.ctypes.data


def _requant(keep: _Keep, m0, shift, bias, z_out: int, qmin: int, qmax: int, channels: int, vmin=None,
             vmax=None) -> Requant:
    """The requantization constants; ``vmin``/``vmax``: per-channel bounds of ``acc + bias`` over all inputs, when
    known (they enable the folded form of ``kernels.h`` if nothing can overflow)."""
    npad = max(16, _ceil(channels, 16))

    def per_ch(v, fill=0):
        out = np.full(npad, fill, dtype=np.int64)
        out[:channels] = np.broadcast_to(np.asarray(v, dtype=np.int64).reshape(-1), (channels,))
        return out

    m0, sh = per_ch(m0), per_ch(shift)
    if (m0 < 0).any() or (m0 >= 1 << 31).any() or (sh < -31).any():
        raise _Unsupported("multiplier out of range")
    right, bias = np.maximum(-sh, 0), per_ch(bias)
    half = np.where(right > 0, np.left_shift(np.int64(1), np.maximum(right - 1, 0)), 0)
    rq = Requant(keep(bias), keep(m0), keep(np.clip(sh, 0, 31)), keep(right), keep(half),
                 keep((right > 0).astype(np.int64)), int(z_out), int(qmin), int(qmax), 0, int(qmin < z_out))
    e = right[:channels]
    if (vmin is not None and (e >= 1).all() and (e <= 23).all() and np.min(vmin) >= INT32_MIN
            and np.max(vmax) <= INT32_MAX):  # the folded form is exact and overflow-free (see kernels.h)
        e = per_ch(e, fill=1)
        c = (1 << 30) + (1 << (e + 30)) + int(z_out) * np.left_shift(np.int64(1), 31 + e)
        s = np.where(np.arange(npad) % 2 == 0, 31 + e, e - 1)

        def lanes(v):  # per block of 16 channels: the 8 even channels, then the 8 odd ones
            return keep(v.reshape(-1, 8, 2).transpose(0, 2, 1).copy())

        rq.fast, rq.b32, rq.fm, rq.fc, rq.fs = 1, keep(bias.astype(np.int32)), lanes(m0), lanes(c), lanes(s)
    return rq


def _add_fuse(keep: _Keep, op: ir.Add, table: np.ndarray, zp: dict, conv_is_a: bool) -> AddFuse:
    """The Add fused into the conv producing input ``a`` (``conv_is_a``) or ``b``: the folded form when it equals
    the reference table on all 65536 code pairs (checked here with the same int64 arithmetic), else the table."""
    za, zb, zy = (zp[v] for v in (*op.inputs, op.output))
    ls, lo, hi = op.left_shift, op.qmin, op.qmax
    sides = [(za, op.multiplier_a, op.shift_a), (zb, op.multiplier_b, op.shift_b)]
    own, res = sides if conv_is_a else sides[::-1]
    m_y, e_y = op.multiplier_out, -op.shift_out
    f = AddFuse(table=keep(table), conv_is_a=int(conv_is_a), qmin=lo, qmax=hi, ls=ls)
    if not (own[2] <= 0 and res[2] <= 0 and 1 <= e_y <= 23 and ls <= 23):
        return f

    def side(z, m, shift):
        e = -shift
        return z, m, (1 << 30) + ((1 << (e + 30)) if e else 0), 31 + e, (1 << 31) if e else 0

    (f.zs, f.ms, f.cs, f.ss, f.ns), (f.zr, f.mr, f.cr, f.sr, f.nr) = side(*own), side(*res)
    f.my, f.cy, f.sy, f.ny = m_y, (1 << 30) + (1 << (e_y + 30)) + zy * (1 << (31 + e_y)), 31 + e_y, (1 << 31) * (lo < zy)

    def fold(x, m, c, s, n):  # the kernels' int64 steps
        a = x * m
        return (a + c - n * (a < 0)) >> s

    q = np.arange(256, dtype=np.int64)
    rescaled = []
    for z, m, c, s, n, k in ((f.zs, f.ms, f.cs, f.ss, f.ns, "s"), (f.zr, f.mr, f.cr, f.sr, f.nr, "r")):
        r, d = fold((q - z) << ls, m, c, s, n), q - z
        alpha = int(r[q != z][0] // d[q != z][0])
        if alpha and np.array_equal(r, d * alpha):  # exactly linear (e.g. M0 = 2^30, no right shift)
            setattr(f, "alpha_" + k, alpha)
        else:
            _split(f, k, r, d, m, s - 31, ls)
        rescaled.append(r)
    qa, qb = np.repeat(q, 256), np.tile(q, 256)
    qo, qr = (qa, qb) if conv_is_a else (qb, qa)
    s = rescaled[0][qo] + rescaled[1][qr]  # each side's kernel form equals its fold on all 256 codes (checked)
    got = np.clip(fold(s, f.my, f.cy, f.sy, f.ny), lo, hi)
    f.fast = int(np.array_equal(got, table.astype(np.int64)))
    return f


def _split(f: AddFuse, side: str, r: np.ndarray, d: np.ndarray, m: int, e: int, ls: int) -> bool:
    """The int32 form of one Add input's rescale (sets its fields when it equals ``r`` on all codes ``d``): with
    S = 31 + e - ls, M0 = Mh*2^S + Ml, MBQM(d*2^ls) = d*Mh + ((d*Ml + K0 - [d < 0]*Kn) >> S),
    K0 = 2^(30-ls) + half*2^(31-ls), Kn = 2^(31-ls) for e >= 1 (the folded form divided by 2^ls)."""
    sh = 31 + e - ls
    if not (ls <= 30 and 1 <= sh <= 30):
        return False
    mh, ml = m >> sh, m & ((1 << sh) - 1)
    k0 = (1 << (30 - ls)) + (((1 << (e - 1)) << (31 - ls)) if e else 0)
    kn = (1 << (31 - ls)) if e else 0
    t1, t2 = d * mh, d * ml + k0 - kn * (d < 0)
    if any(np.abs(v).max() >= 1 << 31 for v in (t1, d * ml, t2, t1 + (t2 >> sh))) or not np.array_equal(
            t1 + (t2 >> sh), r):
        return False
    for k, v in zip(("mh", "ml", "k0", "kn", "sh"), (mh, ml, k0, kn, sh)):
        setattr(f, k + side, v)
    return True


def _pack(w: np.ndarray, nseg: int, seglen: int, per_pixel: bool) -> np.ndarray:
    """Weights ``(O, C, kh, kw)`` -> ``[ceil(O/16)][nseg·seglen/4][16][4]`` in the kernels' segment order."""
    o, c, kh, kw = w.shape
    seg = np.zeros((_ceil(o, 16), nseg, seglen), dtype=np.int8)
    wt = w.transpose(0, 2, 3, 1)  # (O, kh, kw, C): NHWC order
    if per_pixel:  # kh*kw segments of C bytes
        seg[:o, :, :c] = wt.reshape(o, kh * kw, c)
    else:  # kh segments of kw*C bytes
        seg[:o, :, :kw * c] = wt.reshape(o, kh, kw * c)
    nb = seg.shape[0] // 16
    return np.ascontiguousarray(seg.reshape(nb, 16, nseg * seglen // 4, 4).transpose(0, 2, 1, 3))


def _pack16(wp: np.ndarray) -> np.ndarray:
    """The AVX2 path's weights from :func:`_pack`'s ``[blocks][k4][16][4]`` int8: ``[blocks][k4][4][8][2]`` int16,
    per group of 4 bytes the even (bytes 0, 2) and odd (bytes 1, 3) weight pairs of channels 0-7, then of 8-15
    (``vpmaddwd`` of the even / odd input bytes with them gives each channel's dword directly; kernels.c)."""
    nb, k4 = wp.shape[:2]
    w = wp.astype(np.int16).reshape(nb, k4, 2, 8, 4)  # (block, group, half, channel, byte)
    parts = np.stack([w[..., [0, 2]], w[..., [1, 3]]], axis=3)  # (block, group, half, even/odd, channel, pair)
    return np.ascontiguousarray(parts.reshape(nb, k4, 4, 8, 2))


#: Ops whose output codes lie within their inputs' (they move, pick or average codes)
_KEEPS_RANGE = (ir.MaxPool2d, ir.AvgPool2d, ir.GlobalAvgPool, ir.Flatten, ir.Permute, ir.Reshape, ir.Slice)


def _code_max(model, op, ins: list[int], zp: dict) -> int:
    """The highest code ``op`` can write: its clamp ``qmax``, its table's largest entry, its inputs' (ops that move
    or average codes; a pad also writes the input zero point), else 255."""
    if has_clamp(op):
        return int(op.qmax)
    if isinstance(op, ir.Lut):
        return int(getattr(model, op.table).max())
    if isinstance(op, _KEEPS_RANGE):
        return max(ins)
    if isinstance(op, ir.Pad):
        return max(ins[0], zp[op.inputs[0]])
    return 255


def _layouts_differ(shape: tuple) -> bool:
    """Whether a value's NCHW (PyTorch) and NHWC (arena) layouts are different bytes: only for a 3-D value of more
    than one channel and more than one pixel; otherwise it is copied as it is."""
    return len(shape) == 3 and shape[0] > 1 and shape[1] * shape[2] > 1


class NativeProgram:
    """Compiled native program (see the module docstring). Use :meth:`build`."""

    def __init__(self, model, lib) -> None:
        self.lib, self.keep = lib, _Keep()
        # the native entry point: the whole program is checked again here, right before any geometry goes to C
        checked = ir.check_program(model, metadata=False)
        self.input_value, self.output_value = model.input["value"], model.output["value"]
        self.input_qmax = int(model.input.get("qmax", 255))  # 127 with 7-bit activations
        zp = {k: int(v["zero_point"]) for k, v in model.values.items()}
        shp = {self.input_value: checked[self.input_value]}  # (C, H, W) or (F,), PyTorch order
        self.steps = []  # (fn(ptrs, n, threads), inputs, output)
        self.macs = 0  # multiply-adds (and element steps) per sample, for the serial threshold
        self._convs: dict = {}  # output value -> its Conv (groups == 1, and linear layers)
        self._adds: dict = {}  # output value -> the Add's 256 x 256 table
        self.vmax = {self.input_value: self.input_qmax}  # the highest code each value can hold
        for op in model.ops:
            fn, shp[op.output] = KERNELS.get(op)(self, model, op, [shp[i] for i in op.inputs], zp)
            self.vmax[op.output] = _code_max(model, op, [self.vmax[i] for i in op.inputs], zp)
            if tuple(shp[op.output]) != checked[op.output]:
                raise ModelError(f"native program: op {op.label} gives shape {shp[op.output]}, the IR "
                                 f"{checked[op.output]}")
            self.steps.append((fn, list(op.inputs), op.output))
            self.macs += int(np.prod(checked[op.output])) * (
                self._fan_in(model, op) if isinstance(op, (ir.Conv2d, ir.Linear)) else 1)
        self.shapes = shp
        self.fused = self._fuse(model, zp)
        self.nbytes = {k: int(np.prod(s)) for k, s in shp.items()}
        self._reorder_in, self._reorder_out = (_layouts_differ(shp[v]) for v in (self.input_value, self.output_value))
        self._layouts: dict = {}
        self._local = threading.local()

    def _fuse(self, model, zp: dict) -> list:
        """The steps with two kinds of pairs as one step: conv -> 2x2/2 max pool (the conv output used by the pool
        only), and conv -> Add (the conv output used by the Add only, the Add's other input computed before the
        conv; of two such convs the later one). The fused step runs where the conv ran."""
        uses: dict = {}
        made = {self.input_value: -1}
        for i, op in enumerate(model.ops):
            made[op.output] = i
            for v in op.inputs:
                uses[v] = uses.get(v, 0) + 1
        adds: dict = {}  # conv step -> (add step, conv output is the first input)
        for k, op in enumerate(model.ops):
            ins = op.inputs
            if not isinstance(op, ir.Add) or op.output not in self._adds or ins[0] == ins[1]:
                continue
            ok = [j for j in (0, 1) if ins[j] in self._convs and uses[ins[j]] == 1 and ins[j] != self.output_value
                  and made[ins[1 - j]] < made[ins[j]]]
            if ok:  # at most one: the conv computed after the other input
                adds[made[ins[ok[0]]]] = (k, ok[0] == 0)
        fused, skip, i = [], set(), 0
        while i < len(self.steps):
            op, nxt = model.ops[i], model.ops[i + 1] if i + 1 < len(model.ops) else None
            d = self._convs.get(op.output)
            if i in skip:
                pass
            elif i in adds:
                k, conv_is_a = adds[i]
                add = model.ops[k]
                f = _add_fuse(self.keep, add, self._adds[add.output], zp, conv_is_a)
                d2 = Conv.from_buffer_copy(d)
                d2.add = ctypes.addressof(f)
                self.keep.arrays += [f, d2]
                run = (lambda p, n, t, a=ctypes.addressof(d2): self.lib.cnn_conv(a, n, p[0], p[1], p[2], p[-1], t))
                fused.append((run, list(op.inputs) + [add.inputs[1 if conv_is_a else 0]], add.output))
                skip.add(k)
            elif (d is not None and isinstance(nxt, ir.MaxPool2d) and nxt.inputs == (op.output,)
                    and uses[op.output] == 1 and op.output != self.output_value
                    and (nxt.kernel, nxt.stride, nxt.padding) == ((2, 2), (2, 2), (0, 0))):
                run = (lambda p, n, t, a=ctypes.addressof(d): self.lib.cnn_conv_pool2(a, n, p[0], p[1], p[-1], t))
                fused.append((run, list(op.inputs), nxt.output))
                i += 1
            else:
                fused.append(self.steps[i])
            i += 1
        return fused

    @staticmethod
    def _fan_in(model, op) -> int:
        w = getattr(model, op.weight)
        return int(np.prod(w.shape[1:]))

    def __deepcopy__(self, memo):
        return self  # read-only after the build (ctypes pointers cannot be copied); arenas are per thread

    @classmethod
    def build(cls, model, lib):
        """The program, or None when some op has no native kernel."""
        try:
            return cls(model, lib)
        except _Unsupported:
            return None

    # ----------------------------------------------------------------------------------------------------- ops
    def _weighted(self, model, op, cin: int, kh: int, kw: int, geo: dict, zin: int, z_out: int) -> Conv:
        w = getattr(model, op.weight).numpy()
        w4 = w.reshape(w.shape[0], -1, kh, kw)
        o = w4.shape[0]
        if w4.shape[1] * kh * kw * 255 * 127 >= 1 << 31:
            raise _Unsupported("fan-in too large for int32 u8 x s8 accumulation")
        bias = getattr(model, op.bias).numpy().astype(np.int64) - zin * w4.astype(np.int64).sum(axis=(1, 2, 3))
        per_pixel = geo["dw"] != 1
        nseg, seglen = (kh * kw, _ceil(cin, 4)) if per_pixel else (kh, _ceil(kw * cin, 4))
        groups = geo.pop("groups", 1)
        packed = _pack(w4, nseg, seglen, per_pixel) if groups == 1 else w4.transpose(0, 2, 3, 1).copy()
        wp = self.keep(packed)
        w64 = w4.astype(np.int64).reshape(o, -1)  # acc + bias over all uint8 inputs (padding uses Z_in, also uint8)
        vmin, vmax = bias + 255 * np.minimum(w64, 0).sum(1), bias + 255 * np.maximum(w64, 0).sum(1)
        rq = _requant(self.keep, getattr(model, op.multiplier).numpy(), getattr(model, op.shift).numpy(), bias,
                      z_out, op.qmin, op.qmax, o, vmin if groups == 1 else None, vmax)
        extra = {}
        if getattr(op, "activation", "none") == "leaky_relu":  # kernels.h requant1c; both sides folded or neither
            rqn = _requant(self.keep, getattr(model, op.multiplier_neg).numpy(), getattr(model, op.shift_neg).numpy(),
                           bias, z_out, op.qmin, op.qmax, o, vmin if groups == 1 else None, vmax)
            if not (rq.fast and rqn.fast):
                rq.fast = rqn.fast = 0
            extra = dict(rqn=rqn, leaky=1)
        if groups == 1 and self.lib.cnn_simd() == 1:  # the AVX2 path: int16 weight pairs, or 8-bit products
            if zin <= 127 and self.vmax.get(op.inputs[0], 255) <= 127:
                extra["u7"] = 1  # every input code (and the padding) <= 127: vpmaddubsw is exact (kernels.c)
            else:
                extra["wp16"] = self.keep(_pack16(packed))
        d = Conv(c=cin, o=o, kh=kh, kw=kw, nseg=nseg, seglen=seglen, zin=zin, wp=wp, rq=rq, **geo, **extra)
        self.keep.arrays.append(d)
        return d

    # ----------------------------------------------------------------------------------------------------- run
    def _layout(self, n: int, threads: int, all_values: bool):  # noqa: C901
        """Byte offsets of the values in the arena: a dead value's block is reused (first fit, smallest block)
        unless every value is kept (``all_values``); then the scratch of the padded images; then the total."""
        key = (n, threads, all_values)
        if key not in self._layouts:
            steps = self.steps if all_values else self.fused
            last = {self.output_value: len(steps)}
            for i, (_, ins, _) in enumerate(steps):
                for v in ins:
                    last[v] = max(last.get(v, -1), i)
            offs, free, pos = {}, [], 0

            def alloc(name):
                nonlocal pos
                size = _ceil(n * self.nbytes[name] + 64, 64)
                fits = [b for b in free if b[1] >= size]
                if fits:
                    block = min(fits, key=lambda b: b[1])
                    free.remove(block)
                    offs[name] = block[0]
                else:
                    offs[name], block = pos, (pos, size)
                    pos += size
                return block

            blocks = {self.input_value: alloc(self.input_value)}
            for i, (_, ins, out) in enumerate(steps):
                blocks[out] = alloc(out)
                for v in set(ins) | {out}:
                    if not all_values and last.get(v, -1) <= i and v in blocks:
                        free.append(blocks.pop(v))
            scratch = pos
            pos += threads * _ceil(getattr(self, "scratch", 0), 64) + 64
            self._layouts[key] = (offs, scratch, pos)
        return self._layouts[key]

    def _plan(self, n: int, all_values: bool) -> "_Plan":
        """This thread's preplanned run for batch ``n``: its arena (allocated once), every step's pointers bound, and
        the thread count (one thread below :data:`SERIAL_MACS` multiply-adds: OpenMP's fork/join would cost more
        than the work)."""
        threads = 1 if n * self.macs < SERIAL_MACS else torch.get_num_threads()
        key = (n, threads, all_values)
        plans = self._local.__dict__.setdefault("plans", {})
        plan = plans.get(key)
        if plan is None:
            offs, scratch, total = self._layout(n, threads, all_values)
            if len(plans) > 4:
                plans.clear()
            arena = torch.empty(total + 64, dtype=torch.uint8)
            base = (arena.data_ptr() + 63) // 64 * 64
            ptr = {k: base + v for k, v in offs.items()}
            sp = base + scratch
            calls = [(fn, [ptr[i] for i in ins] + [ptr[out], sp], out)
                     for fn, ins, out in (self.steps if all_values else self.fused)]
            plan = plans[key] = _Plan(arena, ptr, calls, threads)
        return plan

    def _execute(self, plan: "_Plan", n: int) -> None:
        t = plan.threads
        for fn, ptrs, out in plan.calls:
            if fn(ptrs, n, t):
                raise ModelError(f"an accumulator of the op producing {out!r} overflows int32 (the reference engine "
                                 "raises here too); reduce the layer's fan-in or the bias")

    def _put(self, plan: "_Plan", src: int, n: int) -> None:
        """uint8 input codes at address ``src`` (PyTorch layout) into the arena (NHWC)."""
        s = self.shapes[self.input_value]
        if _layouts_differ(s):
            self.lib.cnn_nchw_to_nhwc(src, plan.ptr[self.input_value], n, s[1] * s[2], s[0])
        else:
            ctypes.memmove(plan.ptr[self.input_value], src, n * self.nbytes[self.input_value])

    def _take(self, plan: "_Plan", name: str, n: int) -> Tensor:
        """A fresh uint8 tensor of value ``name`` in PyTorch layout."""
        s = self.shapes[name]
        out = torch.empty((n, *s), dtype=torch.uint8)
        if _layouts_differ(s):
            self.lib.cnn_nhwc_to_nchw(plan.ptr[name], out.data_ptr(), n, s[1] * s[2], s[0])
        else:  # (F,), (T, F), one channel or one pixel: the same bytes in both orders
            ctypes.memmove(out.data_ptr(), plan.ptr[name], n * self.nbytes[name])
        return out

    def run(self, q: Tensor, all_values: bool = False):
        """uint8 codes in PyTorch layout (at most the input qmax: FastEngine.run checks) -> the output codes (or every
        value by name)."""
        n = int(q.shape[0])
        plan = self._plan(n, all_values)
        q = q.contiguous()
        self._put(plan, q.data_ptr(), n)
        self._execute(plan, n)
        if all_values:
            return {k: self._take(plan, k, n) for k in self.shapes}
        return self._take(plan, self.output_value, n)

    def run_float(self, x: Tensor, s_in: float, z_in: int, s_out: float, z_out: int) -> Tensor:
        """A contiguous float32 CPU batch -> the dequantized float32 output: quantize into the arena, the program,
        dequantize from it (the C steps of io.c; as ``dequantize(run(quantize(x)))`` bit for bit)."""
        n = int(x.shape[0])
        plan = self._plan(n, False)
        so = self.shapes[self.output_value]
        count = n * self.nbytes[self.input_value]
        if self._reorder_in:  # the codes in NCHW first, then to NHWC; else straight into the arena
            if plan.codes is None or plan.codes.numel() < count:
                plan.codes = torch.empty(count, dtype=torch.uint8)
            self.lib.cnn_quantize_f32(x.data_ptr(), plan.codes.data_ptr(), count, s_in, z_in, self.input_qmax)
            self._put(plan, plan.codes.data_ptr(), n)
        else:
            self.lib.cnn_quantize_f32(x.data_ptr(), plan.ptr[self.input_value], count, s_in, z_in,
                                      self.input_qmax)
        self._execute(plan, n)
        y = torch.empty((n, *so), dtype=torch.float32)
        src = plan.ptr[self.output_value]
        if self._reorder_out:
            codes = self._take(plan, self.output_value, n)
            src = codes.data_ptr()
        self.lib.cnn_dequantize_u8(src, y.data_ptr(), y.numel(), s_out, z_out)
        return y


class _Plan:
    """A preplanned run (see :meth:`NativeProgram._plan`)."""

    __slots__ = ("arena", "ptr", "calls", "threads", "codes")

    def __init__(self, arena: Tensor, ptr: dict, calls: list, threads: int) -> None:
        self.arena, self.ptr, self.calls, self.threads, self.codes = arena, ptr, calls, threads, None


# ------------------------------------------------------------------------------------------------------ kernels


def _arena(ptr: int, count: int) -> np.ndarray:
    """A uint8 NumPy view of ``count`` bytes of the arena at ``ptr``."""
    return np.ctypeslib.as_array((ctypes.c_uint8 * count).from_address(ptr))


class _Temp(threading.local):
    """Per-thread temporary buffers of the ops that run in pieces (grouped convs, the transposed conv)."""

    def get(self, key, size: int) -> np.ndarray:
        bufs = self.__dict__.setdefault("bufs", {})
        b = bufs.get(key)
        if b is None or b.size < size:
            b = bufs[key] = np.empty(size + 64, dtype=np.uint8)
        return b


_TEMP = _Temp()


class _Sub:
    """A stand-in model holding derived tensors (a group's slice of a conv, a transposed conv's phase conv)."""

    def __init__(self, **tensors) -> None:
        self.__dict__.update(tensors)


def _sub_conv(prog, model, op, sl, shape, zin: int, zout: int, padding=None) -> Conv:
    """A dense (groups 1) Conv of output channels ``sl`` of ``op`` over an input of ``shape`` (C, H, W)."""
    def pick(name):
        t = getattr(model, name)
        return t[sl] if t.shape[0] > 1 else t

    fields = dict(weight=getattr(model, op.weight)[sl], bias=getattr(model, op.bias)[sl],
                  multiplier=pick(op.multiplier), shift=pick(op.shift))
    leaky = op.activation == "leaky_relu"
    if leaky:
        fields.update(multiplier_neg=pick(op.multiplier_neg), shift_neg=pick(op.shift_neg))
    sub = _Sub(**fields)
    sop = ir.Conv2d(inputs=op.inputs, output=op.output, weight="weight", bias="bias", multiplier="multiplier",
                    shift="shift", stride=op.stride, padding=op.padding if padding is None else padding,
                    dilation=op.dilation, activation=op.activation, qmin=op.qmin, qmax=op.qmax,
                    **(dict(multiplier_neg="multiplier_neg", shift_neg="shift_neg") if leaky else {}))
    c, h, w = shape
    kh, kw = fields["weight"].shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = sop.stride, sop.padding, sop.dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    prog.scratch = max(getattr(prog, "scratch", 0), (h + 2 * ph) * (w + 2 * pw) * c + 64)
    return prog._weighted(sub, sop, c, kh, kw, dict(h=h, w=w, ho=ho, wo=wo, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh,
                                                     dw=dw), zin, zout)


def _grouped(prog, model, op, shapes, zp):
    """A grouped conv as one dense conv per group (``cnn_conv_groups``: one parallel region; each work item gathers
    its group's input channels into a padded scratch image and writes the group's output channels in place; exact:
    the same accumulators and requantization per channel)."""
    c, h, w = shapes[0]
    g = op.groups
    o = getattr(model, op.weight).shape[0]
    cg, og = c // g, o // g
    subs = [_sub_conv(prog, model, op, slice(k * og, (k + 1) * og), (cg, h, w), zp[op.inputs[0]], zp[op.output])
            for k in range(g)]
    ho, wo = subs[0].ho, subs[0].wo
    table = prog.keep(np.array([ctypes.addressof(d) for d in subs], dtype=np.uint64))
    lib = prog.lib
    return (lambda p, n, t: lib.cnn_conv_groups(table, g, c, o, n, p[0], p[1], p[-1], t)), (o, ho, wo)


@KERNELS.register(ir.ConvTranspose2d)
def _conv_transpose2d(prog, model, op, shapes, zp):
    """The phase conv of :func:`..engine.phase_conv` (a dense VNNI conv with s_h·s_w·O output channels), then the
    depth-to-space and crop on the arena (NumPy strided copy)."""
    from ..engine import phase_conv

    c, h, w = shapes[0]
    wt = getattr(model, op.weight)
    ci, o, kh, kw = wt.shape
    pc = phase_conv(wt.numpy(), op.stride, op.padding, op.padding_end)
    rep = op.stride[0] * op.stride[1]
    m, sft = getattr(model, op.multiplier), getattr(model, op.shift)
    tile = (lambda t_: t_.repeat(rep)) if m.shape[0] > 1 else (lambda t_: t_)
    sub = _Sub(weight=torch.from_numpy(pc["weight"]), bias=getattr(model, op.bias).repeat(rep),
               multiplier=tile(m), shift=tile(sft))
    sop = ir.Conv2d(inputs=op.inputs, output=op.output, weight="weight", bias="bias", multiplier="multiplier",
                    shift="shift", padding=pc["pad"], activation=op.activation, qmin=op.qmin, qmax=op.qmax)
    d = _sub_conv(prog, sub, sop, slice(None), (c, h, w), zp[op.inputs[0]], zp[op.output])
    addr, lib = ctypes.addressof(d), prog.lib
    ho = (h - 1) * op.stride[0] + kh - op.padding[0] - op.padding_end[0]
    wo = (w - 1) * op.stride[1] + kw - op.padding[1] - op.padding_end[1]
    (sh, sw), (pt, pl) = op.stride, op.padding
    hp, wp_, co = d.ho, d.wo, d.o

    def run(p, n, t):
        tmp = _TEMP.get(("deconv", id(prog)), n * hp * wp_ * co)
        ovf = lib.cnn_conv(addr, n, p[0], None, tmp.ctypes.data, p[-1], t)
        full = tmp[:n * hp * wp_ * co].reshape(n, hp, wp_, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(
            n, hp * sh, wp_ * sw, o)
        _arena(p[1], n * ho * wo * o).reshape(n, ho, wo, o)[:] = full[:, pt:pt + ho, pl:pl + wo]
        return ovf

    return run, (o, ho, wo)


@KERNELS.register(ir.ConvTransposeResizeAdd)
def _conv_transpose_resize_add(prog, model, op, shapes, zp):
    """The phase conv's raw int32 accumulators from C (``Conv.raw``), then in NumPy int64 on the arena: the bias
    (with the zero-point fold), the depth-to-space and crop, the bicubic accumulators (the reference's), and
    :func:`..reference.combine_fraction`: the definition's arithmetic."""
    from ..engine import phase_conv

    (c, h, w), (ci, hi, wi) = shapes
    wt = getattr(model, op.weight)
    _, o, kh, kw = wt.shape
    pc = phase_conv(wt.numpy(), op.stride, op.padding, op.padding_end)
    rep = op.stride[0] * op.stride[1]
    zf, zx = zp[op.inputs[0]], zp[op.inputs[1]]
    bias = getattr(model, op.bias).numpy().astype(np.int64)
    sub = _Sub(weight=torch.from_numpy(pc["weight"]), bias=torch.from_numpy(np.tile(bias, rep).astype(np.int32)),
               multiplier=torch.ones(1, dtype=torch.int32), shift=torch.zeros(1, dtype=torch.int32))
    sop = ir.Conv2d(inputs=op.inputs[:1], output=op.output, weight="weight", bias="bias", multiplier="multiplier",
                    shift="shift", padding=pc["pad"])
    d = _sub_conv(prog, sub, sop, slice(None), (c, h, w), zf, 0)
    d.raw, d.rq.fast = 1, 0
    folded = np.tile(bias, rep) - zf * pc["weight"].astype(np.int64).sum(axis=(1, 2, 3))  # b - Z·Σw per channel
    addr, lib = ctypes.addressof(d), prog.lib
    ho = (h - 1) * op.stride[0] + kh - op.padding[0] - op.padding_end[0]
    wo = (w - 1) * op.stride[1] + kw - op.padding[1] - op.padding_end[1]
    (sh, sw), (pt, pl) = op.stride, op.padding
    hp, wp_, co = d.ho, d.wo, d.o
    m_t, s_t = getattr(model, op.multiplier).numpy(), getattr(model, op.shift).numpy()
    m_t, s_t = (m_t[0], s_t[0]) if m_t.shape == (1,) else (m_t, s_t)

    def run(p, n, t):
        tmp = _TEMP.get(("deconv_raw", id(prog)), n * hp * wp_ * co * 4)
        if lib.cnn_conv(addr, n, p[0], None, tmp.ctypes.data, p[-1], t):
            return 1
        acc = tmp[:n * hp * wp_ * co * 4].view(np.int32).reshape(n, hp, wp_, co).astype(np.int64) + folded
        acc_t = acc.reshape(n, hp, wp_, sh, sw, o).transpose(0, 1, 3, 2, 4, 5).reshape(n, hp * sh, wp_ * sw, o)[
            :, pt:pt + ho, pl:pl + wo]
        img = _arena(p[1], n * hi * wi * ci).reshape(n, hi, wi, ci).transpose(0, 3, 1, 2)
        try:
            ref._int32(acc_t, "the conv_transpose2d accumulator")
            acc_b = ref.resize_bicubic_acc(np.ascontiguousarray(img[:, :o]), zx, op.scale, op.weight_bits,
                                           op.mid_shift).transpose(0, 2, 3, 1)
            acc_f = ref.resize_bicubic_acc(np.ascontiguousarray(img[:, o:]), op.fine_zero_point, op.scale,
                                           op.weight_bits, op.mid_shift).transpose(0, 2, 3, 1) if (
                op.planes == 2) else None
        except ModelError:
            return 1
        y = ref.combine_fraction(acc_t, m_t, s_t, acc_b, op.resize_multiplier, op.resize_shift, op.frac_bits,
                                 zp[op.output], op.qmin, op.qmax, axis=-1, acc_f=acc_f, M_f=op.fine_multiplier,
                                 shift_f=op.fine_shift)
        _arena(p[2], n * ho * wo * o).reshape(n, ho, wo, o)[:] = y
        return 0

    return run, (o, ho, wo)


@KERNELS.register(ir.ResizeBicubic)
def _resize_bicubic(prog, model, op, shapes, zp):
    """The reference kernel (NumPy int64) on the arena's codes: a small op (one channel in IDN)."""
    c, h, w = shapes[0]
    s = op.scale
    zi, zo = zp[op.inputs[0]], zp[op.output]

    def run(p, n, t):
        x = _arena(p[0], n * h * w * c).reshape(n, h, w, c).transpose(0, 3, 1, 2)
        try:
            y = ref.resize_bicubic(np.ascontiguousarray(x), zi, s, op.multiplier, op.shift, zo, op.weight_bits,
                                   op.mid_shift, op.qmin, op.qmax)
        except ModelError:
            return 1
        _arena(p[1], n * h * s * w * s * c).reshape(n, h * s, w * s, c)[:] = y.transpose(0, 2, 3, 1)
        return 0

    return run, (c, h * s, w * s)


@KERNELS.register(ir.Conv2d)
def _conv2d(prog, model, op, shapes, zp):
    if op.groups > 1 and not (op.groups == shapes[0][0] and getattr(model, op.weight).shape[0] == op.groups
                              and op.activation != "leaky_relu"):
        return _grouped(prog, model, op, shapes, zp)
    (c, h, w), (kh, kw) = shapes[0], getattr(model, op.weight).shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = op.stride, op.padding, op.dilation
    ho, wo = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    groups = op.groups
    d = prog._weighted(model, op, c // groups if groups > 1 else c, kh, kw,
                       dict(h=h, w=w, ho=ho, wo=wo, sh=sh, sw=sw, ph=ph, pw=pw, dh=dh, dw=dw, groups=groups),
                       zp[op.inputs[0]], zp[op.output])
    if groups > 1:
        d.c = c
        addr = ctypes.addressof(d)
        return (lambda p, n, t: prog.lib.cnn_conv_grouped(addr, n, groups, d.wp, p[0], p[1], t)), (d.o, ho, wo)
    prog.scratch = max(getattr(prog, "scratch", 0), (h + 2 * ph) * (w + 2 * pw) * c + 64)
    if not d.leaky:  # the fused Add / max pool epilogues do not take the leaky form
        prog._convs[op.output] = d
    addr = ctypes.addressof(d)
    return (lambda p, n, t: prog.lib.cnn_conv(addr, n, p[0], None, p[1], p[-1], t)), (d.o, ho, wo)


@KERNELS.register(ir.Linear)
def _linear(prog, model, op, shapes, zp):
    if len(shapes[0]) not in (1, 2):
        raise _Unsupported("linear on a 4-D value")
    f, rows = shapes[0][-1], int(np.prod(shapes[0][:-1]))  # (T, F): T rows of F features per sample
    d = prog._weighted(model, op, f, 1, 1, dict(h=1, w=1, ho=1, wo=1, sh=1, sw=1, ph=0, pw=0, dh=1, dw=1),
                       zp[op.inputs[0]], zp[op.output])
    addr = ctypes.addressof(d)
    if rows == 1:
        prog._convs[op.output] = d  # (a conv -> Add fusion reads the value as n pixels)
    return (lambda p, n, t: prog.lib.cnn_conv(addr, n * rows, p[0], None, p[1], 0, t)), (*shapes[0][:-1], d.o)


@KERNELS.register(ir.MaxPool2d)
def _max_pool2d(prog, model, op, shapes, zp):
    c, h, w = shapes[0]
    (kh, kw), (sh, sw), (ph, pw) = op.kernel, op.stride, op.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    return (lambda p, n, t: prog.lib.cnn_maxpool(p[0], p[1], n, h, w, c, kh, kw, sh, sw, ph, pw, ho, wo, t)), (
        c, ho, wo)


@KERNELS.register(ir.AvgPool2d)
def _avg_pool2d(prog, model, op, shapes, zp):
    c, h, w = shapes[0]
    (kh, kw), (sh, sw) = op.kernel, op.stride
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    return (lambda p, n, t: prog.lib.cnn_avgpool(p[0], p[1], n, h, w, c, kh, kw, sh, sw, ho, wo, t)), (c, ho, wo)


@KERNELS.register(ir.GlobalAvgPool)
def _global_avg_pool(prog, model, op, shapes, zp):
    c, h, w = shapes[0]
    return (lambda p, n, t: prog.lib.cnn_avgpool(p[0], p[1], n, h, w, c, h, w, 1, 1, 1, 1, t)), (c, 1, 1)


@KERNELS.register(ir.Flatten)
def _flatten(prog, model, op, shapes, zp):
    s = shapes[0]
    if len(s) != 3:  # (F,), (T, F), ...: already in PyTorch order
        size = int(np.prod(s))
        return (lambda p, n, t: ctypes.memmove(p[1], p[0], n * size) and 0), (size,)
    c, hw = s[0], s[1] * s[2]
    return (lambda p, n, t: prog.lib.cnn_nhwc_to_nchw(p[0], p[1], n, hw, c)), (c * hw,)


@KERNELS.register(ir.Add)
def _add(prog, model, op, shapes, zp):
    if shapes[0] != shapes[1]:
        raise _Unsupported("broadcasting add")
    codes = np.arange(256, dtype=np.uint8)
    try:  # the reference kernel on all 256 x 256 code pairs
        table = ref.add(np.repeat(codes, 256), zp[op.inputs[0]], op.multiplier_a, op.shift_a,
                        np.tile(codes, 256), zp[op.inputs[1]], op.multiplier_b, op.shift_b,
                        zp[op.output], op.multiplier_out, op.shift_out, op.left_shift, op.qmin, op.qmax)
    except ModelError as err:  # some pair overflows int32: leave the raising to the other engines
        raise _Unsupported(str(err)) from None
    prog._adds[op.output] = table
    tp, size = prog.keep(table), int(np.prod(shapes[0]))
    return (lambda p, n, t: prog.lib.cnn_add(p[0], p[1], p[2], n * size, tp, t)), shapes[0]


@KERNELS.register(ir.Concat)
def _concat(prog, model, op, shapes, zp):
    if op.axis != 1 or len({s[1:] for s in shapes}) != 1:
        raise _Unsupported("concat axis")
    zy, ls = zp[op.output], op.left_shift
    lo, hi = op.qmin, op.qmax
    codes = np.arange(256, dtype=np.int64)
    parts, off, total = [], 0, sum(s[0] for s in shapes)
    inner = int(np.prod(shapes[0][1:]))  # pixels per image (1 for flat values)
    for name, s, m in zip(op.inputs, shapes, op.multipliers):
        if m is None:
            lut = np.clip(codes, lo, hi)
        else:
            m0, sh = int(m[0]), int(m[1])
            L = min(ls, sh + 31)
            lut = np.clip(multiply_by_quantized_multiplier((codes - zp[name]) << L, m0, sh - L) + zy, lo, hi)
        parts.append((prog.keep(lut.astype(np.uint8)), s[0], off))
        off += s[0]

    def cat(p, n, t):
        for i, (lut, c, o) in enumerate(parts):
            prog.lib.cnn_lut_copy(p[i], p[-2], n * inner, c, total, o, lut)

    return cat, (total,) + tuple(shapes[0][1:])


# ------------------------------------------------------------------------------------------ data movement, lut, mul


def _positions(shape: tuple) -> np.ndarray:
    """Per sample, the arena offset of every element, viewed in PyTorch layout (rank-3 values are NHWC)."""
    n = int(np.prod(shape))  # <= ir.MAX_VALUE_ELEMENTS = 2^28: int32 offsets (4 bytes per element, as the index)
    if len(shape) == 3:
        c, h, w = shape
        return np.arange(n, dtype=np.int32).reshape(h, w, c).transpose(2, 0, 1)
    return np.arange(n, dtype=np.int32).reshape(shape)


def _arena_order(y: np.ndarray) -> np.ndarray:
    """A per-sample PyTorch-layout array flattened in arena order."""
    return (y.transpose(1, 2, 0) if y.ndim == 3 else y).reshape(-1)


def _index(idx: np.ndarray, lo: int, size: int, count: int) -> np.ndarray:
    """The int32 gather index, checked in range before it reaches C."""
    idx = np.ascontiguousarray(idx, dtype=np.int32)
    if idx.size != count or (idx.size and (int(idx.min()) < lo or int(idx.max()) >= size)):
        raise ModelError("native program: a data-movement index is out of range (a malformed op)")
    return idx


def _gather(prog, model, op, shapes, zp):
    """permute / reshape / slice / pad: the reference kernel run on the arena offsets gives the gather index."""
    (shape,) = shapes
    pos = _positions(shape)[None]
    y = ref.KERNELS.get(op)(model, op, {op.inputs[0]: pos}, {op.inputs[0]: -1, op.output: -1})[0]  # pad fill: -1
    n_in, n_out = int(np.prod(shape)), int(y.size)
    idx = _index(_arena_order(y), -1, n_in, n_out)
    fill = zp[op.inputs[0]]
    if n_in == n_out and np.array_equal(idx, np.arange(n_out, dtype=np.int32)):  # same bytes in the same order
        return (lambda p, n, t: ctypes.memmove(p[1], p[0], n * n_out) and 0), tuple(y.shape)  # 0: no overflow
    ip = prog.keep(idx)
    return (lambda p, n, t: prog.lib.cnn_gather(p[0], p[1], n, n_in, n_out, ip, fill, t)), tuple(y.shape)


KERNELS.register(ir.Permute, ir.Reshape, ir.Slice, ir.Pad)(_gather)


@KERNELS.register(ir.Lut)
def _lut(prog, model, op, shapes, zp):
    table = getattr(model, op.table).numpy()
    if table.dtype != np.uint8 or table.shape != (256,):
        raise ModelError(f"native program: lut {op.label} needs a uint8 table of 256 codes")
    tp, size = prog.keep(table), int(np.prod(shapes[0]))
    return (lambda p, n, t: prog.lib.cnn_lut_copy(p[0], p[1], n, size, size, 0, tp)), tuple(shapes[0])


@KERNELS.register(ir.Mul)
def _mul(prog, model, op, shapes, zp):
    a, b = shapes
    codes = np.arange(256, dtype=np.uint8)
    table = ref.mul(np.repeat(codes, 256), zp[op.inputs[0]], np.tile(codes, 256), zp[op.inputs[1]], op.multiplier,
                    op.shift, zp[op.output], op.qmin, op.qmax)  # the reference on all 65536 code pairs
    tp = prog.keep(table)
    out = tuple(max(x, y) for x, y in zip(a, b))
    size = int(np.prod(out))
    if a == b:
        return (lambda p, n, t: prog.lib.cnn_add(p[0], p[1], p[2], n * size, tp, t)), out
    ia = prog.keep(_index(_arena_order(np.broadcast_to(_positions(a), out)), 0, int(np.prod(a)), size))
    ib = prog.keep(_index(_arena_order(np.broadcast_to(_positions(b), out)), 0, int(np.prod(b)), size))
    na, nb = int(np.prod(a)), int(np.prod(b))
    return (lambda p, n, t: prog.lib.cnn_gather2_table(p[0], p[1], p[2], n, na, nb, size, ia, ib, tp, t)), out


@KERNELS.register(ir.Softmax)
def _softmax(prog, model, op, shapes, zp):
    (s,) = shapes
    table = getattr(model, op.table).numpy().astype(np.int64)
    if len(s) not in (1, 2) or table.shape != (256,) or table[0] < 1 or table.min() < 0:
        raise ModelError(f"native program: softmax {op.label} has a malformed table or shape")  # checked by ir too
    tp, rows, row = prog.keep(table), int(np.prod(s[:-1])), int(s[-1])
    m, zy = int(op.multiplier), zp[op.output]
    return (lambda p, n, t: prog.lib.cnn_softmax(p[0], p[1], n * rows, row, tp, m, zy, t)), tuple(s)
