"""CLIP-Q's hyper-parameter search: ``(p, bits)`` per layer by Bayesian optimization with optuna.

**Objective.** A trial picks ``(p_i, bits_i)`` for every selected layer, applies
:func:`~compactnn.prune.clipq.clip_quantize` to each (no training) and scores ``error - lam * saved``: ``error`` is
the top-1 error (0..1) on a held-out part of the training set (``DataBundle.split_train(heldout, seed)``) and
``saved`` is the compression benefit, the bits saved over fp32 summed over the layers, divided by the layers' fp32
bits (so ``lam`` is unitless). Stored bits are counted exactly as the packed file stores each quantized weight
(:func:`~compactnn.prune.clipq.stored_bits`, zstd level 0).

**Joint, not layer by layer.** The paper scores each layer alone, ``eps(theta_i) - lam * c_i(theta_i)``. We optimize
all layers' ``theta`` in one study: ``c`` is a sum over layers either way, the error then includes how the layers'
errors interact, one study is what lets many workers share the search, and the *global* size target becomes one
constraint (``sum of stored bits <= fp32 bits / ratio``), set with ``trial.set_constraint`` (optuna 5), which
both samplers model. The layers are then fine-tuned together (:func:`compactnn.prune.clipq.clip_q`). With many layers
(2 dimensions each) the GP needs more trials; the first trial tried is the most compressing corner (``p`` high,
``bits`` low), so a feasible point is known from the start when one exists. Fine-tuning keeps each layer's nonzero
count (``p`` per sign) and codebook size, but the kept positions move, so the final stored size can differ from the
search's by a little (a few bytes on LeNets): leave a small margin in ``ratio``.

**Sampler.** ``optuna.samplers.GPSampler`` (Gaussian process, log-EI; the paper used GP-based BO), deterministic
objective; ``sampler="tpe"`` switches to TPE, which scales better past a few hundred trials. Both take the constraint.

**Storage.** ``storage=None`` keeps the study in memory (one process). Any optuna RDB URL shares it::

    ClipQ(search=True, storage="sqlite:////runs/clipq/study.db", study_name="lenet5-clipq", trials=20)
    ClipQ(search=True, storage="postgresql://user:pass@dbhost/optuna", study_name="lenet5-clipq", trials=20)

Every worker (process or machine) that runs the same model, data and config against the same URL and study name
joins the study (``load_if_exists=True``), runs its ``trials`` trials and sees all the others' trials, so N workers
make N x ``trials`` trials; each then picks the best feasible trial of the whole study. SQLite suits workers on one
machine (a local file, not NFS); PostgreSQL/MySQL suit many machines. A study remembers the layers it searched and
refuses a different model or layer set.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
import warnings
from typing import Any, Mapping

import threadpoolctl
import torch
from torch import nn

from ..errors import ConfigError
from ..layers import resolve
from .clipq_ops import clip_quantize, stored_bits


@dataclasses.dataclass
class SearchResult:
    """What :func:`search` found.

    Attributes:
        settings: ``{layer: (p, bits)}`` of the best feasible trial.
        error: its held-out error (0..1), without fine-tuning.
        bits: ``{layer: stored bits}`` of its quantized weights.
        fp32_bits: ``{layer: 32 * numel}``.
        ratio: ``sum(fp32_bits) / sum(bits)``, the compression factor of the selected layers.
        study: the optuna study (all trials of every worker).
    """

    settings: dict[str, tuple[float, int]]
    error: float
    bits: dict[str, int]
    fp32_bits: dict[str, int]
    ratio: float
    study: Any


def open_study(storage: str | None, study_name: str, *, sampler: str = "gp", seed: int = 0):
    """Create or join (``load_if_exists=True``) a minimizing optuna study.

    Args:
        storage: ``None`` (in memory) or an RDB URL (``sqlite:///path.db``, ``postgresql://...``).
        study_name: name of the study inside the storage.
        sampler: ``"gp"`` (GPSampler) or ``"tpe"`` (TPESampler).
        seed: sampler seed; with a shared storage it is mixed with the process id so workers do not repeat each
            other's random start-up trials.

    Raises:
        ConfigError: an unknown sampler or a storage URL optuna cannot open.
    """
    try:
        import optuna
    except ImportError:
        optuna = None
    if optuna is None or not hasattr(optuna.trial.Trial, "set_constraint"):
        raise ConfigError("clip-q: the search needs optuna >= 5.0; install it with pip install 'optuna>=5'")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if storage is not None:
        seed = (seed * 1_000_003 + os.getpid()) % 2**31
    if sampler == "gp":
        with warnings.catch_warnings():  # deterministic_objective is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = optuna.samplers.GPSampler(seed=seed, deterministic_objective=True)
    elif sampler == "tpe":
        chosen = optuna.samplers.TPESampler(seed=seed)
    else:
        raise ConfigError(f"clip-q: sampler must be 'gp' or 'tpe', got {sampler!r}")
    store: Any = None
    if storage is not None:
        kwargs = {"connect_args": {"timeout": 60}} if storage.startswith("sqlite") else None
        for attempt in range(6):
            try:
                store = optuna.storages.RDBStorage(storage, engine_kwargs=kwargs)
                break
            except Exception as err:  # sqlalchemy raises many kinds; name the URL and the cause in one line
                msg = " ".join(str(err).split())[:200]
                racing = type(err).__name__ == "IntegrityError" or "already exists" in msg or "locked" in msg
                if attempt < 5 and racing:
                    time.sleep(0.2 * (attempt + 1))  # workers starting together race to create the tables
                    continue
                raise ConfigError(f"clip-q: cannot open optuna storage {storage!r} ({type(err).__name__}: {msg}); "
                                  f"use a URL such as sqlite:///study.db") from None
    return optuna.create_study(storage=store, sampler=chosen, study_name=study_name, direction="minimize",
                               load_if_exists=True)


def _check_study(study, names: list[str], fp32: Mapping[str, int], config: Any) -> None:
    """Tag a fresh study with its layers; refuse a study made for other layers or ranges."""
    tag = {"layers": names, "fp32_bits": [fp32[n] for n in names], "sparsity_range": list(config.sparsity_range),
           "bits_range": list(config.bits_range), "ratio": config.ratio, "lam": config.lam}
    old = study.user_attrs.get("clipq")
    if old is None:
        study.set_user_attr("clipq", tag)
    elif old != tag:
        raise ConfigError(f"clip-q: study {study.study_name!r} in {config.storage} was made for another search "
                          f"(layers {old.get('layers')}, ranges or target differ); use another study_name")


def search(model: nn.Module, config: Any, data: Any, *, layers: Mapping[str, nn.Module] | None = None,
           quiet: bool | None = None) -> SearchResult:
    """Choose ``(p, bits)`` per selected layer of ``model`` by Bayesian optimization (the model is not changed).

    Args:
        model: the trained model.
        config: the :class:`~compactnn.prune.clipq.ClipQ` config (``trials``, ``ratio``, ``lam``,
            ``sparsity_range``, ``bits_range``, ``storage``, ``study_name``, ``sampler``, ``heldout``, ``seed``).
        layers: ``{name: module}`` to search over; ``None`` = the config's ``layers``/``exclude`` in ``model``.
        data: the :class:`compactnn.data.DataBundle`; ``split_train(config.heldout, config.seed)`` gives the
            held-out rows the error is measured on.
        quiet: hide optuna's progress bar; ``None`` hides it when stderr is not a terminal.

    Raises:
        ConfigError: no trial of the study meets ``ratio`` (raise ``trials``, widen the ranges or relax the
            target), or the study belongs to another search.
    """
    from ..train import evaluate

    layers = resolve(model, config).layers if layers is None else layers
    names = list(layers)
    work = copy.deepcopy(model).eval()
    work_layers = {n: m for n, m in work.named_modules() if n in layers}
    originals = {n: m.weight.detach().clone() for n, m in layers.items()}
    fp32 = {n: 32 * w.numel() for n, w in originals.items()}
    total = sum(fp32.values())
    budget = None if config.ratio is None else total / config.ratio
    _, held = data.split_train(config.heldout, seed=config.seed)

    study = open_study(config.storage, config.study_name, sampler=config.sampler, seed=config.seed)
    _check_study(study, names, fp32, config)
    if not study.trials:  # the most compressing corner first: a known feasible point if there is one
        study.enqueue_trial({**{f"{n}.p": config.sparsity_range[1] for n in names},
                             **{f"{n}.bits": config.bits_range[0] for n in names}})

    def objective(trial) -> float:
        # suggest first: the GP sampler fits its model with autograd, which must not run under no_grad
        theta = {n: (trial.suggest_float(f"{n}.p", *config.sparsity_range), trial.suggest_int(f"{n}.bits", *config.bits_range))
                 for n in names}
        bits = {}
        with torch.no_grad():
            for n in names:
                q = clip_quantize(originals[n], *theta[n])
                work_layers[n].weight.copy_(q)
                bits[n] = stored_bits(q)
        error = 1.0 - evaluate(work, held)["accuracy"]
        used = sum(bits.values())
        trial.set_user_attr("error", error)
        trial.set_user_attr("bits", bits)
        if budget is not None:
            trial.set_constraint("size", (used - budget) / total)  # feasible when <= 0
        return error - config.lam * (total - used) / total

    show = (not quiet) if quiet is not None else sys.stderr.isatty()
    # One BLAS thread: the GP's many tiny L-BFGS-B solves (scipy, OpenBLAS) run 3-4x slower with more (measured).
    with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
        study.optimize(objective, n_trials=config.trials, show_progress_bar=show)
    return best_result(study, names, fp32, budget)


def best_result(study, names: list[str], fp32: Mapping[str, int], budget: float | None) -> SearchResult:
    """The best completed trial of ``study`` whose stored bits are within ``budget`` (any trial if ``None``)."""
    import optuna

    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    feasible = [t for t in done if budget is None or sum(t.user_attrs["bits"].values()) <= budget]
    if not feasible:
        smallest = min((sum(t.user_attrs["bits"].values()) for t in done), default=math.nan)
        raise ConfigError(f"clip-q: none of the {len(done)} trials meets ratio (best "
                          f"{sum(fp32.values()) / smallest:.1f}x); raise trials or sparsity_range, lower bits_range, "
                          f"or relax ratio")
    best = min(feasible, key=lambda t: (t.value, t.number))
    settings = {n: (float(best.params[f"{n}.p"]), int(best.params[f"{n}.bits"])) for n in names}
    bits = {n: int(best.user_attrs["bits"][n]) for n in names}
    return SearchResult(settings=settings, error=float(best.user_attrs["error"]), bits=bits, fp32_bits=dict(fp32),
                        ratio=sum(fp32.values()) / max(sum(bits.values()), 1), study=study)


__all__ = ["search", "open_study", "best_result", "SearchResult"]
