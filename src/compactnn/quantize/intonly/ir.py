"""The typed integer IR of :class:`.model.IntegerModel`: one frozen dataclass per op, validated when built, and one
kernel table per backend.

An integer model is a straight-line program over named uint8 values: ``model.ops`` is a tuple of the op objects
below, each reading ``inputs`` (value names) and writing ``output``. Integer tensors (weights, biases, multipliers)
are module buffers that ops name by string. Every op's fields are checked when it is constructed (types, signs,
ranges), and :func:`check_program` checks a whole program against its buffers and values (names known, shapes that
chain op to op, weights consistent with their input, multipliers in range, scales finite and positive). The model
runs :func:`check_program` when it is built, when it is loaded from a ``.cnz`` file, and the native engine runs it
again right before it hands geometry to C, so no unchecked number reaches a kernel.

**Backends.** Each backend owns a :class:`Kernels` table with one entry per op type:

====================  ===========================================  ======================================
backend               module                                       kernel signature
====================  ===========================================  ======================================
``reference``         :mod:`.reference`                            ``(model, op, env, zp) -> ndarray``
``fast``              :mod:`.engine` (torch integer kernels)       ``(engine, model, op, zp) -> fn``
``native``            :mod:`.native.program` (C kernels)           ``(program, model, op, shapes, zp)``
``onnx_qlinear``      :mod:`.export` (ORT QLinear operators)       ``(graph, index, op) -> None``
``onnx_exact``        :mod:`.export_exact` (bit-exact ONNX)        ``(graph, index, op) -> None``
====================  ===========================================  ======================================

``tests/quantize/test_intonly_ir.py`` fails for every (op type, backend) pair without a kernel.

The ops of this file are the layers (conv2d, linear, pools, flatten, add, concat); :mod:`.ir_more` adds data
movement (permute, reshape, slice, pad), lookup tables (lut) and the elementwise product (mul), re-exported here.

**Adding an op** (e.g. a transposed conv, an upsample; new ops may live in their own module, as :mod:`.ir_more`):

1. here: a frozen ``@register_op`` dataclass deriving :class:`Op` with ``kind = "..."``, its fields (with types and
   defaults), ``n_inputs``, ``buffer_fields`` (fields that name buffers), a ``check()`` for its field ranges (call
   the helpers ``_int``, ``_pair``, ``_code_range``, ``_multiplier``) and an ``infer(shapes, buffers)`` returning its
   output shape (per sample, PyTorch layout) after checking its inputs and buffers;
2. one kernel per backend: ``@KERNELS.register(ir.MyOp)`` in each backend module above. A backend that cannot run
   it says so explicitly: the native program registers :func:`.native.program.unsupported` (the model then runs
   on the torch engine), an exporter a function raising ``ModelError``;
3. the converter (:mod:`.convert`) constructs it from the prepared model.

The dict form of an op (``op.to_dict()``, ``op_from_dict``) is what ``.cnz`` files store (``{"op": kind, ...}``,
lists for tuples); files written before the typed IR load through the same validating constructor.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Mapping

import numpy as np

from compactnn.errors import ModelError

__all__ = ["Add", "AvgPool2d", "BACKENDS", "Concat", "Conv2d", "ConvTranspose2d", "ConvTransposeResizeAdd", "Flatten", "GlobalAvgPool", "Kernels", "Linear",
           "MAX_VALUE_ELEMENTS", "MaxPool2d", "OPS", "Op", "ResizeBicubic", "as_op", "check_program", "load_backends", "op_from_dict",
           "register_op"]

#: Largest value (per sample) a program may have: 2^28 elements (a 256 MB uint8 activation per image).
MAX_VALUE_ELEMENTS = 1 << 28
#: Largest kernel / stride / padding / dilation / groups entry accepted (far above any real network).
MAX_GEOMETRY = 1 << 16
ACTIVATIONS = ("none", "relu", "relu6")
INT32_MAX = 2**31 - 1

OPS: dict[str, type["Op"]] = {}
BACKENDS: dict[str, "Kernels"] = {}
#: The modules that register the backends' kernels (imported by :func:`load_backends`).
BACKEND_MODULES = ("reference", "engine", "native.program", "export", "export_exact")


def register_op(cls: type["Op"]) -> type["Op"]:
    """Class decorator: add an op type to the IR (:data:`OPS`, by its ``kind``)."""
    if not cls.kind or cls.kind in OPS:
        raise ValueError(f"op kind {cls.kind!r} is empty or registered twice")
    OPS[cls.kind] = cls
    return cls


# --------------------------------------------------------------------------------------------------- field helpers


class _Bad(Exception):
    """A field problem; :class:`Op` turns it into one ModelError line naming the op."""


def _int(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _Bad(f"{what} must be an integer, got {_show(v)}")
    v = int(v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise _Bad(f"{what} must be {rng}, got {v}")
    return v


def _pair(v: Any, what: str, lo: int, hi: int = MAX_GEOMETRY) -> tuple[int, int]:
    vals = (v, v) if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else v
    if not isinstance(vals, (list, tuple)) or len(vals) != 2:
        raise _Bad(f"{what} must be an integer or a pair of integers, got {_show(v)}")
    return _int(vals[0], what, lo, hi), _int(vals[1], what, lo, hi)


def _name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 256:
        raise _Bad(f"{what} must be a non-empty name of at most 256 characters, got {_show(v)}")
    return v


def _code_range(qmin: Any, qmax: Any) -> tuple[int, int]:
    lo, hi = _int(qmin, "qmin", 0, 255), _int(qmax, "qmax", 0, 255)
    if lo > hi:
        raise _Bad(f"needs qmin <= qmax, got qmin={lo}, qmax={hi}")
    return lo, hi


def _multiplier(m0: Any, shift: Any, what: str) -> tuple[int, int]:
    """A requantization multiplier ``(M0, shift)``: ``M0`` in [0, 2^31), shift in [-31, 31] (positive = left)."""
    return _int(m0, f"{what} M0", 0, INT32_MAX), _int(shift, f"{what} shift", -31, 31)


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _prod(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# --------------------------------------------------------------------------------------------------- ops


@dataclass(frozen=True, kw_only=True)
class Op:
    """Base of the IR ops: ``inputs`` (value names), ``output`` (a value name) and ``name`` (the float layer's name,
    for messages and ``inspect``). Subclasses set ``kind``, ``n_inputs`` (None: one or more) and
    ``buffer_fields``."""

    kind: ClassVar[str] = ""
    n_inputs: ClassVar[int | None] = 1
    buffer_fields: ClassVar[tuple[str, ...]] = ()
    optional_buffers: ClassVar[tuple[str, ...]] = ()
    #: fields of files written by earlier versions that are accepted and dropped (never read)
    legacy_fields: ClassVar[frozenset[str]] = frozenset()
    #: the output keeps the input's scale and zero point (codes pass through: pools, data movement)
    passes_qparams: ClassVar[bool] = False

    inputs: tuple[str, ...]
    output: str
    name: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def _set(self, field: str, value: Any) -> None:
        object.__setattr__(self, field, value)

    @property
    def label(self) -> str:
        """``kind`` and, when known, the layer's name (for messages)."""
        return f"{self.kind} {self.name!r}" if isinstance(self.name, str) and self.name else self.kind

    def validate(self) -> None:
        """Check (and normalize: lists to tuples, NumPy ints to ints) every field; a ModelError names the op."""
        try:
            ins = self.inputs
            if isinstance(ins, str) or not isinstance(ins, (list, tuple)):
                raise _Bad(f"inputs must be a list of value names, got {_show(ins)}")
            if self.n_inputs is not None and len(ins) != self.n_inputs:
                raise _Bad(f"takes {self.n_inputs} input(s), got {len(ins)}")
            if not 1 <= len(ins) <= 1024:
                raise _Bad(f"takes 1 to 1024 inputs, got {len(ins)}")
            self._set("inputs", tuple(_name(v, "an input") for v in ins))
            self._set("output", _name(self.output, "output"))
            if not isinstance(self.name, str) or len(self.name) > 256:
                raise _Bad(f"name must be a string of at most 256 characters, got {_show(self.name)}")
            for f in self.buffer_fields:
                v = getattr(self, f)
                if v is None and f in self.optional_buffers:
                    continue
                self._set(f, _name(v, f"buffer field {f!r}"))
            self.check()
        except _Bad as err:
            raise ModelError(f"integer op {self.label}: {err}") from None

    def check(self) -> None:
        """Check this op's own fields (subclasses)."""

    def infer(self, shapes: list[tuple[int, ...]], buffers: "_Buffers") -> tuple[int, ...]:
        """The output shape (one sample, PyTorch layout) from the input shapes; raises _Bad when they do not fit."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """The JSON form stored in ``.cnz`` files: ``{"op": kind, field: value}`` with lists for tuples."""
        out: dict[str, Any] = {"op": self.kind}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if (f.name in self.optional_buffers and v is None) or (f.name == "name" and v == ""):
                continue  # absent, as in files written before these fields existed
            out[f.name] = _jsonable(v)
        return out

    def buffers(self) -> dict[str, str]:
        """``{field: buffer name}`` of the buffers this op reads."""
        return {f: getattr(self, f) for f in self.buffer_fields if getattr(self, f) is not None}


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(i) for i in v]
    return v


def _geometry(h: int, w: int, k, s, p, d=(1, 1)) -> tuple[int, int]:
    eh, ew = d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1
    if h + 2 * p[0] < eh or w + 2 * p[1] < ew:
        raise _Bad(f"the (dilated) kernel {eh}x{ew} is larger than the padded input {h + 2 * p[0]}x{w + 2 * p[1]}")
    return (h + 2 * p[0] - eh) // s[0] + 1, (w + 2 * p[1] - ew) // s[1] + 1


def _image(shape: tuple, what: str) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise _Bad(f"{what} needs a (C, H, W) input, got shape {shape}")
    return shape


class _Weighted(Op):
    """Fields shared by conv2d and linear."""

    buffer_fields: ClassVar[tuple[str, ...]] = ("weight", "bias", "multiplier", "shift", "weight_scale")
    optional_buffers: ClassVar[tuple[str, ...]] = ("weight_scale",)
    legacy_fields: ClassVar[frozenset[str]] = frozenset({"weight_range"})  # a metadata buffer of earlier builds

    def _check_weighted(self) -> None:
        self._set("qmin", _int(self.qmin, "qmin", 0, 255))
        self._set("qmax", _int(self.qmax, "qmax", 0, 255))
        _code_range(self.qmin, self.qmax)
        if self.activation not in ACTIVATIONS:
            raise _Bad(f"activation must be one of {ACTIVATIONS}, got {_show(self.activation)}")

    def _check_buffers(self, buffers: "_Buffers", o: int) -> None:  # noqa: C901
        buffers.expect(self.bias, "int32", (o,), "bias")
        m = buffers.expect(self.multiplier, "int32", None, "multiplier")
        s = buffers.expect(self.shift, "int32", None, "shift")
        if m.shape not in ((1,), (o,)) or s.shape != m.shape:
            raise _Bad(f"multiplier and shift must both have shape (1,) or ({o},), got {m.shape} and {s.shape}")
        m, s = buffers.values(self.multiplier), buffers.values(self.shift)
        if m.size and (m.min() < 0 or s.min() < -31 or s.max() > 31):
            raise _Bad("multipliers must be in [0, 2^31) and shifts in [-31, 31]")
        if self.weight_scale is not None and buffers.metadata:
            t = buffers.expect(self.weight_scale, ("float32", "float64"), None, "weight_scale")
            v = buffers.values(self.weight_scale)
            if t.shape not in ((1,), (o,)) or not np.all(np.isfinite(v)) or not np.all(v > 0):
                raise _Bad(f"weight_scale must hold 1 or {o} finite positive scales")


@register_op
@dataclass(frozen=True, kw_only=True)
class Conv2d(_Weighted):
    """2-D convolution with fused requantization: int8 weight ``(O, C/groups, kh, kw)``, int32 bias ``(O,)``, int32
    multiplier/shift ``(1,)`` or ``(O,)``; padding uses the input zero point; ``[qmin, qmax]`` is the fused
    activation's clamp in output codes. ``weight_scale`` (float, optional): the weight scales used at conversion
    (metadata: the integer program does not read them)."""

    kind: ClassVar[str] = "conv2d"
    buffer_fields: ClassVar[tuple[str, ...]] = ("weight", "bias", "multiplier", "shift", "weight_scale",
                                                "multiplier_neg", "shift_neg")
    optional_buffers: ClassVar[tuple[str, ...]] = ("weight_scale", "multiplier_neg", "shift_neg")

    weight: str
    bias: str
    multiplier: str
    shift: str
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    activation: str = "none"
    qmin: int = 0
    qmax: int = 255
    weight_scale: str | None = None
    multiplier_neg: str | None = None
    shift_neg: str | None = None

    def check(self) -> None:
        self._set("stride", _pair(self.stride, "stride", 1))
        self._set("padding", _pair(self.padding, "padding", 0))
        self._set("dilation", _pair(self.dilation, "dilation", 1))
        self._set("groups", _int(self.groups, "groups", 1, MAX_GEOMETRY))
        if self.activation not in ACTIVATIONS + ("leaky_relu",):
            raise _Bad(f"activation must be one of {ACTIVATIONS + ('leaky_relu',)}, got {_show(self.activation)}")
        if self.activation == "leaky_relu":
            if self.multiplier_neg is None or self.shift_neg is None:
                raise _Bad("activation 'leaky_relu' needs the buffers multiplier_neg and shift_neg")
            self._set("qmin", _int(self.qmin, "qmin", 0, 255))
            self._set("qmax", _int(self.qmax, "qmax", 0, 255))
            _code_range(self.qmin, self.qmax)
            return
        if self.multiplier_neg is not None or self.shift_neg is not None:
            raise _Bad("multiplier_neg/shift_neg are only read by activation 'leaky_relu'")
        self._check_weighted()

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "conv2d")
        wt = buffers.expect(self.weight, "int8", None, "weight")
        if len(wt.shape) != 4 or min(wt.shape) < 1:
            raise _Bad(f"weight must be a non-empty 4-D (O, C/groups, kh, kw) tensor, got shape {wt.shape}")
        o, cg, kh, kw = wt.shape
        g = self.groups
        if c % g or o % g or c // g != cg:
            raise _Bad(f"groups={g} does not fit {c} input channels and weight shape {wt.shape}")
        if max(kh, kw) > MAX_GEOMETRY:
            raise _Bad(f"kernel {kh}x{kw} is too large")
        ho, wo = _geometry(h, w, (kh, kw), self.stride, self.padding, self.dilation)
        self._check_buffers(buffers, o)
        if self.activation == "leaky_relu":
            _check_neg_multiplier(buffers, self.multiplier, self.multiplier_neg, self.shift_neg)
        return (o, ho, wo)


def _check_neg_multiplier(buffers: "_Buffers", positive: str, m_name: str, s_name: str) -> None:
    m = buffers.expect(m_name, "int32", None, "multiplier_neg")
    s = buffers.expect(s_name, "int32", None, "shift_neg")
    shape = buffers.expect(positive, "int32", None, "multiplier").shape
    if m.shape != shape or s.shape != shape:
        raise _Bad(f"multiplier_neg and shift_neg must have the multiplier's shape {shape}, got {m.shape} and "
                   f"{s.shape}")
    m, s = buffers.values(m_name), buffers.values(s_name)
    if m.size and (m.min() < 0 or s.min() < -31 or s.max() > 31):
        raise _Bad("multipliers must be in [0, 2^31) and shifts in [-31, 31]")


@register_op
@dataclass(frozen=True, kw_only=True)
class ConvTranspose2d(_Weighted):
    """2-D transposed convolution (groups 1) with fused requantization: int8 weight ``(C, O, kh, kw)`` (PyTorch's
    and Caffe's layout), int32 bias ``(O,)``, multiplier/shift ``(1,)`` or ``(O,)``.

    Reading (the definition, :func:`.reference.conv_transpose2d_acc`): the full output has ``(h − 1)·s + kh`` rows;
    input pixel ``i`` adds ``(q[i] − Z_in)·w[k]`` to full row ``i·s + k``. Rows that no input pixel reaches get 0
    (plus the bias): out-of-range contributions are 0 in the ``(q − Z)`` domain, never the code 0. The op's
    output is the full output without ``padding`` rows/columns at the top/left and ``padding_end`` at the
    bottom/right: ``Ho = (h − 1)·s + kh − pt − pb`` (PyTorch's ``padding=p`` is ``padding = padding_end = p``;
    IDN's ``padding = 9 − s`` then cut to ``h·s`` rows is ``padding_end = 8``). ``activation`` as conv2d's
    (``none``/``relu``/``relu6`` clamp ranges; no leaky form here)."""

    kind: ClassVar[str] = "conv_transpose2d"

    weight: str
    bias: str
    multiplier: str
    shift: str
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    padding_end: tuple[int, int] = (0, 0)
    activation: str = "none"
    qmin: int = 0
    qmax: int = 255
    weight_scale: str | None = None

    def check(self) -> None:
        self._set("stride", _pair(self.stride, "stride", 1))
        self._set("padding", _pair(self.padding, "padding", 0))
        self._set("padding_end", _pair(self.padding_end, "padding_end", 0))
        self._check_weighted()

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "conv_transpose2d")
        wt = buffers.expect(self.weight, "int8", None, "weight")
        if len(wt.shape) != 4 or min(wt.shape) < 1:
            raise _Bad(f"weight must be a non-empty 4-D (C, O, kh, kw) tensor, got shape {wt.shape}")
        ci, o, kh, kw = wt.shape
        if ci != c:
            raise _Bad(f"weight shape {wt.shape} does not fit {c} input channels")
        if max(kh, kw) > MAX_GEOMETRY:
            raise _Bad(f"kernel {kh}x{kw} is too large")
        ho = (h - 1) * self.stride[0] + kh - self.padding[0] - self.padding_end[0]
        wo = (w - 1) * self.stride[1] + kw - self.padding[1] - self.padding_end[1]
        if ho < 1 or wo < 1:
            raise _Bad(f"the paddings {self.padding}/{self.padding_end} remove the whole {h}x{w} -> "
                       f"{(h - 1) * self.stride[0] + kh}x{(w - 1) * self.stride[1] + kw} output")
        self._check_buffers(buffers, o)
        return (o, ho, wo)


#: Largest ``2·weight_bits − mid_shift`` of resize_bicubic: 255 · 1.25² · 2^22 < 2^31 (bicubic taps with
#: a = −0.5 have Σ|w| <= 1.1875 per output sample, so every intermediate fits int32).
RESIZE_MAX_GAIN_BITS = 22


@register_op
@dataclass(frozen=True, kw_only=True)
class ResizeBicubic(Op):
    """MATLAB ``imresize(x, scale, 'bicubic')`` upscaling (integer ``scale``; a = −0.5, symmetric padding) on integer
    codes, separable, rows first, with fixed-point weights.

    Reading (the definition, :func:`.reference.resize_bicubic`): the taps and weights of each output row/column are
    MATLAB's (:func:`compactnn.sr.matlab.contributions`, weights of mirrored indices summed), the weights rounded to
    ``weight_bits`` fractional bits (half away from zero; then the largest weight of each output sample is corrected
    so that each row of weights sums to exactly ``2^weight_bits``, so flat images stay flat);
    ``t = RDBPOT(Σ W_r·(q − Z_in), mid_shift)`` (rows), ``acc = Σ W_c·t`` (columns), then
    ``clamp(MBQM(acc, multiplier, shift) + Z_out, qmin, qmax)`` with ``multiplier ≈ S_in / (S_out ·
    2^(2·weight_bits − mid_shift))``. The tables depend only on the input size and ``scale`` (geometry, like a
    conv's padding), so one op serves every image size."""

    kind: ClassVar[str] = "resize_bicubic"

    scale: int
    multiplier: int
    shift: int
    weight_bits: int = 14
    mid_shift: int = 6
    qmin: int = 0
    qmax: int = 255

    def check(self) -> None:
        self._set("scale", _int(self.scale, "scale", 1, 16))
        m, s = _multiplier(self.multiplier, self.shift, "output")
        self._set("multiplier", m)
        self._set("shift", s)
        self._set("weight_bits", _int(self.weight_bits, "weight_bits", 1, 16))
        self._set("mid_shift", _int(self.mid_shift, "mid_shift", 0, 31))
        if 2 * self.weight_bits - self.mid_shift > RESIZE_MAX_GAIN_BITS or self.mid_shift > self.weight_bits:
            raise _Bad(f"needs mid_shift <= weight_bits and 2*weight_bits - mid_shift <= {RESIZE_MAX_GAIN_BITS} (int32 "
                       f"intermediates), got weight_bits={self.weight_bits}, mid_shift={self.mid_shift}")
        self._set("qmin", _int(self.qmin, "qmin", 0, 255))
        self._set("qmax", _int(self.qmax, "qmax", 0, 255))
        _code_range(self.qmin, self.qmax)

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "resize_bicubic")
        return (c, h * self.scale, w * self.scale)


@register_op
@dataclass(frozen=True, kw_only=True)
class ConvTransposeResizeAdd(ConvTranspose2d):
    """A super-resolution output layer: ``conv_transpose2d`` of input 0 (the features) plus ``resize_bicubic`` of
    input 1 (the low-resolution image), added before the one rounding to output codes.

    Reading (the definition, :func:`.reference.conv_transpose_resize_add`): ``acc_t`` = the transposed conv's int32
    accumulators (with the bias, as :class:`ConvTranspose2d`), ``acc_b`` = the bicubic's int32 accumulators (as
    :class:`ResizeBicubic`, before its requantization); ``u = sat32(MBQM(acc_t, multiplier, shift) +
    MBQM(acc_b, resize_multiplier, resize_shift))``, both multipliers scaled to output codes times ``2^frac_bits``;
    ``y = clamp(RDBPOT(u, frac_bits) + Z_out, qmin, qmax)``. So neither branch is rounded to uint8 on its own (two
    uint8 intermediates, each with its own rounding, would add up to one output code of error); the only 8-bit
    rounding is the output's, which the super-resolution protocol applies to its float output anyway. The
    transposed conv's output must have the bicubic's shape (``O`` = the image's channels, ``h·scale`` rows).

    ``planes = 2``: the image input holds ``2·O`` channels, a coarse plane (channels ``0..O``) and a fine plane
    (``O..2O``, e.g. the fraction of a code times 255, so that image = coarse + fine/255 in coarse codes); the fine
    plane's bicubic accumulators (of ``q − fine_zero_point``) are added with ``(fine_multiplier, fine_shift)``:
    ``u = sat32(MBQM(acc_t) + MBQM(acc_b0) + MBQM(acc_b1, fine_multiplier, fine_shift))``. This gives the bicubic
    branch a 16-bit input (an uint8 low-resolution image has a zero fine plane)."""

    kind: ClassVar[str] = "conv_transpose2d_resize_add"
    n_inputs: ClassVar[int | None] = 2

    scale: int = 2
    resize_multiplier: int = 0
    resize_shift: int = 0
    weight_bits: int = 14
    mid_shift: int = 6
    frac_bits: int = 8
    planes: int = 1
    fine_multiplier: int = 0
    fine_shift: int = 0
    fine_zero_point: int = 0

    def check(self) -> None:
        super().check()
        self._set("scale", _int(self.scale, "scale", 1, 16))
        m, s = _multiplier(self.resize_multiplier, self.resize_shift, "resize")
        self._set("resize_multiplier", m)
        self._set("resize_shift", s)
        self._set("planes", _int(self.planes, "planes", 1, 2))
        m, s = _multiplier(self.fine_multiplier, self.fine_shift, "fine")
        self._set("fine_multiplier", m)
        self._set("fine_shift", s)
        self._set("fine_zero_point", _int(self.fine_zero_point, "fine_zero_point", 0, 255))
        self._set("weight_bits", _int(self.weight_bits, "weight_bits", 1, 16))
        self._set("mid_shift", _int(self.mid_shift, "mid_shift", 0, 31))
        self._set("frac_bits", _int(self.frac_bits, "frac_bits", 0, 16))
        if 2 * self.weight_bits - self.mid_shift > RESIZE_MAX_GAIN_BITS or self.mid_shift > self.weight_bits:
            raise _Bad(f"needs mid_shift <= weight_bits and 2*weight_bits - mid_shift <= {RESIZE_MAX_GAIN_BITS} (int32 "
                       f"intermediates), got weight_bits={self.weight_bits}, mid_shift={self.mid_shift}")
        if self.activation != "none":
            raise _Bad(f"activation must be 'none' here, got {_show(self.activation)}")

    def infer(self, shapes, buffers):
        out = super().infer(shapes[:1], buffers)
        c, h, w = _image(shapes[1], "the image input")
        if c % self.planes or out != (c // self.planes, h * self.scale, w * self.scale):
            raise _Bad(f"the transposed conv gives {out} but the x{self.scale} bicubic of {shapes[1]} "
                       f"({self.planes} plane(s)) gives {(c // self.planes, h * self.scale, w * self.scale)}")
        return out


@register_op
@dataclass(frozen=True, kw_only=True)
class Linear(_Weighted):
    """Fully connected layer with fused requantization: int8 weight ``(O, F)`` for an input of ``F`` features
    (exactly; a narrower or wider weight is an error), buffers and clamp as :class:`Conv2d`. The input is ``(F,)``
    or ``(T, F)`` (applied to each of the ``T`` rows, as ``nn.Linear`` on a token sequence)."""

    kind: ClassVar[str] = "linear"

    weight: str
    bias: str
    multiplier: str
    shift: str
    activation: str = "none"
    qmin: int = 0
    qmax: int = 255
    weight_scale: str | None = None

    def check(self) -> None:
        self._check_weighted()

    def infer(self, shapes, buffers):
        if len(shapes[0]) not in (1, 2):
            raise _Bad(f"linear needs a flat (F,) or token (T, F) input, got shape {shapes[0]}; flatten it first")
        f = shapes[0][-1]
        wt = buffers.expect(self.weight, "int8", None, "weight")
        if len(wt.shape) != 2 or wt.shape[0] < 1 or wt.shape[1] != f:
            raise _Bad(f"weight must have shape (O, {f}) for an input of {f} features, got {wt.shape}")
        self._check_buffers(buffers, wt.shape[0])
        return (*shapes[0][:-1], wt.shape[0])


@register_op
@dataclass(frozen=True, kw_only=True)
class MaxPool2d(Op):
    """Max pooling on codes (no requantization); padding at most half the kernel (padded cells never win)."""

    kind: ClassVar[str] = "max_pool2d"

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)

    def check(self) -> None:
        self._set("kernel", _pair(self.kernel, "kernel", 1))
        self._set("stride", _pair(self.stride, "stride", 1))
        self._set("padding", _pair(self.padding, "padding", 0))
        if self.padding[0] > self.kernel[0] // 2 or self.padding[1] > self.kernel[1] // 2:
            raise _Bad(f"padding {self.padding} must be at most half the kernel {self.kernel}")

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "max_pool2d")
        return (c, *_geometry(h, w, self.kernel, self.stride, self.padding))


@register_op
@dataclass(frozen=True, kw_only=True)
class AvgPool2d(Op):
    """Average pooling without padding, TFLite rounding ``(sum + count/2) // count``."""

    kind: ClassVar[str] = "avg_pool2d"

    kernel: tuple[int, int]
    stride: tuple[int, int]

    def check(self) -> None:
        self._set("kernel", _pair(self.kernel, "kernel", 1))
        self._set("stride", _pair(self.stride, "stride", 1))

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "avg_pool2d")
        return (c, *_geometry(h, w, self.kernel, self.stride, (0, 0)))


