"""Probes of count files: format, cells, modalities and feature names, every array checked.

`probe_sample` tells what `sccohort.io.read.read_sample` would make of a sample (the same
modalities, the same feature names, the same decision text of `sccohort.io.features`) and
refuses, before anything is written, every file the reader would fail on. Each file is
checked as `sccohort.io.verify` describes: a regular file (pipes and devices are refused
unopened), a signature and layout that fit its format, barcodes and feature ids listed once,
a sample with cells, and the stored arrays of its counts read in bounded slices:

- Cell Ranger h5: ``matrix/features/*``, ``matrix/barcodes`` and ``matrix/shape`` (Cell
  Ranger 2: ``genes``, ``gene_names``, ``shape``), then ``indptr``, ``indices`` and
  ``data`` (`sccohort.io.tenx.check_10x_h5`);
- MTX folder: the features (or genes) and barcodes files, the matrix's banner and size
  line, then every entry (`sccohort.io.tenx.check_mtx_entries`);
- h5ad / h5mu (with h5py): the ``obs`` index, the ``var`` table and the counts matrix
  (``layers/counts``, else ``X``, else ``raw/X``: the first whose every value is a raw
  count, as the reader chooses), the ``obsm/protein_expression`` columns, and for an h5mu
  each modality's ``obs`` index (the reader keeps the cells present in every modality);
- BD Rhapsody csv: the header line and every row, in blocks;
- spatial slides (CosMx, Xenium, h5ad with coordinates): read whole by their readers
  (`sccohort.io.spatial`; a second for 50,000 cells), which check them as they read.

Long: one probe per count format, each checking its own layout.

A feature is its name and, where the file gives one, its id (Cell Ranger's id column,
``var["gene_ids"]``): genes that share a symbol but not an id are accepted (the reader makes
their names unique), and so are two symbols of one id (Ensembl's PRH1 and PRR4); a feature
listed twice is not.

`probe_samples` probes every sample of a sample sheet and then compares them: two samples
must not read the same count file, nor hold mostly the same barcodes (a copy of one
sample), and their RNA genes must be the same (a sample whose genes differ from the
majority's is named). ``sccohort validate`` prints the result, `probe_table` as a table.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sccohort.cohort import SPATIAL_FORMATS, SampleSheet, raise_all
from sccohort.errors import InputError
from sccohort.io.features import (
    MODALITY_RULE_KEY,
    GeneIds,
    check_modality,
    gene_ids_of,
    modality_var,
)
from sccohort.io.formats import _resolve
from sccohort.io.h5 import OBSM_PROTEINS, h5mu_modalities, plan_h5ad
from sccohort.io.mtx import (
    MtxFiles,
    cellranger_mtx_files,
    check_mtx_entries,
    check_mtx_shape,
    modality_mtx_files,
    read_mtx_header,
)
from sccohort.io.probe_anndata import _anndata_counts, _cells_of, _obsm_proteins
from sccohort.io.read import _call_reader, _check_sample_id, _with_sample, check_rna_present
from sccohort.io.rhapsody import check_rhapsody_csv, rhapsody_modalities
from sccohort.io.spatial import read_cosmx, read_spatial_h5ad, read_xenium
from sccohort.io.stack import gene_list_mismatches
from sccohort.io.tenx import check_10x_h5, plan_10x
from sccohort.io.verify import (
    Axis,
    check_has_cells,
    check_unique,
    open_hdf5,
)

__all__ = ["ModalityProbe", "SampleProbe", "probe_sample", "probe_samples", "probe_table"]

#: Two samples sharing at least this share of the smaller one's barcodes are one sample
#: read twice. Samples of one 10x whitelist share few by chance: two of 10,000 cells share
#: ~15 (0.15 %) of Cell Ranger 3's 6.8M barcodes, ~140 (1.4 %) of Cell Ranger 2's 737,000.
SHARED_BARCODES = 0.5
_DUPLICATE_HINT = "Give each sample its own count file, and list a sample once"


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

    Examples
    --------
    >>> from sccohort.io import probe_sample
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> rna = probe_sample(h5).modalities["rna"]
    >>> rna.n_features, rna.id_kind
    (19409, 'symbols')
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
        One of `sccohort.cohort.FORMATS`.
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
    barcodes
        Sorted hashes (uint64) of the cells' barcodes, to find samples read twice; None
        when the barcodes are row numbers (``0 .. n - 1`` or ``1 .. n``), which name no cell.

    Examples
    --------
    >>> from sccohort.io import probe_sample
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> probe = probe_sample(h5)
    >>> probe.format, probe.n_cells
    ('10x_h5', 300)
    """

    format: str
    path: Path
    n_cells: int
    modalities: Mapping[str, ModalityProbe] = field(default_factory=dict)
    rule: str = ""
    sample_id: str | None = None
    barcodes: np.ndarray | None = field(default=None, repr=False, compare=False)


