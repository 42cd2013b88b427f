"""Leiden clustering without igraph (graspologic-native): objective, determinism, loops."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.metrics import adjusted_rand_score

from sccohort.tl import clustering, leiden, leiden_membership


def _planted(sizes, p_in, p_out, seed, weighted=False):
    """Symmetric SBM adjacency (n x n CSR, no diagonal) and the true block of each node."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    same = truth[:, None] == truth[None, :]
    upper = np.triu(rng.random((truth.size, truth.size)) < np.where(same, p_in, p_out), 1)
    weights = rng.uniform(0.5, 1.5, upper.shape) if weighted else np.ones(upper.shape)
    a = sp.csr_matrix(np.where(upper, weights, 0.0))
    return (a + a.T).tocsr(), truth


def _ring_of_cliques(n_cliques, size):
    """Cliques of ``size`` nodes, each joined to the next by one edge (a ring)."""
    clique = np.ones((size, size)) - np.eye(size)
    a = sp.lil_matrix(sp.kron(sp.eye(n_cliques), clique))
    for c in range(n_cliques):
        i, j = c * size, ((c + 1) % n_cliques) * size + 1
        a[i, j] = a[j, i] = 1.0
    return a.tocsr()


@pytest.mark.parametrize("weighted", [False, True])
def test_planted_communities_are_recovered(weighted):
    graph, truth = _planted([120, 80, 150, 60], 0.25, 0.01, seed=1, weighted=weighted)
    labels = leiden_membership(graph, resolution=1.0, seed=0)
    assert adjusted_rand_score(truth, labels) > 0.99
    assert labels.dtype == np.int64 and labels.shape == truth.shape
    assert (np.diff(np.bincount(labels)) <= 0).all()  # 0, 1, ... by decreasing size


def test_same_seed_same_clusters():
    graph, _ = _planted([60] * 8, 0.15, 0.03, seed=2)  # noisy: seeds can differ
    runs = [leiden_membership(graph, resolution=1.0, seed=s) for s in (7, 7, 8)]
    np.testing.assert_array_equal(runs[0], runs[1])
    a = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(graph.shape[0])]))
    a.obsp["g"] = graph
    a.uns["g"] = {"connectivities_key": "g"}
    leiden(a, neighbors_key="g", seed=7, key_added="x")
    leiden(a, neighbors_key="g", seed=7, key_added="y")
    assert (a.obs["x"] == a.obs["y"]).all()
    assert list(a.obs["x"].cat.categories) == [str(i) for i in range(a.obs["x"].nunique())]


def test_resolution_changes_the_number_of_clusters():
    graph = _ring_of_cliques(30, 5)
    counts = [
        len(np.unique(leiden_membership(graph, resolution=r, seed=0)))
        for r in (0.05, 0.3, 1.0, 3.0)
    ]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert counts[-1] == 30  # each clique alone


def test_the_er_objective_is_modularity_on_unit_weights():
    graph, truth = _planted([100, 100, 100], 0.2, 0.02, seed=3, weighted=True)
    unit = graph.copy()
    unit.data[:] = 1.0
    for r in (0.2, 1.0, 1.5):
        er = leiden_membership(graph, resolution=r, objective="er", seed=4)
        np.testing.assert_array_equal(er, leiden_membership(unit, resolution=r, seed=4))
    heavy = graph.copy()
    heavy.data *= np.random.default_rng(0).uniform(1, 100, heavy.nnz)  # ignored by "er"
    np.testing.assert_array_equal(
        leiden_membership(heavy, resolution=1.0, objective="er", seed=4),
        leiden_membership(graph, resolution=1.0, objective="er", seed=4),
    )
    assert adjusted_rand_score(truth, er) > 0.95