@register_op
@dataclass(frozen=True, kw_only=True)
class GlobalAvgPool(Op):
    """Mean over H and W with TFLite rounding: ``(C, H, W) -> (C, 1, 1)``."""

    kind: ClassVar[str] = "global_avg_pool"

    def infer(self, shapes, buffers):
        c, h, w = _image(shapes[0], "global_avg_pool")
        return (c, 1, 1)


@register_op
@dataclass(frozen=True, kw_only=True)
class Flatten(Op):
    """``(C, H, W) -> (C·H·W,)`` in PyTorch (NCHW) order; scale and zero point pass through."""

    kind: ClassVar[str] = "flatten"

    def infer(self, shapes, buffers):
        return (_prod(shapes[0]),)


@register_op
@dataclass(frozen=True, kw_only=True)
class Add(Op):
    """TFLite's quantized Add of two values of one shape: each input rescaled by ``(multiplier_x, shift_x)`` after a
    left shift of ``left_shift``, the sum by ``(multiplier_out, shift_out)``, then clamped to ``[qmin, qmax]``."""

    kind: ClassVar[str] = "add"
    n_inputs: ClassVar[int | None] = 2

    multiplier_a: int
    shift_a: int
    multiplier_b: int
    shift_b: int
    multiplier_out: int
    shift_out: int
    left_shift: int = 20
    activation: str = "none"
    qmin: int = 0
    qmax: int = 255

    def check(self) -> None:
        for side in ("a", "b", "out"):
            m, s = _multiplier(getattr(self, f"multiplier_{side}"), getattr(self, f"shift_{side}"), f"input {side}"
                               if side != "out" else "output")
            self._set(f"multiplier_{side}", m)
            self._set(f"shift_{side}", s)
        self._set("left_shift", _int(self.left_shift, "left_shift", 0, 23))
        self._set("qmin", _int(self.qmin, "qmin", 0, 255))
        self._set("qmax", _int(self.qmax, "qmax", 0, 255))
        _code_range(self.qmin, self.qmax)
        if self.activation not in ACTIVATIONS:
            raise _Bad(f"activation must be one of {ACTIVATIONS}, got {_show(self.activation)}")

    def infer(self, shapes, buffers):
        if shapes[0] != shapes[1]:
            raise _Bad(f"adds values of different shapes {shapes[0]} and {shapes[1]}")
        return shapes[0]


