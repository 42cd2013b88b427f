"""Imaging-based spatial panels: CosMx flat files, Xenium outputs, AnnData with coordinates.

Each reader returns ``{"rna": AnnData}`` (cells x panel genes, raw counts in ``.X``) as the
other readers of `sccohort.io.read` do, plus what a slide has beyond counts:

- ``obsm["spatial"]``: the cell's centre in microns (float64, x then y, on the slide);
- ``obs``: ``fov`` (CosMx; Xenium has none: 0), ``cell_area`` (µm²), ``n_negative``
  (counts of the negative-control probes, which are not genes and are left out of ``.X``).

Layouts (documented by NanoString / 10x Genomics; the simulator writes exactly these):

- CosMx (``format = "cosmx"``, a folder): ``*_exprMat_file.csv(.gz)`` with ``fov``,
  ``cell_ID`` and one column per target (``NegPrb*`` / ``Negative*`` are negative probes,
  ``SystemControl*`` / ``FalseCode*`` control codes; ``cell_ID`` 0 holds transcripts outside
  any cell, dropped); ``*_metadata_file.csv(.gz)`` with ``fov``, ``cell_ID``, ``Area`` (px²)
  and ``CenterX_global_px`` / ``CenterY_global_px``; ``*_fov_positions_file.csv(.gz)`` is not
  needed (the global coordinates already place each cell). Pixels are 0.12028 µm
  (`COSMX_PIXEL_UM`). Barcodes ``<fov>_<cell_ID>``.
- Xenium (``format = "xenium"``, a folder): ``cell_feature_matrix.h5`` (Cell Ranger's h5
  layout; ``feature_type`` "Gene Expression" are the genes, "Negative Control Probe" the
  negative probes, other codeword types are left out) and ``cells.csv(.gz)`` with
  ``cell_id``, ``x_centroid``, ``y_centroid`` (µm) and ``cell_area``. Barcodes: Xenium's
  cell ids.
- AnnData (``format = "spatial"``, an ``.h5ad``): counts in ``.X`` or ``layers["counts"]``,
  microns in ``obsm["spatial"]``.

Why by hand: spatialdata-io reads both vendors, but into SpatialData objects with images and
transcripts (dask, xarray, zarr, geopandas); the tables above are all sccohort uses, and
these readers take well under a second for a 50,000-cell slide.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from sccohort.errors import InputError
from sccohort.io.features import modality_var, set_rule

__all__ = ["COSMX_PIXEL_UM", "read_cosmx", "read_spatial_h5ad", "read_xenium"]

#: Side of a CosMx pixel in microns (NanoString's CosMx SMI, 0.12028 µm per pixel).
COSMX_PIXEL_UM = 0.12028
_COSMX_NEGATIVE = ("NegPrb", "Negative")
_COSMX_CONTROL = ("SystemControl", "FalseCode")
_RULE = "spatial panel: every target gene is RNA (negative probes left out)"


def _check_rna(modality: str | None, file: Path) -> None:
    """A sample sheet's ``modality`` for a slide: empty or ``rna``."""
    if modality is None or (isinstance(modality, float) and np.isnan(modality)):
        return
    if str(modality) not in ("", "rna"):
        raise InputError(
            f"a spatial panel holds RNA, not '{modality}'",
            file=file,
            column="modality",
            hint="leave modality empty or set it to rna",
        )


def _one(folder: Path, pattern: str, what: str) -> Path:
    found = sorted(folder.glob(f"*{pattern}.csv")) + sorted(folder.glob(f"*{pattern}.csv.gz"))
    if len(found) == 1:
        return found[0]
    many = f"{len(found)} files" if found else "no file"
    raise InputError(
        f"{many} named *{pattern}.csv(.gz) in the CosMx folder ({what})",
        file=folder,
        hint="give one slide's flat files (exprMat, metadata, fov_positions) per folder",
    )


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise InputError(f"not a readable CSV table ({err})", file=path) from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputError(
            f"the table lacks column(s) {', '.join(missing)}",
            file=path,
            column=missing[0],
            hint="give the vendor's export as written (see sccohort.io.spatial)",
        )
    return table


