"""Hinton et al.'s knowledge distillation: the loss, the teacher and the loss every fine-tune uses with a teacher.

``kd_loss(z_s, z_t, y, T, alpha) = alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(z_s, y)`` with
``p = softmax(z / T)``. The KL is summed over classes and averaged over the examples of the batch (PyTorch's
``reduction="batchmean"``): the default ``"mean"`` of ``KLDivLoss`` also divides by the number of classes, a known
bug of public code (Polino et al.'s included) that shrinks the soft term by the class count. The direction is the
one of Hinton et al. and of every public implementation: the teacher's distribution is the target, so the KL is
``sum_c p_t log(p_t / p_s)`` (``F.kl_div(log p_s, p_t)``), whose gradient in ``z_s`` is ``(p_s - p_t) / T``; the
``T^2`` factor keeps the soft term's gradient on the scale of the hard term's as ``T`` grows.

A teacher is a ``.cnz`` path (:func:`compactnn.pack.load`), an ``nn.Module``, or a
:class:`compactnn.config.TeacherSpec` (a registry model trained on the data being compressed, once per process and
data set). It always runs in eval mode and without gradients.

Teacher outputs are cached: when the training data is an in-memory data set of tensors (a DataBundle or an
``ArrayDataset``, which compactnn never augments), the teacher runs once per training example, in the first epoch,
and later epochs read its logits back. Examples are recognised by their content (a 2 x 53-bit fingerprint of the
input's bytes), so a shuffled order, a subset or a validation split hit the same cache. With a user DataLoader (which
may augment) or a Dataset of other kinds the teacher runs on every batch.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..config import FineTune, TeacherSpec
from ..errors import ConfigError, ModelError
from ..graph import eval_mode

#: Defaults when a FineTune with a teacher leaves them unset.
DEFAULT_TEMPERATURE = 4.0
DEFAULT_ALPHA = 0.9
#: How a TeacherSpec with ``train`` unset is trained (as a recipe's default ``train:``).
DEFAULT_TEACHER_TRAIN = {"epochs": 10, "lr": 0.1, "optimizer": "sgd"}


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, temperature: float = DEFAULT_TEMPERATURE,
            alpha: float = DEFAULT_ALPHA) -> Tensor:
    """Hinton's distillation loss ``alpha * T^2 * KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - alpha) * CE``.

    Args:
        student_logits: ``(N, C)`` logits of the student (gradients flow through them).
        teacher_logits: ``(N, C)`` logits of the teacher (detached here).
        target: ``(N,)`` integer labels for the cross-entropy term.
        temperature: ``T > 0``.
        alpha: weight of the soft term, in [0, 1].

    Returns:
        The scalar loss; the KL is summed over classes and averaged over the ``N`` examples (``batchmean``).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ModelError(f"student logits have shape {tuple(student_logits.shape)} but the teacher's have "
                         f"{tuple(teacher_logits.shape)}; the teacher must predict the same classes")
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha!r}")
    t = float(temperature)
    log_p_s = F.log_softmax(student_logits / t, dim=1)
    p_t = F.softmax(teacher_logits.detach() / t, dim=1)
    soft = F.kl_div(log_p_s, p_t, reduction="batchmean")
    if alpha == 1.0:
        return t * t * soft
    return alpha * t * t * soft + (1.0 - alpha) * F.cross_entropy(student_logits, target)


# ---------------------------------------------------------------------------------------------------- teachers
_TRAINED: dict[tuple, tuple[Any, nn.Module]] = {}  # (spec, id(train set)) -> (train set, teacher)


def _train_set(data: Any) -> Any:
    inner = getattr(data, "train", None)
    return inner if isinstance(inner, (Dataset, DataLoader)) else data


def load_teacher(teacher: Any, data: Any = None) -> nn.Module:
    """The teacher module that ``teacher`` names.

    Args:
        teacher: an ``nn.Module`` (used as it is), a ``.cnz`` path (loaded with :func:`compactnn.pack.load`) or a
            :class:`~compactnn.config.TeacherSpec` (or its mapping): a registry model built for ``data`` and trained
            on it with ``spec.train`` (unset: 10 epochs of SGD at lr 0.1, cosine). A trained spec is kept for the
            rest of the process, keyed by the spec and the training set, so stages that share it train it once.
        data: the data being compressed (needed for a spec).
    """
    if isinstance(teacher, nn.Module):
        return teacher
    if isinstance(teacher, (str, os.PathLike)):
        from .. import pack

        if not os.path.isfile(teacher):
            raise ConfigError(f"teacher file {os.fspath(teacher)} not found; give a .cnz written by compactnn")
        return pack.load(teacher)
    if isinstance(teacher, dict):
        from ..config import build

        teacher = build(TeacherSpec, teacher, "teacher")
    if not isinstance(teacher, TeacherSpec):
        raise ConfigError(f"teacher must be a .cnz path, an nn.Module or {{model: ..., train: ...}}, "
                          f"got {type(teacher).__name__}")
    if data is None:
        raise ConfigError(f"teacher {{model: {teacher.model}}} is trained on the data being compressed; pass data")
    train_set = _train_set(data)
    key = (teacher, id(train_set))
    cached = _TRAINED.get(key)
    # The entry keeps its training set alive and is only used for that very object: an id is an address, and a
    # freed set's address may be given to another set, which must not get this teacher.
    if cached is None or cached[0] is not train_set:
        from .. import models, train

        model = models.create(teacher.model, data=data, seed=teacher.seed, **dict(teacher.args))
        settings = dict(DEFAULT_TEACHER_TRAIN)
        if teacher.train is not None:
            settings.update(teacher.train.fit_kwargs("sgd"))
            if teacher.train.lr is None:
                settings["lr"] = DEFAULT_TEACHER_TRAIN["lr"] if settings["optimizer"] == "sgd" else 1e-3
            if teacher.train.epochs is None:
                settings["epochs"] = DEFAULT_TEACHER_TRAIN["epochs"]
        settings.setdefault("seed", teacher.seed)
        train.fit(model, data, **settings)
        _TRAINED.pop(key, None)
        if len(_TRAINED) >= 4:
            _TRAINED.pop(next(iter(_TRAINED)))
        _TRAINED[key] = (train_set, model)
    return _TRAINED[key][1]


