"""QC, doublets, platelets and red cells: exact study thresholds, reason order, bad inputs,
and recovery of the simulator's planted artefacts."""

from __future__ import annotations

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import gene_var, protein_var
from sccohort.pp.doublets import call_doublets, otsu_threshold
from sccohort.pp.qc import REASONS, QCParams, QCWarning, qc_sample, run_qc

GENERIC = [f"GENE{i}" for i in range(6000)]
SPECIAL = ["MT-CO1", "MT-ND1", "HBB", "HBA1", "HBA2", "PPBP", "PF4", "RPL3"]
GENES = SPECIAL + GENERIC
COL = {g: i for i, g in enumerate(GENES)}
ANTIBODIES = ["CD3", "CD14", "CD19", "CD56", "CD4", "Mouse IgG1 isotype", "Empty_ADT"]


def _cell(n_generic: int, extra: dict[str, int] | None = None, start: int = 0) -> dict[int, int]:
    """Counts of one synthetic cell: 1 UMI on ``n_generic`` generic genes plus ``extra``."""
    counts = {len(SPECIAL) + (start + i) % len(GENERIC): 1 for i in range(n_generic)}
    for gene, value in (extra or {}).items():
        counts[COL[gene]] = value
    return counts


def _mdata(
    cells: list[dict[int, int]],
    *,
    sample: str = "S1",
    tissue: str = "blood",
    prot: np.ndarray | None | str = "default",
) -> md.MuData:
    n = len(cells)
    rows = np.repeat(np.arange(n), [len(c) for c in cells])
    cols = np.concatenate([list(c.keys()) for c in cells]).astype(int)
    vals = np.concatenate([list(c.values()) for c in cells]).astype(np.int32)
    rna_x = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(GENES)))
    ids = [f"{sample}:BC{i}" for i in range(n)]
    rna = ad.AnnData(rna_x.astype(np.float32), obs=pd.DataFrame(index=ids), var=gene_var(GENES))
    rna.layers["counts"] = rna_x
    mods = {"rna": rna}
    if isinstance(prot, str):
        prot = np.tile([100, 80, 60, 40, 50, 2, 0], (n, 1))
    if prot is not None:
        p_x = sp.csr_matrix(np.asarray(prot, dtype=np.int32))
        pa = ad.AnnData(p_x.astype(np.float32), obs=pd.DataFrame(index=ids))
        pa.var = protein_var(ANTIBODIES[: p_x.shape[1]])
        pa.layers["counts"] = p_x
        mods["prot"] = pa
    m = md.MuData(mods)
    m.obs["sample_id"] = sample
    m.obs["tissue"] = tissue
    return m


def _qc(m: md.MuData, **params):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QCWarning)
        return qc_sample(m, QCParams(doublet_method="none", **params))


def test_study_thresholds_exact_boundaries():
    cells = [
        _cell(200),  # genes == 200 -> fails (needs > 200)
        _cell(201),  # passes
        _cell(4999),  # passes
        _cell(5000),  # genes == 5000 -> fails (needs < 5000)
        _cell(400, {"MT-CO1": 100}),  # 401 genes, mito exactly 20 % -> fails
        _cell(400, {"MT-CO1": 99}),  # 19.84 % -> passes
        _cell(1000),
    ]
    obs, row = _qc(_mdata(cells), mode="study")
    assert obs["n_genes"].tolist() == [200, 201, 4999, 5000, 401, 401, 1000]
    assert obs["pct_mito"].iloc[4] == pytest.approx(20.0)
    assert obs["qc_pass"].tolist() == [False, True, True, False, False, True, True]
    assert obs["qc_reason"].tolist() == [
        "low_quality",
        "",
        "",
        "large_library",
        "low_quality",
        "",
        "",
    ]
    assert row["mito_max"] == 20 and row["genes_min"] == 200 and row["genes_max"] == 5000
    assert row["removed_low_quality"] == 2 and row["removed_large_library"] == 1
    assert row["cells_in"] == 7 and row["cells_out"] == 4


def test_study_mito_threshold_for_tissue_is_40():
    cells = [
        _cell(300, {"MT-CO1": 200}),  # exactly 40 % -> fails
        _cell(300, {"MT-CO1": 199}),  # 39.9 % -> passes
        _cell(400, {"MT-CO1": 100}),  # 20 % -> passes in tissue
    ]
    obs, row = _qc(_mdata(cells, tissue="kidney"), mode="study")
    assert obs["qc_pass"].tolist() == [False, True, True]
    assert row["mito_max"] == 40 and row["tissue"] == "kidney"