def _check_features(
    modality: str, names: Sequence[str], ids: Sequence[str] | None, file: Path
) -> None:
    """Raise when a feature is listed twice: the same name with the same id (if any)."""
    pairs = zip(names, ids if ids is not None else names, strict=True)
    labels = [str(n) if str(n) == str(i) else f"{n} ({i})" for n, i in pairs]
    check_unique(
        labels,
        "feature",
        file=file,
        where=f"modality '{modality}'",
        hint="List each feature once; genes that share a symbol need their own ids (Cell "
        "Ranger's id column, var['gene_ids'] of an h5ad)",
    )


def _modality(
    modality: str, names: Sequence[str], ids: Sequence[str] | None, file: Path
) -> ModalityProbe:
    _check_features(modality, names, ids, file)
    var = modality_var(modality, [str(n) for n in names], ids)
    features = tuple(str(v) for v in var.index)
    if modality != "rna":
        return ModalityProbe(features, len(features), "names")
    counts = gene_ids_of([str(n) for n in names])
    return ModalityProbe(features, len(features), counts.kind, counts.n_ensembl, counts.n_mapped)


def _ordered(mods: dict[str, ModalityProbe]) -> dict[str, ModalityProbe]:
    return {m: mods[m] for m in ("rna", "prot", "hto") if m in mods}


# ----------------------------------------------------------------------------- Cell Ranger

#: What a per-format probe finds: the cells the reader keeps, the modalities, the rule.
Found = tuple[pd.Index, dict[str, ModalityProbe], str]


def _probe_10x_h5(path: Path, modality: str | None, declared: bool) -> Found:
    with open_hdf5(path, "10x_h5", declared=declared) as fh:
        feat, barcodes = check_10x_h5(fh, path)
    check_has_cells(len(barcodes), file=path)
    plan = plan_10x(feat.types, len(feat.ids), modality, file=path)
    mods = {
        m: _modality(m, [feat.names[i] for i in idx], [feat.ids[i] for i in idx], path)
        for m, idx in plan.columns.items()
    }
    return pd.Index(barcodes), mods, plan.rule


def _mtx_cells(files: MtxFiles, names: Sequence[str], where: str) -> list[str]:
    """The barcodes of one MTX matrix, after checking it entry by entry against them."""
    barcodes = [str(b) for b in files.barcode_list()]
    check_unique(barcodes, "barcode", file=files.barcodes)
    check_has_cells(len(barcodes), file=files.barcodes, where=where)
    header = read_mtx_header(files.matrix)
    size = (header.rows, header.columns)
    by_features = check_mtx_shape(size, len(names), len(barcodes), files.matrix)
    features, cells = Axis("feature", names), Axis("cell", barcodes)
    rows, columns = (features, cells) if by_features else (cells, features)
    check_mtx_entries(files.matrix, header, rows, columns)
    return barcodes


def _probe_10x_mtx(folder: Path, modality: str | None, declared: bool) -> Found:
    files = cellranger_mtx_files(folder)
    if files is not None:
        names, ids, types = files.feature_columns()
        barcodes = _mtx_cells(files, names, "the matrix")
        plan = plan_10x(types, len(names), modality, file=files.features)
        ids = ids or names
        mods = {
            m: _modality(m, [names[i] for i in idx], [ids[i] for i in idx], files.features)
            for m, idx in plan.columns.items()
        }
        return pd.Index(barcodes), mods, plan.rule
    kept, rule = modality_mtx_files(folder, modality)
    mods, common = {}, None
    for known, one in kept.items():
        names, ids, _ = one.feature_columns()
        barcodes = _mtx_cells(one, names, f"modality '{known}'")
        mods[known] = _modality(known, names, ids, one.features)
        common = _common(common, barcodes)
    return _shared_cells(common, folder), mods, rule


