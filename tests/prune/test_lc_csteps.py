"""LC C steps: every closed form against brute force on small inputs."""

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compactnn.errors import ConfigError
from compactnn.prune import csteps as cs

D = torch.float64


def rand(n, seed, scale=1.0):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=D) * scale


def sq(a, b):
    return float(((a - b) ** 2).sum())


# ------------------------------------------------------------------------------------------------ l0 / l1


@pytest.mark.parametrize("seed", range(4))
def test_l0_constraint_vs_all_subsets(seed):
    w = rand(8, seed)
    for kappa in range(0, 9):
        best = min(sq(w, w * torch.tensor([i in s for i in range(8)], dtype=D))
                   for s in itertools.combinations(range(8), kappa))
        theta = cs.l0_constraint(w, kappa)
        assert int((theta != 0).sum()) == kappa
        assert sq(w, theta) == pytest.approx(best, abs=1e-12)


def test_l0_constraint_ties_shape_dtype_and_no_mutation():
    w = torch.tensor([[1.0, -2.0], [2.0, 1.0]])
    before = w.clone()
    theta = cs.l0_constraint(w, 2)
    assert theta.dtype == torch.float32 and theta.shape == (2, 2)
    assert torch.equal(theta, torch.tensor([[0.0, -2.0], [2.0, 0.0]]))
    assert torch.equal(cs.l0_constraint(w, 3), torch.tensor([[1.0, -2.0], [2.0, 0.0]]))  # tie -> earlier index
    assert torch.equal(cs.l0_constraint(w, 10), w) and torch.equal(w, before)


def test_l0_grouped_is_global_budget():
    ws = [rand(12, 1).reshape(3, 4), rand(5, 2) * 3, rand(6, 3).reshape(2, 3) * 0.1]
    flat = cs.l0_constraint(torch.cat([w.reshape(-1) for w in ws]), 7)
    out = cs.l0_constraint_grouped(ws, 7)
    assert [o.shape for o in out] == [w.shape for w in ws]
    assert torch.equal(torch.cat([o.reshape(-1) for o in out]), flat)
    assert sum(int((o != 0).sum()) for o in out) == 7


def test_l1_issue_case():
    assert torch.equal(cs.l1_constraint(torch.tensor([1.0, 1.0], dtype=D), 1.0), torch.tensor([0.5, 0.5], dtype=D))


def _tau_bisect(a, kappa):
    lo, hi = 0.0, float(a.max())
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if float(torch.clamp(a - mid, min=0).sum()) > kappa else (lo, mid)
    return (lo + hi) / 2


def _check_projection(w, kappa, theta):
    """θ is the projection onto the ℓ1 ball iff it is feasible and ⟨w − θ, z − θ⟩ ≤ 0 at every vertex z = ±κ e_i."""
    assert float(theta.abs().sum()) <= kappa + 1e-9
    g = w - theta
    vertex_max = kappa * float(g.abs().max())  # max over z of ⟨g, z⟩
    assert vertex_max - float(g @ theta) <= 1e-9


@pytest.mark.parametrize("seed", range(6))
def test_l1_vs_bisection_and_optimality(seed):
    w = rand(20, seed)
    for kappa in (0.0, 0.3, 2.0, float(w.abs().sum()) - 1e-3, 100.0):
        theta = cs.l1_constraint(w, kappa)
        _check_projection(w, kappa, theta)
        if float(w.abs().sum()) > kappa:
            tau = _tau_bisect(w.abs(), kappa)
            ref = torch.sign(w) * torch.clamp(w.abs() - tau, min=0)
            assert torch.allclose(theta, ref, atol=1e-10)
        else:
            assert torch.equal(theta, w)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=15), st.floats(0.01, 20))
def test_l1_properties(values, kappa):
    w = torch.tensor(values, dtype=D)
    theta = cs.l1_constraint(w, kappa)
    _check_projection(w, kappa, theta)
    if float(w.abs().sum()) > kappa:
        assert float(theta.abs().sum()) == pytest.approx(kappa, rel=1e-9)
    assert bool((theta * w >= 0).all())  # signs preserved (or zeroed)
    assert torch.allclose(cs.l1_constraint(theta, kappa), theta, atol=1e-12)  # idempotent