def test_reason_order_first_applicable_wins():
    assert REASONS == (
        "red_cell",
        "platelet",
        "low_quality",
        "large_library",
        "doublet",
        "no_protein",
        "isotype_high",
    )
    base = np.array([100, 80, 60, 40, 50, 2, 0])
    prot = np.tile(base, (26, 1))
    prot[2] = 0  # no protein and low quality -> low_quality
    prot[4] = 0  # no protein only
    prot[5, 5] = 200  # isotype-high only
    cells = [
        _cell(100, {"HBB": 500, "MT-CO1": 300}),  # red cell, mito and few genes too
        _cell(100, {"PPBP": 50, "PF4": 30, "HBB": 10}),  # platelet (HB 5 % < 10 %)
        _cell(150, {"MT-CO1": 10}),  # 151 genes in study mode -> low_quality
        _cell(5200),  # large library
        _cell(1000),  # no protein
        _cell(1000),  # isotype high
    ] + [_cell(1000, start=i) for i in range(20)]  # normal cells: the sample's protein norm
    obs, row = _qc(_mdata(cells, prot=prot), mode="study")
    assert obs["qc_pass"].iloc[6:].all()
    assert obs["qc_reason"].iloc[:6].tolist() == [
        "red_cell",
        "platelet",
        "low_quality",
        "large_library",
        "no_protein",
        "isotype_high",
    ]
    assert obs["pct_hb"].iloc[0] > 10 and obs["pct_platelet"].iloc[1] > 5
    assert not obs["qc_pass"].iloc[:6].any()
    assert all(row[f"removed_{r}"] == (0 if r == "doublet" else 1) for r in REASONS)


def test_adaptive_mode_mad_bounds_and_hard_floors():
    rng = np.random.default_rng(1)
    cells = [
        _cell(int(g), {"MT-CO1": int(m)}, start=i)
        for i, (g, m) in enumerate(
            zip(rng.integers(900, 1100, 200), rng.integers(30, 60, 200), strict=True)
        )
    ]
    cells += [_cell(300, {"MT-CO1": 5})]  # far below the sample's genes -> low_quality
    cells += [_cell(1000, {"MT-CO1": 90})]  # 8.3 % mito: above the MAD cut, below the floor
    cells += [_cell(1000, {"MT-CO1": 400})]  # 28.6 % mito -> low_quality
    obs, row = _qc(_mdata(cells), mode="adaptive")
    assert row["mito_max"] == pytest.approx(10.0)  # MAD cut (~6 %) raised to the 10 % floor
    assert row["genes_min"] > 300
    assert obs["qc_reason"].iloc[-3:].tolist() == ["low_quality", "", "low_quality"]
    assert obs["qc_pass"].iloc[:200].all()


def test_zero_cells_after_qc_warns_and_row_shows_zero():
    cells = [_cell(50) for _ in range(5)]
    with pytest.warns(QCWarning, match="sample 'Bad1'.*no cell passes"):
        obs, row = qc_sample(
            _mdata(cells, sample="Bad1"), QCParams(mode="study", doublet_method="none")
        )
    assert row["cells_out"] == 0 and row["removed_low_quality"] == 5
    assert not obs["qc_pass"].any()


