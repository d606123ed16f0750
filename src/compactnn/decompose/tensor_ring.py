"""Tensor Ring Nets (Wang et al., CVPR 2018): fully connected and conv layers whose weight is a tensor ring.

A tensor ring with cores ``U_k`` of shape ``(R_k, n_k, R_{k+1})`` (0-based, ``R_n = R_0``: the ring is closed) holds
the tensor ``T(i_1 ... i_n) = Tr(U_1(i_1) U_2(i_2) ... U_n(i_n))``. Each core holds one mode (the paper's layout, not
the TT-matrix layout where a core holds an input and an output mode).

Merging cores. ``merge_cores`` merges neighbours pairwise in a balanced tree. Merging ``(a, p, b)`` with
``(b, q, c)`` costs ``a*p*b*q*c`` MACs. For ``m`` cores of mode ``I`` and rank ``R`` the tree costs
``sum_l (m / 2^l) * R^3 * I^(2^l)`` (``l = 1..log2 m``), dominated by ``R^3 * I^m``; merging one core at a time costs
``R^3 * (I^2 + I^3 + ... + I^m)``, so the tree is cheaper (and its intermediate tensors are smaller).
``tree_merge_macs`` gives the exact count for any shapes; the layers' ``merge_macs()`` use it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..graph.modules import pair
from ..pack.spec import packable
from .plan import ConvStep, Network, PlannedConv, PlannedLinear
from .shapes import check_modes, check_ranks, suggest_modes


def merge_cores(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """Merge neighbouring cores ``(R_a, n_k, R_b)`` in a balanced binary tree into one ``(R_first, prod n, R_last)``.

    The merged mode index is row-major over the cores' modes in order (the first core's mode varies slowest).
    """
    if len(cores) == 1:
        return cores[0]
    mid = len(cores) // 2
    left, right = merge_cores(cores[:mid]), merge_cores(cores[mid:])
    a, p, _ = left.shape
    _, q, c = right.shape
    return torch.einsum("apb,bqc->apqc", left, right).reshape(a, p * q, c)


def tree_merge_macs(shapes: Sequence[tuple[int, int, int]]) -> int:
    """MACs of :func:`merge_cores` for cores of the given ``(R_a, n, R_b)`` shapes (0 for one core)."""
    if len(shapes) <= 1:
        return 0
    mid = len(shapes) // 2
    left, right = shapes[:mid], shapes[mid:]
    a, b, c = left[0][0], left[-1][2], right[-1][2]
    p, q = math.prod(s[1] for s in left), math.prod(s[1] for s in right)
    return tree_merge_macs(left) + tree_merge_macs(right) + a * p * b * q * c


def ring_to_tensor(cores: Sequence[torch.Tensor]) -> torch.Tensor:
    """The full tensor ``T(i_1..i_n) = Tr(U_1(i_1) ... U_n(i_n))`` of a closed ring, shape ``(n_1, ..., n_n)``."""
    merged = merge_cores(cores)
    return torch.einsum("aia->i", merged).reshape([int(c.shape[1]) for c in cores])


def ring_sigma(variance: float, ranks: Sequence[int]) -> float:
    """Core std so that the rebuilt tensor has ``variance``: each element is a sum of ``prod(ranks)`` products of
    ``n = len(ranks)`` independent zero-mean core entries, so ``Var = prod(ranks) * sigma^(2n)`` (``R^n sigma^(2n)``
    for equal ranks)."""
    return (variance / math.prod(ranks)) ** (1.0 / (2 * len(ranks)))


def _make_cores(module: nn.Module, modes: Sequence[int], ranks: Sequence[int]) -> None:
    """Register ``core_0 .. core_{n-1}`` of shape ``(R_k, n_k, R_{k+1 mod n})`` on ``module``. Named parameters,
    not an ``nn.ParameterList``, because ``compactnn.pack`` rebuilds only allow-listed classes."""
    n = len(ranks)
    for k in range(n):
        module.register_parameter(f"core_{k}", nn.Parameter(torch.empty(ranks[k], modes[k], ranks[(k + 1) % n])))


class _RingCores:
    """Mixin: ``self.cores`` lists the ``core_k`` parameters in ring order."""

    @property
    def cores(self) -> list[nn.Parameter]:
        return [getattr(self, f"core_{k}") for k in range(len(self.ranks))]


def _check_features(x: torch.Tensor, dim: int, expected: int, layer: str, modes: tuple) -> None:
    if x.dim() == 0 or x.dim() <= dim or x.shape[dim] != expected:
        raise ModelError(
            f"{layer} expects {expected} features in dim {dim} (modes {modes}), got input of shape {tuple(x.shape)}; "
            "reshape the input or build the layer with matching modes"
        )


@packable
class TRLinear(PlannedLinear, _RingCores, nn.Module):
    """Fully connected layer whose weight is a tensor ring with ``d`` input cores and ``d_out`` output cores.

    Cores (parameters ``core_k``, listed by ``self.cores``; 0-based, ring closed): input core ``k < d`` is
    ``(R_k, I_k, R_{k+1})``; output core ``j`` is ``(R_{d+j}, O_j, R_{d+j+1})`` with ``R_{d+d_out} = R_0``.
    Parameters: ``sum_k R_k n_k R_{k+1}``, i.e. ``R^2 (sum I + sum O)`` for equal ranks (+ ``prod O`` bias).

    Forward (the paper's): merge the input cores into ``F_in (R_0, prod I, R_d)`` and the output cores into
    ``F_out (R_d, prod O, R_0)`` (balanced tree, see the module docstring), then ``t = x . F_in`` (``B, R_0, R_d``)
    and ``y = t : F_out`` over ``(R_0, R_d)``. MACs per sample: ``R_0 R_d (prod I + prod O)`` (this is
    :meth:`macs`); the batch-independent merge costs :meth:`merge_macs` per call. Example, LeNet-300 fc1
    ``(4,7,4,7) -> (3,4,5,5)`` at R = 10: 108,400 MACs per sample (dense 235,200) plus 1,177,000 merge MACs per call,
    so the forward only saves MACs at large batches; the paper's gain is in parameters (``R^2 (sum I + sum O)``).

    Init: cores ~ N(0, sigma^2) with ``sigma`` from :func:`ring_sigma` so ``Var(W) = 1 / in_features``; bias 0.

    Args:
        in_modes: input mode sizes ``(I_1, ..., I_d)``; ``in_features = prod(in_modes)``.
        out_modes: output mode sizes ``(O_1, ..., O_d_out)``; ``out_features = prod(out_modes)``.
        ranks: one rank for every bond, or ``d + d_out`` ranks ``(R_0, ..., R_{d+d_out-1})`` (core k starts at R_k).
        bias: add a learnable bias of ``out_features`` (like ``nn.Linear``; ``self.bias`` is None without it).
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], ranks: int | Sequence[int],
                 bias: bool = True) -> None:
        super().__init__()
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.out_modes = check_modes(out_modes, name="out_modes")
        self.ranks = check_ranks(ranks, len(self.in_modes) + len(self.out_modes))
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        _make_cores(self, self.in_modes + self.out_modes, self.ranks)
        self.bias = nn.Parameter(torch.empty(self.out_features)) if bias else None
        self.reset_parameters()

    @classmethod
    def from_shapes(cls, in_features: int, out_features: int, d: int, rank: int | Sequence[int], *,
                    d_out: int | None = None, in_modes: Sequence[int] | None = None,
                    out_modes: Sequence[int] | None = None, bias: bool = True) -> "TRLinear":
        """Build from feature counts, with modes from :func:`suggest_modes` unless given.

        Args:
            in_features: input features; out_features: output features.
            d: number of input modes (and of output modes unless ``d_out`` is given).
            rank: ranks as for the constructor.
            d_out: number of output modes (default ``d``).
            in_modes / out_modes: explicit modes; they must multiply to the feature counts (ModelError otherwise).
            bias: as for the constructor.
        """
        d_out = d if d_out is None else d_out
        in_modes = suggest_modes(in_features, d) if in_modes is None else check_modes(in_modes, in_features, "in_modes")
        out_modes = (suggest_modes(out_features, d_out) if out_modes is None
                     else check_modes(out_modes, out_features, "out_modes"))
        return cls(in_modes, out_modes, rank, bias=bias)

    def reset_parameters(self) -> None:
        """Draw the cores so the rebuilt weight has variance ``1 / in_features``; zero the bias."""
        sigma = ring_sigma(1.0 / self.in_features, self.ranks)
        for core in self.cores:
            nn.init.normal_(core, 0.0, sigma)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _merged(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = len(self.in_modes)
        return merge_cores(self.cores[:d]), merge_cores(self.cores[d:])

    def full_weight(self) -> torch.Tensor:
        """The dense weight ``(out_features, in_features)``, laid out like ``nn.Linear.weight``."""
        f_in, f_out = self._merged()
        return torch.einsum("aic,coa->oi", f_in, f_out)

    def network(self) -> Network:
        """The layer as a tensor network for :mod:`.plan`: input ``(b, i_0..)``, input cores ``(r_k, i_k, r_k+1)``,
        output cores ``(r_d+j, o_j, r_d+j+1)`` (ring closed), output ``(b, o_0..)``."""
        d, n = len(self.in_modes), len(self.ranks)
        labels = [("b", *(f"i{k}" for k in range(d)))]
        labels += [(f"r{k}", f"i{k}", f"r{(k + 1) % n}") for k in range(d)]
        labels += [(f"r{d + j}", f"o{j}", f"r{(d + j + 1) % n}") for j in range(len(self.out_modes))]
        sizes = [("b", 1)] + [(f"r{k}", r) for k, r in enumerate(self.ranks)]
        sizes += [(f"i{k}", m) for k, m in enumerate(self.in_modes)] + [(f"o{j}", m) for j, m in enumerate(self.out_modes)]
        return Network(tuple(labels), tuple(sizes), ("b", *(f"o{j}" for j in range(len(self.out_modes)))))

    def network_operands(self) -> list[torch.Tensor]:
        return list(self.cores)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd: the planned evaluation (:mod:`.plan`; ``self.last_plan`` names it). With autograd: the
        paper's forward below (merge ``F_in``, ``F_out`` every call, gradients to the cores)."""
        _check_features(x, x.dim() - 1, self.in_features, "TRLinear", self.in_modes)
        return self.planned_forward(x, self._train_forward)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        f_in, f_out = self._merged()
        lead = x.shape[:-1]
        t = torch.einsum("bi,aic->bac", x.reshape(-1, self.in_features), f_in)
        y = torch.einsum("bac,coa->bo", t, f_out)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def macs(self, input: tuple, output: torch.Tensor) -> int:
        """MACs of the forward contraction for one call: ``rows * R_0 * R_d * (prod I + prod O)``, excluding the
        batch-independent core merge (see :meth:`merge_macs`)."""
        rows = output.numel() // self.out_features
        r0, rd = self.ranks[0], self.ranks[len(self.in_modes)]
        return rows * r0 * rd * (self.in_features + self.out_features)

    def merge_macs(self) -> int:
        """MACs of merging the input and output cores (once per forward, whatever the batch)."""
        shapes = [tuple(c.shape) for c in self.cores]
        d = len(self.in_modes)
        return tree_merge_macs(shapes[:d]) + tree_merge_macs(shapes[d:])

    def extra_repr(self) -> str:
        return f"in_modes={self.in_modes}, out_modes={self.out_modes}, ranks={self.ranks}, bias={self.bias is not None}"


@packable
class TRConv2d(PlannedConv, _RingCores, nn.Module):
    """2-D convolution whose weight is a tensor ring: input-channel cores, one kernel core, output-channel cores.

    Cores (parameters ``core_k``, listed by ``self.cores``; 0-based, ring closed, ``d = len(in_modes)``): input
    core ``k`` is ``(R_k, C_k, R_{k+1})``; the kernel core ``core_d`` is ``(R_d, kh, kw, R_{d+1})``; output core
    ``j`` is ``(R_{d+1+j}, D_j, R_{d+2+j})``, the last one ending at ``R_0``. :meth:`ring_cores` gives all of them as
    3-way ring cores (kernel dims flattened). Parameters: ``R^2 (sum C + sum D) + k^2 R^2`` for equal ranks
    (+ bias).

    Forward (three steps, the paper's):
      1. ``z = x . F_in`` over the input channels, ``F_in (R_0, C, R_d)`` -> ``(B*R_0, R_d, H, W)``;
      2. an ordinary conv2d from ``R_d`` to ``R_{d+1}`` channels with the kernel core (stride/padding/dilation);
      3. contract ``(R_0, R_{d+1})`` with ``F_out (R_{d+1}, D, R_0)`` -> ``(B, D, H', W')``, then add the bias.
    MACs per sample: ``H W C R_0 R_d + H' W' R_0 R_d R_{d+1} kh kw + H' W' R_0 R_{d+1} D`` (:meth:`macs`); merging
    the channel cores costs :meth:`merge_macs` per call.

    Init: He, ``Var(W) = 2 / (C kh kw)`` for the rebuilt weight (see :func:`ring_sigma`); bias 0.

    Args:
        in_modes: input-channel modes, ``in_channels = prod(in_modes)``.
        out_modes: output-channel modes, ``out_channels = prod(out_modes)``.
        kernel_size: int or ``(kh, kw)``.
        ranks: one rank for every bond, or ``len(in_modes) + 1 + len(out_modes)`` ranks (core k starts at R_k).
        stride, padding, dilation: as for ``nn.Conv2d`` (ints or pairs).
        bias: add a learnable bias of ``out_channels``.
    """

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], kernel_size: int | Sequence[int],
                 ranks: int | Sequence[int], stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 dilation: int | Sequence[int] = 1, bias: bool = True) -> None:
        super().__init__()
        self.in_modes = check_modes(in_modes, name="in_modes")
        self.out_modes = check_modes(out_modes, name="out_modes")
        self.kernel_size = pair(kernel_size, "kernel_size", low=0)
        if min(self.kernel_size) < 1:
            raise ModelError(f"kernel_size must be positive, got {kernel_size!r}")
        self.stride = pair(stride, "stride", low=0)
        if min(self.stride) < 1:
            raise ModelError(f"stride must be positive, got {stride!r}")
        self.padding = pair(padding, "padding", low=0)
        self.dilation = pair(dilation, "dilation", low=0)
        if min(self.dilation) < 1:
            raise ModelError(f"dilation must be positive, got {dilation!r}")
        self.ranks = check_ranks(ranks, len(self.in_modes) + 1 + len(self.out_modes))
        self.in_channels = math.prod(self.in_modes)
        self.out_channels = math.prod(self.out_modes)
        kernel = self.kernel_size[0] * self.kernel_size[1]
        _make_cores(self, self.in_modes + (kernel,) + self.out_modes, self.ranks)
        d, n = len(self.in_modes), len(self.ranks)
        kernel_core = torch.empty(self.ranks[d], *self.kernel_size, self.ranks[(d + 1) % n])
        setattr(self, f"core_{d}", nn.Parameter(kernel_core))
        self.bias = nn.Parameter(torch.empty(self.out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init: cores drawn so the rebuilt weight has variance ``2 / (in_channels * kh * kw)``; zero bias."""
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        sigma = ring_sigma(2.0 / fan_in, self.ranks)
        for core in self.cores:
            nn.init.normal_(core, 0.0, sigma)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def ring_cores(self) -> list[torch.Tensor]:
        """All cores as 3-way ring cores ``(R_a, n, R_b)``; the kernel core is reshaped to ``(R_d, kh*kw, R_{d+1})``."""
        cores = self.cores
        d = len(self.in_modes)
        cores[d] = cores[d].reshape(cores[d].shape[0], -1, cores[d].shape[-1])
        return cores

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        d = len(self.in_modes)
        cores = self.ring_cores()
        return merge_cores(cores[:d]), cores[d], merge_cores(cores[d + 1:])

    def full_weight(self) -> torch.Tensor:
        """The dense weight ``(out_channels, in_channels, kh, kw)``, laid out like ``nn.Conv2d.weight``."""
        f_in, kern, f_out = self._parts()
        w = torch.einsum("acr,rks,soa->ock", f_in, kern, f_out)
        return w.reshape(self.out_channels, self.in_channels, *self.kernel_size)

    def network_operands(self) -> list[torch.Tensor]:
        return list(self.cores) + ([self.bias] if self.bias is not None else [])

    def version_tensors(self):
        """The tensors the planner's caches depend on (checked every inference call: kept cheap)."""
        return [p for p in self._parameters.values() if p is not None]

    def conv_plans(self, x_shape: tuple) -> dict[str, list[tuple]]:
        """Plans for :class:`.plan.ConvPlanner`: ``dense`` (the rebuilt kernel, one conv) and ``merged`` (the three
        steps of the forward as convs with the merged ``F_in`` / ``F_out`` kept: a 1x1 conv ``C -> R_0 R_d``, the
        kernel core as one ``R_d -> R_{d+1}`` conv over the ``R_0`` channel groups folded into the batch (a folded
        :class:`.plan.ConvStep`, as the training forward does), a 1x1 conv ``R_0 R_{d+1} -> D``)."""
        d = len(self.in_modes)
        r0, rd, rd1 = self.ranks[0], self.ranks[d], self.ranks[(d + 1) % len(self.ranks)]
        kh, kw = self.kernel_size
        one, zero = (1, 1), (0, 0)
        return {
            "dense": [(self.out_channels, self.in_channels, kh, kw, self.stride, self.padding, self.dilation, 1)],
            "merged": [(r0 * rd, self.in_channels, 1, 1, one, zero, one, 1),
                       (r0 * rd1, rd, kh, kw, self.stride, self.padding, self.dilation, r0),
                       (self.out_channels, r0 * rd1, 1, 1, one, zero, one, 1)],
        }

    def conv_steps(self, plan: str) -> list[ConvStep]:
        """The convs of ``plan`` (see :meth:`conv_plans`) built from the current cores."""
        if plan == "dense":
            return [ConvStep(self.full_weight(), self.bias, self.stride, self.padding, self.dilation)]
        f_in, kern, f_out = self._parts()
        r0, rd, rd1 = f_in.shape[0], f_in.shape[2], kern.shape[2]
        w1 = f_in.permute(0, 2, 1).reshape(r0 * rd, self.in_channels, 1, 1)  # channel (a, r)
        k = kern.permute(2, 0, 1).reshape(rd1, rd, *self.kernel_size)  # applied to each channel group a
        w3 = f_out.permute(1, 2, 0).reshape(self.out_channels, r0 * rd1, 1, 1)  # channel (a, s)
        return [ConvStep(w1, None), ConvStep(k, None, self.stride, self.padding, self.dilation, fold=r0),
                ConvStep(w3, self.bias)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Without autograd: the planned evaluation (:mod:`.plan`, ``self.last_plan``); with autograd: the three
        steps below with ``F_in`` / ``F_out`` merged every call (gradients to the cores)."""
        if x.dim() != 4:
            raise ModelError(f"TRConv2d expects input (B, C, H, W), got shape {tuple(x.shape)}")
        _check_features(x, 1, self.in_channels, "TRConv2d", self.in_modes)
        return self.planned_forward(x, self._train_forward)

    def _train_forward(self, x: torch.Tensor) -> torch.Tensor:
        f_in, kern, f_out = self._parts()
        b, _, h, w = x.shape
        r0, rd, rd1 = f_in.shape[0], f_in.shape[2], kern.shape[2]
        z = torch.einsum("bchw,acr->barhw", x, f_in).reshape(b * r0, rd, h, w)
        k = kern.permute(2, 0, 1).reshape(rd1, rd, *self.kernel_size)
        z = F.conv2d(z, k, None, self.stride, self.padding, self.dilation)
        z = z.reshape(b, r0, rd1, z.shape[-2], z.shape[-1])
        y = torch.einsum("bashw,sda->bdhw", z, f_out)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return y

    def macs(self, input: tuple, output: torch.Tensor) -> int:
        """MACs of the three forward steps for one call (formula in the class docstring), excluding the core merge."""
        x = input[0]
        b, _, h, w = x.shape
        ho, wo = output.shape[-2:]
        d = len(self.in_modes)
        r0, rd, rd1 = self.ranks[0], self.ranks[d], self.ranks[d + 1]
        kk = self.kernel_size[0] * self.kernel_size[1]
        step1 = h * w * self.in_channels * r0 * rd
        step2 = ho * wo * r0 * rd * rd1 * kk
        step3 = ho * wo * r0 * rd1 * self.out_channels
        return int(b * (step1 + step2 + step3))

    def merge_macs(self) -> int:
        """MACs of merging the input-channel and output-channel cores (once per forward, whatever the batch)."""
        shapes = [tuple(c.shape) for c in self.ring_cores()]
        d = len(self.in_modes)
        return tree_merge_macs(shapes[:d]) + tree_merge_macs(shapes[d + 1:])

    def extra_repr(self) -> str:
        return (f"in_modes={self.in_modes}, out_modes={self.out_modes}, kernel_size={self.kernel_size}, "
                f"ranks={self.ranks}, stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")
