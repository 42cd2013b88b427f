"""The reference study's classic donor-level tests of subset proportions.

- `ks_test`: two-sample Kolmogorov-Smirnov per subset, case vs control, Bonferroni over the
  subsets of a level (the study's SSc vs HD comparison);
- `kruskal_dunn`: Kruskal-Wallis per subset across >= 3 groups, then Dunn's post-hoc test
  (the study's comparison by anti-RNA-polymerase-III status);
- `proportion_biplot`: PCA of the donor x subset proportion matrix (the study's FactoMineR
  biplot), as data.

Effects are ``log2((mean share of group 1 + c) / (mean share of group 2 + c))`` with the
pseudo-share ``c`` = half the smallest positive share in the matrix (about half a cell of
the largest sample; it keeps log 0 away and is negligible unless a group's mean share is
near 0), and a percentile confidence interval from a donor bootstrap (donors resampled with
replacement within each group, seeded).

Dunn's test is written here (a dozen lines): scipy has none and scikit-posthocs would be a
dependency for one formula (checked against both in tests/test_stats_classic.py).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import combinations
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.decomposition import PCA

from ..cohort import ContrastDesign
from ..errors import InputError
from ..multitest import adjust_pvalues

__all__ = [
    "dunn_z",
    "kruskal_dunn",
    "ks_test",
    "proportion_biplot",
    "pseudo_share",
]

_ADJUST = ("bonferroni", "holm")


def _numeric_shares(shares: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(shares, pd.DataFrame) or shares.shape[1] == 0:
        raise InputError(
            "shares must be a donors x subsets DataFrame with at least one subset",
            key="shares",
            hint="Build it with sccohort.stats.composition.donor_shares(table, level, samples)",
        )
    try:
        values = shares.astype(float)
    except (TypeError, ValueError) as err:
        raise InputError(
            "shares must be numeric", key="shares", hint="Pass shares in [0, 1], not labels"
        ) from err
    if (values < 0).any().any():
        col = values.columns[(values < 0).any()][0]
        raise InputError(
            "negative share", column=str(col), hint="Shares are cell fractions in [0, 1]"
        )
    values.index = values.index.astype(str)
    return values


def _donor_rows(shares: pd.DataFrame, donors: pd.Index, what: str) -> pd.DataFrame:
    missing = [d for d in donors if d not in shares.index]
    if missing:
        raise InputError(
            f"{len(missing)} donor(s) of {what} have no shares: {', '.join(missing[:5])}",
            key="shares",
            hint="Pass the shares of every donor of the design (index donor_id)",
        )
    return shares.loc[list(donors)]


def pseudo_share(values: np.ndarray) -> float:
    """Half the smallest positive finite value (1.0 when there is none).

    Parameters
    ----------
    values
        Shares, any shape.

    Returns
    -------
    float
    """
    v = np.asarray(values, dtype=float)
    pos = v[np.isfinite(v) & (v > 0)]
    return 0.5 * float(pos.min()) if pos.size else 1.0


def _log2_ratio(mean_a: np.ndarray, mean_b: np.ndarray, c: float) -> np.ndarray:
    return np.log2((mean_a + c) / (mean_b + c))


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means (n_boot x subsets) of a donors x subsets matrix, NaN ignored."""
    n = x.shape[0]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)
    ok = np.isfinite(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights @ np.where(ok, x, 0.0)) / (weights @ ok.astype(float))


