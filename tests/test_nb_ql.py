"""edgeR's QL F-test (sccohort.stats.nb_ql) against numbers from R edgeR 3.40.2 / limma 3.54.1.

The fixtures were computed with R (Debian r-bioc-edger 3.40.2, locfit 1.5-9.7)::

    y <- calcNormFactors(DGEList(COUNTS, lib.size = colSums(COUNTS)), method = "TMM")
    # or, for "total": y <- DGEList(COUNTS, lib.size = CELLS)
    y <- estimateDisp(y, DESIGN, tagwise = FALSE)
    res <- glmQLFTest(glmQLFit(y, DESIGN, robust = TRUE), coef = 2)

Rows 1-2 are planted (4- and 3-fold in the 3 cases), row 3 has no counts in the cases, row 4
an outlier sample. The larger comparisons are in benchmarks/bench_nb_ql.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from sccohort.stats.nb_dispersion import locfit_constant, maximize_interpolant
from sccohort.stats.nb_ql import ql_ftest, tmm_factors

COUNTS = np.array(
    [
        [10, 16, 7, 0, 4, 6, 3, 8, 2, 0],
        [9, 28, 18, 7, 1, 1, 2, 2, 5, 12],
        [0, 0, 0, 9, 9, 5, 8, 18, 7, 8],
        [5, 10, 9, 10, 30, 13, 44, 10, 12, 14],
        [20, 32, 15, 29, 23, 13, 17, 13, 28, 30],
        [2, 3, 1, 0, 5, 0, 4, 1, 4, 1],
        [6, 4, 3, 3, 8, 7, 8, 5, 5, 7],
        [24, 24, 9, 44, 67, 61, 22, 7, 72, 33],
        [11, 15, 12, 2, 5, 8, 10, 8, 9, 10],
        [3, 3, 6, 8, 0, 3, 3, 4, 1, 5],
        [24, 32, 13, 15, 13, 19, 31, 7, 12, 27],
        [0, 6, 2, 1, 1, 2, 7, 2, 3, 4],
    ],
    dtype=float,
)
GROUP = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=float)
AGE = np.array([61, 47, 70, 55, 66, 52, 59, 73, 44, 63], dtype=float)
DESIGN = np.column_stack([np.ones(10), GROUP, AGE])
CELLS = np.array([820, 1000, 640, 910, 1200, 700, 980, 860, 1100, 760], dtype=float)

R_NORM_FACTORS = [
    1.157052058, 1.192212153, 1.137123814, 0.988834428, 0.8322475141, 0.7271617881,
    0.9958265805, 1.082202486, 0.8838670371, 1.118405999,
]  # fmt: skip
R_TMM = {
    "common": 0.1615495416,
    "logfc": [
        1.502350782, 1.927646679, -6.227944781, -1.333823453, -0.141441058, -0.2542073796,
        -0.6250203784, -1.295075231, 0.6104082859, 0.06905605445, 0.2117583663, -0.3487936662,
    ],
    "logcpm": [
        15.73459515, 16.13526898, 15.94111599, 16.94275482, 17.37044571, 14.81398035,
        15.74187663, 18.09398806, 16.26496878, 15.31244561, 17.18062908, 15.03134407,
    ],
    "f": [
        4.738456599, 15.90409669, 34.00284356, 4.563713202, 0.2882072943, 0.06230388397,
        1.20073667, 3.344748256, 1.794629887, 0.005183155244, 0.3334436257, 0.1291478855,
    ],
    "pvalue": [
        0.04314331509, 0.0001878712276, 9.936642175e-08, 0.03556590216, 0.592790756,
        0.8035003137, 0.2763062718, 0.07096867892, 0.1839762057, 0.9427777196, 0.565182938,
        0.7202190127,
    ],
    "df_total": [17.88138325, 58.41757554] + [84] * 10,
    "dispersion": [
        0.15247046, 0.1342705835, 0.1420163716, 0.1392956453, 0.1464008511, 0.1731051105,
        0.1520551479, 0.1498661489, 0.1299669189, 0.1638196534, 0.1442030398, 0.1688600569,
    ],
}  # fmt: skip
R_TOTAL = {
    "common": 0.2057972626,
    "logfc": [
        1.872057652, 2.193522037, -6.128986943, -1.009345559, 0.1629436121, 0.09481199662,
        -0.3283040783, -0.959428772, 0.9136004866, 0.3429314357, 0.449003147, -0.04460752732,
    ],
    "logcpm": [
        13.07089431, 13.56546723, 13.18104689, 14.23586551, 14.70855102, 12.12172212,
        13.05511873, 15.3549539, 13.61904074, 12.65337279, 14.5644701, 12.38243351,
    ],
    "f": [
        4.929340224, 13.08440216, 59.02000845, 2.268896417, 0.07536669436, 0.007947823828,
        0.5505599607, 2.098500571, 2.896409252, 0.1101679579, 0.5751425076, 0.001814133306,
    ],
    "pvalue": [
        0.06121346694, 0.00154246874, 2.868650501e-10, 0.135745332, 0.7843514325,
        0.9291744653, 0.4931124205, 0.1511663872, 0.09247566557, 0.7407797608, 0.4503452303,
        0.966127341,
    ],
    "df_total": [7.121717138, 21.8144956] + [84] * 10,
    "dispersion": [
        0.2169134588, 0.2001830952, 0.2124070023, 0.1943964966, 0.1935704697, 0.2300843277,
        0.2176042807, 0.1932618478, 0.1988189212, 0.2255986921, 0.1936463181, 0.2277939957,
    ],
}  # fmt: skip


def _no_warnings(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    assert not caught, [str(w.message) for w in caught]
    return out


def test_tmm_factors_equal_edger():
    np.testing.assert_allclose(tmm_factors(COUNTS), R_NORM_FACTORS, rtol=1e-8)
    np.testing.assert_allclose(tmm_factors(COUNTS, COUNTS.sum(axis=0)), R_NORM_FACTORS, rtol=1e-8)


@pytest.mark.parametrize("normalisation", ["tmm", "total"])
def test_ql_ftest_equals_edger(normalisation):
    if normalisation == "tmm":
        lib, nf, ref = COUNTS.sum(axis=0), np.array(R_NORM_FACTORS), R_TMM
    else:
        lib, nf, ref = CELLS, None, R_TOTAL
    res = _no_warnings(ql_ftest, COUNTS, DESIGN, 1, lib_size=lib, norm_factors=nf)
    assert float(res["common_dispersion"]) == pytest.approx(ref["common"], rel=1e-4)
    for key in ("logfc", "logcpm", "f", "pvalue", "df_total", "dispersion"):
        np.testing.assert_allclose(res[key], ref[key], rtol=1e-4, err_msg=key)


def test_locfit_and_spline_maximum_equal_r():
    x = np.array([0.3, 1.1, 1.9, 2.2, 3.0, 3.3, 4.8, 5.0, 5.9, 7.4, 8.1, 9.9])
    y = np.array([2.1, 2.9, 3.5, 3.1, 4.2, 4.0, 5.9, 5.5, 6.8, 6.1, 7.7, 9.0])
    r_fit = [
        3.098996018, 3.188083074, 3.373761324, 3.479612365, 3.937634918, 4.219239069,
        5.465608178, 5.617421691, 6.121864927, 6.843337016, 7.008430559, 7.365382864,
    ]  # fmt: skip  # fitted(locfit(y ~ x, alpha = 0.6, deg = 0))
    np.testing.assert_allclose(locfit_constant(x, y[:, None], 0.6)[:, 0], r_fit, rtol=1e-8)
    g = np.linspace(-10, 10, 21)
    curves = np.stack(
        [-((g - 1.3) ** 2) + 0.1 * g**3 / 100, -np.abs(g + 4.2), stats.norm.pdf(g, 2.7, 3)]
    )
    r_max = [1.302544935, -4.103539565, 2.702573199]  # edgeR::maximizeInterpolant
    np.testing.assert_allclose(maximize_interpolant(g, curves), r_max, rtol=1e-8)


def _simulate(seed, planted=0, g=600, n=20, n_case=10):
    rng = np.random.default_rng(seed)
    group = (np.arange(n) < n_case).astype(float)
    design = np.column_stack([np.ones(n), group, rng.normal(60, 10, n)])
    abundance = rng.lognormal(np.log(4), 1.0, g)
    abundance[:planted] = 15  # planted rows: 15 cells per sample in the controls
    lib = rng.uniform(600, 1200, n)
    mu = abundance[:, None] * lib / lib.mean()
    mu[:planted] *= np.where(group == 1, 3.0, 1.0)
    disp = 0.05 + 0.4 / np.sqrt(abundance)
    counts = rng.negative_binomial(1 / disp[:, None], 1 / (1 + mu * disp[:, None]))
    return counts.astype(float), design, lib


def test_null_pvalues_are_roughly_uniform():
    counts, design, lib = _simulate(3)
    res = _no_warnings(ql_ftest, counts, design, 1, lib_size=lib)
    p = res["pvalue"]
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    assert 0.02 < np.mean(p < 0.05) < 0.08
    assert 0.45 < p.mean() < 0.55
    assert stats.kstest(p, "uniform").pvalue > 1e-3


def test_planted_rows_are_found():
    counts, design, lib = _simulate(4, planted=20)
    nf = tmm_factors(counts, lib)
    res = _no_warnings(ql_ftest, counts, design, 1, lib_size=lib, norm_factors=nf)
    assert (res["pvalue"][:20] < 0.01).mean() >= 0.9
    assert np.median(res["logfc"][:20]) == pytest.approx(np.log2(3), abs=0.3)
    top = np.argsort(res["pvalue"])[:20]
    assert np.isin(top, np.arange(20)).mean() >= 0.8
    assert (res["pvalue"][20:] < 0.01).mean() < 0.03


def test_degenerate_rows_run_without_warnings():
    counts = COUNTS.copy()
    counts[5] = 0  # a row with no counts at all
    res = _no_warnings(ql_ftest, counts, DESIGN, 1, lib_size=CELLS)
    assert res["pvalue"][5] == pytest.approx(1.0) and abs(res["logfc"][5]) < 1e-8
    single = _no_warnings(ql_ftest, COUNTS[:1], DESIGN, 1, lib_size=CELLS)
    assert np.isfinite(single["pvalue"]).all()
    oneway = _no_warnings(ql_ftest, COUNTS, DESIGN[:, :2], 1, lib_size=CELLS)
    assert np.isfinite(oneway["pvalue"]).all() and oneway["pvalue"][2] < 1e-4