@register_op
@dataclass(frozen=True, kw_only=True)
class Concat(Op):
    """Channel concatenation (``axis`` 1) into one output scale: input ``i`` is requantized with
    ``multipliers[i] = (M0, shift)`` of ``s_i/s_out`` (or passes through when None: same scale and zero point)."""

    kind: ClassVar[str] = "concat"
    n_inputs: ClassVar[int | None] = None

    multipliers: tuple[tuple[int, int] | None, ...]
    axis: int = 1
    left_shift: int = 20
    qmin: int = 0
    qmax: int = 255

    def check(self) -> None:
        ms = self.multipliers
        if not isinstance(ms, (list, tuple)) or len(ms) != len(self.inputs):
            raise _Bad(f"needs one multiplier (or null) per input, got {_show(ms)}")
        out = []
        for i, m in enumerate(ms):
            if m is None:
                out.append(None)
            elif isinstance(m, (list, tuple)) and len(m) == 2:
                out.append(_multiplier(m[0], m[1], f"multipliers[{i}]"))
            else:
                raise _Bad(f"multipliers[{i}] must be [M0, shift] or null, got {_show(m)}")
        self._set("multipliers", tuple(out))
        self._set("axis", _int(self.axis, "axis", 1, 1))
        self._set("left_shift", _int(self.left_shift, "left_shift", 0, 23))
        self._set("qmin", _int(self.qmin, "qmin", 0, 255))
        self._set("qmax", _int(self.qmax, "qmax", 0, 255))
        _code_range(self.qmin, self.qmax)

    def infer(self, shapes, buffers):
        first = shapes[0]
        if len(first) not in (1, 3):
            raise _Bad(f"concatenates channels of (F,) or (C, H, W) values only, got shape {first}")
        for s in shapes[1:]:
            if len(s) != len(first) or s[1:] != first[1:]:
                raise _Bad(f"inputs of shapes {shapes} do not fit along the channel axis")
        return (sum(s[0] for s in shapes), *first[1:])


