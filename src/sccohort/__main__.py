"""``python -m sccohort`` runs the command-line interface."""

from sccohort.cli import main

main()
