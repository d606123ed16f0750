"""IVF-ADC: exact residual ADC distances, nprobe = nlist equals exhaustive search, save/load."""

import pytest
import torch

from compactnn.errors import ConfigError
from compactnn.pq import load_index, save_index
from compactnn.pq.index import IVFPQIndex


@pytest.fixture(scope="module")
def ivf():
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 16, generator=gen) * 4
    x = centres[torch.randint(6, (500,), generator=gen)] + torch.randn(500, 16, generator=gen)
    q = centres[torch.randint(6, (30,), generator=gen)] + torch.randn(30, 16, generator=gen)
    return IVFPQIndex.build(x, 6, 4, bits=4, method="pq", iterations=10, quiet=True), x, q


def test_full_probe_equals_exhaustive_adc(ivf):
    index, _, q = ivf
    rec = index.decode().double()
    exact = torch.cdist(q.double(), rec) ** 2
    dist, ids = index.search(q, 10, nprobe=index.nlist)
    assert torch.allclose(dist.double(), exact.sort(1).values[:, :10], rtol=1e-4, atol=1e-3)
    assert torch.allclose(dist.double(), exact.gather(1, ids), rtol=1e-4, atol=1e-3)


def test_one_probe_stays_in_the_nearest_list(ivf):
    index, _, q = ivf
    _, ids = index.search(q, 5, nprobe=1)
    nearest = torch.cdist(q, index.coarse).argmin(1)
    for i in range(q.shape[0]):
        got = ids[i][ids[i] >= 0]
        assert bool((index.lists[got] == nearest[i]).all())


def test_short_lists_pad_with_minus_one():
    x = torch.cat([torch.zeros(20, 4), torch.full((300, 4), 50.0)]) + torch.randn(320, 4) * 0.1
    index = IVFPQIndex.build(x, 2, 2, bits=2, iterations=5, quiet=True)
    dist, ids = index.search(torch.zeros(1, 4), 30, nprobe=1)
    assert int((ids >= 0).sum()) == 20 and bool(torch.isinf(dist[0, 20:]).all()) and bool((ids[0, 20:] == -1).all())


def test_ivf_save_load(ivf, tmp_path):
    index, _, q = ivf
    save_index(index, tmp_path / "ivf.cnz")
    back = load_index(tmp_path / "ivf.cnz")
    assert isinstance(back, IVFPQIndex) and back.nlist == index.nlist
    a, b = index.search(q, 7, nprobe=3), back.search(q, 7, nprobe=3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_ivf_bad_settings(ivf):
    index, x, q = ivf
    with pytest.raises(ConfigError, match="nprobe"):
        index.search(q, 3, nprobe=0)
    with pytest.raises(ConfigError, match="nlist"):
        IVFPQIndex.build(x[:10], 11, 4, bits=1)