# --------------------------------------------------------------------------------------------------- dict form


def op_from_dict(d: Any) -> Op:
    """Build (and validate) an op from its dict form ``{"op": kind, ...}``: the form ``.cnz`` files store."""
    if isinstance(d, Op):
        return d
    if not isinstance(d, Mapping):
        raise ModelError(f"an integer op must be a mapping with an 'op' key, got {_show(d)}")
    kind = d.get("op")
    cls = OPS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelError(f"unknown integer op {_show(kind)}; known: {', '.join(OPS)} (was the model built by a newer "
                         "compactnn?)")
    names = {f.name for f in dataclasses.fields(cls)}
    d = {k: v for k, v in d.items() if k not in cls.legacy_fields}
    extra = set(d) - names - {"op"}
    if extra:
        raise ModelError(f"integer op {kind}: unknown field(s) {sorted(map(str, extra))[:5]}; known: {sorted(names)}")
    try:
        return cls(**{k: v for k, v in d.items() if k != "op"})
    except TypeError as err:  # a missing required field
        raise ModelError(f"integer op {kind}: {str(err).split(': ', 1)[-1]}") from None


def as_op(v: Any) -> Op:
    """An :class:`Op` from an op or its dict form."""
    return op_from_dict(v)


# --------------------------------------------------------------------------------------------------- programs


