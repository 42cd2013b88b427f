"""Cohort embedding: HVGs, memory-bounded PCA, Harmony, Leiden, UMAP and integration metrics."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import harmonypy
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from sccohort import tl
from sccohort.errors import InputError
from sccohort.tl import clustering, metrics

# --------------------------------------------------------------------------------------------
# synthetic data


def _log_counts(
    n_cells: int, n_genes: int, n_types: int, seed: int
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Log1p Poisson counts with per-type gene means; a few rare, spiky genes force clipping."""
    rng = np.random.default_rng(seed)
    base = rng.gamma(0.6, 1.0, n_genes)
    types = rng.integers(0, n_types, n_cells)
    fold = np.exp(rng.normal(0, 0.8, (n_types, n_genes)))
    lam = base * fold[types] * rng.uniform(0.5, 2.0, n_cells)[:, None]
    counts = rng.poisson(lam).astype(np.float32)
    counts[:, :5] = 0
    spikes = rng.choice(n_cells, 3, replace=False)
    counts[spikes, :5] = 40  # 3 of n_cells cells: scaled values far above 10
    return sp.csr_matrix(np.log1p(counts)), types


def _blobs(
    n_per: int, n_types: int, n_batches: int, shift: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell types as Gaussian blobs in 10 dims; each batch adds its own constant shift."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (n_types, 10))
    offsets = rng.normal(0, shift, (n_batches, 10))
    types = np.repeat(np.arange(n_types), n_per * n_batches)
    batches = np.tile(np.repeat(np.arange(n_batches), n_per), n_types)
    emb = centres[types] + offsets[batches] + rng.normal(0, 1, (types.size, 10))
    return emb, types.astype(str), np.array([f"b{b}" for b in batches])


# --------------------------------------------------------------------------------------------
# HVG


def test_hvg_picks_planted_variable_genes_and_matches_scanpy() -> None:
    rng = np.random.default_rng(1)
    n, g = 1000, 2000
    types = rng.integers(0, 3, n)
    lam = np.tile(rng.gamma(1.0, 2.0, g), (3, 1))  # background: Poisson noise only
    planted = np.arange(20, 35)
    fold = rng.choice([0.05, 2.0], size=(3, planted.size))  # type-specific genes
    fold[0], fold[1] = 0.05, 2.0  # differ between types 0 and 1 at least
    lam[:, planted] = np.geomspace(2, 6, planted.size) * fold
    counts = rng.poisson(lam[types])
    names = [f"G{i}" for i in range(g)]
    names[20], names[21], names[22] = "MT-ND1", "RPL13", "HBB"  # planted but QC genes
    a = ad.AnnData(sp.csr_matrix(np.log1p(counts).astype(np.float32)))
    a.var_names = names
    a.obs["sample_id"] = rng.choice(["s1", "s2", "s3"], n)

    tl.highly_variable_genes(a, n_top_genes=30)
    chosen = set(np.flatnonzero(a.var["highly_variable"]))
    assert set(planted[3:]) <= chosen
    assert not chosen & {20, 21, 22}
    assert a.var.loc[["MT-ND1", "RPL13", "HBB"], "hvg_excluded"].all()
    assert a.var["hvg_excluded"].sum() == 3

    tl.highly_variable_genes(a, n_top_genes=50, exclude=())
    ref = a.copy()
    sc.pp.highly_variable_genes(ref, n_top_genes=50, flavor="seurat", batch_key="sample_id")
    assert (a.var["highly_variable"] == ref.var["highly_variable"]).all()
    assert set(planted) <= set(np.flatnonzero(a.var["highly_variable"]))


def test_hvg_equals_scanpy_bit_for_bit_with_uneven_batches() -> None:
    """The one-pass batch statistics reproduce scanpy's per-batch copies exactly."""
    rng = np.random.default_rng(7)
    n, g = 700, 400
    lam = rng.gamma(0.7, 1.5, g) * np.exp(rng.normal(0, 1, (3, g)))[rng.integers(0, 3, n)]
    counts = rng.poisson(lam).astype(np.float32)
    batch = rng.choice(["b0", "b1", "b2", "b3"], n, p=[0.5, 0.3, 0.15, 0.05])
    counts[batch == "b3", :40] = 0  # genes a batch does not express are dropped in that batch
    a = ad.AnnData(sp.csr_matrix(np.log1p(counts)))
    a.var_names = [f"G{i}" for i in rng.permutation(g)]  # name order != column order
    a.obs["sample_id"] = batch
    for key in ("sample_id", None):
        ours = a.copy()
        tl.highly_variable_genes(ours, n_top_genes=60, batch_key=key, exclude=())
        ref = sc.pp.highly_variable_genes(
            a.copy(), n_top_genes=60, flavor="seurat", batch_key=key, inplace=False
        )
        assert ours.var["highly_variable"].sum() == 60
        np.testing.assert_array_equal(ours.var["highly_variable"], ref["highly_variable"])
        np.testing.assert_array_equal(ours.var["means"], ref["means"])
        np.testing.assert_array_equal(ours.var["dispersions_norm"], ref["dispersions_norm"])
        if key is not None:
            np.testing.assert_array_equal(
                ours.var["highly_variable_nbatches"], ref["highly_variable_nbatches"]
            )
    dense = a.copy()  # dense .X goes through scanpy itself: the same selection
    dense.X = dense.X.toarray()
    tl.highly_variable_genes(dense, n_top_genes=60, exclude=())
    tl.highly_variable_genes(a, n_top_genes=60, exclude=())
    np.testing.assert_array_equal(dense.var["highly_variable"], a.var["highly_variable"])


def test_hvg_bad_input() -> None:
    a = ad.AnnData(sp.csr_matrix(np.ones((10, 5), dtype=np.float32)))
    with pytest.raises(InputError, match="batch column 'sample_id'"):
        tl.highly_variable_genes(a, n_top_genes=2)
    with pytest.raises(InputError, match="unknown gene group"):
        tl.highly_variable_genes(a, n_top_genes=2, batch_key=None, exclude=("mitochondria",))


# --------------------------------------------------------------------------------------------
# PCA


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_pca_rna_equals_dense_scale_and_pca(dtype: str) -> None:
    x, _ = _log_counts(900, 120, 4, seed=2)
    a = ad.AnnData(x)
    a.var["highly_variable"] = np.arange(120) % 3 != 0  # 80 genes incl. the spiky ones
    a.var.loc[a.var_names[:5], "highly_variable"] = True
    tl.pca_rna(a, n_comps=15, block_cells=128, dtype=dtype)

    dense = a[:, a.var["highly_variable"]].to_memory()
    dense.X = dense.X.toarray().astype(np.float64)
    sc.pp.scale(dense, max_value=10)
    assert (dense.X == 10).sum() >= 15  # clipping is exercised
    from sklearn.decomposition import PCA

    pca = PCA(n_components=15, svd_solver="full").fit(dense.X)
    ref = pca.transform(dense.X)
    got = a.obsm["X_pca"]
    signs = np.sign((got * ref).sum(axis=0))
    assert np.allclose(got, ref * signs, atol=1e-3 * np.abs(ref).max())
    assert np.allclose(a.uns["pca"]["variance_ratio"], pca.explained_variance_ratio_, rtol=1e-4)
    loadings = a.varm["PCs"][a.var["highly_variable"].to_numpy()]
    assert np.allclose(np.abs(loadings.T @ pca.components_.T), np.eye(15), atol=1e-3)
    assert (a.varm["PCs"][~a.var["highly_variable"].to_numpy()] == 0).all()
    assert sp.issparse(a.X)  # .X untouched


def test_scaled_pca_reads_csr_columns_in_place_like_the_dense_path() -> None:
    x, _ = _log_counts(700, 90, 3, seed=6)
    cols = np.flatnonzero(np.arange(90) % 4 != 1)
    sparse_res = tl.scaled_pca(x, 12, columns=cols, block_cells=100)
    dense_res = tl.scaled_pca(x.toarray(), 12, columns=cols, block_cells=100)
    for got, ref in zip(sparse_res, dense_res, strict=True):  # dense sums add in another order
        np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-9)
    subset = tl.scaled_pca(x[:, cols], 12, block_cells=100)
    np.testing.assert_array_equal(subset[0], sparse_res[0])


