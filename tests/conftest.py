"""Test-wide settings and fixtures: never download, one torch thread (tiny models run fastest so), shared data."""

import os

os.environ.setdefault("COMPACTNN_OFFLINE", "1")  # tests must never touch the network
os.environ.setdefault("OMP_NUM_THREADS", "1")

import matplotlib  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's bundled digits as a DataBundle (the embedded default data set)."""
    from compactnn.data import load

    return load("digits")


@pytest.fixture
def f64():
    """Run the test with float64 as torch's default dtype (equivalence tests at tight tolerance)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
