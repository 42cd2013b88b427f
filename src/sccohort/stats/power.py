"""Power of the default abundance test by simulation, and the designs that reach a target.

`abundance_power` draws donors x subsets cell counts from a `DonorVariation` (fitted from a
pilot run or the reference design's) for every design of a grid (donors per group, cells
per sample, planted fold, subset or its baseline share) and runs on each simulated cohort the
test the pipeline runs by default (`compare_abundance`: arcsine-square-root shares with
precision weights, moderated t, every relabelling of the donors up to ``max_exact``, else
``n_perm`` random ones; Benjamini-Hochberg over the level's subsets). Power is the fraction of
cohorts where the planted subset reaches ``padj < fdr``. No cells are simulated: the counts
are what the pipeline would see with perfect labels, so clustering errors (which dilute a
subset) are not in it; `benchmarks/bench_power.py` measures how far the whole pipeline is.

Why by hand: the test is ours (`compare_abundance`); running it 40,000 times one cohort at a
time takes 13 minutes for 200 designs x 200 cohorts here (7.5 times the batched engine's
102 s, `benchmarks/bench_power.py --part speed`), so the cohorts of one design are tested
side by side: each relabelling's weighted sums for all of them are two BLAS matrix products, and
the moderated t (limma's squeeze fitted per cohort) is one fused numba pass
(`sccohort.stats.power_kernel`); the p-values are `compare_abundance`'s to the last bit
(`tests/test_power.py`). The folds of a design use the same random draws (common random
numbers), so a power curve is smooth in the fold.

`detectable_fold` and `donors_needed` answer the inverse questions on a finished grid.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Callable
from itertools import product

import dask
import numpy as np
import pandas as pd
from scipy import special, stats
from threadpoolctl import threadpool_limits

from sccohort.cluster import compute
from sccohort.errors import InputError
from sccohort.multitest import adjust_pvalues
from sccohort.stats import power_kernel
from sccohort.stats.donor_variation import DonorVariation, fit_donor_variation
from sccohort.stats.permutation import (
    _arrangements,
    _n_arrangements,
    _random_permutations,
    precision_weights,
)

__all__ = [
    "DETECTABLE_FOLDS",
    "POWER_COLUMNS",
    "abundance_power",
    "cohort_detectable_fold",
    "detectable_fold",
    "donors_needed",
]

#: Columns of `abundance_power`'s table.
POWER_COLUMNS = [
    "subset", "base_share", "fold", "n_case", "n_control", "cells_per_sample", "power",
    "ci_low", "ci_high", "n_sim", "fdr", "n_subsets", "scheme", "n_perm", "min_pvalue",
    "other_found",
]  # fmt: skip
#: Relabellings evaluated per matrix product in the power engine (bounds its memory).
_SLICE = 256
#: Default baseline shares when neither subsets nor shares are asked for.
DEFAULT_SHARES = (0.01, 0.03, 0.1)


def abundance_power(
    variation: DonorVariation,
    *,
    n_case: list[int],
    fold: list[float],
    n_control: list[int] | None = None,
    control_ratio: float | None = None,
    base_share: list[float] | None = None,
    subsets: list[str] | None = None,
    cells_per_sample: list[float] | None = None,
    n_sim: int = 200,
    fdr: float = 0.05,
    n_perm: int = 10_000,
    max_exact: int = 20_000,
    seed: int = 0,
    scheduler: object = None,
    progress: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Power of the default test for every design of a grid, by simulation.

    Parameters
    ----------
    variation
        The composition's between-donor variation (`fit_donor_variation`,
        `reference_variation`).
    n_case, n_control, control_ratio
        Donors per group: ``n_control`` values (every pair with ``n_case``), or
        ``control_ratio`` controls per case (rounded), or as many controls as cases.
    fold
        Planted folds of the subset's share in the cases (> 0; 1 gives the false positive
        rate, below 1 depletions).
    base_share, subsets
        Subsets planted: named ones at their own share, and for each baseline share the subset
        whose share is nearest (on the log scale), set to exactly that share. Neither: the
        shares `DEFAULT_SHARES`.
    cells_per_sample
        Mean cells per sample after QC (default the variation's).
    n_sim
        Simulated cohorts per design.
    fdr
        A subset is found when its Benjamini-Hochberg ``padj < fdr`` over the level's subsets.
    n_perm, max_exact, seed
        As in `compare_abundance`; ``seed`` also seeds the cohorts (results are the same for
        a seed, whatever the scheduler).
    scheduler
        Where the designs run (`sccohort.cluster.compute`; ``None``: threads).
    progress
        Called as ``progress(done, total)`` after each design.

    Returns
    -------
    DataFrame
        `POWER_COLUMNS`: one row per design, ``power`` with its Wilson 95% interval
        (``ci_low``, ``ci_high``), ``scheme`` / ``n_perm`` the permutations used,
        ``min_pvalue`` the smallest p-value the design allows (one subset alone needs
        ``min_pvalue * n_subsets < fdr``), ``other_found`` other subsets found per
        cohort (errors at fold 1; with a large planted effect mostly true changes: the
        other shares shrink as the planted one grows).

    Raises
    ------
    InputError
        Fewer than 2 donors in a group, a fold <= 0, shares outside (0, 0.5], an unknown
        subset, ``n_sim < 1``, ``fdr`` outside (0, 1).

    Examples
    --------
    >>> from sccohort.stats import abundance_power, reference_variation
    >>> ref = reference_variation(cells=2000)
    >>> power = abundance_power(ref, n_case=[4], n_control=[17], fold=[1.0, 4.0],
    ...                         base_share=[0.03], n_sim=20, seed=0)
    >>> power[["subset", "fold", "n_case", "n_control", "power"]]
        subset  fold  n_case  n_control  power
    0  CD4_TEM   1.0       4         17    0.0
    1  CD4_TEM   4.0       4         17    1.0
    """
    _check_options(n_case, fold, n_sim, fdr)
    designs = _designs(n_case, n_control, control_ratio)
    targets = _targets(variation, base_share, subsets)
    cells = [variation.cells_per_sample] if cells_per_sample is None else list(cells_per_sample)
    if any(not c >= 1 for c in cells):
        raise InputError(f"cells per sample must be >= 1, got {cells}", key="--cells-per-sample")
    tasks, keys = [], []
    for (cases, controls), (name, model), n_cells, f in product(designs, targets, cells, fold):
        # the draws depend on the design's values, not on the fold (common random numbers)
        # nor on the rest of the grid
        share = round(float(model.shares[name]) * 1e9)
        key = [seed, cases, controls, round(n_cells), zlib.crc32(name.encode()), share]
        task = dask.delayed(_design_power, pure=False)(
            name, model, cases, controls, n_cells, float(f), n_sim, fdr, n_perm, max_exact, key
        )
        tasks.append(task)
        keys.append((name, model, cases, controls, n_cells))
    results = compute(tasks, scheduler, progress)
    rows = [
        {"subset": name, "base_share": float(model.shares[name]), "n_case": cases,
         "n_control": controls, "cells_per_sample": float(n_cells), **row}
        for (name, model, cases, controls, n_cells), row in zip(keys, results, strict=True)
    ]  # fmt: skip
    return pd.DataFrame(rows)[POWER_COLUMNS]


