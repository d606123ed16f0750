"""Tucker-2 and CP convolutions built from a trained ``nn.Conv2d`` (baselines for the decomposition tables).

- :class:`TuckerConv2d` (Kim et al., ICLR 2016): ``W ~ core x_0 U_out x_1 U_in`` (Tucker-2 over the channel modes,
  ``tensorly.decomposition.partial_tucker``), run as a 1x1 conv ``C -> r_in`` (``U_in^T``), the ``kh x kw`` core conv
  ``r_in -> r_out`` (stride, padding, dilation of the original) and a 1x1 conv ``r_out -> O`` (``U_out``, bias).
- :class:`CPConv2d` (Lebedev et al., ICLR 2015): ``W(o, c, y, x) ~ sum_r A_o(o, r) A_c(c, r) A_y(y, r) A_x(x, r)``
  (``tensorly.decomposition.parafac``, CP weights folded into ``A_o``), run as a 1x1 conv ``C -> R``, a depthwise
  ``kh x 1`` conv, a depthwise ``1 x kw`` conv (each with its axis' stride/padding/dilation) and a 1x1 conv ``R -> O``.

Both give exactly ``conv2d`` with their :meth:`full_weight` (zero padding splits exactly over the separable steps).
tensorly is an optional dependency (the ``bench`` extra), imported inside ``from_conv`` only.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..pack.spec import packable
from .plan import ConvStep, PlannedConv
from ..graph.modules import pair


def _check_conv(conv: nn.Module) -> None:
    if not isinstance(conv, nn.Conv2d):
        raise ModelError(f"expected an nn.Conv2d, got {type(conv).__name__}")
    if conv.groups != 1 or isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        raise ModelError(f"cannot factor a Conv2d with groups={conv.groups}, padding={conv.padding!r}, "
                         f"padding_mode={conv.padding_mode!r}; use groups=1 and numeric zero padding")


def _rank(value: int, limit: int | None, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ModelError(f"{name} must be a positive int, got {value!r}")
    if limit is not None and value > limit:
        raise ModelError(f"{name} {value} is larger than the {limit} channels it factors; use {name} <= {limit}")
    return value


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


@packable
class TuckerConv2d(PlannedConv, nn.Module):
    """Tucker-2 convolution: 1x1 reduce (``reduce``), ``kh x kw`` core (``core``), 1x1 expand (``expand``).

    Parameters: ``C r_in + r_in r_out kh kw + r_out O`` (+ bias ``O``).

    Args:
        in_channels / out_channels: channels ``C`` / ``O``. kernel_size: int or ``(kh, kw)``.
        ranks: ``(r_out, r_in)`` or one int for both (``r_in <= C``, ``r_out <= O``).
        stride / padding / dilation: of the core conv, as for ``nn.Conv2d``. bias: a bias on ``expand``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 ranks: int | Sequence[int], stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True) -> None:
        super().__init__()
        r_out, r_in = (ranks, ranks) if isinstance(ranks, int) and not isinstance(ranks, bool) else tuple(ranks)
        self.ranks = (_rank(r_out, out_channels, "r_out"), _rank(r_in, in_channels, "r_in"))
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", low=0)
        self.reduce = nn.Conv2d(in_channels, r_in, 1, bias=False)
        self.core = nn.Conv2d(r_in, r_out, self.kernel_size, stride=pair(stride, "stride", low=0),
                              padding=pair(padding, "padding", low=0), dilation=pair(dilation, "dilation", low=0), bias=False)
        self.expand = nn.Conv2d(r_out, out_channels, 1, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, ranks: int | Sequence[int], *, n_iter_max: int = 100,
                  seed: int = 0) -> "TuckerConv2d":
        """Factor a trained conv with ``tensorly.decomposition.partial_tucker`` (HOOI over modes 0 and 1).

        Args:
            conv: the trained ``nn.Conv2d`` (groups 1). ranks: ``(r_out, r_in)`` or one int.
            n_iter_max: HOOI iterations. seed: tensorly's ``random_state``.
        """
        from tensorly.decomposition import partial_tucker

        _check_conv(conv)
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, ranks, conv.stride, conv.padding,
                  conv.dilation, conv.bias is not None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_eigenvecs larger than min(matrix.shape)": tensorly pads the factor
            (core, (u_out, u_in)), _ = partial_tucker(_numpy(conv.weight), rank=list(new.ranks), modes=[0, 1],
                                                      n_iter_max=n_iter_max, random_state=seed)
        w = conv.weight
        new = new.to(dtype=w.dtype, device=w.device)
        new.reduce.weight.copy_(torch.as_tensor(np.ascontiguousarray(u_in.T))[:, :, None, None])
        new.core.weight.copy_(torch.as_tensor(core))
        new.expand.weight.copy_(torch.as_tensor(u_out)[:, :, None, None])
        if conv.bias is not None:
            new.expand.bias.copy_(conv.bias.detach())
        return new

    def full_weight(self) -> torch.Tensor:
        """The dense kernel ``(O, C, kh, kw)`` this stands for."""
        return torch.einsum("or,rskl,sc->ockl", self.expand.weight[:, :, 0, 0], self.core.weight,
                            self.reduce.weight[:, :, 0, 0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd: the planned evaluation (:mod:`.plan`, ``self.last_plan``): ``factorized`` (the three
        convs), ``merged`` (the core merged into the 1x1 conv on its cheaper side: two convs) or ``dense`` (one conv
        with :meth:`full_weight`). With autograd: the three convs."""
        return self.planned_forward(x, self._train_forward)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.core(self.reduce(x)))

    def network_operands(self) -> list[torch.Tensor]:
        return [p for p in self.parameters()]

    def version_tensors(self):
        """The tensors the planner's caches depend on (checked every inference call: kept cheap)."""
        return [p for m in (self.reduce, self.core, self.expand) for p in m._parameters.values() if p is not None]

    def _merge_side(self) -> str:
        r_out, r_in = self.ranks
        # merging reduce into the core gives a C -> r_out conv; merging the core into expand an r_in -> O conv
        return "in" if self.in_channels * r_out <= r_in * self.out_channels else "out"

    def conv_plans(self, x_shape: tuple) -> dict[str, list[tuple]]:
        """Plans for :class:`.plan.ConvPlanner` (see :meth:`forward`)."""
        r_out, r_in = self.ranks
        kh, kw = self.kernel_size
        c = self.core
        one, zero = (1, 1), (0, 0)
        core = lambda i, o: (o, i, kh, kw, c.stride, c.padding, c.dilation, 1)  # noqa: E731
        merged = ([core(self.in_channels, r_out), (self.out_channels, r_out, 1, 1, one, zero, one, 1)]
                  if self._merge_side() == "in" else
                  [(r_in, self.in_channels, 1, 1, one, zero, one, 1), core(r_in, self.out_channels)])
        return {"factorized": [(r_in, self.in_channels, 1, 1, one, zero, one, 1), core(r_in, r_out),
                               (self.out_channels, r_out, 1, 1, one, zero, one, 1)],
                "merged": merged, "dense": [core(self.in_channels, self.out_channels)]}

    def conv_steps(self, plan: str) -> list[ConvStep]:
        """The convs of ``plan`` built from the current weights."""
        c, bias = self.core, self.expand.bias
        geo = (c.stride, c.padding, c.dilation)
        red, exp = self.reduce.weight[:, :, 0, 0], self.expand.weight[:, :, 0, 0]
        if plan == "dense":
            return [ConvStep(self.full_weight(), bias, *geo)]
        if plan == "factorized":
            return [ConvStep(self.reduce.weight, None), ConvStep(c.weight, None, *geo),
                    ConvStep(self.expand.weight, bias)]
        if self._merge_side() == "in":
            return [ConvStep(torch.einsum("rskl,sc->rckl", c.weight, red), None, *geo),
                    ConvStep(self.expand.weight, bias)]
        return [ConvStep(self.reduce.weight, None), ConvStep(torch.einsum("or,rskl->oskl", exp, c.weight), bias, *geo)]

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, ranks={self.ranks}"


@packable
class CPConv2d(nn.Module):
    """CP convolution: 1x1 ``reduce`` (C -> R), depthwise ``vertical`` (kh x 1), depthwise ``horizontal`` (1 x kw),
    1x1 ``expand`` (R -> O, bias).

    Parameters: ``R (C + kh + kw + O)`` (+ bias ``O``).

    Args:
        in_channels / out_channels: channels. kernel_size: int or ``(kh, kw)``. rank: the CP rank ``R``.
        stride / padding / dilation: as for ``nn.Conv2d``; the vertical conv takes the first (height) value and the
            horizontal conv the second. bias: a bias on ``expand``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int], rank: int,
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True) -> None:
        super().__init__()
        self.rank = _rank(rank, None, "rank")
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = (kh, kw) = pair(kernel_size, "kernel_size", low=0)
        (sh, sw), (ph, pw), (dh, dw) = pair(stride, "stride", low=0), pair(padding, "padding", low=0), pair(dilation, "dilation", low=0)
        r = self.rank
        self.reduce = nn.Conv2d(in_channels, r, 1, bias=False)
        self.vertical = nn.Conv2d(r, r, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), groups=r,
                                  bias=False)
        self.horizontal = nn.Conv2d(r, r, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw), groups=r,
                                    bias=False)
        self.expand = nn.Conv2d(r, out_channels, 1, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, rank: int, *, n_iter_max: int = 200, init: str = "svd",
                  seed: int = 0) -> "CPConv2d":
        """Factor a trained conv with ``tensorly.decomposition.parafac`` (CP-ALS).

        Args:
            conv: the trained ``nn.Conv2d`` (groups 1). rank: the CP rank.
            n_iter_max: ALS iterations. init: parafac's ``"svd"`` or ``"random"``. seed: its ``random_state``.
        """
        from tensorly.decomposition import parafac

        _check_conv(conv)
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, conv.stride, conv.padding,
                  conv.dilation, conv.bias is not None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "n_eigenvecs larger than min(matrix.shape)": svd init pads randomly
            weights, (a_o, a_c, a_y, a_x) = parafac(_numpy(conv.weight), rank=new.rank, n_iter_max=n_iter_max,
                                                    init=init, random_state=seed)
        a_o = a_o * np.asarray(weights)[None, :]
        w = conv.weight
        new = new.to(dtype=w.dtype, device=w.device)
        new.reduce.weight.copy_(torch.as_tensor(np.ascontiguousarray(a_c.T))[:, :, None, None])
        new.vertical.weight.copy_(torch.as_tensor(np.ascontiguousarray(a_y.T))[:, None, :, None])
        new.horizontal.weight.copy_(torch.as_tensor(np.ascontiguousarray(a_x.T))[:, None, None, :])
        new.expand.weight.copy_(torch.as_tensor(a_o)[:, :, None, None])
        if conv.bias is not None:
            new.expand.bias.copy_(conv.bias.detach())
        return new

    def full_weight(self) -> torch.Tensor:
        """The dense kernel ``(O, C, kh, kw)`` this stands for."""
        return torch.einsum("or,rc,ry,rx->ocyx", self.expand.weight[:, :, 0, 0], self.reduce.weight[:, :, 0, 0],
                            self.vertical.weight[:, 0, :, 0], self.horizontal.weight[:, 0, 0, :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.horizontal(self.vertical(self.reduce(x))))

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, rank={self.rank}"


def relative_error(conv: nn.Conv2d, factored: nn.Module) -> float:
    """``||W - factored.full_weight()|| / ||W||`` in float64."""
    w = conv.weight.detach().double()
    return float((w - factored.full_weight().detach().double()).norm() / w.norm())


__all__ = ["TuckerConv2d", "CPConv2d", "relative_error"]
