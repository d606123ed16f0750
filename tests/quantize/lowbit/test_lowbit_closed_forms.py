"""ELQ's and TSQ's closed-form steps against brute force on small problems; INQ's incremental portions exact."""

import itertools

import numpy as np
import pytest
import torch

from compactnn.quantize.lowbit.elq import elq_closed_form, elq_objective
from compactnn.quantize.lowbit.quantizers import Incremental, Pow2Weight, TernaryWeight, decode
from compactnn.quantize.lowbit.tsq import alpha_step, aux_objective, solve_layer, t_step, z_step


def _rng(seed):
    return torch.Generator().manual_seed(seed)


# -------------------------------------------------------------------------------------------------------- ELQ
@pytest.mark.parametrize("seed", range(5))
def test_elq_ternary_is_a_fixed_point_of_both_closed_forms(seed):
    w = torch.randn(40, generator=_rng(seed), dtype=torch.float64)
    h = torch.rand(40, generator=_rng(seed + 100), dtype=torch.float64) + 0.5
    alpha, t = elq_closed_form(w, h, 2)
    # for this alpha, every t_i is the brute-force best of {-1, 0, 1}
    for i in range(len(w)):
        best = min((-1.0, 0.0, 1.0), key=lambda v: float(h[i] * (w[i] - alpha * v) ** 2))
        assert t[i] == best
    # for this support, alpha is the brute-force best scale (fine grid around it)
    grid = np.linspace(0.5 * alpha, 1.5 * alpha, 2001)
    errs = [elq_objective(w, h, a, t) for a in grid]
    assert elq_objective(w, h, alpha, t) <= min(errs) + 1e-12
    # and no worse than TWN's threshold and scale
    a = w.abs()
    m = a > 0.7 * a.mean()
    assert elq_objective(w, h, alpha, t) <= elq_objective(w, h, float(a[m].mean()), torch.sign(w) * m) + 1e-12


@pytest.mark.parametrize("seed", range(3))
def test_elq_ternary_matches_global_brute_force_on_tiny_problems(seed):
    w = torch.randn(7, generator=_rng(seed), dtype=torch.float64)
    h = torch.rand(7, generator=_rng(seed + 7), dtype=torch.float64) + 0.5
    alpha, t = elq_closed_form(w, h, 2)
    best = float("inf")
    for combo in itertools.product((-1.0, 0.0, 1.0), repeat=7):
        tt = torch.tensor(combo, dtype=torch.float64)
        den = float((h * tt * tt).sum())
        if den == 0:
            continue
        a = float((h * w * tt).sum()) / den  # optimal alpha for this t
        best = min(best, elq_objective(w, h, a, tt))
    assert elq_objective(w, h, alpha, t) == pytest.approx(best, rel=1e-9)


def test_elq_binary_scale_is_the_weighted_mean():
    w = torch.randn(30, generator=_rng(1), dtype=torch.float64)
    h = torch.rand(30, generator=_rng(2), dtype=torch.float64) + 0.1
    alpha, t = elq_closed_form(w, h, 1)
    grid = np.linspace(0.0, 2 * float(w.abs().max()), 4001)
    brute = grid[int(np.argmin([elq_objective(w, h, a, t) for a in grid]))]
    assert alpha == pytest.approx(brute, abs=grid[1] - grid[0])
    assert alpha == pytest.approx(float((h * w.abs()).sum() / h.sum()))


# -------------------------------------------------------------------------------------------------------- TSQ
@pytest.mark.parametrize("relu", [True, False])
def test_tsq_z_step_matches_brute_force(relu):
    y = torch.rand(50, generator=_rng(0), dtype=torch.float64) * 2 * (1 if relu else 1) - (0 if relu else 1)
    v = torch.randn(50, generator=_rng(1), dtype=torch.float64)
    lam = 0.7
    z = z_step(y, v, lam, relu)
    grid = torch.linspace(-4, 4, 80001, dtype=torch.float64)
    r = torch.relu(grid) if relu else grid
    for i in range(50):
        cost = (y[i] - r) ** 2 + lam * (grid - v[i]) ** 2
        zi = z[i:i + 1]
        ours = float((y[i] - (torch.relu(zi) if relu else zi)) ** 2 + lam * (zi - v[i]) ** 2)
        assert ours <= float(cost.min()) + 1e-9


