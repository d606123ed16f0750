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
from typing import Annotated, Any, Callable, Literal, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ..api import register_method
from ..config import (FineTune, Fraction, MethodConfig, Patterns, PositiveInt, Range, Sparsity, check)
from ..layers import WEIGHT_LAYERS, Target, require_data, resolve, select_layers
from . import csteps

COMPRESSIONS = ("l0", "l1", "l0-penalty", "l1-penalty", "codebook", "binary", "scaled-binary", "ternary", "low-rank",
                "codebook+l0")
DP_LIMIT = 50_000_000  # largest k·n solved by the exact 1-D dynamic program at the warm start (O(k·n) memory)


#: The LC toolkit's L-step settings for LeNet300 (Nesterov SGD, lr 0.1 constant within a step, batch 256, 20 epochs).
TOOLKIT_L_STEP = FineTune(epochs=20, lr=0.1, optimizer="sgd", momentum=0.9, nesterov=True, schedule="constant",
                          batch_size=256, weight_decay=0.0, seed=0)


@dataclasses.dataclass(frozen=True)
class LC(MethodConfig):
    """Settings of the LC algorithm (defaults: the authors' toolkit schedule for LeNet-300-100 pruning).

    Args:
        compression: the C step. ``"l0"``: keep the ``1 − sparsity`` largest |w| (``‖θ‖₀ ≤ κ``); ``"l1"``:
            Euclidean projection on the ℓ1 ball of radius ``kappa`` (Duchi et al. 2008); ``"l0-penalty"`` /
            ``"l1-penalty"``: ``α‖θ‖₀`` / ``α‖θ‖₁`` penalties (hard / soft threshold at √(2α/μ) / α/μ);
            ``"codebook"``: adaptive ``k``-codebook per layer (1-D k-means, warm-started; exact DP optimum at the warm
            start); ``"binary"`` {−1, +1}, ``"scaled-binary"`` {±a}, ``"ternary"`` {−a, 0, +a} per layer;
            ``"low-rank"``: rank ``rank`` per layer (truncated SVD); ``"codebook+l0"``: additive combination of a
            ``k``-codebook per layer and a sparse correction holding ``1 − correction_sparsity`` of the weights, by
            ``rounds`` of alternation.
        sparsity: fraction of the selected weights removed by ``"l0"``, in [0, 1) (the paper's κ is ``1 − sparsity``
            of the weights).
        scope: ``"global"``: one budget over all selected layers (LC decides how to spread it; the paper's
            setting); ``"layer"``: every layer keeps its own fraction. Applies to l0, l1 and the sparse correction.
        kappa: ℓ1 radius for ``"l1"``; a fraction in (0, 1] of the reference weights' ‖w‖₁ when
            ``kappa_relative`` (per layer with ``scope="layer"``), else an absolute radius > 0.
        kappa_relative: read ``kappa`` as a fraction of the reference ‖w‖₁ (True) or as the radius itself.
        alpha: penalty weight α > 0 for ``"l0-penalty"`` and ``"l1-penalty"``.
        k: codebook size K ≥ 1 for ``"codebook"`` and ``"codebook+l0"``.
        rank: target rank r ≥ 1 for ``"low-rank"`` (capped per layer at min(out, in·kh·kw)).
        correction_sparsity: fraction of the weights left out of the sparse correction of ``"codebook+l0"``
            (0.99: 1% of the weights are corrected), in (0, 1).
        rounds: alternation rounds of the additive combination (the paper uses about 10).
        layers: ``fnmatch`` patterns over module names; ``None`` = every Linear/Conv weight. Biases stay free.
        exclude: patterns of layers left alone.
        mu0: μ of the first L step (toolkit: 9e-5).
        mu_factor: a ≥ 1, ``μ_k = mu0·a^k`` (toolkit: 1.1).
        steps: number of L/C steps (toolkit: 40). ``0`` returns the direct compression (no data needed).
        finetune: the L step's training: ``epochs`` per L step (toolkit 20), ``lr`` of the first step (0.1, constant
            within a step), Nesterov SGD with momentum 0.9, batch 256, no weight decay (the LC penalty already pulls
            the weights); the optimizer is rebuilt at every L step, as in the toolkit; the L step k shuffles with
            ``seed + k``. Fields left unset keep these values.
        first_epochs: epochs of the first L step (toolkit: 40); ``None`` = ``finetune.epochs``.
        lr_decay: the L step k uses ``lr·lr_decay^k`` (toolkit: 0.98).
        multipliers: augmented Lagrangian (True) or quadratic penalty with λ ≡ 0 (False).

    Penalty forms have no μ → 0 direct compression (it would zero every weight), so their warm start uses ``mu0``.
    """

    method = "lc"
    description = "LC algorithm (augmented Lagrangian): pruning, quantization, low rank by learning-compression steps"
    kinds = WEIGHT_LAYERS
    example = {"compression": "l0", "sparsity": 0.8, "steps": 1, "finetune": {"epochs": 1}, "first_epochs": 1}
    renamed = {"keep": "use sparsity = 1 - keep (the fraction removed)",
               "sparse_keep": "use correction_sparsity = 1 - sparse_keep",
               "epochs_per_step": "use finetune: {epochs: ...} (epochs per L step)",
               **{k: f"use finetune: {{{k}: ...}}" for k in ("lr", "momentum", "nesterov", "batch_size",
                                                              "weight_decay", "seed")}}

    compression: Literal["l0", "l1", "l0-penalty", "l1-penalty", "codebook", "binary", "scaled-binary", "ternary",
                         "low-rank", "codebook+l0"] = "l0"
    sparsity: Sparsity | None = None
    scope: Literal["global", "layer"] = "global"
    kappa: Annotated[float, Range(0.0, 1e12, lo_open=True)] | None = None
    kappa_relative: bool = True
    alpha: Annotated[float, Range(0.0, 1e12, lo_open=True)] | None = None
    k: PositiveInt = 2
    rank: PositiveInt | None = None
    correction_sparsity: Fraction = 0.99
    rounds: PositiveInt = 10
    layers: Patterns = None
    exclude: Patterns = None
    mu0: Annotated[float, Range(0.0, 1e12, lo_open=True)] = 9e-5
    mu_factor: Annotated[float, Range(1.0, 1e6)] = 1.1
    steps: Annotated[int, Range(0, 100_000)] = 40
    finetune: FineTune = TOOLKIT_L_STEP
    first_epochs: PositiveInt | None = 40
    lr_decay: Annotated[float, Range(0.0, 1.0, lo_open=True)] = 0.98
    multipliers: bool = True

    def validate(self) -> None:
        c = self.compression
        check(c != "l0" or self.sparsity is not None, "compression 'l0' needs sparsity, the fraction of weights removed")
        if c == "l1":
            check(self.kappa is not None, "compression 'l1' needs kappa, the l1 radius (relative or absolute)")
            check(not self.kappa_relative or self.kappa <= 1.0,
                  f"kappa must be in (0, 1] with kappa_relative, got {self.kappa!r}")
        check(c not in ("l0-penalty", "l1-penalty") or self.alpha is not None,
              f"compression {c!r} needs alpha > 0 (the penalty weight)")
        check(c != "low-rank" or self.rank is not None, "compression 'low-rank' needs rank, an integer >= 1")
        check(self.finetune is not None, "the L steps train: finetune cannot be null (use steps: 0 for none)")
        check(not self.finetune.nesterov or (self.finetune.momentum or 0) > 0,
              "finetune.nesterov needs finetune.momentum > 0; set nesterov to false")