def test_pca_prot_excludes_isotypes_and_defaults_comps() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (300, 12)).astype(np.float32)
    x[:, 3] *= 50  # huge variance but an isotype control
    p = ad.AnnData(x)
    p.var_names = [f"CD{i}" for i in range(12)]
    p.var["isotype"] = False
    p.var.loc["CD3", "isotype"] = True
    tl.pca_prot(p)
    assert p.obsm["X_pca_prot"].shape == (300, 10)  # min(11 - 1, 30)
    assert (p.varm["X_pca_prot_loadings"][3] == 0).all()
    with pytest.raises(InputError, match="n_comps"):
        tl.pca_prot(p, n_comps=12)


# --------------------------------------------------------------------------------------------
# metrics


def test_lisi_and_kbet_sanity() -> None:
    rng = np.random.default_rng(4)
    emb = rng.normal(0, 1, (1200, 5))
    mixed = rng.choice(["a", "b", "c"], 1200)
    # random labels among ~30 effective neighbours: close to (not exactly) 3
    assert 2.5 < metrics.ilisi(emb, mixed) < 3.0
    # the perplexity-weighted LISI of the Harmony paper, as harmonypy computes it
    ref = harmonypy.compute_lisi(emb, pd.DataFrame({"b": mixed}), ["b"])[:, 0]
    assert np.allclose(metrics.lisi(emb, mixed), ref, atol=1e-4)
    assert metrics.kbet_acceptance(emb, mixed) > 0.85
    apart = emb + np.repeat(np.arange(3), 400)[:, None] * 50.0
    labels = np.repeat(["a", "b", "c"], 400)
    assert metrics.ilisi(apart, labels) == pytest.approx(1.0, abs=0.01)
    assert metrics.kbet_acceptance(apart, labels) < 0.01
    assert metrics.silhouette(apart, labels) > 0.9
    assert metrics.ari(labels, labels) == 1.0
    assert abs(metrics.ari(mixed, labels)) < 0.02
    with pytest.raises(InputError, match="one label per embedded cell"):
        metrics.lisi(emb, labels[:10])


