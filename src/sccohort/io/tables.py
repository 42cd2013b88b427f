"""The run's tables: one registry of their names, files and leading columns.

Stages write every table through `write_table` and the report reads them through
`read_table`, so a file name is typed once, here. Tables whose rows are test results start
with :data:`CORE_COLUMNS` (DESIGN.md); the others keep the column order their stage gives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sccohort.errors import InputError
from sccohort.io.atomic import read_csv, write_csv

__all__ = [
    "CORE_COLUMNS",
    "TABLES",
    "TableSpec",
    "read_table",
    "table_files",
    "table_path",
    "write_table",
]

#: The columns every statistics table starts with (DESIGN.md); method-specific extras follow.
CORE_COLUMNS = (
    "contrast",
    "level",
    "subset",
    "effect",
    "ci_low",
    "ci_high",
    "pvalue",
    "padj",
    "method",
    "n_case",
    "n_control",
)


@dataclass(frozen=True)
class TableSpec:
    """One table of a run: its file under ``tables/`` and whether it starts with the core columns.

    ``file`` may hold ``{contrast}`` or ``{modality}``, filled by `table_path`.
    """

    file: str
    what: str
    core: bool = False


#: Table name -> its file and contents, in the order stages write them.
TABLES: dict[str, TableSpec] = {
    "samples": TableSpec("samples.csv", "per sample as read: cells, genes, antibodies"),
    "qc": TableSpec("qc.csv", "per sample: cells in, removed by each reason, out"),
    "qc_cells": TableSpec("qc_cells.csv.gz", "every cell's QC metrics and verdict"),
    "cell_types": TableSpec("cell_types.csv", "per l2 label: its l1, cells, share, confidence"),
    "label_transfer": TableSpec("label_transfer.csv", "labels transferred from a reference"),
    "subsets": TableSpec("subsets.csv", "per subset: lineage, cells, defining markers"),
    "markers": TableSpec("markers_{modality}.csv", "per subset x feature: Wilcoxon markers"),
    "composition": TableSpec("composition.csv", "counts and shares per sample and level"),
    "contrasts": TableSpec("contrasts.csv", "per contrast: design and attainable significance"),
    "contrast_donors": TableSpec("contrast_donors.csv", "per contrast x donor: its group"),
    "association": TableSpec("association.csv", "composition tests", core=True),
    "subgroups": TableSpec("subgroups.csv", "Kruskal-Wallis, Dunn's pairs", core=True),
    "neighbourhoods": TableSpec("neighbourhoods.csv", "Milo-style neighbourhood DA", core=True),
    "de": TableSpec("de_{contrast}.csv", "pseudobulk DE per group x gene of one contrast"),
    "de_skipped": TableSpec("de_skipped.csv", "groups without enough donors for DE"),
    "enrichment_de": TableSpec("enrichment_de.csv", "preranked GSEA of the DE", core=True),
    "enrichment": TableSpec("enrichment.csv", "marker over-representation per subset"),
    "gating": TableSpec("gating.csv", "protein gating strategy per associated subset"),
    "protein_markers": TableSpec("protein_markers.csv", "protein markers per subset"),
    "prediction": TableSpec("prediction.csv", "phenotype prediction per contrast", core=True),
    "prediction_donors": TableSpec("prediction_donors.csv", "out-of-fold score per donor"),
    "signatures": TableSpec("signatures.csv", "donor x subset mean signature scores"),
    "signature_tests": TableSpec("signature_tests.csv", "signature score tests", core=True),
    "timecourse": TableSpec("timecourse.csv", "per donor x subset x timepoint: share"),
    "timecourse_tests": TableSpec("timecourse_tests.csv", "paired timepoint tests", core=True),
    "timecourse_expression": TableSpec("timecourse_expression.csv", "gene means per timepoint"),
    "tissue_qc": TableSpec("tissue_qc.csv", "per tissue sample: cells in, removed, out"),
    "tissue_cell_types": TableSpec("tissue_cell_types.csv", "tissue cells per type and subset"),
    "trajectory_cells": TableSpec("trajectory_cells.csv.gz", "per trajectory cell: pseudotime"),
    "trajectory_genes": TableSpec("trajectory_genes.csv", "genes along pseudotime: F test"),
    "trajectory_donors": TableSpec("trajectory_donors.csv", "per donor and terminal state"),
    "trajectory_tests": TableSpec("trajectory_tests.csv", "progression tests", core=True),
    "interaction_scores": TableSpec("interaction_scores.csv", "pooled ligand-receptor scores"),
    "interactions": TableSpec("interactions.csv", "per-donor interaction tests", core=True),
    "spatial_qc": TableSpec("spatial_qc.csv", "per slide: cells in, removed, out"),
    "spatial_cell_types": TableSpec("spatial_cell_types.csv", "slide cells per label transferred"),
    "niche_composition": TableSpec("niche_composition.csv", "per niche x cell type: share"),
    "niche_shares": TableSpec("niche_shares.csv", "per donor x niche: share of its cells"),
    "niches": TableSpec("niches.csv", "per-donor niche share tests", core=True),
    "cooccurrence": TableSpec("cooccurrence.csv", "neighbourhood enrichment per slide x pair"),
}


def table_path(out: str | Path, name: str, **fields: str) -> Path:
    """``OUT/tables/<file>`` of the table ``name`` (a key of :data:`TABLES`).

    ``fields`` fill the file name's template fields (``contrast=``, ``modality=``); each is made
    safe for a file name (runs of other characters than letters, digits, ``_.-`` become ``_``).

    Examples
    --------
    >>> from sccohort.io import table_path
    >>> table_path("out", "de", contrast="SSc vs HD").as_posix()
    'out/tables/de_SSc_vs_HD.csv'
    """
    spec = TABLES[name]
    safe = {key: re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value)) for key, value in fields.items()}
    return Path(out) / "tables" / spec.file.format(**safe)


def table_files(out: str | Path, name: str) -> dict[str, Path]:
    """Files of a table named by a template (``de``, ``markers``): field value -> path, sorted.

    The value is as it stands in the file name (made safe by `table_path`).

    Examples
    --------
    >>> import tempfile
    >>> from sccohort.io import table_files, write_table
    >>> out = tempfile.mkdtemp()
    >>> _ = write_table(out, "de", pd.DataFrame({"gene": ["EGR1"]}), contrast="SRC")
    >>> {contrast: path.name for contrast, path in table_files(out, "de").items()}
    {'SRC': 'de_SRC.csv'}
    """
    head, _, tail = TABLES[name].file.partition("{")
    tail = tail.partition("}")[2]
    folder = Path(out) / "tables"
    files = sorted(folder.glob(f"{head}*{tail}")) if folder.is_dir() else []
    found = {f.name[len(head) : len(f.name) - len(tail)]: f for f in files}
    # a fixed name that shares the pattern (de_skipped.csv) is another table
    fixed = {spec.file for spec in TABLES.values() if "{" not in spec.file}
    return {value: f for value, f in found.items() if f.name not in fixed}


def write_table(
    out: str | Path, name: str, frame: pd.DataFrame | list[pd.DataFrame], **fields: str
) -> Path:
    """Write the table ``name`` of the run folder ``out`` atomically; returns its path.

    ``frame`` may be a list of frames, concatenated (empty ones left out). Tables marked
    ``core`` get :data:`CORE_COLUMNS` first.

    Examples
    --------
    >>> import tempfile
    >>> from sccohort.io import read_table, write_table
    >>> out = tempfile.mkdtemp()
    >>> frame = pd.DataFrame({"note": [""], "padj": [0.01], "contrast": ["SRC"]})
    >>> write_table(out, "association", frame).name
    'association.csv'
    >>> read_table(out, "association").columns.tolist()  # core columns first
    ['contrast', 'padj', 'note']
    """
    if isinstance(frame, list):
        frame = pd.concat([f for f in frame if len(f)] or frame[:1], ignore_index=True)
    if TABLES[name].core:
        core = [c for c in CORE_COLUMNS if c in frame.columns]
        frame = frame[core + [c for c in frame.columns if c not in core]]
    return write_csv(frame, table_path(out, name, **fields))


def read_table(
    out: str | Path, name: str, *, required: bool = False, **fields: str
) -> pd.DataFrame | None:
    """The table ``name`` of the run folder ``out``; ``None`` when missing, unreadable or empty.

    With ``required=True`` a missing table is an `InputError` naming the file, and an empty
    one is returned as it is.

    Examples
    --------
    >>> import tempfile
    >>> from sccohort.io import read_table, write_table
    >>> out = tempfile.mkdtemp()
    >>> _ = write_table(out, "de", pd.DataFrame({"gene": ["EGR1"]}), contrast="SRC")
    >>> read_table(out, "de", contrast="SRC")["gene"].tolist(), read_table(out, "association")
    (['EGR1'], None)
    """
    path = table_path(out, name, **fields)
    if not path.is_file():
        if required:
            raise InputError(
                f"the run has no tables/{path.name}",
                file=path,
                hint="Run the pipeline stage that writes it first (sccohort run)",
            )
        return None
    try:
        frame = read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError):
        if required:
            raise
        return None
    return frame if required or len(frame) else None
