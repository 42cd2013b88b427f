"""A gating strategy as a result: its gates, their held-out figures, and applying it to cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.stats.protein_markers import _as_mask

__all__ = ["GATING_COLUMNS", "Gate", "GatingResult"]

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
