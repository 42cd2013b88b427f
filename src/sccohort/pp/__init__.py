"""Per-sample work: summaries, QC, doublets, normalisation."""
