"""Cheap probes of count files: format, cells, modalities and feature names, without counts.

`probe_sample` tells what `sccohort.io.read.read_sample` would make of a sample (the same
modalities, the same feature names, the same decision text of `sccohort.io.features`) while
reading only what names the features and counts the cells:

- Cell Ranger h5: the ``matrix/features/*`` datasets and ``matrix/shape`` (Cell Ranger 2:
  ``genes``, ``gene_names``, ``shape``);
- MTX folder: the features (or genes) and barcodes files and the matrix's size line;
- h5ad / h5mu (with h5py): the ``var`` table and the shape of the counts matrix
  (``layers/counts``, else ``X``, else ``raw/X``: the first that holds raw counts, judged on
  its first million stored values, where the reader checks them all), the
  ``obsm/protein_expression`` columns, and for an h5mu each modality's ``obs`` index (the
  reader keeps the cells present in every modality);
- BD Rhapsody csv: the header line and the number of lines.

`probe_samples` probes every sample of a sample sheet (``sccohort validate`` prints the
result, `probe_table` as a table).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd

from sccohort.cohort import SampleSheet, raise_all
from sccohort.errors import InputError
from sccohort.io.features import GeneIds, check_modality, gene_ids_of, modality_var
from sccohort.io.h5 import OBSM_PROTEINS, h5mu_modalities, plan_h5ad
from sccohort.io.read import (
    _call_reader,
    _check_sample_id,
    _resolve,
    _with_sample,
    check_rna_present,
)
from sccohort.io.rhapsody import rhapsody_header, rhapsody_modalities
from sccohort.io.tenx import (
    cellranger_mtx_files,
    check_mtx_shape,
    modality_mtx_files,
    plan_10x,
    read_h5_features,
    read_mtx_shape,
)

__all__ = ["ModalityProbe", "SampleProbe", "probe_sample", "probe_samples", "probe_table"]

#: Stored values of a matrix checked for raw counts (the reader checks all of them).
COUNTS_SAMPLE = 1_000_000
_NO_COUNTS_HINT = "Store raw integer counts in layers['counts'] (or .X) of every modality"


@dataclass(frozen=True)
class ModalityProbe:
    """One modality of a probed sample.

    Attributes
    ----------
    features
        Feature names as the reader makes them (genes: symbols after mapping Ensembl ids).
    n_features
        Their number.
    id_kind
        How the file names the genes: ``"symbols"``, ``"ensembl"`` or ``"mixed"``;
        ``"names"`` for proteins and hashtags.
    n_ensembl, n_mapped
        Ensembl ids among the names, and those mapped to a symbol (0 for ``"names"``).
    """

    features: tuple[str, ...]
    n_features: int
    id_kind: str
    n_ensembl: int = 0
    n_mapped: int = 0

    @property
    def gene_ids(self) -> str:
        """``"symbols"``, ``"ensembl: 982/1,000 mapped"``, ``"mixed: ..."``, or ``""``."""
        if self.id_kind == "names":
            return ""
        return GeneIds(self.n_features, self.n_ensembl, self.n_mapped, 0).describe()


@dataclass(frozen=True)
class SampleProbe:
    """What a sample's count file holds (see `probe_sample`).

    Attributes
    ----------
    format
        One of `sccohort.io.read.FORMATS`.
    path
        The file or folder read (resolved from a run folder, as the reader does).
    n_cells
        Cells the reader would keep.
    modalities
        ``modality -> ModalityProbe`` (``rna``, ``prot``, ``hto`` as found, in that order).
    rule
        How the features were assigned to modalities (``uns["modality_rule"]`` of the
        reader), e.g. ``"rna: 1,000 Ensembl ids, 982 mapped to symbols (rule: >= 50 %
        genes)"``.
    sample_id
        The sample, when given.
    """

    format: str
    path: Path
    n_cells: int
    modalities: Mapping[str, ModalityProbe] = field(default_factory=dict)
    rule: str = ""
    sample_id: str | None = None


def _modality(modality: str, names: Sequence[str], ids: Sequence[str] | None) -> ModalityProbe:
    var = modality_var(modality, [str(n) for n in names], ids)
    features = tuple(str(v) for v in var.index)
    if modality != "rna":
        return ModalityProbe(features, len(features), "names")
    counts = gene_ids_of([str(n) for n in names])
    return ModalityProbe(features, len(features), counts.kind, counts.n_ensembl, counts.n_mapped)


def _ordered(mods: dict[str, ModalityProbe]) -> dict[str, ModalityProbe]:
    return {m: mods[m] for m in ("rna", "prot", "hto") if m in mods}


# ----------------------------------------------------------------------------- Cell Ranger


def _probe_10x_h5(path: Path, modality: str | None) -> tuple[int, dict, str]:
    feat = read_h5_features(path)
    plan = plan_10x(feat.types, len(feat.ids), modality, file=path)
    mods = {
        m: _modality(m, [feat.names[i] for i in idx], [feat.ids[i] for i in idx])
        for m, idx in plan.columns.items()
    }
    return feat.shape[1], mods, plan.rule


def _probe_10x_mtx(folder: Path, modality: str | None) -> tuple[int, dict, str]:
    files = cellranger_mtx_files(folder)
    if files is not None:
        names, ids, types = files.feature_columns()
        n_cells = len(files.barcode_list())
        check_mtx_shape(read_mtx_shape(files.matrix), len(names), n_cells, files.matrix)
        plan = plan_10x(types, len(names), modality, file=files.features)
        ids = ids or names
        mods = {
            m: _modality(m, [names[i] for i in idx], [ids[i] for i in idx])
            for m, idx in plan.columns.items()
        }
        return n_cells, mods, plan.rule
    kept, rule = modality_mtx_files(folder, modality)
    mods, common = {}, None
    for known, one in kept.items():
        names, ids, _ = one.feature_columns()
        barcodes = one.barcode_list()
        check_mtx_shape(read_mtx_shape(one.matrix), len(names), len(barcodes), one.matrix)
        mods[known] = _modality(known, names, ids)
        common = _common(common, barcodes)
    return 0 if common is None else len(common), mods, rule


def _common(common: pd.Index | None, barcodes: Sequence[str]) -> pd.Index:
    """Barcodes present so far in every modality (as the reader aligns them)."""
    here = pd.Index([str(b) for b in barcodes])
    return here if common is None else common[common.isin(here)]


# ----------------------------------------------------------------------------- h5ad / h5mu


def _read_elem(elem: Any) -> Any:
    from anndata.io import read_elem

    return read_elem(elem)


def _shape(elem: Any) -> tuple[int, int] | None:
    """``(n_obs, n_vars)`` of a stored matrix (dense dataset or sparse group), or None."""
    if isinstance(elem, h5py.Dataset):
        return (int(elem.shape[0]), int(elem.shape[1])) if elem.ndim == 2 else None
    encoding = elem.attrs.get("encoding-type", elem.attrs.get("h5sparse_format", ""))
    if str(encoding).removesuffix("_matrix") not in ("csr", "csc"):
        return None
    shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape"))
    return None if shape is None else (int(shape[0]), int(shape[1]))


def _holds_counts(elem: Any) -> bool:
    """Whether a stored matrix's first `COUNTS_SAMPLE` values are non-negative integers."""
    if _shape(elem) is None:
        return False
    if isinstance(elem, h5py.Dataset):
        rows = max(1, COUNTS_SAMPLE // max(1, elem.shape[1]))
        values = np.asarray(elem[:rows])
    else:
        values = np.asarray(elem["data"][:COUNTS_SAMPLE])
    if values.size == 0:
        return True
    if np.issubdtype(values.dtype, np.integer):
        return bool((values >= 0).all())
    if not np.issubdtype(values.dtype, np.number):
        return False
    return bool(
        np.isfinite(values).all() and (values >= 0).all() and (values == np.round(values)).all()
    )


def _counts_slot(group: h5py.Group, file: Path, where: str) -> tuple[tuple[int, int], str]:
    """Shape of the counts an AnnData group holds, and the key of their ``var`` table."""
    candidates = []
    if "layers" in group and "counts" in group["layers"]:
        candidates.append((group["layers"]["counts"], "var"))
    if "X" in group:
        candidates.append((group["X"], "var"))
    if "raw" in group and "X" in group["raw"]:
        candidates.append((group["raw"]["X"], "raw/var"))
    for elem, var_key in candidates:
        if _holds_counts(elem):
            return _shape(elem), var_key  # type: ignore[return-value]
    raise InputError(
        f"{where} holds no raw integer counts (layers['counts'], .X and .raw are "
        "normalised or missing)",
        file=file,
        hint=_NO_COUNTS_HINT,
    )


def _obs_names(group: h5py.Group) -> pd.Index:
    obs = group["obs"]
    if isinstance(obs, h5py.Dataset):  # anndata < 0.7: a structured array
        return pd.Index([str(v) for v in _read_elem(obs).index])
    key = obs.attrs.get("_index", "_index")
    return pd.Index([str(v) for v in _read_elem(obs[key])])


def _obsm_protein_names(group: h5py.Group, file: Path) -> list[str]:
    elem = group["obsm"][OBSM_PROTEINS]
    if isinstance(elem, h5py.Group) and elem.attrs.get("encoding-type") == "dataframe":
        return [str(c) for c in elem.attrs.get("column-order", [])]
    if "uns" not in group or "protein_names" not in group["uns"]:
        raise InputError(
            "obsm['protein_expression'] is an array but uns['protein_names'] is missing",
            file=file,
            key=OBSM_PROTEINS,
            hint="Store the proteins as a DataFrame, or their names in uns['protein_names']",
        )
    return [str(n) for n in _read_elem(group["uns"]["protein_names"])]


def _anndata_counts(
    group: h5py.Group, file: Path, where: str
) -> tuple[tuple[int, int], pd.DataFrame]:
    """Shape of the counts an AnnData group holds, and their ``var`` table."""
    shape, var_key = _counts_slot(group, file, where)
    return shape, _read_elem(group[var_key])


def _var_probe(modality: str, var: pd.DataFrame, idx: np.ndarray) -> ModalityProbe:
    names = [str(v) for v in var.index[idx]]
    ids = None
    if modality == "rna" and "gene_ids" in var:
        ids = var["gene_ids"].astype(str).to_numpy()[idx].tolist()
    return _modality(modality, names, ids)


def _open(path: Path, kind: str) -> h5py.File:
    if not path.exists():
        raise InputError("file not found", file=path, hint="Check the path in the sample sheet")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise InputError(
            f"not a readable {kind} file ({type(err).__name__}: {err})",
            file=path,
            hint=f"Write it with {'anndata' if 'h5ad' in kind else 'mudata'} and copy it again",
        ) from err


def _probe_h5ad(path: Path, modality: str | None) -> tuple[int, dict, str]:
    with _open(path, "AnnData (.h5ad)") as fh:
        shape, var = _anndata_counts(fh, path, ".X")
        names = [str(v) for v in var.index]
        types = var["feature_types"].astype(str).tolist() if "feature_types" in var else None
        obsm = "obsm" in fh and OBSM_PROTEINS in fh["obsm"]
        plan, use_obsm = plan_h5ad(names, types, obsm, modality, file=path)
        mods = {m: _var_probe(m, var, idx) for m, idx in plan.columns.items()}
        if use_obsm:
            mods["prot"] = _modality("prot", _obsm_protein_names(fh, path), None)
    return shape[0], mods, plan.rule


def _probe_h5mu(path: Path, modality: str | None) -> tuple[int, dict, str]:
    with _open(path, "MuData (.h5mu)") as fh:
        if "mod" not in fh:
            raise InputError("no 'mod' group: not a MuData file", file=path)
        order = [str(m) for m in fh["mod"].attrs.get("mod-order", [])]
        names = [m for m in order if m in fh["mod"]] or list(fh["mod"])
        kept, rule, _ = h5mu_modalities(names, modality, file=path)
        mods, common = {}, None
        for known, name in kept.items():
            group = fh["mod"][name]
            _, var = _anndata_counts(group, path, f"modality '{name}'")
            mods[known] = _var_probe(known, var, np.arange(len(var)))
            common = _common(common, _obs_names(group))
    return 0 if common is None else len(common), mods, rule


# ----------------------------------------------------------------------------- Rhapsody


def _probe_rhapsody(path: Path, modality: str | None) -> tuple[int, dict, str]:
    features, n_cells = rhapsody_header(path)
    kept, rule = rhapsody_modalities(features, modality, file=path)
    mods = {m: _modality(m, [features[i] for i in idx], None) for m, idx in kept.items()}
    return n_cells, mods, rule


_PROBES = {
    "10x_h5": _probe_10x_h5,
    "10x_mtx": _probe_10x_mtx,
    "h5ad": _probe_h5ad,
    "h5mu": _probe_h5mu,
    "rhapsody_csv": _probe_rhapsody,
}


# ----------------------------------------------------------------------------- public


def probe_sample(
    path: str | Path,
    *,
    format: str | None = None,
    modality: str | None = None,
    sample_id: str | None = None,
) -> SampleProbe:
    """What a sample's count file holds, read cheaply (see the module doc).

    Parameters
    ----------
    path, format, modality
        As in `sccohort.io.read.read_sample`.
    sample_id
        The sample, named in errors.

    Returns
    -------
    SampleProbe with the modalities, feature names, cells and decision text that
    `sccohort.io.read.read_sample` would produce.

    Raises
    ------
    InputError
        The file is missing, unreadable or not of its format; a ``modality`` the file does
        not have; a Cell Ranger or Rhapsody file without Gene Expression (and no
        ``modality``). The message names the file and the sample.
    """
    sample = None if sample_id is None else _check_sample_id(sample_id)
    try:
        modality = check_modality(modality)
        fmt, resolved = _resolve(path, format)
    except InputError as err:
        raise _with_sample(err, sample) from err
    n_cells, mods, rule = _call_reader(_PROBES[fmt], resolved, sample, modality)
    check_rna_present(fmt, list(mods), rule, modality, resolved, sample)
    return SampleProbe(fmt, resolved, int(n_cells), _ordered(mods), rule, sample_id)


def _sheet_table(samples: SampleSheet | pd.DataFrame) -> pd.DataFrame:
    table = samples.table if isinstance(samples, SampleSheet) else samples
    if "sample_id" in table.columns:
        table = table.set_index("sample_id")
    return table


def _cell(table: pd.DataFrame, sample: Any, column: str) -> str | None:
    if column not in table.columns:
        return None
    value = table.at[sample, column]
    return None if value is None or pd.isna(value) or str(value) == "" else str(value)


def probe_samples(samples: SampleSheet | pd.DataFrame) -> dict[str, SampleProbe]:
    """Probe every sample of a sample sheet (`probe_sample`).

    Parameters
    ----------
    samples
        A `SampleSheet`, or its table (index or column ``sample_id``; columns ``path`` and
        optional ``format``, ``modality``).

    Returns
    -------
    ``sample_id -> SampleProbe``, in sheet order.

    Raises
    ------
    InputError
        Every sample that cannot be probed, together (one problem per line).
    """
    table = _sheet_table(samples)
    probes: dict[str, SampleProbe] = {}
    problems: list[InputError] = []
    for sample in table.index:
        try:
            probes[str(sample)] = probe_sample(
                str(table.at[sample, "path"]),
                format=_cell(table, sample, "format"),
                modality=_cell(table, sample, "modality"),
                sample_id=str(sample),
            )
        except InputError as err:
            problems.append(err)
    raise_all(problems, "the samples' count files")
    return probes


def probe_table(probes: Mapping[str, SampleProbe]) -> pd.DataFrame:
    """One row per probed sample, for printing.

    Returns
    -------
    DataFrame with columns ``sample_id, format, n_cells, features`` (``"rna 1,000, prot
    9"``), ``gene_ids`` (``"ensembl: 982/1,000 mapped"``; ``""`` without RNA) and
    ``modality_rule``.
    """
    rows = []
    for sample, probe in probes.items():
        rna = probe.modalities.get("rna")
        features = ", ".join(f"{m} {p.n_features:,}" for m, p in probe.modalities.items())
        rows.append(
            (sample, probe.format, probe.n_cells, features, rna.gene_ids if rna else "", probe.rule)
        )
    columns = ["sample_id", "format", "n_cells", "features", "gene_ids", "modality_rule"]
    return pd.DataFrame(rows, columns=columns)
