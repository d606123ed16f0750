"""Feature distillation: FitNets hints (Romero et al., ICLR 2015) and attention transfer (Zagoruyko & Komodakis,
ICLR 2017), added to Hinton's loss.

Student layers (``layers``) and teacher layers (``teacher_layers``) are chosen with the shared pattern vocabulary
over module names; the i-th selected student module (in module order) is paired with the i-th teacher module, and
their outputs are read with forward hooks.

- **Hints**: a learned regressor maps the student's feature to the teacher's shape (a 1x1 convolution for 4-D
  features, a linear map for 2-D ones), and the loss is the mean squared error to the teacher's feature. FitNets
  trains the hint in a first stage and then distils; here (as in most re-implementations, e.g. CRD's RepDistiller)
  the hint term is added to the KD loss in one stage: ``kd_loss + weight * sum_pairs mse``, weight 100 by default.
  The regressors train with the student and are dropped at the end.
- **Attention transfer**: ``a(F) = normalize(mean_c F^2)`` flattened over space; the loss is
  ``weight * sum_pairs mean((a_s - a_t)^2)``, weight 1000 by default (the paper's beta).

Where the spatial sizes of a pair differ, the larger map is average-pooled to the smaller (adaptive pooling).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ModelError
from ..graph import eval_mode
from .kd import TeacherOutputs, cacheable, kd_loss

DEFAULT_WEIGHT = {"hints": 100.0, "attention": 1000.0}
REGRESSORS = "compactnn_hint_regressors"


def _match(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    if s.dim() == 4 and t.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
        size = (min(s.shape[-2], t.shape[-2]), min(s.shape[-1], t.shape[-1]))
        s = F.adaptive_avg_pool2d(s, size) if s.shape[-2:] != size else s
        t = F.adaptive_avg_pool2d(t, size) if t.shape[-2:] != size else t
    return s, t


def attention_map(f: Tensor) -> Tensor:
    """Zagoruyko & Komodakis's spatial attention ``normalize(mean_c f^2)``, flattened: ``(N, H*W)``."""
    if f.dim() < 3:
        raise ModelError(f"attention transfer needs feature maps (N, C, H, W), got a {f.dim()}-D output; pick "
                         "convolutional layers")
    return F.normalize(f.pow(2).mean(1).reshape(len(f), -1), dim=1)


def _first(out: Any) -> Tensor:
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    raise ModelError(f"a hooked layer returned {type(out).__name__}, not a tensor; pick another layer")


@contextlib.contextmanager
def _hooks(modules: list[nn.Module], store: list) -> Iterator[None]:
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: store.__setitem__(k, _first(out)))
               for k, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _regressor(s: Tensor, t: Tensor) -> nn.Module:
    if s.dim() == 4 and t.dim() == 4:
        return nn.Conv2d(s.shape[1], t.shape[1], kernel_size=1, bias=False)
    if s.dim() == 2 and t.dim() == 2:
        return nn.Linear(s.shape[1], t.shape[1], bias=False)
    raise ModelError(f"hints pair a {s.dim()}-D student feature with a {t.dim()}-D teacher feature; pick layers "
                     "whose outputs are both (N, C, H, W) or both (N, F)")


@contextlib.contextmanager
def feature_loss(student: nn.Module, teacher: nn.Module, student_layers: dict[str, nn.Module],
                 teacher_layers: dict[str, nn.Module], kind: str, weight: float | None, temperature: float,
                 alpha: float, data: Any, probe: Tensor) -> Iterator[Any]:
    """Context manager giving ``loss_fn(net, x, y)``: KD plus the hint or attention term (see the module docstring).

    While it is open the hint regressors are a submodule of ``student`` (named ``compactnn_hint_regressors``) so that
    :func:`compactnn.train.fit` trains them; they are removed on exit. ``probe`` is a small input batch used to
    read the feature shapes.
    """
    if len(student_layers) != len(teacher_layers):
        raise ModelError(f"{kind}: {len(student_layers)} student layers ({', '.join(student_layers)}) but "
                         f"{len(teacher_layers)} teacher layers ({', '.join(teacher_layers)}); select as many of each")
    weight = DEFAULT_WEIGHT[kind] if weight is None else weight
    s_mods, t_mods = list(student_layers.values()), list(teacher_layers.values())
    s_feats: list = [None] * len(s_mods)
    t_feats: list = [None] * len(t_mods)

    def run_teacher(t: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
        with _hooks(t_mods, t_feats):
            logits = t(x)
        return (logits, *t_feats)

    outputs = TeacherOutputs(teacher, cacheable(data), run_teacher)
    regressors = nn.ModuleList()
    if kind == "hints":
        with torch.no_grad(), eval_mode(student), _hooks(s_mods, s_feats):
            student(probe)
        t_probe = outputs._forward(probe)[1:]
        for s, t in zip(s_feats, t_probe):
            s, t = _match(s, t)
            regressors.append(_regressor(s, t))
        device = next(iter(student.parameters()), torch.empty(0)).device
        regressors.to(device)
        student.add_module(REGRESSORS, regressors)

    def loss_fn(net: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with _hooks(s_mods, s_feats):
            logits = net(x)
        logits_t, *feats_t = outputs(x)
        loss = kd_loss(logits, logits_t, y, temperature, alpha)
        extra = logits.new_zeros(())
        for k, (s, t) in enumerate(zip(s_feats, feats_t)):
            if kind == "hints":
                s, t = _match(s, t)
                extra = extra + F.mse_loss(regressors[k](s), t)
            else:
                s, t = _match(s, t)
                extra = extra + (attention_map(s) - attention_map(t)).pow(2).mean()
        loss_fn.last_feature = float(extra.detach())  # type: ignore[attr-defined]
        return loss + weight * extra

    loss_fn.teacher_outputs = outputs  # type: ignore[attr-defined]
    try:
        yield loss_fn
    finally:
        if REGRESSORS in student._modules:
            del student._modules[REGRESSORS]


__all__ = ["feature_loss", "attention_map", "DEFAULT_WEIGHT"]
