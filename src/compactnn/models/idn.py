"""IDN: the Information Distillation Network for single-image super-resolution (Hui, Wang and Gao, CVPR 2018).

The network works on the luminance (Y) channel in [0, 1]:

- a feature block: two 3x3 convs with 64 channels;
- four distillation blocks (:class:`DistillationBlock`): 3x3 convs 64->48, 48->32 (groups 4), 32->64; the first 16
  channels of that are concatenated with the block input (80 channels), the last 48 go through 3x3 convs 48->64,
  64->48 (groups 4), 48->80; the two 80-channel tensors are added and a 1x1 conv brings them back to 64;
- every conv is followed by LeakyReLU with slope 0.05;
- reconstruction: a transposed conv 64->1 with a 17x17 kernel and stride s, added to the bicubic upsampling of the
  input (MATLAB's ``imresize``, see :mod:`compactnn.sr.matlab`).

552,769 parameters at every scale (the transposed conv's kernel does not depend on s).

Alignment choice: the authors' Caffe net pads the transposed conv by 8, which gives ``(h - 1) s + 1`` rows that line
up with rows ``s..hs`` (1-based) of the high-resolution image, and their test code crops the bicubic image to match.
Here the transposed conv is padded by ``9 - s`` and cut to ``hs`` rows, so :meth:`IDN.forward` returns the whole
``(hs, ws)`` image; its pixels at rows/columns ``s..hs`` are exactly the Caffe net's, and the first ``s - 1`` rows
and columns are the same transposed conv evaluated one stride further out. The official protocol shaves ``s``
pixels from every side, so the evaluated pixels are the same.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..graph.markers import Add, Concat
from ..pack.spec import packable
from .registry import check_input_shape, register_model

SLOPE = 0.05
SCALES = (2, 3, 4)


@packable
class ChannelSlice(nn.Module):
    """``x[:, start:stop]``: a channel slice as a module, so graph tools and integer engines can see it."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = int(start), int(stop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start: self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


