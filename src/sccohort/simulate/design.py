"""Cohort designs: donors, samples, lanes, planted clinical effects and compositions.

Design ``paper`` reproduces the reference study's 27 donors (MISSION.md) with CD14_EGR1
expanded in SRC donors, CD8_TEM_T2ISG expanded in ILD donors and one SRC donor (SSc4)
sampled before, at and after SRC onset. Design ``null`` has the same donors and clinical
table but no clinical effect. Both keep the age effect (fewer naive CD8 T cells with age),
which is biology, not a clinical effect.

Either design also comes at any size: ``n_donors`` donors drawn in the paper's proportions
(`group_sizes`, `clinical_table`), with SSc4 again the SRC + ILD donor sampled three
times, so the planted effects, the truth tables and the config are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from sccohort.errors import InputError
from sccohort.simulate.biology import EGR1_PROGRAM, SUBSETS
from sccohort.simulate.prepost import PREPOST_SUBSET, prepost_effects, treated
from sccohort.simulate.stimulation import stim_effects

DESIGNS = ("paper", "null", "stim", "prepost")

_SRC = {1, 4, 19, 20}
_ILD = {1, 3, 4, 6, 7, 8, 10, 11, 13, 14, 16, 17}
_ARA_NO_SRC = {3, 7, 10, 15, 18}  # 5 ARA-positive SSc donors without SRC (fixed choice)
_SSC_AGES = (67, 56, 82, 72, 64, 60, 80, 58, 47, 76, 81, 57, 46, 61, 50, 62, 77, 67, 53, 74, 73)
_HD_AGES = (64, 62, 70, 67, 59, 84)
_MALE = {"SSc3", "SSc10", "SSc17", "SSc20", "HD2", "HD5"}
#: The longitudinal donor and its samples: (sample_id, timepoint), in time order.
LONGITUDINAL_DONOR = "SSc4"
TIMEPOINTS = (("SSc4_pre", "pre_onset"), ("SSc4", "baseline"), ("SSc4_post", "post_treatment"))
_CLINICAL_COLUMNS = ["donor_id", "group", "age", "sex", "SRC", "ILD", "ARA"]
#: Age at which the age effect is zero.
REFERENCE_AGE = 60.0
#: Seed of the drawn clinical tables: a table depends on ``n_donors`` only, never on the
#: cohort seed (which draws the cells), just as the paper's table is fixed.
TABLE_SEED = 2025
#: Samples per lane in the paper's cohort (29 samples on 4 lanes); drawn cohorts keep it.
_SAMPLES_PER_LANE = 29 / 4


@dataclass(frozen=True)
class SimParams:
    """Tunable parameters of a simulated cohort (all have the documented defaults).

    Attributes
    ----------
    egr1_fold, egr1_base_share
        Fold expansion of CD14_EGR1 (share of all cells) in SRC donors and its share in
        everyone else.
    t2isg_fold, t2isg_base_share
        The same for CD8_TEM_T2ISG in ILD donors.
    timecourse_expression
        Fold of the EGR1 program in SSc4's monocytes before onset, at onset, after treatment.
    timecourse_share
        Fold of SSc4's CD14_EGR1 share at the three timepoints (``None`` at onset = egr1_fold).
    age_slope
        Change of log(share) of CD8_Naive per year of age (around age 60).
    dirichlet_concentration
        Concentration of the per-donor Dirichlet around the expected composition.
    doublet_rate, low_quality_rate
        Fraction of barcodes that are heterotypic doublets / low-quality cells.
    ambient_fraction
        Fraction of a cell's RNA UMIs that come from the ambient profile.
    n_empty
        Empty droplets per sample in the raw matrix.
    n_batches
        Number of lanes; samples are assigned to lanes in turn.
    donor_noise, batch_noise
        SD of the per-donor and per-lane log multiplicative gene (and protein) noise.
    library_scale
        Multiplies every cell's expected RNA library size.
    ifn_fold
        Typical fold of the interferon response genes in the stimulated samples of design
        ``stim`` (:mod:`sccohort.simulate.stimulation`).
    prepost_fold
        Fold of CD14_EGR1's share in the treated samples of design ``prepost``
        (:mod:`sccohort.simulate.prepost`).
    """

    egr1_fold: float = 3.0
    egr1_base_share: float = 0.02
    t2isg_fold: float = 3.0
    t2isg_base_share: float = 0.015
    timecourse_expression: tuple[float, float, float] = (1.0, 3.0, 1.3)
    timecourse_share: tuple[float, float | None, float] = (1.0, None, 1.5)
    age_slope: float = -0.03
    dirichlet_concentration: float = 300.0
    doublet_rate: float = 0.05
    low_quality_rate: float = 0.03
    ambient_fraction: float = 0.03
    n_empty: int = 3000
    n_batches: int = 4
    donor_noise: float = 0.1
    batch_noise: float = 0.15
    library_scale: float = 1.0
    ifn_fold: float = 4.0
    prepost_fold: float = 2.0

    @classmethod
    def from_kwargs(cls, **kwargs: object) -> SimParams:
        """Validated parameters; unknown names or bad values raise `InputError`."""
        known = {f.name: f for f in fields(cls)}
        for key in kwargs:
            if key not in known:
                raise InputError(
                    "unknown simulation parameter",
                    key=key,
                    hint=f"use one of: {', '.join(sorted(known))}",
                )
        p = cls(**kwargs)  # type: ignore[arg-type]
        positive = (
            "egr1_fold", "t2isg_fold", "dirichlet_concentration", "library_scale", "ifn_fold",
            "prepost_fold",
        )  # fmt: skip
        for key in positive:
            if not float(getattr(p, key)) > 0:
                raise InputError("must be > 0", key=key, hint=f"got {getattr(p, key)!r}")
        rates = (
            "egr1_base_share",
            "t2isg_base_share",
            "doublet_rate",
            "low_quality_rate",
            "ambient_fraction",
        )
        for key in rates:
            if not 0 <= float(getattr(p, key)) < 0.5:
                raise InputError(
                    "must be a fraction in [0, 0.5)", key=key, hint=f"got {getattr(p, key)!r}"
                )
        if p.egr1_base_share * p.egr1_fold + p.t2isg_base_share * p.t2isg_fold >= 0.5:
            raise InputError(
                "planted subsets would take half of all cells",
                key="egr1_fold",
                hint="lower the folds or the base shares",
            )
        if int(p.n_empty) < 0 or int(p.n_batches) < 1:
            raise InputError(
                "n_empty must be >= 0 and n_batches >= 1",
                key="n_empty" if int(p.n_empty) < 0 else "n_batches",
            )
        for key in ("timecourse_expression", "timecourse_share"):
            vals = getattr(p, key)
            if len(vals) != 3 or any(v is not None and not float(v) > 0 for v in vals):
                raise InputError(
                    "needs three positive folds (pre_onset, baseline, post_treatment)", key=key
                )
        return p


@dataclass(frozen=True)
class SampleSpec:
    """One simulated sample (a donor at a timepoint, run on one lane)."""

    index: int
    sample_id: str
    donor_id: str
    timepoint: str
    batch: str


def _half_up(x: float) -> int:
    return int(np.floor(x + 0.5))


def group_sizes(n_donors: int) -> dict[str, int]:
    """Donor counts of an ``n_donors`` cohort in the paper's proportions (rounded).

    Returns
    -------
    dict with ``SSc, HD`` (21:6), within SSc ``SRC`` (4/21), ``ILD`` (12/21) and
    ``male_SSc`` (4/21), ``ARA_no_SRC`` (5 of the 17 without SRC; every SRC donor is ARA
    positive), and ``male_HD`` (2/6).
    """
    n_ssc_paper, n_hd_paper = len(_SSC_AGES), len(_HD_AGES)
    n_hd = _half_up(n_donors * n_hd_paper / (n_ssc_paper + n_hd_paper))
    n_ssc = n_donors - n_hd
    n_src = _half_up(n_ssc * len(_SRC) / n_ssc_paper)
    n_male_hd = sum(d.startswith("HD") for d in _MALE)
    return {
        "SSc": n_ssc,
        "HD": n_hd,
        "SRC": n_src,
        "ILD": _half_up(n_ssc * len(_ILD) / n_ssc_paper),
        "ARA_no_SRC": _half_up((n_ssc - n_src) * len(_ARA_NO_SRC) / (n_ssc_paper - len(_SRC))),
        "male_SSc": _half_up(n_ssc * (len(_MALE) - n_male_hd) / n_ssc_paper),
        "male_HD": _half_up(n_hd * n_male_hd / n_hd_paper),
    }


def _size_problem(n_donors: int) -> str | None:
    """Why ``n_donors`` cannot make a cohort for the three contrasts (None when it can)."""
    if n_donors < 1:
        return f"n_donors is {n_donors}"
    s = group_sizes(n_donors)
    groups = {
        "HD": s["HD"],
        "SSc": s["SSc"],
        "SRC": s["SRC"],
        "SSc without SRC": s["SSc"] - s["SRC"],
        "ILD": s["ILD"],
        "SSc without ILD": s["SSc"] - s["ILD"],
    }
    # 2 SRC + 2 without SRC also guarantee an SSc4, the longitudinal donor.
    small = [f"{n} {name}" for name, n in groups.items() if n < 2]
    if small:
        return f"{n_donors} donors in the paper's proportions give {', '.join(small)}"
    return None


#: Smallest cohort whose every contrast group (HD, SSc, SRC yes/no, ILD yes/no) has 2 donors.
MIN_DONORS = next(n for n in range(1, 1000) if _size_problem(n) is None)


def check_n_donors(n_donors: object) -> int:
    """``n_donors`` as an int; `InputError` unless it is an integer >= `MIN_DONORS`."""
    if isinstance(n_donors, bool) or not isinstance(n_donors, int | np.integer):
        raise InputError(
            f"n_donors must be an integer, got {n_donors!r}",
            key="n_donors",
            hint=f"use a whole number >= {MIN_DONORS}, or leave it out for the paper's 27",
        )
    problem = _size_problem(int(n_donors))
    if problem is not None:
        raise InputError(
            f"too few donors: {problem}",
            key="n_donors",
            hint=f"use n_donors >= {MIN_DONORS}: each contrast group (HD, SSc, SRC yes/no, "
            "ILD yes/no) needs at least 2 donors",
        )
    return int(n_donors)


def default_batches(n_donors: int | None) -> int:
    """Lanes of a cohort: 4 for the paper's, else the paper's ~7 samples per lane (>= 2)."""
    if n_donors is None:
        return SimParams.n_batches
    n_samples = check_n_donors(n_donors) + len(TIMEPOINTS) - 1
    return max(2, _half_up(n_samples / _SAMPLES_PER_LANE))


def clinical_table(n_donors: int | None = None) -> pd.DataFrame:
    """The 27 donors of the reference study, or ``n_donors`` drawn in its proportions.

    Parameters
    ----------
    n_donors
        ``None``: the paper's table. Else the sizes of `group_sizes` (at least
        `MIN_DONORS`), ids ``SSc1..SScK`` then ``HD1..HDM``; which SSc donors have SRC,
        ILD, ARA and which donors are male is drawn with exact counts (SSc4 always has SRC
        and ILD, as in the paper); ages are normal with the paper's per-group mean and SD,
        rounded, within 18-90. The draw depends on ``n_donors`` only (`TABLE_SEED`).

    Returns
    -------
    DataFrame with columns ``donor_id, group, age, sex, SRC, ILD, ARA`` (27 or ``n_donors``
    rows); SRC/ILD are yes/no and ARA positive/negative for SSc donors, empty strings for HD.
    """
    if n_donors is not None:
        return _drawn_table(check_n_donors(n_donors))
    rows = []
    for i, age in enumerate(_SSC_AGES, start=1):
        did = f"SSc{i}"
        ara = "positive" if i in _SRC or i in _ARA_NO_SRC else "negative"
        rows.append(
            (
                did,
                "SSc",
                age,
                "M" if did in _MALE else "F",
                "yes" if i in _SRC else "no",
                "yes" if i in _ILD else "no",
                ara,
            )
        )
    for i, age in enumerate(_HD_AGES, start=1):
        did = f"HD{i}"
        rows.append((did, "HD", age, "M" if did in _MALE else "F", "", "", ""))
    return pd.DataFrame(rows, columns=_CLINICAL_COLUMNS)


def _drawn_table(n_donors: int) -> pd.DataFrame:
    """The clinical table of `clinical_table` for ``n_donors`` (validated) donors."""
    s = group_sizes(n_donors)
    n_ssc, n_hd = s["SSc"], s["HD"]
    rng = np.random.default_rng([TABLE_SEED, n_donors])
    longitudinal = int(LONGITUDINAL_DONOR.removeprefix("SSc")) - 1  # its row among SSc

    def pick(pool: np.ndarray, k: int, forced: int | None = None) -> np.ndarray:
        """Boolean mask over SSc donors: ``k`` of ``pool`` (``forced`` always among them)."""
        mask = np.zeros(n_ssc, dtype=bool)
        if forced is not None:
            mask[forced] = True
            pool, k = pool[pool != forced], k - 1
        mask[rng.choice(pool, size=k, replace=False)] = True
        return mask

    everyone = np.arange(n_ssc)
    src = pick(everyone, s["SRC"], longitudinal)
    ild = pick(everyone, s["ILD"], longitudinal)
    ara = src | pick(np.flatnonzero(~src), s["ARA_no_SRC"])
    male_ssc = pick(everyone, s["male_SSc"])
    male_hd = np.zeros(n_hd, dtype=bool)
    male_hd[rng.choice(n_hd, size=s["male_HD"], replace=False)] = True
    ages = {}
    for group, paper, n in (("SSc", _SSC_AGES, n_ssc), ("HD", _HD_AGES, n_hd)):
        draw = rng.normal(np.mean(paper), np.std(paper, ddof=1), n)
        ages[group] = np.clip(np.rint(draw), 18, 90).astype(int)

    def yes(flag: bool) -> str:
        return "yes" if flag else "no"

    rows = [
        (
            f"SSc{i + 1}",
            "SSc",
            int(ages["SSc"][i]),
            "M" if male_ssc[i] else "F",
            yes(src[i]),
            yes(ild[i]),
            "positive" if ara[i] else "negative",
        )
        for i in range(n_ssc)
    ]
    rows += [
        (f"HD{i + 1}", "HD", int(ages["HD"][i]), "M" if male_hd[i] else "F", "", "", "")
        for i in range(n_hd)
    ]
    return pd.DataFrame(rows, columns=_CLINICAL_COLUMNS)


def sample_specs(n_batches: int, n_donors: int | None = None) -> list[SampleSpec]:
    """All samples of the cohort in a fixed order, lanes assigned in turn (L1, L2, ...).

    ``n_donors`` as in `clinical_table`; the longitudinal donor (SSc4) has three samples.
    """
    specs: list[SampleSpec] = []
    for did in clinical_table(n_donors)["donor_id"]:
        pairs = TIMEPOINTS if did == LONGITUDINAL_DONOR else ((did, "baseline"),)
        for sid, tp in pairs:
            i = len(specs)
            specs.append(SampleSpec(i, sid, did, tp, f"L{i % n_batches + 1}"))
    return specs


def _timepoint_pos(timepoint: str) -> int:
    return [tp for _, tp in TIMEPOINTS].index(timepoint)


def share_folds(design: str, params: SimParams, spec: SampleSpec, donor: pd.Series) -> dict:
    """Planted fold of each effect subset's share for one sample (subset -> fold)."""
    folds: dict[str, float] = {}
    if design == "prepost" and treated(spec.timepoint) == "yes":
        folds[PREPOST_SUBSET] = params.prepost_fold
    if design in ("null", "stim", "prepost"):
        return folds
    if donor["SRC"] == "yes":
        folds["CD14_EGR1"] = params.egr1_fold
    if donor["ILD"] == "yes":
        folds["CD8_TEM_T2ISG"] = params.t2isg_fold
    if spec.donor_id == LONGITUDINAL_DONOR:
        f = params.timecourse_share[_timepoint_pos(spec.timepoint)]
        folds["CD14_EGR1"] = params.egr1_fold if f is None else float(f)
    return folds


