"""Tensor-ring decomposition of a trained weight: TR-SVD (tensorly) refined by alternating least squares (ALS).

A ring with cores ``U_k`` of shape ``(R_k, n_k, R_{k+1})`` (``R_n = R_0``) stands for
``T(i_1..i_n) = Tr(U_1(i_1) ... U_n(i_n))`` (see :mod:`.tensor_ring`).

- :func:`tr_svd`: Zhao et al.'s sequential SVD (``tensorly.decomposition.tensor_ring``). Its first step splits one
  mode ``k`` and needs ``R_k * R_{k+1} <= min(n_k, N / n_k)`` (``N`` = all entries); later bonds are bounded by their
  unfoldings and come out smaller when the tensor has lower rank there. We start at the mode that allows the
  largest ranks and zero-pad every core to the requested ranks (zero padding leaves the ring's tensor unchanged).
- :func:`tr_als`: one sweep updates each core in turn by least squares with the others fixed:
  ``T_(k) = G_k(2) Q_k`` where ``Q_k`` merges the other cores (``k+1, ..., k-1``), so
  ``G_k = argmin ||T_(k) - G Q_k||`` (``torch.linalg.lstsq``, minimum norm). Each update minimizes the error over
  that core, so the error never increases from sweep to sweep.
- :func:`linear_tensor` / :func:`conv_tensor` reshape a dense weight into the mode order that
  :class:`TRLinear` / :class:`TRConv2d` rebuild; :func:`factorize_linear` / :func:`factorize_conv` build those layers
  from a trained ``nn.Linear`` / ``nn.Conv2d``.

tensorly is an optional dependency (the ``bench`` extra): it is imported inside :func:`tr_svd` only.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import torch
from torch import nn

from ..errors import ModelError
from .shapes import check_modes, check_ranks
from .tensor_ring import TRConv2d, TRLinear, merge_cores, ring_sigma, ring_to_tensor


def linear_tensor(weight: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int]) -> torch.Tensor:
    """``nn.Linear.weight (out, in)`` as the tensor ``(I_1..I_d, O_1..O_d')`` that :class:`TRLinear` rebuilds."""
    in_modes = check_modes(in_modes, weight.shape[1], "in_modes")
    out_modes = check_modes(out_modes, weight.shape[0], "out_modes")
    return weight.detach().t().reshape(*in_modes, *out_modes)


def conv_tensor(weight: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int]) -> torch.Tensor:
    """``nn.Conv2d.weight (O, C, kh, kw)`` as ``(C_1..C_d, kh*kw, D_1..D_d')``, :class:`TRConv2d`'s core order."""
    o, c, kh, kw = weight.shape
    in_modes = check_modes(in_modes, c, "in_modes")
    out_modes = check_modes(out_modes, o, "out_modes")
    return weight.detach().permute(1, 2, 3, 0).reshape(*in_modes, kh * kw, *out_modes)


def ring_error(tensor: torch.Tensor, cores: Sequence[torch.Tensor]) -> float:
    """Relative Frobenius error ``||T - ring(cores)|| / ||T||`` (float64)."""
    t = tensor.double()
    return float((t - ring_to_tensor([c.double() for c in cores])).norm() / t.norm().clamp_min(1e-300))


