"""The LC (learning-compression) algorithm: compression as constrained optimization, ``min L(w) s.t. w = Δ(θ)``.

Carreira-Perpiñán & Idelbayev, "Learning-Compression Algorithms for Neural Net Pruning" (CVPR 2018) and "Model
compression as constrained optimization" (parts I and II). The augmented Lagrangian
``L(w) − λᵀ(w − Δ(θ)) + μ/2‖w − Δ(θ)‖²`` is minimized by alternation while μ grows:

1. warm start: direct compression ``θ = Π(w)`` (the C step at μ → 0 with λ = 0) of the trained reference;
2. for ``μ_k = μ0·a^k``, ``k < steps``:
   - L step: SGD (:func:`compactnn.train.fit` with a ``loss_fn``) on ``loss + μ/2‖w − Δ(θ) − λ/μ‖²`` from the current
     w, with the authors' toolkit settings: a fresh Nesterov-momentum SGD each step, constant lr ``0.1·0.98^k``;
   - C step: ``θ = argmin ‖(w − λ/μ) − Δ(θ)‖²`` (or its penalty form), by the closed forms of :mod:`.csteps`;
   - multiplier update ``λ ← λ − μ(w − Δ(θ))`` (``multipliers=False`` keeps λ ≡ 0: the quadratic penalty);
3. the weights are set to ``Δ(θ)``, so the result is the same plain module holding compressed weights, which
   :func:`compactnn.pack.save` stores with its sparse and codebook codecs.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from typing import Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..api import register_method
from ..config import MethodConfig, check
from ..layers import require_data, select_layers
from . import csteps

COMPRESSIONS = ("l0", "l1", "l0-penalty", "l1-penalty", "codebook", "binary", "scaled-binary", "ternary", "low-rank",
                "codebook+l0")
DP_LIMIT = 50_000_000  # largest k·n solved by the exact 1-D dynamic program at the warm start (O(k·n) memory)


def _frac(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1


@dataclasses.dataclass(frozen=True)
class LC(MethodConfig):
    """Settings of the LC algorithm (defaults: the authors' toolkit schedule for LeNet-300-100 pruning).

    Args:
        compression: the C step. ``"l0"``: keep the ``keep`` largest |w| (``‖θ‖₀ ≤ κ``); ``"l1"``: Euclidean
            projection on the ℓ1 ball of radius ``kappa`` (Duchi et al. 2008); ``"l0-penalty"`` / ``"l1-penalty"``:
            ``α‖θ‖₀`` / ``α‖θ‖₁`` penalties (hard / soft threshold at √(2α/μ) / α/μ); ``"codebook"``: adaptive
            ``k``-codebook per layer (1-D k-means, warm-started; exact DP optimum at the warm start);
            ``"binary"`` {−1, +1}, ``"scaled-binary"`` {±a}, ``"ternary"`` {−a, 0, +a} per layer; ``"low-rank"``:
            rank ``rank`` per layer (truncated SVD); ``"codebook+l0"``: additive combination of a ``k``-codebook per
            layer and a sparse correction keeping ``sparse_keep`` of the weights, by ``rounds`` of alternation.
        keep: fraction of the selected weights kept by ``"l0"``, in (0, 1] (pruning ratio ``1 − keep`` in [0, 1)).
        scope: ``"global"``: one budget over all selected layers (LC decides how to spread it; the paper's
            setting); ``"layer"``: every layer keeps its own fraction. Applies to l0, l1 and the sparse correction.
        kappa: ℓ1 radius for ``"l1"``; a fraction in (0, 1] of the reference weights' ‖w‖₁ when
            ``kappa_relative`` (per layer with ``scope="layer"``), else an absolute radius > 0.
        kappa_relative: read ``kappa`` as a fraction of the reference ‖w‖₁ (True) or as the radius itself.
        alpha: penalty weight α > 0 for ``"l0-penalty"`` and ``"l1-penalty"``.
        k: codebook size K ≥ 1 for ``"codebook"`` and ``"codebook+l0"``.
        rank: target rank r ≥ 1 for ``"low-rank"`` (capped per layer at min(out, in·kh·kw)).
        sparse_keep: fraction in (0, 1) of the weights in the sparse correction of ``"codebook+l0"``.
        rounds: alternation rounds of the additive combination (the paper uses about 10).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight. Biases stay free.
        mu0: μ of the first L step (toolkit: 9e-5).
        mu_factor: a > 1, ``μ_k = mu0·a^k`` (toolkit: 1.1).
        steps: number of L/C steps (toolkit: 40). ``0`` returns the direct compression (no data needed).
        epochs_per_step: epochs of every L step (toolkit: 20).
        first_epochs: epochs of the first L step (toolkit: 40); ``None`` = ``epochs_per_step``.
        lr: learning rate of the first L step (toolkit: 0.1), constant within an L step.
        lr_decay: the L step k uses ``lr·lr_decay^k`` (toolkit: 0.98).
        momentum: SGD momentum (toolkit: 0.9); the optimizer is rebuilt at every L step, as in the toolkit.
        nesterov: Nesterov momentum (toolkit: True).
        batch_size: minibatch size (toolkit: 256).
        weight_decay: L2 weight decay in the L step (toolkit: none; the LC penalty already pulls the weights).
        multipliers: augmented Lagrangian (True) or quadratic penalty with λ ≡ 0 (False).
        seed: seed of the L step shuffles (the L step k uses ``seed + k``).

    Penalty forms have no μ → 0 direct compression (it would zero every weight), so their warm start uses ``mu0``.
    """

    method = "lc"
    description = "LC algorithm (augmented Lagrangian): pruning, quantization, low rank by learning-compression steps"

    compression: Literal["l0", "l1", "l0-penalty", "l1-penalty", "codebook", "binary", "scaled-binary", "ternary",
                         "low-rank", "codebook+l0"] = "l0"
    keep: float | None = None
    scope: Literal["global", "layer"] = "global"
    kappa: float | None = None
    kappa_relative: bool = True
    alpha: float | None = None
    k: int = 2
    rank: int | None = None
    sparse_keep: float = 0.01
    rounds: int = 10
    layers: tuple[str, ...] | None = None
    mu0: float = 9e-5
    mu_factor: float = 1.1
    steps: int = 40
    epochs_per_step: int = 20
    first_epochs: int | None = 40
    lr: float = 0.1
    lr_decay: float = 0.98
    momentum: float = 0.9
    nesterov: bool = True
    batch_size: int = 256
    weight_decay: float = 0.0
    multipliers: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.layers, list):
            object.__setattr__(self, "layers", tuple(self.layers))
        c = self.compression
        check(c in COMPRESSIONS, f"lc: compression must be one of {', '.join(COMPRESSIONS)}, got {c!r}")
        check(self.scope in ("global", "layer"), f"lc: scope must be 'global' or 'layer', got {self.scope!r}")
        check(self.keep is None or _frac(self.keep),
              f"lc: keep must be in (0, 1] (fraction of weights kept; pruning ratio 1-keep in [0, 1)), "
              f"got {self.keep!r}")
        check(c != "l0" or self.keep is not None, "lc: compression 'l0' needs keep, the fraction of weights kept")
        if c == "l1":
            check(self.kappa is not None, "lc: compression 'l1' needs kappa, the l1 radius (relative or absolute)")
            ok = _frac(self.kappa) if self.kappa_relative else (isinstance(self.kappa, (int, float)) and self.kappa > 0)
            check(ok, f"lc: kappa must be {'in (0, 1] with kappa_relative' if self.kappa_relative else '> 0'}, "
                      f"got {self.kappa!r}")
        if c in ("l0-penalty", "l1-penalty"):
            check(isinstance(self.alpha, (int, float)) and self.alpha > 0,
                  f"lc: compression {c!r} needs alpha > 0 (the penalty weight), got {self.alpha!r}")
        check(isinstance(self.k, int) and self.k >= 1, f"lc: k must be an integer codebook size >= 1, got {self.k!r}")
        check(c != "low-rank" or (isinstance(self.rank, int) and self.rank >= 1),
              f"lc: compression 'low-rank' needs rank, an integer >= 1, got {self.rank!r}")
        check(_frac(self.sparse_keep) and self.sparse_keep < 1,
              f"lc: sparse_keep must be in (0, 1) (fraction of weights in the correction), got {self.sparse_keep!r}")
        check(isinstance(self.rounds, int) and self.rounds >= 1,
              f"lc: rounds must be an integer >= 1, got {self.rounds!r}")
        check(self.layers is None or (len(self.layers) > 0 and all(isinstance(p, str) for p in self.layers)),
              f"lc: layers must be a non-empty list of name patterns or null, got {self.layers!r}")
        check(self.mu0 > 0 and self.mu_factor >= 1,
              f"lc: need mu0 > 0 and mu_factor >= 1, got {self.mu0}, {self.mu_factor}")
        check(isinstance(self.steps, int) and self.steps >= 0, f"lc: steps must be an integer >= 0, got {self.steps!r}")
        check(isinstance(self.epochs_per_step, int) and self.epochs_per_step >= 1,
              f"lc: epochs_per_step must be an integer >= 1, got {self.epochs_per_step!r}")
        check(self.first_epochs is None or (isinstance(self.first_epochs, int) and self.first_epochs >= 1),
              f"lc: first_epochs must be an integer >= 1 or null, got {self.first_epochs!r}")
        check(self.lr > 0 and 0 < self.lr_decay <= 1,
              f"lc: need lr > 0 and 0 < lr_decay <= 1, got {self.lr}, {self.lr_decay}")
        check(self.momentum >= 0 and self.weight_decay >= 0, "lc: momentum and weight_decay must be >= 0")
        check(isinstance(self.batch_size, int) and self.batch_size >= 1,
              f"lc: batch_size must be an integer >= 1, got {self.batch_size!r}")
        check(not self.nesterov or self.momentum > 0, "lc: nesterov=True needs momentum > 0; set nesterov to false")


def mu_schedule(config: LC) -> list[float]:
    """The penalty parameters ``μ_k = mu0·mu_factor^k`` for ``k < steps``."""
    return [config.mu0 * config.mu_factor ** k for k in range(config.steps)]


def lr_schedule(config: LC) -> list[float]:
    """The learning rate of every L step, ``lr·lr_decay^k`` (constant within the step, as in the toolkit)."""
    return [config.lr * config.lr_decay ** k for k in range(config.steps)]


def epochs_schedule(config: LC) -> list[int]:
    """The epochs of every L step: ``first_epochs`` for the first, ``epochs_per_step`` for the others."""
    first = config.first_epochs if config.first_epochs is not None else config.epochs_per_step
    return [first if k == 0 else config.epochs_per_step for k in range(config.steps)]


class CStep:
    """The C step of ``config`` over named weights: ``__call__(ws, mu)`` returns ``{name: Δ(θ)}``.

    ``ws`` are the shifted weights ``w − λ/μ``; ``mu=None`` is the direct compression (μ → 0; ``mu0`` for the
    penalty forms). It keeps the state that warm-starts the next call (the codebooks) and, after each call, the
    parts of an additive combination in ``self.parts`` (``{name: (codebook part, sparse part)}``).

    Args:
        config: the :class:`LC` settings.
    """

    def __init__(self, config: LC) -> None:
        self.config = config
        self.centers: dict[str, Tensor] = {}
        self.ref_l1: dict[str, float] = {}
        self.parts: dict[str, tuple[Tensor, Tensor]] = {}

    def codebook(self, name: str, w: Tensor) -> Tensor:
        """Adaptive K-codebook of one layer: the exact 1-D optimum the first time (when k·n ≤ DP_LIMIT), then
        k-means warm-started from this layer's previous centres."""
        k = self.config.k
        if name in self.centers:
            c, _, theta = csteps.adaptive_codebook(w, k, init_centers=self.centers[name])
        elif k * w.numel() <= DP_LIMIT:
            c, _, theta = csteps.optimal_codebook_1d(w, k)
        else:
            c, _, theta = csteps.adaptive_codebook(w, k)
        self.centers[name] = c
        return theta

    def _sparse_counts(self, sizes: Mapping[str, int], keep: float) -> Any:
        if self.config.scope == "global":
            return round(keep * sum(sizes.values()))
        return {n: round(keep * s) for n, s in sizes.items()}

    def __call__(self, ws: Mapping[str, Tensor], mu: float | None) -> dict[str, Tensor]:
        cfg, names = self.config, list(ws)
        c, grouped = cfg.compression, cfg.scope == "global"
        mu = cfg.mu0 if mu is None else mu
        if c == "l0":
            kappa = self._sparse_counts({n: ws[n].numel() for n in names}, cfg.keep)
            if grouped:
                return dict(zip(names, csteps.l0_constraint_grouped([ws[n] for n in names], kappa)))
            return {n: csteps.l0_constraint(ws[n], kappa[n]) for n in names}
        if c == "l1":
            if not self.ref_l1:  # the first call sees the reference weights
                self.ref_l1 = {n: float(ws[n].abs().sum()) for n in names}
            def radius(total: float) -> float:
                return cfg.kappa * total if cfg.kappa_relative else cfg.kappa
            if grouped:
                r = radius(sum(self.ref_l1.values()))
                return dict(zip(names, csteps.l1_constraint_grouped([ws[n] for n in names], r)))
            return {n: csteps.l1_constraint(ws[n], radius(self.ref_l1[n])) for n in names}
        if c == "l0-penalty":
            return {n: csteps.l0_penalty(ws[n], cfg.alpha, mu) for n in names}
        if c == "l1-penalty":
            return {n: csteps.l1_penalty(ws[n], cfg.alpha, mu) for n in names}
        if c == "codebook":
            return {n: self.codebook(n, ws[n]) for n in names}
        if c in ("binary", "scaled-binary", "ternary"):
            step = {"binary": csteps.binary, "scaled-binary": csteps.scaled_binary, "ternary": csteps.ternary}[c]
            return {n: step(ws[n]) for n in names}
        if c == "low-rank":
            return {n: csteps.low_rank(ws[n], cfg.rank) for n in names}
        return self._codebook_plus_l0(ws, names)

    def _codebook_plus_l0(self, ws: Mapping[str, Tensor], names: list[str]) -> dict[str, Tensor]:
        """Additive combination on the concatenated weights: per-layer codebooks + a (global or per-layer) ℓ0 part."""
        sizes = [ws[n].numel() for n in names]
        kappa = self._sparse_counts(dict(zip(names, sizes)), self.config.sparse_keep)
        flat = torch.cat([ws[n].reshape(-1) for n in names])

        def quantize(r: Tensor) -> Tensor:
            return torch.cat([self.codebook(n, p) for n, p in zip(names, torch.split(r, sizes))])

        def sparse(r: Tensor) -> Tensor:
            if isinstance(kappa, int):
                return csteps.l0_constraint(r, kappa)
            return torch.cat([csteps.l0_constraint(p, kappa[n]) for n, p in zip(names, torch.split(r, sizes))])

        q, s = csteps.additive_combination(flat, [quantize, sparse], rounds=self.config.rounds)
        out = {}
        for n, qn, sn in zip(names, torch.split(q, sizes), torch.split(s, sizes)):
            self.parts[n] = (qn.reshape(ws[n].shape), sn.reshape(ws[n].shape))
            out[n] = (qn + sn).reshape(ws[n].shape)
        return out


def lc_penalty(weights: Mapping[str, Tensor], deltas: Mapping[str, Tensor], lams: Mapping[str, Tensor],
               mu: float) -> Tensor:
    """The L step's penalty ``μ/2·Σ_layers ‖w − Δ(θ) − λ/μ‖²`` (differentiable in ``weights``).

    Equal to the augmented Lagrangian's ``−λᵀ(w − Δ) + μ/2‖w − Δ‖²`` up to the constant ``‖λ‖²/(2μ)``.
    Args: ``weights``, ``deltas`` (Δ(θ)), ``lams`` (λ) keyed by layer name; ``mu`` the penalty parameter.
    """
    total = sum(((w - deltas[n] - lams[n] / mu) ** 2).sum() for n, w in weights.items())
    return 0.5 * mu * total


def make_loss_fn(weights: Mapping[str, Tensor], deltas: Mapping[str, Tensor], lams: Mapping[str, Tensor],
                 mu: float) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``loss_fn(net, x, y) = cross_entropy(net(x), y) + lc_penalty(...)`` for :func:`compactnn.train.fit`.

    Args: ``weights`` the live weight parameters (read at every call), ``deltas``, ``lams``, ``mu`` as in
    :func:`lc_penalty`.
    """
    def loss_fn(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(net(x), y) + lc_penalty(weights, deltas, lams, mu)

    return loss_fn


def update_multipliers(lams: Mapping[str, Tensor], weights: Mapping[str, Tensor], deltas: Mapping[str, Tensor],
                       mu: float) -> dict[str, Tensor]:
    """The multiplier step ``λ ← λ − μ(w − Δ(θ))`` (new tensors; inputs untouched). Args keyed by layer name."""
    return {n: lams[n] - mu * (weights[n].detach() - deltas[n]) for n in lams}


def run_lc(model: nn.Module, config: LC, data: Any = None, *, quiet: bool | None = None,
           log: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Run LC on ``model`` in place; return it (weights = Δ(θ), plain layers) and the history of the steps.

    Args:
        model: a trained reference model (the L steps are warm-started from its weights).
        config: the :class:`LC` settings.
        data: a :class:`compactnn.data.DataBundle` for the L steps (not needed when ``steps == 0``).
        quiet: hide progress bars; ``None`` hides them when stderr is not a terminal.
        log: called with each history entry as it is made (e.g. ``print``).

    History entries: ``{"step", "mu", "lr", "epochs", "gap"}`` with ``gap = ‖w − Δ(θ)‖`` after the C step
    (``step = -1`` is the direct compression) and ``"lambda_norm" = ‖λ‖``.
    """
    layers = select_layers(model, config.layers, what="compressible")
    if config.steps > 0:
        require_data(data, config.method)
    from ..train import fit

    weights = {n: m.weight for n, m in layers.items()}
    cstep = CStep(config)
    with torch.no_grad():
        deltas = cstep({n: w.detach().clone() for n, w in weights.items()}, None)
    lams = {n: torch.zeros_like(w) for n, w in weights.items()}
    history: list[dict] = []

    def record(step: int, mu: float | None, lr: float | None, epochs: int) -> None:
        with torch.no_grad():
            gap = math.sqrt(sum(float(((w - deltas[n]) ** 2).sum()) for n, w in weights.items()))
            lam = math.sqrt(sum(float((l ** 2).sum()) for l in lams.values()))
        history.append(dict(step=step, mu=mu, lr=lr, epochs=epochs, gap=gap, lambda_norm=lam))
        if log is not None:
            log(history[-1])

    record(-1, None, None, 0)
    hide = quiet if quiet is not None else not sys.stderr.isatty()
    steps = zip(mu_schedule(config), lr_schedule(config), epochs_schedule(config))
    for k, (mu, lr, epochs) in enumerate(tqdm(list(steps), desc="LC steps", disable=hide, file=sys.stderr)):
        fit(model, data, epochs=epochs, lr=lr, momentum=config.momentum, nesterov=config.nesterov,
            weight_decay=config.weight_decay, schedule="constant", batch_size=config.batch_size, seed=config.seed + k,
            quiet=hide, loss_fn=make_loss_fn(weights, deltas, lams, mu))
        with torch.no_grad():
            deltas = cstep({n: w.detach() - lams[n] / mu for n, w in weights.items()}, mu)
            if config.multipliers:
                lams = update_multipliers(lams, weights, deltas, mu)
        record(k, mu, lr, epochs)
    with torch.no_grad():
        for n, w in weights.items():
            w.copy_(deltas[n])
    return model, history


@register_method(LC)
def lc_compress(model: nn.Module, config: LC, data: Any = None) -> nn.Module:
    """Compress ``model`` in place with the LC algorithm and return it (plain layers holding Δ(θ))."""
    return run_lc(model, config, data)[0]


def layer_budget(model: nn.Module, layers: Any = None) -> dict[str, dict[str, float]]:
    """Per layer, how many weights are nonzero: ``{name: {"weights", "kept", "fraction", "share"}}``.

    ``share`` is the layer's part of all kept weights (how a global budget was spread). Args: ``model``;
    ``layers`` patterns as in :class:`LC` (``None`` = every Linear/Conv layer).
    """
    chosen = select_layers(model, layers, what="compressible")
    kept = {n: int(torch.count_nonzero(m.weight)) for n, m in chosen.items()}
    total = max(sum(kept.values()), 1)
    return {n: dict(weights=m.weight.numel(), kept=kept[n], fraction=kept[n] / m.weight.numel(),
                    share=kept[n] / total) for n, m in chosen.items()}


__all__ = ["LC", "CStep", "run_lc", "lc_compress", "layer_budget", "lc_penalty", "make_loss_fn", "update_multipliers",
           "mu_schedule", "lr_schedule", "epochs_schedule", "COMPRESSIONS"]
