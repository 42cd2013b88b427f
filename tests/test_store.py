"""RNA kept on disk (`sccohort.pp.store`): the same matrices as in memory, the same run."""

from __future__ import annotations

import gzip
import multiprocessing as mp
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from sccohort import pipeline
from sccohort.config import load_config
from sccohort.errors import InputError
from sccohort.pp import store as store_mod
from sccohort.pp.normalize import normalize_rna
from sccohort.pp.store import (
    STORE_KEY,
    RnaCollector,
    RnaStoreWriter,
    rna_blocks,
    rna_columns,
    rna_rows,
    store_of,
)


def _counts(n_cells: int, n_genes: int, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = rng.negative_binomial(1, 0.7, size=(n_cells, n_genes)).astype(np.int32)
    dense[rng.random(dense.shape) < 0.5] = 0
    dense[3] = 0  # a cell without counts
    return sp.csr_matrix(dense)


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[AnnData, AnnData]:
    """The same 3 samples' RNA in memory (normalised ``.X``) and on disk (small blocks)."""
    monkeypatch.setattr(store_mod, "BLOCK_GENES", 7)
    parts = [_counts(n, 30, seed) for n, seed in ((40, 1), (25, 2), (33, 3))]
    genes = pd.Index([f"G{i}" for i in range(30)])
    obs_names = [pd.Index([f"S{k}:{i}" for i in range(p.shape[0])]) for k, p in enumerate(parts)]
    memory = AnnData(
        X=None, obs=pd.DataFrame(index=np.concatenate(obs_names)), var=pd.DataFrame(index=genes)
    )
    memory.layers["counts"] = sp.vstack(parts, format="csr")
    normalize_rna(memory, target_sum=1e4)
    writer = RnaStoreWriter(tmp_path / "rna.h5", genes, block_genes=7)
    for k in (2, 0, 1):  # finished out of order
        writer.add(f"S{k}", parts[k], obs_names[k])
    store = writer.close(["S0", "S1", "S2"], 1e4)
    disk = AnnData(obs=memory.obs.copy(), var=memory.var.copy())
    disk.uns[STORE_KEY] = str(store.path)
    return memory, disk


def _same(a: sp.spmatrix, b: sp.spmatrix) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    assert a.shape == b.shape
    assert np.array_equal(a.indptr, b.indptr)
    assert np.array_equal(a.indices, b.indices)
    assert a.data.dtype == b.data.dtype
    assert np.array_equal(a.data, b.data)  # bit for bit, in the same order


def test_the_store_serves_exactly_the_in_memory_matrices(pair: tuple[AnnData, AnnData]) -> None:
    memory, disk = pair
    assert store_of(memory) is None
    assert store_of(disk).n_obs == 98
    for genes in ([0, 5, 6, 7, 29], [29, 3, 15, 3], list(range(30)), [12]):
        _same(rna_columns(memory, genes), rna_columns(disk, genes))
        _same(rna_columns(memory, genes, counts=True), rna_columns(disk, genes, counts=True))
    for rows in ([0, 3, 41, 97, 50], [50, 3, 3, 97], list(range(98)), []):
        rows = np.array(rows, dtype=np.int64)  # any order, repeats (cells of several samples)
        _same(rna_rows(memory, rows), rna_rows(disk, rows))
        compact = store_of(disk).compact_rows(rows)  # what a subset lineage holds
        assert compact.indices.dtype == np.int16 and compact.data.dtype == np.float32
        as_csr = (compact.data, compact.indices.astype(np.int32), compact.indptr)
        _same(rna_rows(memory, rows), sp.csr_matrix(as_csr, shape=compact.shape))
    blocks = list(zip(rna_blocks(memory), rna_blocks(disk), strict=True))
    assert [(lo, hi) for (lo, hi, _), _ in blocks] == [
        (0, 7),
        (7, 14),
        (14, 21),
        (21, 28),
        (28, 30),
    ]
    for (_, _, a), (_, _, b) in blocks:
        _same(a, b)


def test_a_forked_worker_reads_rows_after_the_parent_used_threads(
    pair: tuple[AnnData, AnnData],
) -> None:
    """Subsets read each lineage's rows in a forked worker (OpenMP there would abort it)."""
    memory, disk = pair  # normalize_rna ran numba's threaded kernel in this process
    with ProcessPoolExecutor(1, mp_context=mp.get_context("fork")) as pool:
        got = pool.submit(rna_rows, disk, np.arange(0, 98, 3)).result(timeout=120)
    _same(got, rna_rows(memory, np.arange(0, 98, 3)))


def test_markers_pseudobulk_and_signatures_read_from_the_store(
    pair: tuple[AnnData, AnnData],
) -> None:
    from sccohort.stats.pseudobulk import pseudobulk
    from sccohort.stats.signatures import score_cells
    from sccohort.tl.markers import rank_markers

    memory, disk = pair
    for adata in (memory, disk):
        adata.obs["subset"] = pd.Categorical(np.arange(adata.n_obs) % 3).astype(str)
        adata.obs["sample_id"] = [c.split(":")[0] for c in adata.obs_names]
        adata.obs["donor_id"] = adata.obs["sample_id"]
    pd.testing.assert_frame_equal(rank_markers(memory, "subset"), rank_markers(disk, "subset"))
    sums_a, meta_a = pseudobulk(memory, "subset", min_cells=1)
    sums_b, meta_b = pseudobulk(disk, "subset", min_cells=1)
    pd.testing.assert_frame_equal(meta_a, meta_b)
    for group in sums_a:
        pd.testing.assert_frame_equal(sums_a[group], sums_b[group])
    sets = {"a": ["G1", "G2", "G9", "G20"], "b": ["G3", "G4", "G28"]}
    for method in ("score_genes", "mean_z"):
        pd.testing.assert_frame_equal(
            score_cells(memory, sets, method=method, ctrl_size=3, n_bins=5, min_genes=2),
            score_cells(disk, sets, method=method, ctrl_size=3, n_bins=5, min_genes=2),
        )
    with pytest.raises(InputError, match="reference group need the RNA in memory"):
        rank_markers(disk, "subset", reference="0")


class _Sample:
    def __init__(self, sample_id: str, counts: sp.csr_matrix, genes: list[str]):
        self.sample_id = sample_id
        rna = AnnData(
            obs=pd.DataFrame(index=[f"{sample_id}:{i}" for i in range(counts.shape[0])]),
            var=pd.DataFrame(index=genes),
        )
        rna.layers["counts"] = counts
        self.mods = {"rna": rna}


def test_the_collector_moves_counts_to_disk_past_the_threshold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_mod, "AUTO_DISK_CELLS", 50)
    genes = [f"G{i}" for i in range(12)]
    files = pd.Series({"A": "a.h5", "B": "b.h5", "C": "c.h5"})
    samples = {s: _Sample(s, _counts(30, 12, i), genes) for i, s in enumerate(files.index)}
    samples["C"] = _Sample("C", _counts(30, 12, 9)[:, ::-1], genes[::-1])  # its own gene order

    small = RnaCollector(tmp_path / "small.h5", files[["A"]], "auto", 1e4)
    small.take(0, _Sample("A", _counts(30, 12, 0), genes))
    assert small.finish() is None and not (tmp_path / "small.h5").exists()

    collector = RnaCollector(tmp_path / "rna.h5", files, "auto", 1e4)
    collector.take(1, samples["B"])  # 30 cells: held in memory
    assert "counts" in samples["B"].mods["rna"].layers
    assert not list(tmp_path.glob("*rna.h5*"))
    collector.take(2, samples["C"])  # 60 > 50: both written, in B's gene order (the first)
    assert list(samples["C"].mods["rna"].var_names) == genes
    assert "counts" in samples["A"].mods["rna"].layers
    collector.take(0, samples["A"])
    assert all("counts" not in s.mods["rna"].layers for s in samples.values())
    assert all(s.mods["rna"].X is None for s in samples.values())
    store = collector.finish()
    assert list(store.var_names) == genes
    assert list(store.obs_names[:2]) == ["A:0", "A:1"] and store.obs_names[-1] == "C:29"
    expected = _counts(30, 12, 9)[:, ::-1][:, np.arange(11, -1, -1)]
    _same(store.columns(np.arange(12), counts=True)[60:], expected)

    other = RnaCollector(tmp_path / "bad.h5", files[["A", "B"]], "always", 1e4)
    other.take(0, _Sample("A", _counts(5, 12, 0), genes))
    with pytest.raises(InputError, match="its genes differ from sample 'A'") as err:
        other.take(1, _Sample("B", _counts(5, 11, 0), genes[:11]))
    assert err.value.sample == "B"
    assert not list(tmp_path.glob(".bad.h5*")) and not (tmp_path / "bad.h5").exists()


