"""Pruning schedules: one-shot, and the cubic gradual schedule of Zhu & Gupta (2017), "To prune, or not to prune".

AGP raises sparsity from ``s_i`` to ``s_f`` over ``n`` pruning steps of ``dt`` training steps each, from step ``t0``:

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt))**3      for t0 <= t <= t0 + n dt

so it prunes fast early, while redundant weights abound, and slowly near the end. :class:`PruneSchedule` is a
:func:`compactnn.train.fit` step hook that calls a prune function at the scheduled steps.
"""

from __future__ import annotations

import math
from typing import Callable, Literal

from torch import nn


def agp_sparsity(step: float, *, final: float, start: float, end: float, initial: float = 0.0) -> float:
    """The AGP target sparsity at training step ``step``.

    Args:
        step: the training step ``t``.
        final: ``s_f``, the sparsity reached at ``end`` and kept after it.
        start: ``t0``, the step the ramp starts at (sparsity ``initial`` up to it).
        end: ``t0 + n dt``, the step the ramp ends at.
        initial: ``s_i``, the sparsity at ``start``.
    """
    if step <= start:
        return initial
    if step >= end or end <= start:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def one_shot_sparsity(step: float, *, final: float) -> float:
    """One-shot pruning: the final sparsity from the first step on."""
    return final


class PruneSchedule:
    """A ``fit`` step hook ``hook(model, step, total_steps)`` that prunes to the scheduled sparsity.

    Args:
        prune: ``prune(sparsity)`` recomputes and applies the masks for the given sparsity.
        final: the final sparsity ``s_f``.
        kind: ``"agp"`` (cubic ramp) or ``"one-shot"`` (``final`` at once, before training).
        start: fraction of the training steps at which the AGP ramp starts (``t0 = round(start * total)``).
        end: fraction of the training steps at which it reaches ``final``.
        every: prune every ``every`` steps (``dt``) during the ramp; ``None`` picks ``max(1, ramp // 16)``.
        initial: the sparsity ``s_i`` at the start of the ramp.

    Call :meth:`begin` before training (it applies step 0's sparsity) and :meth:`finish` after it (it makes sure
    ``final`` was reached even if training stopped early). ``self.history`` records ``(step, sparsity)`` pairs.
    """

    def __init__(
        self,
        prune: Callable[[float], None],
        final: float,
        kind: Literal["agp", "one-shot"] = "agp",
        *,
        start: float = 0.0,
        end: float = 0.7,
        every: int | None = None,
        initial: float = 0.0,
    ):
        if kind not in ("agp", "one-shot"):
            raise ValueError(f"unknown schedule {kind!r}; use 'agp' or 'one-shot'")
        self.prune, self.final, self.kind = prune, final, kind
        self.start, self.end, self.every, self.initial = start, end, every, initial
        self.current: float | None = None
        self.history: list[tuple[int, float]] = []

    def steps(self, total_steps: int) -> tuple[int, int, int]:
        """``(t0, t_end, dt)`` in training steps for a run of ``total_steps`` steps."""
        t0 = int(round(self.start * total_steps))
        t_end = max(t0, int(round(self.end * total_steps)))
        dt = self.every if self.every is not None else max(1, (t_end - t0) // 16)
        return t0, t_end, max(1, int(dt))

    def sparsity_at(self, step: int, total_steps: int) -> float:
        """The target sparsity at ``step`` of ``total_steps``."""
        if self.kind == "one-shot":
            return one_shot_sparsity(step, final=self.final)
        t0, t_end, _ = self.steps(total_steps)
        return agp_sparsity(step, final=self.final, start=t0, end=t_end, initial=self.initial)

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the masks are recomputed at ``step``: every ``dt`` steps from ``t0``, and at ``t_end``."""
        if self.kind == "one-shot":
            return self.current is None
        t0, t_end, dt = self.steps(total_steps)
        if step < t0:
            return False
        if step >= t_end:
            return self.current is None or not math.isclose(self.current, self.final)
        return (step - t0) % dt == 0

    def _apply(self, step: int, value: float) -> None:
        if self.current is None or not math.isclose(value, self.current):
            self.prune(value)
            self.history.append((step, value))
        self.current = value

    def begin(self) -> None:
        """Apply the sparsity of step 0 (``initial`` for AGP, ``final`` for one-shot)."""
        self._apply(0, self.final if self.kind == "one-shot" else self.initial)

    def __call__(self, model: nn.Module, step: int, total_steps: int) -> None:
        if self.due(step, total_steps):
            self._apply(step, self.sparsity_at(step, total_steps))

    def finish(self, step: int = -1) -> None:
        """Reach ``final`` if training ended before the schedule did (``step`` only labels ``history``)."""
        self._apply(step, self.final)


__all__ = ["agp_sparsity", "one_shot_sparsity", "PruneSchedule"]
