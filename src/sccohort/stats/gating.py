"""A flow-cytometry gating strategy for a cell subset from its surface proteins.

:func:`gating_strategy` finds a short sequence of one-protein thresholds ("CD191 > 1.8",
then "HLA-DR < 3.1", ...), as a flow cytometrist gates, that recovers the subset with the
best F1 score. Donors are split into training and held-out donors (one seeded split); the
gates are searched on the training donors' cells only, by a small beam search over the
best-separating proteins (AUROC on training cells, :mod:`sccohort.stats.protein_markers`),
both directions and every threshold between two distinct values of the population being
gated (an exact search by cumulative sums; each threshold is also reported as a quantile of
that population). Purity (precision), recall and F1 are then measured on the held-out
donors' cells, pooled and per donor (:class:`GatingResult`). A further gate is kept only
when it raises the training F1 by at least ``min_gain``. One split, not cross-validation:
the gates reported are exactly the gates whose held-out figures are reported.
`gate_subsets` gates several subsets on one panel and sorts each population once.

Thresholds are in the units of ``prot.X`` (CLR or dsb). A cytometer needs its own
calibration; the quantile of each threshold (where it lies in the gated population) is
the part that transfers.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from sccohort.stats.gating_result import GATING_COLUMNS, Gate, GatingResult
from sccohort.stats.protein_markers import _markers, _Panel, _SortedCells

from ..errors import InputError

__all__ = ["GatingOptions", "gate_subsets", "gating_strategy"]


def _split_donors(
    donors: np.ndarray, test_donors: float | Sequence[str], seed: int, subset: str
) -> tuple[list[str], list[str]]:
    unique = sorted(set(donors.tolist()))
    if len(unique) < 2:
        raise InputError(
            f"gating subset '{subset}' needs cells of at least 2 donors, got {len(unique)}",
            key="donors",
            hint="Held-out donors measure how well the gates transfer; pass the donor per cell",
        )
    if isinstance(test_donors, (float, int)) and not isinstance(test_donors, bool):
        frac = float(test_donors)
        if not 0.0 < frac < 1.0:
            raise InputError(
                f"test_donors = {test_donors} is not a fraction in (0, 1)",
                key="test_donors",
                hint="Use e.g. 0.3, or a list of donor ids",
            )
        n_test = min(max(1, round(frac * len(unique))), len(unique) - 1)
        perm = np.random.default_rng(seed).permutation(len(unique))
        test = sorted(unique[i] for i in perm[:n_test])
    else:
        test = sorted(dict.fromkeys(map(str, test_donors)))
        unknown = [d for d in test if d not in unique]
        if unknown:
            raise InputError(
                f"test donor(s) {', '.join(unknown)} have no cells",
                key="test_donors",
                hint=f"Donors: {', '.join(unique)}",
            )
        if not test or len(test) == len(unique):
            raise InputError(
                f"test_donors holds {len(test)} of {len(unique)} donors",
                key="test_donors",
                hint="Hold out at least one donor and train on at least one",
            )
    train = [d for d in unique if d not in set(test)]
    return train, test


def _metrics(gated: np.ndarray, target: np.ndarray) -> tuple[int, int, float, float, float]:
    n_gated, n_target = int(gated.sum()), int(target.sum())
    tp = int((gated & target).sum())
    purity = tp / n_gated if n_gated else np.nan
    recall = tp / n_target if n_target else np.nan
    f1 = 2.0 * tp / (n_gated + n_target) if n_gated + n_target else np.nan
    return n_gated, n_target, purity, recall, f1


@dataclass
class _State:
    gates: tuple[Gate, ...]
    mask: np.ndarray  # training cells in the population after the gates
    f1: float


def _best_thresholds(
    v: np.ndarray, target: np.ndarray, n_target: int
) -> list[tuple[str, float, float, float]]:
    """Best threshold per direction for one protein on one population (exact search).

    ``v`` (m,) are the population's values in ascending order and ``target`` (m,) flags
    the subset's cells in the same order. Every midpoint between two consecutive distinct
    values is tried; returns ``[(direction, threshold, quantile, f1), ...]`` for ``">"``
    and ``"<"``, ``quantile`` being the fraction of the population below the threshold.
    """
    cum_tp = np.concatenate([[0], np.cumsum(target)])
    # cut k keeps cells [k:] above / [:k] below, for k at the starts of distinct values
    cuts = np.flatnonzero(np.diff(v) > 0) + 1
    if len(cuts) == 0:
        return []
    thresholds = (v[cuts - 1] + v[cuts]) / 2.0
    out = []
    for direction, n_kept, tp in (
        (">", len(v) - cuts, cum_tp[-1] - cum_tp[cuts]),
        ("<", cuts, cum_tp[cuts]),
    ):
        f1 = 2.0 * tp / (n_kept + n_target)
        k = int(np.argmax(f1))
        out.append((direction, float(thresholds[k]), float(cuts[k] / len(v)), float(f1[k])))
    return out


@dataclass(frozen=True)
class GatingOptions:
    """The settings of a gating search (`gating_strategy`, `gate_subsets`), checked when made.

    Attributes
    ----------
    max_gates
        At most this many gates (1-5).
    test_donors
        Fraction of donors held out (at least one donor each side), or the held-out donor
        ids.
    start
        ``"all"``: gate from all cells (proteins only). ``"parent"``: start from the parent
        lineage as given (e.g. a lineage gate the lab already uses).
    n_candidates
        Proteins considered: the top ``n_candidates`` by AUROC against the parent's rest and
        the top ``n_candidates`` against all other cells.
    beam_width
        Sequences kept after each step.
    min_gain
        Smallest rise of training F1 that justifies one more gate.
    seed
        Seed of the donor split.

    Examples
    --------
    >>> from sccohort.stats import GatingOptions
    >>> GatingOptions(max_gates=2).beam_width
    5
    """

    max_gates: int = 3
    test_donors: float | Sequence[str] = 0.3
    start: Literal["all", "parent"] = "all"
    n_candidates: int = 12
    beam_width: int = 5
    min_gain: float = 0.01
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= int(self.max_gates) <= 5:
            raise InputError(
                f"max_gates = {self.max_gates} is outside 1-5",
                key="max_gates",
                hint="A gating strategy has a few gates; use 1 to 5",
            )
        if self.start not in ("all", "parent"):
            raise InputError(
                f"start = {self.start!r} is neither 'all' nor 'parent'",
                key="start",
                hint="Use 'all'",
            )

    def to_dict(self, held_out: list[str]) -> dict[str, Any]:
        """The options as `GatingResult.params` records them (the held-out donors named)."""
        return {
            "max_gates": int(self.max_gates),
            "test_donors": self.test_donors
            if isinstance(self.test_donors, float)
            else list(held_out),
            "start": self.start,
            "n_candidates": self.n_candidates,
            "beam_width": self.beam_width,
            "min_gain": self.min_gain,
            "seed": self.seed,
        }


def gating_strategy(
    prot: AnnData,
    target: np.ndarray,
    parent: np.ndarray,
    donors: np.ndarray | Sequence[str],
    *,
    subset: str = "subset",
    options: GatingOptions | None = None,
) -> GatingResult:
    """Find a short sequence of protein thresholds that gates a subset, tested on new donors.

    Donors are split once (seeded) into training and held-out donors. On the training
    donors' cells, a beam search (width ``beam_width``) extends gating sequences one gate
    at a time: every gate is ``protein > t`` or ``protein < t`` for one of the
    ``n_candidates`` proteins that best separate the subset from its parent lineage and
    from all cells (AUROC on training cells, isotype controls excluded), with ``t`` the
    best of all midpoints between distinct values in the population being gated; sequences
    are scored by F1 of the gated cells against the subset. A longer sequence replaces the best
    shorter one only if it raises the training F1 by at least ``min_gain``. The chosen
    gates are then applied, unchanged, to the held-out donors' cells.

    Parameters
    ----------
    prot
        Cells x proteins (n_cells x n_proteins), ``.X`` normalised (CLR or dsb).
    target
        Boolean (n_cells,): the subset's cells.
    parent
        Boolean (n_cells,): the parent lineage's cells (e.g. all monocytes).
    donors
        Donor id of each cell, (n_cells,).
    subset
        The subset's name, for tables and messages.
    options
        The search's settings (`GatingOptions`; default: its defaults).

    Returns
    -------
    GatingResult
        Gates, per-step purity / recall / F1 on training and held-out cells
        (:meth:`GatingResult.to_frame`), held-out per-donor results, the training markers.

    Examples
    --------
    >>> from sccohort.stats import GatingOptions, gating_strategy
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> target = (mdata.obs["subset"] == "CD14_EGR1").to_numpy()
    >>> parent = (mdata.obs["l1"] == "Mono").to_numpy()
    >>> donors = mdata.obs["donor_id"].to_numpy()
    >>> options = GatingOptions(test_donors=["HD1"])
    >>> result = gating_strategy(mdata["prot"], target, parent, donors, options=options)
    >>> [str(gate) for gate in result.gates]
    ['CD191 > 1.56', 'CD16 < 1.22']
    """
    panel = _Panel(prot)
    target, parent = panel.masks(target, parent, subset)
    return _gating(panel, target, parent, donors, subset, options or GatingOptions())


def gate_subsets(
    prot: AnnData,
    subsets: Mapping[str, tuple[np.ndarray, np.ndarray]],
    donors: np.ndarray | Sequence[str],
    options: GatingOptions | None = None,
) -> list[tuple[GatingResult, pd.DataFrame]]:
    """`gating_strategy` and `protein_markers` of several subsets of one antibody panel.

    ``subsets``: name -> (target, parent) boolean masks (n_cells,); ``options``: the
    search's settings (`GatingOptions`). Returns one (gating result, protein marker table)
    per subset, in order; the same results as the two functions subset by subset, with the
    panel checked and the sorts of all cells, of each lineage and of the training donors'
    cells made once.

    Examples
    --------
    >>> from sccohort.stats import GatingOptions, gate_subsets
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> target = (mdata.obs["subset"] == "CD14_EGR1").to_numpy()
    >>> parent = (mdata.obs["l1"] == "Mono").to_numpy()
    >>> donors = mdata.obs["donor_id"].to_numpy()
    >>> options = GatingOptions(test_donors=["HD1"])
    >>> ((result, markers),) = gate_subsets(
    ...     mdata["prot"], {"EGR1": (target, parent)}, donors, options
    ... )
    >>> [str(gate) for gate in result.gates], markers["protein"].iloc[0]
    (['CD191 > 1.56', 'CD16 < 1.22'], 'CD191')
    """
    panel = _Panel(prot)
    options = options or GatingOptions()
    out = []
    for subset, (target, parent) in subsets.items():
        target, parent = panel.masks(target, parent, subset)
        result = _gating(panel, target, parent, donors, subset, options)
        out.append((result, _markers(panel.cells, panel.names, target, parent, subset)))
    return out


def _gating(
    panel: _Panel,
    target: np.ndarray,
    parent: np.ndarray,
    donors: np.ndarray | Sequence[str],
    subset: str,
    options: GatingOptions,
) -> GatingResult:
    """`gating_strategy` on a checked panel and masks."""
    donors = np.asarray(donors).astype(str)
    _check_donors(panel, donors)
    train_donors, test_donors_ = _split_donors(donors, options.test_donors, options.seed, subset)
    is_train = np.isin(donors, train_donors)
    if not (target & is_train).any():
        raise InputError(
            f"subset '{subset}' has no cells in the training donors",
            key="test_donors",
            hint="Hold out other donors (test_donors=) or another seed",
        )
    if not (target & ~is_train).any():
        warnings.warn(
            f"subset '{subset}' has no cells in the held-out donors "
            f"({', '.join(test_donors_)}); test recall and F1 are undefined",
            UserWarning,
            stacklevel=2,
        )
    train = panel.train(is_train)
    markers = _markers(train, panel.names, target[is_train], parent[is_train], subset)
    by_parent = markers["protein"].tolist()[: options.n_candidates]
    by_all = markers.sort_values("auroc_all", key=lambda s: -(s - 0.5).abs(), kind="stable")
    candidates = list(dict.fromkeys(by_parent + by_all["protein"].tolist()[: options.n_candidates]))
    start_train = (
        parent[is_train] if options.start == "parent" else np.ones(int(is_train.sum()), bool)
    )
    gates = _beam_search(
        train, panel.names, target[is_train], start_train, candidates,
        max_gates=int(options.max_gates), beam_width=options.beam_width,
        min_gain=options.min_gain,
    )  # fmt: skip
    start_mask = parent if options.start == "parent" else np.ones(len(target), dtype=bool)
    label = "parent" if options.start == "parent" else "all cells"
    steps, final = _gating_steps(panel, gates, target, start_mask, is_train, label, subset)
    per_donor = _per_donor(final, target, donors, test_donors_)
    params = options.to_dict(test_donors_)
    return GatingResult(
        subset=subset,
        gates=gates,
        start=options.start,
        steps=steps,
        per_donor=per_donor,
        markers=markers,
        train_donors=train_donors,
        test_donors=test_donors_,
        params=params,
    )


def _check_donors(panel: _Panel, donors: np.ndarray) -> None:
    if donors.shape != (panel.n_obs,):
        raise InputError(
            f"donors has shape {donors.shape} but the protein modality has {panel.n_obs} cells",
            key="donors",
            hint="Pass the donor id of each cell, e.g. mdata.obs['donor_id'].to_numpy()",
        )


def _beam_search(
    train: _SortedCells,
    names: Sequence[str],
    tt: np.ndarray,
    start_train: np.ndarray,
    candidates: list[str],
    *,
    max_gates: int,
    beam_width: int,
    min_gain: float,
) -> list[Gate]:
    """The gates of the best F1 on the training cells: a beam search over thresholds."""
    xt = train.xt  # training cells: proteins x cells
    col = {name: i for i, name in enumerate(names)}
    n_target_train = int(tt.sum())
    # each candidate's training cells in ascending (stable) order, once: a population's
    # order is this order restricted to its cells
    ascending = {c: train.order(col[c]) for c in candidates}
    root = _State((), start_train, _metrics(start_train, tt)[4])
    best, beam = root, [root]
    for _ in range(max_gates):
        proposals: dict[frozenset, _State] = {}
        for state in beam:
            used = {(g.protein, g.direction) for g in state.gates}
            if not state.mask.any():
                continue
            for protein in candidates:
                cells = ascending[protein][state.mask[ascending[protein]]]
                values = xt[col[protein], cells].astype(np.float64)
                in_target = tt[cells]
                for direction, thr, q, f1 in _best_thresholds(values, in_target, n_target_train):
                    if (protein, direction) in used:
                        continue
                    gate = Gate(protein, direction, thr, q)  # type: ignore[arg-type]
                    key = frozenset((g.protein, g.direction) for g in (*state.gates, gate))
                    if key not in proposals or proposals[key].f1 < f1:
                        proposals[key] = _State((*state.gates, gate), state.mask, f1)
        if not proposals:
            break
        ranked = sorted(proposals.values(), key=lambda s: -s.f1)[:beam_width]
        beam = []
        for state in ranked:
            gate = state.gates[-1]
            mask = state.mask & gate.keep(xt[col[gate.protein]])
            beam.append(_State(state.gates, mask, state.f1))
        if beam[0].f1 > best.f1 + min_gain:
            best = beam[0]
    return list(best.gates)


def _gating_steps(
    panel: _Panel,
    gates: list[Gate],
    target: np.ndarray,
    start_mask: np.ndarray,
    is_train: np.ndarray,
    label: str,
    subset: str,
) -> tuple[pd.DataFrame, np.ndarray]:
    """Purity and recall after each gate, training and held-out cells; the final test gate."""
    xs, col = panel.cells.xt, {name: i for i, name in enumerate(panel.names)}
    rows = []
    for split, in_split in (("train", is_train), ("test", ~is_train)):
        mask = start_mask & in_split
        for step in range(len(gates) + 1):
            gate = gates[step - 1] if step else None
            if gate is not None:
                mask = mask & gate.keep(xs[col[gate.protein]])
            n_gated, n_target, purity, recall, f1 = _metrics(mask, target & in_split)
            rows.append(
                {
                    "subset": subset,
                    "step": step,
                    "gate": str(gate) if gate else label,
                    "protein": gate.protein if gate else "",
                    "direction": gate.direction if gate else "",
                    "threshold": gate.threshold if gate else np.nan,
                    "quantile": gate.quantile if gate else np.nan,
                    "split": split,
                    "n_gated": n_gated,
                    "n_target": n_target,
                    "purity": purity,
                    "recall": recall,
                    "f1": f1,
                }
            )
    return pd.DataFrame(rows, columns=GATING_COLUMNS), mask


def _per_donor(
    final: np.ndarray, target: np.ndarray, donors: np.ndarray, test_donors: list[str]
) -> pd.DataFrame:
    """Purity and recall of the whole strategy in each held-out donor."""
    rows = []
    for donor in test_donors:
        cells = donors == donor
        n_gated, n_target, purity, recall, f1 = _metrics(final & cells, target & cells)
        rows.append(
            {
                "donor": donor,
                "n_cells": int(cells.sum()),
                "n_target": n_target,
                "n_gated": n_gated,
                "purity": purity,
                "recall": recall,
                "f1": f1,
            }
        )
    return pd.DataFrame(
        rows, columns=["donor", "n_cells", "n_target", "n_gated", "purity", "recall", "f1"]
    )