def test_sample_without_protein_skips_protein_qc():
    cells = [_cell(1000), _cell(1200)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", QCWarning)  # RNA only is usual: a note, no warning
        obs, row = qc_sample(
            _mdata(cells, sample="RNAonly", prot=None), QCParams(doublet_method="none")
        )
    assert obs["prot_umis"].isna().all()
    assert "no protein data" in row["notes"]
    assert np.isnan(row["prot_umis_min"])
    assert row["removed_no_protein"] == 0 and row["removed_isotype_high"] == 0


def test_all_zero_protein_columns_are_ignored_and_named():
    cells = [_cell(1000, start=i) for i in range(20)]
    with pytest.warns(QCWarning, match="Empty_ADT"):
        obs, row = qc_sample(_mdata(cells), QCParams(doublet_method="none"))
    # the all-zero antibody does not count in the detected antibodies
    assert (obs["prot_n"] == 5).all()
    assert (obs["prot_umis"] == 330).all()
    assert "1 all-zero antibodies ignored" in row["notes"]


def test_too_few_cells_for_doublets_warns_and_passes():
    cells = [_cell(1000, start=i) for i in range(30)]
    with pytest.warns(QCWarning, match="sample 'Tiny'.*doublet calling skipped"):
        obs, row = qc_sample(_mdata(cells, sample="Tiny"), QCParams(doublet_method="cite"))
    assert obs["doublet_score"].isna().all()
    assert row["removed_doublet"] == 0 and row["doublet_method"] == "none"
    assert "fewer than the 100" in row["notes"]


def test_bad_parameters_raise_input_error():
    m = _mdata([_cell(500)])
    with pytest.raises(InputError, match="key 'mode'"):
        qc_sample(m, QCParams(mode="strict"))
    with pytest.raises(TypeError, match="nmad"):
        qc_sample(m, QCParams(nmad=3))
    with pytest.raises(InputError, match="key 'hb_max_pct'"):
        qc_sample(m, QCParams(hb_max_pct=-1))
    with pytest.raises(InputError, match="key 'nmads'"):
        qc_sample(m, QCParams(nmads=0))
    with pytest.raises(InputError, match="key 'doublet_neighbours'"):
        qc_sample(m, QCParams(doublet_neighbours="fast"))


def test_otsu_threshold_between_modes():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.3, 0.05, 2000), rng.normal(0.95, 0.02, 1000)])
    assert 0.45 < otsu_threshold(values) < 0.9


# ------------------------------------------------------------------ doublet internals
# The fast paths of sccohort.pp.doublets must give exactly what the straightforward numpy /
# scikit-learn computations give (doublet calls are identical for a seed, not just close).


def test_neighbour_share_matches_argpartition_including_ties():
    from sccohort.pp.doublets import _knn_share, _neighbour_share

    rng = np.random.default_rng(4)
    emb = rng.normal(size=(900, 12)).astype(np.float32)
    emb[600:] = emb[rng.integers(0, 600, 300)] * np.float32(1.0)  # simulated rows
    emb[10] = emb[11]  # exact duplicates: tied distances for many queries
    emb[700] = emb[10]
    emb[40:60] = emb[605:612] = emb[40]  # 26 copies: more than k at distance 0
    n_obs, k = 600, 17
    queries = np.concatenate([np.arange(n_obs), n_obs + np.arange(0, 300, 3)])
    ours = _neighbour_share(emb, n_obs, queries, k, chunk=128)
    sq = np.einsum("ij,ij->i", emb, emb)
    expected = np.empty(queries.size)
    for start in range(0, queries.size, 128):
        q = queries[start : start + 128]
        d = sq[None, :] - 2.0 * (emb[q] @ emb.T)
        d[np.arange(q.size), q] = np.inf
        nearest = np.argpartition(d, k - 1, axis=1)[:, :k]
        expected[start : start + q.size] = (nearest >= n_obs).mean(axis=1)
    np.testing.assert_array_equal(ours, expected)
    assert 0 < ours.mean() < 1
    tied = np.zeros(queries.size, bool)
    _knn_share(emb[queries] @ emb.T, sq, queries, n_obs, k, np.empty(queries.size), tied)
    assert tied[40:60].all()  # the copies' k-th distance is tied: argpartition decided


def test_inverted_file_shares_match_exact_search():
    """Probing every list is the exact search; probing a few stays close on clustered data."""
    from sccohort.pp.doublets import _neighbour_share, _neighbour_share_ivf

    rng = np.random.default_rng(8)
    centres = rng.normal(scale=4.0, size=(12, 20))
    emb = (centres[rng.integers(0, 12, 6000)] + rng.normal(size=(6000, 20))).astype(np.float32)
    n_obs, k = 2000, 45
    emb[n_obs:] = (emb[rng.integers(0, n_obs, 4000)] + emb[rng.integers(0, n_obs, 4000)]) / 2
    queries = np.concatenate([np.arange(n_obs), n_obs + np.arange(0, 4000, 4)])
    exact = _neighbour_share(emb, n_obs, queries, k)
    everything = _neighbour_share_ivf(emb, n_obs, queries, k, seed=0, n_probe=10_000)
    np.testing.assert_array_equal(everything, exact)
    approx = _neighbour_share_ivf(emb, n_obs, queries, k, seed=0, n_probe=8)
    assert np.corrcoef(approx, exact)[0, 1] > 0.99
    assert np.quantile(np.abs(approx - exact), 0.99) < 0.1
    np.testing.assert_array_equal(
        approx, _neighbour_share_ivf(emb, n_obs, queries, k, seed=0, n_probe=8)
    )


