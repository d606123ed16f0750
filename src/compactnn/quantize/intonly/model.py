"""The integer model: a straight-line program of typed integer ops (:mod:`.ir`; ``docs/integer_ir.md``).

``forward`` quantizes its float input once, runs every op on integer codes only (``run_int``) and dequantizes once.
``engine="reference"`` interprets the ops with the NumPy int64 kernels of :mod:`.reference` (the definition);
``engine="fast"`` with the torch int8 kernels of :mod:`.engine`. They agree bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from compactnn.errors import ModelError, PackError
from compactnn.pack.spec import packable

from . import ir
from . import reference as ref
from .reduce import check_input_codes

__all__ = ["IntegerModel", "derived_weight_scales", "run_reference", "weight_scales"]

ENGINES = ("fast", "reference")


@packable
class IntegerModel(nn.Module):
    """Integer-arithmetic-only model (uint8 activations, int8 weights, int32 bias and accumulators).

    Args:
        input_shape: ``(C, H, W)`` of one input (or ``(F,)`` for a flat input).
        input: ``{"value", "scale", "zero_point"}`` of the input.
        output: ``{"value", "scale", "zero_point"}`` of the output.
        values: ``{name: {"scale", "zero_point", "dtype": "uint8"}}`` for every value.
        ops: the ops, in execution order: :mod:`.ir` op objects or their dict form (validated either way).
        tensors: the ops' buffers by name (int8 weights, int32 bias/multiplier/shift, float weight scales).
        engine: ``"fast"`` (torch int8 kernels) or ``"reference"`` (NumPy int64).

    Raises:
        ModelError: the program is invalid (see :func:`.ir.check_program`).

    ``ops`` is a tuple of frozen :mod:`.ir` ops; assigning a list (of ops or dicts) validates each op. The ``.cnz``
    file stores their dict form (the attribute ``ops`` of the manifest, as before the typed IR), and loading checks
    the whole program (:meth:`validate`) before anything runs.
    """

    __pack_skip__ = {"_fast", "_ops"}
    __pack_fields__ = {"ops"}  # the JSON form of the program, kept in __dict__ beside the ``ops`` property

    def __init__(self, input_shape, input: dict, output: dict, values: dict, ops: list, tensors: dict,
                 engine: str = "fast") -> None:
        super().__init__()
        self.input_shape = tuple(int(v) for v in input_shape)
        self.input = dict(input)
        self.output = dict(output)
        self.values = {k: dict(v) for k, v in values.items()}
        self.ops = ops
        self.engine = engine
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self._fast = None
        self.validate()

    @property
    def ops(self) -> tuple:
        """The program: a tuple of :mod:`.ir` ops."""
        return self._ops

    @ops.setter
    def ops(self, ops) -> None:
        if isinstance(ops, (str, bytes)) or not hasattr(ops, "__iter__"):
            raise ModelError(f"ops must be a list of integer ops, got {type(ops).__name__}")
        typed = []
        for i, op in enumerate(ops):
            try:
                typed.append(ir.as_op(op))
            except ModelError as err:
                raise ModelError(f"op {i}: {err}") from None
        ops = tuple(typed)
        self.__dict__["_ops"] = ops
        self.__dict__["ops"] = [op.to_dict() for op in ops]  # the JSON form that pack.save stores
        self.__dict__["_fast"] = None

    def validate(self) -> dict:
        """Check the whole program (:func:`.ir.check_program`); returns every value's shape."""
        return ir.check_program(self)

    def __pack_restore__(self) -> None:
        self._fast = None
        try:
            if not isinstance(self.__dict__.get("input_shape"), (list, tuple)):
                raise ModelError("input_shape is missing or not a list")
            self.input_shape = tuple(self.input_shape)
            self.ops = self.__dict__.get("ops")
            self.validate()
        except ModelError as err:
            msg = str(err).removeprefix("invalid integer model: ")
            raise PackError(f"the integer model in this file is invalid: {msg}") from None

    def _check_engine(self, engine: str | None) -> str:
        engine = self.engine if engine is None else engine
        if engine not in ENGINES:
            raise ModelError(f"unknown engine {engine!r}; use 'fast' or 'reference'")
        return engine

    def fast_engine(self):
        """The compiled fast engine (built once, from the current buffers; :meth:`invalidate` rebuilds it)."""
        if getattr(self, "_fast", None) is None:
            from .engine import FastEngine

            self._fast = FastEngine(self)
        return self._fast

    def invalidate(self) -> None:
        """Drop the fast engine's precomputed constants (call after changing buffers in place)."""
        self._fast = None

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: D401 - torch hook
        self._fast = None
        return super()._load_from_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------------------------- running
    def quantize_input(self, x: Tensor) -> Tensor:
        """Check ``x`` and quantize it to uint8: ``clamp(round(x / S) + Z, 0, qmax)``, rounding half away from zero
        (``qmax``: the input entry's, 255 unless the model has 7-bit activations)."""
        if not isinstance(x, Tensor):
            raise ModelError(f"IntegerModel takes a float tensor, got {type(x).__name__}")
        if not x.dtype.is_floating_point:
            raise ModelError(f"IntegerModel takes a float tensor of shape (N, {', '.join(map(str, self.input_shape))})"
                             f", got dtype {x.dtype}; pass the normalized float input, not codes")
        if x.dim() != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ModelError(f"IntegerModel expects input of shape (N, {', '.join(map(str, self.input_shape))}), "
                             f"got {tuple(x.shape)}")
        t = x.detach().double() / float(self.input["scale"])  # float64, as qparams.quantize
        m = t.abs()
        fl = torch.floor(m)
        r = torch.copysign(fl + (m - fl >= 0.5), t)  # exact half-away rounding (floor(m + 0.5) is not)
        return (r + int(self.input["zero_point"])).clamp_(0, self.input_qmax).to(torch.uint8)

    @property
    def input_qmax(self) -> int:
        """The highest input code: 255, or 127 for a model with 7-bit activations (:func:`.reduce.restrict_codes`)."""
        return int(self.input.get("qmax", 255))

    def dequantize_output(self, q: Tensor) -> Tensor:
        """``S·(q − Z)`` as float32."""
        return ((q.to(torch.int32) - int(self.output["zero_point"])).double() * float(self.output["scale"])).float()

    def run_int(self, q: Tensor, engine: str | None = None) -> Tensor:
        """Run the ops on uint8 input codes and return the uint8 output codes (no float op).

        Args:
            q: uint8 tensor ``(N, *input_shape)``.
            engine: ``"fast"`` or ``"reference"``; default ``self.engine``.
        """
        engine = self._check_engine(engine)
        if not isinstance(q, Tensor) or q.dtype != torch.uint8:
            raise ModelError(f"run_int takes a uint8 tensor, got {getattr(q, 'dtype', type(q).__name__)}")
        if engine == "reference":
            check_input_codes(q, self.input_qmax)  # the fast engine checks in its run
            return torch.from_numpy(run_reference(self, q.numpy())[self.output["value"]])
        return self.fast_engine().run(q)

    def run_values(self, q: Tensor, engine: str | None = None) -> dict[str, Tensor]:
        """Every value (input, each op's output) as uint8 tensors in PyTorch layout, for per-layer checks.

        Args:
            q: uint8 input codes.
            engine: ``"fast"`` or ``"reference"``; default ``self.engine``.
        """
        engine = self._check_engine(engine)
        if engine == "reference":
            check_input_codes(q, self.input_qmax)
            return {k: torch.from_numpy(v) for k, v in run_reference(self, q.numpy()).items()}
        return self.fast_engine().run(q, all_values=True)

    def forward(self, x: Tensor) -> Tensor:
        if self._check_engine(None) == "fast":  # the native path: quantize, program, dequantize in three C calls
            y = self.fast_engine().forward_float(self, x)
            if y is not None:
                return y
        return self.dequantize_output(self.run_int(self.quantize_input(x)))

    def extra_repr(self) -> str:
        kinds = [op.kind for op in self.ops]
        return f"input_shape={self.input_shape}, ops={len(kinds)} ({', '.join(kinds)}), engine={self.engine!r}"


