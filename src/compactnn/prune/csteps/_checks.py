"""Argument checks and flattening shared by the C steps."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ...errors import ConfigError


def _float(w: Tensor, name: str = "w") -> Tensor:
    if not isinstance(w, Tensor) or not w.is_floating_point():
        raise ConfigError(f"{name} must be a floating-point torch.Tensor; convert it with .double() or .float()")
    return w


def _count(value: int, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}, got {value!r}; pass a whole number")
    return int(value)


def _nonneg(value: float, name: str, positive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value!r}")
    return float(value)


def _concat(ws: Sequence[Tensor]) -> Tensor:
    if len(ws) == 0:
        raise ConfigError("ws is an empty list; pass at least one weight tensor")
    dtypes = {_float(w, "every tensor in ws").dtype for w in ws}
    if len(dtypes) > 1:
        raise ConfigError(f"tensors in ws have mixed dtypes {sorted(map(str, dtypes))}; cast them to one dtype")
    return torch.cat([w.reshape(-1) for w in ws])


def _split(flat: Tensor, ws: Sequence[Tensor]) -> list[Tensor]:
    parts = torch.split(flat, [w.numel() for w in ws])
    return [p.reshape(w.shape).clone() for p, w in zip(parts, ws)]