def _panel(counts, genes: list[str], barcodes: list[str], obs: pd.DataFrame,
           xy: np.ndarray, file: Path) -> dict[str, ad.AnnData]:  # fmt: skip
    """The ``rna`` modality of a slide (counts dense or sparse: integers >= 0)."""
    matrix = sp.csr_matrix(counts, dtype=np.float32)
    values = matrix.data
    if values.size and (~np.isfinite(values) | (values < 0) | (values != np.round(values))).any():
        raise InputError("the expression matrix holds values that are not counts", file=file,
                         hint="give the raw counts per cell and target")  # fmt: skip
    adata = ad.AnnData(
        X=matrix,
        obs=obs.set_axis(pd.Index(barcodes)),
        var=modality_var("rna", genes),
    )
    adata.obsm["spatial"] = np.asarray(xy, dtype=np.float64)
    mods = {"rna": adata}
    set_rule(mods, _RULE)
    return mods


def read_cosmx(
    path: str | Path, *, pixel_um: float = COSMX_PIXEL_UM, modality: str | None = None
) -> dict[str, ad.AnnData]:
    """Read one CosMx slide's flat files (a folder; see the module docstring).

    Parameters
    ----------
    path
        The folder with ``*_exprMat_file.csv(.gz)`` and ``*_metadata_file.csv(.gz)``.
    pixel_um
        Microns per pixel of the global coordinates.
    modality
        The sample sheet's ``modality``: empty or ``rna`` (a panel is RNA).

    Returns
    -------
    ``{"rna": AnnData}``: cells x targets, raw counts in ``.X`` (CSR), barcodes
    ``<fov>_<cell_ID>``, ``obs``: ``fov``, ``cell_area`` (µm²), ``n_negative``;
    ``obsm["spatial"]`` in microns.

    Raises
    ------
    InputError
        Missing files or columns, cells of the expression matrix missing from the metadata,
        values that are not counts.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sccohort.simulate import simulate_cohort
    >>> from sccohort.io import read_cosmx
    >>> out = simulate_cohort(Path(tempfile.mkdtemp()), "paper", donors=["SSc1"],
    ...                       cells_per_donor=100, spatial="cosmx", cells_per_slide=500)
    >>> rna = read_cosmx(out / "SSc1_slide" / "cosmx")["rna"]
    >>> rna.n_obs, rna.obsm["spatial"].shape, "fov" in rna.obs
    (500, (500, 2), True)
    """
    folder = Path(path)
    _check_rna(modality, folder)
    if not folder.is_dir():
        raise InputError("a CosMx slide is a folder of flat files", file=folder)
    expr_file = _one(folder, "_exprMat_file", "expression matrix")
    meta_file = _one(folder, "_metadata_file", "cell metadata")
    expr = _read_csv(expr_file, ("fov", "cell_ID"))
    meta = _read_csv(meta_file, ("fov", "cell_ID", "Area", "CenterX_global_px",
                                 "CenterY_global_px"))  # fmt: skip
    expr = expr[expr["cell_ID"] != 0]
    key = expr["fov"].astype(str) + "_" + expr["cell_ID"].astype(str)
    meta = meta.set_axis(meta["fov"].astype(str) + "_" + meta["cell_ID"].astype(str))
    lost = key[~key.isin(meta.index)]
    if len(lost):
        raise InputError(
            f"{len(lost)} cells of the expression matrix have no metadata row "
            f"(first: fov {lost.iloc[0].replace('_', ', cell_ID ')})",
            file=meta_file,
            hint="give the metadata file of the same slide export",
        )
    meta = meta.loc[key.to_numpy()]
    targets = [c for c in expr.columns if c not in ("fov", "cell_ID", "cell")]
    negative = [c for c in targets if c.startswith(_COSMX_NEGATIVE)]
    genes = [c for c in targets if c not in negative and not c.startswith(_COSMX_CONTROL)]
    obs = pd.DataFrame({
        "fov": meta["fov"].to_numpy(),
        "cell_area": meta["Area"].to_numpy(dtype=float) * pixel_um**2,
        "n_negative": expr[negative].to_numpy().sum(axis=1).astype(np.int64),
    })  # fmt: skip
    xy = meta[["CenterX_global_px", "CenterY_global_px"]].to_numpy(dtype=np.float64) * pixel_um
    counts = expr[genes].to_numpy(dtype=np.float32)
    return _panel(counts, genes, key.tolist(), obs, xy, expr_file)


