"""Donor-level statistics: composition, classic tests, longitudinal summaries, associations."""

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
