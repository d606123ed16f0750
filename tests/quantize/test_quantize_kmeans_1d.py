"""kmeans_1d: exact 1-D Lloyd's, checked against brute force, sklearn KMeans and the fixed-point properties."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans

from compactnn.quantize import kmeans_1d
from compactnn.quantize.kmeans import inertia


def assert_fixed_point(x, centroids, labels):
    x = np.asarray(x, np.float64)
    dist = np.abs(x[:, None] - centroids[None, :])
    assert np.all(dist[np.arange(x.size), labels] <= dist.min(axis=1) + 1e-12)  # nearest centroid
    for j in np.unique(labels):
        assert centroids[j] == pytest.approx(x[labels == j].mean(), rel=1e-12, abs=1e-12)  # mean of members


def brute_force_optimum(x, k):
    """Optimal 1-D k-means: some split of the sorted data into k contiguous groups."""
    xs = np.sort(x)
    best = np.inf
    for cuts in itertools.combinations(range(1, xs.size), k - 1):
        groups = np.split(xs, cuts)
        best = min(best, sum(((g - g.mean()) ** 2).sum() for g in groups))
    return best


@pytest.mark.parametrize("init", ["linear", "density"])  # random (Forgy) starts can stop in a local optimum
def test_separated_clusters_reach_the_brute_force_optimum(init):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.05, 4) for c in (-2.0, 0.0, 1.0, 3.0)])
    rng.shuffle(x)
    centroids, labels = kmeans_1d(x, 4, init, seed=3)
    assert inertia(x, centroids, labels) == pytest.approx(brute_force_optimum(x, 4), rel=1e-9)
    assert np.all(np.diff(centroids) > 0)
    assert_fixed_point(x, centroids, labels)


@pytest.mark.parametrize("seed", range(5))
def test_never_below_brute_force_and_fixed_point_on_random_data(seed):
    x = np.random.default_rng(seed).standard_normal(11)
    centroids, labels = kmeans_1d(x, 3)
    assert inertia(x, centroids, labels) >= brute_force_optimum(x, 3) - 1e-12
    assert_fixed_point(x, centroids, labels)


@pytest.mark.parametrize("init,k", [("linear", 4), ("density", 8), ("linear", 16), ("random", 5)])
def test_same_inertia_as_sklearn_from_the_same_start(init, k):
    x = np.random.default_rng(1).laplace(size=500) * 0.1
    centroids, labels = kmeans_1d(x, k, init, iterations=500, seed=2)
    from compactnn.cluster import _initial_centroids

    start = _initial_centroids(np.sort(x), k, init, 2)
    sk = KMeans(n_clusters=k, init=start.reshape(-1, 1), n_init=1, max_iter=500, tol=0, algorithm="lloyd").fit(
        x.reshape(-1, 1))
    assert inertia(x, centroids, labels) == pytest.approx(sk.inertia_, rel=1e-6)
    assert np.allclose(np.sort(sk.cluster_centers_.ravel()), centroids, atol=1e-9)
    assert_fixed_point(x, centroids, labels)
    assert np.unique(labels).size == k  # empty clusters were relocated, every code is used


def test_inits_follow_the_paper():
    from compactnn.cluster import _initial_centroids

    xs = np.sort(np.random.default_rng(0).standard_normal(1000))
    assert np.allclose(_initial_centroids(xs, 5, "linear", 0), np.linspace(xs[0], xs[-1], 5))
    assert np.allclose(_initial_centroids(xs, 4, "density", 0), np.quantile(xs, [0.125, 0.375, 0.625, 0.875]))
    r = _initial_centroids(xs, 6, "random", 0)
    assert np.all(np.isin(r, xs)) and np.unique(r).size == 6
    with pytest.raises(ValueError, match="init"):
        _initial_centroids(xs, 3, "kmeans++", 0)


def test_fewer_distinct_values_than_k_gives_the_values():
    x = np.array([0.5, -1.0, 0.5, 2.0])
    centroids, labels = kmeans_1d(x, 8)
    assert centroids.shape == (8,)
    assert np.array_equal(centroids[labels], x)


def test_bad_arguments():
    with pytest.raises(ValueError):
        kmeans_1d([], 4)
    with pytest.raises(ValueError):
        kmeans_1d([1.0, 2.0], 0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=1, max_size=60),
    st.integers(1, 9),
    st.sampled_from(["linear", "density", "random"]),
)
def test_fixed_point_property(values, k, init):
    x = np.array(values, np.float64)
    centroids, labels = kmeans_1d(x, k, init, iterations=1000)
    assert centroids.shape == (k,) and labels.shape == x.shape and labels.min() >= 0 and labels.max() < k
    assert_fixed_point(x, centroids, labels)
