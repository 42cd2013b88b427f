"""Toy cohorts for the docstring examples and quick trials (built with the simulator).

``toy()`` gives donor-level inputs of the statistics functions (counts, totals, a clinical
table and a contrast's design) in a few milliseconds; ``toy_mudata()`` gives cells: 4
donors x 300 simulated PBMC with RNA and antibodies, normalised, with the simulator's
labels. For a whole cohort on disk use `sccohort.simulate.write_cohort`. A top-level
module below ``pp`` and ``tl`` in the layering: it normalises and embeds with them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from sccohort.cohort import ClinicalTable, Contrast, ContrastDesign
from sccohort.io.features import gene_var, protein_var
from sccohort.io.h5 import mudata_options
from sccohort.pp.normalize import clr, normalize_rna
from sccohort.simulate.counts import simulate_sample
from sccohort.simulate.design import SimParams, clinical_table, default_batches, sample_specs
from sccohort.simulate.writers import features_table
from sccohort.tl import highly_variable_genes, pca_prot, pca_rna, wnn

__all__ = ["Toy", "toy", "toy_counts", "toy_files", "toy_mudata"]

#: The donors of `toy_mudata`: two with renal crisis (SRC), one without, one healthy.
TOY_DONORS = ("SSc1", "SSc19", "SSc2", "HD1")


@dataclass(frozen=True)
class Toy:
    """The toy cohort (see `toy`)."""

    clinical: ClinicalTable
    design: ContrastDesign
    counts: pd.DataFrame
    totals: pd.DataFrame


def toy() -> Toy:
    """8 donors (D1-D4 with SRC, D5-D8 without), cells of 2 subsets out of 1,000 each.

    ``Mono_A`` is about 2.5 times as common in the SRC donors; ``T_B`` is not.

    Returns
    -------
    Toy
        ``clinical`` (variable ``SRC``, binary), ``design`` (SRC yes vs no), ``counts`` and
        ``totals`` (donors x subsets).

    Examples
    --------
    >>> from sccohort.datasets import toy
    >>> data = toy()
    >>> data.design.describe()
    'SRC: SRC yes (n=4) vs no (n=4)'
    >>> data.counts.loc["D1"].tolist(), int(data.totals.loc["D1", "Mono_A"])
    ([80, 200], 1000)
    """
    donors = pd.Index([f"D{i}" for i in range(1, 9)], name="donor_id")
    table = pd.DataFrame({"SRC": ["yes"] * 4 + ["no"] * 4}, index=donors)
    clinical = ClinicalTable(table, {"SRC": "binary"})
    design = Contrast("SRC", "SRC", case="yes", control="no").design(clinical)
    counts = pd.DataFrame(
        {
            "Mono_A": [80, 90, 75, 85, 30, 35, 40, 28],
            "T_B": [200, 210, 190, 205, 198, 202, 207, 195],
        },
        index=donors,
    )
    return Toy(clinical, design, counts, pd.DataFrame(1000, index=donors, columns=counts.columns))


def toy_counts() -> pd.DataFrame:
    """Pseudobulk counts of `toy`'s 8 donors x 60 genes; ``G0`` is 4-fold up in D1-D4 (SRC).

    Examples
    --------
    >>> from sccohort.datasets import toy_counts
    >>> counts = toy_counts()
    >>> counts.shape, bool(counts["G0"].iloc[:4].mean() > 3 * counts["G0"].iloc[4:].mean())
    ((8, 60), True)
    """
    donors = toy().design.donors
    values = np.random.default_rng(1).poisson(50, size=(8, 60))
    counts = pd.DataFrame(values, index=donors, columns=[f"G{i}" for i in range(60)])
    counts.iloc[:4, 0] *= 4
    return counts


def toy_mudata(cells_per_donor: int = 300, seed: int = 0, *, embedded: bool = False) -> MuData:
    """4 donors x ``cells_per_donor`` simulated PBMC: RNA (20,000 genes) and 139 antibodies.

    The donors are `TOY_DONORS` of the simulator's paper cohort, one baseline sample each.
    Raw counts are in each modality's ``layers["counts"]``; ``.X`` holds log-normalised RNA
    and CLR protein values. ``obs`` has ``sample_id, donor_id`` and the simulator's
    ``l1, l2, subset`` labels (truth, doublets included); ``uns["clinical"]`` the donors'
    clinical rows. Each call returns a new object (the simulation is made once).
    ``embedded=True`` adds 500 HVGs, RNA (20) and protein (10) PCs and the WNN graph
    (``obsp["wnn_*"]``, ``uns["wnn"]``, ``uns["wnn_snn"]``), as the pipeline's embed stage.

    Examples
    --------
    >>> from sccohort.datasets import toy_mudata
    >>> mdata = toy_mudata()
    >>> mdata.n_obs, mdata["rna"].n_vars, mdata["prot"].n_vars
    (1200, 19409, 139)
    >>> sorted(mdata.obs["donor_id"].unique())
    ['HD1', 'SSc1', 'SSc19', 'SSc2']
    """
    rna, prot, obs, clinical = _toy_parts(int(cells_per_donor), int(seed))
    rna, prot = rna.copy(), prot.copy()
    normalize_rna(rna)
    clr(prot)
    with mudata_options(pull_on_update=False), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shared gene / antibody names: mudata's notice
        mdata = MuData({"rna": rna, "prot": prot})
    mdata.obs = obs.copy()
    mdata.uns["clinical"] = clinical.copy()
    if embedded:
        highly_variable_genes(mdata["rna"], n_top_genes=500, batch_key=None)
        pca_rna(mdata["rna"], n_comps=20)
        pca_prot(mdata["prot"], n_comps=10)
        wnn(mdata, {"rna": "X_pca", "prot": "X_pca_prot"}, n_neighbors=20, seed=seed)
    return mdata


@cache
def _toy_parts(
    cells_per_donor: int, seed: int
) -> tuple[AnnData, AnnData, pd.DataFrame, pd.DataFrame]:
    """The counts, cells and clinical rows of `toy_mudata` (simulated once per arguments)."""
    clinical = clinical_table().set_index("donor_id")
    specs = [
        s
        for s in sample_specs(default_batches(None))
        if s.donor_id in TOY_DONORS and s.timepoint == "baseline"
    ]
    features = features_table()
    is_gene = (features["feature_type"] == "Gene Expression").to_numpy()
    parts = []
    for spec in specs:
        counts = simulate_sample(
            spec, clinical.loc[spec.donor_id],
            "paper", SimParams(n_empty=0), cells_per_donor, seed,
            list(clinical.index).index(spec.donor_id), int(spec.batch[1:]) - 1,
        )  # fmt: skip
        parts.append((spec, counts))
    cells = [f"{spec.sample_id}:{b.decode()}" for spec, c in parts for b in c.barcodes]
    obs = pd.concat([c.truth.assign(donor_id=spec.donor_id) for spec, c in parts])
    obs = obs.set_index(pd.Index(cells, name="cell_id"))[
        ["sample_id", "donor_id", "l1", "l2", "subset"]
    ]
    rna_counts = sp.vstack([c.rna for _, c in parts], format="csr").astype(np.float32)
    adt = np.vstack([c.adt for _, c in parts]).astype(np.float32)
    rna_var = gene_var(features.loc[is_gene, "name"], features.loc[is_gene, "id"])
    prot_var = protein_var(features.loc[~is_gene, "name"], features.loc[~is_gene, "id"])
    index = pd.Index(cells)
    rna = AnnData(rna_counts, obs=pd.DataFrame(index=index), var=rna_var)
    rna.layers["counts"] = rna_counts.copy()
    prot = AnnData(sp.csr_matrix(adt), obs=pd.DataFrame(index=index), var=prot_var)
    prot.layers["counts"] = sp.csr_matrix(adt)
    return rna, prot, obs, clinical.loc[list(TOY_DONORS)]


def toy_files(folder: str | Path, cells_per_donor: int = 300, seed: int = 0) -> Path:
    """Write `toy_mudata`'s cells as a cohort on disk; returns its ``samples.csv``.

    One Cell Ranger ``filtered_feature_bc_matrix.h5`` per donor (raw counts, RNA and
    antibodies), ``samples.csv`` and ``clinical.csv`` (the donors' clinical rows) in
    ``folder``, which is created.

    Examples
    --------
    >>> import tempfile
    >>> from sccohort.datasets import toy_files
    >>> samples = toy_files(tempfile.mkdtemp())
    >>> sorted(p.name for p in samples.parent.iterdir())
    ['HD1', 'SSc1', 'SSc19', 'SSc2', 'clinical.csv', 'samples.csv']
    """
    from sccohort.io.tenx import write_10x_h5

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rna, prot, obs, clinical = _toy_parts(int(cells_per_donor), int(seed))
    features = features_table()
    counts = sp.hstack([rna.layers["counts"], prot.layers["counts"]], format="csr")
    rows = []
    for sample in pd.unique(obs["sample_id"]):
        cells = np.flatnonzero((obs["sample_id"] == sample).to_numpy())
        barcodes = [c.split(":", 1)[1] for c in obs.index[cells]]
        (folder / sample).mkdir(exist_ok=True)
        path = folder / sample / "filtered_feature_bc_matrix.h5"
        write_10x_h5(path, counts[cells].astype(np.int32), barcodes, features, library_id=sample)
        donor = str(obs["donor_id"].iloc[cells[0]])
        rows.append({"sample_id": sample, "donor_id": donor, "path": f"{sample}/{path.name}"})
    pd.DataFrame(rows).to_csv(folder / "samples.csv", index=False)
    clinical.reset_index().to_csv(folder / "clinical.csv", index=False)
    return folder / "samples.csv"