def _targets(
    variation: DonorVariation, base_share: list[float] | None, subsets: list[str] | None
) -> list[tuple[str, DonorVariation]]:
    """(subset, variation) per planted subset, its share set where a baseline share asks."""
    names = list(variation.shares.index)
    for name in subsets or []:
        if name not in names:
            raise InputError(
                f"unknown subset '{name}'", key="--subset", hint=f"use one of: {', '.join(names)}"
            )
    if not subsets and not base_share:
        base_share = list(DEFAULT_SHARES)
    out = [_with_share(variation, name, None) for name in subsets or []]
    for share in base_share or []:
        if not 0 < share <= 0.5:
            raise InputError(
                f"a baseline share must be in (0, 0.5], got {share}", key="--base-share"
            )
        distance = np.abs(np.log(variation.shares.clip(lower=1e-12)) - math.log(share))
        out.append(_with_share(variation, names[int(np.argmin(distance))], share))
    return out


def _with_share(
    variation: DonorVariation, name: str, share: float | None
) -> tuple[str, DonorVariation]:
    """``(name, variation)`` with subset ``name`` at ``share`` (the others rescaled)."""
    if share is None:
        return name, variation
    shares = variation.shares.copy()
    rest = shares.index != name
    shares[rest] *= (1 - share) / shares[rest].sum()
    shares[name] = share
    return name, dataclasses.replace(variation, shares=shares)


