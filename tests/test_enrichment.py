"""Gene-set readers, over-representation (Fisher + BH) and preranked GSEA against known truth."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import mudata
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from sccohort.errors import InputError
from sccohort.io.genesets import hallmark, read_gmt, read_tf_targets
from sccohort.stats.enrichment import ORA_COLUMNS, enrich_markers, ora
from sccohort.stats.gsea import GSEA_COLUMNS, gsea

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GENESETS = DATA / "genesets"
TNFA = "HALLMARK_TNFA_SIGNALING_VIA_NFKB"


# ---------------------------------------------------------------- readers


def test_read_gmt_plain_and_gz(tmp_path: Path) -> None:
    text = "# comment\nSET_A\tdesc\tG1\tG2\tG2\tG3\t\n\nSET_B\thttp://x\tG4\tG5\n"
    plain = tmp_path / "sets.gmt"
    plain.write_text(text)
    packed = tmp_path / "sets.gmt.gz"
    with gzip.open(packed, "wt") as handle:
        handle.write(text)
    for path in (plain, packed):
        sets = read_gmt(path)
        assert sets == {"SET_A": ["G1", "G2", "G3"], "SET_B": ["G4", "G5"]}


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ("A\td\tG1\nB G1 G2\n", 2, "tab-separated"),
        ("A\td\tG1\nB\td\tG2\nA\td\tG3\n", 3, "defined twice"),
        ("A\td\tG1\nB\td\t\t\n", 2, "no genes"),
    ],
)
def test_read_gmt_errors_name_file_and_line(tmp_path: Path, body: str, line: int, words: str):
    path = tmp_path / "bad.gmt"
    path.write_text(body)
    with pytest.raises(InputError) as err:
        read_gmt(path)
    assert err.value.row == line and err.value.file == str(path)
    assert words in str(err.value) and f"line {line}" in str(err.value)


def test_read_gmt_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        read_gmt(tmp_path / "absent.gmt")


def test_read_tf_targets_header_modes_and_errors(tmp_path: Path) -> None:
    rows = "TF1\tA\tActivation\t1\nTF1\tB\tRepression\t2\nTF2\tA\tUnknown\t3\nTF1\tA\tUnknown\t4\n"
    raw = tmp_path / "raw.tsv"
    raw.write_text(rows)
    headed = tmp_path / "headed.tsv"
    headed.write_text("TF\tTarget\tRegulation\tReference\n" + rows)
    for path in (raw, headed):
        assert read_tf_targets(path) == {"TF1": ["A", "B"], "TF2": ["A"]}
    assert read_tf_targets(raw, modes=["activation"]) == {"TF1": ["A"]}
    two_cols = tmp_path / "two.tsv"
    two_cols.write_text("TF1\tA\nTF1\n")
    with pytest.raises(InputError) as err:
        read_tf_targets(two_cols)
    assert err.value.row == 2
    with pytest.raises(InputError, match="no mode column"):
        read_tf_targets(tmp_path / "two.tsv", modes=["Activation"])
    with pytest.raises(InputError, match="no rows"):
        read_tf_targets(raw, modes=["Dual"])


def test_hallmark_is_the_v7_5_1_collection() -> None:
    sets = hallmark()
    assert len(sets) == 50
    assert all(32 <= len(g) <= 200 for g in sets.values())
    assert {"EGR1", "NFKBIA", "TNFAIP3", "IL1B"} <= set(sets[TNFA])
    assert len(sets[TNFA]) == 200
    assert "HALLMARK_INTERFERON_GAMMA_RESPONSE" in sets
    if (GENESETS / "h.all.v7.5.1.symbols.gmt").is_file():
        assert read_gmt(GENESETS / "h.all.v7.5.1.symbols.gmt") == sets


def test_trrust_table_reads() -> None:
    path = GENESETS / "trrust_rawdata.human.tsv"
    if not path.is_file():
        pytest.skip(f"TRRUST test table absent ({path}); it lives in the shared data folder")
    tf = read_tf_targets(path)
    assert len(tf) == 795
    assert "NFKBIA" in tf["RELA"] and "NFKBIA" in tf["NFKB1"]
    assert sum(map(len, tf.values())) <= 9396


# ---------------------------------------------------------------- ORA


def _universe(n: int = 3000) -> list[str]:
    return [f"G{i}" for i in range(n)]


def test_ora_equals_fisher_exact_and_bh() -> None:
    rng = np.random.default_rng(0)
    universe = _universe(1000)
    sets = {
        f"S{i}": list(rng.choice(universe, rng.integers(5, 80), replace=False)) for i in range(25)
    }
    query = list(rng.choice(universe[:200], 60, replace=False))  # overlaps sets unevenly
    res = ora(query, sets, universe).set_index("set")
    assert list(res.reset_index().columns) == ORA_COLUMNS
    assert res["pvalue"].is_monotonic_increasing
    for name, genes in sets.items():
        a = len(set(genes) & set(query))
        table = [[a, 60 - a], [len(genes) - a, 1000 - 60 - len(genes) + a]]
        assert res.loc[name, "overlap"] == a
        assert res.loc[name, "pvalue"] == pytest.approx(
            stats.fisher_exact(table, alternative="greater")[1], rel=1e-9
        )
        (a_, b_), (c_, d_) = table
        haldane = (a_ + 0.5) * (d_ + 0.5) / ((b_ + 0.5) * (c_ + 0.5))
        assert res.loc[name, "odds_ratio"] == pytest.approx(haldane)
        assert set(res.loc[name, "genes"].split(";")) - {""} == set(genes) & set(query)
    bh = multipletests(res["pvalue"], method="fdr_bh")[1]
    np.testing.assert_allclose(res["padj"], bh, rtol=1e-12)


def test_ora_universe_restriction_size_filter_and_errors() -> None:
    universe = _universe(500)
    sets = {"big": universe[:100] + ["X1", "X2"], "tiny": universe[:3] + ["X3", "X4", "X5"]}
    with pytest.warns(UserWarning, match="not in the universe"):
        res = ora(universe[:20] + ["OUTSIDE"], sets, universe)
    assert list(res["set"]) == ["big"]  # "tiny" has 3 genes in the universe (< min_size)
    assert res.loc[0, "set_size"] == 100 and res.loc[0, "query_size"] == 20
    assert res.loc[0, "overlap"] == 20 and res.loc[0, "pvalue"] < 1e-12
    with pytest.raises(InputError, match="no query gene"), pytest.warns(UserWarning):
        ora(["OUTSIDE"], sets, universe)
    with pytest.raises(InputError, match="no gene set has between"):
        ora(universe[:5], sets, universe, min_size=200)


def test_ora_null_p_values_are_not_anticonservative() -> None:
    """Random queries: P(p <= alpha) <= alpha (+ Monte Carlo slack) at every alpha."""
    rng = np.random.default_rng(7)
    universe = _universe(3000)
    sets = {
        f"S{i}": list(rng.choice(universe, rng.integers(10, 200), replace=False)) for i in range(40)
    }
    n_queries = 300
    pvals = np.concatenate(
        [
            ora(list(rng.choice(universe, 100, replace=False)), sets, universe)["pvalue"]
            for _ in range(n_queries)
        ]
    )
    for alpha in (0.01, 0.05, 0.1, 0.25, 0.5):
        slack = 3 * np.sqrt(alpha * (1 - alpha) / n_queries)
        assert np.mean(pvals <= alpha) <= alpha + slack, alpha
    # not trivially conservative either: the 5% tail holds a fair share of the tests
    assert np.mean(pvals <= 0.05) > 0.02


# ---------------------------------------------------------------- GSEA


def _running_sum_es(values: np.ndarray, members: np.ndarray, weight: float) -> float:
    """The textbook ES: the full running sum over the ranked list, extreme deviation."""
    order = np.argsort(-values, kind="stable")
    inset = np.isin(order, members)
    w = np.abs(values[order]) ** weight
    step = np.where(inset, w / w[inset].sum(), -1.0 / (len(values) - inset.sum()))
    walk = np.cumsum(step)
    return walk.max() if walk.max() >= -walk.min() else walk.min()


def test_gsea_hand_computed_es_and_leading_edge() -> None:
    st = pd.Series([4.0, 3.0, 2.0, 1.0, -1.0], index=list("abcde"))
    res = gsea(st, {"up": ["b", "c"], "down": ["d", "e"]}, min_size=2, n_perm=200).set_index("set")
    # up: a miss -1/3, b +3/5, c +2/5 -> peak 2/3 after c
    assert res.loc["up", "es"] == pytest.approx(2 / 3)
    assert res.loc["up", "leading_edge"] == "b;c"
    # down: three misses reach -1 just before d
    assert res.loc["down", "es"] == pytest.approx(-1.0)
    assert res.loc["down", "leading_edge"] == "e;d"
    assert list(res.reset_index().columns) == GSEA_COLUMNS


def test_gsea_es_equals_the_running_sum() -> None:
    rng = np.random.default_rng(2)
    for trial in range(30):
        n = int(rng.integers(30, 400))
        values = rng.normal(size=n) * rng.choice([1.0, 3.0])
        genes = [f"g{i}" for i in range(n)]
        members = rng.choice(n, int(rng.integers(2, n // 2)), replace=False)
        weight = [0.0, 1.0, 2.0][trial % 3]
        res = gsea(
            pd.Series(values, index=genes),
            {"s": [genes[i] for i in members]},
            min_size=1,
            n_perm=100,
            weight=weight,
        )
        assert res.loc[0, "es"] == pytest.approx(
            _running_sum_es(values, members, weight), abs=1e-12
        )


def test_gsea_extremes_planted_set_and_null_uniformity() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    genes = np.array([f"g{i}" for i in range(n)])
    # the 30 top genes of a strictly decreasing list: ES = 1 for the classic (unweighted) walk
    top = pd.Series(np.linspace(1.0, -1.0, n), index=genes)
    res = gsea(top, {"top": list(genes[:30]), "bottom": list(genes[-30:])}, n_perm=1000, weight=0)
    res = res.set_index("set")
    assert res.loc["top", "es"] == pytest.approx(1.0)
    assert res.loc["bottom", "es"] == pytest.approx(-1.0)
    # nothing in the null reaches +-1: p = 1 / (number of same-signed null ES + 1)
    assert 1 / 1001 <= res.loc["top", "pvalue"] < 1 / 300
    assert 1 / 1001 <= res.loc["bottom", "pvalue"] < 1 / 300
    null_p = []
    for rep in range(8):
        values = rng.normal(size=n)
        sets = {
            f"s{i}": list(rng.choice(genes, rng.integers(15, 120), replace=False))
            for i in range(40)
        }
        planted = rng.choice(n, 40, replace=False)
        values[planted] += 1.0
        sets["planted"] = list(genes[planted])
        out = gsea(pd.Series(values, index=genes), sets, n_perm=1000, seed=rep).set_index("set")
        assert out.loc["planted", "pvalue"] < 1 / 300  # beyond every same-signed null ES
        assert out.loc["planted", "nes"] > 1.5
        null_p.extend(out.drop(index="planted")["pvalue"])
    assert stats.kstest(null_p, "uniform").pvalue > 0.01
    assert np.mean(np.asarray(null_p) <= 0.05) < 0.05 + 3 * np.sqrt(0.05 * 0.95 / len(null_p))


def test_gsea_is_deterministic_and_per_set() -> None:
    rng = np.random.default_rng(9)
    genes = np.array([f"g{i}" for i in range(800)])
    st = pd.Series(rng.normal(size=800), index=genes)
    sets = {f"s{i}": list(rng.choice(genes, 20 + 7 * i, replace=False)) for i in range(6)}
    a = gsea(st, sets, n_perm=500, seed=3)
    pd.testing.assert_frame_equal(a, gsea(st, sets, n_perm=500, seed=3))
    alone = gsea(st, {"s2": sets["s2"]}, n_perm=500, seed=3)
    assert alone.loc[0, "pvalue"] == a.set_index("set").loc["s2", "pvalue"]
    other = gsea(st, sets, n_perm=500, seed=4).set_index("set")
    assert not np.allclose(other["pvalue"], a.set_index("set").loc[other.index, "pvalue"])


def test_gsea_input_errors() -> None:
    genes = [f"g{i}" for i in range(50)]
    sets = {"s": genes[:20]}
    with pytest.raises(InputError, match="missing or infinite"):
        gsea(pd.Series([np.nan] + [1.0] * 49, index=genes), sets)
    with pytest.raises(InputError, match="more than once"):
        gsea(pd.Series(np.arange(50.0), index=genes[:-1] + ["g0"]), sets)
    with pytest.raises(InputError, match="too small"):
        gsea(pd.Series(np.arange(50.0), index=genes), sets, n_perm=10)
    with pytest.raises(InputError, match="no gene set"):
        gsea(pd.Series(np.arange(50.0), index=genes), sets, min_size=30)
    with pytest.raises(InputError, match="Series"):
        gsea(np.arange(50.0), sets)


# ---------------------------------------------------------------- markers tables


def test_enrich_markers_selection_and_columns() -> None:
    universe = _universe(400)
    sets = {"first": universe[:30], "second": universe[100:130]}
    rows = []
    for i, g in enumerate(universe[:40]):  # subset A: first set's genes up, strongly
        rows.append(("A", g, 40.0 - i, 1e-6))
    for i, g in enumerate(universe[100:140]):  # subset B: second set's genes down
        rows.append(("B", g, -(40.0 - i), 1e-6))
    rows.append(("C", universe[0], 5.0, 0.5))  # nothing significant
    markers = pd.DataFrame(rows, columns=["group", "gene", "statistic", "padj"])
    with pytest.warns(UserWarning, match="subsets: B, C"):
        up = enrich_markers(markers, sets, universe, top=20)
    assert list(up.columns) == ["subset", *ORA_COLUMNS]
    assert set(up["subset"]) == {"A"}
    a = up.set_index("set")
    assert a.loc["first", "overlap"] == 20 and a.loc["first", "query_size"] == 20
    assert a.loc["first", "padj"] < 1e-10 and a.loc["second", "overlap"] == 0
    with pytest.warns(UserWarning):
        down = enrich_markers(markers, sets, universe, top=None, direction="down")
    b = down.set_index("set")
    assert b.loc["second", "overlap"] == 30 and b.loc["second", "query_size"] == 40
    with pytest.raises(InputError, match="no column 'logfc'"):
        enrich_markers(markers, sets, universe, rank_by="logfc")
    with pytest.raises(InputError, match="direction"):
        enrich_markers(markers, sets, universe, direction="sideways")


def test_cd14_egr1_markers_hit_nfkb_sets(simulated_run: Path) -> None:
    """Acceptance: the simulated CD14_EGR1 markers are enriched for TNF-alpha via NF-kB."""
    out = simulated_run / "out"
    markers = pd.read_csv(out / "tables" / "markers_rna.csv")
    assert "CD14_EGR1" in set(markers["subset"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mudata notices; subsets without significant markers
        universe = list(mudata.read_h5mu(out / "cohort.h5mu").mod["rna"].var_names)
        res = enrich_markers(markers, hallmark(), universe)
    egr1 = res[res["subset"] == "CD14_EGR1"].reset_index(drop=True)
    assert egr1.loc[0, "set"] == TNFA  # the top set
    assert egr1.loc[0, "padj"] < 0.05
    assert {"EGR1", "NFKBIA"} <= set(egr1.loc[0, "genes"].split(";"))
    tnfa = res[res["set"] == TNFA].set_index("subset")["pvalue"]
    assert tnfa.idxmin() == "CD14_EGR1"
    trrust = GENESETS / "trrust_rawdata.human.tsv"
    if not trrust.is_file():
        pytest.skip(f"TRRUST test table absent ({trrust}); the Hallmark part passed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tf = enrich_markers(
            markers[markers["subset"] == "CD14_EGR1"], read_tf_targets(trrust), universe
        ).set_index("set")
    assert tf.loc["NFKB1", "padj"] < 0.05 and tf.loc["RELA", "padj"] < 0.05
