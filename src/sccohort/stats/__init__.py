"""Donor-level statistics: composition, classic tests, longitudinal summaries, associations."""
