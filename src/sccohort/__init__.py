"""sccohort: donor-level associations between immune cell subsets and clinical manifestations.

The main entry points are the ``sccohort`` command and, in Python,
:func:`sccohort.read_cohort` and :func:`sccohort.simulate.simulate_cohort`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sccohort")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"

from sccohort.io.read_cohort import read_cohort  # noqa: E402

__all__ = ["__version__", "read_cohort"]