class _Buffers:
    """Read-only view of a model's buffers for checks (shape, dtype, small values)."""

    def __init__(self, buffers: Mapping[str, Any], metadata: bool = True) -> None:
        self.b, self.metadata = buffers, metadata

    def _get(self, name: str, what: str):
        t = self.b.get(name) if isinstance(name, str) else None
        if t is None:
            raise _Bad(f"{what} names buffer {_show(name)}, which the model does not have")
        return t

    def expect(self, name: str, dtypes, shape, what: str):
        t = self._get(name, what)
        dt = str(t.dtype).replace("torch.", "")
        ok = (dtypes,) if isinstance(dtypes, str) else dtypes
        if dt not in ok:
            raise _Bad(f"{what} buffer {name!r} must have dtype {' or '.join(ok)}, got {dt}")
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise _Bad(f"{what} buffer {name!r} must have shape {tuple(shape)}, got {tuple(t.shape)}")
        return _Shape(tuple(int(s) for s in t.shape))

    def values(self, name: str) -> np.ndarray:
        t = self.b[name]
        if hasattr(t, "numpy"):  # a buffer (CPU, no grad): .numpy() shares its memory and runs no torch op
            return t.numpy() if not t.requires_grad and t.device.type == "cpu" else t.detach().cpu().numpy()
        return np.asarray(t)


