"""Training IDN on a CPU: L1 on small LR patches, then L2 fine-tuning on larger ones (the authors' schedule, scaled
down), Adam, rotation/flip augmentation, resumable in parts.

Data: the Y channel (MATLAB ``rgb2ycbcr``, rounded) of every image found in the given folders -- by default B100
from the shared data and the photos bundled with scikit-image (if it is installed). Each image is ``modcrop``-ed and
downscaled once with MATLAB's bicubic; LR/HR patch pairs are cut at aligned positions (LR (i, j) <-> HR (si, sj)),
so a patch pair is exactly a crop of the image and its LR image. A pair is rotated by a multiple of 90 degrees and
flipped at random (the bicubic grid of a modcrop-ed image is symmetric, so this commutes with the downscaling).

Choices where the paper's recipe (291 images, 600k iterations on a GPU) cannot be followed on two shared cores:
fewer steps, a larger learning rate (3e-4 instead of 1e-4, warmed up, cosine-decayed; the authors' 0.1
lr multiplier on the transposed conv and the biases), the loss on the patch minus an ``s``
pixel border (as the protocol shaves it), msra init (the Caffe fillers), the transposed conv started at zero so the
net starts at the bicubic image. The checkpoint (model, optimizer, step, RNG, curve) is written atomically after
every part; running again resumes.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..files import atomic_write, atomic_write_text, ensure_dir
from . import matlab
from .evaluate import data_root, luminance

SKIMAGE_PHOTOS = ("astronaut.png", "camera.png", "chelsea.png", "coffee.png", "rocket.jpg", "coins.png", "moon.png",
                  "brick.png", "grass.png", "gravel.png", "motorcycle_left.png", "retina.jpg", "page.png",
                  "hubble_deep_field.jpg")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class TrainConfig:
    """Settings of one training run (stored in the checkpoint; a resumed run keeps the stored ones).

    Attributes:
        scale: upscaling factor.
        l1_steps / l2_steps: steps of the L1 phase and of the L2 fine-tuning phase.
        patch / patch2: LR patch sizes of the two phases (29 and 39 for x2 in the paper).
        batch: patches per step.
        lr / lr2: Adam learning rates of the two phases (each cosine-decayed to 1/10 over its phase).
        weight_decay: Adam L2 weight decay (1e-4 in the paper).
        seed: seeds init, patch sampling and augmentation.
        eval_every: steps between Set5 evaluations for the curve (0: only at the end of each part).
        warmup: steps of linear lr warm-up at the start (a zero-initialized transposed conv that all moves at
            Adam's full step overshoots by several units of Y on the first steps).
        deconv_lr_mult / bias_lr_mult: lr multipliers of the transposed conv's weight and of every bias (the
            authors' Caffe ``lr_mult: 0.1``).
    """

    scale: int = 2
    l1_steps: int = 3000
    l2_steps: int = 600
    patch: int = 29
    patch2: int = 39
    batch: int = 16
    lr: float = 3e-4
    lr2: float = 3e-5
    weight_decay: float = 0.0
    seed: int = 0
    eval_every: int = 0
    warmup: int = 50
    deconv_lr_mult: float = 0.1
    bias_lr_mult: float = 0.1


def quick_config(scale: int = 2) -> TrainConfig:
    """A tiny run for smoke tests: a handful of steps on small patches."""
    return TrainConfig(scale=scale, l1_steps=4, l2_steps=2, patch=12, patch2=14, batch=2)


def default_sources(data: str | os.PathLike | None = None) -> list[Path]:
    """B100 from the shared data (if found) and scikit-image's bundled photos (if installed)."""
    out: list[Path] = []
    b100 = data_root(data) / "sr" / "B100"
    if b100.is_dir():
        out += sorted(p for p in b100.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    try:
        import skimage.data

        base = Path(skimage.data.data_dir)
        out += [base / n for n in SKIMAGE_PHOTOS if (base / n).is_file()]
    except ImportError:
        pass
    return out


def collect(paths: list[Path]) -> list[Path]:
    """Image files from a list of files and folders."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_EXTS)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"training image or folder {p} not found")
    return out


class PatchSampler:
    """Random aligned LR/HR patch pairs from a set of images, with rotation/flip augmentation."""

    def __init__(self, files: list[Path], scale: int, min_lr: int) -> None:
        from .images import read_image

        self.scale = scale
        self.pairs = []
        for f in files:
            y = luminance(read_image(f))
            hr = matlab.modcrop(y, scale).astype(np.float32) / np.float32(255)
            if min(hr.shape) // scale < min_lr:
                continue
            self.pairs.append((hr, matlab.imresize(hr, 1.0 / scale)))
        if not self.pairs:
            raise DataError(f"no training image is large enough for LR patches of {min_lr} at x{scale}")
        sizes = np.array([lr.size for _, lr in self.pairs], dtype=np.float64)
        self.prob = sizes / sizes.sum()

    def sample(self, rng: np.random.Generator, batch: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale
        lrs, hrs = [], []
        for k in rng.choice(len(self.pairs), size=batch, p=self.prob):
            hr, lr = self.pairs[k]
            if min(lr.shape) < patch:
                k = int(np.argmax(self.prob))
                hr, lr = self.pairs[k]
            i = int(rng.integers(0, lr.shape[0] - patch + 1))
            j = int(rng.integers(0, lr.shape[1] - patch + 1))
            a = lr[i: i + patch, j: j + patch]
            b = hr[i * s: (i + patch) * s, j * s: (j + patch) * s]
            rot, flip = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            a, b = np.rot90(a, rot), np.rot90(b, rot)
            if flip:
                a, b = a[:, ::-1], b[:, ::-1]
            lrs.append(np.ascontiguousarray(a))
            hrs.append(np.ascontiguousarray(b))
        return torch.from_numpy(np.stack(lrs)[:, None]), torch.from_numpy(np.stack(hrs)[:, None])


def init_weights(model: nn.Module, seed: int) -> None:
    """msra (He) normal init for the convs, zero biases; the transposed conv at zero (the net starts
    exactly at the bicubic image and the first step trains the transposed conv)."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.ConvTranspose2d):
            with torch.no_grad():
                m.weight.zero_()
                m.bias.zero_()
        elif isinstance(m, nn.Conv2d):
            fan_in = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
            with torch.no_grad():
                m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
                m.bias.zero_()


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.l1_steps:
        base, t, n = cfg.lr, step, cfg.l1_steps
    else:
        base, t, n = cfg.lr2, step - cfg.l1_steps, max(cfg.l2_steps, 1)
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup > 0 else 1.0
    return warm * base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t / n, 1.0))))