def test_loops_are_ignored_as_by_igraphs_leiden():
    graph, truth = _planted([50, 70], 0.4, 0.02, seed=5, weighted=True)
    loops = sp.diags(np.random.default_rng(1).uniform(0, 3, graph.shape[0]))
    looped = (graph + loops).tocsr()
    for objective in ("modularity", "er"):
        np.testing.assert_array_equal(
            leiden_membership(looped, resolution=1.0, objective=objective, seed=0),
            leiden_membership(graph, resolution=1.0, objective=objective, seed=0),
        )
    assert adjusted_rand_score(truth, leiden_membership(looped, resolution=1.0)) > 0.99
    assert looped.diagonal().sum() > 0  # the caller's matrix is left as it was


def test_igraphs_leiden_ignores_loops_too():
    """python-igraph weighs nodes by strength without loops: what leaving them out copies."""
    igraph = pytest.importorskip("igraph")  # the reference, not a dependency
    graph, _ = _planted([60, 60, 60], 0.15, 0.03, seed=8, weighted=True)
    looped = (graph + sp.diags(np.random.default_rng(2).uniform(0, 4, graph.shape[0]))).tocsr()
    upper = sp.triu(looped).tocoo()
    g = igraph.Graph(
        n=looped.shape[0], edges=list(zip(upper.row.tolist(), upper.col.tolist(), strict=True))
    )
    g.es["weight"] = upper.data.tolist()
    no_loops = g.strength(weights="weight", loops=False)
    for seed in range(3):
        igraph.set_random_number_generator(random.Random(seed))
        default = g.community_leiden("modularity", weights="weight", resolution=1.5).membership
        igraph.set_random_number_generator(random.Random(seed))
        explicit = g.community_leiden(
            "modularity", weights="weight", resolution=1.5, node_weights=no_loops
        ).membership
        assert default == explicit
    igraph.set_random_number_generator(random)


def test_modularity_equals_igraphs():
    igraph = pytest.importorskip("igraph")  # the reference, not a dependency
    graph, truth = _planted([40, 60], 0.3, 0.05, seed=6, weighted=True)
    graph = (graph + sp.diags(np.linspace(0, 2, graph.shape[0]))).tocsr()
    upper = sp.triu(graph).tocoo()
    g = igraph.Graph(
        n=graph.shape[0], edges=list(zip(upper.row.tolist(), upper.col.tolist(), strict=True))
    )
    g.es["weight"] = upper.data.tolist()
    labels = leiden_membership(graph, resolution=0.7, seed=1)
    for membership in (truth, labels):
        expected = g.modularity(membership.tolist(), weights="weight", resolution=0.7)
        assert clustering.modularity(graph, membership, resolution=0.7) == pytest.approx(expected)


def test_iterating_until_stable_and_graphs_without_edges():
    graph, truth = _planted([80, 80, 80], 0.2, 0.03, seed=7)
    stable = leiden_membership(graph, resolution=1.0, n_iterations=-1, seed=2)
    np.testing.assert_array_equal(
        stable, leiden_membership(graph, resolution=1.0, n_iterations=-1, seed=2)
    )
    assert adjusted_rand_score(truth, stable) > 0.99
    np.testing.assert_array_equal(
        leiden_membership(sp.csr_matrix((4, 4)), resolution=1.0), np.arange(4)
    )
    assert leiden_membership(sp.csr_matrix((0, 0)), resolution=1.0).shape == (0,)


def test_sccohort_clusters_without_igraph_installed():
    code = textwrap.dedent(
        """
        import sys
        from importlib.abc import MetaPathFinder

        class Block(MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("igraph", "leidenalg"):
                    raise ModuleNotFoundError(f"No module named {name!r}")

        sys.meta_path.insert(0, Block())
        import numpy as np
        import scipy.sparse as sp
        import sccohort
        from sccohort.tl import leiden_membership
        from sccohort.tl.lineage_graph import _graph_from_knn, _stable_resolution
        idx = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
        g = _graph_from_knn(idx)
        print(leiden_membership(g, resolution=1.0).tolist())
        print(_stable_resolution(g, (0.5, 1.0), 2, 0.5, seed=0)[0])
        assert not any(m.split(".")[0] in ("igraph", "leidenalg") for m in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split("\n")[0] == "[0, 0, 0, 1, 1, 1]"