def _common(common: pd.Index | None, barcodes: Sequence[str]) -> pd.Index:
    """Barcodes present so far in every modality (as the reader aligns them)."""
    here = pd.Index([str(b) for b in barcodes])
    return here if common is None else common[common.isin(here)]


def _shared_cells(common: pd.Index | None, file: Path) -> pd.Index:
    """The cells of every modality; raise when they share none (each has cells)."""
    if common is None or len(common) == 0:
        raise InputError(
            "the modalities share no barcode",
            file=file,
            hint="The RNA, ADT and HTO matrices must come from the same cells",
        )
    return common


# ----------------------------------------------------------------------------- h5ad / h5mu


def _var_probe(modality: str, var: pd.DataFrame, idx: np.ndarray, file: Path) -> ModalityProbe:
    names = [str(v) for v in var.index[idx]]
    ids = None
    if modality == "rna" and "gene_ids" in var:
        ids = var["gene_ids"].astype(str).to_numpy()[idx].tolist()
    return _modality(modality, names, ids, file)


def _probe_h5ad(path: Path, modality: str | None, declared: bool) -> Found:
    with open_hdf5(path, "h5ad", declared=declared) as fh:
        cells = _cells_of(fh, path, "obs")
        _, var = _anndata_counts(fh, cells, path, "the AnnData object")
        names = [str(v) for v in var.index]
        types = var["feature_types"].astype(str).tolist() if "feature_types" in var else None
        obsm = "obsm" in fh and OBSM_PROTEINS in fh["obsm"]
        plan, use_obsm = plan_h5ad(names, types, obsm, modality, file=path)
        mods = {m: _var_probe(m, var, idx, path) for m, idx in plan.columns.items()}
        if use_obsm:
            mods["prot"] = _modality("prot", _obsm_proteins(fh, cells, path), None, path)
    return cells, mods, plan.rule


def _probe_h5mu(path: Path, modality: str | None, declared: bool) -> Found:
    with open_hdf5(path, "h5mu", declared=declared) as fh:
        if "mod" not in fh:
            raise InputError("no 'mod' group: not a MuData file", file=path)
        order = [str(m) for m in fh["mod"].attrs.get("mod-order", [])]
        names = [m for m in order if m in fh["mod"]] or list(fh["mod"])
        kept, rule, _ = h5mu_modalities(names, modality, file=path)
        mods, common = {}, None
        for known, name in kept.items():
            group = fh["mod"][name]
            where = f"modality '{name}'"
            cells = _cells_of(group, path, where)
            _, var = _anndata_counts(group, cells, path, where)
            mods[known] = _var_probe(known, var, np.arange(len(var)), path)
            common = _common(common, cells)
    return _shared_cells(common, path), mods, rule


# ----------------------------------------------------------------------------- Rhapsody


def _probe_rhapsody(path: Path, modality: str | None, declared: bool) -> Found:
    features, cells = check_rhapsody_csv(path)
    check_unique(cells, "Cell_Index", file=path)
    check_has_cells(len(cells), file=path)
    kept, rule = rhapsody_modalities(features, modality, file=path)
    mods = {m: _modality(m, [features[i] for i in idx], None, path) for m, idx in kept.items()}
    return pd.Index(cells), mods, rule


def _probe_spatial(reader):
    """A probe of a spatial format: the slide is read whole (a second for 50,000 cells)."""

    def probe(path: Path, modality: str | None, declared: bool) -> Found:
        rna = reader(path, modality=modality)["rna"]
        check_has_cells(rna.n_obs, file=path)
        names = [str(n) for n in rna.var["feature_name_raw"]]
        return (
            rna.obs_names,
            {"rna": _modality("rna", names, None, path)},
            rna.uns[MODALITY_RULE_KEY],
        )

    return probe


