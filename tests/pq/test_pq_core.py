"""Product quantization core: k-means, encoding, ADC/SDC search against brute force, rotations, bad input."""

import itertools

import numpy as np
import pytest
import torch

from compactnn.errors import CompactnnError, ConfigError, DataError
from compactnn.pq import PQIndex, eigenvalue_allocation, kmeans, procrustes, train
from compactnn.pq.quantizer import _pair_update, spectral_objective


@pytest.fixture(scope="module")
def vecs():
    from sklearn.datasets import load_digits

    x = torch.from_numpy(load_digits().data.astype(np.float32))
    return x[:1200], x[1200:1300]


@pytest.fixture(scope="module")
def quantizers(vecs):
    base, _ = vecs
    opts = {"opq": {"opq_iterations": 4, "inner": 2}, "spectral": {"outer": 3, "inner": 2}}
    return {m: train(base, 8, bits=4, method=m, iterations=8, quiet=True, **opts.get(m, {}))
            for m in ("pq", "opq-parametric", "opq", "spectral")}


def test_kmeans_reaches_a_fixed_point_and_separates_blobs():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centres.repeat_interleave(50, 0) + 0.1 * torch.randn(150, 2, generator=gen))
    c, labels, inertia = kmeans(x, 3, iterations=50, seed=1)
    # every blob is one cluster
    assert len({tuple(labels[i * 50:(i + 1) * 50].unique().tolist()) for i in range(3)}) == 3
    for j in range(3):
        assert torch.allclose(c[j], x[labels == j].mean(0), atol=1e-5)
    d = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(d.argmin(1), labels)
    assert inertia == pytest.approx(float(d.min(1).values.sum()), rel=1e-3)  # float32 |x|^2 - 2x.c + |c|^2


def test_kmeans_batched_groups_match_separate_runs():
    x = torch.randn(3, 200, 4, generator=torch.Generator().manual_seed(2))
    c, labels, _ = kmeans(x, 8, iterations=10, seed=0, init=x[:, :8].clone())
    for g in range(3):
        cg, lg, _ = kmeans(x[g], 8, iterations=10, seed=0, init=x[g:g + 1, :8].clone())
        assert torch.allclose(c[g], cg, atol=1e-5) and torch.equal(labels[g], lg)


def test_kmeans_relocates_empty_clusters():
    x = torch.cat([torch.zeros(20, 2), torch.ones(5, 2) * 3, torch.tensor([[9.0, 9.0]])])
    init = torch.tensor([[[0.0, 0.0], [100.0, 100.0], [200.0, 200.0]]])  # two centres no point is near
    c, labels, _ = kmeans(x.unsqueeze(0), 3, iterations=10, init=init)
    assert labels.unique().numel() == 3


@pytest.mark.parametrize("method", ["pq", "opq-parametric", "opq", "spectral"])
def test_encode_decode_match_brute_force(quantizers, vecs, method):
    pq = quantizers[method]
    base, _ = vecs
    codes = pq.encode(base)
    assert codes.dtype == torch.uint8 and codes.shape == (base.shape[0], 8)
    y = pq.transform(base).double()
    for j in range(pq.m):
        sub = y[:, j * pq.dsub:(j + 1) * pq.dsub]
        d = ((sub[:, None, :] - pq.codebooks[j].double()[None]) ** 2).sum(-1)
        best = d.min(1).values
        chosen = d.gather(1, codes[:, j].long()[:, None])[:, 0]
        assert torch.allclose(chosen, best, rtol=1e-4, atol=1e-3)  # a tie may pick either centroid
    rec = pq.decode(codes).double()
    expect = torch.cat([pq.codebooks[j, codes[:, j].long()] for j in range(pq.m)], 1).double()
    if pq.rotation is not None:
        assert torch.allclose(pq.rotation.double().t() @ pq.rotation.double(), torch.eye(64, dtype=torch.float64),
                              atol=1e-4)
        expect = expect @ pq.rotation.double().t()
    assert torch.allclose(rec, expect + pq.mean.double(), atol=1e-3)


@pytest.mark.parametrize("method", ["pq", "spectral"])
def test_adc_distances_equal_exact_distances_to_reconstructions(quantizers, vecs, method):
    pq = quantizers[method]
    base, queries = vecs
    index = PQIndex(pq)
    index.add(base)
    rec = pq.decode(index.codes).double()
    exact = torch.cdist(queries.double(), rec) ** 2
    adc = index.distances(index.lookup_tables(queries)).t().double()
    assert torch.allclose(adc, exact, rtol=1e-4, atol=1e-2)
    dist, ids = index.search(queries, 10)
    assert ids.dtype == torch.int64 and ids.shape == (100, 10)
    assert torch.allclose(dist.double(), exact.gather(1, ids), rtol=1e-4, atol=1e-2)
    assert torch.allclose(dist.double(), exact.sort(1).values[:, :10], rtol=1e-4, atol=1e-2)
    assert bool((dist[:, 1:] >= dist[:, :-1]).all())


def test_threaded_search_equals_single_threaded(quantizers, vecs):
    index = PQIndex(quantizers["spectral"], quantizers["spectral"].encode(vecs[0]))
    one = index.search(vecs[1], 5, chunk=8)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = index.search(vecs[1], 5, chunk=8)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_sdc_matches_brute_force_on_reconstructions(quantizers, vecs):
    pq = quantizers["opq"]
    base, queries = vecs
    index = PQIndex(pq, pq.encode(base))
    qrec = pq.decode(pq.encode(queries)).double()
    exact = torch.cdist(qrec, pq.decode(index.codes).double()) ** 2
    dist, ids = index.search(queries, 5, mode="sdc")
    assert torch.allclose(dist.double(), exact.sort(1).values[:, :5], rtol=1e-4, atol=1e-2)
    assert torch.allclose(dist.double(), exact.gather(1, ids), rtol=1e-4, atol=1e-2)