def test_rna_features_match_dense_reference():
    from sccohort.pp.doublets import _rna_features, highly_variable

    rng = np.random.default_rng(5)
    counts = sp.random(300, 800, density=0.08, random_state=6, dtype=np.float32, format="csr")
    counts.data = np.ceil(counts.data * 20).astype(np.float32)
    i = rng.integers(0, 300, 600)
    j = (i + rng.integers(1, 300, 600)) % 300
    obs, sim = _rna_features(counts, (i, j), 200)
    totals = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)
    size = 1e4 / np.maximum(totals, 1.0)
    norm = sp.diags(size.astype(np.float32)) @ counts
    hvg = highly_variable(norm, 200)
    dense = counts[:, hvg].toarray()
    ref_sim = dense[i] + dense[j]
    ref_sim *= (1e4 / np.maximum(totals[i] + totals[j], 1.0)).astype(np.float32)[:, None]
    dense *= size.astype(np.float32)[:, None]
    np.testing.assert_array_equal(obs, np.log1p(dense))
    np.testing.assert_array_equal(sim, np.log1p(ref_sim))
    # the squared-data shortcut in highly_variable selects what norm.multiply(norm) would
    n = norm.shape[0]
    mean = np.asarray(norm.sum(axis=0)).ravel() / n
    sq = np.asarray(norm.multiply(norm).sum(axis=0)).ravel() / n
    assert sq.shape == mean.shape and np.all(sq >= mean**2 * (1 - 1e-5))
    assert hvg.size == 200 and np.all(np.diff(hvg) > 0)


def test_block_matches_sklearn_pca():
    from sklearn.decomposition import PCA

    from sccohort.pp.doublets import _block

    rng = np.random.default_rng(7)
    for n, p, comps in ((250, 300, 20), (400, 40, 15)):  # transposed and direct randomized SVD
        obs = rng.gamma(1.0, 1.0, (n, p)).astype(np.float32)
        sim = rng.gamma(1.5, 1.0, (2 * n, p)).astype(np.float32)
        obs[:, 3] = 1.0  # a constant column (SD 0)

        def standardise(x, ref):
            sd = ref.std(axis=0)
            sd[sd == 0] = 1.0
            return np.clip((x - ref.mean(axis=0)) / sd, -10.0, 10.0)

        zo, zs = standardise(obs, obs), standardise(sim, obs)
        pca = PCA(comps, random_state=3, svd_solver="randomized").fit(zo)
        scale = np.sqrt(max(float(pca.explained_variance_.sum()), 1e-12))
        expected = np.vstack([pca.transform(zo), pca.transform(zs)]) / scale
        np.testing.assert_array_equal(_block(obs.copy(), sim.copy(), comps, 3), expected)


# ------------------------------------------------------------------ simulated cohort


@pytest.fixture(scope="module")
def simulated():
    """Three simulated samples (1,500 cells each) of the paper design, with truth."""
    from sccohort.simulate.biology import load_genes
    from sccohort.simulate.counts import simulate_sample
    from sccohort.simulate.design import SimParams, clinical_table, sample_specs
    from sccohort.simulate.proteins import protein_panel

    specs = sample_specs(4)
    clinical = clinical_table().set_index("donor_id")
    donors = list(clinical.index)
    genes, panel = load_genes(), protein_panel()
    params = SimParams(n_empty=0)
    rna, prot, obs, truth = [], [], [], []
    for spec in (specs[0], specs[5], specs[23]):
        donor = clinical.loc[spec.donor_id].copy()
        donor["donor_id"] = spec.donor_id
        counts = simulate_sample(
            spec,
            donor,
            "paper",
            params,
            1500,
            0,
            donors.index(spec.donor_id),
            int(spec.batch[1:]) - 1,
        )
        ids = counts.truth["cell_id"].to_numpy()
        index = pd.DataFrame(index=ids)
        rna.append(
            ad.AnnData(counts.rna.astype(np.float32), obs=index, var=gene_var(genes["symbol"]))
        )
        prot.append(
            ad.AnnData(
                sp.csr_matrix(counts.adt, dtype=np.float32),
                obs=index,
                var=protein_var(panel["name"]),
            )
        )
        obs.append(pd.DataFrame({"sample_id": spec.sample_id, "tissue": "blood"}, index=ids))
        truth.append(counts.truth.set_index("cell_id"))
    mods = {}
    for name, parts in (("rna", rna), ("prot", prot)):
        a = ad.concat(parts, merge="first")
        a.layers["counts"] = sp.csr_matrix(a.X, dtype=np.int32)
        mods[name] = a
    m = md.MuData(mods)
    m.obs = pd.concat(obs).loc[m.obs_names]
    return m, pd.concat(truth)


