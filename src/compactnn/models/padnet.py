"""PAD-Net (Xu, Ouyang, Wang & Sebe, CVPR 2018): multi-task prediction-and-distillation for depth and scene parsing.

``create("padnet", variant="C", num_classes=6, input_shape=(3, 64, 64))``. Variants:

- ``"A"``, ``"B"``, ``"C"``: PAD-Net with the three multimodal distillation modules (below);
- ``"single-depth"``, ``"single-semantics"``: one task, same encoder, same decoder;
- ``"multi-task"``: plain multi-task net, the same encoder shared by a depth and a semantic decoder, no
  intermediate tasks and no distillation.

**Structure** (all variants share the encoder and the decoders; widths are ``widths=(c1, c2, c3)``, ``feat``):

1. *Encoder*: three stages, each a stride-2 3x3 conv then a 3x3 conv (conv-BN-ReLU), to 1/2, 1/4 and 1/8 of the
   input; the 1/8 map is upsampled (nearest, x2), projected by a 1x1 conv and added to the 1/4 map (a one-level
   feature pyramid), then a 3x3 conv: the shared feature ``f`` at **1/4 resolution** with ``c2`` channels.
2. *Intermediate tasks* (PAD-Net only), at 1/4 resolution: for each of depth, normals, contours and semantics a
   3x3 conv-BN-ReLU gives that task's feature ``F_t`` (``feat`` channels) and a 1x1 conv its prediction (1, 3, 2,
   ``num_classes`` channels). The predictions are supervised against ground truth downscaled to 1/4
   (:mod:`compactnn.tasks.losses`). The baselines have the same 3x3 conv ("neck") for each of their final tasks but
   no prediction and no supervision there.
3. *Multimodal distillation* (PAD-Net only) turns the four ``F_t`` into one input ``F^o_k`` for each final task
   ``k`` in {depth, semantics}.
4. *Decoders*: per final task, two x2 transposed convs (kernel 4, stride 2, pad 1) with BN and ReLU from 1/4 to full
   resolution, then a 3x3 conv to 1 (depth, metres) or ``num_classes`` (semantic logits) channels.

**Distillation: the reading chosen.** PAPERS.md marks the variants unverified. The paper's Fig. 3 draws the three
modules on the *feature maps* of the intermediate tasks (the maps from which the side predictions are made), with
outputs only for the two final tasks, and its equations read:

- **A** (Fig. 3a, "naive" concatenation): ``F^o_k = conv_k(concat(F_depth, F_normals, F_contours, F_semantics))``,
  one 3x3 conv-BN-ReLU per final task.
- **B** (Fig. 3b, message passing): ``F^o_k = F_k + sum_{t != k} W_{t->k} * F_t``; each ``W_{t->k}`` a 3x3 conv
  (with BN so the messages start on the scale of ``F_k``).
- **C** (Fig. 3c, attention-guided message passing): ``G_k = sigmoid(W^g_k * F_k)``, one gate map per *receiving*
  task computed from its own features (``feat`` channels, 3x3 conv), and ``F^o_k = F_k + sum_{t != k} G_k .
  (W_{t->k} * F_t)``: the same gate multiplies every incoming message elementwise. This is the reading of the
  paper's Eq. (3) in which the attention is "guided" by the receiving task, which is what its figure draws (the
  gate branch leaves the receiving task's own map). A per-message gate ``sigmoid(W^g_{t->k} * F_t)`` would be the
  other reading; it is not implemented.

Every join is a module (:class:`~compactnn.graph.Add`, :class:`~compactnn.graph.Concat`, :class:`Mul`,
``nn.Upsample``, ``nn.Sigmoid``) so tracing tools (pruning surgery, MAC counting, integer-only conversion) see it.

**Output.** ``model(x)`` returns one tensor ``(N, 1 + num_classes, H, W)``: channel 0 is depth, the rest semantic
logits (single-task models return only their own channels: ``(N, 1, H, W)`` or ``(N, num_classes, H, W)``); use
:meth:`PadNet.split` to get ``{"depth", "semantics"}``. :meth:`PadNet.forward_all` also returns the intermediate
predictions (``{"depth", "semantics", "inter": {task: tensor}}``) for training.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ..graph import Add, Concat
from ..graph.trace import register_leaf
from ..pack.spec import packable
from .registry import check_input_shape, register_model

TASKS = ("depth", "normals", "contours", "semantics")
FINAL = ("depth", "semantics")
VARIANTS = ("A", "B", "C", "single-depth", "single-semantics", "multi-task")
DISTILL = ("A", "B", "C")


@register_leaf
@packable
class Mul(nn.Module):
    """Elementwise product of two tensors (an attention gate times a message), as a module tools can see."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (pad 1, no bias), BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