class _Shape:
    def __init__(self, shape: tuple) -> None:
        self.shape = shape


def _check_qvalue(name: str, info: Any) -> tuple[float, int]:
    if not isinstance(info, Mapping):
        raise _Bad(f"value {name!r} must be a mapping with scale, zero_point and dtype, got {_show(info)}")
    s, z = info.get("scale"), info.get("zero_point")
    if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)) or not (
            math.isfinite(float(s)) and float(s) > 0):
        raise _Bad(f"value {name!r} has scale {_show(s)}; scales must be finite and positive")
    z = _int(z, f"value {name!r} zero_point", 0, 255)
    if info.get("dtype", "uint8") != "uint8":
        raise _Bad(f"value {name!r} has dtype {_show(info.get('dtype'))}; only uint8 values are supported")
    return float(s), z


def check_program(model, metadata: bool = True) -> dict[str, tuple[int, ...]]:
    """Validate a whole integer program and return every value's shape (one sample, PyTorch layout).

    Checks: the input shape, every value's scale (finite, > 0) and zero point ([0, 255]), the input/output entries,
    every op again (fields, as :meth:`Op.validate`), that each op reads values already computed and writes a new one
    with an entry in ``values``, that its input shapes fit it (kernels no larger than the padded input, groups that
    divide the channels, a linear weight exactly as wide as its input, ...), that the buffers it names exist with
    the right dtype and shape, multipliers in range, and that no value exceeds :data:`MAX_VALUE_ELEMENTS`.

    Args:
        model: an ``IntegerModel`` (or an object with ``input_shape``, ``input``, ``output``, ``values``, ``ops``
            and its buffers via ``named_buffers()`` or attributes).
        metadata: also check the float metadata the program does not read (stored weight scales). The engines
            pass False: their check runs between the input quantize and the output dequantize, where no float
            tensor is touched.

    Raises:
        ModelError: one line naming the first problem.
    """
    try:
        return _check_program(model, metadata)
    except _Bad as err:
        raise ModelError(f"invalid integer model: {err}") from None


