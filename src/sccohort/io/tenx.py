"""Cell Ranger (10x Genomics) feature-barcode matrices: HDF5 v3 and MTX folders."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

FEATURE_TYPES = ("Gene Expression", "Antibody Capture", "Multiplexing Capture")


def write_10x_h5(
    path: str | Path,
    counts: sp.spmatrix,
    barcodes: Sequence[str],
    features: pd.DataFrame,
    *,
    genome: str = "GRCh38",
    library_id: str = "sample",
) -> None:
    """Write a Cell Ranger v3 ``feature_bc_matrix.h5`` (the layout ``cellranger count`` writes).

    Parameters
    ----------
    path
        Destination file; written to ``<path>.tmp`` first, then renamed.
    counts
        Integer counts, cells x features (any scipy sparse format).
    barcodes
        One barcode per cell, e.g. ``AAACCTGAGAAACCAT-1``.
    features
        One row per feature with columns ``id``, ``name``, ``feature_type`` (one of
        ``FEATURE_TYPES``); an optional ``genome`` column overrides ``genome``.
    genome
        Genome name stored for every feature without its own.
    library_id
        Stored in the file's ``library_ids`` attribute.
    """
    path = Path(path)
    csr = sp.csr_matrix(counts)  # cells x features == features x cells in CSC
    if csr.shape != (len(barcodes), len(features)):
        raise ValueError(
            f"counts are {csr.shape} but there are {len(barcodes)} barcodes and "
            f"{len(features)} features"
        )
    genomes = features["genome"] if "genome" in features else [genome] * len(features)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as fh:
        fh.attrs["filetype"] = "matrix"
        fh.attrs["version"] = 2
        fh.attrs["chemistry_description"] = "Single Cell 3' v3"
        fh.attrs["library_ids"] = np.array([library_id], dtype="S")
        fh.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        grp = fh.create_group("matrix")
        opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        grp.create_dataset("barcodes", data=np.asarray(barcodes, dtype="S"), **opts)
        grp.create_dataset("data", data=csr.data.astype(np.int32), **opts)
        grp.create_dataset("indices", data=csr.indices.astype(np.int64), **opts)
        grp.create_dataset("indptr", data=csr.indptr.astype(np.int64), **opts)
        grp.create_dataset("shape", data=np.array([len(features), len(barcodes)], np.int32))
        feat = grp.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))
        feat.create_dataset("id", data=np.asarray(features["id"], dtype="S"), **opts)
        feat.create_dataset("name", data=np.asarray(features["name"], dtype="S"), **opts)
        feat.create_dataset(
            "feature_type", data=np.asarray(features["feature_type"], dtype="S"), **opts
        )
        feat.create_dataset("genome", data=np.asarray(genomes, dtype="S"), **opts)
    tmp.replace(path)