def _boot_ci(
    a: np.ndarray, b: np.ndarray, c: float, n_boot: int, rng: np.random.Generator, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the log2 mean ratio a / b per column (donors resampled per group)."""
    ratios = _log2_ratio(_boot_means(a, n_boot, rng), _boot_means(b, n_boot, rng), c)
    q = [(1 - level) / 2, (1 + level) / 2]
    out = np.full((2, a.shape[1]), np.nan)
    finite = np.isfinite(ratios).any(axis=0)
    if finite.any():
        out[:, finite] = np.nanquantile(ratios[:, finite], q, axis=0)
    return out[0], out[1]


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's 'Mean of empty slice' warnings for all-NaN columns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _check_boot(n_boot: int, ci: float) -> None:
    if int(n_boot) < 1:
        raise InputError(f"n_boot must be >= 1, got {n_boot}", key="n_boot")
    if not 0 < ci < 1:
        raise InputError(f"ci must be in (0, 1), got {ci}", key="ci", hint="e.g. 0.95")


def ks_test(
    shares: pd.DataFrame,
    design: ContrastDesign,
    level: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Two-sided two-sample Kolmogorov-Smirnov test per subset, Bonferroni over the subsets.

    Parameters
    ----------
    shares
        Donors x subsets (index ``donor_id``), the subsets of one level; NaN (a donor without
        cells of the subset's parent) leaves that donor out of that subset.
    design
        A binary (or case-vs-rest categorical) contrast design; every donor of
        ``design.units`` (donors, or the samples of an unpaired sample-level design) must
        be in ``shares``.
    level
        Name of the level, copied into the ``level`` column.
    n_boot, seed, ci
        Donor bootstrap of the effect's confidence interval (resamples, seed, coverage).

    Returns
    -------
    pandas.DataFrame
        One row per subset: the core columns (``effect`` = log2 mean share ratio case /
        control with the module's pseudo-share, bootstrap percentile CI; ``pvalue`` from
        ``scipy.stats.ks_2samp(method="auto")``, exact up to 10,000 donors per group;
        ``padj`` = min(1, p x number of tested subsets); ``method = "ks_bonferroni"``;
        ``n_case`` / ``n_control`` donors with a share) plus ``statistic`` (D),
        ``mean_case``, ``mean_control``, ``pseudo_share``.

    Examples
    --------
    >>> from sccohort.stats import ks_test
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> design, counts, totals = data.design, data.counts, data.totals
    >>> ks_test(counts / totals, design, "subset", seed=0)[["subset", "pvalue", "padj"]].round(4)
       subset  pvalue    padj
    0  Mono_A  0.0286  0.0571
    1     T_B  1.0000  1.0000
    """
    name = design.contrast.name
    if design.is_continuous or design.paired or design.mixed:
        why = "is continuous" if design.is_continuous else "is compared within donor (paired)"
        raise InputError(
            f"the Kolmogorov-Smirnov test compares two independent groups; "
            f"'{design.contrast.variable}' {why}",
            key=f"contrasts.{name}",
            hint="Use the default test (compare_abundance): it fits continuous variables and "
            "pairs samples",
        )
    _check_boot(n_boot, ci)
    values = _donor_rows(_numeric_shares(shares), design.units, f"contrast '{name}'")
    group = design.group.loc[values.index].astype(str)
    a = values[group == "case"].to_numpy()
    b = values[group == "control"].to_numpy()
    if len(a) == 0 or len(b) == 0:
        raise InputError(
            f"contrast '{name}' has {len(a)} case and {len(b)} control donors",
            key=f"contrasts.{name}",
            hint="Both groups need at least one donor with a sample",
        )
    c = pseudo_share(values.to_numpy())
    subsets = [str(s) for s in values.columns]
    n = len(subsets)
    stat = np.full(n, np.nan)
    pval = np.full(n, np.nan)
    n_case = np.isfinite(a).sum(axis=0)
    n_control = np.isfinite(b).sum(axis=0)
    for j in range(n):
        x, y = a[:, j][np.isfinite(a[:, j])], b[:, j][np.isfinite(b[:, j])]
        if len(x) and len(y):
            res = stats.ks_2samp(x, y, alternative="two-sided", method="auto")
            stat[j], pval[j] = res.statistic, res.pvalue
    with np.errstate(invalid="ignore"), _quiet():
        mean_a, mean_b = np.nanmean(a, axis=0), np.nanmean(b, axis=0)
        low, high = _boot_ci(a, b, c, int(n_boot), np.random.default_rng(seed), ci)
    return pd.DataFrame(
        {
            "contrast": name,
            "level": level,
            "subset": subsets,
            "effect": _log2_ratio(mean_a, mean_b, c),
            "ci_low": low,
            "ci_high": high,
            "pvalue": pval,
            "padj": adjust_pvalues(pval, "bonferroni"),
            "method": "ks_bonferroni",
            "n_case": n_case.astype(int),
            "n_control": n_control.astype(int),
            "statistic": stat,
            "mean_case": mean_a,
            "mean_control": mean_b,
            "pseudo_share": c,
        }
    )


def _group_levels(groups: pd.Series) -> list[str]:
    present = groups.dropna()
    if isinstance(groups.dtype, pd.CategoricalDtype):
        used = set(present.astype(str))
        return [str(c) for c in groups.cat.categories if str(c) in used]
    return sorted(set(present.astype(str)))


def dunn_z(values: np.ndarray, labels: np.ndarray, levels: list[str]) -> pd.DataFrame:
    """Dunn's (1964) z statistics for all pairs of groups, tie-corrected, two-sided.

    ``z = (R_i - R_j) / sqrt((N (N + 1) / 12 - sum(t^3 - t) / (12 (N - 1))) (1/n_i + 1/n_j))``
    with ``R`` the mean rank of a group among all N values (average ranks for ties) and
    ``t`` the size of each group of ties; ``p = 2 (1 - Phi(|z|))``, as R's ``dunn.test``
    and scikit-posthocs' ``posthoc_dunn`` compute them.

    Parameters
    ----------
    values
        Observations (N,), finite.
    labels
        Group of each observation (N,).
    levels
        Groups in order; pairs are ``(levels[i], levels[j])`` for i < j.

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``group1, group2, z`` (positive when group1 ranks higher),
        ``pvalue``, ``mean_rank1``, ``mean_rank2``, ``n1``, ``n2``. Pairs with an empty
        group, or all values tied, get NaN.
    """
    return pd.DataFrame(_dunn_rows(values, labels, levels), columns=list(_DUNN_COLUMNS))


_DUNN_COLUMNS = ("group1", "group2", "z", "pvalue", "mean_rank1", "mean_rank2", "n1", "n2")


def _dunn_rows(values: np.ndarray, labels: np.ndarray, levels: list[str]) -> list[tuple]:
    values = np.asarray(values, dtype=float)
    labels = np.asarray(labels).astype(str)
    n_all = len(values)
    ranks = stats.rankdata(values)
    _, tie_sizes = np.unique(values, return_counts=True)
    ties = float(np.sum(tie_sizes.astype(float) ** 3 - tie_sizes)) / (12.0 * max(n_all - 1, 1))
    var = n_all * (n_all + 1) / 12.0 - ties if n_all > 1 else 0.0
    rows = []
    for g1, g2 in combinations(levels, 2):
        r1, r2 = ranks[labels == g1], ranks[labels == g2]
        n1, n2 = len(r1), len(r2)
        m1 = float(r1.mean()) if n1 else np.nan
        m2 = float(r2.mean()) if n2 else np.nan
        if n1 and n2 and var > 1e-12:
            z = (m1 - m2) / math.sqrt(var * (1.0 / n1 + 1.0 / n2))
            p = math.erfc(abs(z) / math.sqrt(2.0))  # = 2 (1 - Phi(|z|))
        else:
            z = p = np.nan
        rows.append((g1, g2, z, p, m1, m2, n1, n2))
    return rows


def kruskal_dunn(
    shares: pd.DataFrame,
    groups: pd.Series,
    level: str,
    *,
    adjust: Literal["bonferroni", "holm"] = "bonferroni",
    n_boot: int = 2000,
    seed: int = 0,
    ci: float = 0.95,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Kruskal-Wallis test per subset across >= 3 groups, then Dunn's pairwise test.

    Parameters
    ----------
    shares
        Donors x subsets (index ``donor_id``); NaN leaves the donor out of that subset.
    groups
        Donor -> group (index ``donor_id``); donors with a missing group are left out. Its
        ``name`` names the contrast (``"group"`` if unnamed). Group order: categories if
        categorical, else sorted.
    level
        Name of the level, copied into the ``level`` column.
    adjust
        ``"bonferroni"`` (the study's choice) or ``"holm"``: applied to the omnibus p-values
        over the level's subsets, and to Dunn's p-values over the pairs of each subset (as
        R's ``dunn.test`` and scikit-posthocs adjust).
    n_boot, seed, ci
        Donor bootstrap of the pairwise effects' confidence intervals.

    Returns
    -------
    omnibus : pandas.DataFrame
        One row per subset: core columns (``contrast`` = the grouping's name; ``effect``,
        ``ci_low``, ``ci_high`` NaN: an omnibus test has no direction; ``pvalue`` from
        ``scipy.stats.kruskal`` (tie-corrected chi-square approximation); ``method =
        "kruskal_wallis_<adjust>"``; ``n_case`` = donors tested, ``n_control`` = 0), plus
        ``H``, ``df``, ``epsilon_sq`` (H / (N - 1), the rank effect size) and ``n_groups``.
    pairs : pandas.DataFrame
        One row per subset x pair: core columns (``contrast = "<name>: <g1> vs <g2>"``,
        ``effect`` = log2 mean share ratio g1 / g2 with bootstrap CI, ``method =
        "dunn_<adjust>"``, ``n_case`` / ``n_control`` = donors in g1 / g2), plus ``group1``,
        ``group2``, ``z``, ``mean_rank1``, ``mean_rank2``.

    Examples
    --------
    >>> from sccohort.stats import kruskal_dunn
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> groups = pd.Series(list("aaabbbcc"), index=data.design.donors, name="grade")
    >>> omnibus, pairs = kruskal_dunn(data.counts / data.totals, groups, "subset", seed=0)
    >>> omnibus[["subset", "pvalue"]].round(3)
       subset  pvalue
    0  Mono_A   0.208
    1     T_B   0.986
    """
    if adjust not in _ADJUST:
        raise InputError(
            f"unknown adjustment {adjust!r}", key="adjust", hint="use 'bonferroni' or 'holm'"
        )
    _check_boot(n_boot, ci)
    name, groups, levels = _dunn_grouping(groups)
    values = _donor_rows(_numeric_shares(shares), groups.index, f"grouping '{name}'")
    labels = groups.loc[values.index].astype(str).to_numpy()
    x = values.to_numpy()
    subsets = [str(s) for s in values.columns]
    c = pseudo_share(x)
    rng = np.random.default_rng(seed)
    omni_rows, pair_rows = _kruskal_dunn_rows(x, labels, levels, subsets, adjust)
    omnibus = _omnibus_frame(omni_rows, name, level, adjust)
    pairs = pd.DataFrame(pair_rows, columns=["subset", *_DUNN_COLUMNS, "padj"])
    effect, low, high = _pair_effects(x, labels, levels, len(pairs), c, int(n_boot), rng, ci)
    return omnibus, _pairs_frame(pairs, effect, low, high, name, level, adjust)


def _dunn_grouping(groups: pd.Series) -> tuple[str, pd.Series, list[str]]:
    """The grouping's name, its donors with a group (index as str) and its >= 3 levels."""
    if not isinstance(groups, pd.Series):
        raise InputError("groups must be a pandas Series donor -> group", key="groups")
    name = str(groups.name) if groups.name is not None else "group"
    groups = groups.dropna()
    groups.index = groups.index.astype(str)
    levels = _group_levels(groups)
    if len(levels) < 3:
        raise InputError(
            f"Kruskal-Wallis + Dunn needs a grouping with >= 3 levels; '{name}' has "
            f"{len(levels)} ({', '.join(levels)})",
            key="groups",
            hint="Compare two groups with ks_test or the association test",
        )
    return name, groups, levels


def _kruskal_dunn_rows(
    x: np.ndarray, labels: np.ndarray, levels: list[str], subsets: list[str], adjust: str
) -> tuple[list[tuple], list[tuple]]:
    """Kruskal-Wallis rows and Dunn rows (p-values adjusted over each subset's pairs)."""
    omni_rows = []
    pair_rows: list[tuple] = []
    for j, subset in enumerate(subsets):
        ok = np.isfinite(x[:, j])
        v, lab = x[ok, j], labels[ok]
        samples = [v[lab == g] for g in levels if (lab == g).any()]
        h = p = np.nan
        if len(samples) >= 2 and len(np.unique(v)) > 1:
            h, p = stats.kruskal(*samples)
        n = int(ok.sum())
        omni_rows.append((subset, h, p, n, len(samples) - 1, len(samples)))
        dunn = _dunn_rows(v, lab, levels)
        padj = adjust_pvalues(np.array([r[3] for r in dunn], dtype=float), adjust)
        pair_rows += [(subset, *r, q) for r, q in zip(dunn, padj, strict=True)]
    return omni_rows, pair_rows


def _omnibus_frame(omni_rows: list[tuple], name: str, level: str, adjust: str) -> pd.DataFrame:
    """The omnibus table of `kruskal_dunn` from its Kruskal-Wallis rows."""
    omni = pd.DataFrame(omni_rows, columns=["subset", "H", "pvalue", "n", "df", "n_groups"])
    return pd.DataFrame(
        {
            "contrast": name,
            "level": level,
            "subset": omni["subset"],
            "effect": np.nan,
            "ci_low": np.nan,
            "ci_high": np.nan,
            "pvalue": omni["pvalue"],
            "padj": adjust_pvalues(omni["pvalue"].to_numpy(), adjust),
            "method": f"kruskal_wallis_{adjust}",
            "n_case": omni["n"].astype(int),
            "n_control": 0,
            "H": omni["H"],
            "df": omni["df"].astype(int),
            "epsilon_sq": omni["H"] / (omni["n"] - 1).where(omni["n"] > 1),
            "n_groups": omni["n_groups"].astype(int),
        }
    )


def _pair_effects(
    x: np.ndarray,
    labels: np.ndarray,
    levels: list[str],
    n_rows: int,
    c: float,
    n_boot: int,
    rng: np.random.Generator,
    ci: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Log2 mean share ratio and bootstrap CI of each subset x pair row (subset-major)."""
    effect = np.full(n_rows, np.nan)
    low = np.full(n_rows, np.nan)
    high = np.full(n_rows, np.nan)
    n_subsets = x.shape[1]
    n_pairs = len(levels) * (len(levels) - 1) // 2
    with np.errstate(invalid="ignore"), _quiet():
        for k, (g1, g2) in enumerate(combinations(levels, 2)):
            a, b = x[labels == g1], x[labels == g2]
            rows = np.arange(n_subsets) * n_pairs + k  # pairs are subset-major
            effect[rows] = _log2_ratio(np.nanmean(a, axis=0), np.nanmean(b, axis=0), c)
            low[rows], high[rows] = _boot_ci(a, b, c, n_boot, rng, ci)
    return effect, low, high


def _pairs_frame(
    pairs: pd.DataFrame,
    effect: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    name: str,
    level: str,
    adjust: str,
) -> pd.DataFrame:
    """The pairwise table of `kruskal_dunn` from its Dunn rows and effects."""
    return pd.DataFrame(
        {
            "contrast": [
                f"{name}: {g1} vs {g2}" for g1, g2 in zip(pairs.group1, pairs.group2, strict=True)
            ],
            "level": level,
            "subset": pairs["subset"],
            "effect": effect,
            "ci_low": low,
            "ci_high": high,
            "pvalue": pairs["pvalue"],
            "padj": pairs["padj"],
            "method": f"dunn_{adjust}",
            "n_case": pairs["n1"].astype(int),
            "n_control": pairs["n2"].astype(int),
            "group1": pairs["group1"],
            "group2": pairs["group2"],
            "z": pairs["z"],
            "mean_rank1": pairs["mean_rank1"],
            "mean_rank2": pairs["mean_rank2"],
        }
    )


def proportion_biplot(
    shares: pd.DataFrame, groups: pd.Series | None = None, *, n_components: int = 2
) -> dict:
    """PCA of the donor x subset proportions, as the study's FactoMineR biplot (data only).

    Each subset is centred and scaled to unit variance (population SD, divisor n, as
    FactoMineR's ``PCA(scale.unit = TRUE)`` and scikit-learn's ``StandardScaler``); subsets
    that are constant or have a missing share are left out (listed in ``dropped``).

    Parameters
    ----------
    shares
        Donors x subsets (index ``donor_id``), >= 3 donors and >= 2 usable subsets.
    groups
        Optional donor -> group (colours and centroids); donors without a group get NaN.
    n_components
        Components returned (>= 2; at most min(donors, subsets)).

    Returns
    -------
    dict
        ``scores``: DataFrame donors x ``PC1..PCk`` (FactoMineR ``ind$coord``) plus
        ``group``; ``loadings``: DataFrame subsets x ``PC1..PCk``, each subset's correlation
        with the component (FactoMineR ``var$coord``, the arrows of factoextra's biplot);
        ``arrow_scale``: the factor factoextra's ``fviz_pca_biplot`` multiplies the arrows
        by to fit the scores on PC1/PC2 (0.7 x the smaller ratio of score range to arrow
        range); ``variance_explained``: Series ``PC1..PCk``, eigenvalue / number of
        subsets (sums to <= 1); ``eigenvalues``: Series of all eigenvalues of the
        correlation matrix; ``centroids``: DataFrame group x ``PC1..PCk`` (empty without
        groups); ``scaling``: DataFrame subsets x ``mean, sd``; ``dropped``: dict subset ->
        reason.

    Examples
    --------
    >>> from sccohort.stats import proportion_biplot
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> pca = proportion_biplot(data.counts / data.totals, data.design.group)
    >>> sorted(pca)[:4]
    ['arrow_scale', 'centroids', 'dropped', 'eigenvalues']
    """
    values = _numeric_shares(shares)
    dropped: dict[str, str] = {}
    for col in values.columns:
        v = values[col]
        if v.isna().any():
            dropped[str(col)] = "missing share in some donors"
        elif v.std(ddof=0) <= 1e-12 * max(1.0, float(v.abs().max())):
            dropped[str(col)] = "constant across donors"
    keep = [c for c in values.columns if str(c) not in dropped]
    n, p = values.shape[0], len(keep)
    if n < 3 or p < 2:
        raise InputError(
            f"a PCA biplot needs >= 3 donors and >= 2 varying subsets; got {n} donors and "
            f"{p} usable subsets",
            key="shares",
            hint="Use more donors or a finer level",
        )
    k_max = min(n, p)
    if not 2 <= int(n_components) <= k_max:
        raise InputError(
            f"n_components must be in [2, {k_max}], got {n_components}", key="n_components"
        )
    x = values[keep].to_numpy()
    mean, sd = x.mean(axis=0), x.std(axis=0, ddof=0)
    z = (x - mean) / sd
    pca = PCA(n_components=k_max, svd_solver="full").fit(z)
    eig = pca.singular_values_**2 / n  # eigenvalues of the correlation matrix (1/n weights)
    k = int(n_components)
    pcs = [f"PC{i + 1}" for i in range(k)]
    scores = pd.DataFrame(pca.transform(z)[:, :k], index=values.index, columns=pcs)
    loadings = pd.DataFrame(
        pca.components_[:k].T * np.sqrt(eig[:k]),
        index=pd.Index([str(c) for c in keep], name="subset"),
        columns=pcs,
    )
    ranges_s = scores[["PC1", "PC2"]].max() - scores[["PC1", "PC2"]].min()
    ranges_l = loadings[["PC1", "PC2"]].max() - loadings[["PC1", "PC2"]].min()
    ratio = (ranges_s / ranges_l.where(ranges_l > 0)).min()
    arrow_scale = float(0.7 * ratio) if np.isfinite(ratio) else 1.0
    if groups is not None:
        g = groups.copy()
        g.index = g.index.astype(str)
        scores["group"] = g.reindex(scores.index).to_numpy()
        centroids = scores.dropna(subset=["group"]).groupby("group", sort=True)[pcs].mean()
    else:
        scores["group"] = np.nan
        centroids = pd.DataFrame(columns=pcs, dtype=float)
    return {
        "scores": scores,
        "loadings": loadings,
        "arrow_scale": arrow_scale,
        "variance_explained": pd.Series(eig[:k] / p, index=pcs),
        "eigenvalues": pd.Series(eig, index=[f"PC{i + 1}" for i in range(len(eig))]),
        "centroids": centroids,
        "scaling": pd.DataFrame(
            {"mean": mean, "sd": sd}, index=pd.Index([str(c) for c in keep], name="subset")
        ),
        "dropped": dropped,
    }
