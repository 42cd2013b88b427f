"""Donor-level prediction of a binary manifestation from subset shares, honestly validated.

:func:`predict_phenotype` fits an L2-penalised logistic regression (features standardised
within each training fold) and validates it by nested leave-one-out cross-validation:

- **outer loop**: each donor in turn is held out; the model is fitted on the other donors
  and scores the held-out one. Leave-one-out needs no stratification, so it works with two
  donors in the smaller class.
- **inner loop**: the penalty ``C`` is chosen on the training donors only, by the
  leave-one-out log-loss of each candidate ``C``. That inner leave-one-out uses the
  approximate leave-one-out formula of penalised GLMs (one Newton step from the full
  fit, Sherman-Morrison; Rad & Maleki 2020, JRSS-B 82:965), which is exact to second order
  and avoids ``n`` refits per candidate: with tiny classes an inner K-fold split is not
  possible anyway.
- **AUROC** of the out-of-fold linear scores ``x_i' beta_(-i)`` (the fold's intercept left
  out: it only encodes the fold's class balance, and with leave-one-out it ranks every
  held-out case below every held-out control when the features carry nothing), with a
  DeLong 95% interval (DeLong et al. 1988, midranks for ties). Pooled leave-one-out AUROC
  is pessimistic when the features carry no signal (each held-out donor is scored by a
  model fitted without it, which shifts its score against its own class; Airola et al.
  2011, Comput Stat Data Anal 55:1828): on null cohorts its mean lies below 0.5 and the
  DeLong interval misses 0.5 more often than 5 % (``benchmarks/bench_predict.py``). The
  summary reports the mean AUROC of the permuted runs (``auroc_null_mean``), the
  procedure's own chance level, and the permutation p-value is the calibrated test.
- **permutation p-value**: the labels are permuted ``n_perm`` times and the whole nested
  procedure is repeated; ``p = (1 + #{AUROC_perm >= AUROC}) / (1 + n_perm)``.

All fits of one run (every outer fold x every ``C`` x a block of permutations) are solved
together by the compiled kernel of :mod:`sccohort.stats.logistic`, which is what makes
permutations affordable (a nested run of 27 donors needs about 200 fits; the speed against
scikit-learn's solver is in ``benchmarks/bench_predict.py``). The reported coefficients come
from scikit-learn's ``LogisticRegression`` fitted on all donors with the ``C`` that the inner
criterion picks on all donors.

Covariates of the design (e.g. age) are not predictors unless ``use_covariates=True``: the
question is how well the subset shares alone predict the manifestation.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from sccohort.stats.logistic import _Folds, _nested_loo, _standardise

from ..cohort import ContrastDesign
from ..errors import InputError
from ..io.tables import CORE_COLUMNS

__all__ = ["PredictionResult", "delong_ci", "predict_phenotype", "share_logits"]

SUMMARY_COLUMNS = [
    *CORE_COLUMNS,
    "auroc",
    "auroc_null_mean",
    "n_features",
    "n_perm",
    "C",
]
DEFAULT_CS = tuple(np.logspace(-2, 1, 7).tolist())
#: Below this many donors in the smaller class a warning says the estimate is unstable.
MIN_CLASS = 5
_BLOCK_BYTES = 2**26  # memory of the fits of one block of permutations solved together


@dataclass
class PredictionResult:
    """Cross-validated prediction of one binary contrast from donor-level features.

    Attributes
    ----------
    contrast, level
        The contrast's name and its case level(s).
    predictions
        One row per donor: ``donor_id, group, y`` (1 = case), ``score`` (out-of-fold linear
        score, ranks the donors for the AUROC), ``prob`` (out-of-fold probability of being
        a case, the fold's intercept included), ``C`` (penalty chosen in that fold).
    auroc, ci_low, ci_high
        Out-of-fold AUROC and its DeLong 95% interval (clipped to [0, 1]).
    pvalue
        Permutation p-value (NaN when ``n_perm`` is 0).
    n_case, n_control
        Donors per class.
    coefficients
        Full-data fit: ``feature, coef`` (log-odds per standard deviation),
        ``odds_ratio_per_sd, rank``, sorted by ``|coef|`` descending.
    C
        Penalty chosen on all donors (for :attr:`coefficients`).
    null_auroc
        AUROCs of the permuted runs, shape (n_perm,).

    Examples
    --------
    >>> from sccohort.datasets import toy
    >>> from sccohort.stats import predict_phenotype
    >>> data = toy()
    >>> result = predict_phenotype(np.log(data.counts[["Mono_A"]] / 1000), data.design, n_perm=50)
    >>> result.to_frame("predictions").columns.tolist()[:3]
    ['donor_id', 'group', 'y']
    """

    contrast: str
    level: str
    predictions: pd.DataFrame
    auroc: float
    ci_low: float
    ci_high: float
    pvalue: float
    n_case: int
    n_control: int
    coefficients: pd.DataFrame
    C: float
    null_auroc: np.ndarray
    method: str
    params: dict = field(default_factory=dict)

    def to_frame(
        self, table: Literal["summary", "predictions", "coefficients"] = "summary"
    ) -> pd.DataFrame:
        """A tidy table of the result.

        Parameters
        ----------
        table
            ``"summary"``: one row, columns :data:`SUMMARY_COLUMNS` (``effect`` is the
            AUROC; ``auroc_null_mean`` the mean AUROC of the permuted runs, the chance
            level of this procedure; ``padj`` equals ``pvalue``, one test per contrast:
            adjust across contrasts if several are read together). ``"predictions"``: one
            row per donor. ``"coefficients"``: one row per feature.
        """
        if table == "predictions":
            return self.predictions.assign(contrast=self.contrast)
        if table == "coefficients":
            return self.coefficients.assign(contrast=self.contrast)
        if table != "summary":
            raise InputError(
                f"unknown table {table!r}",
                key="table",
                hint="Use 'summary', 'predictions' or 'coefficients'",
            )
        row = {
            "contrast": self.contrast,
            "level": self.level,
            "subset": "all",
            "effect": self.auroc,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "pvalue": self.pvalue,
            "padj": self.pvalue,
            "method": self.method,
            "n_case": self.n_case,
            "n_control": self.n_control,
            "auroc": self.auroc,
            "auroc_null_mean": float(self.null_auroc.mean()) if len(self.null_auroc) else np.nan,
            "n_features": len(self.coefficients),
            "n_perm": len(self.null_auroc),
            "C": self.C,
        }
        return pd.DataFrame([row], columns=SUMMARY_COLUMNS)


def _auroc(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUROC of ``scores`` (..., n) for labels ``y`` (..., n) in {0, 1}, ties 1/2."""
    ranks = rankdata(scores, axis=-1)
    n1 = y.sum(axis=-1)
    n0 = y.shape[-1] - n1
    u = (ranks * y).sum(axis=-1) - n1 * (n1 + 1) / 2.0
    return u / (n1 * n0)


def delong_ci(scores: np.ndarray, y: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """DeLong confidence interval of one AUROC.

    Parameters
    ----------
    scores
        Scores (n,); higher = more likely a case.
    y
        Labels (n,), 1 = case, 0 = control; at least 2 of each.
    level
        Confidence level.

    Returns
    -------
    (low, high), clipped to [0, 1]. Zero-width when the classes are perfectly separated.

    Examples
    --------
    >>> from sccohort.stats import delong_ci
    >>> delong_ci(np.array([0.9, 0.8, 0.7, 0.3, 0.4, 0.2]), np.array([1, 1, 1, 0, 0, 0]))
    (1.0, 1.0)
    """
    scores = np.asarray(scores, dtype=float)
    y = np.asarray(y).astype(bool)
    cases, controls = scores[y], scores[~y]
    psi = (cases[:, None] > controls[None, :]) + 0.5 * (cases[:, None] == controls[None, :])
    auc = psi.mean()
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    var = v10.var(ddof=1) / len(cases) + v01.var(ddof=1) / len(controls)
    half = norm.ppf(0.5 + level / 2.0) * np.sqrt(var)
    return float(max(0.0, auc - half)), float(min(1.0, auc + half))


def _check(features: pd.DataFrame, design: ContrastDesign, use_covariates: bool) -> np.ndarray:
    name = design.contrast.name
    if design.kind == "continuous":
        raise InputError(
            f"contrast '{name}' tests the continuous variable '{design.contrast.variable}'; "
            "prediction needs two groups",
            key=f"contrasts.{name}",
            hint="Predict a binary (case / control) contrast",
        )
    if not isinstance(features, pd.DataFrame):
        raise InputError(
            f"features must be a DataFrame (donors x features), got {type(features).__name__}",
            key=f"contrasts.{name}",
            hint="Pass donor-level subset shares (e.g. their logit), one row per donor",
        )
    if design.unit != "donor":
        raise InputError(
            f"contrast '{design.contrast.name}' compares samples ({design.contrast.variable}); "
            "prediction is of a donor's manifestation",
            key=f"contrasts.{design.contrast.name}",
            hint="Predict a donor-level (clinical) variable",
        )
    missing = [d for d in design.donors if d not in features.index]
    if missing:
        raise InputError(
            f"donor(s) {', '.join(map(str, missing))} of contrast '{name}' have no features",
            key=f"contrasts.{name}",
            hint="The features need one row per donor of the contrast (index = donor_id)",
        )
    if features.shape[1] == 0:
        raise InputError(
            f"no features to predict contrast '{name}' from",
            key=f"contrasts.{name}",
            hint="Pass at least one subset share",
        )
    table = features.loc[list(design.donors)]
    try:
        x = table.to_numpy(dtype=float)
    except (TypeError, ValueError) as err:
        raise InputError(
            f"features of contrast '{name}' are not all numeric",
            key=f"contrasts.{name}",
            hint="Pass numeric donor x subset shares",
        ) from err
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"feature '{table.columns[j]}' of donor '{table.index[i]}' is missing or infinite",
            column=str(table.columns[j]),
            key=f"contrasts.{name}",
            hint="Use shares with a pseudocount before taking logits",
        )
    if use_covariates:
        extra = design.matrix.drop(columns=["intercept", design.term])
        x = np.column_stack([x, extra.to_numpy(dtype=float)])
    return x


def share_logits(shares: pd.DataFrame, totals: pd.Series | np.ndarray) -> pd.DataFrame:
    """Logits of donor x subset shares, the features `predict_phenotype` is given.

    Subsets with a missing share or no cell in any donor are left out; shares are moved off
    0 and 1 by half a cell of the median sample (``0.5 / median(totals > 0)``).

    Parameters
    ----------
    shares
        Donors x subsets, shares in [0, 1] (`donor_shares`).
    totals
        Cells per sample (any length; only their median matters).

    Returns
    -------
    pandas.DataFrame
        Donors x kept subsets: ``log((share + c) / (1 - share + c))``.

    Examples
    --------
    >>> from sccohort.stats import share_logits
    >>> shares = pd.DataFrame({"A": [0.1, 0.5], "B": [0.0, 0.0]}, index=["D1", "D2"])
    >>> share_logits(shares, [100, 300]).round(3)
            A
    D1 -2.175
    D2  0.000
    """
    totals = np.asarray(totals, dtype=float)
    shares = shares.loc[:, shares.notna().all() & (shares.sum() > 0)]
    pseudo = 0.5 / max(float(np.median(totals[totals > 0])), 1.0)
    return np.log((shares + pseudo) / (1 - shares + pseudo))


def predict_phenotype(
    features: pd.DataFrame,
    design: ContrastDesign,
    *,
    n_perm: int = 200,
    Cs: Sequence[float] = DEFAULT_CS,
    use_covariates: bool = False,
    seed: int = 0,
) -> PredictionResult:
    """Predict a binary manifestation from donor-level features with nested LOO CV.

    Parameters
    ----------
    features
        Donors x features (e.g. the logit of each subset's share), index ``donor_id``;
        must hold every donor of ``design`` (others are ignored). Standardised within each
        training fold.
    design
        A binary contrast's design (case / control; a categorical variable's case level
        against its control levels counts as binary). Continuous contrasts raise
        :class:`InputError`.
    n_perm
        Label permutations for the p-value (0 = none); each repeats the whole nested
        procedure, so the time grows with it.
    Cs
        Candidate inverse penalties (scikit-learn's ``C``), chosen in the inner loop.
    use_covariates
        Add the design's covariates (e.g. age) as predictors; by default the prediction
        uses the features alone.
    seed
        Seed of the permutations.

    Returns
    -------
    PredictionResult
        Out-of-fold predictions per donor, AUROC with DeLong 95% interval, permutation
        p-value, full-data coefficients; :meth:`PredictionResult.to_frame` gives the tidy
        tables.

    Warns
    -----
    UserWarning
        When the smaller class has fewer than 5 donors.

    Examples
    --------
    >>> from sccohort.datasets import toy
    >>> from sccohort.stats import predict_phenotype
    >>> data = toy()
    >>> features = np.log(data.counts[["Mono_A"]] / 1000)
    >>> result = predict_phenotype(features, data.design, n_perm=50, seed=0)
    >>> round(result.auroc, 3), round(result.pvalue, 3)
    (1.0, 0.059)
    """
    x = _check(features, design, use_covariates)
    name = design.contrast.name
    cs = _checked_cs(n_perm, Cs)
    _warn_small_class(design, name)

    y = (design.group == "case").to_numpy(dtype=float)
    n = len(y)
    w = np.ones((n, n))
    w[np.arange(n), np.arange(n)] = 0.0  # fold f holds out donor f
    held, full = _Folds.build(x, w), _Folds.build(x, np.ones((1, n)))
    lam = 1.0 / cs

    # small matrix products only: one BLAS thread is fastest
    with threadpool_limits(limits=1, user_api="blas"):
        score, prob, c_idx, c_full = _nested_loo(held, full, y[None], lam)
        auroc = float(_auroc(score[0], y))
        ci_low, ci_high = delong_ci(score[0], y)
        null = _null_aurocs(held, full, y, lam, n_perm, seed)
    pvalue = float((1 + (null >= auroc - 1e-12).sum()) / (1 + len(null))) if len(null) else np.nan

    c_best = float(cs[int(c_full[0])])
    coef = _coefficients(x, y, c_best, features, design, use_covariates)
    predictions = pd.DataFrame(
        {
            "donor_id": list(design.donors),
            "group": design.group.to_numpy(),
            "y": y.astype(int),
            "score": score[0],
            "prob": prob[0],
            "C": cs[c_idx[0]],
        }
    )
    method = (
        "L2 logistic regression, nested leave-one-out CV (inner C by approximate LOO "
        f"log-loss); AUROC of out-of-fold scores, DeLong 95% CI, {int(n_perm)} label "
        "permutations"
    )
    return PredictionResult(
        contrast=name,
        level="/".join(design.case_levels),
        predictions=predictions,
        auroc=auroc,
        ci_low=ci_low,
        ci_high=ci_high,
        pvalue=pvalue,
        n_case=int(design.n_case),
        n_control=int(design.n_control),
        coefficients=coef,
        C=c_best,
        null_auroc=null,
        method=method,
        params={
            "n_perm": int(n_perm),
            "Cs": cs.tolist(),
            "use_covariates": use_covariates,
            "seed": seed,
        },
    )


def _checked_cs(n_perm: int, Cs: Sequence[float]) -> np.ndarray:
    """Check ``n_perm`` and return the candidate ``Cs`` sorted, as an array."""
    if int(n_perm) < 0:
        raise InputError(
            f"n_perm = {n_perm} is negative", key="n_perm", hint="Use 0 (no p-value) or more"
        )
    cs = np.asarray(sorted(float(c) for c in Cs))
    if len(cs) == 0 or not np.all(np.isfinite(cs)) or (cs <= 0).any():
        raise InputError(
            f"Cs = {list(Cs)} must be positive finite numbers",
            key="Cs",
            hint="Use e.g. numpy.logspace(-2, 1, 7)",
        )
    return cs


def _warn_small_class(design: ContrastDesign, name: str) -> None:
    """Warn (at the caller of `predict_phenotype`) when the smaller class is small."""
    small = min(design.n_case, design.n_control)
    if small < MIN_CLASS:
        which = "case" if design.n_case <= design.n_control else "control"
        warnings.warn(
            f"contrast '{name}': the smaller class ({which}) has only {small} donors "
            f"(< {MIN_CLASS}); the cross-validated AUROC and its interval are unstable, rely "
            "on the permutation p-value",
            UserWarning,
            stacklevel=3,
        )


def _null_aurocs(
    held: _Folds, full: _Folds, y: np.ndarray, lam: np.ndarray, n_perm: int, seed: int
) -> np.ndarray:
    """AUROCs of the nested procedure on ``n_perm`` seeded permutations of the labels ``y``."""
    n = len(y)
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(y) for _ in range(int(n_perm))]
    # permutations solved together, bounded to about 64 MB of fits and leverages
    r = full.x1.shape[2]
    block = max(1, int(_BLOCK_BYTES // (8 * (n + 1) * len(lam) * (2 * r + 3 * n))))
    null = np.zeros(len(perms))
    for start in range(0, len(perms), block):
        labels = np.array(perms[start : start + block])
        scores = _nested_loo(held, full, labels, lam, c_full=False)[0]
        null[start : start + len(labels)] = _auroc(scores, labels)
    return null


def _coefficients(
    x: np.ndarray,
    y: np.ndarray,
    c_best: float,
    features: pd.DataFrame,
    design: ContrastDesign,
    use_covariates: bool,
) -> pd.DataFrame:
    """Coefficients of scikit-learn's fit on all donors (standardised), largest first."""
    xs = _standardise(x, np.ones((1, len(y))))[0][0]
    model = LogisticRegression(C=c_best, tol=1e-8, max_iter=1000).fit(xs, y)
    names = list(map(str, features.columns))
    if use_covariates:
        names += [c for c in design.matrix.columns if c not in ("intercept", design.term)]
    coef = pd.DataFrame({"feature": names, "coef": model.coef_[0]})
    coef["odds_ratio_per_sd"] = np.exp(coef["coef"])
    coef = coef.iloc[np.argsort(-np.abs(coef["coef"].to_numpy()), kind="stable")]
    return coef.reset_index(drop=True).assign(rank=lambda d: np.arange(1, len(d) + 1))
