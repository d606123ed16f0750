"""Training and evaluation of dense multi-task models (:class:`compactnn.models.padnet.PadNet` or any module with
``forward_all(x) -> {"depth", "semantics", "inter"}``) on :class:`compactnn.data.scenes.DenseDataset` data.

Seeded and deterministic on CPU: ``torch.manual_seed(seed)`` and each epoch's shuffle from a generator seeded with
``seed + epoch``. Adam with a cosine learning-rate schedule stepped every batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import DataError
from ..graph import eval_mode
from .losses import TaskWeights, multitask_loss
from .metrics import depth_metrics, segmentation_metrics


def _dense(data: Any, part: str = "train"):
    ds = getattr(data, part, data)
    if not all(hasattr(ds, a) for a in ("x", "depth", "normals", "contours", "y")):
        raise DataError("dense training needs a DenseDataset (x, depth, normals, contours, y), e.g. load('scenes')")
    return ds


def fit_dense(model: nn.Module, data: Any, *, epochs: int = 10, lr: float = 2e-3, batch_size: int = 32,
              weight_decay: float = 1e-4, seed: int = 0, weights: TaskWeights = TaskWeights(),
              step_hooks: Sequence[Callable[[nn.Module, int, int], None]] = (), quiet: bool | None = True
              ) -> nn.Module:
    """Train ``model`` in place on ``data`` (a bundle's ``train`` part or a DenseDataset) and return it.

    Args:
        model: a dense multi-task model.
        data: a :class:`DataBundle` of DenseDatasets, or a DenseDataset.
        epochs: passes over the training set.
        lr: peak learning rate of Adam (cosine decay to 0 over all steps).
        batch_size: scenes per step.
        weight_decay: Adam's L2 penalty.
        seed: seeds torch and the shuffle.
        weights: loss term weights (:class:`TaskWeights`).
        step_hooks: ``hook(model, step, total_steps)`` after every optimizer step.
        quiet: hide the progress bar.
    """
    ds = _dense(data)
    n = len(ds.x)
    steps_per_epoch = math.ceil(n / batch_size)
    total = max(epochs * steps_per_epoch, 1)
    torch.manual_seed(seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    was_training = model.training
    model.train()
    step = 0
    bar = tqdm(total=total, disable=quiet, desc="fit_dense", leave=False)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        for idx in order.split(batch_size):
            out = model.forward_all(ds.x[idx])
            loss, _ = multitask_loss(out, ds.targets(idx), weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            for hook in step_hooks:
                hook(model, step, total)
            bar.update(1)
    bar.close()
    model.train(was_training)
    return model


@torch.no_grad()
def predict_dense(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{"depth": (N,1,H,W), "semantics": (N,K,H,W) logits}`` (the tasks the model has), in eval mode."""
    parts: dict[str, list] = {}
    with eval_mode(model):
        for chunk in x.split(batch_size):
            out = model.split(model(chunk)) if hasattr(model, "split") else model.forward_all(chunk)
            for k in ("depth", "semantics"):
                if k in out:
                    parts.setdefault(k, []).append(out[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def evaluate_dense(model: nn.Module, data: Any, part: str = "test", batch_size: int = 64) -> dict[str, float]:
    """Depth metrics (:func:`depth_metrics`) and segmentation metrics (:func:`segmentation_metrics`) on ``data``'s
    ``part``; keys of the tasks the model does not predict are absent. ``num_classes`` comes from the model."""
    ds = _dense(data, part)
    pred = predict_dense(model, ds.x, batch_size)
    out: dict[str, float] = {}
    if "depth" in pred:
        m = depth_metrics(pred["depth"], ds.depth)
        out.update({k: m[k] for k in ("rmse", "rel", "log10", "delta1", "delta2", "delta3")})
    if "semantics" in pred:
        m = segmentation_metrics(pred["semantics"], ds.y, int(pred["semantics"].shape[1]))
        out.update({"pixel_acc": m["pixel_acc"], "miou": m["miou"]})
    return out


__all__ = ["fit_dense", "evaluate_dense", "predict_dense"]