def test_l1_grouped_matches_concat():
    ws = [rand(6, 4).reshape(2, 3), rand(4, 5)]
    out = cs.l1_constraint_grouped(ws, 1.5)
    flat = cs.l1_constraint(torch.cat([w.reshape(-1) for w in ws]), 1.5)
    assert torch.equal(torch.cat([o.reshape(-1) for o in out]), flat)
    assert float(sum(o.abs().sum() for o in out)) == pytest.approx(1.5)


@pytest.mark.parametrize("alpha,mu", [(0.1, 1.0), (0.5, 2.0), (0.02, 0.3)])
def test_penalties_vs_grid(alpha, mu):
    w = rand(40, 7)
    grid = torch.linspace(-4, 4, 8001, dtype=D)
    for wi, t0, t1 in zip(w, cs.l0_penalty(w, alpha, mu), cs.l1_penalty(w, alpha, mu)):
        cand = torch.cat([grid, torch.stack([wi, torch.zeros((), dtype=D)])])
        f0 = mu / 2 * (wi - cand) ** 2 + alpha * (cand != 0)
        f1 = mu / 2 * (wi - cand) ** 2 + alpha * cand.abs()
        v0 = float(mu / 2 * (wi - t0) ** 2 + alpha * (t0 != 0))
        v1 = float(mu / 2 * (wi - t1) ** 2 + alpha * t1.abs())
        assert v0 <= float(f0.min()) + 1e-12
        assert v1 <= float(f1.min()) + 1e-12


def test_penalty_conventions():
    w = torch.tensor([-1.0, 1.0, 1.5, 0.2], dtype=D)
    assert torch.equal(cs.l0_penalty(w, 0.5, 1.0), torch.tensor([0.0, 0.0, 1.5, 0.0], dtype=D))  # |w| = 1 -> 0
    assert torch.allclose(cs.l1_penalty(w, 0.5, 2.0), torch.tensor([-0.75, 0.75, 1.25, 0.0], dtype=D))


# ------------------------------------------------------------------------------------------------ codebooks


def _partitions_cost(xs, k):
    best = np.inf
    for cuts in itertools.combinations(range(1, len(xs)), k - 1):
        b = (0, *cuts, len(xs))
        best = min(best, sum(((xs[b[i]:b[i + 1]] - xs[b[i]:b[i + 1]].mean()) ** 2).sum() for i in range(k)))
    return best


def _dp_reference(xs, k):  # plain O(k n²) DP on sorted values
    n = len(xs)
    cost = lambda a, b: ((xs[a:b] - xs[a:b].mean()) ** 2).sum()  # noqa: E731
    D_ = [cost(0, b) if b else np.inf for b in range(n + 1)]
    for m in range(1, k):
        D_ = [min((D_[a] + cost(a, b) for a in range(m, b)), default=np.inf) for b in range(n + 1)]
    return D_[n]


@pytest.mark.parametrize("seed", range(5))
def test_optimal_codebook_vs_partitions(seed):
    for n in (3, 6, 9):
        w = rand(n, seed * 10 + n)
        xs = np.sort(w.numpy())
        for k in (1, 2, 3):
            c, z, theta = cs.optimal_codebook_1d(w, k)
            assert torch.equal(theta, c[z]) and c.shape == (k,) and bool((c[1:] >= c[:-1]).all())
            assert sq(w, theta) == pytest.approx(_partitions_cost(xs, k), abs=1e-10)