def run_reference(model: IntegerModel, q: np.ndarray) -> dict[str, np.ndarray]:
    """Interpret ``model.ops`` with the NumPy int64 kernels of :mod:`.reference`; returns every value by name.

    Args:
        model: the integer model.
        q: uint8 input codes ``(N, *input_shape)``.
    """
    return ref.run_program(model, q)


def weight_scales(model, op) -> np.ndarray:
    """The weight scales of a conv2d/linear op as float32, one per output channel or one (for exporters, inspect).

    Models converted since the typed IR store the scales used at conversion (the op's ``weight_scale`` buffer, in
    float64); for older files, which did not, they follow from the requantization multiplier,
    ``S_w = M0·2^(shift−31)·S_out/S_in`` (exact up to M0's rounding, 2^-31 relative): :func:`derived_weight_scales`.
    """
    if op.weight_scale is not None:
        return getattr(model, op.weight_scale).detach().cpu().numpy().astype(np.float32).reshape(-1)
    return derived_weight_scales(model, op).astype(np.float32)


def derived_weight_scales(model, op) -> np.ndarray:
    """``S_w = M0·2^(shift−31)·S_out/S_in`` (float64) of a conv2d/linear op, from its multiplier alone."""
    m0 = getattr(model, op.multiplier).detach().cpu().numpy().astype(np.float64).reshape(-1)
    sh = getattr(model, op.shift).detach().cpu().numpy().astype(np.float64).reshape(-1)
    s_in, s_out = model.values[op.inputs[0]]["scale"], model.values[op.output]["scale"]
    return m0 * np.exp2(sh - 31) * (s_out / s_in)