def test_harmony_mixes_batches_and_keeps_cell_types() -> None:
    emb, types, batches = _blobs(150, 5, 3, shift=2.0, seed=5)
    a = ad.AnnData(obs=pd.DataFrame({"sample_id": batches}, index=map(str, range(len(types)))))
    a.obsm["X_pca"] = emb.astype(np.float32)
    tl.harmony(a, "X_pca", batch_key="sample_id", seed=0)
    before = metrics.ilisi(emb, batches)
    after = metrics.ilisi(a.obsm["X_harmony"], batches)
    assert before < 1.1 and after > 2.2  # random labels give ~2.6 (see above)
    assert metrics.silhouette(a.obsm["X_harmony"], types) > 0.5
    sc.pp.neighbors(a, use_rep="X_harmony", n_neighbors=15, method="gauss")
    tl.leiden(a, resolution=0.3, seed=0)
    assert metrics.ari(a.obs["leiden"].to_numpy(), types) > 0.95
    again = a.copy()
    tl.harmony(again, "X_pca", batch_key="sample_id", seed=0)
    assert np.array_equal(again.obsm["X_harmony"], a.obsm["X_harmony"])  # deterministic


def test_leiden_agrees_with_scanpy_igraph_leiden_on_its_graph() -> None:
    emb, types, _ = _blobs(120, 6, 2, shift=0.5, seed=8)
    a = ad.AnnData(obs=pd.DataFrame(index=map(str, range(len(types)))))
    a.obsm["X"] = emb
    sc.pp.neighbors(a, use_rep="X", n_neighbors=15, random_state=0)
    knn = a.obsp["connectivities"]
    # an SNN-like graph with loops on the diagonal, as the WNN "wsnn" graph
    snn = (knn @ knn.T).tocsr()
    snn.data = snn.data / snn.data.max()
    a.obsp["snn"] = snn
    a.uns["snn"] = {"connectivities_key": "snn", "distances_key": "distances"}
    found = {}
    for key, res in (("neighbors", 0.5), ("snn", 1.0)):
        adj = a.obsp[a.uns[key]["connectivities_key"]]
        graph = clustering._undirected(adj)
        assert (graph != graph.T).nnz == 0 and graph.nnz == adj.nnz
        # the node strengths of scanpy's graph, which has every pair twice (a loop counts 2x)
        np.testing.assert_allclose(
            np.asarray(graph.sum(axis=1)).ravel() + graph.diagonal(),
            2 * np.asarray(adj.astype(float).sum(axis=1)).ravel(),
        )
        tl.leiden(a, neighbors_key=key, resolution=res, seed=3)
        found[key] = (graph, res, a.obs["leiden"].to_numpy())
        assert metrics.ari(found[key][2], types) > 0.9
        sizes = a.obs["leiden"].value_counts(sort=False).to_numpy()
        assert (np.diff(sizes) <= 0).all()  # "0", "1", ... by size
    assert a.uns["leiden"]["params"] == {"resolution": 1.0, "random_state": 3, "n_iterations": 2}
    pytest.importorskip("igraph")  # the reference, not a dependency
    for key, (graph, res, labels) in found.items():
        ref = a.copy()
        sc.tl.leiden(
            ref, neighbors_key=key, resolution=res, flavor="igraph", n_iterations=2,
            directed=False, random_state=3,
        )  # fmt: skip
        expected = ref.obs["leiden"].to_numpy()
        assert metrics.ari(labels, expected) > 0.95
        q_found = clustering.modularity(graph, labels, resolution=res)
        assert q_found >= 0.99 * clustering.modularity(graph, expected, resolution=res)


