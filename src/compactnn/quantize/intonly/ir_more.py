"""More ops of the integer IR (:mod:`.ir`): data movement, lookup tables and the elementwise product.

- **Data movement** (``permute``, ``reshape``, ``slice``, ``pad``): codes pass through unchanged, so the output
  keeps the input's scale and zero point (checked by :func:`.ir.check_program`). Shapes are per sample (PyTorch
  layout, batch excluded); axes count the batch as axis 0, as :class:`.ir.Concat` does, so ``axis=1`` is the
  channels. The converter lowers ``transpose``/``permute``, ``view``/``reshape``/``flatten``/``squeeze``/
  ``unsqueeze``, slicing (``x[:, a:b]``, ``x[..., ::2]``, ``narrow``) and a constant zero ``F.pad`` to them.
- **lut**: a 256-entry uint8 table (a buffer) mapping input codes to output codes, built at conversion from the float
  function: ``table[q] = clamp(round(f(S_in·(q − Z_in)) / S_out) + Z_out, 0, 255)`` (float64, round half away from
  zero). Exact by construction in every backend; ``function`` names the float function (metadata for messages and
  the qlinear export).
- **mul**: TFLite's quantized ``Mul`` (``MulElementwise``/``BroadcastMul4DSlow``, uint8):
  ``clamp(MBQM((q_a − Z_a)·(q_b − Z_b), M0, shift) + Z_out, qmin, qmax)`` with ``(M0, shift)`` the multiplier of
  ``M = S_a·S_b/S_out`` (:func:`.fixedpoint.quantize_multiplier`). The inputs have the same rank and broadcast
  NumPy-style (each dimension equal or 1), e.g. an SE gate ``(C, 1, 1)`` times features ``(C, H, W)``.

Values of rank 3 are images: the fast engines keep them channels-last internally (see :mod:`.engine`), which these
ops handle; :class:`.ir.Linear` also takes ``(T, F)`` values (a token-wise linear layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .ir import (ACTIVATIONS, MAX_GEOMETRY, MAX_VALUE_ELEMENTS, Op, _Bad, _code_range, _int, _multiplier, _prod,
                 _show, register_op)

__all__ = ["LUT_FUNCTIONS", "Lut", "MAX_RANK", "Mul", "Pad", "Permute", "Reshape", "Slice"]

#: Largest per-sample rank of a value these ops produce (PyTorch tensors of up to 7 dimensions with the batch).
MAX_RANK = 6
#: Float functions a lookup table may be built from (``""``: not recorded).
LUT_FUNCTIONS = ("", "sigmoid", "tanh", "hardswish", "hardsigmoid", "silu", "gelu", "gelu_tanh", "leaky_relu", "relu",
                 "relu6", "scale", "custom")


def _ints(v, what: str, lo: int, hi: int, min_len: int, max_len: int) -> tuple[int, ...]:
    if not isinstance(v, (list, tuple)) or not min_len <= len(v) <= max_len:
        raise _Bad(f"{what} must be a list of {min_len} to {max_len} integers, got {_show(v)}")
    return tuple(_int(x, f"{what} entry", lo, hi) for x in v)


def _axis_of(axis: int, shape: tuple, what: str) -> int:
    if axis > len(shape):
        raise _Bad(f"{what} axis {axis} is beyond the input's {len(shape)} dimension(s) (shape {shape}; axis 0 is "
                   "the batch)")
    return shape[axis - 1]


@register_op
@dataclass(frozen=True, kw_only=True)
class Permute(Op):
    """Permute the axes: ``dims`` as ``torch.permute`` with the batch included (``dims[0] == 0``)."""

    kind: ClassVar[str] = "permute"
    passes_qparams: ClassVar[bool] = True

    dims: tuple[int, ...]

    def check(self) -> None:
        d = _ints(self.dims, "dims", 0, MAX_RANK, 2, MAX_RANK + 1)
        if sorted(d) != list(range(len(d))) or d[0] != 0:
            raise _Bad(f"dims must be a permutation of 0..{len(d) - 1} that keeps the batch first, got {d}")
        self._set("dims", d)

    def infer(self, shapes, buffers):
        s = shapes[0]
        if len(s) + 1 != len(self.dims):
            raise _Bad(f"dims {self.dims} do not fit an input of shape {s} (batch included: {len(s) + 1} axes)")
        return tuple(s[d - 1] for d in self.dims[1:])


@register_op
@dataclass(frozen=True, kw_only=True)
class Reshape(Op):
    """Reshape one sample to ``shape`` (same number of elements, PyTorch (row-major) order)."""

    kind: ClassVar[str] = "reshape"
    passes_qparams: ClassVar[bool] = True

    shape: tuple[int, ...]

    def check(self) -> None:
        self._set("shape", _ints(self.shape, "shape", 1, MAX_VALUE_ELEMENTS, 1, MAX_RANK))

    def infer(self, shapes, buffers):
        if _prod(self.shape) != _prod(shapes[0]):
            raise _Bad(f"cannot reshape {shapes[0]} ({_prod(shapes[0])} elements) to {self.shape}")
        return self.shape


@register_op
@dataclass(frozen=True, kw_only=True)
class Slice(Op):
    """``x[..., start:stop:step]`` along ``axis`` (>= 1; 0 is the batch), with ``0 <= start < stop <= size`` and
    ``step >= 1`` (the converter resolves negative and open bounds)."""

    kind: ClassVar[str] = "slice"
    passes_qparams: ClassVar[bool] = True

    axis: int
    start: int
    stop: int
    step: int = 1

    def check(self) -> None:
        self._set("axis", _int(self.axis, "axis", 1, MAX_RANK))
        self._set("start", _int(self.start, "start", 0, MAX_VALUE_ELEMENTS))
        self._set("stop", _int(self.stop, "stop", 1, MAX_VALUE_ELEMENTS))
        self._set("step", _int(self.step, "step", 1, MAX_VALUE_ELEMENTS))
        if self.start >= self.stop:
            raise _Bad(f"needs start < stop, got start={self.start}, stop={self.stop}")

    def infer(self, shapes, buffers):
        s = shapes[0]
        size = _axis_of(self.axis, s, "slice")
        if self.stop > size:
            raise _Bad(f"stop {self.stop} is beyond the size {size} of axis {self.axis} (input shape {s})")
        out = list(s)
        out[self.axis - 1] = len(range(self.start, self.stop, self.step))
        return tuple(out)


@register_op
@dataclass(frozen=True, kw_only=True)
class Pad(Op):
    """Pad ``axis`` (>= 1) with ``before`` and ``after`` cells of real 0, i.e. the input's zero point (a constant
    zero ``F.pad``, e.g. the channel padding of ResNet "option A" shortcuts)."""

    kind: ClassVar[str] = "pad"
    passes_qparams: ClassVar[bool] = True

    axis: int
    before: int
    after: int

    def check(self) -> None:
        self._set("axis", _int(self.axis, "axis", 1, MAX_RANK))
        self._set("before", _int(self.before, "before", 0, MAX_GEOMETRY))
        self._set("after", _int(self.after, "after", 0, MAX_GEOMETRY))

    def infer(self, shapes, buffers):
        s = shapes[0]
        size = _axis_of(self.axis, s, "pad")
        out = list(s)
        out[self.axis - 1] = size + self.before + self.after
        return tuple(out)


@register_op
@dataclass(frozen=True, kw_only=True)
class Lut(Op):
    """Elementwise lookup table: ``y = table[x]`` with ``table`` a uint8 buffer of 256 output codes (see the module
    docstring for how the converter builds it); ``function`` names the float function it was built from."""

    kind: ClassVar[str] = "lut"
    buffer_fields: ClassVar[tuple[str, ...]] = ("table",)

    table: str
    function: str = ""

    def check(self) -> None:
        if self.function not in LUT_FUNCTIONS:
            raise _Bad(f"function must be one of {LUT_FUNCTIONS[1:]}, got {_show(self.function)}")

    def infer(self, shapes, buffers):
        buffers.expect(self.table, "uint8", (256,), "table")
        return shapes[0]


@register_op
@dataclass(frozen=True, kw_only=True)
class Mul(Op):
    """TFLite's quantized elementwise ``Mul`` (see the module docstring) of two values of one rank that broadcast
    (each dimension equal, or 1 in one of them); ``[qmin, qmax]`` is a fused activation's clamp in output codes."""

    kind: ClassVar[str] = "mul"
    n_inputs: ClassVar[int | None] = 2

    multiplier: int
    shift: int
    activation: str = "none"
    qmin: int = 0
    qmax: int = 255

    def check(self) -> None:
        m, s = _multiplier(self.multiplier, self.shift, "output")
        self._set("multiplier", m)
        self._set("shift", s)
        self._set("qmin", _int(self.qmin, "qmin", 0, 255))
        self._set("qmax", _int(self.qmax, "qmax", 0, 255))
        _code_range(self.qmin, self.qmax)
        if self.activation not in ACTIVATIONS:
            raise _Bad(f"activation must be one of {ACTIVATIONS}, got {_show(self.activation)}")

    def infer(self, shapes, buffers):
        a, b = shapes
        if len(a) != len(b) or any(x != y and 1 not in (x, y) for x, y in zip(a, b)):
            raise _Bad(f"multiplies values of shapes {a} and {b}, which do not broadcast (same rank, each dimension "
                       "equal or 1)")
        return tuple(max(x, y) for x, y in zip(a, b))