def read_xenium(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read one Xenium output folder (``cell_feature_matrix.h5`` + ``cells.csv(.gz)``).

    ``modality``: the sample sheet's, empty or ``rna``.

    Returns
    -------
    ``{"rna": AnnData}``: cells x genes ("Gene Expression" features), raw counts in ``.X``,
    Xenium's cell ids as barcodes, ``obs``: ``fov`` (0), ``cell_area`` (µm²),
    ``n_negative`` ("Negative Control Probe" counts); ``obsm["spatial"]`` in microns.

    Raises
    ------
    InputError
        Missing files or columns, cells of the matrix missing from ``cells.csv``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from sccohort.simulate import simulate_cohort
    >>> from sccohort.io import read_xenium
    >>> out = simulate_cohort(Path(tempfile.mkdtemp()), "paper", donors=["SSc1"],
    ...                       cells_per_donor=100, spatial="xenium", cells_per_slide=500)
    >>> rna = read_xenium(out / "SSc1_slide" / "xenium")["rna"]
    >>> rna.n_obs, float(rna.obsm["spatial"].min()) >= 0
    (500, True)
    """
    from sccohort.io.tenx import _read_h5_matrix

    folder = Path(path)
    _check_rna(modality, folder)
    h5 = folder / "cell_feature_matrix.h5"
    cells_file = next((folder / n for n in ("cells.csv.gz", "cells.csv")
                       if (folder / n).is_file()), folder / "cells.csv.gz")  # fmt: skip
    for needed in (h5, cells_file):
        if not needed.is_file():
            raise InputError(f"the Xenium folder has no {needed.name}", file=folder,
                             hint="give Xenium's output folder (outs/) of one slide")  # fmt: skip
    matrix, barcodes, features = _read_h5_matrix(h5)
    types = np.asarray(features.types or ["Gene Expression"] * len(features.ids))
    counts = matrix.T.tocsr()
    cells = _read_csv(cells_file, ("cell_id", "x_centroid", "y_centroid", "cell_area"))
    cells = cells.set_axis(cells["cell_id"].astype(str))
    lost = [b for b in barcodes if b not in cells.index]
    if lost:
        raise InputError(f"{len(lost)} cells of the matrix are not in {cells_file.name} "
                         f"(first: {lost[0]})", file=cells_file)  # fmt: skip
    cells = cells.loc[barcodes]
    gene = np.flatnonzero(types == "Gene Expression")
    negative = np.flatnonzero(types == "Negative Control Probe")
    obs = pd.DataFrame({
        "fov": 0,
        "cell_area": cells["cell_area"].to_numpy(dtype=float),
        "n_negative": np.asarray(counts[:, negative].sum(axis=1)).ravel().astype(np.int64),
    }, index=range(len(barcodes)))  # fmt: skip
    xy = cells[["x_centroid", "y_centroid"]].to_numpy(dtype=np.float64)
    genes = [features.names[i] for i in gene]
    return _panel(counts[:, gene], genes, list(barcodes), obs, xy, h5)


def read_spatial_h5ad(path: str | Path, *, modality: str | None = None) -> dict[str, ad.AnnData]:
    """Read an ``.h5ad`` of panel cells with ``obsm["spatial"]`` (microns).

    Counts from ``layers["counts"]`` when present, else ``.X``; ``obs`` keeps ``fov``,
    ``cell_area`` and ``n_negative`` when present (else 0, NaN, 0).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import anndata as ad
    >>> import scipy.sparse as sp
    >>> from sccohort.io import read_spatial_h5ad
    >>> adata = ad.AnnData(sp.csr_matrix(np.ones((3, 2), dtype=np.float32)))
    >>> adata.obsm["spatial"] = np.arange(6.0).reshape(3, 2)
    >>> path = Path(tempfile.mkdtemp()) / "slide.h5ad"
    >>> adata.write_h5ad(path)
    >>> read_spatial_h5ad(path)["rna"].obsm["spatial"][2].tolist()
    [4.0, 5.0]
    """
    path = Path(path)
    _check_rna(modality, path)
    try:
        adata = ad.read_h5ad(path)
    except (OSError, ValueError, KeyError) as err:
        raise InputError(f"not a readable h5ad file ({err})", file=path) from err
    if "spatial" not in adata.obsm:
        raise InputError("the h5ad has no obsm['spatial'] (cell coordinates in microns)",
                         file=path, hint="use format h5ad for dissociated cells")  # fmt: skip
    counts = adata.layers["counts"] if "counts" in adata.layers else adata.X
    obs = pd.DataFrame({
        "fov": adata.obs.get("fov", pd.Series(0, index=adata.obs_names)).to_numpy(),
        "cell_area": adata.obs.get("cell_area", pd.Series(np.nan, index=adata.obs_names))
        .to_numpy(dtype=float),
        "n_negative": adata.obs.get("n_negative", pd.Series(0, index=adata.obs_names))
        .to_numpy(),
    })  # fmt: skip
    return _panel(counts, list(adata.var_names), list(adata.obs_names), obs,
                  np.asarray(adata.obsm["spatial"])[:, :2], path)  # fmt: skip