@packable
class DistillationBlock(nn.Module):
    """One IDN distillation (enhancement + compression) block, 64 channels in and out.

    Args:
        channels: block input/output channels (64 in the paper).
        distill: channels kept by the slice and concatenated with the input (16).
        slope: LeakyReLU negative slope (0.05).
    """

    def __init__(self, channels: int = 64, distill: int = 16, slope: float = SLOPE) -> None:
        super().__init__()
        c, d = int(channels), int(distill)
        self.channels, self.distill = c, d
        self.conv1 = nn.Conv2d(c, 48, 3, padding=1)
        self.act1 = nn.LeakyReLU(slope)
        self.conv2 = nn.Conv2d(48, 32, 3, padding=1, groups=4)
        self.act2 = nn.LeakyReLU(slope)
        self.conv3 = nn.Conv2d(32, c, 3, padding=1)
        self.act3 = nn.LeakyReLU(slope)
        self.keep = ChannelSlice(0, d)
        self.rest = ChannelSlice(d, c)
        self.conv4 = nn.Conv2d(c - d, 64, 3, padding=1)
        self.act4 = nn.LeakyReLU(slope)
        self.conv5 = nn.Conv2d(64, 48, 3, padding=1, groups=4)
        self.act5 = nn.LeakyReLU(slope)
        self.conv6 = nn.Conv2d(48, c + d, 3, padding=1)
        self.act6 = nn.LeakyReLU(slope)
        self.concat = Concat(1)
        self.add = Add()
        self.down = nn.Conv2d(c + d, c, 1)
        self.act7 = nn.LeakyReLU(slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act3(self.conv3(self.act2(self.conv2(self.act1(self.conv1(x))))))
        z = self.act6(self.conv6(self.act5(self.conv5(self.act4(self.conv4(self.rest(y)))))))
        return self.act7(self.down(self.add(self.concat(x, self.keep(y)), z)))


def bicubic_matrices(h: int, w: int, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(R, C)`` with ``R @ x @ C.T`` = MATLAB ``imresize(x, scale, 'bicubic')`` of an (h, w) image (before the
    rounding to the input's class)."""
    from ..sr.matlab import resize_matrix

    return resize_matrix(h, h * scale, float(scale)), resize_matrix(w, w * scale, float(scale))


@packable
class IDN(nn.Module):
    """IDN for upscaling factor ``scale`` (2, 3 or 4). Input (N, 1, h, w) Y in [0, 1]; output (N, 1, hs, ws).

    Args:
        scale: the upscaling factor (stride of the transposed conv).
        input_shape: ``(1, h, w)`` of one input (recorded; any h, w >= 1 works).
        num_classes: unused (kept so the model registry can pass it); recorded as given.
        blocks: number of distillation blocks (4 in the paper).
    """

    __pack_skip__ = frozenset({"_bicubic_cache"})

    def __init__(self, scale: int = 2, input_shape: Sequence[int] = (1, 32, 32), num_classes: int | None = None,
                 blocks: int = 4) -> None:
        super().__init__()
        if isinstance(scale, bool) or not isinstance(scale, int) or scale not in SCALES:
            raise ModelError(f"IDN scale must be one of {', '.join(map(str, SCALES))}, got {scale!r}")
        self.scale = int(scale)
        self.input_shape = check_input_shape(input_shape)
        if self.input_shape[0] != 1:
            raise ModelError(f"IDN takes the Y channel only (input_shape (1, h, w)), got {self.input_shape}")
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 64, 3, padding=1)
        self.act1 = nn.LeakyReLU(SLOPE)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.act2 = nn.LeakyReLU(SLOPE)
        self.blocks = nn.Sequential(*[DistillationBlock() for _ in range(int(blocks))])
        self.upsample = nn.ConvTranspose2d(64, 1, 17, stride=self.scale, padding=9 - self.scale)
        self.add = Add()
        self._bicubic_cache: dict = {}

    def __pack_restore__(self) -> None:
        self._bicubic_cache = {}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-channel features before the transposed conv."""
        return self.blocks(self.act2(self.conv2(self.act1(self.conv1(x)))))

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The network's branch alone: the transposed conv of the features, cut to (hs, ws)."""
        h, w = x.shape[-2:]
        r = self.upsample(self.features(x))
        return r[..., : h * self.scale, : w * self.scale]

    def bicubic(self, x: torch.Tensor) -> torch.Tensor:
        """MATLAB-compatible bicubic upsampling of ``x`` by ``scale`` (a fixed linear map, differentiable)."""
        h, w = x.shape[-2:]
        key = (h, w, x.dtype, x.device)
        if key not in self._bicubic_cache:
            if len(self._bicubic_cache) > 16:
                self._bicubic_cache.clear()
            r, c = bicubic_matrices(h, w, self.scale)
            self._bicubic_cache[key] = (torch.as_tensor(r, dtype=x.dtype, device=x.device),
                                        torch.as_tensor(c, dtype=x.dtype, device=x.device))
        r, c = self._bicubic_cache[key]
        return r @ x @ c.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(f"IDN takes (N, 1, h, w) Y images, got shape {tuple(x.shape)}")
        return self.add(self.residual(x), self.bicubic(x))

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


@register_model("idn", "IDN super-resolution (Hui et al. 2018): Y channel in, x2/x3/x4, 552,769 params")
def idn(scale: int = 2, input_shape: Sequence[int] = (1, 32, 32), num_classes: int | None = None,
        blocks: int = 4) -> IDN:
    return IDN(scale=scale, input_shape=input_shape, num_classes=num_classes, blocks=blocks)


@packable
class IntegerIDN(nn.Module):
    """An integer-only IDN: the program of :func:`compactnn.sr.int8.convert_idn` (uint8 activations, int8 weights,
    the bicubic branch and the final add included), runnable on any input size.

    The program is an :class:`compactnn.quantize.intonly.IntegerModel` (``core``, built for one nominal input
    size); every op is size-generic (convs, the transposed conv, ``resize_bicubic`` whose taps are geometry), so an
    input of another size runs the same ops and buffers under an IntegerModel of that input shape (cached per
    size). Input (N, 1, h, w) Y in [0, 1], turned into ``planes`` uint8 planes by :meth:`split` (one: the code at
    1/255; two: the code and its fraction, a 16-bit input); output (N, 1, hs, ws) dequantized from uint8 codes at
    scale 1/255, i.e. the protocol's uint8 image / 255.

    Args:
        scale: the upscaling factor.
        core: the integer program.
        engine: ``"fast"`` or ``"reference"`` (:class:`IntegerModel`'s engines; they agree bit for bit).
    """

    __pack_skip__ = frozenset({"_programs"})

    def __init__(self, scale: int, core: nn.Module, engine: str = "fast", planes: int = 1) -> None:
        super().__init__()
        self.scale = int(scale)
        self.core = core
        self.engine = engine
        self.planes = int(planes)
        self._programs: dict = {}

    def __pack_restore__(self) -> None:
        self._programs = {}
        if self.__dict__.get("planes", 1) not in (1, 2):
            from ..errors import PackError

            raise PackError(f"the integer IDN in this file has {self.__dict__.get('planes')!r} input planes; "
                            "expected 1 or 2")
        if isinstance(self.scale, bool) or not isinstance(self.scale, int) or self.scale not in SCALES:
            from ..errors import PackError

            raise PackError(f"the integer IDN in this file has scale {self.scale!r}; expected 2, 3 or 4")

    def program(self, h: int, w: int):
        """The integer program for (h, w) inputs (shares ``core``'s buffers)."""
        from ..quantize.intonly.model import IntegerModel

        core = self.core
        if tuple(core.input_shape) == (self.planes, h, w):
            return core
        key = (h, w)
        if key not in self._programs:
            if len(self._programs) > 8:
                self._programs.clear()
            m = IntegerModel((self.planes, h, w), core.input, core.output, core.values, list(core.ops),
                             dict(core.named_buffers()), engine=self.engine)
            self._programs[key] = m
        prog = self._programs[key]
        prog.engine = self.engine
        return prog

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """The program's uint8 input codes of float Y ``x`` (N, 1, h, w): with one plane, ``clamp(round(255 x))``
        (the IntegerModel's input quantization); with two, ``(c, f)`` where ``t = clamp(255 x, 0, 255)``,
        ``c = round(t)`` and ``f = clamp(round((t − c)·255) + 128, 0, 255)`` (so ``t ≈ c + (f − 128)/255`` to 1/510
        of a code), both rounded half away from zero. A uint8 image (x = k/255) has ``f = 128`` everywhere."""
        t = (x.detach().double() * 255.0).clamp_(0.0, 255.0)

        def rnd(v):
            return torch.copysign(torch.floor(v.abs() + 0.5), v)

        c = rnd(t)
        if self.planes == 1:
            return c.to(torch.uint8)
        f = (rnd((t - c) * 255.0) + 128).clamp_(0, 255)
        return torch.cat([c, f], dim=1).to(torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(f"IDN takes (N, 1, h, w) Y images, got shape {tuple(x.shape)}")
        prog = self.program(int(x.shape[2]), int(x.shape[3]))
        if self.planes == 1:
            return prog(x.float())
        return prog.dequantize_output(prog.run_int(self.split(x)))

    def run_int(self, q: torch.Tensor, engine: str | None = None) -> torch.Tensor:
        """uint8 input codes (N, planes, h, w) (:meth:`split`) -> uint8 output codes (N, 1, hs, ws)."""
        return self.program(int(q.shape[2]), int(q.shape[3])).run_int(q, engine)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The output minus the float bicubic upsampling of ``x`` (for callers that add the bicubic image back, as
        the evaluation and upscaling code does: the sum is the integer output again, up to float32 rounding far
        below the protocol's uint8 rounding)."""
        h, w = x.shape[-2:]
        r, c = bicubic_matrices(int(h), int(w), self.scale)
        bic = torch.as_tensor(r, dtype=torch.float32) @ x.float() @ torch.as_tensor(c, dtype=torch.float32).T
        return self.forward(x) - bic

    def extra_repr(self) -> str:
        return f"scale={self.scale}, ops={len(self.core.ops)}, engine={self.engine!r}"