def program_fold(design: str, params: SimParams, spec: SampleSpec) -> float:
    """Fold of the EGR1 program in monocytes of one sample (1 = unchanged)."""
    if design == "null" or spec.donor_id != LONGITUDINAL_DONOR:
        return 1.0
    return float(params.timecourse_expression[_timepoint_pos(spec.timepoint)])


def base_shares(params: SimParams) -> np.ndarray:
    """Expected share of every subset in a 60-year-old donor without effects (sums to 1)."""
    share = np.array([s.share for s in SUBSETS], dtype=float)
    names = [s.name for s in SUBSETS]
    fixed = {"CD14_EGR1": params.egr1_base_share, "CD8_TEM_T2ISG": params.t2isg_base_share}
    return _set_shares(share, names, fixed)


def _set_shares(share: np.ndarray, names: list[str], fixed: dict[str, float]) -> np.ndarray:
    """Set some subsets' shares exactly and rescale the others to make the total 1."""
    out = share.copy()
    idx = [names.index(k) for k in fixed]
    rest = np.ones(len(out), bool)
    rest[idx] = False
    out[rest] *= (1.0 - sum(fixed.values())) / out[rest].sum()
    out[idx] = list(fixed.values())
    return out


def expected_shares(params: SimParams, age: float, folds: dict[str, float]) -> np.ndarray:
    """Expected (design-level) composition of a sample, before donor variation.

    Parameters
    ----------
    params
        Simulation parameters (base shares, age slope).
    age
        Donor age in years.
    folds
        Planted share folds (subset -> fold).

    Returns
    -------
    Array (n_subsets,) summing to 1.
    """
    names = [s.name for s in SUBSETS]
    share = base_shares(params)
    naive = names.index("CD8_Naive")
    share[naive] *= np.exp(params.age_slope * (age - REFERENCE_AGE))
    fixed = {
        "CD14_EGR1": params.egr1_base_share * folds.get("CD14_EGR1", 1.0),
        "CD8_TEM_T2ISG": params.t2isg_base_share * folds.get("CD8_TEM_T2ISG", 1.0),
    }
    return _set_shares(share, names, fixed)


