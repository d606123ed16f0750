"""The ``tensor-ring`` method: factor a trained model's Linear and Conv2d layers as tensor rings, then fine-tune.

For every selected layer: reshape its weight into modes (:func:`.trsvd.linear_tensor` / :func:`.trsvd.conv_tensor`),
factor it with TR-SVD (tensorly) or from random cores, refine with ALS (:func:`.trsvd.tr_als`), and put a
:class:`TRLinear` / :class:`TRConv2d` holding those cores in its place (its output equals the dense layer with the
rebuilt weight). Then fine-tune the whole model (:func:`compactnn.layers.run_finetune`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

from torch import nn
from tqdm.auto import tqdm

from ..api import register_method
from ..config import FineTune, MethodConfig, NonNegativeInt, Patterns, PerLayer, PositiveInt, Ratio, Seed, check
from ..errors import ConfigError, ModelError
from ..graph import set_module
from ..layers import Target, require_data, resolve, run_finetune
from .shapes import check_modes, suggest_modes
from .trsvd import conv_supported, factorize_conv, factorize_linear


@dataclasses.dataclass(frozen=True)
class TensorRing(MethodConfig):
    """Tensor Ring Nets from a trained model (Wang et al., CVPR 2018): TR-SVD + ALS, replace, fine-tune.

    Args:
        rank: one rank for every bond of a factored layer (give ``rank`` or ``ratio``, not both); a number or
            ``{layer pattern: rank}``.
        ratio: target compression of each layer's weight: the largest uniform rank ``R`` whose cores hold at most
            ``weight.numel() / ratio`` numbers (``R^2 (sum in modes + sum out modes)`` for Linear, plus ``kh kw``
            for Conv2d). Biases are not counted (they stay dense). A number or ``{layer pattern: ratio}``.
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear and every Conv2d with groups 1 and
            numeric zero padding (others are left alone with a warning; naming one of them is a ModelError).
        exclude: patterns of layers left alone.
        num_modes: how many modes the in and out features (channels) get when ``in_modes`` / ``out_modes`` do not
            say: ``suggest_modes(features, d)`` with ``d = min(num_modes, number of prime factors)``.
        in_modes: ``{layer name: modes}`` of the input features (Linear) or input channels (Conv2d).
        out_modes: ``{layer name: modes}`` of the output features or channels.
        init: ``"svd"``: TR-SVD start (its ranks are bounded by the unfoldings, see :func:`.trsvd.tr_svd`);
            ``"random"``: random cores (any rank), for ALS to fit; ``"auto"``: per layer, TR-SVD where its rank cap
            allows the ranks, else random cores (the default: TR-SVD alone cannot reach most ranks of real layers).
        als_sweeps: ALS sweeps after the start (0 = TR-SVD only; ``init="random"`` needs at least 1).
        seed: seed of the random start.
        finetune: fine-tuning after the replacement (``None`` = none).
    """

    method = "tensor-ring"
    description = "Tensor Ring Nets: TR-SVD + ALS factorization of trained Linear/Conv2d layers, then fine-tuning"
    kinds = (nn.Linear, nn.Conv2d)
    replaces = True
    example = {"rank": 2, "init": "auto", "als_sweeps": 1, "finetune": {"epochs": 1}}

    rank: PerLayer[PositiveInt] | None = None
    ratio: PerLayer[Ratio] | None = None
    layers: Patterns = None
    exclude: Patterns = None
    num_modes: PositiveInt = 3
    in_modes: dict[str, tuple[PositiveInt, ...]] | None = None
    out_modes: dict[str, tuple[PositiveInt, ...]] | None = None
    init: Literal["svd", "random", "auto"] = "auto"
    als_sweeps: NonNegativeInt = 10
    seed: Seed = 0
    finetune: FineTune | None = FineTune()

    def validate(self) -> None:
        check((self.rank is None) != (self.ratio is None),
              f"give exactly one of rank (e.g. 5) or ratio (e.g. 10.0), got rank={self.rank!r}, ratio={self.ratio!r}")
        check(self.init == "svd" or self.als_sweeps >= 1, f"init {self.init!r} needs als_sweeps >= 1 (ALS fits "
              "random cores)")
        for key in ("in_modes", "out_modes"):
            for name, modes in (getattr(self, key) or {}).items():
                check(len(modes) > 0, f"{key}[{name!r}] must be a list of positive ints like [4, 7, 4, 7]")


def prime_count(n: int) -> int:
    """Number of prime factors of ``n`` counted with multiplicity (0 for 1)."""
    count, p = 0, 2
    while p * p <= n:
        while n % p == 0:
            n //= p
            count += 1
        p += 1
    return count + (1 if n > 1 else 0)


def default_modes(features: int, num_modes: int) -> tuple[int, ...]:
    """``suggest_modes(features, min(num_modes, prime_count(features)))`` (at least one mode); no modes of 1."""
    return suggest_modes(features, max(1, min(num_modes, prime_count(features))))


def ring_params(in_modes: tuple[int, ...], out_modes: tuple[int, ...], kernel: int | None, rank: int) -> int:
    """Core parameters of a uniform-rank ring: ``R^2 (sum in + sum out [+ kh kw])``."""
    return rank * rank * (sum(in_modes) + sum(out_modes) + (kernel or 0))


def rank_for_ratio(dense: int, in_modes: tuple[int, ...], out_modes: tuple[int, ...], kernel: int | None,
                   ratio: float, layer: str = "layer") -> int:
    """The largest uniform rank ``R`` with ``dense / ring_params(R) >= ratio``.

    Raises:
        ModelError: even rank 1 compresses less than ``ratio`` (the message gives rank 1's ratio).
    """
    modes_sum = sum(in_modes) + sum(out_modes) + (kernel or 0)
    rank = math.isqrt(int(dense / (ratio * modes_sum)))
    while rank >= 1 and dense / ring_params(in_modes, out_modes, kernel, rank) < ratio:
        rank -= 1  # isqrt of a floor can overshoot only through rounding; step down to be exact
    while dense / ring_params(in_modes, out_modes, kernel, rank + 1) >= ratio:
        rank += 1
    if rank < 1:
        best = dense / ring_params(in_modes, out_modes, kernel, 1)
        raise ModelError(
            f"ratio {ratio:g} is out of reach for {layer}: rank 1 compresses its weight only {best:.1f}x with modes "
            f"{in_modes} -> {out_modes}; ask for a ratio <= {best:.1f} or use more modes"
        )
    return rank


def _modes_for(config: TensorRing, name: str, features: int, key: str) -> tuple[int, ...]:
    given = getattr(config, key) or {}
    if name in given:
        return check_modes(given[name], features, f"{key}[{name!r}]")
    return default_modes(features, config.num_modes)


def plan_layers(model: nn.Module, config: TensorRing, target: Target | None = None) -> dict[str, dict[str, Any]]:
    """For each layer to factor: ``{"module", "in_modes", "out_modes", "kernel", "rank"}``. Checks everything
    (modes, ranks, unknown mode keys) before any layer is changed. A Conv2d a ring cannot stand for is an error when
    ``layers`` names it and a warning (listed in ``target.skipped``) otherwise."""
    target = target or resolve(model, config)
    plan: dict[str, dict[str, Any]] = {}
    for name, m in list(target.layers.items()):
        if isinstance(m, nn.Conv2d) and conv_supported(m) is not None:
            if config.layers is not None:
                raise ModelError(f"layer {name!r} is a Conv2d with {conv_supported(m)}, which a tensor ring cannot "
                                 "stand for; leave it out of layers")
            target.skip(name, f"a Conv2d with {conv_supported(m)}, which a tensor ring cannot stand for", config.method)
            continue
        if isinstance(m, nn.Linear):
            fin, fout, kernel = m.in_features, m.out_features, None
        else:
            fin, fout, kernel = m.in_channels, m.out_channels, m.kernel_size[0] * m.kernel_size[1]
        in_modes = _modes_for(config, name, fin, "in_modes")
        out_modes = _modes_for(config, name, fout, "out_modes")
        if config.rank is not None:
            rank = target.value("rank", name)
        else:
            rank = rank_for_ratio(m.weight.numel(), in_modes, out_modes, kernel, target.value("ratio", name),
                                  f"layer {name!r}")
        plan[name] = {"module": m, "in_modes": in_modes, "out_modes": out_modes, "kernel": kernel, "rank": rank}
    if not plan:
        raise ModelError(f"{type(model).__name__} has no Linear or Conv2d (groups 1) layer to factor")
    for key in ("in_modes", "out_modes"):
        unknown = sorted(set(getattr(config, key) or {}) - set(plan))
        if unknown:
            raise ConfigError(f"tensor-ring: {key} names {unknown[0]!r}, which is not a factored layer; "
                              f"factored layers are: {', '.join(plan)}")
    return plan


@register_method(TensorRing)
def tensor_ring(model: nn.Module, config: TensorRing, data: Any, target: Target) -> nn.Module:
    """Factor ``model``'s layers as ``config`` says, in place, fine-tune, and return it. (For the per-layer ALS
    errors, call :func:`plan_layers` and :func:`.trsvd.factorize_linear` / :func:`.trsvd.factorize_conv`.)"""
    if config.finetune is not None:
        require_data(data, config.method)
    plan = plan_layers(model, config, target)
    for name, p in tqdm(plan.items(), desc="tensor-ring", disable=None, leave=False):
        factor = factorize_linear if isinstance(p["module"], nn.Linear) else factorize_conv
        try:
            new, _ = factor(p["module"], p["in_modes"], p["out_modes"], p["rank"], init=config.init,
                               sweeps=config.als_sweeps, seed=config.seed)
        except ModelError as err:
            raise ModelError(f"layer {name!r}: {err}") from None
        new.train(p["module"].training)
        set_module(model, name, new)
    if config.finetune is not None:
        run_finetune(model, data, config.finetune, config.method)
    return model


__all__ = ["TensorRing", "tensor_ring", "plan_layers", "rank_for_ratio", "ring_params", "default_modes",
           "prime_count"]