def test_umap_subsample_places_all_cells_near_their_type(monkeypatch: pytest.MonkeyPatch) -> None:
    emb, types, _ = _blobs(200, 4, 1, shift=0.0, seed=6)
    a = ad.AnnData(obs=pd.DataFrame({"t": types}, index=map(str, range(len(types)))))
    a.obsm["X_pca"] = emb.astype(np.float32)
    sc.pp.neighbors(a, use_rep="X_pca", n_neighbors=15, method="gauss")
    laid_out: list[int] = []

    def fake_umap(small: ad.AnnData, **kwargs: object) -> None:
        # the layout of the subsample: its first two embedding dims (UMAP itself is scanpy's)
        laid_out.append(small.n_obs)
        assert small.obsp["connectivities"].shape == (300, 300)
        small.obsm["X_umap"] = small.obsm["X_pca"][:, :2]

    monkeypatch.setattr(sc.tl, "umap", fake_umap)
    tl.umap(a, max_cells=300, seed=0)
    xy = a.obsm["X_umap"]
    assert laid_out == [300] and np.isfinite(xy).all()
    assert a.uns["umap"]["n_laid_out"] == 300 and a.uns["umap"]["n_placed"] == 500
    centres = {t: emb[types == t, :2].mean(axis=0) for t in np.unique(types)}
    nearest = np.array(
        [min(centres, key=lambda t: np.linalg.norm(p - centres[t])) for p in xy], dtype=object
    )
    assert (nearest == types).mean() > 0.99  # placed cells land with their own type


