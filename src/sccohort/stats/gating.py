"""Surface-protein markers of a cell subset and a flow-cytometry gating strategy for it.

:func:`protein_markers` ranks the antibodies of a panel by how well they separate a subset
from the rest of its parent lineage and from all other cells (AUROC, the Mann-Whitney ``U``
over ``n_target * n_other`` with midranks for ties, counted exactly by merging the subset's
sorted values with each comparison group's). ``U`` is additive over the compared cells, so
the sorts of all cells and of each lineage serve every subset (`gate_subsets` gates several
subsets on one panel and makes each sort once).

:func:`gating_strategy` finds a short sequence of one-protein thresholds ("CD191 > 1.8",
then "HLA-DR < 3.1", ...), as a flow cytometrist gates, that recovers the subset with the
best F1 score. Donors are split into training and held-out donors (one seeded split); the
gates are searched on the training donors' cells only, by a small beam search over the
best-separating proteins (AUROC on training cells), both directions and every threshold
between two distinct values of the population being gated (an exact search by cumulative
sums; each threshold is also reported as a quantile of that population). Purity
(precision), recall and F1 are then measured on the held-out donors' cells, pooled and per
donor. A further gate is kept only
when it raises the training F1 by at least ``min_gain``. One split, not cross-validation:
the gates reported are exactly the gates whose held-out figures are reported.

Thresholds are in the units of ``prot.X`` (CLR or dsb). A cytometer needs its own
calibration; the quantile of each threshold (where it lies in the gated population) is
the part that transfers.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from ..errors import InputError

__all__ = ["Gate", "GatingResult", "gate_subsets", "gating_strategy", "protein_markers"]

MARKER_COLUMNS = [
    "subset",
    "protein",
    "rank",
    "auroc_parent",
    "auroc_all",
    "direction",
    "median_target",
    "median_parent_rest",
    "median_rest",
    "n_target",
    "n_parent_rest",
    "n_rest",
]
GATING_COLUMNS = [
    "subset",
    "step",
    "gate",
    "protein",
    "direction",
    "threshold",
    "quantile",
    "split",
    "n_gated",
    "n_target",
    "purity",
    "recall",
    "f1",
]
METHOD = "protein gating: beam search of thresholds on training donors, held-out donors"


@dataclass(frozen=True)
class Gate:
    """One threshold gate ``protein > threshold`` or ``protein < threshold``.

    Attributes
    ----------
    protein
        Antibody name (a ``var_name`` of the protein modality).
    direction
        ``">"`` keeps cells above the threshold, ``"<"`` cells below it.
    threshold
        In the normalised units of ``prot.X`` (CLR or dsb).
    quantile
        Where the threshold lies among the training cells of the population being gated
        (the cells that passed the previous gates), in ``[0, 1]``.

    Examples
    --------
    >>> from sccohort.stats import Gate
    >>> gate = Gate("CD14", ">", 1.0, 0.8)
    >>> str(gate), gate.keep(np.array([0.5, 2.0])).tolist()
    ('CD14 > 1', [False, True])
    """

    protein: str
    direction: Literal[">", "<"]
    threshold: float
    quantile: float

    def keep(self, values: np.ndarray) -> np.ndarray:
        """Boolean mask (n,) of the cells this gate keeps, given the protein's values (n,)."""
        threshold = np.float64(self.threshold)  # compared in float64, also with float32 values
        return values > threshold if self.direction == ">" else values < threshold

    def __str__(self) -> str:
        return f"{self.protein} {self.direction} {self.threshold:.3g}"