def _save(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, lambda fh: fh.write(buf.getvalue()))


def train(out: str | os.PathLike, cfg: TrainConfig | None = None, *, sources: list[Path] | None = None,
          data: str | os.PathLike | None = None, minutes: float | None = None, eval_set: str | None = "Set5",
          quiet: bool | None = None) -> dict:
    """Train (or resume) IDN into folder ``out``: ``checkpoint.pt`` (resumable), ``model.cnz`` (packed) and
    ``curve.json`` (step, loss, Set5 PSNR, seconds).

    Args:
        out: output folder; if it holds a checkpoint the run resumes from it (with the stored settings).
        cfg: settings for a new run.
        sources: training image files/folders (default :func:`default_sources`).
        data: shared data folder (for B100 and the evaluation set).
        minutes: stop after this much wall time (the part ends after the current step); None runs to the end.
        eval_set: set evaluated at the end of each part for the curve (None: no evaluation).
    """
    from tqdm.auto import tqdm

    from .. import pack
    from ..models.idn import IDN
    from .evaluate import evaluate_set

    out = ensure_dir(out)
    ckpt_path = out / "checkpoint.pt"
    model = None
    if ckpt_path.exists():
        try:
            state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
            cfg = TrainConfig(**state["config"])
        except Exception as err:  # a damaged checkpoint: say so in one line
            raise DataError(f"cannot resume from {ckpt_path}: {' '.join(str(err).split())[:160]}; "
                            f"remove it to start again") from None
    else:
        cfg = cfg or TrainConfig()
        state = None
    model = IDN(scale=cfg.scale)
    init_weights(model, cfg.seed)
    slow = {id(model.upsample.weight): cfg.deconv_lr_mult}
    slow.update({id(p): cfg.bias_lr_mult for n, p in model.named_parameters() if n.endswith(".bias")})
    groups: dict[float, list] = {}
    for p in model.parameters():
        groups.setdefault(slow.get(id(p), 1.0), []).append(p)
    opt = torch.optim.Adam([{"params": ps, "lr_mult": mult} for mult, ps in sorted(groups.items())], lr=cfg.lr,
                           weight_decay=cfg.weight_decay)
    step, curve, elapsed = 0, [], 0.0
    rng = np.random.default_rng(cfg.seed)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, curve, elapsed = int(state["step"]), list(state["curve"]), float(state["elapsed"])
        rng.bit_generator.state = json.loads(state["rng"])
    files = collect(sources) if sources is not None else default_sources(data)
    if not files:
        raise DataError("no training images: pass image folders/files, or make B100 (--data) or scikit-image "
                        "available")
    total = cfg.l1_steps + cfg.l2_steps
    sampler = PatchSampler(files, cfg.scale, max(cfg.patch, cfg.patch2) if step >= cfg.l1_steps else cfg.patch)
    s = cfg.scale
    t0 = time.time()
    losses: list[float] = []
    model.train()
    bar = tqdm(total=total, initial=step, desc=f"IDN x{s} train", disable=quiet, leave=False)
    while step < total:
        if minutes is not None and time.time() - t0 > minutes * 60:
            break
        l2 = step >= cfg.l1_steps
        if l2 and sampler is not None and min(min(lr.shape) for _, lr in sampler.pairs) < cfg.patch2:
            sampler = PatchSampler(files, cfg.scale, cfg.patch2)
        lr_t, hr_t = sampler.sample(rng, cfg.batch, cfg.patch2 if l2 else cfg.patch)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, step) * g["lr_mult"]
        pred = model(lr_t)[..., s:-s, s:-s]
        target = hr_t[..., s:-s, s:-s]
        loss = F.mse_loss(pred, target) if l2 else F.l1_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        if cfg.eval_every and step % cfg.eval_every == 0 and step < total:
            curve.append(_point(model, step, losses, elapsed + time.time() - t0, eval_set, data))
            losses = []
            model.train()
    bar.close()
    elapsed += time.time() - t0
    if losses or not curve or curve[-1]["step"] != step:
        curve.append(_point(model, step, losses, elapsed, eval_set, data))
    _save(ckpt_path, {"config": asdict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                      "step": step, "curve": curve, "elapsed": elapsed,
                      "rng": json.dumps(rng.bit_generator.state)})
    model.eval()
    pack.save(model, out / "model.cnz", metadata={"model": "idn", "scale": cfg.scale, "step": step,
                                                   "input_shape": [1, 32, 32]})
    atomic_write_text(out / "curve.json", json.dumps({"config": asdict(cfg), "curve": curve}, indent=1))
    return {"step": step, "total": total, "done": step >= total, "curve": curve, "elapsed": elapsed}


def _point(model, step: int, losses: list[float], elapsed: float, eval_set: str | None, data) -> dict:
    from .evaluate import evaluate_set

    row = {"step": step, "loss": float(np.mean(losses)) if losses else None, "seconds": round(elapsed, 1)}
    if eval_set:
        try:
            r = evaluate_set(model.eval(), eval_set, data=data, quiet=True, bicubic=True)
            row.update(psnr=r["psnr"], bicubic_psnr=r["bicubic_psnr"])
        except DataError:
            pass
    return row
