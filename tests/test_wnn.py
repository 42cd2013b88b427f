import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score
from sklearn.neighbors import kneighbors_graph

from sccohort.errors import InputError
from sccohort.tl.clustering import leiden
from sccohort.tl.knn import knn_exact
from sccohort.tl.wnn import WNNInputError, wnn, wnn_graph
from sccohort.tl.wnn_kernels import _weighted_select, _wnn_steps


def two_modalities(n_per: int = 120, seed: int = 0):
    """Four clusters: A separates 0 from 1 but not 2 from 3; B the reverse."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(4), n_per)
    centre_a = rng.normal(size=(4, 10)) * 4
    centre_a[3] = centre_a[2]
    centre_b = rng.normal(size=(4, 8)) * 4
    centre_b[1] = centre_b[0]
    a = centre_a[truth] + rng.normal(size=(truth.size, 10))
    b = centre_b[truth] + rng.normal(size=(truth.size, 8))
    return a, b, truth


@pytest.fixture(scope="module")
def data():
    a, b, truth = two_modalities()
    return a, b, truth, wnn_graph({"a": a, "b": b})


def leiden_labels(graph, resolution=0.5):
    adata = ad.AnnData(np.zeros((graph.shape[0], 1), dtype=np.float32))
    adata.obsp["graph"] = graph
    adata.uns["graph"] = {"connectivities_key": "graph"}
    leiden(adata, neighbors_key="graph", resolution=resolution, n_iterations=-1, seed=0)
    return adata.obs["leiden"].to_numpy()


def test_weights_favour_the_informative_modality(data):
    _, _, truth, res = data
    assert res.modalities == ("a", "b")
    w_a = res.weights[:, 0]
    assert np.median(w_a[truth <= 1]) > 0.9  # A alone separates clusters 0 and 1
    assert np.median(w_a[truth >= 2]) < 0.1  # B alone separates clusters 2 and 3


def test_weights_are_a_partition_of_one(data):
    _, _, _, res = data
    np.testing.assert_allclose(res.weights.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # in (0, 1) mathematically; a weight of 1 - 1e-87 rounds to 1.0 in float64
    assert (res.weights > 0).all() and (res.weights <= 1).all()
    assert 0.05 < res.weights[:, 0].mean() < 0.95
    assert (res.bandwidths > 0).all()


def test_neighbours_graphs_are_consistent(data):
    _, _, truth, res = data
    n = truth.size
    assert res.knn_indices.shape == (n, 20)
    assert (res.knn_indices != np.arange(n)[:, None]).all()  # no cell is its own neighbour
    assert (np.diff(res.knn_distances, axis=1) >= -1e-12).all()
    # WNN neighbours stay within the true cluster although each modality merges two clusters
    assert (truth[res.knn_indices] == truth[:, None]).mean() > 0.98
    conn = res.connectivities
    assert abs(conn - conn.T).max() < 1e-12 and conn.diagonal().max() == 0
    assert conn.data.min() > 0 and conn.data.max() <= 1
    snn = res.snn
    np.testing.assert_allclose(snn.diagonal(), 1.0)
    assert abs(snn - snn.T).max() < 1e-12 and snn.data.min() >= 1 / 15


def test_leiden_on_wnn_recovers_clusters_no_single_modality_resolves(data):
    a, b, truth, res = data
    assert adjusted_rand_score(truth, leiden_labels(res.connectivities)) >= 0.9
    assert adjusted_rand_score(truth, leiden_labels(res.snn)) >= 0.9
    for single in (a, b):  # one modality alone: two of the four clusters stay merged
        knn = kneighbors_graph(single, n_neighbors=20)
        labels = leiden_labels(((knn + knn.T) > 0).astype(float).tocsr())
        assert adjusted_rand_score(truth, labels) < 0.8


def test_deterministic_for_a_seed_also_with_the_approximate_search():
    a, b, _ = two_modalities(n_per=80, seed=3)
    for method in ("exact", "approximate"):
        r1 = wnn_graph({"a": a, "b": b}, knn_method=method, seed=7)
        r2 = wnn_graph({"a": a, "b": b}, knn_method=method, seed=7)
        np.testing.assert_array_equal(r1.weights, r2.weights)
        np.testing.assert_array_equal(r1.knn_indices, r2.knn_indices)
        assert (r1.snn != r2.snn).nnz == 0


def test_approximate_search_agrees_with_exact():
    a, b, _ = two_modalities(n_per=150, seed=5)
    exact = wnn_graph({"a": a, "b": b}, knn_method="exact")
    ivf = wnn_graph({"a": a, "b": b}, knn_method="approximate")
    assert np.corrcoef(exact.weights[:, 0], ivf.weights[:, 0])[0, 1] > 0.98
    pairs = zip(exact.knn_indices, ivf.knn_indices, strict=True)
    same = [len(set(x) & set(y)) / 20 for x, y in pairs]
    assert np.mean(same) > 0.9


def test_renumbering_the_cells_leaves_every_wnn_step_unchanged():
    """wnn_graph renumbers cells in search-list order for memory locality: no result moves."""
    a, b, _ = two_modalities(n_per=60, seed=4)
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    n = a.shape[0]
    self_col = np.arange(n)[:, None]
    knn = {
        "a": np.hstack([self_col, knn_exact(a, 60)]),
        "b": np.hstack([self_col, knn_exact(b, 60)]),
    }
    x_all = np.hstack([a, b])
    bounds = np.array([0, a.shape[1], a.shape[1] + b.shape[1]])
    args = (20, 1.0, 1e-4, 1 / 15)  # n_neighbors, sd_scale, cross_constant, prune_snn
    ref = _wnn_steps(x_all, bounds, ("a", "b"), knn, *args)
    perm = np.random.default_rng(0).permutation(n)
    inv = np.argsort(perm)
    knn_p = {m: inv[v[perm]] for m, v in knn.items()}
    got = _wnn_steps(x_all[perm], bounds, ("a", "b"), knn_p, *args)
    np.testing.assert_array_equal(got[0][inv], ref[0])  # weights
    np.testing.assert_array_equal(got[1][inv], ref[1])  # kernel widths
    np.testing.assert_array_equal(perm[got[2][inv]], ref[2])  # WNN neighbours
    np.testing.assert_array_equal(got[3][inv], ref[3])  # affinities
    assert (got[4][inv][:, inv] != ref[4]).nnz == 0  # SNN graph


def test_weighted_select_skips_only_candidates_that_cannot_win():
    """The early exit on an affinity bound keeps exactly the brute-force top k (ties: first)."""
    rng = np.random.default_rng(9)
    n, k, n_cand = 300, 10, 60
    a = rng.normal(size=(n, 6))
    b = rng.normal(size=(n, 4))
    x = np.hstack([a / np.linalg.norm(a, axis=1)[:, None], b / np.linalg.norm(b, axis=1)[:, None]])
    bounds = np.array([0, 6, 10])
    cand = rng.integers(0, n, (n, n_cand)).astype(np.int32)  # with repeats
    cand[:, 1] = cand[:, 0]
    w0 = rng.uniform(0, 1, n)
    w0[:50] = 1.0  # one modality only: the other term is 0, ties at the bound
    weights = np.column_stack([w0, 1 - w0])
    sigma = rng.uniform(0.05, 1.0, (n, 2))
    nearest = rng.uniform(0, 0.3, (n, 2))
    idx, aff = _weighted_select(x, bounds, cand, weights, sigma, nearest, k)
    for i in range(n):
        seen = list(dict.fromkeys(cand[i].tolist()))  # first occurrences, in order
        full = np.zeros(len(seen))
        for r in range(2):
            lo, hi = bounds[r], bounds[r + 1]
            d = np.sqrt(((x[seen, lo:hi] - x[i, lo:hi]) ** 2).sum(axis=1))
            dd = np.maximum(d - nearest[i, r], 0.0)
            full = full + weights[i, r] * np.exp(-dd / sigma[i, r])
        best = np.argsort(-full, kind="stable")[:k]
        np.testing.assert_array_equal(idx[i], np.array(seen)[best])
        np.testing.assert_allclose(aff[i], full[best], rtol=1e-12)


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"a": np.ones((50, 3)), "b": np.ones((49, 3))}, "49 cells but 'a' has 50"),
        ({"a": np.full((50, 3), np.nan), "b": np.ones((50, 3))}, "NaN or infinite"),
        ({"a": np.ones((50, 3))}, "at least two modalities"),
        ({"a": np.zeros((50, 3)), "b": np.ones((50, 3))}, "all-zero embedding"),
        ({"a": np.ones((10, 3)), "b": np.ones((10, 3))}, "needs more than 20 cells"),
    ],
)
def test_bad_input_raises_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message) as err:
        wnn_graph(bad)
    assert isinstance(err.value, InputError) and err.type is WNNInputError


def test_wrapper_writes_scanpy_neighbours_that_leiden_uses(data):
    a, b, truth, res = data
    obs = pd.DataFrame(index=[f"c{i}" for i in range(truth.size)])
    rna = ad.AnnData(np.zeros((truth.size, 1), dtype=np.float32), obs=obs)
    prot = ad.AnnData(np.zeros((truth.size, 1), dtype=np.float32), obs=obs.copy())
    rna.obsm["X_pca"] = a
    prot.obsm["X_pca_prot"] = b
    mdata = md.MuData({"rna": rna, "prot": prot})
    wnn(mdata)
    np.testing.assert_allclose(mdata.obs["rna_weight"], res.weights[:, 0])
    np.testing.assert_allclose(mdata.obsm["wnn_weights"].sum(axis=1), 1.0)
    assert mdata.uns["wnn"]["connectivities_key"] == "wnn_connectivities"
    assert mdata.uns["wnn"]["params"]["n_neighbors"] == 20
    assert (mdata.obsp["wnn_distances"] != res.distances).nnz == 0
    leiden(mdata, neighbors_key="wnn", resolution=0.5, n_iterations=-1)
    assert adjusted_rand_score(truth, mdata.obs["leiden"]) >= 0.9

    with pytest.raises(InputError, match="no embedding 'X_missing'"):
        wnn(mdata, {"rna": "X_pca", "prot": "X_missing"})
