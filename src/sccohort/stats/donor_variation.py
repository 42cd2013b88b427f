"""How much a cohort's composition varies between donors: fitted from a pilot, or the reference's.

The model (`DonorVariation`): donor i's share of subset k is ``g_ik / sum_k g_ik`` with
independent ``g_ik ~ Gamma(concentration_k * share_k)``; with one concentration for every
subset this is the Dirichlet(``concentration * shares``) the cohort simulator draws
(`sccohort.simulate.design`), and a subset's share then varies between donors with variance
``share (1 - share) / (concentration + 1)``. A sample's cells are drawn multinomially from
its donor's shares; the number of cells varies between samples (gamma with the pilot's
coefficient of variation; Poisson when it is 0).

The fit (`fit_donor_variation`): per subset, the between-donor variance of the share by
moments (the variance of the shares less the mean multinomial variance
``share (1 - share) / cells``), as a dispersion ``1 / (concentration_k + 1)``; the subsets'
dispersions are then squeezed towards their common value as limma's ``squeezeVar`` squeezes
residual variances (prior degrees of freedom from their spread, infinite when the spread is
no more than a single Dirichlet gives), so a subset keeps a variation of its own only where
the pilot shows it. Known clinical effects in the pilot widen the subsets they touch, which
errs on the side of fewer detectable effects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sccohort.errors import InputError
from sccohort.stats.permutation import _prior

__all__ = ["DonorVariation", "fit_donor_variation", "reference_variation"]

#: Cells per sample of the reference study: ~230,000 PBMC after QC over its 29 samples.
REFERENCE_CELLS = 8000
#: Smallest dispersion a subset's moment estimate is floored to, relative to the median.
_FLOOR = 1e-3


@dataclass(frozen=True)
class DonorVariation:
    """A composition's between-donor variation and the cells a sample yields.

    Attributes
    ----------
    shares
        Mean share of every subset (index: subset names), summing to 1.
    concentration
        Dirichlet-equivalent concentration of every subset (same index): its share's
        between-donor variance is ``share (1 - share) / (concentration + 1)``.
    cells_per_sample
        Median cells per sample after QC.
    cells_cv
        Coefficient of variation of the cells per sample (0: Poisson).
    qc_loss
        Fraction of a sample's cells that QC removed in the pilot (NaN when not known).
    pooled_concentration
        The concentration of one Dirichlet fitted to all subsets.
    prior_df
        Prior degrees of freedom of the squeeze (``inf``: every subset got the pooled one).
    n_donors
        Donors the fit used (0 for the reference design).
    source
        Where it comes from (``"reference design"``, a run folder).

    Examples
    --------
    >>> from sccohort.stats import DonorVariation
    >>> shares = pd.Series([0.7, 0.2, 0.1], index=["T", "Mono", "B"])
    >>> model = DonorVariation(shares, pd.Series(100.0, index=shares.index), 3000)
    >>> model.table()["between_sd"].round(3).tolist()
    [0.046, 0.04, 0.03]
    """

    shares: pd.Series
    concentration: pd.Series
    cells_per_sample: float
    cells_cv: float = 0.0
    qc_loss: float = float("nan")
    pooled_concentration: float = float("nan")
    prior_df: float = float("inf")
    n_donors: int = 0
    source: str = ""

    def table(self) -> pd.DataFrame:
        """One row per subset: ``subset, share, concentration, between_sd, cv``.

        ``between_sd``: SD of the share between donors; ``cv``: that SD over the share.

        Examples
        --------
        >>> from sccohort.stats import reference_variation
        >>> reference_variation().table().head(2).round(4)
               subset   share  concentration  between_sd      cv
        0   CD14_VCAN  0.0755          300.0      0.0152  0.2017
        1  CD14_PLBD1  0.0539          300.0      0.0130  0.2415
        """
        share = self.shares.to_numpy()
        sd = np.sqrt(share * (1 - share) / (self.concentration.to_numpy() + 1))
        return pd.DataFrame(
            {
                "subset": self.shares.index.astype(str),
                "share": share,
                "concentration": self.concentration.to_numpy(),
                "between_sd": sd,
                "cv": sd / share,
            }
        )

    def sample(
        self,
        n_donors: int,
        n_sim: int,
        rng: np.random.Generator,
        *,
        cells: float | None = None,
        subset: str | None = None,
        fold: float = 1.0,
        n_case: int = 0,
    ) -> np.ndarray:
        """Cell counts of ``n_sim`` cohorts: an array ``n_sim x n_donors x subsets``.

        The first ``n_case`` donors have ``subset``'s share multiplied by ``fold`` after
        their own variation is drawn (the other subsets rescaled to keep the total 1, as the
        simulator plants effects; a share is capped at 0.95). ``cells``: mean cells per
        sample (default `cells_per_sample`).

        Examples
        --------
        >>> from sccohort.stats import reference_variation
        >>> ref = reference_variation()
        >>> counts = ref.sample(6, 2, np.random.default_rng(0), cells=2000)
        >>> counts.shape, int(counts[0].sum(axis=1).mean() // 100)
        ((2, 6, 38), 19)
        """
        mean = self.cells_per_sample if cells is None else float(cells)
        share = self.shares.to_numpy()
        concentration = self.concentration.to_numpy()
        shape = np.broadcast_to(concentration * share, (n_sim, n_donors, len(share)))
        g = rng.gamma(shape, 1 / concentration)  # mean: the share (one Dirichlet: exact)
        p = g / g.sum(axis=-1, keepdims=True)
        if subset is not None and n_case and fold != 1.0:
            k = self.shares.index.get_loc(subset)
            planted = np.minimum(p[:, :n_case, k] * fold, 0.95)
            rest = (1 - planted) / np.maximum(1 - p[:, :n_case, k], 1e-12)
            p[:, :n_case] *= rest[..., None]
            p[:, :n_case, k] = planted
        if self.cells_cv > 0:
            shape = 1 / self.cells_cv**2
            n_cells = np.rint(rng.gamma(shape, mean / shape, size=(n_sim, n_donors)))
        else:
            n_cells = rng.poisson(mean, size=(n_sim, n_donors))
        return rng.multinomial(np.maximum(n_cells, 1).astype(np.int64), p)


def fit_donor_variation(
    counts: pd.DataFrame,
    *,
    qc_loss: float = float("nan"),
    source: str = "",
) -> DonorVariation:
    """Fit `DonorVariation` to a pilot's cell counts (donors x subsets, one sample per donor).

    The rows are the pilot's samples (one per donor), the columns every subset of one
    level (their counts summing to the sample's cells). See the module docstring for the
    model and the fit.

    Parameters
    ----------
    counts
        Non-negative integer counts; at least 3 donors with cells, at least 2 subsets.
    qc_loss
        Fraction of cells QC removed in the pilot (recorded, not used by the fit).
    source
        Recorded as `DonorVariation.source`.

    Raises
    ------
    InputError
        Fewer than 3 donors with cells, fewer than 2 subsets, negative or missing counts.

    Examples
    --------
    >>> from sccohort.stats import fit_donor_variation, reference_variation
    >>> truth = reference_variation()
    >>> draw = truth.sample(60, 1, np.random.default_rng(1), cells=3000)[0]
    >>> fit = fit_donor_variation(pd.DataFrame(draw, columns=truth.shares.index))
    >>> 240 < fit.pooled_concentration < 360, fit.n_donors
    (True, 60)
    """
    values = counts.to_numpy(dtype=float)
    if counts.shape[1] < 2:
        raise InputError(
            f"a pilot needs at least 2 subsets, got {counts.shape[1]}",
            hint="fit the variation at a level with several subsets (l2 or subset)",
        )
    if not np.isfinite(values).all() or (values < 0).any():
        raise InputError("the pilot's counts must be non-negative numbers", hint="check them")
    cells = values.sum(axis=1)
    values, cells = values[cells > 0], cells[cells > 0]
    n = len(cells)
    if n < 3:
        raise InputError(
            f"a pilot needs at least 3 donors with cells, got {n}",
            hint="fit the variation from a run with more donors, or use --design paper",
        )
    p = values / cells[:, None]
    share = p.mean(axis=0)
    seen = share > 0
    if seen.sum() < 2:
        raise InputError("the pilot has cells in fewer than 2 subsets", hint="check its counts")
    binomial = share[seen] * (1 - share[seen])
    sampling = binomial * np.mean(1 / cells)
    dispersion = (p[:, seen].var(axis=0, ddof=1) - sampling) / binomial
    dispersion = np.maximum(dispersion, _FLOOR * max(float(np.median(dispersion)), 1e-6))
    pooled = float(dispersion.mean())  # the moments' mean: least biased in simulations
    concentration = np.full(len(share), 1 / pooled - 1)
    prior_df = float("inf")
    if seen.sum() >= 3:
        df = _effective_df(share[seen], pooled, cells)
        d0 = float(_prior(dispersion[None, :], df)[1][0])
        if np.isfinite(d0):
            post = (d0 * pooled + df * dispersion) / (d0 + df)
            concentration[seen], prior_df = 1 / post - 1, d0
    index = counts.columns.astype(str)
    return DonorVariation(
        shares=pd.Series(share / share.sum(), index=index),
        concentration=pd.Series(np.maximum(concentration, 1e-3), index=index),
        cells_per_sample=float(np.median(cells)),
        cells_cv=float(cells.std(ddof=1) / cells.mean()),
        qc_loss=float(qc_loss),
        pooled_concentration=float(1 / pooled - 1),
        prior_df=prior_df,
        n_donors=n,
        source=source,
    )


def _effective_df(share: np.ndarray, dispersion: float, cells: np.ndarray) -> np.ndarray:
    """Degrees of freedom of each subset's dispersion estimate under the pooled model.

    A share's variance estimate is not chi-square: a rare subset's gamma-distributed share
    (shape ``concentration * share``, excess kurtosis ``6 / shape``) and its Poisson-like
    counts (``1 / (share * cells)``) make it vary more. ``df = 2 B^2 / var(s^2)`` with
    ``var(s^2) = 2 (B + S)^2 / (n - 1) + (kurtosis_B B^2 + kurtosis_S S^2) / n``, ``B`` the
    between-donor and ``S`` the sampling variance.
    """
    n = len(cells)
    binomial = share * (1 - share)
    between, sampling = dispersion * binomial, binomial * np.mean(1 / cells)
    shape = (1 / dispersion - 1) * share
    spread = 2 * (between + sampling) ** 2 / (n - 1)
    spread += (6 / shape * between**2 + sampling**2 / (share * np.mean(cells))) / n
    return 2 * between**2 / spread


def reference_variation(cells: float = REFERENCE_CELLS) -> DonorVariation:
    """The reference design's variation: the simulator's 38 subsets, one Dirichlet (300).

    The subsets' expected shares in a 60-year-old donor without clinical effects and the
    concentration the simulator draws donors with (`sccohort.simulate.design.SimParams`);
    ``cells`` per sample (default the study's ~8,000), Poisson.

    Examples
    --------
    >>> from sccohort.stats import reference_variation
    >>> ref = reference_variation()
    >>> len(ref.shares), ref.pooled_concentration, ref.cells_per_sample
    (38, 300.0, 8000.0)
    """
    from sccohort.simulate.biology import SUBSETS
    from sccohort.simulate.design import SimParams, base_shares

    params = SimParams()
    index = pd.Index([s.name for s in SUBSETS])
    alpha = float(params.dirichlet_concentration)
    return DonorVariation(
        shares=pd.Series(base_shares(params), index=index),
        concentration=pd.Series(alpha, index=index),
        cells_per_sample=float(cells),
        pooled_concentration=alpha,
        source="reference design",
    )
