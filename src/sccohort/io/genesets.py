"""Gene-set readers: GMT files, TF -> target tables (TRRUST-style TSV), shipped Hallmark sets.

All readers return ``{set name: [gene, ...]}`` with genes in file order, duplicates within a
set removed, and sets in file order. Files may be gzip-compressed (``.gz``). A malformed line
raises :class:`~sccohort.errors.InputError` naming the file and the line number.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator, Sequence
from importlib import resources
from pathlib import Path

from ..errors import InputError

__all__ = ["HALLMARK_FILE", "hallmark", "read_gmt", "read_tf_targets"]

#: The shipped MSigDB Hallmark collection (CC BY 4.0; see resources/MSIGDB_HALLMARK_LICENSE.md).
HALLMARK_FILE = "h.all.v7.5.1.symbols.gmt.gz"

_TF_HEADER_FIRST = {"tf", "source", "regulator", "transcription factor"}
_TF_HEADER_SECOND = {"target", "gene", "target gene"}


def _lines(path: Path, shown: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` of a text file, gzip or plain."""
    if not path.is_file():
        raise InputError(
            "gene-set file not found", file=shown, hint="Check the path in the configuration."
        )
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                yield number, line.rstrip("\r\n")
    except (UnicodeDecodeError, OSError, EOFError) as err:
        raise InputError(
            f"cannot read the file as UTF-8 text ({err})",
            file=shown,
            hint="Give a plain-text (or gzip-compressed) tab-separated file.",
        ) from err


def _add(sets: dict[str, list[str]], seen: dict[str, set[str]], name: str, gene: str) -> None:
    if name not in sets:
        sets[name] = []
        seen[name] = set()
    if gene not in seen[name]:
        seen[name].add(gene)
        sets[name].append(gene)


def read_gmt(path: str | Path) -> dict[str, list[str]]:
    r"""Read a GMT file (one set a line: name, description, genes; tab-separated).

    Parameters
    ----------
    path
        ``.gmt`` or ``.gmt.gz`` file. Blank lines and lines starting with ``#`` are skipped;
        empty gene fields (trailing tabs) are ignored.

    Returns
    -------
    dict
        ``{set name: [gene, ...]}``, ``n_sets`` entries, genes de-duplicated in file order.

    Raises
    ------
    InputError
        A line with fewer than three fields, an empty set name, a set without genes, or a set
        name given twice.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sccohort.io import read_gmt
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sets.gmt"
    >>> _ = path.write_text("A\tmy set\tG1\tG2\nB\tother\tG3\n")
    >>> read_gmt(path)
    {'A': ['G1', 'G2'], 'B': ['G3']}
    """
    path = Path(path)
    sets: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    for number, line in _lines(path, path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise InputError(
                f"a GMT line needs a set name, a description and genes, tab-separated; "
                f"found {len(fields)} field(s)",
                file=path,
                row=number,
                hint="Separate fields with tabs (not spaces): NAME<TAB>DESCRIPTION<TAB>GENE...",
            )
        name = fields[0].strip()
        genes = [g.strip() for g in fields[2:] if g.strip()]
        if not name:
            raise InputError("empty gene-set name", file=path, row=number)
        if not genes:
            raise InputError(f"gene set {name!r} has no genes", file=path, row=number)
        if name in sets:
            raise InputError(
                f"gene set {name!r} is defined twice",
                file=path,
                row=number,
                hint="Give every set a unique name.",
            )
        for gene in genes:
            _add(sets, seen, name, gene)
    if not sets:
        raise InputError("the GMT file holds no gene sets", file=path)
    return sets


def read_tf_targets(
    path: str | Path, *, modes: Sequence[str] | None = None
) -> dict[str, list[str]]:
    r"""Read a TF -> target table (TRRUST raw-data style) into one target set per TF.

    Parameters
    ----------
    path
        Tab-separated file (optionally ``.gz``) with columns TF, target and optionally the mode
        of regulation (e.g. ``Activation``, ``Repression``, ``Unknown``) and references; no
        header, or a header whose first two fields name the TF and the target column (e.g.
        ``TF<TAB>Target``). Blank lines and ``#`` comments are skipped.
    modes
        Keep only rows whose third column is one of these (case-insensitive), e.g.
        ``["Activation"]``; default: all rows.

    Returns
    -------
    dict
        ``{TF: [target, ...]}``, targets de-duplicated in file order.

    Raises
    ------
    InputError
        A line with fewer than two fields or an empty TF or target; ``modes`` given but a row
        has no mode column; no rows left.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from sccohort.io import read_tf_targets
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "trrust.tsv"
    >>> _ = path.write_text("EGR1\tFOS\tActivation\t1\nEGR1\tJUN\tActivation\t2\n")
    >>> read_tf_targets(path)
    {'EGR1': ['FOS', 'JUN']}
    """
    path = Path(path)
    wanted = None if modes is None else {m.strip().lower() for m in modes}
    sets: dict[str, list[str]] = {}
    seen: dict[str, set[str]] = {}
    first = True
    for number, line in _lines(path, path):
        if not line.strip() or line.startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if first:
            first = False
            if (
                len(fields) >= 2
                and fields[0].lower() in _TF_HEADER_FIRST
                and fields[1].lower() in _TF_HEADER_SECOND
            ):
                continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise InputError(
                "a TF-target line needs a TF and a target, tab-separated",
                file=path,
                row=number,
                hint="Columns: TF<TAB>target[<TAB>mode<TAB>references], as TRRUST's raw data.",
            )
        if wanted is not None:
            if len(fields) < 3:
                raise InputError(
                    "modes were requested but this line has no mode column",
                    file=path,
                    row=number,
                    hint="Add the third column (e.g. Activation) or leave modes unset.",
                )
            if fields[2].lower() not in wanted:
                continue
        _add(sets, seen, fields[0], fields[1])
    if not sets:
        hint = None if wanted is None else f"No row has a mode among {sorted(wanted)}."
        raise InputError("the TF-target table holds no rows", file=path, hint=hint)
    return sets


def hallmark() -> dict[str, list[str]]:
    """The MSigDB Hallmark gene sets shipped with sccohort (v7.5.1, human symbols).

    Returns
    -------
    dict
        ``{HALLMARK_...: [gene, ...]}``, 50 sets of 32-200 genes. CC BY 4.0: cite Liberzon et
        al. 2015, Cell Systems 1:417 (see ``resources/MSIGDB_HALLMARK_LICENSE.md``).

    Examples
    --------
    >>> from sccohort.io import hallmark
    >>> sets = hallmark()
    >>> len(sets), "EGR1" in sets["HALLMARK_TNFA_SIGNALING_VIA_NFKB"]
    (50, True)
    """
    ref = resources.files("sccohort.resources").joinpath(HALLMARK_FILE)
    with resources.as_file(ref) as file:
        return read_gmt(file)
