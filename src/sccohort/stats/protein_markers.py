"""Surface-protein markers of a cell subset: which antibodies separate it, and how well.

:func:`protein_markers` ranks the antibodies of a panel by how well they separate a subset
from the rest of its parent lineage and from all other cells (AUROC, the Mann-Whitney ``U``
over ``n_target * n_other`` with midranks for ties, counted exactly by merging the subset's
sorted values with each comparison group's). ``U`` is additive over the compared cells, so
the sorts of all cells and of each lineage (`_Panel`) serve every subset and the gating
search of :mod:`sccohort.stats.gating`.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError

__all__ = ["MARKER_COLUMNS", "protein_markers"]

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
