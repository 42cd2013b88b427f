"""Assemble ``report.html``: sections of paragraphs, figures, tables and notes, one file.

A report is a list of :class:`Section` objects, each a title, an anchor and a list of blocks
(:class:`Paragraph`, :class:`Items`, :class:`FigureBlock`, :class:`TableBlock`,
:class:`Note`, or a nested :class:`Section`). :func:`build_report` renders them with the
jinja2 template ``templates/report.html.j2`` (autoescape on: every user-supplied string is
shown as text), embeds each figure as a base64 PNG, saves it as PNG and SVG under
``OUT/figures/``, links each table to its CSV under ``OUT/tables/`` and writes
``OUT/report.html`` atomically. Figures render in a second process (see
:class:`~sccohort.report.figures.FigureWriter`) while later sections are still being
built, when ``sections`` is a lazy iterable. The page loads nothing from anywhere (inline CSS, no
scripts, ``data:`` images only; a Content-Security-Policy forbids everything else).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import jinja2
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..errors import InputError
from ..io.atomic import atomic_path, write_csv
from .figures import FigureWriter, png_data_uri, safe_name

__all__ = [
    "FigureBlock",
    "Items",
    "Note",
    "Paragraph",
    "Section",
    "TableBlock",
    "build_report",
    "format_value",
]

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class Paragraph:
    """A paragraph of plain text (shown as text, never interpreted as HTML)."""

    text: str


@dataclass
class Items:
    """A bulleted list of plain-text items."""

    items: list[str]


@dataclass
class Note:
    """A highlighted note; ``kind="warning"`` for limitations the reader must see."""

    text: str
    kind: Literal["note", "warning"] = "note"


@dataclass
class FigureBlock:
    """A figure: embedded as PNG, saved as ``figures/<name>.png`` and ``.svg``.

    ``name`` must be unique within a report (it names the files); ``caption`` is shown
    under the figure; ``alt`` is the image's text alternative (default: the caption).
    """

    figure: Figure
    name: str
    caption: str = ""
    alt: str | None = None


@dataclass
class TableBlock:
    """A table shown as HTML (first ``max_rows`` rows) and linked to its CSV.

    ``csv`` is the CSV's path relative to the output folder (e.g. ``"tables/qc.csv"``);
    when that file does not exist yet (or always, with ``overwrite=True``: tables the report
    derives itself), `build_report` writes ``frame`` there. ``columns`` picks and orders the
    columns shown (the CSV keeps all of them).
    """

    frame: pd.DataFrame
    caption: str = ""
    csv: str | None = None
    max_rows: int = 50
    columns: list[str] | None = None
    index: bool = False
    overwrite: bool = False


Block = Paragraph | Items | Note | FigureBlock | TableBlock


@dataclass
class Section:
    """A titled part of the report; ``anchor`` is its id in the page (made URL-safe)."""

    title: str
    anchor: str
    blocks: list[Block | Section] = field(default_factory=list)


_PVALUE_COLUMNS = re.compile(r"(^|_)(p|pvalue|padj|pval|fdr|qvalue|spatial_fdr)$", re.I)


def format_value(value: Any, column: str = "") -> str:  # noqa: PLR0911 - one return per kind of cell
    """A table cell as text: p-values in scientific notation when small, floats to 4 digits.

    Parameters
    ----------
    value
        The cell.
    column
        Its column name: columns named like ``pvalue``, ``padj``, ``fdr`` get p-value format.

    Returns
    -------
    str
        ``""`` for missing values.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if _PVALUE_COLUMNS.search(str(column)):
            return f"{v:.2e}" if 0 < v < 1e-3 else f"{v:.3g}"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(value)


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return slug or "section"


