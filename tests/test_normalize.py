"""RNA log-normalisation / Pearson residuals, protein CLR and dsb (sccohort.pp.normalize)."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scipy.stats as st

from sccohort.errors import InputError
from sccohort.pp.dsb import dsb, isotype_controls
from sccohort.pp.gmm import gmm2_background_mean
from sccohort.pp.normalize import clr, normalize_rna

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "dsb_pbmc_adt"


def _adata(counts, names=None, sparse=True) -> ad.AnnData:
    counts = np.asarray(counts)
    names = names or [f"p{j}" for j in range(counts.shape[1])]
    a = ad.AnnData(
        obs=pd.DataFrame(index=[f"c{i}" for i in range(counts.shape[0])]),
        var=pd.DataFrame(index=names),
    )
    a.layers["counts"] = sp.csr_matrix(counts) if sparse else counts.copy()
    return a


def _seurat_clr(x: np.ndarray) -> np.ndarray:
    """Seurat's CLR, literally: log1p(x / exp(sum(log1p(x[x > 0])) / length(x)))."""
    return np.log1p(x / np.exp(np.sum(np.log1p(x[x > 0])) / len(x)))


# ------------------------------------------------------------------------------------- CLR


@pytest.fixture
def protein_counts() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = rng.negative_binomial(2, 0.05, size=(60, 12)).astype(float)
    x[:, 3] = 0  # antibody never detected
    x[7] = 0  # cell without protein counts
    return x


def test_clr_cell_margin_is_seurat_margin_2(protein_counts):
    a = _adata(protein_counts)
    with pytest.warns(UserWarning) as rec:
        clr(a)
    messages = " ".join(str(w.message) for w in rec)
    assert "p3" in messages and "1 of 60 cells" in messages
    expected = np.vstack([_seurat_clr(row) for row in protein_counts])
    assert isinstance(a.X, np.ndarray) and a.X.dtype == np.float32
    np.testing.assert_allclose(a.X, expected, rtol=1e-6, atol=1e-6)
    assert np.all(a.X[7] == 0) and np.all(a.X[:, 3] == 0)
    assert a.obs["zero_protein_counts"].sum() == 1 and a.obs["zero_protein_counts"].iloc[7]
    assert list(a.var_names[a.var["zero_in_all_cells"]]) == ["p3"]
    np.testing.assert_array_equal(a.layers["counts"].toarray(), protein_counts)


