"""Readers and writers: count files, cohort tables, gene sets and the run's tables.

Every name in ``__all__`` is public API (scanpy's conventions: AnnData / MuData in and out,
tidy tables).
"""

from sccohort.cohort import ClinicalTable, SampleSheet
from sccohort.io.atomic import read_csv, write_csv, write_h5mu
from sccohort.io.features import gene_table
from sccohort.io.genesets import hallmark, read_gmt, read_tf_targets
from sccohort.io.mtx import read_10x_mtx
from sccohort.io.pilot import Pilot, read_pilot
from sccohort.io.probe import ModalityProbe, SampleProbe, probe_sample, probe_samples, probe_table
from sccohort.io.read import read_raw_droplets, read_sample, read_samples
from sccohort.io.read_cohort import read_cohort
from sccohort.io.rhapsody import read_rhapsody_csv
from sccohort.io.spatial import read_cosmx, read_spatial_h5ad, read_xenium
from sccohort.io.tables import (
    CORE_COLUMNS,
    TABLES,
    read_table,
    table_files,
    table_path,
    write_table,
)
from sccohort.io.tenx import read_10x_h5

__all__ = [
    "CORE_COLUMNS",
    "ClinicalTable",
    "ModalityProbe",
    "Pilot",
    "SampleProbe",
    "SampleSheet",
    "TABLES",
    "gene_table",
    "hallmark",
    "probe_sample",
    "probe_samples",
    "probe_table",
    "read_10x_h5",
    "read_10x_mtx",
    "read_cohort",
    "read_cosmx",
    "read_csv",
    "read_gmt",
    "read_pilot",
    "read_raw_droplets",
    "read_rhapsody_csv",
    "read_sample",
    "read_samples",
    "read_spatial_h5ad",
    "read_table",
    "read_tf_targets",
    "read_xenium",
    "table_files",
    "table_path",
    "write_csv",
    "write_h5mu",
    "write_table",
]
