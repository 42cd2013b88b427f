"""The k-nearest-neighbour searches: the inverted file against the exact search."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from sccohort.tl.knn import knn_exact, knn_ivf


def clustered_unit_points(n: int, dim: int = 20, n_clusters: int = 10, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 2
    x = centres[rng.integers(0, n_clusters, n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_search_finds_the_exact_neighbours_nearest_first():
    x = clustered_unit_points(6000)
    k = 50
    exact = knn_exact(x, k)
    approx = knn_ivf(x, k, np.random.default_rng(0))
    assert approx.shape == (6000, k)
    assert (approx != np.arange(6000)[:, None]).all()
    assert all(len(set(row)) == k for row in approx[::50])
    found = [np.isin(e, a).mean() for e, a in zip(exact, approx, strict=True)]
    assert np.mean(found) > 0.97
    sims = np.einsum("ij,ikj->ik", x, x[approx])
    assert (np.diff(sims, axis=1) <= 1e-6).all()  # most similar first


def test_ivf_search_probes_more_lists_when_lists_are_small():
    x = clustered_unit_points(2000, seed=2)
    k = 120  # more than 16 lists of ~5 points hold: the search must widen, not repeat cells
    approx = knn_ivf(x, k, np.random.default_rng(0), n_lists=400)
    assert all(len(set(row)) == k and i not in row for i, row in enumerate(approx))
    exact = knn_exact(x, k)
    assert np.mean([np.isin(e, a).mean() for e, a in zip(exact, approx, strict=True)]) > 0.9


def clustered_points(n: int, dim: int = 30, n_clusters: int = 12, seed: int = 0):
    """Points around cluster centres at different scales, as Harmony PCs are (not normalised)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)) * 4
    scale = rng.uniform(0.5, 2.0, n_clusters)
    label = rng.integers(0, n_clusters, n)
    return (centres[label] + rng.normal(size=(n, dim)) * scale[label, None]).astype(np.float32)


def test_euclidean_ivf_search_finds_the_exact_neighbours_nearest_first():
    x = clustered_points(8000)
    k = 15
    exact = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(x).kneighbors(x)[1][:, 1:]
    approx = knn_ivf(x, k, np.random.default_rng(0), metric="euclidean")
    assert approx.shape == (8000, k)
    assert (approx != np.arange(8000)[:, None]).all()
    assert all(len(set(row)) == k for row in approx[::40])
    found = np.mean([np.isin(e, a).mean() for e, a in zip(exact, approx, strict=True)])
    assert found > 0.95
    dist = np.linalg.norm(x[approx] - x[:, None, :], axis=2)
    assert (np.diff(dist, axis=1) >= -1e-3).all()  # nearest first
    # the cosine search on the same points is a different neighbourhood: the metric matters
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = knn_ivf(unit, k, np.random.default_rng(0))
    assert np.mean([np.isin(e, a).mean() for e, a in zip(exact, cosine, strict=True)]) < found


def test_ivf_search_is_deterministic_for_a_seed_and_rejects_unknown_metrics():
    x = clustered_points(3000, seed=3)
    one = knn_ivf(x, 10, np.random.default_rng(7), metric="euclidean")
    two = knn_ivf(x, 10, np.random.default_rng(7), metric="euclidean")
    assert np.array_equal(one, two)
    with pytest.raises(ValueError, match="unknown metric"):
        knn_ivf(x, 10, np.random.default_rng(0), metric="manhattan")