def test_a_run_with_rna_on_disk_equals_the_run_in_memory(simulated_run: Path) -> None:
    """Every table, the labels and the embeddings are the same; the cohort's RNA has no
    matrices and names the store."""
    cohort = simulated_run / "cohort"
    toml = (
        (cohort / "sccohort.toml")
        .read_text()
        .replace("[run]\nseed = 5\n", '[run]\nseed = 5\nrna_on_disk = "always"\n')
    )
    (cohort / "on_disk.toml").write_text(toml)
    out = simulated_run / "on_disk"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.run_pipeline(load_config(cohort / "on_disk.toml"), out)
    memory_out = simulated_run / "out"
    names = sorted(p.name for p in (memory_out / "tables").iterdir())
    assert {"markers_rna.csv", "subsets.csv", "signatures.csv"} <= set(names)
    assert names == sorted(p.name for p in (out / "tables").iterdir())
    for name in names:
        a, b = ((o / "tables" / name).read_bytes() for o in (memory_out, out))
        if name.endswith(".gz"):  # the gzip header holds the time of writing
            a, b = gzip.decompress(a), gzip.decompress(b)
        assert a == b, name
    a = mudata.read_h5mu(memory_out / "cohort.h5mu")
    b = mudata.read_h5mu(out / "cohort.h5mu")
    for column in ("leiden", "l1", "l2", "subset"):
        assert (a.obs[column].astype(str) == b.obs[column].astype(str)).all(), column
    for key in ("X_pca", "X_harmony", "X_umap"):
        assert np.array_equal(a.obsm[key], b.obsm[key]), key
    assert b["rna"].X is None and not b["rna"].layers
    assert Path(b["rna"].uns[STORE_KEY]) == out / "rna_counts.h5"
    assert (out / "rna_counts.h5").is_file() and not (memory_out / "rna_counts.h5").exists()


