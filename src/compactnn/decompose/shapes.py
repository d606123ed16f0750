"""Mode-shape helpers for the factorized layers: check mode tuples and ranks, and suggest a balanced factorization.

A layer with ``in_features = 784`` can be written with modes ``(4, 7, 4, 7)``: its input is reshaped to a 4-way
tensor. Every check here raises :class:`compactnn.errors.ModelError` with a one-line message that says how to fix it.
"""

from __future__ import annotations

import math
import numbers
from functools import lru_cache
from typing import Sequence

from ..errors import ModelError


def _divisors(n: int) -> list[int]:
    small = [k for k in range(1, math.isqrt(n) + 1) if n % k == 0]
    return sorted(set(small + [n // k for k in small]))


@lru_cache(maxsize=4096)
def _best(n: int, d: int, low: int) -> tuple[int, int, tuple[int, ...]] | None:
    """Nondecreasing ``d`` factors ``>= low`` of ``n`` with the smallest (sum, largest factor), or None."""
    if d == 1:
        return (n, n, (n,)) if n >= low else None
    best = None
    for f in _divisors(n):
        if f < low:
            continue
        if f ** d > n:  # the smallest of d nondecreasing factors is at most n^(1/d)
            break
        rest = _best(n // f, d - 1, f)
        if rest is None:
            continue
        cand = (f + rest[0], max(f, rest[1]), (f,) + rest[2])
        if best is None or cand[:2] < best[:2]:
            best = cand
    return best


def suggest_modes(n: int, d: int) -> tuple[int, ...]:
    """A balanced factorization of ``n`` into ``d`` factors (ascending): the one with the smallest sum of factors.

    The sum of the modes is what a tensor-ring layer's parameter count grows with (``R^2 * sum(modes)``), so the
    smallest sum is the cheapest layout; ties go to the smallest largest factor. Factors of 1 appear only when ``n``
    has fewer than ``d`` prime factors. Example: ``suggest_modes(784, 4) == (4, 4, 7, 7)``.

    Args:
        n: the number to factor (features of a layer), a positive int.
        d: the number of factors, a positive int.

    Raises:
        ModelError: ``n`` or ``d`` is not a positive int.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        raise ModelError(f"cannot factor {n!r}: the number of features must be a positive int")
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
        raise ModelError(f"cannot factor {n} into {d!r} modes: the number of modes d must be a positive int like 3")
    found = _best(n, d, 1)
    assert found is not None  # (1, ..., 1, n) always works
    return found[2]


def check_modes(modes: Sequence[int], features: int | None = None, name: str = "modes") -> tuple[int, ...]:
    """Return ``modes`` as a tuple of positive ints, checking that their product is ``features`` when given.

    Args:
        modes: the mode sizes, e.g. ``(4, 7, 4, 7)``.
        features: the number of features the modes must multiply to, or None to skip that check.
        name: the argument's name, used in error messages (``"in_modes"``...).

    Raises:
        ModelError: a mode is not a positive int, ``modes`` is empty, or the product differs from ``features``
            (the message proposes ``suggest_modes(features, len(modes))``).
    """
    try:
        out = tuple(int(m) for m in modes)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a tuple of positive ints like (4, 7, 4, 7), got {modes!r}") from None
    if not out or any(m <= 0 for m in out) or list(out) != list(modes):
        raise ModelError(f"{name} must be a non-empty tuple of positive ints like (4, 7, 4, 7), got {modes!r}")
    if features is not None and math.prod(out) != features:
        raise ModelError(
            f"{name} {out} multiply to {math.prod(out)}, not {features}; "
            f"use a factorization of {features} such as {suggest_modes(int(features), len(out))}"
        )
    return out


def check_ranks(ranks: int | Sequence[int], count: int, name: str = "ranks") -> tuple[int, ...]:
    """Return ``ranks`` as a tuple of ``count`` positive ints; an int is repeated ``count`` times.

    Args:
        ranks: one rank for all, or one per position.
        count: how many ranks the layer needs.
        name: the argument's name, used in error messages.

    Raises:
        ModelError: a rank is not a positive int, or the tuple has the wrong length.
    """
    if isinstance(ranks, numbers.Integral) and not isinstance(ranks, bool):
        ranks = (int(ranks),) * count
    try:
        out = tuple(int(r) for r in ranks)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a positive int or a tuple of {count} positive ints, got {ranks!r}") from None
    if len(out) != count:
        raise ModelError(f"{name} needs {count} values (one per core), got {len(out)}: {out}; or pass one int")
    if any(r <= 0 for r in out) or list(out) != list(ranks):
        raise ModelError(f"{name} must be positive ints (a rank of at least 1), got {tuple(ranks)}")
    return out