def _recall(removed: np.ndarray, mask: np.ndarray) -> float:
    return float(removed[mask].mean())


def test_simulated_truth_is_recovered(simulated):
    m, truth = simulated
    table = run_qc(m, QCParams(mode="adaptive", seed=0))
    obs = m.obs
    tr = truth.loc[obs.index]
    removed = ~obs["qc_pass"].to_numpy(bool)
    doublet = tr["doublet"].to_numpy(bool)
    called = (obs["qc_reason"] == "doublet").to_numpy()
    precision = doublet[called].mean()
    assert precision >= 0.7, precision
    assert _recall(removed, doublet) >= 0.7
    assert _recall(removed, tr["low_quality"].to_numpy(bool)) >= 0.9
    assert _recall(removed, (tr["contaminant"] == "platelet").to_numpy()) >= 0.9
    assert _recall(removed, (tr["contaminant"] == "red_cell").to_numpy()) >= 0.9
    good = ~doublet & ~tr["low_quality"].to_numpy(bool) & (tr["contaminant"] == "").to_numpy()
    assert removed[good].mean() <= 0.02
    # the table adds up and obs carries the per-cell results
    assert list(table["sample_id"]) == list(pd.unique(obs["sample_id"]))
    removed_cols = [f"removed_{r}" for r in REASONS]
    assert (table[removed_cols].sum(axis=1) + table["cells_out"] == table["cells_in"]).all()
    assert table["cells_in"].sum() == m.n_obs
    assert obs.loc[obs["qc_pass"], "qc_reason"].eq("").all()
    scored = obs["doublet_score"].notna()
    assert scored.mean() > 0.9 and obs.loc[scored, "doublet_score"].between(0, 1).all()


def test_simulated_sample_is_deterministic(simulated):
    m, _ = simulated
    one = m[m.obs["sample_id"] == m.obs["sample_id"].iloc[0]]
    a, row_a = qc_sample(one, QCParams(seed=3))
    b, row_b = qc_sample(one, QCParams(seed=3))
    pd.testing.assert_frame_equal(a, b)
    assert row_a["cells_out"] == row_b["cells_out"]
    assert row_a["doublet_threshold"] == row_b["doublet_threshold"]


def test_approximate_neighbours_call_the_same_doublets(simulated):
    m, truth = simulated
    one = m[m.obs["sample_id"] == m.obs["sample_id"].iloc[0]]
    exact, _ = qc_sample(one, QCParams(doublet_neighbours="exact"))
    approx, _ = qc_sample(one, QCParams(doublet_neighbours="approximate"))
    a = (exact["qc_reason"] == "doublet").to_numpy()
    b = (approx["qc_reason"] == "doublet").to_numpy()
    assert (a & b).sum() / (a | b).sum() >= 0.9
    assert (
        np.corrcoef(exact["doublet_score"].fillna(0), approx["doublet_score"].fillna(0))[0, 1]
        > 0.98
    )
    doublet = truth.loc[approx.index, "doublet"].to_numpy(bool)
    assert doublet[b].mean() >= 0.7 and b[doublet].mean() >= 0.6


def test_protein_evidence_helps_doublet_calls(simulated):
    """RNA + protein (cite) beats RNA alone with the same simulation and threshold rule."""
    m, truth = simulated
    sample = m.obs["sample_id"].iloc[0]
    cells = m.obs_names[m.obs["sample_id"] == sample]
    rna = m.mod["rna"][cells].layers["counts"]
    prot = m.mod["prot"][cells]
    prot_counts = prot.layers["counts"][:, ~prot.var["isotype"].to_numpy(bool)]
    doublet = truth.loc[cells, "doublet"].to_numpy(bool)
    both = call_doublets(rna, prot_counts, method="cite")
    rna_only = call_doublets(rna, None, method="cite")

    def f1(called):
        tp = (called & doublet).sum()
        return 2 * tp / (called.sum() + doublet.sum())

    assert f1(both.called) >= f1(rna_only.called) - 0.02
    assert f1(both.called) > 0.75