def cacheable(data: Any) -> bool:
    """Whether teacher outputs may be cached for ``data``: an in-memory float32 tensor data set (no augmentation)."""
    inner = _train_set(data)
    x = getattr(inner, "x", None)
    return (isinstance(inner, Dataset) and not isinstance(inner, DataLoader) and isinstance(x, Tensor)
            and x.dtype == torch.float32 and isinstance(getattr(inner, "y", None), Tensor))


class TeacherOutputs:
    """Call the teacher on a batch, caching its outputs per example (see the module docstring).

    Args:
        teacher: the teacher module (run in eval mode, without gradients).
        cache: keep outputs per example, keyed by the input's content.
        run: ``run(teacher, x) -> tuple of tensors`` (default: ``(teacher(x),)``); every tensor has the batch first.
    """

    def __init__(self, teacher: nn.Module, cache: bool,
                 run: Callable[[nn.Module, Tensor], tuple[Tensor, ...]] | None = None) -> None:
        self.teacher, self.cache = teacher, cache
        self.run = run or (lambda t, x: (t(x),))
        self.store: dict[tuple[int, int], tuple[Tensor, ...]] = {}
        self.calls = 0  # examples the teacher has run on (for tests)
        self._weights: tuple[Tensor, Tensor] | None = None

    def keys(self, x: Tensor) -> list[tuple[int, int]]:
        """Two 53-bit fingerprints of each row's bytes (exact integer arithmetic: no float rounding)."""
        flat = x.detach().reshape(len(x), -1).contiguous()
        bits = flat.view(torch.int32).to(torch.int64)
        halves = torch.cat([bits & 0xFFFF, (bits >> 16) & 0xFFFF], dim=1)  # values < 2^16
        if self._weights is None or self._weights[0].numel() != halves.shape[1]:
            g = torch.Generator().manual_seed(0x5EED)
            self._weights = tuple(torch.randint(1, 1 << 24, (halves.shape[1],), generator=g) for _ in range(2))
        w1, w2 = (w.to(halves.device) for w in self._weights)
        k1, k2 = (halves * w1).sum(1), (halves * w2).sum(1)  # < 2^16 * 2^24 * cols: exact in int64
        return list(zip(k1.tolist(), k2.tolist()))

    @torch.no_grad()
    def _forward(self, x: Tensor) -> tuple[Tensor, ...]:
        device = next(iter(self.teacher.parameters()), torch.empty(0)).device
        with eval_mode(self.teacher):
            out = self.run(self.teacher, x.to(device))
        self.calls += len(x)
        return tuple(o.detach().to(x.device) for o in out)

    def __call__(self, x: Tensor) -> tuple[Tensor, ...]:
        if not self.cache or x.dtype != torch.float32:
            return self._forward(x)
        keys = self.keys(x)
        missing = [i for i, k in enumerate(keys) if k not in self.store]
        if missing:
            fresh = self._forward(x[missing] if len(missing) < len(x) else x)
            for j, i in enumerate(missing):
                self.store[keys[i]] = tuple(o[j].clone() for o in fresh)
        rows = [self.store[k] for k in keys]
        return tuple(torch.stack([r[j] for r in rows]) for j in range(len(rows[0])))


def settings(finetune: FineTune) -> tuple[float, float]:
    """``(temperature, alpha)`` of a FineTune, with the defaults filled in."""
    t = finetune.temperature if finetune.temperature is not None else DEFAULT_TEMPERATURE
    a = finetune.alpha if finetune.alpha is not None else DEFAULT_ALPHA
    return t, a


def finetune_loss(finetune: FineTune, data: Any) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """``loss_fn(net, x, y)`` for :func:`compactnn.train.fit`: :func:`kd_loss` against ``finetune.teacher``.

    This is what :func:`compactnn.layers.run_finetune` trains with when a FineTune names a teacher, so every method
    that fine-tunes through it distils without code of its own. Teacher logits are cached per example when ``data``
    allows it (:func:`cacheable`).
    """
    teacher = load_teacher(finetune.teacher, data)
    t, a = settings(finetune)
    outputs = TeacherOutputs(teacher, cacheable(data))

    def loss_fn(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return kd_loss(net(x), outputs(x)[0], y, t, a)

    loss_fn.teacher_outputs = outputs  # type: ignore[attr-defined]
    return loss_fn


__all__ = ["kd_loss", "load_teacher", "finetune_loss", "TeacherOutputs", "cacheable", "settings",
           "DEFAULT_TEMPERATURE", "DEFAULT_ALPHA"]
