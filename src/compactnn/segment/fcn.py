"""A small FCN (U-Net shaped) for binary gland segmentation, its training, the instance post-processing and the
GlaS evaluation.

The network follows the encoder-decoder FCNs of Yang et al. (2017) that Xu et al. (2018) quantize, scaled to CPU
tiles: three 3x3-conv stages (``w``, ``2w``, ``4w`` channels, BN, ReLU) with 2x2 max pooling, a decoder of
transposed convs with skip concatenations, and a 1x1 conv to one logit per pixel. Training minimizes binary
cross-entropy plus soft Dice on the gland/background mask with Adam. Instances are the connected components of the
thresholded probability map, with components smaller than ``min_size`` pixels removed (the challenge's usual
post-processing).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..pack.spec import packable
from .metrics import object_dice, object_f1, object_hausdorff


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@packable
class GlandFCN(nn.Module):
    """U-Net shaped FCN: ``forward(x)`` gives one logit per pixel, ``(N, 1, H, W)``; H and W divisible by 4.

    Args:
        width: channels of the first stage (the next ones have 2x and 4x).
        in_channels: image channels (3 for RGB).
    """

    def __init__(self, width: int = 16, in_channels: int = 3):
        super().__init__()
        w = int(width)
        self.enc1, self.enc2, self.enc3 = _block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2)
        self.dec2 = _block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2)
        self.dec1 = _block(2 * w, w)
        self.head = nn.Conv2d(w, 1, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        return e1, e2, self.enc3(F.max_pool2d(e2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1, e2, e3 = self.encode(x)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.head(d1)

    def descriptor(self, x: torch.Tensor) -> torch.Tensor:
        """The image's encoder descriptor (the bottleneck averaged over space), for representativeness."""
        return self.encode(x)[2].mean((2, 3))


def seg_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy + soft Dice of ``model(x)`` against the gland mask ``y > 0`` (instance labels)."""
    logits = model(x)[:, 0]
    target = (y > 0).to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


def _check_pair(images: np.ndarray, masks: np.ndarray) -> None:
    if images.ndim != 4 or masks.ndim != 3 or images.shape[0] != masks.shape[0] or \
            images.shape[2:] != masks.shape[1:]:
        raise ConfigError(f"images (N, C, H, W) and masks (N, H, W) must match; got {images.shape} and {masks.shape}")
    if images.shape[0] == 0:
        raise ConfigError("the labelled set is empty; label at least one image")
    if images.shape[2] % 4 or images.shape[3] % 4:
        raise ConfigError(f"image height and width must be divisible by 4, got {images.shape[2:]}")


def train_fcn(images: np.ndarray, masks: np.ndarray, *, epochs: int = 20, width: int = 16, lr: float = 2e-3,
              batch_size: int = 8, seed: int = 0, model: nn.Module | None = None, quiet: bool = True) -> nn.Module:
    """Train a :class:`GlandFCN` (or ``model``) on ``images`` ``(N, 3, H, W)`` and instance ``masks`` ``(N, H, W)``
    with random flips, Adam and :func:`seg_loss`; seeded (init, order, flips). Returns the model in eval mode."""
    _check_pair(images, masks)
    gen = torch.Generator().manual_seed(seed)
    if model is None:
        torch.manual_seed(seed)
        model = GlandFCN(width, images.shape[1])
    x, y = torch.as_tensor(images, dtype=torch.float32), torch.as_tensor(masks, dtype=torch.int64)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in tqdm(range(epochs), desc="fcn", disable=quiet, leave=False):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = order[i:i + batch_size]
            xb, yb = x[idx], y[idx]
            if torch.rand((), generator=gen) < 0.5:
                xb, yb = xb.flip(-1), yb.flip(-1)
            if torch.rand((), generator=gen) < 0.5:
                xb, yb = xb.flip(-2), yb.flip(-2)
            loss = seg_loss(model, xb, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """Gland probabilities ``(N, H, W)`` of ``images``."""
    model.eval()
    x = torch.as_tensor(images, dtype=torch.float32)
    return np.concatenate([torch.sigmoid(model(x[i:i + batch_size]))[:, 0].numpy()
                           for i in range(0, len(x), batch_size)])


def instances(prob: np.ndarray, threshold: float = 0.5, min_size: int = 20) -> np.ndarray:
    """Instance labels ``(H, W)`` int32 of one probability map: connected components (4-connected) of
    ``prob > threshold`` with fewer than ``min_size`` pixels removed, numbered 1..k."""
    labels, k = ndimage.label(prob > threshold)
    if k == 0:
        return labels.astype(np.int32)
    sizes = np.bincount(labels.ravel(), minlength=k + 1)
    keep = sizes >= min_size
    keep[0] = False
    relabel = np.zeros(k + 1, dtype=np.int32)
    relabel[keep] = np.arange(1, int(keep.sum()) + 1)
    return relabel[labels]


def evaluate_fcn(model: nn.Module, images: np.ndarray, masks: np.ndarray, min_size: int = 20) -> dict[str, Any]:
    """Mean GlaS metrics over the images: ``f1``, ``dice``, ``hausdorff`` (over the images where it is finite) and
    ``hausdorff_inf`` (images with no gland found, or found where there is none)."""
    _check_pair(images, masks)
    probs = predict(model, images)
    f1, dice, haus = [], [], []
    for prob, gt in zip(probs, masks):
        pred = instances(prob, min_size=min_size)
        f1.append(object_f1(pred, gt))
        dice.append(object_dice(pred, gt))
        haus.append(object_hausdorff(pred, gt))
    finite = [h for h in haus if math.isfinite(h)]
    return {"f1": float(np.mean(f1)), "dice": float(np.mean(dice)),
            "hausdorff": float(np.mean(finite)) if finite else float("inf"),
            "hausdorff_inf": len(haus) - len(finite)}


__all__ = ["GlandFCN", "seg_loss", "train_fcn", "predict", "instances", "evaluate_fcn"]
