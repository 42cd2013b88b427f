"""Protein dsb normalisation (Mulè, Martins & Tsang, Nat Commun 2022; R package ``dsb``).

``DSBNormalizeProtein``: ambient correction from a sample's empty droplets, then removal of
each cell's technical component (the first principal component of its isotype controls and
background mean, fitted by a two-component Gaussian mixture per cell, `gmm2_background_mean`).
Reads raw counts from a named layer and writes dense float32 values into ``.X`` (or
``layers[key_added]``), as `sccohort.pp.normalize` does.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from anndata import AnnData

from sccohort.errors import InputError
from sccohort.pp.gmm import gmm2_background_mean
from sccohort.pp.normalize import (
    MIN_EMPTY_DROPLETS,
    _check_protein_panel,
    _counts,
    _dense,
    _flag_zeros,
    _sample_of,
    _store,
)

#: Antibody names that mark an isotype control when ``var["isotype"]`` is absent.
_ISOTYPE_NAME = re.compile(r"isotype|igg|(mouse|rat|hamster)[ _.-]*ig[mae]", re.IGNORECASE)

# --------------------------------------------------------------------------------------------
# protein: dsb


def isotype_controls(adata: AnnData) -> list[str]:
    """Names of the isotype-control antibodies of a protein modality.

    Uses the boolean ``var["isotype"]`` column when present; otherwise the names: those
    containing "isotype" or "IgG" (case-insensitive), or a host species followed by IgM / IgA /
    IgE ("Mouse IgM", "RatIgM"). A bare "IgM", "IgA" or "IgD" is not taken: in CITE-seq panels
    it is the anti-human immunoglobulin antibody marking B cells.

    Parameters
    ----------
    adata
        Protein modality (``n_cells x n_proteins``).

    Returns
    -------
    Isotype-control names in ``var_names`` order (possibly empty).

    Examples
    --------
    >>> from sccohort.pp import isotype_controls
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> isotype_controls(mdata["prot"])[:2]
    ['Mouse IgG1 isotype', 'Mouse IgG2a isotype']
    """
    if "isotype" in adata.var.columns:
        mask = adata.var["isotype"].fillna(False).astype(bool).to_numpy()
    else:
        mask = np.array([bool(_ISOTYPE_NAME.search(str(n))) for n in adata.var_names])
    return list(adata.var_names[mask])


def dsb(
    adata: AnnData,
    empty: AnnData,
    *,
    isotypes: Sequence[str] | None = None,
    pseudocount: float = 10.0,
    denoise_counts: bool = True,
    use_isotype_control: bool = True,
    layer: str | None = "counts",
    empty_layer: str | None = "counts",
    key_added: str | None = None,
    max_iter: int = 500,
) -> None:
    """Normalise protein counts with dsb (Mulè, Martins & Tsang, Nat Commun 2022).

    Matches ``dsb::DSBNormalizeProtein`` (R package dsb 1.0.x, ``R/dsb.r``):

    1. ``c = log(counts + pseudocount)`` for cells and ``e`` likewise for empty droplets.
    2. Ambient correction, per protein ``j``: ``z_cj = (c_cj - mean_j(e)) / sd_j(e)``
       (``sd`` with ``n - 1``, as R's ``sd``).
    3. ``denoise_counts``: per cell, a two-component 1-D Gaussian mixture over that cell's ``z``
       of all proteins (``mclust::Mclust(x, G = 2)``: equal- and unequal-variance models, the
       better BIC wins; initial split at the cell's median as mclust's ``qclass`` does; EM
       vectorised over all cells). The mean of the lower ("background") component is the
       cell's background mean ``mu1``.
    4. Technical component ``t``: with isotype controls, PC1 scores of the cells x
       ``[isotype z values..., mu1]`` matrix, each column centred and scaled to unit SD
       (``prcomp(scale = TRUE)``); without, ``t = mu1``.
    5. Per protein, least squares ``z_j ~ a_j + b_j t`` across cells; the output is the
       residual plus the intercept, ``z_j - b_j t``: what ``limma::removeBatchEffect(z,
       covariates = t)`` returns in limma 3.54 (Debian 12; checked). PC1 scores have mean 0,
       so with isotypes this is also ``z_j - b_j (t - mean(t))`` (each protein's mean kept).
       Newer limma releases centre covariates first, which changes only the ``mu1``-only
       variant (``use_isotype_control=False``), by the constant ``b_j mean(mu1)`` per protein.

    The sign of PC1 is arbitrary in R; here it is chosen to correlate positively with ``mu1``
    (the output does not depend on it). Quantile clipping (an R option, off by default) is not
    offered. dsb is deterministic: no random seed is involved.

    Parameters
    ----------
    adata
        Protein modality of one sample (cells that passed QC), ``n_cells x n_proteins``; raw
        counts in ``layers[layer]``.
    empty
        Empty droplets of the same sample/lane from the raw (unfiltered) matrix,
        ``n_empty x n_proteins`` raw counts in ``empty.layers[empty_layer]`` (or ``.X`` when that
        layer is absent); same antibodies as ``adata`` (any order). At least
        ``MIN_EMPTY_DROPLETS`` droplets.
    isotypes
        Isotype-control names; None finds them with :func:`isotype_controls`.
    pseudocount
        Added to counts before the log (dsb's default 10).
    denoise_counts
        Run step 3-5 (remove each cell's technical component); False stops after step 2.
    use_isotype_control
        Build the technical component from isotypes and ``mu1`` (recommended); False uses
        ``mu1`` alone.
    layer, empty_layer
        Layers holding raw counts; None reads ``.X``.
    key_added
        Write into ``layers[key_added]`` instead of ``.X``.
    max_iter
        EM iterations per mixture at most (relative log-likelihood tolerance 1e-5, as
        mclust).

    Returns
    -------
    None. Writes a dense float32 ``n_cells x n_proteins`` array into ``.X`` (or the layer);
    ``obs``: ``dsb_background_mean`` (``mu1``), ``dsb_technical_component`` (``t``),
    ``zero_protein_counts``; ``var``: ``dsb_ambient_mean``, ``dsb_ambient_sd``,
    ``zero_in_all_cells``, ``dsb_normalised``; ``uns["dsb"]`` (parameters, isotypes used,
    number of empty droplets). Antibodies with zero counts in every cell, or with no spread
    in the empty droplets (SD 0: ambient scaling undefined), are left out of steps 3-5, set to
    0 and named in a warning (``var["dsb_normalised"]`` is False for them).

    Raises
    ------
    InputError
        No or fewer than ``MIN_EMPTY_DROPLETS`` empty droplets; antibody panels of cells and
        empty droplets differ (the missing ones are named); isotypes named but absent, or
        requested but none found; ``pseudocount <= 0``.

    Examples
    --------
    >>> from sccohort.pp import dsb
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> healthy = (mdata.obs["donor_id"] == "HD1").to_numpy()
    >>> cells, empty = mdata["prot"][~healthy].copy(), mdata["prot"][healthy].copy()
    >>> dsb(cells, empty)  # HD1's cells stand in for empty droplets here
    >>> cells.X.shape, cells.uns["dsb"]["n_empty_droplets"]
    ((900, 139), 300)
    """
    sample = _sample_of(adata)
    if not pseudocount > 0:
        raise InputError(f"pseudocount must be > 0, got {pseudocount}", key="pseudocount")
    _check_protein_panel(adata, "protein")
    empty = _checked_empty(adata, empty, sample)
    x = _dense(_counts(adata, layer, "protein"))
    e_layer = empty_layer if empty_layer in empty.layers else None
    e = _dense(_counts(empty, e_layer, "empty-droplet protein"))[:, _order(adata, empty)]

    iso_names = _resolve_isotypes(adata, isotypes, denoise_counts and use_isotype_control, sample)

    zero_prot = _flag_zeros(adata, x, "dsb")
    log_e = np.log(e + pseudocount)
    mu_u = log_e.mean(axis=0)
    sd_u = log_e.std(axis=0, ddof=1)
    flat = (sd_u == 0) & ~zero_prot
    if flat.any():
        names = list(adata.var_names[flat])
        warnings.warn(
            f"dsb: {len(names)} antibodies have identical counts in all {e.shape[0]} empty "
            "droplets, so their ambient scaling is undefined; they are set to 0: "
            + ", ".join(names[:20]),
            UserWarning,
            stacklevel=2,
        )
    use = ~zero_prot & ~flat
    if not use.any():
        raise InputError(
            "no antibody can be dsb-normalised (all have zero counts in cells or no spread in "
            "empty droplets)",
            sample=sample,
            hint="check that the cells and empty droplets hold raw protein counts",
        )
    z = (np.log(x[:, use] + pseudocount) - mu_u[use]) / sd_u[use]

    background = np.full(x.shape[0], np.nan)
    technical = np.full(x.shape[0], np.nan)
    iso_used: list[str] = []
    if denoise_counts:
        background = gmm2_background_mean(z, max_iter=max_iter)
        covariate = background
        if use_isotype_control:
            iso_used, iso_cols = _usable_isotypes(adata.var_names[use], iso_names, sample)
            covariate = _pc1(np.column_stack([z[:, iso_cols], background]), background)
        technical = covariate
        z = _regress_out(z, covariate)

    out = np.zeros(x.shape, dtype=np.float32)
    out[:, use] = z
    _store(adata, out, key_added)
    adata.obs["dsb_background_mean"] = background
    adata.obs["dsb_technical_component"] = technical
    adata.var["dsb_ambient_mean"] = mu_u
    adata.var["dsb_ambient_sd"] = sd_u
    adata.var["dsb_normalised"] = use
    adata.uns["dsb"] = {
        "pseudocount": float(pseudocount),
        "denoise_counts": bool(denoise_counts),
        "use_isotype_control": bool(denoise_counts and use_isotype_control),
        "isotypes": iso_used,
        "n_empty_droplets": int(e.shape[0]),
    }


def _usable_isotypes(
    used_names: pd.Index, iso_names: list[str], sample: str | None
) -> tuple[list[str], np.ndarray]:
    """Isotypes among the normalised antibodies and their columns; warns about the others."""
    iso_used = [n for n in iso_names if n in set(used_names)]
    dropped = [n for n in iso_names if n not in set(iso_used)]
    if dropped:
        warnings.warn(
            f"dsb: isotype controls {', '.join(dropped)} have zero counts in every cell "
            "or no spread in empty droplets and are not used",
            UserWarning,
            stacklevel=3,
        )
    if not iso_used:
        raise InputError(
            "isotype controls were requested but none is usable "
            f"({', '.join(iso_names)} have zero counts in every cell)",
            sample=sample,
            hint="pass use_isotype_control=False",
        )
    return iso_used, np.flatnonzero(np.isin(used_names, iso_used))


def _regress_out(z: np.ndarray, covariate: np.ndarray) -> np.ndarray:
    """Residual plus intercept of each column of ``z`` regressed on ``covariate``."""
    centred = covariate - covariate.mean()
    ss = float(centred @ centred)
    if ss > 0:
        slopes = (centred @ z) / ss  # least-squares slopes with an intercept
        z = z - np.outer(covariate, slopes)  # residual + intercept
    return z


def _checked_empty(adata: AnnData, empty: AnnData | None, sample: str | None) -> AnnData:
    """Validate the empty-droplet object: present, enough droplets, same antibody panel."""
    if empty is None or empty.n_obs == 0:
        raise InputError(
            "dsb needs empty droplets, and none were given",
            sample=sample,
            hint="pass the empty droplets of the raw (unfiltered) Cell Ranger matrix, or use "
            "clr() when the raw matrix is not available",
        )
    if empty.n_obs < MIN_EMPTY_DROPLETS:
        raise InputError(
            f"only {empty.n_obs} empty droplets; dsb needs at least {MIN_EMPTY_DROPLETS} to "
            "estimate each antibody's ambient distribution",
            sample=sample,
            hint="widen the empty-droplet selection in the raw matrix, or use clr() for this "
            "sample",
        )
    cells, drops = list(adata.var_names), set(empty.var_names)
    missing = [n for n in cells if n not in drops]
    extra = sorted(drops - set(cells))
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing from the empty droplets: " + ", ".join(missing))
        if extra:
            parts.append("only in the empty droplets: " + ", ".join(extra))
        raise InputError(
            "the antibody panels of cells and empty droplets differ (" + "; ".join(parts) + ")",
            sample=sample,
            hint="take cells and empty droplets from the same sample's raw matrix",
        )
    if empty.var_names.has_duplicates:
        raise InputError("the empty droplets have duplicated antibody names", sample=sample)
    return empty


def _order(adata: AnnData, empty: AnnData) -> np.ndarray:
    """Column indices of ``empty`` in the order of ``adata.var_names``."""
    return empty.var_names.get_indexer(adata.var_names)


def _resolve_isotypes(
    adata: AnnData, isotypes: Sequence[str] | None, needed: bool, sample: str | None
) -> list[str]:
    if isotypes is not None:
        isotypes = [isotypes] if isinstance(isotypes, str) else list(isotypes)
        absent = [n for n in isotypes if n not in set(adata.var_names)]
        if absent:
            raise InputError(
                f"isotype controls not in the protein panel: {', '.join(absent)}",
                key="isotypes",
                sample=sample,
                hint="use names exactly as in adata.var_names",
            )
        names = isotypes
    else:
        names = isotype_controls(adata)
    if needed and not names:
        raise InputError(
            "isotype controls were requested (use_isotype_control=True) but none was found "
            "(no var['isotype'] column and no name containing 'isotype', 'IgG', or a species "
            "followed by IgM/IgA/IgE)",
            key="isotypes",
            sample=sample,
            hint="pass isotypes=[...] with their names, or use_isotype_control=False",
        )
    return names


def _pc1(noise: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """PC1 scores of column-standardised ``noise`` (cells x k), signed to follow ``reference``."""
    sd = noise.std(axis=0, ddof=1)
    keep = sd > 0
    if not keep.any():  # nothing varies across cells: no technical component to remove
        return np.zeros(noise.shape[0])
    scaled = (noise[:, keep] - noise[:, keep].mean(axis=0)) / sd[keep]
    # PC1 = top eigenvector of the k x k cross-product (an SVD of the cells x k matrix gives
    # the same direction but costs far more for k of a few isotypes)
    _, vectors = np.linalg.eigh(scaled.T @ scaled)
    scores = scaled @ vectors[:, -1]
    if np.corrcoef(scores, reference)[0, 1] < 0:
        scores = -scores
    return scores


def dsb_by_sample(
    prot: AnnData,
    empties: Mapping[str, AnnData],
    *,
    sample_key: str = "sample_id",
    precomputed: Mapping[str, pd.DataFrame] | None = None,
) -> None:
    """Dsb of a cohort's proteins, each sample with its own empty droplets, in place.

    Parameters
    ----------
    prot
        Cells x antibodies of several samples (raw counts in ``layers["counts"]``), with
        ``obs[sample_key]``.
    empties
        Sample -> that sample's empty droplets (droplets x antibodies, raw counts).
    sample_key
        The ``obs`` column naming each cell's sample.
    precomputed
        Sample -> its cells' dsb values (cells x antibodies), used where they cover this
        panel (same antibodies, same order), e.g. from the per-sample task that read it;
        other samples are computed here.

    Returns
    -------
    None. Writes ``.X`` (dense float32) and ``uns["normalization"] = {"method": "dsb"}``.

    Examples
    --------
    >>> from sccohort.datasets import toy_mudata
    >>> from sccohort.pp import dsb_by_sample
    >>> mdata = toy_mudata()
    >>> healthy = (mdata.obs["donor_id"] == "HD1").to_numpy()
    >>> prot = mdata["prot"][~healthy].copy()
    >>> prot.obs["sample_id"] = mdata.obs["sample_id"].to_numpy()[~healthy]
    >>> empty = mdata["prot"][healthy].copy()  # HD1's cells stand in for empty droplets
    >>> dsb_by_sample(prot, {s: empty for s in prot.obs["sample_id"].unique()})
    >>> prot.uns["normalization"]
    {'method': 'dsb'}
    """
    if sample_key not in prot.obs:
        raise InputError(
            f"the proteins' obs has no column '{sample_key}' (sample_key)",
            column=sample_key,
            hint="Copy each cell's sample into prot.obs first",
        )
    precomputed = precomputed or {}
    samples = prot.obs[sample_key].astype(str).to_numpy()
    missing = [s for s in pd.unique(samples) if s not in empties and s not in precomputed]
    if missing:
        raise InputError(
            f"no empty droplets for sample(s) {', '.join(missing)}",
            sample=missing[0],
            hint="Give each sample's raw droplets (the sample sheet's raw_path), or use CLR",
        )
    values = np.zeros(prot.shape, dtype=np.float32)
    for sample_id in pd.unique(samples):
        rows = np.flatnonzero(samples == sample_id)
        own = precomputed.get(sample_id)
        if own is not None and own.columns.equals(prot.var_names):
            values[rows] = own.to_numpy()
            continue
        part = prot[rows].copy()
        dsb(part, empties[sample_id][:, part.var_names].copy())
        values[rows] = part.X
    prot.X = values
    prot.uns["normalization"] = {"method": "dsb"}
