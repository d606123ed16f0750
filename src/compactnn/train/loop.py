"""The training loop (:func:`fit`) and accuracy/loss evaluation (:func:`evaluate`).

Training is seeded and deterministic on CPU: ``torch.manual_seed(seed)``, the epoch's shuffle drawn from a
generator seeded with ``seed + epoch``, ``num_workers=0`` and ``torch.use_deterministic_algorithms`` (warn-only)
while it runs. The learning-rate schedule is a ``torch.optim.lr_scheduler.LambdaLR`` stepped after every batch.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..data.user import batches_of
from ..errors import ConfigError, DataError, ModelError, TrainingDiverged
from ..graph import eval_mode, restore_modes
from . import distributed
from .checkpoint import PathLike, load_checkpoint, save_checkpoint

StepHook = Callable[[nn.Module, int, int], None]
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def diverged(step: int, epoch: int, value: float, opt: torch.optim.Optimizer) -> TrainingDiverged:
    """The one-line error for a loss that became nan or inf at 0-based ``step`` of 0-based ``epoch``."""
    return TrainingDiverged(f"training diverged at step {step + 1} (epoch {epoch + 1}): loss is {value}; "
                            f"lower lr (now {opt.param_groups[0]['lr']:.3g}) or check the data")


def _dataset(data: Any, part: str, caller: str) -> Dataset | DataLoader:
    """The Dataset or DataLoader to use: ``data.<part>`` of a bundle, or ``data`` itself."""
    inner = getattr(data, part, None)
    if isinstance(inner, (Dataset, DataLoader)):
        return inner
    if isinstance(data, (Dataset, DataLoader)):
        return data
    if inner is None and hasattr(data, "train"):
        raise DataError(f"{caller}() needs {part} data; this data has none (give a test set to evaluate on)")
    raise DataError(f"{caller}() takes a DataBundle, a Dataset or a DataLoader, got {type(data).__name__}")


def _batches(dataset: Dataset, order: Sequence[int] | None, batch_size: int, device: torch.device
             ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of ``dataset`` in ``order`` (all rows in turn if None); indexes ``.x``/``.y`` tensors directly."""
    x, y = getattr(dataset, "x", None), getattr(dataset, "y", None)
    if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
        index = torch.arange(len(x)) if order is None else torch.as_tensor(order, dtype=torch.long)
        for chunk in index.split(batch_size):
            yield x[chunk].to(device), y[chunk].to(device)
    else:  # any other map-style Dataset
        for xb, yb in DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=0):
            yield xb.to(device), yb.to(device)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _deterministic() -> Iterator[None]:
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Learning-rate multiplier after ``step`` of ``total`` steps.

    ``cosine``: ``0.5 * (1 + cos(pi * step / total))``; ``step``: x0.1 at 50% and again at 75% of training
    (the CIFAR ResNet recipe); ``constant``: 1.
    """
    t = min(step, total) / max(total, 1)
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _make_optimizer(params: list, name: str, lr: float, momentum: float, nesterov: bool, weight_decay: float
                    ) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def fit(model: nn.Module, data: Any, *, epochs: int = 10, lr: float = 0.1, optimizer: str = "sgd",
        momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 5e-4, schedule: str = "cosine",
        batch_size: int = 128, seed: int = 0, quiet: bool | None = None, checkpoint: PathLike | None = None,
        resume: bool = False, step_hooks: Sequence[StepHook] = (), loss_fn: LossFn | None = None,
        max_steps: int | None = None, val: Any = None, keep_best: bool = False) -> nn.Module:
    """Train ``model`` in place on ``data`` and return it (unwrapped, with its train/eval flags as on entry).

    The model remembers how it was trained, as ``model.compactnn_training = {"optimizer": ..., "lr": ...}``, so that a
    later fine-tune can pick a matching optimizer (:meth:`compactnn.config.FineTune.fit_kwargs`).

    Args:
        model: the module to train; its parameters' device is used for the batches.
        data: a :class:`compactnn.data.DataBundle` (trains on ``.train``), a Dataset, or a DataLoader (its own
            batches and order each epoch; ``batch_size``, the seeded shuffle, checkpoints and DDP then do not apply).
        epochs: passes over the training set.
        lr: peak learning rate.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (torch.optim).
        momentum: SGD momentum (ignored by Adam/AdamW).
        nesterov: use Nesterov momentum with SGD.
        weight_decay: L2 penalty (decoupled for AdamW); applied to every trainable parameter.
        schedule: ``"cosine"`` (to 0), ``"step"`` (x0.1 at 50% and 75%) or ``"constant"``, updated every step.
        batch_size: examples per step (per rank under torchrun).
        seed: seeds torch and the shuffle; the same seed and settings give bit-identical weights.
        quiet: hide the tqdm bar; ``None`` hides it when stderr is not a terminal. Only rank 0 ever shows it.
        checkpoint: file to write (atomically, rank 0 only) at the end of every epoch.
        resume: continue from ``checkpoint`` if it exists (else start afresh); the result equals an uninterrupted
            run with the same settings.
        step_hooks: callables ``hook(model, step, total_steps)`` run after every optimizer step, with ``step``
            counting from 1 to ``total_steps`` and ``model`` the unwrapped module.
        loss_fn: ``loss_fn(model, x, y) -> scalar loss`` replacing cross-entropy (e.g. for distillation); under
            torchrun ``model`` is the DistributedDataParallel wrapper, so call it for the forward pass.
        max_steps: stop after this many optimizer steps in all (the schedule then spans ``max_steps``).
        val: data to measure accuracy on after every epoch (a Dataset, DataLoader or DataBundle's test part).
        keep_best: with ``val``, end with the weights of the epoch that scored best on it (ties: the later epoch).

    Under torchrun (``WORLD_SIZE > 1``) the model is trained with DistributedDataParallel over gloo; see
    :mod:`compactnn.train.distributed`.
    """
    dataset = _dataset(data, "train", "fit")
    _check(val is not None or not keep_best, "keep_best=True needs val=<data> to choose the best epoch on")
    best = _BestEpoch(model, val, keep_best)
    if isinstance(dataset, DataLoader):
        _fit_loader(model, dataset, epochs=epochs, lr=lr, optimizer=optimizer, momentum=momentum,
                    nesterov=nesterov, weight_decay=weight_decay, schedule=schedule, seed=seed, quiet=quiet,
                    step_hooks=step_hooks, loss_fn=loss_fn, max_steps=max_steps, on_epoch=best)
        return _finish(model, best, optimizer, lr)
    _check(isinstance(epochs, int) and epochs >= 0, f"epochs must be an int >= 0, got {epochs!r}")
    _check(lr > 0, f"lr must be > 0, got {lr!r}")
    _check(optimizer in OPTIMIZERS, f"unknown optimizer {optimizer!r}; valid optimizers are {', '.join(OPTIMIZERS)}")
    _check(schedule in SCHEDULES, f"unknown schedule {schedule!r}; valid schedules are {', '.join(SCHEDULES)}")
    _check(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be an int >= 1, got {batch_size!r}")
    _check(weight_decay >= 0 and momentum >= 0, "weight_decay and momentum must be >= 0")
    _check(not nesterov or (optimizer == "sgd" and momentum > 0), "nesterov=True needs optimizer='sgd', momentum > 0")
    _check(max_steps is None or (isinstance(max_steps, int) and max_steps >= 1),
           f"max_steps must be None or an int >= 1, got {max_steps!r}")
    _check(not resume or checkpoint is not None, "resume=True needs checkpoint=<path> to resume from")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise DataError("the training set is empty; give fit() data with at least one example")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters; unfreeze some before calling fit()")

    parallel = distributed.setup()
    main = distributed.is_main()
    show = main and not (quiet if quiet is not None else not sys.stderr.isatty())
    torch.manual_seed(seed)
    device = _device(model)
    rows = len(distributed.sampler(dataset, seed, 0))  # this rank's rows per epoch
    # a last batch of one row would break BatchNorm in train mode ("more than 1 value per channel"): drop it
    steps_per_epoch = rows // batch_size if rows % batch_size == 1 and rows > 1 else math.ceil(rows / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    opt = _make_optimizer(params, optimizer, lr, momentum, nesterov, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(schedule, s, total))
    settings = {"optimizer": optimizer, "batch_size": batch_size, "seed": seed, "epochs": epochs,
                "schedule": schedule, "total_steps": total}
    start_epoch, step = 0, 0
    if resume and os.path.exists(checkpoint):  # type: ignore[arg-type]
        state = load_checkpoint(checkpoint)  # type: ignore[arg-type]
        saved = state.get("settings", {})
        changed = [k for k in ("optimizer", "batch_size", "seed", "total_steps") if saved.get(k) != settings[k]]
        _check(not changed, f"checkpoint {checkpoint} was written with other {', '.join(changed)}; "
               "use the same settings or pass resume=False")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ModelError(f"checkpoint {checkpoint} does not fit this model ({str(err).splitlines()[0]}); "
                             "build the same model or pass resume=False") from None
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start_epoch, step = int(state["epoch"]), int(state["step"])

    net = distributed.wrap(model) if parallel else model
    with restore_modes(model), _deterministic():
        net.train()
        for epoch in range(start_epoch, epochs):
            if step >= total:
                break
            order = distributed.sampler(dataset, seed, epoch)[: steps_per_epoch * batch_size]
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not show,
                       leave=False, file=sys.stderr)
            for x, y in _batches(dataset, order, batch_size, device):
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(net, x, y) if loss_fn is not None else F.cross_entropy(net(x), y)
                value = loss.item()
                if not math.isfinite(value):
                    bar.close()
                    raise diverged(step, epoch, value, opt)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                for hook in step_hooks:
                    hook(model, step, total)
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{opt.param_groups[0]['lr']:.3g}", refresh=False)
                bar.update()
                if step >= total:
                    break
            bar.close()
            if checkpoint is not None and main:
                save_checkpoint(checkpoint, {
                    "epoch": epoch + 1, "step": step, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "rng": torch.get_rng_state(), "settings": settings})
            distributed.barrier()
            best(epoch)
    if parallel:
        distributed.sync_buffers(model)
    return _finish(model, best, optimizer, lr)


class _BestEpoch:
    """After every epoch: the accuracy on ``val``, and (``keep_best``) a copy of the best weights so far."""

    def __init__(self, model: nn.Module, val: Any, keep: bool) -> None:
        self.model, self.val, self.keep = model, val, keep
        self.scores: list[float] = []
        self.state: dict | None = None

    def __call__(self, epoch: int) -> None:
        if self.val is None:
            return
        acc = evaluate(self.model, self.val)["accuracy"]
        if self.keep and (not self.scores or acc >= max(self.scores)):
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.scores.append(acc)


def _finish(model: nn.Module, best: _BestEpoch, optimizer: str, lr: float) -> nn.Module:
    if best.state is not None:
        model.load_state_dict(best.state)
    if best.scores:
        model.compactnn_val_accuracy = max(best.scores) if best.keep else best.scores[-1]
    model.compactnn_training = {"optimizer": optimizer, "lr": float(lr)}
    return model


def _fit_loader(model: nn.Module, loader: DataLoader, *, epochs: int, lr: float, optimizer: str, momentum: float,
                nesterov: bool, weight_decay: float, schedule: str, seed: int, quiet: bool | None,
                step_hooks: Sequence[StepHook], loss_fn: LossFn | None, max_steps: int | None,
                on_epoch: Callable[[int], None]) -> nn.Module:
    """:func:`fit` over a user's DataLoader: its own batches and order every epoch (no checkpoints, no DDP)."""
    _check(optimizer in OPTIMIZERS, f"unknown optimizer {optimizer!r}; valid optimizers are {', '.join(OPTIMIZERS)}")
    _check(schedule in SCHEDULES, f"unknown schedule {schedule!r}; valid schedules are {', '.join(SCHEDULES)}")
    _check(not distributed.requested(), "fit() with a DataLoader does not run under torchrun; pass a Dataset")
    try:
        steps_per_epoch = len(loader)
    except TypeError:
        raise DataError("fit() needs a DataLoader with a length (a map-style Dataset) to plan its lr schedule") from None
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ModelError("the model has no trainable parameters; unfreeze some before calling fit()")
    torch.manual_seed(seed)
    total = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    opt = _make_optimizer(params, optimizer, lr, momentum, nesterov, weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(schedule, s, total))
    show = not (quiet if quiet is not None else not sys.stderr.isatty())
    device, step = _device(model), 0
    with restore_modes(model):
        model.train()
        for epoch in range(epochs):
            bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False,
                       file=sys.stderr)
            for x, y in batches_of(loader):
                x, y = x.to(device), y.to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model, x, y) if loss_fn is not None else F.cross_entropy(model(x), y)
                value = loss.item()
                if not math.isfinite(value):
                    bar.close()
                    raise diverged(step, epoch, value, opt)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                for hook in step_hooks:
                    hook(model, step, total)
                bar.update()
                if step >= total:
                    break
            bar.close()
            on_epoch(epoch)
            if step >= total:
                break
    return model


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, batch_size: int = 512) -> dict[str, float]:
    """Top-1 accuracy (0..1) and mean cross-entropy of ``model`` on ``data``, in eval mode.

    Args:
        model: a classifier returning logits; its train/eval flags are restored afterwards.
        data: a :class:`compactnn.data.DataBundle` (uses ``.test``), a Dataset or a DataLoader.
        batch_size: examples per forward pass (a DataLoader batches as it was built).
    """
    dataset = _dataset(data, "test", "evaluate")
    _check(isinstance(batch_size, int) and batch_size >= 1, f"batch_size must be an int >= 1, got {batch_size!r}")
    correct, loss_sum, n = 0, 0.0, 0
    device = _device(model)
    batches = (batches_of(dataset) if isinstance(dataset, DataLoader)
               else _batches(dataset, None, batch_size, device))
    with eval_mode(model):
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == y).sum())
            n += len(y)
    if n == 0:
        raise DataError("the evaluation set is empty; give evaluate() data with at least one example")
    return {"accuracy": correct / n, "loss": loss_sum / n}