def test_clr_feature_margin_is_seurat_margin_1(protein_counts):
    a = _adata(protein_counts, sparse=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clr(a, margin="feature", key_added="clr")
    expected = np.column_stack([_seurat_clr(col) for col in protein_counts.T])
    np.testing.assert_allclose(a.layers["clr"], expected, rtol=1e-6, atol=1e-6)
    assert a.X is None  # written into the layer only
    assert not np.allclose(expected, np.vstack([_seurat_clr(r) for r in protein_counts]))


def test_clr_rejects_unknown_margin_and_missing_layer(protein_counts):
    a = _adata(protein_counts)
    with pytest.raises(InputError, match="margin"):
        clr(a, margin=2)
    del a.layers["counts"]
    with pytest.raises(InputError, match=r"layers\['counts'\]"):
        clr(a)


# ------------------------------------------------------------------------------------- RNA


@pytest.fixture
def rna() -> ad.AnnData:
    rng = np.random.default_rng(2)
    means = rng.gamma(0.3, 2.0, size=400)
    counts = rng.poisson(means * rng.gamma(5, 0.2, size=(150, 1)))
    counts[5] = 0  # empty cell
    counts[:, 10] = 0  # undetected gene
    return _adata(counts)


def test_log1p_normalisation_sums_and_keeps_counts(rna):
    before = rna.layers["counts"].copy()
    normalize_rna(rna, target_sum=1e4)
    x = rna.X
    assert sp.issparse(x) and x.format == "csr" and x.dtype == np.float32
    sums = np.asarray(np.expm1(x.astype(np.float64)).sum(axis=1)).ravel()
    nonempty = np.arange(rna.n_obs) != 5
    np.testing.assert_allclose(sums[nonempty], 1e4, rtol=1e-5)
    assert sums[5] == 0
    # counts untouched; .X has its own values but shares the sparsity pattern's arrays
    assert (rna.layers["counts"] != before).nnz == 0
    assert rna.layers["counts"].dtype == before.dtype
    assert not np.shares_memory(x.data, rna.layers["counts"].data)
    assert np.shares_memory(x.indices, rna.layers["counts"].indices)
    np.testing.assert_array_equal(x.indptr, before.indptr)
    # value check on one entry
    row = before[0].toarray().ravel()
    np.testing.assert_allclose(x[0].toarray().ravel(), np.log1p(row / row.sum() * 1e4), rtol=1e-6)


def test_pearson_residuals_match_scanpy(rna):
    import scanpy as sc

    ref = ad.AnnData(rna.layers["counts"].toarray().astype(np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.experimental.pp.normalize_pearson_residuals(ref, theta=100)
    normalize_rna(rna, method="pearson_residuals")
    assert isinstance(rna.X, np.ndarray) and rna.X.dtype == np.float32
    assert np.isfinite(rna.X).all()
    ok = np.isfinite(ref.X)  # scanpy gives NaN for the empty cell and the undetected gene
    assert not ok[5].any() and not ok[:, 10].any()
    np.testing.assert_allclose(rna.X[ok], ref.X[ok], rtol=1e-5, atol=1e-5)
    assert np.all(rna.X[5] == 0) and np.all(rna.X[:, 10] == 0)
    assert np.abs(rna.X).max() <= np.sqrt(rna.n_obs) + 1e-4


def test_pearson_residuals_refuse_too_many_values(rna):
    with pytest.raises(InputError, match="highly_variable") as err:
        normalize_rna(rna, method="pearson_residuals", max_dense_values=10_000)
    assert "150 cells x 400 genes" in str(err.value)
    with pytest.raises(InputError, match="unknown RNA normalisation"):
        normalize_rna(rna, method="scran")


# -------------------------------------------------------------------------- GMM and isotypes


def _rows_unequal_variances() -> np.ndarray:
    """12 rows: a background N(0, 0.7) and 10-40 % positives of random mean and sd 1.5."""
    rng = np.random.default_rng(3)
    rows = []
    for _ in range(12):
        n_pos = int(rng.integers(10, 40))
        rows.append(
            np.concatenate(
                [rng.normal(0, 0.7, 100 - n_pos), rng.normal(rng.uniform(3, 8), 1.5, n_pos)]
            )
        )
    return np.vstack(rows)


def _rows_equal_variances() -> np.ndarray:
    """6 rows: N(-1, 1) and N(4, 1) with the positive share growing row by row."""
    rng = np.random.default_rng(9)
    return np.vstack(
        [
            np.concatenate([rng.normal(-1, 1, 100 - 5 * i), rng.normal(4, 1, 30 + 5 * i)])
            for i in range(6)
        ]
    )


@pytest.mark.parametrize(
    ("model", "covariance_type", "make_rows"),
    [("V", "full", _rows_unequal_variances), ("E", "tied", _rows_equal_variances)],
)
def test_vectorised_mixture_matches_sklearn_per_row(model, covariance_type, make_rows):
    from sklearn.mixture import GaussianMixture

    x = make_rows()
    ours = gmm2_background_mean(x, models=(model,), tol=1e-12, max_iter=5000)
    for i, row in enumerate(x):
        split = row > np.median(row)
        gm = GaussianMixture(
            2,
            covariance_type=covariance_type,
            tol=1e-12,
            max_iter=5000,
            reg_covar=1e-12,
            means_init=[[row[~split].mean()], [row[split].mean()]],
        ).fit(row[:, None])
        assert ours[i] == pytest.approx(gm.means_.min(), abs=1e-4)


def test_mixture_degenerate_rows_stay_finite():
    # constant row -> its value; two point masses -> the lower
    degenerate = np.array([[5.0] * 10, [1.0] * 7 + [9.0] * 3])
    np.testing.assert_allclose(gmm2_background_mean(degenerate), [5.0, 1.0], atol=1e-6)


def test_mixture_rows_are_fitted_independently_of_each_other():
    # Rows converge after different numbers of EM iterations and leave the working set at
    # different times; each row's fit must not depend on which other rows it is fitted with.
    rng = np.random.default_rng(8)
    rows = []
    for _ in range(60):
        n_pos = int(rng.integers(5, 60))
        rows.append(
            np.concatenate(
                [rng.normal(0, rng.uniform(0.3, 1.5), 120 - n_pos), rng.normal(5, 1.0, n_pos)]
            )
        )
    x = np.vstack(rows)
    together = gmm2_background_mean(x)
    alone = np.array([gmm2_background_mean(row[None, :])[0] for row in x])
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(gmm2_background_mean(x[::-1]), together[::-1])
    assert np.median(np.abs(together)) < 0.3  # the background component sits near 0


def test_isotype_detection_by_name_and_column():
    names = ["CD3", "IgM_PROT", "IgA", "MouseIgG1kappaisotype", "Mouse IgM", "IgG2a", "Rat Iso"]
    a = _adata(np.ones((3, len(names))), names=names)
    assert isotype_controls(a) == ["MouseIgG1kappaisotype", "Mouse IgM", "IgG2a"]
    a.var["isotype"] = [False, False, False, False, False, False, True]
    assert isotype_controls(a) == ["Rat Iso"]


# ---------------------------------------------------------------------------------- dsb


def _synthetic_dsb(seed: int = 0):
    """Cells = ambient background x planted per-cell technical factor (+ true positives)."""
    rng = np.random.default_rng(seed)
    n_cells, n_prot, n_empty = 800, 40, 2000
    ambient = rng.uniform(5, 40, n_prot)
    tech = rng.lognormal(0.0, 0.5, n_cells)  # planted cell-to-cell technical noise
    positive = np.zeros((n_cells, n_prot), dtype=bool)
    positive[:, :10] = rng.random((n_cells, 10)) < 0.3
    signal = rng.uniform(200, 600, n_prot)
    cells = rng.poisson(ambient * tech[:, None] + positive * signal * tech[:, None])
    empty = rng.poisson(ambient * rng.lognormal(0.0, 0.2, (n_empty, 1)))
    names = [f"P{j}" for j in range(n_prot - 3)] + ["MouseIgG1", "MouseIgG2a", "RatIgG2b"]
    return _adata(cells, names), _adata(empty, names), tech, positive


def test_dsb_recovers_planted_truth():
    a, empty, tech, positive = _synthetic_dsb()
    ambient_only = a.copy()
    dsb(ambient_only, empty, denoise_counts=False)
    dsb(a, empty)
    x = a.X
    assert x.dtype == np.float32 and np.isfinite(x).all()
    assert a.uns["dsb"]["isotypes"] == ["MouseIgG1", "MouseIgG2a", "RatIgG2b"]
    neg, pos = x[~positive], x[positive]
    assert abs(np.median(neg)) < 0.5
    assert np.median(pos) > 3.5 + np.quantile(neg, 0.99)
    # the technical component follows the planted noise ...
    assert st.spearmanr(a.obs["dsb_technical_component"], np.log(tech))[0] > 0.8
    # ... and is removed: negatives no longer track it
    neg_mask = ~positive

    def noise_corr(values):
        per_cell = np.nanmean(np.where(neg_mask, values, np.nan), axis=1)
        return st.pearsonr(per_cell, np.log(tech))[0]

    before, after = noise_corr(ambient_only.X), noise_corr(x)
    print(f"corr(negatives, planted noise): ambient only {before:.3f}, dsb {after:.3f}")
    assert before > 0.8 and abs(after) < 0.2, (before, after)


def test_dsb_steps_equal_hand_formula():
    a, empty, _, _ = _synthetic_dsb(1)
    c = a.layers["counts"].toarray().astype(float)
    e = np.log(empty.layers["counts"].toarray() + 10.0)
    step1 = (np.log(c + 10.0) - e.mean(axis=0)) / e.std(axis=0, ddof=1)
    only1 = a.copy()
    dsb(only1, empty, denoise_counts=False)
    np.testing.assert_allclose(only1.X, step1, rtol=1e-5, atol=1e-5)
    assert only1.obs["dsb_technical_component"].isna().all()

    dsb(a, empty)
    t = a.obs["dsb_technical_component"].to_numpy()
    mu1 = a.obs["dsb_background_mean"].to_numpy()
    # technical component = PC1 of standardised [isotypes, mu1]
    noise = np.column_stack([step1[:, -3:], mu1])
    scaled = (noise - noise.mean(0)) / noise.std(0, ddof=1)
    pc1 = np.linalg.svd(scaled, full_matrices=False)[2][0]
    np.testing.assert_allclose(np.abs(t), np.abs(scaled @ pc1), rtol=1e-8)
    # output = residual of z ~ 1 + t plus the intercept (t has mean 0: the protein's mean kept)
    design = np.column_stack([np.ones_like(t), t])
    coef, *_ = np.linalg.lstsq(design, step1, rcond=None)
    np.testing.assert_allclose(a.X, step1 - np.outer(t, coef[1]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(a.X.mean(axis=0), step1.mean(axis=0), atol=1e-4)

    # background-mean-only variant regresses mu1 itself (limma 3.54: residual + intercept)
    b = a.copy()
    dsb(b, empty, use_isotype_control=False)
    np.testing.assert_allclose(b.obs["dsb_technical_component"], mu1, rtol=1e-6)
    design = np.column_stack([np.ones_like(mu1), mu1])
    coef, *_ = np.linalg.lstsq(design, step1, rcond=None)
    np.testing.assert_allclose(b.X, step1 - np.outer(mu1, coef[1]), rtol=1e-5, atol=1e-5)


def test_dsb_edge_cases_are_defined():
    a, empty, _, _ = _synthetic_dsb(2)
    counts = a.layers["counts"].toarray()
    counts[:, 5] = 0  # antibody never seen in cells
    counts[3] = 0  # cell without protein counts
    a.layers["counts"] = sp.csr_matrix(counts)
    # empty droplets in another antibody order
    empty = empty[:, empty.var_names[::-1]].copy()
    with pytest.warns(UserWarning) as rec:
        dsb(a, empty)
    messages = " ".join(str(w.message) for w in rec)
    assert "set to 0: P5" in messages and "1 of 800 cells" in messages
    assert np.isfinite(a.X).all()
    assert np.all(a.X[:, 5] == 0) and not a.var["dsb_normalised"]["P5"]
    assert a.obs["zero_protein_counts"].iloc[3] and a.obs["zero_protein_counts"].sum() == 1
    ordered = a.copy()
    ordered_empty = empty[:, a.var_names].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dsb(ordered, ordered_empty)
    np.testing.assert_array_equal(ordered.X, a.X)


def test_dsb_errors():
    a, empty, _, _ = _synthetic_dsb(3)
    with pytest.raises(InputError, match="none were given"):
        dsb(a, empty[:0].copy())
    with pytest.raises(InputError, match=r"only 50 empty droplets.*clr\(\)"):
        dsb(a, empty[:50].copy())
    with pytest.raises(InputError, match="missing from the empty droplets: P1, P2"):
        dsb(a, empty[:, [n for n in empty.var_names if n not in ("P1", "P2")]].copy())
    no_iso = a[:, :-3].copy()
    with pytest.raises(InputError, match="none was found"):
        dsb(no_iso, empty[:, :-3].copy())
    with pytest.raises(InputError, match="not in the protein panel: IgG_x"):
        dsb(a, empty, isotypes=["MouseIgG1", "IgG_x"])
    with pytest.raises(InputError, match="pseudocount"):
        dsb(a, empty, pseudocount=0)
    # without denoising, isotypes are not needed
    dsb(no_iso, empty[:, :-3].copy(), denoise_counts=False)
    assert np.isfinite(no_iso.X).all()


@pytest.mark.skipif(not DATA.exists(), reason=f"real dsb data not found at {DATA}")
def test_dsb_on_real_pbmc_reproduces_paper_properties():
    cells = ad.read_h5ad(DATA / "cells_citeseq_mtx.h5ad")
    empty = ad.read_h5ad(DATA / "empty_drop_citeseq_mtx.h5ad")
    cells.layers["counts"] = cells.X.copy()
    dsb(cells, empty, empty_layer=None)
    x = np.asarray(cells.X)
    assert np.isfinite(x).all()
    assert len(cells.uns["dsb"]["isotypes"]) == 4
    assert "IgM_PROT" not in cells.uns["dsb"]["isotypes"]

    def col(name):
        return x[:, cells.var_names.get_loc(name)]

    cd3, cd19, cd14 = col("CD3_PROT"), col("CD19_PROT"), col("CD14_PROT")
    t_cells = (cd3 > 3.5) & (cd19 < 3.5) & (cd14 < 3.5)
    b_cells = (cd19 > 3.5) & (cd3 < 3.5) & (cd14 < 3.5)
    assert 0.3 < t_cells.mean() < 0.8 and 0.05 < b_cells.mean() < 0.3
    assert np.median(cd3[t_cells]) > 3.5 and abs(np.median(cd3[b_cells])) < 1
    assert np.median(cd19[b_cells]) > 3.5 and abs(np.median(cd19[t_cells])) < 1
    for name in cells.uns["dsb"]["isotypes"]:
        assert abs(np.median(col(name))) < 0.5
    lib = np.log10(np.asarray(cells.layers["counts"].sum(axis=1)).ravel())
    assert st.spearmanr(cells.obs["dsb_technical_component"], lib)[0] > 0.3


def test_cohort_dsb_uses_the_task_values_only_on_the_same_panel() -> None:
    from sccohort.pp import dsb_by_sample
    from sccohort.pp.sample import _dsb_values

    rng = np.random.default_rng(7)
    names = ["CD3", "CD4", "CD14", "CD19", "CD8", "Mouse IgG1"]

    def counts(n: int, base: float) -> sp.csr_matrix:
        return sp.csr_matrix(
            rng.poisson(base * rng.gamma(2.0, 1.0, (n, len(names)))).astype(np.int32)
        )

    cells, empties, sample_of = [], {}, []
    for sample in ("A", "B"):
        obs = pd.DataFrame(index=[f"{sample}:{i}" for i in range(80)])
        part = ad.AnnData(obs=obs, var=pd.DataFrame(index=names))
        part.layers["counts"] = counts(80, 20.0)
        empty = ad.AnnData(obs=pd.DataFrame(index=[f"e{i}" for i in range(300)]), var=part.var)
        empty.layers["counts"] = counts(300, 2.0)
        cells.append(part)
        empties[sample] = empty
        sample_of += [sample] * 80
    prot = ad.concat(cells)
    prot.obs["sample_id"] = sample_of
    expected = prot.copy()
    dsb_by_sample(expected, empties)
    own_a = _dsb_values(cells[0], empties["A"])
    np.testing.assert_array_equal(own_a.to_numpy(), expected.X[:80])
    # B's task values on another column order are not the cohort's panel: recomputed
    stale = pd.DataFrame(0.0, index=cells[1].obs_names, columns=names[::-1], dtype=np.float32)
    got = prot.copy()
    dsb_by_sample(got, empties, precomputed={"A": own_a, "B": stale})
    np.testing.assert_array_equal(got.X, expected.X)
    # the task values are what the cohort takes when the panel matches
    marked = own_a + 1.0
    dsb_by_sample(got, empties, precomputed={"A": marked})
    np.testing.assert_array_equal(got.X[:80], marked.to_numpy())