def _problem(seed, n=60, d=5, o=3):
    X = torch.randn(n, d, generator=_rng(seed), dtype=torch.float64)
    t_true = torch.randint(-1, 2, (d, o), generator=_rng(seed + 1)).double()
    R = X @ t_true * 0.3 + 0.05 * torch.randn(n, o, generator=_rng(seed + 2), dtype=torch.float64)
    return X, R


def _lin_obj(X, R, alpha, t):
    return ((R - (X @ t) * alpha) ** 2).sum(0)


@pytest.mark.parametrize("seed", range(3))
def test_tsq_alpha_step_matches_brute_force(seed):
    X, R = _problem(seed)
    t = torch.randint(-1, 2, (5, 3), generator=_rng(seed + 5)).double()
    t[:, 0] = torch.tensor([1.0, -1, 0, 1, 1])
    alpha, t2 = alpha_step(X.T @ X, X.T @ R, t, torch.ones(3, dtype=torch.float64))
    for o in range(3):
        if not t[:, o].any():
            continue
        grid = torch.linspace(-2, 2, 40001, dtype=torch.float64)
        errs = ((R[:, o:o + 1] - (X @ t[:, o:o + 1]) * grid[None]) ** 2).sum(0)
        assert float(_lin_obj(X, R, alpha, t2)[o]) <= float(errs.min()) + 1e-9
        assert alpha[o] >= 0


@pytest.mark.parametrize("seed", range(3))
def test_tsq_t_step_each_coordinate_is_the_brute_force_best(seed):
    X, R = _problem(seed, d=6, o=2)
    G, c = X.T @ X, X.T @ R
    alpha = torch.tensor([0.3, 0.25], dtype=torch.float64)
    t = torch.zeros(6, 2, dtype=torch.float64)
    t = t_step(G, c, alpha, t, sweeps=3)
    for o in range(2):  # a fixed point of exact coordinate descent: no single coordinate change helps
        base = float(_lin_obj(X, R, alpha, t)[o])
        for i in range(6):
            for v in (-1.0, 0.0, 1.0):
                tt = t.clone()
                tt[i, o] = v
                assert base <= float(_lin_obj(X, R, alpha, tt)[o]) + 1e-9


def test_tsq_single_coordinate_update_is_exact():
    X, R = _problem(7, d=4, o=1)
    G, c = X.T @ X, X.T @ R
    alpha = torch.tensor([0.3], dtype=torch.float64)
    t = torch.tensor([[1.0], [0.0], [-1.0], [1.0]], dtype=torch.float64)
    new = t_step(G, c, alpha, t.clone(), sweeps=1)
    # the first coordinate is updated with the others as in t: brute force over its three values
    best = min((-1.0, 0.0, 1.0), key=lambda v: float(_lin_obj(X, R, alpha, torch.cat([torch.tensor([[v]]).double(),
                                                                                         t[1:]]))[0]))
    assert new[0, 0] == best