@dataclass
class GatingResult:
    """A gating strategy for one subset and how well it recovers the subset.

    Attributes
    ----------
    subset
        The subset's name.
    gates
        The gates, applied in order (at most ``max_gates``; empty if no gate helps).
    start
        ``"all"`` (gating starts from every cell) or ``"parent"`` (from the parent lineage).
    steps
        Tidy table, one row per step (0 = the start population) and split (``"train"``,
        ``"test"``); columns :data:`GATING_COLUMNS`.
    per_donor
        Held-out donors' results after the last gate: ``donor, n_cells, n_target, n_gated,
        purity, recall, f1``.
    markers
        :func:`protein_markers` on the training cells (the candidates of the search).
    train_donors, test_donors
        The donor split.

    Examples
    --------
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.stats import GatingOptions, gating_strategy
    >>> mdata = toy_mudata()
    >>> target = (mdata.obs["subset"] == "CD14_EGR1").to_numpy()
    >>> parent = (mdata.obs["l1"] == "Mono").to_numpy()
    >>> result = gating_strategy(mdata["prot"], target, parent, mdata.obs["donor_id"].to_numpy(),
    ...                          options=GatingOptions(test_donors=["HD1"]))
    >>> result.test_donors, result.to_frame()["split"].unique().tolist()
    (['HD1'], ['train', 'test'])
    """

    subset: str
    gates: list[Gate]
    start: Literal["all", "parent"]
    steps: pd.DataFrame
    per_donor: pd.DataFrame
    markers: pd.DataFrame
    train_donors: list[str]
    test_donors: list[str]
    method: str = METHOD
    params: dict = field(default_factory=dict)

    def _final(self, column: str, split: str = "test") -> float:
        rows = self.steps[self.steps["split"] == split]
        return float(rows[column].iloc[-1])

    @property
    def f1(self) -> float:
        """F1 of the full gating sequence on the held-out donors' cells (pooled)."""
        return self._final("f1")

    @property
    def purity(self) -> float:
        """Purity (precision) of the full sequence on the held-out donors' cells."""
        return self._final("purity")

    @property
    def recall(self) -> float:
        """Recall of the full sequence on the held-out donors' cells."""
        return self._final("recall")

    def to_frame(self) -> pd.DataFrame:
        """The per-step table (``tables/gating.csv``): columns :data:`GATING_COLUMNS`."""
        return self.steps.copy()

    def step_masks(self, prot: AnnData, parent: np.ndarray | None = None) -> list[np.ndarray]:
        """Cells in the population after each step, for plots and for applying the gates.

        Parameters
        ----------
        prot
            Cells x proteins with the same normalisation as the one the gates came from.
        parent
            Boolean (n_cells,) parent lineage; required when :attr:`start` is ``"parent"``.

        Returns
        -------
        ``len(gates) + 1`` boolean arrays (n_cells,): the start population, then the cells
        that passed gates 1..k. The population gated at step k is mask k - 1; the last mask
        is the predicted subset.
        """
        values = _dense(prot)
        names = list(map(str, prot.var_names))
        if self.start == "parent":
            if parent is None:
                raise InputError(
                    f"the gating of subset '{self.subset}' starts from the parent lineage",
                    hint="Pass parent=, a boolean mask of the parent lineage's cells",
                )
            mask = _as_mask(parent, prot.n_obs, "parent", self.subset)
        else:
            mask = np.ones(prot.n_obs, dtype=bool)
        masks = [mask]
        for gate in self.gates:
            if gate.protein not in names:
                raise InputError(
                    f"protein '{gate.protein}' of the gates of subset '{self.subset}' is not "
                    "in the protein modality",
                    hint="Apply the gates to data with the same antibody panel",
                )
            mask = mask & gate.keep(values[:, names.index(gate.protein)])
            masks.append(mask)
        return masks

    def apply(self, prot: AnnData, parent: np.ndarray | None = None) -> np.ndarray:
        """Boolean mask (n_cells,) of the cells the whole gating sequence keeps."""
        return self.step_masks(prot, parent)[-1]


def _dense(prot: AnnData, columns: np.ndarray | None = None) -> np.ndarray:
    """``prot.X`` as a dense float64 array (n_cells, n_proteins), or only ``columns``."""
    x = prot.X
    if columns is not None and len(columns) < x.shape[1]:
        x = x[:, columns]
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    return x.astype(np.float64, copy=False)


def _transposed(prot: AnnData, columns: np.ndarray) -> np.ndarray:
    """``prot.X[:, columns]`` as a dense (proteins x cells) array, float32 where exact."""
    x = prot.X[:, columns] if len(columns) < prot.n_vars else prot.X
    x = x.toarray() if sp.issparse(x) else np.asarray(x)
    xt = np.ascontiguousarray(x.T)
    if xt.dtype == np.float32:
        return xt
    single = xt.astype(np.float32)
    return single if np.array_equal(single, xt) else xt.astype(np.float64, copy=False)