def test_lossless_codes_give_exact_search():
    gen = torch.Generator().manual_seed(3)
    levels = torch.randn(4, 4, 3, generator=gen) * 5  # 4 subspaces, 4 distinct sub-vectors of 3 numbers each
    base = torch.cat([levels[j, torch.randint(4, (300,), generator=gen)] for j in range(4)], 1)
    queries = torch.randn(50, 12, generator=gen) * 5
    index = PQIndex.build(base, 4, bits=2, method="pq", iterations=20, quiet=True)
    assert torch.equal(index.quantizer.decode(index.codes), base)  # the codes are lossless
    dist, ids = index.search(queries, 10)
    exact = torch.cdist(queries.double(), base.double()) ** 2
    # the base repeats vectors, so the nearest is found up to ties: the first result is at the nearest distance
    assert torch.allclose(exact.gather(1, ids[:, :1]), exact.min(1, keepdim=True).values)
    assert torch.allclose(dist.double(), exact.sort(1).values[:, :10], rtol=1e-5, atol=1e-3)


def test_rotations_lower_the_error_on_correlated_data(quantizers, vecs):
    base, _ = vecs
    mse = {m: q.mse(base) for m, q in quantizers.items()}
    assert mse["opq"] < mse["pq"] and mse["spectral"] < mse["pq"]


def test_eigenvalue_allocation_balances_products():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([8.0, 4.0, 2.0, 1.0]).sqrt()
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=gen))
    x = (torch.randn(20000, 4, generator=gen) * scales) @ q.t()
    _, rot = eigenvalue_allocation(x, 2)
    var = ((x - x.mean(0)) @ rot).var(0)
    # buckets {8, 1} and {4, 2}: both products 8
    assert float(var[0] * var[1]) == pytest.approx(float(var[2] * var[3]), rel=0.1)
    assert torch.allclose(rot.t() @ rot, torch.eye(4), atol=1e-5)


def test_procrustes_recovers_a_rotation():
    gen = torch.Generator().manual_seed(1)
    r, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen))
    a = torch.randn(100, 6, generator=gen)
    assert torch.allclose(procrustes(a, a @ r), r, atol=1e-4)


def test_pair_update_is_the_spectral_optimum():
    """Two subspaces: the best split of R^(2r) is the top-r eigenvectors of C_1 - C_2 (closed form)."""
    gen = torch.Generator().manual_seed(4)
    r, k = 3, 5
    p = [torch.randn(k, 2 * r, generator=gen, dtype=torch.float64) for _ in range(2)]
    c1, c2 = p[0].t() @ p[0], p[1].t() @ p[1]
    blocks = list(torch.stack(p).split(r, 2))
    basis = list(torch.eye(2 * r, dtype=torch.float64).split(r, 1))
    _pair_update(blocks, basis, 0, 1, r)
    best = float(torch.trace(c2) + torch.linalg.eigvalsh(c1 - c2)[-r:].sum())
    assert spectral_objective(blocks) == pytest.approx(best, rel=1e-9)
    u1, u2 = basis
    assert float(torch.trace(u1.t() @ c1 @ u1) + torch.trace(u2.t() @ c2 @ u2)) == pytest.approx(best, rel=1e-9)
    for perm in itertools.islice(itertools.permutations(range(2 * r)), 0, 720, 37):  # no coordinate split beats it
        e = torch.eye(2 * r, dtype=torch.float64)[:, list(perm)]
        val = torch.trace(e[:, :r].t() @ c1 @ e[:, :r]) + torch.trace(e[:, r:].t() @ c2 @ e[:, r:])
        assert float(val) <= best + 1e-9


def _one_line(err):
    text = str(err.value)
    assert text and "\n" not in text
    return text


def test_bad_input_gives_one_line(vecs):
    base, queries = vecs
    bad = base.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(DataError) as err:
        train(bad, 8, bits=4, quiet=True)
    assert "row 7" in _one_line(err)
    with pytest.raises(ConfigError) as err:
        train(base, 7, bits=4, quiet=True)
    assert "divides" in _one_line(err) and "8" in str(err.value)
    with pytest.raises(ConfigError) as err:
        train(base[:10], 8, bits=4, quiet=True)
    _one_line(err)
    index = PQIndex.build(base[:100], 8, bits=4, iterations=2, quiet=True)
    with pytest.raises(ConfigError) as err:
        index.search(queries, 101)
    assert "larger than the base" in _one_line(err)
    with pytest.raises(DataError) as err:
        index.search(queries[:, :60], 5)
    assert "dimension 60" in _one_line(err)
    with pytest.raises(CompactnnError):
        index.search(queries.numpy().astype(object), 5)


@pytest.mark.parametrize("init", ["natural", "best"])
def test_spectral_starts_and_history(vecs, init):
    from compactnn.pq.quantizer import train_spectral

    base, _ = vecs
    history = []
    pq = train_spectral(base, 8, 4, iterations=4, quiet=True, outer=3, inner=2, init=init, history=history)
    r = pq.rotation.double()
    assert torch.allclose(r.t() @ r, torch.eye(64, dtype=torch.float64), atol=1e-4)
    errors = [h["sample_error"] for h in history]
    assert len(errors) == 3 and all(b <= a * (1 + 1e-5) for a, b in zip(errors, errors[1:]))  # never worse
    assert all(h["objective"] > 0 for h in history)
