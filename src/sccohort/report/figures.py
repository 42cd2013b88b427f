"""Figure output: PNG bytes for embedding (base64) and PNG + SVG files under ``figures/``."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from ..io.atomic import atomic_path

#: Resolution of embedded and saved PNGs (the report shows them at up to ~900 px wide).
DPI = 110
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")

# SVGs carry no creation date, so equal figures give byte-identical files
_SVG_META = {"Date": None}
_PNG_META = {"Software": None}


def safe_name(name: str) -> str:
    """A file-name-safe version of ``name`` (letters, digits, ``_ . -``; others -> ``_``)."""
    cleaned = _SAFE.sub("_", str(name)).strip("._")
    return cleaned or "figure"


def png_bytes(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure rendered as PNG (Agg), white background, tight bounding box."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata=_PNG_META)
    return buffer.getvalue()


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def save_figure(fig: Figure, folder: Path, name: str, *, png: bytes | None = None) -> list[Path]:
    """Write ``folder/<name>.png`` and ``folder/<name>.svg`` atomically.

    Parameters
    ----------
    fig
        The figure.
    folder
        Target folder (created).
    name
        File stem; made file-name safe with `safe_name`.
    png
        Already rendered PNG bytes to write instead of rendering again.

    Returns
    -------
    list of Path
        The PNG and SVG paths.
    """
    stem = safe_name(name)
    folder = Path(folder)
    png = png if png is not None else png_bytes(fig)
    png_path, svg_path = folder / f"{stem}.png", folder / f"{stem}.svg"
    with atomic_path(png_path) as tmp:
        tmp.write_bytes(png)
    with (
        atomic_path(svg_path) as tmp,
        matplotlib.rc_context({"svg.hashsalt": stem, "svg.fonttype": "none"}),
    ):
        fig.savefig(tmp, format="svg", metadata=_SVG_META)
    return [png_path, svg_path]