class _Renderer:
    """Turns sections into plain data for the template; saves figures and missing CSVs.

    Figures go to ``writer`` as they come; `finish_figures` fills in their images.
    """

    def __init__(self, out: Path, writer: FigureWriter) -> None:
        self.out = out
        self.writer = writer
        self.anchors: set[str] = set()
        self.figures: dict[str, dict[str, Any]] = {}
        self.written: list[Path] = []

    def anchor(self, wanted: str) -> str:
        base = _slug(wanted)
        anchor, k = base, 2
        while anchor in self.anchors:
            anchor, k = f"{base}-{k}", k + 1
        self.anchors.add(anchor)
        return anchor

    def section(self, section: Section, level: int) -> dict[str, Any]:
        if not isinstance(section, Section):
            raise InputError(
                f"report sections must be Section objects, got {type(section).__name__}",
                hint="Build sections with sccohort.report.Section(title, anchor, blocks)",
            )
        rendered: dict[str, Any] = {
            "title": str(section.title),
            "anchor": self.anchor(section.anchor or section.title),
            "level": level,
            "blocks": [],
            "children": [],
        }
        for block in section.blocks:
            if isinstance(block, Section):
                child = self.section(block, level + 1)
                rendered["children"].append(child)
                rendered["blocks"].append({"type": "section", "section": child})
            else:
                rendered["blocks"].append(self.block(block, section.title))
        return rendered

    def block(self, block: Any, where: str) -> dict[str, Any]:
        if isinstance(block, Paragraph):
            return {"type": "paragraph", "text": str(block.text)}
        if isinstance(block, Items):
            return {"type": "items", "items": [str(i) for i in block.items]}
        if isinstance(block, Note):
            if block.kind not in ("note", "warning"):
                raise InputError(f"note kind must be 'note' or 'warning', got {block.kind!r}")
            return {"type": "note", "kind": block.kind, "text": str(block.text)}
        if isinstance(block, FigureBlock):
            return self.figure(block, where)
        if isinstance(block, TableBlock):
            return self.table(block)
        raise InputError(
            f"section '{where}' holds a {type(block).__name__}, not a report block",
            hint="Use Paragraph, Items, Note, FigureBlock, TableBlock or a nested Section",
        )

    def figure(self, block: FigureBlock, where: str) -> dict[str, Any]:
        if not isinstance(block.figure, Figure):
            raise InputError(
                f"figure '{block.name}' in section '{where}' is a "
                f"{type(block.figure).__name__}, not a matplotlib Figure"
            )
        stem = safe_name(block.name)
        if stem in self.figures:
            raise InputError(
                f"two figures are named '{stem}'",
                key=block.name,
                hint="Give each FigureBlock a unique name (it names figures/<name>.png and .svg)",
            )
        self.writer.submit(block.figure, stem)
        rendered = {
            "type": "figure",
            "src": None,  # set by finish_figures
            "caption": str(block.caption),
            "alt": str(block.alt if block.alt is not None else block.caption or block.name),
            "png": f"figures/{stem}.png",
            "svg": f"figures/{stem}.svg",
        }
        self.figures[stem] = rendered
        return rendered

    def finish_figures(self) -> None:
        for stem, (png, paths) in self.writer.results().items():
            self.figures[stem]["src"] = png_data_uri(png)
            self.written.extend(paths)

    def table(self, block: TableBlock) -> dict[str, Any]:
        frame = block.frame
        if not isinstance(frame, pd.DataFrame):
            raise InputError(
                f"table '{block.caption}' is a {type(frame).__name__}, not a DataFrame"
            )
        if block.csv is not None:
            target = (self.out / block.csv).resolve()
            if self.out.resolve() not in target.parents:
                raise InputError(
                    "a table's CSV must lie inside the output folder",
                    file=block.csv,
                    hint="Give a path relative to the output folder, e.g. tables/qc.csv",
                )
            if block.overwrite or not target.is_file():
                self.written.append(write_csv(frame, target, index=block.index))
        shown = frame.reset_index() if block.index else frame
        columns = list(block.columns) if block.columns is not None else list(shown.columns)
        missing = [c for c in columns if c not in shown.columns]
        if missing:
            raise InputError(f"table '{block.caption}' has no column '{missing[0]}'")
        head = shown[columns].head(block.max_rows)
        numeric = [pd.api.types.is_numeric_dtype(head[c]) for c in columns]
        rows = [
            [format_value(v, str(c)) for v, c in zip(row, columns, strict=True)]
            for row in head.itertuples(index=False, name=None)
        ]
        return {
            "type": "table",
            "caption": str(block.caption),
            "columns": [str(c) for c in columns],
            "numeric": numeric,
            "rows": rows,
            "n_rows": len(shown),
            "csv": block.csv,
        }


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every string, including sample, variable and level names
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def build_report(
    out: str | Path,
    sections: Iterable[Section],
    meta: dict[str, Any] | None = None,
    *,
    filename: str = "report.html",
    workers: int | None = None,
) -> Path:
    """Write the report: ``OUT/report.html`` plus every figure under ``OUT/figures/``.

    Parameters
    ----------
    out
        The run's output folder (created if needed).
    sections
        Top-level sections in reading order; nested sections become subsections. A
        generator is consumed one section at a time, each section's figures rendering
        while the next is built.
    meta
        Shown in the header: ``title`` (default ``"sccohort report"``), ``subtitle``, and any
        other key -> value pairs (e.g. ``{"cohort": ..., "run finished": ...}``), as text.
    filename
        Name of the HTML file inside ``out``.
    workers
        Processes rendering figures besides this one (default
        `~sccohort.report.figures.default_workers`; 0: all in this process). The files do
        not depend on it.

    Returns
    -------
    Path
        The report file. Nothing named ``filename`` exists if rendering failed.

    Raises
    ------
    InputError
        A block of the wrong type, two figures of the same name, a CSV outside ``out``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    title = str(meta.pop("title", "sccohort report"))
    subtitle = meta.pop("subtitle", None)
    with FigureWriter(out / "figures", workers=workers) as writer:
        renderer = _Renderer(out, writer)
        rendered = [renderer.section(s, 2) for s in sections]
        renderer.finish_figures()
    html = (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            subtitle=None if subtitle is None else str(subtitle),
            meta=[(str(k), format_value(v)) for k, v in meta.items()],
            sections=rendered,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        )
    )
    target = out / filename
    with atomic_path(target) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return target