def _as_mask(values, n: int, name: str, subset: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise InputError(
            f"{name} has shape {arr.shape} but the protein modality has {n} cells",
            key=name,
            hint=f"Pass one boolean per cell of the protein modality (subset '{subset}')",
        )
    if arr.dtype != bool:
        raise InputError(
            f"{name} must be boolean, got dtype {arr.dtype}",
            key=name,
            hint="Pass e.g. (obs['subset'] == 'CD14_EGR1').to_numpy()",
        )
    return arr


def _isotype_mask(prot: AnnData) -> np.ndarray:
    if "isotype" in prot.var.columns:
        flags = pd.array(prot.var["isotype"], dtype="boolean")
        return flags.fillna(False).to_numpy(dtype=bool)
    return np.asarray(prot.var_names.str.contains("isotype", case=False))


@numba.njit(parallel=True, cache=True)
def _u_statistic(pos, neg):  # pragma: no cover - numba
    """Mann-Whitney ``U`` per row of ``pos`` (m, n1) against ``neg`` (m, n0); rows sorted.

    ``U = sum over pos values v of (#neg < v + #neg == v / 2)``, the rank-sum statistic with
    midranks for ties, by one merge of the two sorted rows (twice U is an integer count, so
    the result is exact).
    """
    m, n1 = pos.shape
    n0 = neg.shape[1]
    u = np.empty(m)
    for j in numba.prange(m):  # proteins on numba's threads
        below, upto, twice = 0, 0, 0
        for i in range(n1):
            v = pos[j, i]
            while below < n0 and neg[j, below] < v:
                below += 1
            upto = max(upto, below)
            while upto < n0 and neg[j, upto] <= v:
                upto += 1
            twice += below + upto  # 2 #(< v) + #(== v)
        u[j] = twice / 2.0
    return u


@numba.njit(parallel=True, cache=True)
def _median_rest(group, own):  # pragma: no cover - numba
    """Median of each row of ``group`` (m, k) without ``own``'s values (m, l); rows sorted.

    ``own``'s values are a part of ``group``'s (as multisets, e.g. a subset's cells in its
    lineage); the rest's two middle order statistics are found in one pass that skips them.
    As :func:`numpy.median` of the rest (NaN when nothing is left).
    """
    m, k = group.shape
    n_own = own.shape[1]
    out = np.full(m, np.nan)
    left = k - n_own
    if left <= 0:
        return out
    lo, hi = (left - 1) // 2, left // 2
    for j in numba.prange(m):
        p, rank, low = 0, 0, 0.0
        for i in range(k):
            v = group[j, i]
            if p < n_own and own[j, p] == v:  # one of own's copies of v
                p += 1
                continue
            if rank == lo:
                low = float(v)
            if rank == hi:
                out[j] = (low + float(v)) / 2.0
                break
            rank += 1
    return out


def _mask_key(mask: np.ndarray) -> bytes:
    return hashlib.blake2b(np.packbits(mask).tobytes(), digest_size=16).digest() + bytes(
        str(mask.size), "ascii"
    )


class _SortedCells:
    """Protein values of a set of cells, ``xt`` (proteins x cells), and sorts of cell subsets.

    A subset's AUROCs against all cells or against its parent lineage need those cells'
    values sorted per protein; the sort of a cell set is made once and shared by every
    subset compared with it (all cells, each lineage).
    """

    def __init__(self, xt: np.ndarray):
        self.xt = xt
        self._sorted: dict[bytes, np.ndarray] = {}
        self._order: dict[int, np.ndarray] = {}

    def order(self, row: int) -> np.ndarray:
        """The cells in ascending (stable) order of protein ``row``'s values (made once)."""
        if row not in self._order:
            order = np.argsort(self.xt[row], kind="stable")
            self._order[row] = order.astype(np.int32) if order.size < 2**31 else order
        return self._order[row]

    def sorted(self, mask: np.ndarray) -> np.ndarray:
        """Values of the cells in ``mask`` (n_cells,) sorted per protein (proteins x cells)."""
        key = _mask_key(mask)
        if key not in self._sorted:
            rows = self.xt[:, mask]
            # proteins in a few chunks on threads (numpy's sort releases the GIL)
            chunks = [
                c for c in np.array_split(np.arange(len(rows)), numba.get_num_threads()) if c.size
            ]
            with ThreadPoolExecutor(len(chunks)) as pool:
                list(pool.map(lambda c: rows[c[0] : c[-1] + 1].sort(axis=1), chunks))
            self._sorted[key] = rows
        return self._sorted[key]


def _markers(
    cells: _SortedCells, names: np.ndarray, target: np.ndarray, parent: np.ndarray, subset: str
) -> pd.DataFrame:
    xt = cells.xt
    rest_parent = parent & ~target
    rest = ~target
    # AUROC = U / (n1 n0). U against a group is additive over its cells, and U of the subset
    # against itself is n1^2 / 2 (midranks), so U against the rest = U against all cells (or
    # the parent) minus U against the subset's own cells there: the sorts of all cells and
    # of each parent lineage serve every subset. Counts and halves: exact in float64.
    pos = np.sort(xt[:, target], axis=1)
    n1 = pos.shape[1]
    every = cells.sorted(np.ones(len(target), dtype=bool))
    u_rest = _u_statistic(pos, every) - n1 * n1 / 2.0
    own = np.sort(xt[:, parent & target], axis=1)
    lineage = cells.sorted(parent)
    u_parent = _u_statistic(pos, lineage) - _u_statistic(pos, own)
    n_parent_rest, n_rest = int(rest_parent.sum()), int(rest.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        auc_parent = u_parent / (n1 * n_parent_rest)
        auc_all = u_rest / (n1 * n_rest)
    table = pd.DataFrame(
        {
            "subset": subset,
            "protein": names,
            "auroc_parent": auc_parent,
            "auroc_all": auc_all,
            "direction": np.where(auc_parent >= 0.5, "up", "down"),
            "median_target": _median_rest(pos, pos[:, :0]),
            "median_parent_rest": _median_rest(lineage, own),
            "median_rest": _median_rest(every, pos),
            "n_target": n1,
            "n_parent_rest": n_parent_rest,
            "n_rest": n_rest,
        }
    )
    order = np.lexsort((-np.abs(auc_all - 0.5), -np.abs(auc_parent - 0.5)))
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1)
    return table[MARKER_COLUMNS]


class _Panel:
    """The non-isotype antibodies of ``prot``, checked once for all subsets.

    ``names``, the values and sorts of all cells (``cells``, `_SortedCells`) and of each
    training split's cells (`train`), shared by the subsets gated on this panel. Values are
    float32 when ``prot.X`` holds float32 values (CLR or dsb: sorts twice as fast, the same
    order), else float64; thresholds are computed and compared in float64 either way.
    """

    def __init__(self, prot: AnnData):
        if not isinstance(prot, AnnData):
            raise InputError(
                f"prot must be an AnnData (cells x proteins), got {type(prot).__name__}",
                hint="Pass mdata.mod['prot']",
            )
        keep = ~_isotype_mask(prot)
        if not keep.any():
            raise InputError(
                "the protein modality has no antibody other than isotype controls",
                hint="Check var['isotype'] of the protein modality",
            )
        xt = _transposed(prot, np.flatnonzero(keep))
        if not np.isfinite(xt).all():
            raise InputError(
                "the normalised protein values (prot.X) contain NaN or infinite values",
                hint="Normalise the protein counts (CLR or dsb) before gating",
            )
        self.n_obs = prot.n_obs
        self.names = np.asarray(prot.var_names.astype(str))[keep]
        self.cells = _SortedCells(xt)
        self._train: dict[bytes, _SortedCells] = {}

    def train(self, is_train: np.ndarray) -> _SortedCells:
        """The training cells' values and sorts, made once per donor split."""
        key = _mask_key(is_train)
        if key not in self._train:
            self._train[key] = _SortedCells(self.cells.xt[:, is_train])
        return self._train[key]

    def masks(self, target, parent, subset: str) -> tuple[np.ndarray, np.ndarray]:
        """``target`` and ``parent`` checked: boolean (n_cells,), both with cells to compare."""
        target = _as_mask(target, self.n_obs, "target", subset)
        parent = _as_mask(parent, self.n_obs, "parent", subset)
        if not target.any():
            raise InputError(
                f"subset '{subset}' has no cells",
                key="target",
                hint="Check the subset name against obs['subset']",
            )
        if not (parent & ~target).any():
            raise InputError(
                f"the parent lineage of subset '{subset}' has no cells outside the subset",
                key="parent",
                hint="Pass the whole lineage, e.g. (obs['l1'] == 'Mono').to_numpy()",
            )
        return target, parent


def protein_markers(
    prot: AnnData, target: np.ndarray, parent: np.ndarray, *, subset: str = "subset"
) -> pd.DataFrame:
    """Rank surface proteins by how well they separate a subset (AUROC).

    Parameters
    ----------
    prot
        Cells x proteins (n_cells x n_proteins); ``.X`` holds normalised values (CLR or
        dsb). Isotype controls (``var["isotype"]``, else names containing "isotype") are
        left out.
    target
        Boolean (n_cells,): the subset's cells.
    parent
        Boolean (n_cells,): the parent lineage's cells (e.g. all monocytes); the subset's
        own cells in it are ignored.
    subset
        Name written in the ``subset`` column.

    Returns
    -------
    pandas.DataFrame
        One row per non-isotype protein, columns :data:`MARKER_COLUMNS`: ``auroc_parent``
        (subset vs the rest of the parent lineage), ``auroc_all`` (vs every other cell),
        ``direction`` (``"up"`` if ``auroc_parent >= 0.5``), medians of the subset, of the
        parent's rest and of all other cells, and the cell counts. Sorted by
        ``|auroc_parent - 0.5|`` then ``|auroc_all - 0.5|``, descending (``rank`` 1 = best).
        AUROCs are cell-level effect sizes, not donor-level tests.

    Examples
    --------
    >>> from sccohort.stats import protein_markers
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> target = (mdata.obs["subset"] == "CD14_EGR1").to_numpy()
    >>> parent = (mdata.obs["l1"] == "Mono").to_numpy()
    >>> table = protein_markers(mdata["prot"], target, parent, subset="CD14_EGR1")
    >>> table["protein"].iloc[0], table["direction"].iloc[0]
    ('CD191', 'up')
    """
    panel = _Panel(prot)
    target, parent = panel.masks(target, parent, subset)
    return _markers(panel.cells, panel.names, target, parent, subset)


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
