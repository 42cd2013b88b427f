"""The cell columns an analysis reads, named by the caller and renamed to sccohort's.

Functions that read a cell table take the names of its sample and donor columns
(``sample_key``, ``donor_key``, scanpy's convention) and call `cell_columns` once: it takes
only the columns the analysis needs, under the names the rest of the function (and its tidy
output: ``sample_id``, ``donor_id``) uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from sccohort.errors import InputError

__all__ = ["cell_columns"]


def cell_columns(
    obs: pd.DataFrame,
    required: Mapping[str, str],
    *,
    optional: Sequence[str] = (),
    hint: str | None = None,
) -> pd.DataFrame:
    """The columns of ``obs`` an analysis reads, renamed to sccohort's names.

    Parameters
    ----------
    obs
        Per-cell table (n_cells rows).
    required
        sccohort's name -> the caller's column, e.g. ``{"sample_id": sample_key,
        "donor_id": donor_key, "subset": "subset"}``.
    optional
        Columns taken under their own names when ``obs`` has them (``qc_pass``, ...).
    hint
        How to fix a missing column (the message names the columns present).

    Returns
    -------
    pandas.DataFrame
        n_cells rows, ``obs``'s index, the required columns then the optional ones present.

    Raises
    ------
    InputError
        A required column is missing: the message names it and the parameter that chose it.

    Examples
    --------
    >>> from sccohort.cohort.keys import cell_columns
    >>> obs = pd.DataFrame({"patient": ["P1", "P2"], "run": ["R1", "R2"], "qc_pass": [1, 1]})
    >>> cell_columns(obs, {"donor_id": "patient", "sample_id": "run"}, optional=["qc_pass"])
      donor_id sample_id  qc_pass
    0       P1        R1        1
    1       P2        R2        1
    """
    missing = [(ours, theirs) for ours, theirs in required.items() if theirs not in obs.columns]
    if missing:
        ours, theirs = missing[0]
        key = {"sample_id": "sample_key", "donor_id": "donor_key"}.get(ours)
        named = f" ({key})" if key and theirs != ours else ""
        present = ", ".join(map(str, obs.columns[:20])) + (", ..." if obs.shape[1] > 20 else "")
        raise InputError(
            f"the cell table has no column '{theirs}'{named}",
            column=str(theirs),
            hint=(hint + ". " if hint else "") + f"Columns present: {present}",
        )
    columns = {ours: obs[theirs] for ours, theirs in required.items()}
    columns.update({c: obs[c] for c in optional if c in obs.columns and c not in columns})
    return pd.DataFrame(columns, index=obs.index)
