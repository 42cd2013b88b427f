"""Validated donor-level facts: the sample sheet, the clinical table and contrast designs.

A cohort is described by two CSV files. The **sample sheet** lists one row per sample (a
donor at a timepoint in a tissue) and where its counts are; the **clinical table** lists one
row per donor with any clinical variables. A :class:`Contrast` names a clinical comparison
(SRC yes vs no within SSc, say) and :meth:`Contrast.design` turns it into the donor-level
design matrix that every statistics module fits.

Every problem with these inputs raises :class:`~sccohort.errors.InputError` naming the file,
the line as an editor shows it (header = line 1), the column and a hint. Row-level problems
of one file are collected and raised together (:func:`raise_all`), so a user fixes a sheet in
one pass.
"""

from sccohort.cohort._tables import (
    CONTROL_CHARACTERS,
    DEFAULT_TIMEPOINT,
    DEFAULT_TISSUE,
    FORMATS,
    INTERCEPT,
    MISSING_TOKENS,
    MODALITIES,
    SAMPLE_OPTIONAL,
    SAMPLE_REQUIRED,
    SPATIAL_FORMATS,
    VARIABLE_TYPES,
    Level,
    VariableType,
    raise_all,
    special_file_kind,
)
from sccohort.cohort.clinical import ClinicalTable, check_donors
from sccohort.cohort.contrast import Contrast
from sccohort.cohort.design import ContrastDesign
from sccohort.cohort.samples import SampleSheet

__all__ = [
    "CONTROL_CHARACTERS",
    "DEFAULT_TIMEPOINT",
    "DEFAULT_TISSUE",
    "FORMATS",
    "SPATIAL_FORMATS",
    "INTERCEPT",
    "MISSING_TOKENS",
    "MODALITIES",
    "SAMPLE_OPTIONAL",
    "SAMPLE_REQUIRED",
    "VARIABLE_TYPES",
    "ClinicalTable",
    "Contrast",
    "ContrastDesign",
    "Level",
    "SampleSheet",
    "VariableType",
    "check_donors",
    "raise_all",
    "special_file_kind",
]