def mu_schedule(config: LC) -> list[float]:
    """The penalty parameters ``μ_k = mu0·mu_factor^k`` for ``k < steps``."""
    return [config.mu0 * config.mu_factor ** k for k in range(config.steps)]


def lr_schedule(config: LC) -> list[float]:
    """The learning rate of every L step, ``lr·lr_decay^k`` (constant within the step, as in the toolkit)."""
    lr = config.finetune.fit_kwargs()["lr"]
    return [lr * config.lr_decay ** k for k in range(config.steps)]


def epochs_schedule(config: LC) -> list[int]:
    """The epochs of every L step: ``first_epochs`` for the first, ``finetune.epochs`` for the others."""
    per_step = config.finetune.fit_kwargs()["epochs"]
    first = config.first_epochs if config.first_epochs is not None else per_step
    return [first if k == 0 else per_step for k in range(config.steps)]


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
            kappa = self._sparse_counts({n: ws[n].numel() for n in names}, 1.0 - cfg.sparsity)
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
        kappa = self._sparse_counts(dict(zip(names, sizes)), 1.0 - self.config.correction_sparsity)
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
           log: Callable[[dict], None] | None = None, target: Target | None = None) -> tuple[nn.Module, list[dict]]:
    """Run LC on ``model`` in place; return it (weights = Δ(θ), plain layers) and the history of the steps.

    Args:
        model: a trained reference model (the L steps are warm-started from its weights).
        config: the :class:`LC` settings.
        data: a :class:`compactnn.data.DataBundle` for the L steps (not needed when ``steps == 0``).
        quiet: hide progress bars; ``None`` hides them when stderr is not a terminal.
        log: called with each history entry as it is made (e.g. ``print``).
        target: the layers to compress (from :func:`compactnn.compress`); ``None`` resolves ``config`` on ``model``.

    History entries: ``{"step", "mu", "lr", "epochs", "gap"}`` with ``gap = ‖w − Δ(θ)‖`` after the C step
    (``step = -1`` is the direct compression) and ``"lambda_norm" = ‖λ‖``.
    """
    layers = (target or resolve(model, config)).layers
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
    train = config.finetune.fit_kwargs()
    seed = train.pop("seed", 0)
    for k, (mu, lr, epochs) in enumerate(tqdm(list(steps), desc="LC steps", disable=hide, file=sys.stderr)):
        fit(model, data, **{**train, "epochs": epochs, "lr": lr}, seed=seed + k, quiet=hide,
            loss_fn=make_loss_fn(weights, deltas, lams, mu))
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
def lc_compress(model: nn.Module, config: LC, data: Any, target: Target) -> nn.Module:
    """Compress ``model`` in place with the LC algorithm and return it (plain layers holding Δ(θ))."""
    return run_lc(model, config, data, target=target)[0]


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