_PROBES = {
    "cosmx": _probe_spatial(read_cosmx),
    "xenium": _probe_spatial(read_xenium),
    "spatial": _probe_spatial(read_spatial_h5ad),
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
    """What a sample's count file holds, every part checked (see the module doc).

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
        The file is missing, not a regular file, unreadable, damaged or not of its format;
        a stored array that breaks the matrix's shape; a value that is not a raw count; a
        barcode or feature listed twice; no cells; a ``modality`` the file does not have;
        a Cell Ranger or Rhapsody file without Gene Expression (and no ``modality``). The
        message names the file and the sample.

    Examples
    --------
    >>> from sccohort.io import probe_sample
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> probe = probe_sample(h5)
    >>> probe.format, probe.n_cells, list(probe.modalities)
    ('10x_h5', 300, ['rna', 'prot'])
    """
    sample = None if sample_id is None else _check_sample_id(sample_id)
    try:
        modality = check_modality(modality)
        fmt, resolved = _resolve(path, format)
    except InputError as err:
        raise _with_sample(err, sample) from err
    declared = format is not None and str(format) != ""
    cells, mods, rule = _call_reader(_PROBES[fmt], resolved, sample, modality, declared)
    check_rna_present(fmt, list(mods), rule, modality, resolved, sample)
    # a slide's barcodes (<fov>_<cell_ID>) repeat from slide to slide: not a copied file
    digest = None if fmt in SPATIAL_FORMATS else _barcode_digest(cells)
    return SampleProbe(fmt, resolved, len(cells), _ordered(mods), rule, sample_id, digest)


def _barcode_digest(cells: pd.Index) -> np.ndarray | None:
    """Sorted hashes of barcodes; None for row numbers (``0 .. n - 1``, ``1 .. n``)."""
    names = pd.Index(cells).astype(str)
    if len(names) and names.str.isdecimal().all():
        numbers = np.sort(names.astype(np.int64).to_numpy())
        if numbers[0] in (0, 1) and numbers[-1] - numbers[0] == len(numbers) - 1:
            return None
    return np.unique(pd.util.hash_array(names.to_numpy(dtype=object)))


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
    """Probe every sample of a sample sheet (`probe_sample`), then compare the samples.

    Parameters
    ----------
    samples
        A `SampleSheet`, or its table (index or column ``sample_id``; columns ``path`` and
        optional ``format``, ``modality``, ``raw_path``). A sample's ``raw_path`` (its
        empty droplets, for dsb) is checked as its ``path`` is, where given.

    Returns
    -------
    ``sample_id -> SampleProbe``, in sheet order.

    Raises
    ------
    InputError
        Every sample that cannot be probed, together (one problem per line); else two
        samples that read the same count file or share most of their barcodes
        (`SHARED_BARCODES`), or samples whose RNA genes differ from the majority's.

    Examples
    --------
    >>> from sccohort.io import SampleSheet, probe_samples, probe_table
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> probes = probe_samples(SampleSheet.from_csv(samples))
    >>> probe_table(probes)[["sample_id", "format", "n_cells"]]
      sample_id  format  n_cells
    0      SSc1  10x_h5      300
    1      SSc2  10x_h5      300
    2     SSc19  10x_h5      300
    3       HD1  10x_h5      300
    """
    table = _sheet_table(samples)
    probes: dict[str, SampleProbe] = {}
    problems: list[InputError] = []
    for sample in table.index:
        try:
            probes[str(sample)] = _probe_row(table, sample)
        except InputError as err:
            problems.append(err)
    raise_all(problems, "the samples' count files")
    _compare_samples(probes, samples if isinstance(samples, SampleSheet) else None)
    return probes


def _probe_row(table: pd.DataFrame, sample: Any) -> SampleProbe:
    """Probe one row of a sample sheet: its ``path``, and its ``raw_path`` if given."""
    probe = probe_sample(
        str(table.at[sample, "path"]),
        format=_cell(table, sample, "format"),
        modality=_cell(table, sample, "modality"),
        sample_id=str(sample),
    )
    raw = _cell(table, sample, "raw_path")
    if raw is not None:
        _probe_raw(raw, str(sample))
    return probe


def _compare_samples(probes: Mapping[str, SampleProbe], sheet: SampleSheet | None) -> None:
    """Raise for samples read twice (one file, or most barcodes) or with odd genes."""
    raise_all(_same_files(probes, sheet), "the samples' count files")
    raise_all(_shared_barcodes(probes), "the samples' count files")
    files = {s: p.path for s, p in probes.items()}
    for slides in (False, True):  # a panel's genes are compared with the other slides' only
        genes = {
            s: p.modalities["rna"].features
            for s, p in probes.items()
            if "rna" in p.modalities and (p.format in SPATIAL_FORMATS) == slides
        }
        raise_all(gene_list_mismatches(genes, files), "the samples' genes")


def _probe_raw(path: str, sample: str) -> None:
    """Check a sample's raw (unfiltered) droplets as `probe_sample` checks its cells.

    The file, its arrays and its values are checked; the droplets are not compared with
    other samples (raw matrices of one barcode whitelist share many empty barcodes).
    """
    try:
        fmt, resolved = _resolve(path, None, raw=True)
    except InputError as err:
        raise _with_sample(err, sample) from err
    _call_reader(_PROBES[fmt], resolved, sample, None, False)


def _file_key(path: Path) -> tuple[int, int] | str:
    """What identifies a file or folder: device and inode (hard and symbolic links too)."""
    try:
        info = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return info.st_dev, info.st_ino


def _same_files(probes: Mapping[str, SampleProbe], sheet: SampleSheet | None) -> list[InputError]:
    """One problem per sample that reads the count file of an earlier sample."""
    first: dict[Any, str] = {}
    problems = []
    for sample, probe in probes.items():
        key = _file_key(probe.path)
        other = first.setdefault(key, sample)
        if other == sample:
            continue
        line = None if sheet is None else sheet.line_of(other)
        at = f" (line {line})" if line is not None else ""
        problems.append(
            InputError(
                f"samples '{other}'{at} and '{sample}' read the same count file {probe.path}",
                file=None if sheet is None else sheet.path,
                row=None if sheet is None else sheet.line_of(sample),
                column="path",
                sample=sample,
                hint=_DUPLICATE_HINT,
            )
        )
    return problems


def _shared_barcodes(probes: Mapping[str, SampleProbe]) -> list[InputError]:
    """One problem per pair of samples that share `SHARED_BARCODES` of the smaller's cells."""
    digests = {s: p.barcodes for s, p in probes.items() if p.barcodes is not None}
    if len(digests) < 2:
        return []
    samples = list(digests)
    owners = np.repeat(np.arange(len(samples)), [len(d) for d in digests.values()])
    frame = pd.DataFrame({"hash": np.concatenate(list(digests.values())), "owner": owners})
    shared = frame[frame["hash"].duplicated(keep=False)]
    pairs = shared.merge(shared, on="hash")
    pairs = pairs[pairs["owner_x"] < pairs["owner_y"]]
    problems = []
    for (i, j), count in pairs.groupby(["owner_x", "owner_y"]).size().items():
        a, b = samples[int(i)], samples[int(j)]
        smaller = min(len(digests[a]), len(digests[b]))
        if count < SHARED_BARCODES * smaller:
            continue
        problems.append(
            InputError(
                f"this sample shares {count:,} barcodes ({count / smaller:.0%} of the smaller "
                f"sample's {smaller:,} cells) with sample '{a}' ({probes[a].path}): one "
                "sample read twice",
                file=probes[b].path,
                sample=b,
                hint=_DUPLICATE_HINT + "; a copied file holds the same cells",
            )
        )
    return problems


def probe_table(probes: Mapping[str, SampleProbe]) -> pd.DataFrame:
    """One row per probed sample, for printing.

    Returns
    -------
    DataFrame with columns ``sample_id, format, n_cells, features`` (``"rna 1,000, prot
    9"``), ``gene_ids`` (``"ensembl: 982/1,000 mapped"``; ``""`` without RNA) and
    ``modality_rule``.

    Examples
    --------
    >>> from sccohort.io import probe_sample, probe_table
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> probe_table({"SSc1": probe_sample(h5)})[["sample_id", "format", "n_cells"]]
      sample_id  format  n_cells
    0      SSc1  10x_h5      300
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
