"""The ``distill`` method: train the given model (the student) against a teacher, as a stage of its own."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..api import register_method
from ..config import FineTune, MethodConfig, NonNegative, Patterns, Range, TeacherSpec, check
from ..data.user import batches_of
from ..errors import ConfigError, TrainingDiverged
from ..layers import Target, require_data, run_finetune, select_layers
from .features import DEFAULT_WEIGHT, feature_loss
from .kd import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, load_teacher

Temperature = Annotated[float, Range(0.0, 1000.0, lo_open=True, note="distillation temperature")]
Alpha = Annotated[float, Range(0.0, 1.0, note="weight of the distillation term")]
Teacher = str | TeacherSpec | nn.Module


@dataclasses.dataclass(frozen=True)
class Distill(MethodConfig):
    """Knowledge distillation (Hinton et al., 2015): train the model against a teacher's softened outputs.

    The loss is :func:`compactnn.distill.kd_loss`: ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE`` with the KL
    averaged per example. The model is trained as ``finetune`` says (a fresh student needs a full schedule there,
    e.g. ``{epochs: 30, lr: 0.1, optimizer: sgd}``; the unset fields follow :class:`~compactnn.config.FineTune`'s
    rules). To distil while another method fine-tunes, set ``teacher`` on that method's ``finetune`` instead.

    Args:
        teacher: a ``.cnz`` path, an ``nn.Module``, or ``{model: <registry name>, args: {...}, train: {...}}``
            trained on the data first (see :func:`compactnn.distill.load_teacher`); in a recipe it may come from
            the recipe's ``teacher:`` key (required one way or the other).
        temperature: ``T``.
        alpha: weight of the soft term (``1 - alpha`` weighs the cross-entropy).
        features: ``"none"``; ``"hints"`` (FitNets, a learned 1x1 regressor per pair) or ``"attention"``
            (attention transfer) between the student's ``layers`` and the teacher's ``teacher_layers``.
        layers: student modules whose outputs are matched (any module; module order pairs them with the teacher's).
        exclude: patterns removed from ``layers``.
        teacher_layers: teacher modules, as many as the student's.
        feature_weight: weight of the feature term; unset: 100 for hints, 1000 for attention.
        finetune: the training run.
    """

    method = "distill"
    description = "Knowledge distillation (Hinton et al.) from a teacher, with optional FitNets hints / attention"
    kinds = (nn.Module,)
    example = {"teacher": {"model": "lenet300", "train": {"epochs": 1}}, "finetune": {"epochs": 1}}

    teacher: Teacher | None = None
    temperature: Temperature = DEFAULT_TEMPERATURE
    alpha: Alpha = DEFAULT_ALPHA
    features: Literal["none", "hints", "attention"] = "none"
    layers: Patterns = None
    exclude: Patterns = None
    teacher_layers: Patterns = None
    feature_weight: NonNegative | None = None
    finetune: FineTune = FineTune()

    def validate(self) -> None:
        check(self.features == "none" or (self.layers is not None and self.teacher_layers is not None),
              f"features {self.features!r} needs layers (student) and teacher_layers (teacher) patterns")
        check(self.features != "none" or self.teacher_layers is None,
              "teacher_layers is only used with features 'hints' or 'attention'")
        check(self.finetune.teacher is None and self.finetune.loss is None,
              "set the teacher on the distill stage itself, not in its finetune")


def probe_batch(data: Any, n: int = 2) -> Tensor:
    """``n`` training inputs (to read feature shapes)."""
    inner = getattr(data, "train", data)
    x = getattr(inner, "x", None)
    if isinstance(x, Tensor):
        return x[:n]
    loader = inner if isinstance(inner, DataLoader) else DataLoader(inner, batch_size=n)
    for xb, _ in batches_of(loader):
        return xb[:n]
    raise ValueError("empty training data")


def with_teacher(finetune: FineTune, teacher: Any, temperature: float, alpha: float) -> FineTune:
    """``finetune`` distilling from ``teacher``."""
    return dataclasses.replace(finetune, teacher=teacher, temperature=temperature, alpha=alpha)


@register_method(Distill)
def distill(model: nn.Module, config: Distill, data: Any, target: Target) -> nn.Module:
    """Train ``model`` in place against the teacher and return it."""
    require_data(data, config.method)
    if config.teacher is None:
        raise ConfigError("distill: no teacher; set teacher on the stage (or the recipe's teacher: key)")
    teacher = load_teacher(config.teacher, data)
    finetune = with_teacher(config.finetune, teacher, config.temperature, config.alpha)
    if config.features == "none":
        return run_finetune(model, data, finetune, config.method)
    teacher_layers = select_layers(teacher, config.teacher_layers, kinds=(nn.Module,), what="teacher")
    device = next(iter(model.parameters()), torch.empty(0)).device
    weight = DEFAULT_WEIGHT[config.features] if config.feature_weight is None else config.feature_weight
    with feature_loss(model, teacher, target.layers, teacher_layers, config.features, weight,
                      config.temperature, config.alpha, data, probe_batch(data).to(device)) as loss_fn:
        try:
            run_finetune(model, data, finetune, config.method, loss_fn=loss_fn)
        except TrainingDiverged as err:
            # e.g. hints at the default weight 100 on Caffe's LeNet-5 (no BN): inf within 8 steps, at lr 0.01 too
            raise TrainingDiverged(f"{err}, or lower feature_weight (now {weight:g}): the {config.features} term "
                                   "may dominate the loss of a net without BatchNorm") from None
    return model


__all__ = ["Distill", "distill", "probe_batch", "with_teacher"]
