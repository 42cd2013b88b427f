"""sccohort: donor-level associations between immune cell subsets and clinical manifestations.

The main entry points are the ``sccohort`` command and, in Python,
:func:`sccohort.read_cohort` (a cohort's count files), :func:`sccohort.read_h5mu` (a run's
``cohort.h5mu``, with the values it leaves out rebuilt) and
:func:`sccohort.simulate.simulate_cohort`.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("sccohort")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

__all__ = ["__version__", "read_cohort", "read_h5mu"]


def __getattr__(name: str) -> Any:
    # imported on first use so that ``sccohort --help`` does not pay for anndata's import
    if name == "read_cohort":
        from sccohort.io.read_cohort import read_cohort

        return read_cohort
    if name == "read_h5mu":
        from sccohort.io.cohort_file import read_h5mu

        return read_h5mu
    raise AttributeError(f"module 'sccohort' has no attribute '{name}'")
