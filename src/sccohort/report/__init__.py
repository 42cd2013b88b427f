"""The HTML report: sections of text, figures and tables assembled into one offline file."""

from .assemble import assemble_report
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
from .characterisation import characterisation_section
from .methods import methods_section
from .sections import (
    cell_types_section,
    cohort_section,
    qc_section,
    umap_section,
)
from .stats_sections import (
    association_section,
    composition_section,
)

__all__ = [
    "FigureBlock",
    "Items",
    "Note",
    "Paragraph",
    "Section",
    "TableBlock",
    "assemble_report",
    "association_section",
    "build_report",
    "cell_types_section",
    "characterisation_section",
    "cohort_section",
    "composition_section",
    "format_value",
    "methods_section",
    "qc_section",
    "umap_section",
]
