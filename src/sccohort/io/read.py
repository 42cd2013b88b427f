"""Read samples into MuData: one sample, its empty droplets, or a whole sample sheet.

Conventions of every object returned here:

- modalities ``rna``, ``prot`` (if the sample has antibodies), ``hto`` (if it has hashtags);
  an h5ad/h5mu input may be protein-only (no ``rna``, e.g. an ADT-only experiment), and so may
  any input whose sample sheet row says ``modality = prot``; each modality's
  ``uns["modality_rule"]`` says how its features were assigned (`sccohort.io.features`);
- ``layers["counts"]``: the raw counts, CSR, **int32**; ``.X``: the same counts as float32 CSR
  (later stages overwrite ``.X``, never ``layers["counts"]``);
- cell ids (``obs_names``) are ``<sample_id>:<barcode>``; all modalities of a sample hold the
  same cells in the same order. When modalities list different cells (the per-modality MTX
  layout, or an h5mu), only the cells present in every modality are kept, in the order of
  the first modality (rna, then prot, then hto) and a warning says how many were dropped;
- ``mdata.obs`` has ``sample_id`` and ``barcode`` (and, from `read_samples`, ``donor_id,
  batch, timepoint, tissue``, all categorical).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anndata as ad
import dask
import numpy as np
import pandas as pd
import scipy.sparse as sp
from mudata import MuData

from sccohort.cluster import compute
from sccohort.errors import InputError
from sccohort.io.features import (
    GENE_IDS_KEY,
    MODALITY_RULE_KEY,
    check_modality,
    gene_ids_of,
)
from sccohort.io.formats import _resolve
from sccohort.io.h5 import mudata_options, read_h5ad_modalities, read_h5mu_modalities
from sccohort.io.mtx import read_10x_mtx
from sccohort.io.rhapsody import read_rhapsody_csv
from sccohort.io.spatial import read_cosmx, read_spatial_h5ad, read_xenium
from sccohort.io.stack import _INT32_MAX, _concat_hto, _concat_prot, _concat_rna
from sccohort.io.tenx import read_10x_h5, read_10x_h5_droplets

MODALITY_ORDER = ("rna", "prot", "hto")
SHEET_CATEGORIES = ("sample_id", "donor_id", "batch", "timepoint", "tissue")


# ----------------------------------------------------------------------------- formats


_READERS: dict[str, Callable[..., dict[str, ad.AnnData]]] = {
    "10x_h5": read_10x_h5,
    "10x_mtx": read_10x_mtx,
    "h5ad": read_h5ad_modalities,
    "h5mu": read_h5mu_modalities,
    "rhapsody_csv": read_rhapsody_csv,
    "cosmx": read_cosmx,
    "xenium": read_xenium,
    "spatial": read_spatial_h5ad,
}


# ----------------------------------------------------------------------------- one sample


def _with_sample(err: InputError, sample_id: str) -> InputError:
    if err.sample is not None:
        return err
    return InputError(
        err.problem,
        file=err.file,
        row=err.row,
        column=err.column,
        sample=sample_id,
        key=err.key,
        hint=err.hint,
    )


def _call_reader(reader: Callable, path: Path, sample_id: str, *args, **kwargs):
    """Run a reader; every failure becomes an InputError naming the file and the sample."""
    try:
        return reader(path, *args, **kwargs)
    except InputError as err:
        raise _with_sample(err, sample_id) from err
    except MemoryError:
        raise
    except Exception as err:  # a corrupt file can fail in any library underneath
        raise InputError(
            f"cannot read this file ({type(err).__name__}: {err})",
            file=path,
            sample=sample_id,
            hint="Check that the file is complete and in the format it claims to be",
        ) from err


def _int32_counts(matrix: sp.spmatrix, file: Path, sample_id: str, modality: str) -> sp.csr_matrix:
    csr = sp.csr_matrix(matrix)
    data = csr.data
    if data.size and not np.issubdtype(data.dtype, np.integer):
        if not (np.isfinite(data).all() and (data == np.round(data)).all()):
            raise InputError(
                f"modality '{modality}' has non-integer values; sccohort needs raw counts",
                file=file,
                sample=sample_id,
                hint="Give the raw UMI counts, not normalised values",
            )
    if data.size and (data.min() < 0 or data.max() > _INT32_MAX):
        raise InputError(
            f"modality '{modality}' has counts outside 0..{_INT32_MAX}",
            file=file,
            sample=sample_id,
            hint="Give the raw UMI counts",
        )
    out = sp.csr_matrix(
        (data.astype(np.int32, copy=False), csr.indices, csr.indptr),
        shape=csr.shape,
        dtype=np.int32,
    )
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _finalise(
    mods: dict[str, ad.AnnData], sample_id: str, file: Path, *, align: bool = True
) -> dict[str, ad.AnnData]:
    """Validate counts, align cells across modalities, prefix cell ids, set counts/X."""
    ordered = {m: mods[m] for m in MODALITY_ORDER if m in mods}
    if not ordered:
        raise InputError(
            "no Gene Expression, Antibody Capture or Multiplexing Capture data",
            file=file,
            sample=sample_id,
            hint="Give a file with Gene Expression (RNA) features",
        )
    for modality, adata in ordered.items():
        if adata.n_obs == 0:
            raise InputError(
                f"modality '{modality}' has no cells (0 barcodes)",
                file=file,
                sample=sample_id,
                hint="Give the sample's filtered matrix with its cells, or leave the sample "
                "out of the sample sheet",
            )
        dup = adata.obs_names[adata.obs_names.duplicated()]
        if len(dup):
            raise InputError(
                f"modality '{modality}' lists barcode '{dup[0]}' more than once",
                file=file,
                sample=sample_id,
                hint="Each barcode must appear once per sample",
            )
    if align:
        first = next(iter(ordered.values())).obs_names
        common = first
        for adata in ordered.values():
            common = common[common.isin(adata.obs_names)]
        if len(common) == 0:
            raise InputError(
                "the modalities share no barcode",
                file=file,
                sample=sample_id,
                hint="The RNA, ADT and HTO matrices must come from the same cells",
            )
        dropped = {m: a.n_obs - len(common) for m, a in ordered.items() if a.n_obs > len(common)}
        if dropped:
            warnings.warn(
                f"sample '{sample_id}' ({file}): kept the {len(common)} cells present in every "
                f"modality; dropped {dropped} cells found only in some",
                stacklevel=3,
            )
        ordered = {m: a if a.obs_names.equals(common) else a[common] for m, a in ordered.items()}
    out = {}
    for modality, adata in ordered.items():
        counts = _int32_counts(adata.X, file, sample_id, modality)
        obs = adata.obs.copy()
        obs.index = pd.Index([f"{sample_id}:{bc}" for bc in adata.obs_names])
        new = ad.AnnData(
            X=counts.astype(np.float32), obs=obs, var=adata.var.copy(), uns=dict(adata.uns)
        )
        new.layers["counts"] = counts
        if "spatial" in adata.obsm:  # a slide's cell centres (sccohort.io.spatial)
            new.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
        if modality == "rna" and "feature_name_raw" in new.var:
            new.uns[GENE_IDS_KEY] = gene_ids_of(new.var["feature_name_raw"].tolist()).describe()
        out[modality] = new
    return out


def _to_mudata(mods: dict[str, ad.AnnData], obs_columns: pd.DataFrame) -> MuData:
    with mudata_options(pull_on_update=False), warnings.catch_warnings():
        # a gene and an antibody may share a name (CD4); that is expected across modalities
        warnings.filterwarnings("ignore", message="var_names are not unique")
        mdata = MuData(mods)
        for column in obs_columns.columns:
            mdata.obs[column] = obs_columns.loc[mdata.obs_names, column].to_numpy()
            if isinstance(obs_columns[column].dtype, pd.CategoricalDtype):
                mdata.obs[column] = pd.Categorical(
                    mdata.obs[column], categories=obs_columns[column].cat.categories
                )
    return mdata


def _check_sample_id(sample_id: str) -> str:
    sample_id = str(sample_id)
    if not sample_id or ":" in sample_id:
        raise InputError(
            "a sample id must be non-empty and must not contain ':'",
            column="sample_id",
            sample=sample_id,
            hint="Cell ids are <sample_id>:<barcode>; rename the sample",
        )
    return sample_id


def _read_modalities(
    path: str | Path, sample_id: str, fmt: str | None, modality: Any = None
) -> dict[str, ad.AnnData]:
    """Read and finalise one sample (the Dask task of `read_samples`)."""
    sample_id = _check_sample_id(sample_id)
    try:
        modality = check_modality(modality, sample=sample_id)
        fmt, resolved = _resolve(path, fmt)
    except InputError as err:
        raise _with_sample(err, sample_id) from err
    mods = _call_reader(_READERS[fmt], resolved, sample_id, modality=modality)
    rule = next(iter(mods.values())).uns.get(MODALITY_RULE_KEY, "") if mods else ""
    check_rna_present(fmt, list(mods), rule, modality, resolved, sample_id)
    return _finalise(mods, sample_id, resolved)


def check_rna_present(
    fmt: str,
    modalities: Sequence[str],
    rule: str,
    modality: str | None,
    file: Path,
    sample_id: str | None,
) -> None:
    """Refuse a Cell Ranger or Rhapsody file without RNA unless the sheet asked for that.

    Such a file is most often the wrong library's output; a protein-only sample is read
    when the sample sheet's ``modality`` says ``prot`` (or from an h5ad / h5mu).

    Raises
    ------
    InputError
        ``fmt`` is ``10x_h5``, ``10x_mtx`` or ``rhapsody_csv``, ``modalities`` lacks ``rna``
        and ``modality`` is None.
    """
    if fmt not in ("10x_h5", "10x_mtx", "rhapsody_csv") or "rna" in modalities or modality:
        return
    raise InputError(
        "no Gene Expression (RNA) features" + (f" ({rule})" if rule else ""),
        file=file,
        sample=sample_id,
        hint=(
            "Give the Cell Ranger output of the Gene Expression library (with its "
            "Antibody Capture features), or set the sample's modality column to prot "
            "for a protein-only sample"
        ),
    )


def _sample_obs(mods: dict[str, ad.AnnData], sample_id: str) -> pd.DataFrame:
    names = next(iter(mods.values())).obs_names
    prefix = len(sample_id) + 1
    return pd.DataFrame(
        {
            "sample_id": pd.Categorical([sample_id] * len(names)),
            "barcode": [n[prefix:] for n in names],
        },
        index=names,
    )


def read_sample(
    path: str | Path, sample_id: str, *, format: str | None = None, modality: str | None = None
) -> MuData:
    """Read one sample's counts into a MuData.

    Parameters
    ----------
    path
        Where the counts are (see `detect_format`).
    sample_id
        Prefix of the cell ids (``<sample_id>:<barcode>``).
    format
        One of ``"10x_h5"``, ``"10x_mtx"``, ``"h5ad"``, ``"h5mu"``, ``"rhapsody_csv"``, or None
        to detect it from the path.
    modality
        The sample sheet's ``modality`` column: ``"rna"`` or ``"prot"`` (None, NaN or ``""``:
        not given). For a single matrix
        without feature types (an h5ad without ``var["feature_types"]``, a Cell Ranger 2
        file, an MTX features file without a type column) it says what the matrix holds,
        instead of the rule of `sccohort.io.features`; for a file that declares its
        features it must be one of the file's modalities, and only that one is read. None
        (or ``""``): the file decides.

    Returns
    -------
    MuData (n_cells x features) with ``rna`` (absent only for protein-only inputs),
    ``prot`` and ``hto`` when present; raw counts in ``layers["counts"]`` (int32 CSR) and
    ``.X`` (float32 CSR); ``obs``: ``sample_id``, ``barcode``. Each modality's
    ``uns["modality_rule"]`` says how the features were assigned (e.g. ``"rna: 1,000
    Ensembl ids, 982 mapped to symbols (rule: >= 50 % genes)"``) and ``rna.uns["gene_ids"]``
    how genes were named (``"symbols"``, ``"ensembl: 982/1,000 mapped"``, ``"mixed: ..."``).

    Raises
    ------
    InputError
        Missing, unreadable or corrupt files, non-integer counts, a 10x/Rhapsody file
        without Gene Expression features (unless ``modality`` is given), a ``modality``
        the file does not have; the message names the file and the sample.

    Examples
    --------
    >>> from sccohort.io import read_sample
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> mdata = read_sample(h5, "SSc1")
    >>> mdata.shape, mdata.obs_names[0]
    ((300, 19548), 'SSc1:AAAATTCTGGAGACGA-1')
    """
    sample_id = str(sample_id)
    mods = _read_modalities(path, sample_id, format, modality)
    return _to_mudata(mods, _sample_obs(mods, sample_id))


def read_raw_droplets(
    path: str | Path,
    filtered_barcodes: Sequence[str],
    sample_id: str,
    *,
    modalities: Sequence[str] = ("prot",),
    min_counts: int = 1,
    format: str | None = None,
) -> MuData | ad.AnnData:
    """Read the empty droplets of a sample: raw barcodes not among its cells (for dsb).

    Parameters
    ----------
    path
        Cell Ranger ``raw_feature_bc_matrix.h5``, a run/``outs/`` folder (its raw h5 or raw MTX
        folder is used), a raw MTX folder, or an h5ad/h5mu of droplets.
    filtered_barcodes
        The sample's cells: barcodes, or cell ids ``<sample_id>:<barcode>``.
    sample_id
        Prefix of the droplet ids.
    modalities
        Modalities to return (default protein only, which is what dsb needs).
    min_counts
        Keep droplets with at least this many counts summed over ``modalities`` (Cell Ranger's
        raw matrix lists hundreds of thousands of barcodes with nothing in them).
    format
        As in `read_sample`; None detects it.

    Returns
    -------
    AnnData (droplets x features) if one modality is asked for, else MuData; counts as in
    `read_sample`, ids ``<sample_id>:<barcode>``.

    Examples
    --------
    >>> from sccohort.io import read_raw_droplets
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> empty = read_raw_droplets(h5, [], "SSc1")  # no barcode called a cell: all "empty"
    >>> empty.shape
    (300, 139)
    """
    sample_id = _check_sample_id(sample_id)
    prefix = f"{sample_id}:"
    exclude = [b[len(prefix) :] if b.startswith(prefix) else b for b in map(str, filtered_barcodes)]
    try:
        fmt, resolved = _resolve(path, format, raw=True)
    except InputError as err:
        raise _with_sample(err, sample_id) from err
    if fmt == "10x_h5":
        mods = _call_reader(
            read_10x_h5_droplets,
            resolved,
            sample_id,
            exclude,
            modalities=tuple(modalities),
            min_counts=min_counts,
        )
    else:
        mods = _call_reader(_READERS[fmt], resolved, sample_id)
        mods = {m: a for m, a in mods.items() if m in modalities}
        if mods:
            names = next(iter(mods.values())).obs_names
            keep = ~names.isin(exclude)
            total = np.zeros(len(names))
            for adata in mods.values():
                adata = adata[names]
                total += np.asarray(adata.X.sum(axis=1)).ravel()
            keep &= total >= min_counts
            mods = {m: a[names[keep]] for m, a in mods.items()}
    missing = [m for m in modalities if m not in mods]
    if missing:
        raise InputError(
            f"no {', '.join(missing)} data among the raw droplets",
            file=resolved,
            sample=sample_id,
            hint="dsb needs the Antibody Capture features of the raw (unfiltered) matrix",
        )
    mods = _finalise(mods, sample_id, resolved)
    if len(mods) == 1:
        adata = next(iter(mods.values()))
        adata.obs["sample_id"] = pd.Categorical([sample_id] * adata.n_obs)
        adata.obs["barcode"] = [n[len(prefix) :] for n in adata.obs_names]
        return adata
    return _to_mudata(mods, _sample_obs(mods, sample_id))


# ----------------------------------------------------------------------------- many samples


def _sheet(samples: pd.DataFrame) -> pd.DataFrame:
    table = samples.copy()
    if "sample_id" in table.columns:
        table = table.set_index("sample_id")
    table.index = table.index.astype(str)
    table.index.name = "sample_id"
    missing = [c for c in ("donor_id", "path") if c not in table.columns]
    if missing:
        raise InputError(
            f"the sample sheet lacks column(s) {', '.join(missing)}",
            column=missing[0],
            hint="The sample sheet needs sample_id, donor_id and path",
        )
    if len(table) == 0:
        raise InputError("the sample sheet has no samples", hint="Add one row per sample")
    for sample_id in table.index:
        _check_sample_id(sample_id)
    dup = table.index[table.index.duplicated()]
    if len(dup):
        raise InputError(
            "sample id listed more than once",
            column="sample_id",
            sample=str(dup[0]),
            hint="Each sample_id must be unique",
        )
    return table


def _check_presence(results: dict[str, dict[str, ad.AnnData]], modality: str, what: str) -> bool:
    have = [s for s, mods in results.items() if modality in mods]
    lacking = [s for s in results if s not in have]
    if have and lacking:
        raise InputError(
            f"this sample has no {what} while sample '{have[0]}' has",
            sample=lacking[0],
            hint=(
                f"Give every sample with its {what}, or leave out the samples without "
                f"(samples lacking it: {', '.join(lacking)})"
            ),
        )
    return bool(have)


def read_samples(
    samples: pd.DataFrame,
    *,
    scheduler: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> MuData:
    """Read every sample of a sample sheet (one Dask task each) into one MuData.

    Parameters
    ----------
    samples
        Indexed by ``sample_id`` (or with a ``sample_id`` column); columns ``donor_id``,
        ``path`` and optional ``format``, ``modality`` (see `read_sample`), ``batch``,
        ``timepoint``, ``tissue``.
    scheduler
        None (local threads), ``"threads"`` / ``"sync"``, a ``distributed.Client``, or the
        address of a Dask scheduler. Each task returns only its own sample.
    progress
        Called as ``progress(done, total)`` after each sample.

    Returns
    -------
    MuData with every cell of every sample, samples in sheet order; modalities as in
    `read_sample`. ``obs``: ``sample_id, donor_id, batch, timepoint, tissue`` (categorical;
    ``batch`` defaults to the sample id, missing ``timepoint``/``tissue`` are NaN) and
    ``barcode``. Proteins: the antibodies common to all samples (a warning names the
    dropped ones). Hashtags: kept only if every sample has them (tags absent from a sample
    count 0 there).

    Raises
    ------
    InputError
        A sample cannot be read; RNA gene sets differ between samples; some samples have
        protein (or RNA) data and others none.

    Examples
    --------
    >>> from sccohort.io import SampleSheet, read_samples
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> h5 = samples.parent / "SSc1" / "filtered_feature_bc_matrix.h5"
    >>> read_samples(SampleSheet.from_csv(samples).table).shape
    (1200, 19548)
    """
    table = _sheet(samples)
    formats, modalities = (
        table[c] if c in table.columns else pd.Series(None, index=table.index)
        for c in ("format", "modality")
    )
    tasks = [
        dask.delayed(_read_modalities, pure=False)(
            str(table.at[s, "path"]),
            s,
            None if pd.isna(formats[s]) else str(formats[s]),
            modalities[s],
            dask_key_name=f"read-sample-{i}-{s}",
        )
        for i, s in enumerate(table.index)
    ]
    results = dict(zip(table.index, compute(tasks, scheduler, progress), strict=True))
    return combine_samples(results, table)


def combine_samples(results: dict[str, dict[str, ad.AnnData]], samples: pd.DataFrame) -> MuData:
    """One MuData from each sample's modalities (as `read_samples` joins them).

    Parameters
    ----------
    results
        ``sample_id -> {modality: AnnData}`` in sheet order, cell ids ``<sample_id>:<barcode>``.
        The ``rna`` and ``prot`` entries are moved out of these dicts and freed as they are
        joined (`stack_rows`), so the join needs little more memory than its result.
    samples
        The sample sheet (index ``sample_id``; ``donor_id``, ``path`` and optional ``batch,
        timepoint, tissue``).

    Returns
    -------
    MuData as `read_samples` returns it (all layers and ``X`` of the parts kept).

    Raises
    ------
    InputError
        RNA gene sets differ between samples; some samples have protein (or RNA) data and
        others none; the samples share no antibody.
    """
    table = _sheet(samples)
    mods: dict[str, ad.AnnData] = {}
    if _check_presence(results, "rna", "RNA (Gene Expression) data"):
        mods["rna"] = _concat_rna(results, table["path"].astype(str))
    if _check_presence(results, "prot", "protein (Antibody Capture) data"):
        mods["prot"] = _concat_prot(results)
    hto = _concat_hto(results)
    if hto is not None:
        mods["hto"] = hto
    obs = _cohort_obs(next(iter(mods.values())).obs_names, table)
    return _to_mudata(mods, obs)


def _cohort_obs(cell_ids: pd.Index, table: pd.DataFrame) -> pd.DataFrame:
    parts = pd.Series(cell_ids, dtype=object).str.split(":", n=1, expand=True)
    order = list(table.index)
    sample = pd.Categorical(parts[0].to_numpy(), categories=order)
    obs = pd.DataFrame(index=cell_ids)
    obs["sample_id"] = sample
    for column in ("donor_id", "batch", "timepoint", "tissue"):
        if column in table.columns:
            per_sample, source = table[column], table[column]
        elif column == "batch":
            per_sample = source = pd.Series(order, index=order)
        else:
            per_sample, source = pd.Series(np.nan, index=order, dtype=object), pd.Series([])
        categories = pd.Index(pd.unique(source.dropna().astype(str)))
        labels = [None if pd.isna(v) else str(v) for v in per_sample.to_numpy()]
        codes = categories.get_indexer(labels).astype(np.int64)  # one code per sample
        # cells of samples missing from the table (code -1) get no label, as for a NaN
        cell_codes = np.where(sample.codes >= 0, codes[sample.codes], -1)
        obs[column] = pd.Categorical.from_codes(cell_codes, categories=categories)
    # categorical now: written as is, where the h5mu writer would natsort 230,000 strings
    obs["barcode"] = pd.Categorical(parts[1].to_numpy())
    return obs
