"""The fused C kernels of PQ (native ``assign.c`` and ``adc.c``) against the torch paths and brute force."""

import pytest
import torch

from compactnn.errors import ConfigError
from compactnn.pq import PQIndex
from compactnn.pq.kmeans import _assign_native, assign, kmeans
from compactnn.quantize.intonly import native

KINDS = [k for k in ("auto", "generic", "avx2", "vnni") if native.load(k) is not None]
pytestmark = pytest.mark.skipif(not KINDS, reason=f"no native kernels: {native.status('auto')}")


def _brute(x, c):
    d = ((x.double().unsqueeze(2) - c.double().unsqueeze(1)) ** 2).sum(-1)  # (g, n, k)
    return d


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("g,n,d,k", [(3, 517, 8, 256), (2, 300, 21, 7), (1, 70, 98, 33), (4, 9, 1, 16)])
def test_native_matches_brute_force(kind, g, n, d, k):
    gen = torch.Generator().manual_seed(g * 1000 + d)
    x, c = torch.randn(g, n, d, generator=gen), torch.randn(g, k, d, generator=gen)
    labels, dist = _assign_native(native.load(kind), x, c)
    full = _brute(x, c)
    best = full.min(2).values
    picked = full.gather(2, labels.unsqueeze(2)).squeeze(2)
    # the chosen centroid is the nearest up to float32 rounding, and the distance is its distance
    assert torch.all(picked - best <= 1e-4 * (1 + best))
    assert torch.allclose(dist.double(), picked, rtol=1e-4, atol=1e-4)
    t_labels, t_dist = assign(x, c, native=False)
    assert (labels != t_labels).float().mean() < 0.01
    assert torch.allclose(dist, t_dist, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_ties_go_to_the_lower_index(kind):
    """Duplicated centroids (integer data, so the distances are exact): both paths pick the first copy."""
    gen = torch.Generator().manual_seed(5)
    base = torch.randint(0, 9, (40, 3), generator=gen).float()
    c = torch.cat([base, base, base[:8]]).unsqueeze(0)  # k = 88: copies 40 and 80 apart, across lanes and chunks
    x = torch.randint(0, 9, (1, 500, 3), generator=gen).float()
    labels, _ = _assign_native(native.load(kind), x, c)
    t_labels, _ = assign(x, c, native=False)
    assert torch.equal(labels, t_labels)
    assert int(labels.max()) < 40
    assert torch.equal(labels, _brute(x, c).argmin(2))  # torch's argmin: the first minimum


def test_kmeans_is_the_same_on_both_paths(monkeypatch):
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(0, 50, (2, 3000, 4), generator=gen).float()
    runs = []
    for off in (False, True):
        if off:
            monkeypatch.setenv("COMPACTNN_NATIVE", "off")
        runs.append(kmeans(x, 16, iterations=30, seed=3))
    (c0, l0, i0), (c1, l1, i1) = runs
    # equal here; a near tie may round the other way on another BLAS, hence the 1% allowance
    assert (l0 != l1).float().mean() < 0.01
    assert torch.allclose(i0, i1, rtol=1e-3)


def test_forcing_native_without_kernels_is_one_line(monkeypatch):
    monkeypatch.setenv("COMPACTNN_NATIVE", "off")
    with pytest.raises(ConfigError) as err:
        assign(torch.zeros(1, 4, 2), torch.zeros(1, 2, 2), native=True)
    assert "\n" not in str(err.value) and "native" in str(err.value)


@pytest.fixture(scope="module")
def index():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 24, generator=gen)
    return PQIndex.build(x, 6, bits=8, iterations=4, quiet=True), torch.randn(300, 24, generator=gen)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["adc", "sdc"])
def test_native_search_equals_torch_and_brute_force(monkeypatch, index, kind, mode):
    idx, q = index
    monkeypatch.setattr("compactnn.pq.index.native_kernels", lambda: native.load(kind))
    d1, i1 = idx.search(q, 40, mode=mode)  # 300 queries: two calls of 256, a partial block of 16
    d0, i0 = idx.search(q, 40, mode=mode, native=False)
    assert torch.equal(d1, d0)  # the same float32 sums in the same order
    assert (i1 != i0).float().mean() < 0.001  # topk may order equal distances otherwise
    if mode == "adc":  # the distance to the reconstruction, nearest first
        rec = idx.quantizer.decode(idx.codes).double()
        full = ((q.double()[:, None] - rec[None]) ** 2).sum(-1)
        assert torch.allclose(full.gather(1, i1), d1.double(), rtol=1e-4, atol=1e-3)
        assert torch.allclose(full.topk(40, largest=False).values, d1.double(), rtol=1e-4, atol=1e-3)
    assert torch.all(d1[:, 1:] >= d1[:, :-1])


def test_native_search_ties_go_to_the_lower_id_and_k_can_be_the_base(index):
    idx, q = index
    dup = PQIndex(idx.quantizer, torch.cat([idx.codes[:50]] * 3))  # ids i, i + 50, i + 100 share codes
    d, ids = dup.search(q[:20], 150)
    assert torch.all(d[:, 1:] >= d[:, :-1])
    for row_d, row_i in zip(d, ids):
        for a in range(149):
            if row_d[a] == row_d[a + 1]:
                assert row_i[a] < row_i[a + 1]
    assert sorted(ids[0].tolist()) == list(range(150))


def test_native_search_needs_byte_codes():
    gen = torch.Generator().manual_seed(1)
    idx = PQIndex.build(torch.randn(600, 4, generator=gen), 2, bits=9, iterations=1, quiet=True)
    with pytest.raises(ConfigError) as err:
        idx.search(torch.randn(3, 4), 5, native=True)
    assert "\n" not in str(err.value) and "8 bits" in str(err.value)
    d, _ = idx.search(torch.randn(3, 4), 5)  # the torch path
    assert d.shape == (3, 5)