def donor_shares(
    params: SimParams, age: float, folds: dict[str, float], rng: np.random.Generator
) -> np.ndarray:
    """Realised composition of a donor's sample.

    A Dirichlet draw around the no-effect expectation, then the planted folds applied to
    the effect subsets (the others rescaled).

    ``rng`` must be the donor's generator, so a donor's timepoints share their variation.
    Returns an array (n_subsets,) summing to 1.
    """
    names = [s.name for s in SUBSETS]
    expected = expected_shares(params, age, {})
    draw = rng.dirichlet(params.dirichlet_concentration * expected)
    draw = np.maximum(draw, 1e-12)
    fixed = {k: draw[names.index(k)] * f for k, f in folds.items()}
    return _set_shares(draw / draw.sum(), names, fixed) if fixed else draw / draw.sum()


def baseline_counts(design: str, params: SimParams, cells: int, seed: int) -> pd.DataFrame:
    """Cell counts per subset of the paper donors' baseline samples, with perfect labels.

    One generator seeded ``seed`` draws, donor by donor in `sample_specs` order, the
    `donor_shares` with the design's `share_folds`, then ``cells`` cells multinomially.
    Returns donors (27, index ``donor_id``) x subsets.
    """
    clinical = clinical_table().set_index("donor_id")
    rng = np.random.default_rng(seed)
    counts = {}
    for spec in sample_specs(params.n_batches):
        if spec.timepoint != "baseline":
            continue
        donor = clinical.loc[spec.donor_id]
        folds = share_folds(design, params, spec, donor)
        shares = donor_shares(params, float(donor["age"]), folds, rng)
        counts[spec.donor_id] = rng.multinomial(cells, shares)
    return pd.DataFrame(counts, index=[s.name for s in SUBSETS]).T