def _designs(
    n_case: list[int], n_control: list[int] | None, ratio: float | None
) -> list[tuple[int, int]]:
    """The (cases, controls) pairs of the grid, each group at least 2 donors."""
    if n_control is not None and ratio is not None:
        raise InputError(
            "give either the numbers of controls or a control ratio, not both",
            key="--n-control",
        )
    if ratio is not None and not ratio > 0:
        raise InputError(f"the control ratio must be > 0, got {ratio}", key="--control-ratio")
    if n_control is not None:
        pairs = [(int(a), int(b)) for a, b in product(n_case, n_control)]
    else:
        pairs = [(int(a), max(1, round(a * (ratio or 1.0)))) for a in n_case]
    small = [p for p in pairs if min(p) < 2]
    if small:
        raise InputError(
            f"every group needs at least 2 donors; the grid has {small[0][0]} cases vs "
            f"{small[0][1]} controls",
            key="--n-case",
            hint="use at least 2 cases and 2 controls",
        )
    return list(dict.fromkeys(pairs))


def _check_options(n_case: list[int], fold: list[float], n_sim: int, fdr: float) -> None:
    if not n_case or not fold:
        raise InputError("the grid needs at least one number of cases and one fold", key="--fold")
    bad = [f for f in fold if not f > 0]
    if bad:
        raise InputError(
            f"a fold must be > 0, got {bad[0]}",
            key="--fold",
            hint="a fold is case share / control share: 2 doubles, 0.5 halves",
        )
    if int(n_sim) < 1:
        raise InputError(f"--n-sim must be >= 1, got {n_sim}", key="--n-sim")
    if not 0 < fdr < 1:
        raise InputError(f"the FDR must be in (0, 1), got {fdr}", key="--fdr")


def _design_power(
    name: str,
    target: DonorVariation,
    n_case: int,
    n_control: int,
    cells: float,
    fold: float,
    n_sim: int,
    fdr: float,
    n_perm: int,
    max_exact: int,
    key: list[int],
) -> dict:
    """The power row of one design and fold: its cohorts simulated (seeded by ``key``), tested."""
    k = target.shares.index.get_loc(name)
    n = n_case + n_control
    x = np.column_stack([np.ones(n), np.r_[np.ones(n_case), np.zeros(n_control)]])
    rng = np.random.default_rng(np.random.SeedSequence([*key, 0]))
    perm_seed = int(np.random.SeedSequence([*key, 1]).generate_state(1)[0])
    counts = target.sample(n, n_sim, rng, cells=cells, subset=name, fold=fold, n_case=n_case)
    padj, scheme, evaluated = _cohort_padj(counts, x, n_perm, max_exact, perm_seed)
    found = padj < fdr
    hits = int(found[:, k].sum())
    low, high = _wilson(hits, n_sim)
    return {
        "fold": fold, "power": hits / n_sim, "ci_low": low, "ci_high": high, "n_sim": n_sim,
        "fdr": fdr, "n_subsets": counts.shape[2], "scheme": scheme, "n_perm": evaluated,
        "min_pvalue": _min_pvalue(scheme, evaluated, n_case, n_control),
        "other_found": float(np.delete(found, k, axis=1).sum(axis=1).mean()),
    }  # fmt: skip


