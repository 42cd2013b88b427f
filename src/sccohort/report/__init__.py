"""The HTML report: sections of text, figures and tables assembled into one offline file."""

from .build import (
    FigureBlock,
    Items,
    Note,
    Paragraph,
    Section,
    TableBlock,
    build_report,
    format_value,
)
from .sections import (
    cell_types_section,
    cohort_section,
    methods_section,
    qc_section,
    umap_section,
)

__all__ = [
    "FigureBlock",
    "Items",
    "Note",
    "Paragraph",
    "Section",
    "TableBlock",
    "build_report",
    "cell_types_section",
    "cohort_section",
    "format_value",
    "methods_section",
    "qc_section",
    "umap_section",
]