def _age_slope_effect(params: SimParams) -> tuple:
    """The `effects_table` row of the age effect on naive CD8 T cells."""
    naive_share = base_shares(params)[[s.name for s in SUBSETS].index("CD8_Naive")]
    return (
        "age_slope",
        "CD8_Naive",
        "age",
        "",
        "",
        "",
        float(np.exp(params.age_slope)),
        naive_share,
        "",
        "",
        "",
    )


def _clinical_effects(params: SimParams) -> list[tuple]:
    """The `effects_table` rows of the planted share folds between clinical groups."""
    return [
        (
            "composition",
            "CD14_EGR1",
            "SRC",
            "yes",
            "no",
            "group=SSc",
            params.egr1_fold,
            params.egr1_base_share,
            "",
            "",
            "",
        ),
        (
            "composition",
            "CD8_TEM_T2ISG",
            "ILD",
            "yes",
            "no",
            "group=SSc",
            params.t2isg_fold,
            params.t2isg_base_share,
            "",
            "",
            "",
        ),
    ]


def _timecourse_effects(params: SimParams) -> list[tuple]:
    """The `effects_table` rows of the longitudinal donor's share and program time courses."""
    shares = [f if f is not None else params.egr1_fold for f in params.timecourse_share]
    tps = [tp for _, tp in TIMEPOINTS]
    return [
        (
            "composition_timecourse",
            "CD14_EGR1",
            "timepoint",
            "",
            "",
            "",
            params.egr1_fold,
            params.egr1_base_share,
            LONGITUDINAL_DONOR,
            ";".join(f"{t}:{f:g}" for t, f in zip(tps, shares, strict=True)),
            "",
        ),
        (
            "program_timecourse",
            "Mono",
            "timepoint",
            "",
            "",
            "",
            max(params.timecourse_expression),
            float("nan"),
            LONGITUDINAL_DONOR,
            ";".join(f"{t}:{f:g}" for t, f in zip(tps, params.timecourse_expression, strict=True)),
            ";".join(EGR1_PROGRAM),
        ),
    ]


def effects_table(design: str, params: SimParams) -> pd.DataFrame:
    """One row per planted effect.

    Returns
    -------
    DataFrame with columns ``kind, subset, variable, case, control, within, fold,
    base_share, donor, timepoints, program``; ``kind`` is ``composition`` (share fold of a
    subset between clinical groups), ``age_slope`` (log-share change per year),
    ``composition_timecourse`` or ``program_timecourse`` (SSc4's three samples; folds per
    timepoint in ``timepoints`` as ``tp:fold;...``), ``expression_stimulation`` (design
    ``stim``: one row per gene of the interferon response, its fold in ``fold``, its name in
    ``program``); design ``prepost`` has one ``composition`` row on ``treated``.
    """
    cols = [
        "kind",
        "subset",
        "variable",
        "case",
        "control",
        "within",
        "fold",
        "base_share",
        "donor",
        "timepoints",
        "program",
    ]
    rows = [_age_slope_effect(params)]
    if design == "paper":
        rows += _clinical_effects(params) + _timecourse_effects(params)
    if design == "stim":
        rows += stim_effects(params.ifn_fold)
    if design == "prepost":
        rows += prepost_effects(params.prepost_fold, params.egr1_base_share)
    return pd.DataFrame(rows, columns=cols)