def _cohort_padj(
    counts: np.ndarray, x: np.ndarray, n_perm: int, max_exact: int, seed: int
) -> tuple[np.ndarray, str, int]:
    """BH-adjusted p-values (cohorts x subsets) of the default test on each cohort's counts.

    A cohort with a subset that has no cells in any donor is tested without it (as
    `compare_abundance` leaves such a subset out), on its own.
    """
    n_sim, n, n_sub = counts.shape
    empty = (counts.sum(axis=1) == 0).any(axis=1)
    pvalue = np.full((n_sim, n_sub), np.nan)
    scheme, evaluated = "", 0
    if (~empty).any():
        pvalue[~empty], scheme, evaluated = _pvalues(counts[~empty], x, n_perm, max_exact, seed)
    for s in np.flatnonzero(empty):
        kept = counts[s].sum(axis=0) > 0
        if kept.sum() >= 2:
            pvalue[s, kept] = _pvalues(counts[s][None][:, :, kept], x, n_perm, max_exact, seed)[0]
    padj = np.vstack([adjust_pvalues(row) for row in pvalue])
    return np.nan_to_num(padj, nan=1.0), scheme, evaluated


def _pvalues(
    counts: np.ndarray, x: np.ndarray, n_perm: int, max_exact: int, seed: int
) -> tuple[np.ndarray, str, int]:
    """Permutation p-values (cohorts x subsets) of `compare_abundance`'s default test."""
    n_sim, n, n_sub = counts.shape
    c = counts.transpose(1, 0, 2).reshape(n, n_sim * n_sub).astype(float)
    total = np.repeat(counts.sum(axis=2).T, n_sub, axis=1).astype(float)
    y = np.arcsin(np.sqrt(c / total))
    w = precision_weights(y, 1 / (4 * total), np.ones((n, 1)))
    sw = w.sum(axis=0)
    resid = y - (w * y).sum(axis=0) / sw  # residuals of the weighted intercept-only fit
    wr = w * resid
    rss = (wr * resid).sum(axis=0)
    half = (n - 2) / 2
    constants = (
        float(n - 2),
        n_sub,
        float(special.digamma(half)),
        float(special.polygamma(1, half)),
    )

    def squared_t(cases: np.ndarray) -> np.ndarray:
        out = np.empty((len(cases), y.shape[1]))
        power_kernel.squared_t(cases @ w, cases @ wr, sw, rss, *constants, out)
        return out

    exact = _n_arrangements(x[:, 1]) <= max_exact
    batches = _arrangements(x[:, 1]) if exact else _random_permutations(n, n_perm, seed)
    with threadpool_limits(1, user_api="blas"):
        threshold = squared_t(x[None, :, 1])[0] * (1 - 1e-9) ** 2
        extreme = np.zeros(y.shape[1])
        evaluated = 0
        for batch in batches:
            for start in range(0, len(batch), _SLICE):
                cases = x[batch[start : start + _SLICE], 1]
                extreme += (squared_t(cases) >= threshold).sum(axis=0)
                evaluated += len(cases)
    pvalue = extreme / evaluated if exact else (1 + extreme) / (1 + evaluated)
    return np.minimum(pvalue, 1.0).reshape(n_sim, n_sub), "exact" if exact else "random", evaluated


def _min_pvalue(scheme: str, evaluated: int, n_case: int, n_control: int) -> float:
    """The smallest p-value of the scheme (equal groups: the mirror labelling ties)."""
    if scheme == "exact":
        return (2 if n_case == n_control else 1) / evaluated
    return 1 / (1 + evaluated)


