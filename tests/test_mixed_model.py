"""The donor random-intercept model against lme4 + lmerTest, statsmodels and limma's voom."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from sccohort.errors import InputError
from sccohort.stats import mixed_model
from sccohort.stats.mixed_model import random_intercept, voom_weights

# 7 donors with 1-3 samples; 'time' is sample-level (donors 0, 3, 5 at 0 only, 6 at 1 only),
# 'grp' donor-level
DONOR = np.array([0, 1, 1, 1, 2, 2, 3, 4, 4, 4, 5, 5, 6, 6])
TIME = np.array([0, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 1], dtype=float)
GRP = np.array([0, 1, 1, 1, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0], dtype=float)
X = np.column_stack([np.ones(14), TIME, GRP])
Y = np.array(
    [
        [-0.022, -0.488, 1.963, 1.923, 1.688, 1.722, 0.175, -1.812, -0.269, -0.412, -1.721,
         -0.491, 1.037, 1.655],
        [0.757, 1.974, 1.788, 0.729, 1.192, 0.915, -1.023, 0.306, -1.31, 0.143, -1.651, 0.739,
         0.127, 1.588],
    ]
).T  # fmt: skip
W = np.array(
    [0.699, 2.118, 0.846, 2.734, 0.886, 0.389, 0.842, 1.234, 1.566, 2.747, 2.183, 1.216, 0.346,
     0.732]
)  # fmt: skip

# R 4.2, lme4 1.1.31, lmerTest 3.1.3:
# lmer(y ~ time + grp + (1|donor), REML = TRUE, weights = w), summary(m)$coefficients[term, ]
# (estimate, SE, Satterthwaite df, p), VarCorr donor variance, sigma(m)^2
LMERTEST = {
    (0, False, "time"): (1.4338128, 0.43892942, 8.3336863, 0.010795482, 0.92361617, 0.4071311),
    (0, False, "grp"): (-0.003670123, 0.83383712, 5.612096, 0.99664038, 0.92361617, 0.4071311),
    (0, True, "time"): (1.7328771, 0.39261029, 7.7675696, 0.0024119831, 1.2209036, 0.43195697),
    (0, True, "grp"): (-0.039899184, 0.93960623, 5.410476, 0.96765209, 1.2209036, 0.43195697),
    (1, False, "time"): (-0.18925093, 0.61476658, 9.6213999, 0.76476313, 0.67697295, 0.91816452),
    (1, False, "grp"): (-0.41775933, 0.85331832, 4.9002791, 0.64556356, 0.67697295, 0.91816452),
    (1, True, "time"): (-0.4604135, 0.6094373, 9.4926053, 0.4682959, 0.99445673, 1.155815),
    (1, True, "grp"): (-0.64746754, 0.99348577, 5.341977, 0.54158609, 0.99445673, 1.155815),
}
KEYS = ("effect", "se", "df", "pvalue", "tau2", "sigma2")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("term", ["time", "grp"])
def test_matches_lmertest(weighted: bool, term: str) -> None:
    x = pd.DataFrame(X, columns=["intercept", "time", "grp"])
    res = random_intercept(Y, x, DONOR, term, weights=W if weighted else None)
    for feature in range(2):
        expected = LMERTEST[(feature, weighted, term)]
        got = [res[key][feature] for key in KEYS]
        np.testing.assert_allclose(got, expected, rtol=2e-5)
    assert not res["singular"].any() and not res["fixed_only"].any()


def test_singular_fit_matches_lmertest() -> None:
    # lme4: "boundary (singular) fit", donor variance 0; lmerTest: df = n - p = 11
    y = [-0.652, -0.175, 1.664, 0.659, -1.641, -0.005, -0.623, 0.149, -1.608, 0.242, 0.235,
         1.576, 0.317, 0.511]  # fmt: skip
    res = random_intercept(y, X, DONOR, 1)
    assert res["singular"][0] and res["tau2"][0] == 0.0
    np.testing.assert_allclose(
        [res[k][0] for k in ("effect", "se", "df", "pvalue", "sigma2")],
        [0.7316493506, 0.4710924824, 11.0, 0.14868196437, 0.7120194073],
        rtol=1e-7,
    )
    ols = sm.OLS(np.asarray(y), X).fit()
    np.testing.assert_allclose(res["se"][0], ols.bse[1], rtol=1e-10)


def _unbalanced(seed: int, n_donors: int = 12, n_features: int = 3):
    rng = np.random.default_rng(seed)
    donor = np.repeat(np.arange(n_donors), rng.integers(1, 4, size=n_donors))
    n = len(donor)
    x = np.column_stack(
        [np.ones(n), rng.integers(0, 2, size=n), (np.arange(n_donors) % 2)[donor]]
    ).astype(float)
    donor_sd = np.linspace(0.6, 1.5, n_features)
    y = rng.normal(size=(n_donors, n_features))[donor] * donor_sd + rng.normal(size=(n, n_features))
    return y + 0.5 * x[:, [1]], x, donor


@pytest.mark.parametrize("seed", [2, 6, 8])
def test_matches_statsmodels(seed: int) -> None:
    y, x, donor = _unbalanced(seed)
    res = random_intercept(y, x, donor, 1)
    for j in range(y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.MixedLM(y[:, j], x, groups=donor).fit(reml=True)
        assert fit.converged
        tau2, sigma2 = float(np.asarray(fit.cov_re)[0, 0]), float(fit.scale)
        assert tau2 > 0.05
        np.testing.assert_allclose(res["effect"][j], fit.fe_params[1], rtol=1e-4)
        np.testing.assert_allclose([res["tau2"][j], res["sigma2"][j]], [tau2, sigma2], rtol=1e-4)
        # lme4's SE, sqrt of sigma2 (x' V^-1 x)^-1 at the estimates; statsmodels' bse_fe
        # comes from its joint Hessian of fixed and variance parameters, which differs
        v = sigma2 * np.eye(len(donor)) + tau2 * (donor[:, None] == donor[None, :])
        se = np.sqrt(np.linalg.inv(x.T @ np.linalg.solve(v, x))[1, 1])
        np.testing.assert_allclose(res["se"][j], se, rtol=1e-4)


def test_all_singleton_donors_fit_fixed_effects() -> None:
    y, x, _ = _unbalanced(4)
    res = random_intercept(y, x, np.arange(len(y)), 2, weights=np.linspace(0.5, 2, len(y)))
    assert res["fixed_only"].all() and res["singular"].all()
    for j in range(y.shape[1]):
        wls = sm.WLS(y[:, j], x, weights=np.linspace(0.5, 2, len(y))).fit()
        np.testing.assert_allclose(res["effect"][j], wls.params[2], rtol=1e-10)
        np.testing.assert_allclose(res["se"][j], wls.bse[2], rtol=1e-10)
        np.testing.assert_allclose(res["pvalue"][j], wls.pvalues[2], rtol=1e-8)
        assert res["df"][j] == len(y) - 3


def test_equal_weights_equal_unweighted() -> None:
    y, x, donor = _unbalanced(5)
    plain = random_intercept(y, x, donor, 1)
    weighted = random_intercept(y, x, donor, 1, weights=np.full(len(y), 3.7))
    for key in ("effect", "se", "df", "pvalue", "tau2"):
        np.testing.assert_allclose(weighted[key], plain[key], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(weighted["sigma2"], 3.7 * plain["sigma2"], rtol=1e-6)


def test_tiny_weight_leaves_a_sample_out() -> None:
    y, x, donor = _unbalanced(6, n_features=1)
    y[3] += 25.0  # an outlier that moves the unweighted fit
    w = np.ones(len(y))
    w[3] = 1e-9
    keep = np.arange(len(y)) != 3
    without = random_intercept(y[keep], x[keep], donor[keep], 1)
    weighted = random_intercept(y, x, donor, 1, weights=w)
    plain = random_intercept(y, x, donor, 1)
    # not exactly the fit without it: the sample still counts in REML's n - p
    assert abs(weighted["effect"][0] - without["effect"][0]) < 0.02
    np.testing.assert_allclose(weighted["se"], without["se"], rtol=0.05)
    assert abs(plain["effect"][0] - without["effect"][0]) > 0.5


def test_per_feature_weights_and_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    y, x, donor = _unbalanced(7, n_features=5)
    w = np.random.default_rng(0).uniform(0.3, 3.0, size=y.shape)
    whole = random_intercept(y, x, donor, 1, weights=w)
    monkeypatch.setattr(mixed_model, "_CHUNK", 2)
    chunked = random_intercept(y, x, donor, 1, weights=w)
    for j in range(y.shape[1]):
        one = random_intercept(y[:, j], x, donor, 1, weights=w[:, j])
        for key in ("effect", "se", "df", "tau2", "sigma2"):
            np.testing.assert_allclose(whole[key][j], one[key][0], rtol=1e-6)
            np.testing.assert_allclose(chunked[key][j], whole[key][j], rtol=1e-12)


def test_null_calibration() -> None:
    # 18 donors with 1-3 samples; a sample-level 0/1 (some donors on one side only) and a
    # donor-level 0/1; donor SD 0 to 1.5 across 2,000 null features
    rng = np.random.default_rng(11)
    n_donors, n_features = 18, 2000
    donor = np.repeat(np.arange(n_donors), rng.integers(1, 4, size=n_donors))
    n = len(donor)
    x = np.column_stack(
        [np.ones(n), rng.integers(0, 2, size=n), (np.arange(n_donors) % 2)[donor]]
    ).astype(float)
    donor_sd = rng.uniform(0.0, 1.5, size=n_features)
    y = rng.normal(size=(n_donors, n_features))[donor] * donor_sd + rng.normal(size=(n, n_features))
    for term in (1, 2):
        frac = (random_intercept(y, x, donor, term)["pvalue"] < 0.05).mean()
        assert 0.03 <= frac <= 0.07, (term, frac)


def test_constant_and_exact_features_give_nan() -> None:
    y, x, donor = _unbalanced(8, n_features=4)
    y[:, 1] = 2.5
    y[:, 2] = x @ [1.0, 2.0, -1.0]  # no residual
    y[:, 3] = x[:, 1] + donor  # no residual within donors
    res = random_intercept(y, x, donor, 1)
    assert np.isfinite(res["pvalue"][0]) and np.isnan(res["pvalue"][1:]).all()
    assert np.isnan(res["effect"][1]) and res["effect"][2:] == pytest.approx([2.0, 1.0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y": np.full(14, np.nan)}, "NaN"),
        ({"x": np.column_stack([X, X[:, 1]])}, "full column rank"),
        ({"groups": DONOR[:-1]}, "groups"),
        ({"weights": -W}, "positive"),
        ({"term": 5}, "column index"),
        ({"term": "age"}, "not a column"),
    ],
)
def test_input_errors(change: dict, message: str) -> None:
    args = {"y": Y, "x": X, "groups": DONOR, "term": 1, "weights": None} | change
    with pytest.raises(InputError, match=message):
        random_intercept(
            args["y"], args["x"], args["groups"], args["term"], weights=args["weights"]
        )


# limma 3.54.1: v <- voom(t(COUNTS), DESIGN); t(v$weights) gene by gene (6 samples each)
COUNTS = np.array(
    [
        [13, 67, 10, 0, 55, 0, 10, 14, 175, 33, 8, 0, 6, 17, 13, 9, 2, 0, 0, 22],
        [22, 25, 4, 0, 122, 0, 13, 42, 116, 43, 3, 2, 19, 140, 32, 4, 0, 0, 5, 120],
        [29, 39, 34, 0, 93, 0, 14, 64, 270, 43, 4, 1, 48, 91, 55, 2, 12, 0, 7, 61],
        [35, 52, 8, 0, 42, 0, 2, 18, 617, 15, 1, 0, 12, 103, 18, 6, 8, 0, 1, 104],
        [21, 86, 9, 0, 48, 0, 9, 23, 595, 30, 4, 0, 20, 156, 24, 8, 6, 0, 8, 56],
        [27, 88, 5, 0, 37, 0, 15, 28, 391, 38, 6, 0, 21, 90, 35, 1, 5, 0, 5, 57],
    ]
)
DESIGN = np.column_stack([np.ones(6), [0, 0, 0, 1, 1, 1], [0.2, -1.1, 0.5, 1.3, -0.4, 0.9]])
LIMMA_WEIGHTS = np.array(
    [
        1.2528056, 1.4614558, 2.0402214, 2.015305, 1.8416405, 1.8097119, 2.0389734, 1.8180388,
        1.4625906, 1.4585806, 1.438037, 1.4435262, 0.89083926, 0.7927733, 1.5883425, 0.99721985,
        0.61123668, 0.76545016, 2.144551, 2.144551, 2.144551, 2.144551, 2.144551, 2.144551,
        1.473826, 1.8144173, 1.7372684, 1.7854262, 1.4827077, 1.950333, 2.144551, 2.144551,
        2.144551, 2.144551, 2.144551, 2.144551, 0.80466651, 1.3671801, 1.2058704, 0.69288549,
        0.91510051, 0.64676641, 1.7102764, 1.8530151, 1.6768893, 1.7339032, 1.9051771, 1.5072816,
        2.2005221, 2.5351071, 4.7341731, 5.4216622, 5.4216622, 5.4216622, 1.9349423, 1.5964999,
        1.5843457, 1.8481962, 2.0248524, 1.616902, 0.52125061, 0.64265713, 0.70985124,
        0.52310835, 0.52794895, 0.57014353, 2.1260853, 0.95601248, 1.1425146, 2.144551, 2.144551,
        2.144551, 1.0904476, 1.5123207, 1.7637535, 1.451389, 1.4967586, 1.240523, 1.8889956,
        1.676811, 1.448523, 1.5151016, 3.2147413, 1.467783, 1.5425011, 2.0397833, 1.8128027,
        1.97434, 1.9713876, 1.6211471, 0.56191195, 0.69300639, 0.62695518, 0.52666804,
        0.67022614, 0.52063181, 0.69719384, 1.4827703, 0.66578608, 1.1483226, 0.58531385,
        0.77047499, 2.144551, 2.144551, 2.144551, 2.144551, 2.144551, 2.144551, 1.0303133,
        0.61780436, 0.66934263, 0.59495385, 0.81308361, 0.57814532, 1.8936944, 1.4412851,
        1.4424043, 1.4426247, 1.5133145, 1.4703231,
    ]
).reshape(20, 6).T  # fmt: skip
LIMMA_E_GENE1 = [14.856733, 14.945663, 15.05266, 15.054792, 14.249309, 14.981609]


def test_voom_matches_limma() -> None:
    logcpm, weights = voom_weights(COUNTS, DESIGN)
    np.testing.assert_allclose(weights, LIMMA_WEIGHTS, rtol=1e-6)
    np.testing.assert_allclose(logcpm[:, 0], LIMMA_E_GENE1, rtol=1e-7)
    lib = COUNTS.sum(axis=1) * np.array([0.9, 1.1, 1.0, 0.95, 1.05, 1.0])
    logcpm_lib, _ = voom_weights(COUNTS, DESIGN, lib_size=lib)
    np.testing.assert_allclose(logcpm_lib, np.log2((COUNTS + 0.5) / (lib[:, None] + 1) * 1e6))


def test_voom_errors() -> None:
    with pytest.raises(InputError, match="negative"):
        voom_weights(-COUNTS, DESIGN)
    with pytest.raises(InputError, match="rows"):
        voom_weights(COUNTS, DESIGN[:5])