def test_optimal_codebook_vs_all_assignments_and_reference_dp():
    w = rand(7, 11) + torch.tensor([0, 0, 3, 3, 3, -2, -2], dtype=D)
    A, x = np.array(list(itertools.product(range(3), repeat=7))), w.numpy()
    cost = 0.0
    for j in range(3):  # within-cluster SSE of every assignment at once
        m = A == j
        cnt = m.sum(1)
        cost = cost + (m * x**2).sum(1) - np.where(cnt > 0, (m * x).sum(1) ** 2 / np.maximum(cnt, 1), 0.0)
    best = float(cost.min())
    assert sq(w, cs.optimal_codebook_1d(w, 3)[2]) == pytest.approx(best, abs=1e-10)
    big = torch.cat([rand(60, 12), rand(40, 13) * 0.2 + 3, rand(20, 14) * 0.5 - 4])
    for k in (2, 4, 6):
        assert sq(big, cs.optimal_codebook_1d(big, k)[2]) == pytest.approx(_dp_reference(np.sort(big.numpy()), k),
                                                                            rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_adaptive_codebook_lloyd_fixed_point_and_not_better_than_optimum(seed):
    w = torch.cat([rand(30, seed), rand(20, seed + 50) * 0.3 + 2]).reshape(5, 10)
    for k in (2, 3, 4):
        c, z, theta = cs.adaptive_codebook(w, k)
        assert z.shape == w.shape and torch.equal(theta, c[z])
        assert torch.equal(cs.assign_to_codebook(w, c), z)  # nearest-centre assignment
        for j in range(k):
            if (z == j).any():
                assert float(c[j]) == pytest.approx(float(w[z == j].mean()), abs=1e-12)
        opt = sq(w, cs.optimal_codebook_1d(w, k)[2])
        assert sq(w, theta) >= opt - 1e-10
        c2, _, theta2 = cs.adaptive_codebook(w + 0.01, k, init_centers=c)  # warm start: never worse than before
        assert sq(w + 0.01, theta2) <= sq(w + 0.01, c[z]) + 1e-12


def test_adaptive_codebook_warm_start_at_optimum_stays():
    w = rand(40, 3)
    c, z, _ = cs.optimal_codebook_1d(w, 3)
    c2, z2, _ = cs.adaptive_codebook(w, 3, init_centers=c.flip(0))
    assert torch.allclose(c2, c.flip(0)) and torch.equal(z2, 2 - z)  # centre order follows init_centers


def test_fixed_codebook_vs_argmin_with_ties():
    code = torch.tensor([-1.0, 0.0, 0.0, 0.5, 2.0], dtype=D)
    w = torch.cat([rand(50, 4), torch.tensor([-0.5, 0.25, 1.25, 0.0, 5.0, -3.0], dtype=D)])
    ref = torch.argmin((w[:, None] - code[None]).abs(), dim=1)  # first minimum = smaller codeword (ascending)
    assert torch.equal(cs.assign_to_codebook(w, code), ref)
    assert torch.equal(cs.fixed_codebook(w, code), code[ref])
    perm = torch.tensor([3, 0, 4, 2, 1])  # unsorted codebook: same values chosen
    assert torch.equal(cs.fixed_codebook(w, code[perm]), code[ref])
    assert torch.equal(cs.fixed_codebook(torch.tensor([0.5, -0.2]), [-1.0, 0.0, 1.0]), torch.tensor([0.0, 0.0]))


def _signs(n, values):
    return torch.tensor(list(itertools.product(values, repeat=n)), dtype=D)


@pytest.mark.parametrize("seed", range(4))
def test_binary_and_scaled_binary_vs_brute_force(seed):
    w = rand(8, seed)
    S = _signs(8, (-1.0, 1.0))
    assert sq(w, cs.binary(w)) == pytest.approx(float(((w - S) ** 2).sum(1).min()))
    a = torch.clamp(S @ w / 8, min=0)  # best a ≥ 0 for each sign pattern
    best = float(((w - a[:, None] * S) ** 2).sum(1).min())
    assert sq(w, cs.scaled_binary(w)) == pytest.approx(best, abs=1e-12)
    assert torch.equal(cs.binary(torch.tensor([0.0, -0.0, -1e-9])), torch.tensor([1.0, 1.0, -1.0]))


@pytest.mark.parametrize("seed", range(6))
def test_ternary_vs_all_sign_patterns(seed):
    n = 4 + seed % 5
    w = rand(n, seed) * (1 + seed)
    if seed == 5:
        w = torch.tensor([3.0, -3.0, 1.0, 1.0, 0.5, -0.0, 2.0, 2.0], dtype=D)  # ties in |w|
    n = len(w)
    S = _signs(n, (-1.0, 0.0, 1.0))
    nnz = (S != 0).sum(1).clamp(min=1)
    a = torch.clamp(S @ w / nnz, min=0)
    best = float(((w - a[:, None] * S) ** 2).sum(1).min())
    theta = cs.ternary(w)
    assert sq(w, theta) == pytest.approx(best, abs=1e-10)
    scale = theta.abs().max()
    assert set(theta.tolist()) <= {float(-scale), 0.0, float(scale)}
    assert cs.scaled_ternary is cs.ternary


def test_ternary_zero_weights():
    assert torch.equal(cs.ternary(torch.zeros(5, dtype=D)), torch.zeros(5, dtype=D))


# ------------------------------------------------------------------------------------------------ low rank


def test_low_rank_eckart_young_and_conv_reshape():
    W = rand(6 * 9, 21).reshape(6, 9)
    s = np.linalg.svd(W.numpy(), compute_uv=False)
    for r in range(0, 7):
        theta = cs.low_rank(W, r)
        assert int(np.linalg.matrix_rank(theta.numpy(), tol=1e-9)) == r
        assert sq(W, theta) == pytest.approx(float((s[r:] ** 2).sum()), abs=1e-10)
    conv = rand(4 * 3 * 2 * 2, 22).reshape(4, 3, 2, 2)
    theta = cs.low_rank(conv, 2)
    assert theta.shape == conv.shape
    assert torch.allclose(theta.reshape(4, 12), cs.low_rank(conv.reshape(4, 12), 2))
    A, B = cs.low_rank_factors(conv, 2)
    assert A.shape == (4, 2) and B.shape == (2, 12) and torch.allclose(A @ B, theta.reshape(4, 12))


# ------------------------------------------------------------------------------------------------ combination


def test_additive_combination_non_increasing():
    w = torch.cat([rand(80, 30) * 0.2 + 1, rand(80, 31) * 0.2 - 1, rand(8, 32) * 4])
    steps = [lambda r: cs.optimal_codebook_1d(r, 2)[2], lambda r: cs.l0_constraint(r, 8)]
    objs = [sq(w, sum(cs.additive_combination(w, steps, rounds=t))) for t in range(1, 8)]
    assert all(b <= a + 1e-12 for a, b in zip(objs, objs[1:]))
    assert objs[-1] < sq(w, cs.optimal_codebook_1d(w, 2)[2])  # the sparse correction helps
    q, s = cs.additive_combination(w, steps, rounds=5)
    assert int((s != 0).sum()) <= 8 and len(torch.unique(q)) <= 2


def test_additive_combination_warm_started_kmeans():
    w = torch.cat([rand(100, 40), rand(5, 41) * 6])
    state = {"c": None}

    def quant(r):
        c, _, theta = cs.adaptive_codebook(r, 3, init_centers=state["c"])
        state["c"] = c
        return theta

    steps = [quant, lambda r: cs.l1_penalty(r, 0.3, 1.0)]
    objs = []
    for t in range(1, 7):
        state["c"] = None
        parts = cs.additive_combination(w, steps, rounds=t)
        objs.append(sq(w, parts[0] + parts[1]) + 0.6 * float(parts[1].abs().sum()))  # ‖·‖² + 2α/μ‖θ2‖₁
    assert all(b <= a + 1e-10 for a, b in zip(objs, objs[1:]))


def test_codebook_bits():
    assert cs.codebook_bits(1000, 1) == 32
    assert cs.codebook_bits(1000, 2) == 1000 + 64
    assert cs.codebook_bits(1000, 3) == 2000 + 96
    assert cs.codebook_bits(1000, 4) == 2000 + 128
    assert cs.codebook_bits(10, 5) == 30 + 160


@pytest.mark.parametrize("call", [
    lambda: cs.l0_constraint(torch.ones(3), -1),
    lambda: cs.l0_constraint(torch.ones(3), 1.5),
    lambda: cs.l0_constraint(torch.ones(3, dtype=torch.int64), 1),
    lambda: cs.l1_constraint(torch.ones(3), -0.1),
    lambda: cs.l0_penalty(torch.ones(3), 0.1, 0.0),
    lambda: cs.adaptive_codebook(torch.ones(3), 4),
    lambda: cs.adaptive_codebook(torch.ones(5), 2, init_centers=torch.zeros(3)),
    lambda: cs.optimal_codebook_1d(torch.ones(3), 0),
    lambda: cs.low_rank(torch.ones(3), 1),
    lambda: cs.l0_constraint_grouped([], 1),
    lambda: cs.additive_combination(torch.ones(3), []),
    lambda: cs.codebook_bits(10, 0),
])
def test_bad_input_raises_config_error(call):
    with pytest.raises(ConfigError) as err:
        call()
    assert "\n" not in str(err.value)