def svd_rank_limit(shape: Sequence[int], ranks: Sequence[int]) -> tuple[int, int]:
    """``(mode, slack)``: the mode TR-SVD should start at, and ``min(n_k, N/n_k) - R_k R_{k+1}`` there (the first
    SVD keeps ``R_k R_{k+1}`` singular vectors of the ``n_k x N/n_k`` unfolding, so it needs ``slack >= 0``)."""
    total = math.prod(shape)
    n = len(shape)
    slack = [min(shape[k], total // shape[k]) - ranks[k] * ranks[(k + 1) % n] for k in range(n)]
    best = max(range(n), key=lambda k: slack[k])
    return best, slack[best]


def tr_svd(tensor: torch.Tensor, ranks: int | Sequence[int]) -> list[torch.Tensor]:
    """TR-SVD of ``tensor`` (via ``tensorly.decomposition.tensor_ring``), cores zero-padded to ``ranks``.

    Args:
        tensor: the tensor to factor, shape ``(n_1, ..., n_n)``, ``n >= 2``.
        ranks: one rank for every bond, or ``n`` ranks ``(R_0, ..., R_{n-1})`` (core ``k`` is ``(R_k, n_k, R_{k+1})``).

    Returns:
        float64 cores ``(R_k, n_k, R_{k+1 mod n})``.

    Raises:
        ModelError: the ranks are not positive, or too large for TR-SVD (no mode ``k`` has
            ``R_k R_{k+1} <= min(n_k, N / n_k)``); the message suggests ALS from random cores or a smaller rank.
    """
    from tensorly.decomposition import tensor_ring

    shape = tuple(int(s) for s in tensor.shape)
    n = len(shape)
    if n < 2:
        raise ModelError(f"TR-SVD needs a tensor with at least 2 modes, got shape {shape}; use more modes")
    ranks = check_ranks(ranks, n)
    mode, slack = svd_rank_limit(shape, ranks)
    if slack < 0:
        total = math.prod(shape)
        room = max(min(s, total // s) for s in shape)
        raise ModelError(
            f"TR-SVD cannot reach ranks {ranks} for modes {shape}: its first SVD needs R_k*R_(k+1) <= "
            f"min(n_k, N/n_k) for some mode k, at most {room} here; use init='random' or 'auto' (ALS from random "
            f"cores) or a rank <= {math.isqrt(room)}"
        )
    t = tensor.detach().double().cpu().numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorly warns about order-2 tensors ("trivial case of a matrix")
        factors = tensor_ring(t, rank=list(ranks) + [ranks[0]], mode=mode)
    cores = []
    for k, f in enumerate(factors.factors):
        f = torch.as_tensor(f, dtype=torch.float64)
        full = torch.zeros(ranks[k], shape[k], ranks[(k + 1) % n], dtype=torch.float64)
        full[: f.shape[0], :, : f.shape[2]] = f
        cores.append(full)
    return cores


def random_ring(shape: Sequence[int], ranks: int | Sequence[int], *, std: float = 1.0,
                seed: int = 0) -> list[torch.Tensor]:
    """Random float64 cores whose ring has entries of standard deviation ``std`` (see :func:`ring_sigma`).

    Args:
        shape: mode sizes. ranks: one rank or one per core. std: target std of the rebuilt tensor.
        seed: seed of the generator.
    """
    ranks = check_ranks(ranks, len(shape))
    gen = torch.Generator().manual_seed(seed)
    sigma = ring_sigma(max(std, 1e-12) ** 2, ranks)
    n = len(shape)
    return [torch.randn(ranks[k], shape[k], ranks[(k + 1) % n], generator=gen, dtype=torch.float64) * sigma
            for k in range(n)]


def _others(cores: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    """Merge the cores ``k+1, ..., k-1`` (ring order) into ``(R_{k+1}, prod n, R_k)``."""
    n = len(cores)
    if n == 1:
        r = cores[0].shape[0]
        return torch.eye(r, dtype=cores[0].dtype).reshape(r, 1, r)
    return merge_cores([cores[(k + j) % n] for j in range(1, n)])


def tr_als(tensor: torch.Tensor, cores: Sequence[torch.Tensor], sweeps: int = 10, *,
           tol: float = 0.0) -> tuple[list[torch.Tensor], list[float]]:
    """Refine a tensor ring by alternating least squares, one core at a time with the others fixed.

    Args:
        tensor: the target tensor ``(n_1, ..., n_n)``.
        cores: starting cores ``(R_k, n_k, R_{k+1})`` (e.g. from :func:`tr_svd` or :func:`random_ring`).
        sweeps: number of sweeps over all cores (0 returns the start).
        tol: stop early when a sweep lowers the relative error by less than this.

    Returns:
        ``(cores, errors)``: float64 cores, and the relative error before the first sweep and after each sweep
        (non-increasing up to rounding).
    """
    t = tensor.detach().double()
    shape = tuple(t.shape)
    n = len(shape)
    if len(cores) != n or any(c.shape[1] != shape[k] for k, c in enumerate(cores)):
        raise ModelError(f"cores {[tuple(c.shape) for c in cores]} do not match the tensor's modes {shape}")
    cores = [c.detach().double().clone() for c in cores]
    errors = [ring_error(t, cores)]
    for _ in range(int(sweeps)):
        for k in range(n):
            q = _others(cores, k)  # (R_{k+1}, J, R_k)
            b, j, a = q.shape
            target = t.permute([k] + [(k + i) % n for i in range(1, n)]).reshape(shape[k], j)
            design = q.permute(1, 2, 0).reshape(j, a * b)  # design[j, (a, b)] = Q[b, j, a]
            sol = torch.linalg.lstsq(design, target.t(), driver="gelsd").solution  # (a*b, n_k)
            cores[k] = sol.reshape(a, b, shape[k]).permute(0, 2, 1).contiguous()
        errors.append(ring_error(t, cores))
        if tol > 0 and errors[-2] - errors[-1] < tol:
            break
    return cores, errors


def decompose(tensor: torch.Tensor, ranks: int | Sequence[int], *, init: str = "svd", sweeps: int = 10,
              seed: int = 0) -> tuple[list[torch.Tensor], list[float]]:
    """TR-SVD (``init="svd"``), random cores (``init="random"``), or ``init="auto"``: TR-SVD when its rank cap allows
    the ranks (see :func:`tr_svd`), else random cores; then ``sweeps`` of :func:`tr_als`.

    Returns ``(cores, errors)`` as :func:`tr_als` does (``errors[0]`` is the error of the start).
    """
    if init not in ("svd", "random", "auto"):
        raise ModelError(f"init must be 'svd', 'random' or 'auto', got {init!r}")
    if init == "auto":
        n = len(tensor.shape)
        init = "svd" if n >= 2 and svd_rank_limit(tensor.shape, check_ranks(ranks, n))[1] >= 0 else "random"
    if init == "svd":
        start = tr_svd(tensor, ranks)
    else:
        start = random_ring(tensor.shape, ranks, std=float(tensor.double().std()), seed=seed)
    return tr_als(tensor, start, sweeps)


def _bias_like(layer: nn.Module, new: nn.Module) -> None:
    if layer.bias is not None:
        new.bias.copy_(layer.bias.detach())


@torch.no_grad()
def factorize_linear(layer: nn.Linear, in_modes: Sequence[int], out_modes: Sequence[int],
                     ranks: int | Sequence[int], *, init: str = "svd", sweeps: int = 10,
                     seed: int = 0) -> tuple[TRLinear, list[float]]:
    """A :class:`TRLinear` whose cores factor ``layer.weight`` (see :func:`decompose`), same bias/dtype/device.

    Args:
        layer: the trained ``nn.Linear``. in_modes / out_modes: modes of its in/out features.
        ranks: one rank or ``len(in_modes) + len(out_modes)`` ranks. init / sweeps / seed: as for :func:`decompose`.

    Returns:
        ``(new_layer, errors)`` with the ALS errors (relative, float64).
    """
    w = layer.weight
    cores, errors = decompose(linear_tensor(w, in_modes, out_modes), ranks, init=init, sweeps=sweeps, seed=seed)
    new = TRLinear(in_modes, out_modes, ranks, bias=layer.bias is not None).to(dtype=w.dtype, device=w.device)
    for p, c in zip(new.cores, cores):
        p.copy_(c)
    _bias_like(layer, new)
    return new, errors


def conv_supported(conv: nn.Conv2d) -> str | None:
    """Why :class:`TRConv2d` cannot stand for ``conv`` (groups, string padding, padding mode), or None."""
    if conv.groups != 1:
        return f"groups={conv.groups}"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r}"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r}"
    return None


@torch.no_grad()
def factorize_conv(conv: nn.Conv2d, in_modes: Sequence[int], out_modes: Sequence[int],
                   ranks: int | Sequence[int], *, init: str = "svd", sweeps: int = 10,
                   seed: int = 0) -> tuple[TRConv2d, list[float]]:
    """A :class:`TRConv2d` whose cores factor ``conv.weight`` (kernel ``kh x kw`` is one core), same stride,
    padding, dilation, bias, dtype and device.

    Args:
        conv: the trained ``nn.Conv2d`` (groups 1, numeric zero padding).
        in_modes / out_modes: channel modes. ranks: one rank or ``len(in_modes) + 1 + len(out_modes)`` ranks.
        init / sweeps / seed: as for :func:`decompose`.
    """
    why = conv_supported(conv)
    if why is not None:
        raise ModelError(f"cannot factor a Conv2d with {why} as a tensor ring; use groups=1 and numeric padding")
    w = conv.weight
    cores, errors = decompose(conv_tensor(w, in_modes, out_modes), ranks, init=init, sweeps=sweeps, seed=seed)
    new = TRConv2d(in_modes, out_modes, conv.kernel_size, ranks, stride=conv.stride, padding=conv.padding,
                   dilation=conv.dilation, bias=conv.bias is not None).to(dtype=w.dtype, device=w.device)
    d = len(new.in_modes)
    for k, (p, c) in enumerate(zip(new.cores, cores)):
        p.copy_(c.reshape(p.shape) if k == d else c)
    _bias_like(conv, new)
    return new, errors


__all__ = ["linear_tensor", "conv_tensor", "ring_error", "svd_rank_limit", "tr_svd", "random_ring", "tr_als",
           "decompose", "factorize_linear", "factorize_conv", "conv_supported"]