def _check_program(model, metadata: bool) -> dict[str, tuple[int, ...]]:
    shape_in = getattr(model, "input_shape", None)
    if not isinstance(shape_in, (list, tuple)) or len(shape_in) not in (1, 3):
        raise _Bad(f"input_shape must be (C, H, W) or (F,), got {_show(shape_in)}")
    shape_in = tuple(_int(s, "input_shape entry", 1, MAX_VALUE_ELEMENTS) for s in shape_in)
    if _prod(shape_in) > MAX_VALUE_ELEMENTS:
        raise _Bad(f"input_shape {shape_in} has more than {MAX_VALUE_ELEMENTS} elements")
    values = getattr(model, "values", None)
    if not isinstance(values, Mapping) or len(values) > 100_000:
        raise _Bad("values must be a mapping of value names to scale/zero_point entries")
    qp = {}
    for k, v in values.items():
        qp[_name(k, "a value name")] = _check_qvalue(k, v)
    ends = {}
    for end in ("input", "output"):
        e = getattr(model, end, None)
        if not isinstance(e, Mapping) or not isinstance(e.get("value"), str) or e["value"] not in qp:
            raise _Bad(f"{end} must name a value in values, got {_show(e)}")
        s, z = _check_qvalue(end, e)
        if end == "input" and "qmax" in e:  # 7-bit activations: the input quantizer's highest code
            _int(e["qmax"], "input qmax", max(z, 1), 255)
        if (s, z) != qp[e["value"]]:
            raise _Bad(f"{end} scale/zero point {(s, z)} differ from those of value {e['value']!r} {qp[e['value']]}")
        ends[end] = e["value"]
    ops = getattr(model, "ops", None)
    if not isinstance(ops, (list, tuple)) or len(ops) > 100_000:
        raise _Bad("ops must be a list of integer ops")
    if hasattr(model, "named_buffers"):
        bufs = dict(model.named_buffers())
    else:
        bufs = {n: getattr(model, n) for op in ops if isinstance(op, Op) for n in op.buffers().values()
                if hasattr(model, n)}
    buffers = _Buffers(bufs, metadata)
    shapes: dict[str, tuple[int, ...]] = {ends["input"]: shape_in}
    for i, op in enumerate(ops):
        if not isinstance(op, Op) or type(op) not in OPS.values():
            raise _Bad(f"op {i} is a {type(op).__name__}, not an integer op of the IR")
        try:
            op.validate()  # again: an op object may have been altered since it was built
        except ModelError as err:
            raise _Bad(f"op {i}: {str(err).removeprefix('integer op ')}") from None
        try:
            for v in op.inputs:
                if v not in shapes:
                    raise _Bad(f"reads value {v!r}, which no earlier op computes")
            if op.output in shapes:
                raise _Bad(f"writes value {op.output!r}, which is already computed")
            if op.output not in qp:
                raise _Bad(f"writes value {op.output!r}, which has no entry (scale, zero point) in values")
            if isinstance(op, Concat):
                for v, m in zip(op.inputs, op.multipliers):
                    if m is None and qp[v][1] != qp[op.output][1]:
                        raise _Bad(f"input {v!r} passes through (no multiplier) but its zero point differs from "
                                   "the output's")
            if (op.passes_qparams or type(op) in (MaxPool2d, AvgPool2d, GlobalAvgPool, Flatten)) and \
                    qp[op.inputs[0]] != qp[op.output]:
                raise _Bad("must keep its input's scale and zero point")
            out = tuple(int(s) for s in op.infer([shapes[v] for v in op.inputs], buffers))
            if min(out, default=1) < 1 or _prod(out) > MAX_VALUE_ELEMENTS:
                raise _Bad(f"output shape {out} is empty or larger than {MAX_VALUE_ELEMENTS} elements")
        except _Bad as err:
            raise _Bad(f"op {i} ({op.label}): {err}") from None
        shapes[op.output] = out
    if ends["output"] not in shapes:
        raise _Bad(f"the output value {ends['output']!r} is never computed")
    return shapes