@packable
class Encoder(nn.Module):
    """Shared encoder: 1/2, 1/4, 1/8 stages and a top-down x2 join back to a 1/4-resolution map of ``widths[1]``."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (16, 32, 48)) -> None:
        super().__init__()
        c1, c2, c3 = (int(w) for w in widths)
        self.stage1 = nn.Sequential(conv_bn_relu(in_channels, c1, 2), conv_bn_relu(c1, c1))
        self.stage2 = nn.Sequential(conv_bn_relu(c1, c2, 2), conv_bn_relu(c2, c2))
        self.stage3 = nn.Sequential(conv_bn_relu(c2, c3, 2), conv_bn_relu(c3, c3))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral = nn.Sequential(nn.Conv2d(c3, c2, 1, bias=False), nn.BatchNorm2d(c2))
        self.add = Add()
        self.fuse = conv_bn_relu(c2, c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f2 = self.stage2(self.stage1(x))
        f3 = self.stage3(f2)
        return self.fuse(self.add(f2, self.lateral(self.up(f3))))


@packable
class Decoder(nn.Module):
    """1/4 -> full resolution: two x2 transposed convs with BN and ReLU, then a 3x3 conv to ``out`` channels."""

    def __init__(self, cin: int, out: int, width: int = 16, bias: float = 0.0) -> None:
        super().__init__()
        w2 = max(width // 2, 4)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(cin, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.up2 = nn.Sequential(nn.ConvTranspose2d(width, w2, 4, 2, 1, bias=False), nn.BatchNorm2d(w2), nn.ReLU())
        self.out = nn.Conv2d(w2, out, 3, 1, 1)
        nn.init.constant_(self.out.bias, float(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.up2(self.up1(x)))


@packable
class DistillConcat(nn.Module):
    """Variant A: ``F^o_k = conv_k(concat_t F_t)`` for each final task ``k``."""

    def __init__(self, feat: int, tasks: Sequence[str] = TASKS) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.cat = Concat(1)
        self.out = nn.ModuleDict({k: conv_bn_relu(feat * len(self.tasks), feat) for k in FINAL})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        joined = self.cat(*[feats[t] for t in self.tasks])
        return {k: self.out[k](joined) for k in FINAL}


@packable
class DistillMessages(nn.Module):
    """Variants B and C: ``F^o_k = F_k + sum_{t != k} [G_k .] W_{t->k} * F_t``, ``G_k = sigmoid(W^g_k * F_k)`` (C).

    Args:
        feat: channels of every task feature.
        tasks: the intermediate tasks (message senders).
        gated: ``True`` for C (attention-guided), ``False`` for B.
    """

    def __init__(self, feat: int, tasks: Sequence[str] = TASKS, gated: bool = False) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.gated = bool(gated)
        self.messages = nn.ModuleDict({
            f"{t}_to_{k}": nn.Sequential(nn.Conv2d(feat, feat, 3, 1, 1, bias=False), nn.BatchNorm2d(feat))
            for k in FINAL for t in self.tasks if t != k})
        self.adds = nn.ModuleDict({f"{t}_to_{k}": Add() for k in FINAL for t in self.tasks if t != k})
        if self.gated:
            self.gates = nn.ModuleDict({k: nn.Sequential(nn.Conv2d(feat, feat, 3, 1, 1), nn.Sigmoid()) for k in FINAL})
            self.muls = nn.ModuleDict({f"{t}_to_{k}": Mul() for k in FINAL for t in self.tasks if t != k})

    def forward(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k in FINAL:
            acc = feats[k]
            gate = self.gates[k](feats[k]) if self.gated else None
            for t in self.tasks:
                if t == k:
                    continue
                name = f"{t}_to_{k}"
                msg = self.messages[name](feats[t])
                if gate is not None:
                    msg = self.muls[name](gate, msg)
                acc = self.adds[name](acc, msg)
            out[k] = acc
        return out


_PRED_CHANNELS = {"depth": 1, "normals": 3, "contours": 2}


@packable
class PadNet(nn.Module):
    """PAD-Net and its baselines (see the module docstring).

    Args:
        input_shape: ``(C, H, W)``; H and W should be multiples of 8 (the encoder goes to 1/8).
        num_classes: semantic classes.
        variant: one of :data:`VARIANTS`.
        widths: encoder channels at 1/2, 1/4, 1/8.
        feat: channels of each task feature ``F_t`` (and of the baselines' necks).
        decoder_width: channels of the decoders' first transposed conv (the second has half).
        depth_bias: initial bias of the depth output (metres; near the mean depth speeds training up).
    """

    def __init__(self, input_shape: Sequence[int] = (3, 64, 64), num_classes: int = 6, variant: str = "C",
                 widths: Sequence[int] = (16, 32, 48), feat: int = 16, decoder_width: int = 16,
                 depth_bias: float = 3.0) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ModelError(f"padnet variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.input_shape = check_input_shape(input_shape)
        self.num_classes = int(num_classes)
        self.variant = str(variant)
        self.widths = tuple(int(w) for w in widths)
        if len(self.widths) != 3 or min(self.widths) < 1 or int(feat) < 1 or int(decoder_width) < 1:
            raise ModelError(f"padnet needs three positive widths and positive feat/decoder_width, got {widths!r}")
        self.feat = int(feat)
        self.decoder_width = int(decoder_width)
        self.depth_bias = float(depth_bias)
        if self.variant in DISTILL:
            self.finals = FINAL
            self.branches = TASKS
        else:
            self.finals = {"single-depth": ("depth",), "single-semantics": ("semantics",)}.get(self.variant, FINAL)
            self.branches = self.finals
        c2 = self.widths[1]
        self.encoder = Encoder(self.input_shape[0], self.widths)
        self.heads = nn.ModuleDict({t: conv_bn_relu(c2, self.feat) for t in self.branches})
        if self.variant in DISTILL:
            chans = dict(_PRED_CHANNELS, semantics=self.num_classes)
            self.preds = nn.ModuleDict({t: nn.Conv2d(self.feat, chans[t], 1) for t in TASKS})
            nn.init.constant_(self.preds["depth"].bias, self.depth_bias)
            self.distill = (DistillConcat(self.feat) if self.variant == "A"
                            else DistillMessages(self.feat, gated=self.variant == "C"))
        outs = {"depth": 1, "semantics": self.num_classes}
        self.decoders = nn.ModuleDict({
            k: Decoder(self.feat, outs[k], self.decoder_width, self.depth_bias if k == "depth" else 0.0)
            for k in self.finals})
        self.cat = Concat(1)

    @property
    def distilled(self) -> bool:
        """True for the PAD-Net variants (A, B, C)."""
        return self.variant in DISTILL

    def _run(self, x: torch.Tensor, inter: bool) -> dict:
        f = self.encoder(x)
        feats = {t: self.heads[t](f) for t in self.branches}
        out: dict = {}
        if self.distilled:
            if inter:
                out["inter"] = {t: self.preds[t](feats[t]) for t in TASKS}
            feats = self.distill(feats)
        for k in self.finals:
            out[k] = self.decoders[k](feats[k])
        return out

    def forward_all(self, x: torch.Tensor) -> dict:
        """``{"depth": (N,1,H,W), "semantics": (N,K,H,W), "inter": {task: 1/4-resolution prediction}}`` (keys
        present as the variant has them; ``inter`` only for A/B/C)."""
        return self._run(x, inter=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._run(x, inter=False)
        if len(self.finals) == 1:
            return out[self.finals[0]]
        return self.cat(out["depth"], out["semantics"])

    def split(self, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """``forward``'s tensor as ``{"depth": (N,1,H,W), "semantics": (N,K,H,W)}`` (the tasks this model has)."""
        if self.finals == ("depth",):
            return {"depth": y}
        if self.finals == ("semantics",):
            return {"semantics": y}
        return {"depth": y[:, :1], "semantics": y[:, 1:]}


@register_model("padnet", "PAD-Net (A/B/C distillation) and its single-/multi-task baselines for depth + semantics")
def padnet(input_shape: Sequence[int] = (3, 64, 64), num_classes: int = 6, variant: str = "C",
           widths: Sequence[int] = (16, 32, 48), feat: int = 16, decoder_width: int = 16,
           depth_bias: float = 3.0) -> PadNet:
    """Build :class:`PadNet` (``variant``: A, B, C, single-depth, single-semantics, multi-task)."""
    return PadNet(input_shape, num_classes, variant, widths, feat, decoder_width, depth_bias)


__all__ = ["PadNet", "Encoder", "Decoder", "DistillConcat", "DistillMessages", "Mul", "padnet", "TASKS", "FINAL",
           "VARIANTS"]