def test_umap_from_a_pca_start_keeps_types_apart() -> None:
    emb, types, _ = _blobs(150, 4, 1, shift=0.0, seed=7)
    a = ad.AnnData(obs=pd.DataFrame({"t": types}, index=map(str, range(len(types)))))
    a.obsm["X_pca"] = emb.astype(np.float32)
    sc.pp.neighbors(a, use_rep="X_pca", n_neighbors=15)
    tl.umap(a, init="X_pca", seed=0)
    assert a.uns["umap"]["init"] == "X_pca" and "_umap_init" not in a.obsm
    assert metrics.silhouette(a.obsm["X_umap"], types) > 0.5
    with pytest.raises(InputError, match="no embedding 'X_nope'"):
        tl.umap(a, init="X_nope")


# --------------------------------------------------------------------------------------------
# simulated cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[ad.AnnData, ad.AnnData, pd.Series]:
    from sccohort import read_cohort
    from sccohort.pp.normalize import clr, normalize_rna
    from sccohort.simulate import simulate_cohort

    out = simulate_cohort(
        tmp_path_factory.mktemp("sim") / "cohort",
        design="paper",
        cells_per_donor=100,
        seed=3,
        n_empty=50,
        batch_noise=0.3,
    )
    mdata = read_cohort(Path(out) / "samples.csv")
    truth = pd.read_csv(Path(out) / "truth" / "cells.csv.gz", index_col="cell_id")
    truth = truth.loc[mdata.obs_names]
    artefact = truth["doublet"] | truth["low_quality"] | truth["contaminant"].notna()
    cells = ~artefact.to_numpy()
    rna = mdata.mod["rna"][cells].copy()
    prot = mdata.mod["prot"][cells].copy()
    for mod in (rna, prot):
        mod.obs = mdata.obs.loc[mod.obs_names, ["sample_id", "donor_id", "batch"]]
    normalize_rna(rna)
    clr(prot)
    return rna, prot, truth.loc[rna.obs_names, "l2"]


def test_simulated_cohort_harmony_mixes_samples_and_keeps_l2(
    cohort: tuple[ad.AnnData, ad.AnnData, pd.Series],
) -> None:
    rna, prot, l2 = cohort
    tl.highly_variable_genes(rna, n_top_genes=1000, batch_key="sample_id")
    assert not rna.var.loc[rna.var["highly_variable"]].index.str.startswith("MT-").any()
    tl.pca_rna(rna, n_comps=30)
    tl.pca_prot(prot)
    assert prot.obsm["X_pca_prot"].shape[1] == 30
    tl.harmony(rna, "X_pca", key_added="X_harmony")
    tl.harmony(prot, "X_pca_prot", key_added="X_harmony_prot")

    batch = rna.obs["batch"].to_numpy()
    for before, after in (("X_pca", "X_harmony"), ("X_pca_prot", "X_harmony_prot")):
        emb = rna.obsm if before == "X_pca" else prot.obsm
        lisi_before = metrics.ilisi(emb[before], batch)
        lisi_after = metrics.ilisi(emb[after], batch)
        assert lisi_after > lisi_before + 0.2, (before, lisi_before, lisi_after)

    both = np.hstack([rna.obsm["X_harmony"], prot.obsm["X_harmony_prot"]])
    rna.obsm["X_both"] = both
    # "gauss" connectivities: the same kNN graph without umap's numba compilation (~30 s)
    sc.pp.neighbors(rna, use_rep="X_both", n_neighbors=15, key_added="both", method="gauss")
    tl.leiden(rna, neighbors_key="both", resolution=1.0, seed=0)
    assert metrics.ari(rna.obs["leiden"].to_numpy(), l2.to_numpy()) >= 0.8
    assert metrics.silhouette(rna.obsm["X_harmony"], l2.to_numpy()) > 0.1