# --------------------------------------------------------------------------------------------------- backends


class Kernels:
    """One backend's kernel table: op type -> kernel. Each backend module creates one and registers a kernel for
    every op type (``@KERNELS.register(ir.Conv2d)``); :meth:`get` raises a ModelError naming a missing one."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.table: dict[type[Op], Callable] = {}
        BACKENDS[backend] = self

    def register(self, *op_types: type[Op]) -> Callable:
        """Decorator registering the function for the given op types."""
        for t in op_types:
            if t not in OPS.values():
                raise ValueError(f"{t!r} is not a registered IR op type")

        def deco(fn: Callable) -> Callable:
            for t in op_types:
                self.table[t] = fn
            return fn

        return deco

    def get(self, op: Op) -> Callable:
        fn = self.table.get(type(op))
        if fn is None:
            raise ModelError(f"the {self.backend} backend has no kernel for integer op {op.kind!r}")
        return fn

    def missing(self) -> list[str]:
        """Kinds of the registered op types without a kernel here."""
        return [k for k, t in OPS.items() if t not in self.table]


def load_backends() -> dict[str, Kernels]:
    """Import every backend module (so their tables are filled) and return :data:`BACKENDS`."""
    import importlib

    for mod in BACKEND_MODULES:
        importlib.import_module(f"{__package__}.{mod}")
    return BACKENDS


# the more ops (data movement, lookup tables, mul) register themselves into OPS; re-exported here as ir.<Op>
from .ir_more import Lut, Mul, Pad, Permute, Reshape, Slice, Softmax  # noqa: E402

__all__ += ["Lut", "Mul", "Pad", "Permute", "Reshape", "Slice", "Softmax"]