def _wilson(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion."""
    z = stats.norm.ppf(0.5 + level / 2)
    if hits in (0, n):  # the closed form's rounding would leave 1e-18 off the bound
        bound = float(z**2 / (n + z**2))
        return (0.0, bound) if hits == 0 else (1 - bound, 1.0)
    p = hits / n
    centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def detectable_fold(power: pd.DataFrame, target_power: float = 0.8) -> pd.DataFrame:
    """The smallest fold each design detects with ``target_power``, from a power grid.

    For each design (subset, base share, donors, cells) and direction (``expansion``: folds
    above 1, ``depletion``: below 1), the fold where the power curve first reaches the target,
    interpolated linearly in log fold between the grid's folds around the crossing
    (``fold``), and the grid's own fold that reaches it (``fold_grid``). A curve that never
    reaches it gives NaN and a ``note``.

    Parameters
    ----------
    power
        `abundance_power`'s table.
    target_power
        In (0, 1).

    Returns
    -------
    DataFrame
        ``subset, base_share, n_case, n_control, cells_per_sample, direction, target_power,
        fold, fold_grid, note``.

    Examples
    --------
    >>> from sccohort.stats import detectable_fold
    >>> grid = pd.DataFrame({"subset": "B", "base_share": 0.03, "n_case": 4, "n_control": 17,
    ...                      "cells_per_sample": 2000.0, "fold": [1.5, 2.0, 3.0],
    ...                      "power": [0.2, 0.6, 0.9]})
    >>> detectable_fold(grid)[["direction", "fold", "fold_grid"]].round(3)
       direction   fold  fold_grid
    0  expansion  2.621        3.0
    """
    _check_target(target_power)
    rows = []
    for key, curve in power.groupby(_DESIGN_KEYS, sort=False):
        for direction, side in (("expansion", curve["fold"] > 1), ("depletion", curve["fold"] < 1)):
            if not side.any():
                continue
            part = curve[side].sort_values("fold", ascending=direction == "expansion")
            steps = np.abs(np.log(part["fold"].to_numpy()))
            found, at_grid, note = _crossing(steps, part["power"].to_numpy(), target_power)
            fold = np.exp(found * (1 if direction == "expansion" else -1))
            if (
                note
                and "min_pvalue" in part
                and (part["min_pvalue"] * part["n_subsets"] >= part["fdr"]).all()
            ):
                note = (
                    f"out of reach: the smallest p-value {key[2]} vs {key[3]} donors allow is "
                    f"{part['min_pvalue'].iloc[0]:.2g}, too large for padj < "
                    f"{part['fdr'].iloc[0]:g} over {part['n_subsets'].iloc[0]} subsets"
                )
            rows.append(
                dict(zip(_DESIGN_KEYS, key, strict=True))
                | {"direction": direction, "target_power": target_power, "fold": fold,
                   "fold_grid": float(part["fold"].iloc[at_grid]) if at_grid >= 0 else np.nan,
                   "note": note if not note or note.startswith("out of reach") else
                           f"{note} (largest fold {part['fold'].iloc[-1]:g})"}
            )  # fmt: skip
    return pd.DataFrame(rows, columns=[*_DESIGN_KEYS, "direction", "target_power", "fold",
                                       "fold_grid", "note"])  # fmt: skip


def donors_needed(power: pd.DataFrame, target_power: float = 0.8) -> pd.DataFrame:
    """The fewest cases each effect needs for ``target_power``, from a power grid.

    Designs are grouped by subset, base share, fold, cells per sample and the controls:
    a fixed number of controls when the grid paired each with several numbers of cases,
    otherwise the ratio of controls to cases. Within a group the smallest number of cases
    whose power reaches the target (``n_case``, with its ``n_control`` and ``power``); NaN
    and a ``note`` when none does.

    Examples
    --------
    >>> from sccohort.stats import donors_needed
    >>> grid = pd.DataFrame({"subset": "B", "base_share": 0.03, "fold": 2.0,
    ...                      "cells_per_sample": 2000.0, "n_case": [4, 8, 12],
    ...                      "n_control": [4, 8, 12], "power": [0.3, 0.7, 0.9]})
    >>> donors_needed(grid)[["fold", "n_case", "n_control", "power"]]
       fold  n_case  n_control  power
    0   2.0    12.0       12.0    0.9
    """
    _check_target(target_power)
    frame = power.copy()
    fixed = frame.groupby("n_control")["n_case"].nunique().max() > 1
    frame["controls"] = (
        frame["n_control"].map(lambda v: f"{v} controls")
        if fixed
        else (frame["n_control"] / frame["n_case"]).round(2).map(lambda r: f"ratio {r:g}")
    )
    keys = ["subset", "base_share", "fold", "cells_per_sample", "controls"]
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        group = group.sort_values("n_case")
        reached = group[group["power"] >= target_power]
        row = dict(zip(keys, key, strict=True)) | {"target_power": target_power}
        if len(reached):
            best = reached.iloc[0]
            row |= {"n_case": best["n_case"], "n_control": best["n_control"],
                    "power": best["power"], "note": ""}  # fmt: skip
        else:
            row |= {"n_case": np.nan, "n_control": np.nan, "power": np.nan,
                    "note": f"not reached with up to {group['n_case'].max()} cases "
                            f"(power {group['power'].iloc[-1]:.2f})"}  # fmt: skip
        rows.append(row)
    out = pd.DataFrame(rows)
    out[["n_case", "n_control"]] = out[["n_case", "n_control"]].astype(float)
    return out


#: Columns that identify a design apart from its fold.
_DESIGN_KEYS = ["subset", "base_share", "n_case", "n_control", "cells_per_sample"]


def _check_target(target_power: float) -> None:
    if not 0 < target_power < 1:
        raise InputError(
            f"the target power must be in (0, 1), got {target_power}", key="--target-power"
        )


def _crossing(steps: np.ndarray, power: np.ndarray, target: float) -> tuple[float, int, str]:
    """Where ``power`` (along increasing ``steps``) first reaches ``target``, interpolated.

    Returns the step, the index of the first grid point that reaches it (-1: none) and a
    note when the target is not reached or is reached at the grid's smallest step.
    """
    above = np.flatnonzero(power >= target)
    if not above.size:
        return float("nan"), -1, f"power {power.max():.2f} at most, below {target:g}"
    i = int(above[0])
    if i == 0:
        return float(steps[0]), 0, ""
    frac = (target - power[i - 1]) / (power[i] - power[i - 1])
    return float(steps[i - 1] + frac * (steps[i] - steps[i - 1])), i, ""


#: Folds `cohort_detectable_fold` simulates (expansions, then depletions).
DETECTABLE_FOLDS = (1.5, 2.0, 3.0, 4.0, 6.0, 2 / 3, 0.5, 1 / 3)


def cohort_detectable_fold(
    counts: pd.DataFrame,
    n_case: int,
    n_control: int,
    *,
    fdr: float = 0.05,
    target_power: float = 0.8,
    n_sim: int = 50,
    n_perm: int = 10_000,
    seed: int = 0,
) -> dict[str, object]:
    """What a cohort could detect: the smallest fold found with ``target_power``.

    The donors' variation is fitted from ``counts`` (donors x subsets, one level,
    `fit_donor_variation`); the subset whose share is nearest the median share is planted
    with `DETECTABLE_FOLDS` in ``n_case`` of ``n_case + n_control`` donors and tested as the
    run tests it (`abundance_power`, ``n_sim`` cohorts per fold).

    Returns
    -------
    dict
        ``subset``, ``share`` (its mean share), ``fold_up`` (the smallest expansion fold
        reaching the target, NaN when none up to 6 does), ``fold_down`` (the same for
        depletions, a fold below 1), ``concentration`` (the pooled Dirichlet concentration),
        ``note`` (why a fold is NaN).

    Examples
    --------
    >>> from sccohort.stats import cohort_detectable_fold, reference_variation
    >>> ref = reference_variation(cells=2000)
    >>> pilot = pd.DataFrame(ref.sample(21, 1, np.random.default_rng(0))[0],
    ...                      columns=ref.shares.index)
    >>> found = cohort_detectable_fold(pilot, 4, 17, n_sim=20)
    >>> found["subset"], round(found["fold_up"], 1)
    ('CD4_CTL', 2.9)
    """
    variation = fit_donor_variation(counts)
    median = float(np.median(variation.shares))
    subset = str(variation.shares.index[int(np.argmin(np.abs(variation.shares - median)))])
    power = abundance_power(
        variation, n_case=[n_case], n_control=[n_control], fold=list(DETECTABLE_FOLDS),
        subsets=[subset], n_sim=n_sim, fdr=fdr, n_perm=n_perm, seed=seed,
    )  # fmt: skip
    found = detectable_fold(power, target_power).set_index("direction")
    notes = [str(n) for n in found["note"] if isinstance(n, str) and n]
    return {
        "subset": subset,
        "share": float(variation.shares[subset]),
        "fold_up": float(found.loc["expansion", "fold"]),
        "fold_down": float(found.loc["depletion", "fold"]),
        "concentration": variation.pooled_concentration,
        "note": notes[0] if notes else "",
    }