def test_the_reports_marker_genes_are_read_once_with_the_same_values(
    pair: tuple[AnnData, AnnData], tmp_path: Path
) -> None:
    """The report reads the dot plots' genes of all subsets together (one pass of the store)."""
    from sccohort.pl import dot_values
    from sccohort.report.characterisation import _marker_rna

    memory, disk = pair
    tables = tmp_path / "run" / "tables"
    tables.mkdir(parents=True)
    markers = pd.DataFrame(
        {
            "subset": ["a"] * 3 + ["b"] * 3,
            "feature": ["G3", "G20", "G8", "G29", "G3", "G1"],
            "statistic": [9.0, 5.0, 1.0, 8.0, 3.0, 2.0],
        }
    )
    markers.to_csv(tables / "markers_rna.csv", index=False)
    cohort = mudata.MuData({"rna": disk})
    read = _marker_rna(tmp_path / "run", cohort, ["a", "b"])
    assert list(read.var_names) == ["G3", "G20", "G8", "G29", "G1"] and store_of(read) is None
    assert _marker_rna(tmp_path / "run", mudata.MuData({"rna": memory}), ["a"]) is memory
    groups = pd.Series(np.arange(disk.n_obs) % 4, index=disk.obs_names).astype(str)
    for genes in (["G3", "G20", "G8"], ["G29", "G3", "G1"]):
        got, want = dot_values(read, genes, groups), dot_values(disk, genes, groups)
        for a, b in zip(got, want, strict=True):
            pd.testing.assert_frame_equal(a, b, check_exact=True)