def test_doublet_calls_on_real_cells_stay_near_the_expected_rate():
    from pathlib import Path

    from sccohort.io.read import read_sample
    from sccohort.pp.doublets import expected_max_rate

    path = Path(__file__).resolve().parents[2] / "shared/data/eccite_pbmc/eccite_control_500.h5mu"
    if not path.is_file():
        pytest.skip(f"real ECCITE data not found at {path}")
    mdata = read_sample(path, "ctrl")
    prot = mdata.mod["prot"]
    result = call_doublets(
        mdata.mod["rna"].layers["counts"], prot.layers["counts"][:, ~prot.var["isotype"].to_numpy()]
    )
    assert 0 < result.called.mean() <= expected_max_rate(500)
    # hashtag doublets (two hashtags of one cell) are the only truth on real cells
    hto = mdata.mod["hto"].layers["counts"].toarray().astype(float)
    hashtag_doublet = np.sort(hto, axis=1)[:, -2] / hto.sum(axis=1).clip(1) > 0.2
    precision = (result.called & hashtag_doublet).sum() / result.called.sum()
    assert precision >= 4 * hashtag_doublet.mean()  # >= 4x enrichment over the base rate


def _protein_only(prot: np.ndarray, sample: str = "P1") -> md.MuData:
    ids = [f"{sample}:BC{i}" for i in range(prot.shape[0])]
    counts = sp.csr_matrix(prot.astype(np.int32))
    pa = ad.AnnData(counts.astype(np.float32), obs=pd.DataFrame(index=ids))
    pa.var = protein_var(ANTIBODIES[: prot.shape[1]])
    pa.layers["counts"] = counts
    m = md.MuData({"prot": pa})
    m.obs["sample_id"] = sample
    return m


def test_protein_only_sample_is_judged_by_its_antibodies():
    rng = np.random.default_rng(0)
    # T cells (CD3, CD4) and B cells (CD19) on 5 antibodies + an isotype
    t = rng.poisson([300, 5, 5, 5, 200, 3], size=(200, 6))
    b = rng.poisson([5, 5, 300, 5, 5, 3], size=(200, 6))
    doublets = t[:12] + b[:12]  # heterotypic: CD3 and CD19 together
    empty = rng.poisson([1, 0, 1, 0, 0, 0], size=(6, 6))  # droplets without antibodies
    prot = np.vstack([t, b, doublets, empty])
    obs, row = qc_sample(_protein_only(prot), QCParams(doublet_method="cite"))
    assert obs[["n_umis", "n_genes", "pct_mito"]].isna().all().all()
    assert "protein-only" in row["notes"] and row["doublet_method"] == "cite"
    reason = obs["qc_reason"].to_numpy()
    assert (reason[-6:] == "no_protein").all()
    called = np.isin(reason[400:412], ["doublet", "large_library"])
    assert called.mean() >= 0.75  # doublets from antibody space and library size
    assert np.isin(reason[:400], ["", "doublet", "large_library"]).all()
    assert (reason[:400] != "").mean() <= 0.06  # singlets kept
    assert row["removed_red_cell"] == row["removed_low_quality"] == 0


def test_large_loss_to_one_reason_warns_with_the_key():
    cells = [_cell(1000, start=i) for i in range(6)] + [_cell(1000, {"HBB": 500}) for _ in range(6)]
    with pytest.warns(QCWarning, match=r"sample 'S1': QC removed 6 of 12 .*red_cell.*hb_max_pct"):
        qc_sample(_mdata(cells), QCParams(doublet_method="none"))


def test_min_genes_auto_scales_to_a_targeted_panel():
    from sccohort.pp.qc import auto_min_genes

    assert auto_min_genes(20_000) == auto_min_genes(10_000) == 100
    assert auto_min_genes(1_000) == 5 and auto_min_genes(400) == 2
    # 6,008 genes: a panel, so a cell with 40 genes is not low quality by the floor
    cells = [_cell(40 + i % 5, start=i) for i in range(30)]
    obs, row = qc_sample(_mdata(cells), QCParams(doublet_method="none"))
    assert row["removed_low_quality"] == 0
    assert "targeted panel of 6008 genes: min_genes 30" in row["notes"]
    obs, row = qc_sample(_mdata(cells), QCParams(doublet_method="none", min_genes=100))
    assert row["removed_low_quality"] == 30