@pytest.mark.parametrize("relu", [True, False])
def test_tsq_solve_layer_lowers_the_objective_and_is_ternary(relu):
    n, d, o = 200, 8, 4
    X = torch.rand(n, d, generator=_rng(3), dtype=torch.float64)
    w = torch.randn(o, d, generator=_rng(4), dtype=torch.float64) * 0.5
    b = torch.randn(o, generator=_rng(5), dtype=torch.float64) * 0.1
    y = X @ w.T + b
    y = torch.relu(y) if relu else y
    alpha, t = solve_layer(X, y, w, b, relu, lam=1.0, iterations=15)
    assert set(torch.unique(t).tolist()) <= {-1.0, 0.0, 1.0} and (alpha >= 0).all()

    def obj(a, tt):
        out = (X @ tt.double().T) * a.double() + b
        return float(((y - (torch.relu(out) if relu else out)) ** 2).sum())

    a0 = w.abs()
    t0 = torch.sign(w) * (a0 > 0.7 * a0.mean(1, keepdim=True))
    alpha0 = torch.stack([a0[i][t0[i] != 0].mean() for i in range(o)])
    assert obj(alpha, t) < obj(alpha0, t0)


def test_tsq_aux_objective_never_increases_over_the_steps():
    n, d, o, lam = 150, 6, 3, 1.0
    X = torch.rand(n, d, generator=_rng(8), dtype=torch.float64)
    w = torch.randn(o, d, generator=_rng(9), dtype=torch.float64)
    b = torch.zeros(o, dtype=torch.float64)
    y = torch.relu(X @ w.T)
    G = X.T @ X
    t = (torch.sign(w) * (w.abs() > 0.7 * w.abs().mean())).T.contiguous()
    alpha, t = alpha_step(G, X.T @ y, t, torch.ones(o, dtype=torch.float64))
    z = z_step(y, (X @ t) * alpha, lam, True)
    last = aux_objective(X, y, z, b, alpha, t, lam, True)
    for _ in range(5):
        z = z_step(y, (X @ t) * alpha, lam, True)
        for stage in ("z", "a", "t", "a"):
            if stage == "a":
                alpha, t = alpha_step(G, X.T @ z, t, alpha)
            elif stage == "t":
                t = t_step(G, X.T @ z, alpha, t)
            now = aux_objective(X, y, z, b, alpha, t, lam, True)
            assert now <= last + 1e-9
            last = now


# -------------------------------------------------------------------------------------------------------- INQ
def test_inq_portions_are_exact_and_frozen_values_stay():
    w = torch.randn(37, 29, generator=_rng(0))
    q = Incremental(w, Pow2Weight(w, 5))
    n = w.numel()
    latent = w.clone()
    prev = None
    for p in (0.5, 0.75, 0.875, 1.0):
        q.freeze(latent, p)
        assert int(q.frozen.sum()) == round(p * n)
        out = q(latent)
        if prev is not None:  # what was frozen before keeps its value, whatever the latent weights did
            assert torch.equal(out[prev_mask], prev[prev_mask])
        # frozen values are powers of two in range (or zero); the unfrozen ones are the float latent weights
        codes, scale = q.codes(latent)
        assert torch.equal(out[q.frozen], decode(codes, scale, "pow2")[q.frozen])
        assert torch.equal(out[~q.frozen], latent[~q.frozen])
        prev, prev_mask = out.detach().clone(), q.frozen.clone()
        latent = latent + 0.01 * torch.randn(w.shape, generator=_rng(int(p * 1000)))  # "retraining"
    assert q.frozen.all()
    codes, _ = q.codes(latent)
    assert int(codes.abs().max()) <= 2 ** (5 - 2) and len(torch.unique(codes)) <= 17


def test_incremental_freezes_the_largest_magnitudes_first():
    w = torch.tensor([[0.1, -0.9, 0.5, -0.05], [0.3, 0.7, -0.2, 0.01]])
    q = Incremental(w, TernaryWeight(w, "layer", "half", 0.0, "fixed", torch.tensor(0.4)))
    q.freeze(w, 0.25)
    assert q.frozen.tolist() == [[False, True, False, False], [False, True, False, False]]
    assert q(w)[0, 1] == -0.4 and q(w)[1, 1] == 0.4
    g = torch.ones_like(w)
    wr = w.clone().requires_grad_(True)
    (q(wr) * g).sum().backward()
    assert torch.equal(wr.grad, (~q.frozen).float())  # no gradient at frozen positions
