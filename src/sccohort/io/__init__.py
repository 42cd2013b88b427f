"""Readers and writers of count files and cohort objects."""

from typing import Any

__all__ = ["ModalityProbe", "SampleProbe", "probe_sample", "probe_samples", "probe_table"]


def __getattr__(name: str) -> Any:
    # imported on first use: the readers' dependencies stay unloaded for `sccohort.io.features`
    if name in __all__:
        from sccohort.io import probe

        return getattr(probe, name)
    raise AttributeError(f"module 'sccohort.io' has no attribute '{name}'")
