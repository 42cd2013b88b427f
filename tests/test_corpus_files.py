"""The bad-input corpus, count files: every broken file is refused by ``validate`` and ``run``.

Each case copies the tiny valid cohort of `corpus.tiny_cohort`, breaks one thing about one
sample's count file (or the paths that lead to it), and asserts with `corpus.assert_refused`
that both commands exit 2 with one line naming the sample and the file, write nothing and
change no input. Valid controls (an absolute path, a path through ``..``, an MTX folder, an
h5ad of integer-valued floats) must pass ``validate``. Cases that could hang if a check
regressed (a named pipe, ``/dev/zero``) run in a child process with a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp
from corpus import (
    GENES,
    PROTEINS,
    PYTHON_NOISE,
    assert_refused,
    features,
    invoke,
    tiny_cohort,
)

from sccohort.io.tenx import write_10x_h5

TESTS = Path(__file__).resolve().parent
#: The sample every case breaks (the second of four: not the first, not the last).
SAMPLE, DONOR = "S_D2", "D2"
H5 = f"{DONOR}/filtered_feature_bc_matrix.h5"
#: Seconds a guarded case may take in its child process before it counts as a hang.
GUARD_S = 90


# ----------------------------------------------------------------------------- helpers


def _set_sheet(root: Path, sample: str = SAMPLE, **columns: str) -> None:
    """Set cells of one sample's row in ``samples.csv``."""
    sheet = pd.read_csv(root / "samples.csv", dtype=str, keep_default_na=False)
    for column, value in columns.items():
        if column not in sheet:
            sheet[column] = ""
        sheet.loc[sheet["sample_id"] == sample, column] = value
    sheet.to_csv(root / "samples.csv", index=False)


def _read_h5(path: Path) -> tuple[sp.csr_matrix, list[str]]:
    """Cells x features counts and barcodes of a Cell Ranger h5 of the cohort."""
    with h5py.File(path, "r") as fh:
        grp = fh["matrix"]
        n_features, n_cells = grp["shape"][:]
        matrix = sp.csc_matrix(
            (grp["data"][:], grp["indices"][:], grp["indptr"][:]), shape=(n_features, n_cells)
        )
        barcodes = [b.decode() for b in grp["barcodes"][:]]
    return matrix.T.tocsr(), barcodes


def _edit_h5(root: Path, edit: Callable[[h5py.Group], None]) -> None:
    with h5py.File(root / H5, "a") as fh:
        edit(fh["matrix"])


def _replace(group: h5py.Group, key: str, values: np.ndarray) -> None:
    del group[key]
    group.create_dataset(key, data=values)


def _write_h5ad(path: Path, counts: np.ndarray | sp.spmatrix, barcodes, genes=GENES) -> None:
    """An h5ad of the cohort's layout: genes and antibodies told apart by feature types."""
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * len(genes) + ["Antibody Capture"] * 5},
        index=list(genes) + PROTEINS,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # non-unique names, on purpose in one case
        ad.AnnData(X=counts, obs=pd.DataFrame(index=list(barcodes)), var=var).write_h5ad(path)


def _to_h5ad(root: Path, change: Callable[[np.ndarray], None] | None = None, **kw) -> str:
    """Replace the sample's h5 by an h5ad of its counts (float, dense), ``change``-d."""
    counts, barcodes = _read_h5(root / H5)
    dense = counts.toarray().astype(np.float64)
    if change is not None:
        change(dense)
    _write_h5ad(root / DONOR / "counts.h5ad", dense, barcodes, **kw)
    _set_sheet(root, path=f"{DONOR}/counts.h5ad")
    return f"{DONOR}/counts.h5ad"


def _to_mtx(root: Path, barcodes: list[str] | None = None, size: str | None = None) -> str:
    """Replace the sample's h5 by a Cell Ranger MTX folder of its counts."""
    counts, found = _read_h5(root / H5)
    folder = root / DONOR / "filtered_feature_bc_matrix"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", counts.T.tocoo().astype(np.int64), field="integer")
    if size is not None:  # rewrite the size line
        lines = (folder / "matrix.mtx").read_text().splitlines()
        first = next(i for i, line in enumerate(lines) if not line.startswith("%"))
        lines[first] = size
        (folder / "matrix.mtx").write_text("\n".join(lines) + "\n")
    features().to_csv(folder / "features.tsv", sep="\t", header=False, index=False)
    pd.Series(barcodes or found).to_csv(folder / "barcodes.tsv", header=False, index=False)
    (root / H5).unlink()
    _set_sheet(root, path=f"{DONOR}/filtered_feature_bc_matrix")
    return f"{DONOR}/filtered_feature_bc_matrix"


def _rewrite_h5(root: Path, donor: str, genes=GENES, n_cells: int | None = None) -> None:
    """Write a donor's h5 again with other gene names or another number of cells."""
    path = root / donor / "filtered_feature_bc_matrix.h5"
    counts, barcodes = _read_h5(path)
    if n_cells is not None:
        counts, barcodes = counts[:n_cells], barcodes[:n_cells]
    table = features()
    table.loc[: len(genes) - 1, "name"] = list(genes)
    write_10x_h5(path, counts, barcodes, table)


# ----------------------------------------------------------------------------- the cases
# Each breaks the tiny cohort at ``root`` and returns what the one-line message must name
# besides the sample (the file, and what is wrong).


def truncated(size: Callable[[int], int]) -> Callable[[Path], tuple[str, ...]]:
    def case(root: Path) -> tuple[str, ...]:
        data = (root / H5).read_bytes()
        (root / H5).write_bytes(data[: size(len(data))])
        return (H5,)

    return case


def zero_bytes(root: Path) -> tuple[str, ...]:
    (root / H5).write_bytes(b"")
    return H5, "empty (0 bytes)"


def text_renamed_h5(root: Path) -> tuple[str, ...]:
    (root / H5).write_text("barcode,CD3E,CD4\nAAAC-1,1,2\n")
    return H5, "not an HDF5 file", "barcode,CD3E"


def h5ad_renamed_h5(root: Path) -> tuple[str, ...]:
    counts, barcodes = _read_h5(root / H5)
    _write_h5ad(root / H5, counts.astype(np.float32), barcodes)
    return H5, "AnnData", ".h5ad"


def shape_lies_about_cells(root: Path) -> tuple[str, ...]:
    _edit_h5(root, lambda g: _replace(g, "shape", np.array([47, 50], dtype=np.int32)))
    return H5, "50"


def shape_lies_about_features(root: Path) -> tuple[str, ...]:
    _edit_h5(root, lambda g: _replace(g, "shape", np.array([40, 35], dtype=np.int32)))
    return H5, "features"


def indptr_decreases(root: Path) -> tuple[str, ...]:
    def edit(group: h5py.Group) -> None:
        indptr = group["indptr"][:]
        indptr[5], indptr[6] = indptr[6], indptr[5] - 1
        _replace(group, "indptr", indptr)

    _edit_h5(root, edit)
    return H5, "indptr"


def indptr_wrong_length(root: Path) -> tuple[str, ...]:
    _edit_h5(root, lambda g: _replace(g, "indptr", g["indptr"][:-3]))
    return H5, "indptr"


def indptr_ends_short(root: Path) -> tuple[str, ...]:
    def edit(group: h5py.Group) -> None:
        indptr = group["indptr"][:]
        indptr[-1] -= 4
        _replace(group, "indptr", indptr)

    _edit_h5(root, edit)
    return H5, "indptr"


def indices_out_of_range(root: Path) -> tuple[str, ...]:
    def edit(group: h5py.Group) -> None:
        indices = group["indices"][:]
        indices[10] = 47
        _replace(group, "indices", indices)

    _edit_h5(root, edit)
    return H5, "indices", "47"


def h5_values(value: float, dtype: type, *words: str) -> Callable[[Path], tuple[str, ...]]:
    def case(root: Path) -> tuple[str, ...]:
        def edit(group: h5py.Group) -> None:
            data = group["data"][:].astype(dtype)
            data[7] = value
            _replace(group, "data", data)

        _edit_h5(root, edit)
        return (H5, *words)

    return case


def h5_duplicate_barcodes(root: Path) -> tuple[str, ...]:
    def edit(group: h5py.Group) -> None:
        barcodes = group["barcodes"][:]
        barcodes[9] = barcodes[2]
        _replace(group, "barcodes", barcodes)

    _edit_h5(root, edit)
    return H5, "barcode", "more than once"


def h5_duplicate_feature(root: Path) -> tuple[str, ...]:
    def edit(group: h5py.Group) -> None:
        for key in ("id", "name"):
            values = group["features"][key][:]
            values[4] = values[3]
            _replace(group["features"], key, values)

    _edit_h5(root, edit)
    return H5, "GENE3", "more than once"


def zero_cells(root: Path) -> tuple[str, ...]:
    _rewrite_h5(root, DONOR, n_cells=0)
    return H5, "no cells"


def format_h5ad_for_a_10x_h5(root: Path) -> tuple[str, ...]:
    _set_sheet(root, format="h5ad")
    return H5, "format column says 'h5ad'", "Cell Ranger"


def format_10x_h5_for_an_h5ad(root: Path) -> tuple[str, ...]:
    path = _to_h5ad(root)
    _set_sheet(root, format="10x_h5")
    return path, "format column says '10x_h5'", "AnnData"


def h5ad_values(value: float, *words: str) -> Callable[[Path], tuple[str, ...]]:
    def case(root: Path) -> tuple[str, ...]:
        def change(dense: np.ndarray) -> None:
            dense[3, 2] = value

        return (_to_h5ad(root, change), *words)

    return case


def h5ad_duplicate_genes(root: Path) -> tuple[str, ...]:
    genes = list(GENES)
    genes[6] = genes[2]
    return _to_h5ad(root, genes=genes), "modality 'rna'", "GENE2", "more than once"


def h5ad_duplicate_barcodes(root: Path) -> tuple[str, ...]:
    counts, barcodes = _read_h5(root / H5)
    barcodes[4] = barcodes[0]
    _write_h5ad(root / DONOR / "counts.h5ad", counts.astype(np.float32), barcodes)
    _set_sheet(root, path=f"{DONOR}/counts.h5ad")
    return f"{DONOR}/counts.h5ad", "barcode", "more than once"


def mtx_without_barcodes(root: Path) -> tuple[str, ...]:
    folder = _to_mtx(root)
    (root / folder / "barcodes.tsv").unlink()
    return folder, "barcodes.tsv"


def mtx_wrong_size(root: Path) -> tuple[str, ...]:
    counts, _ = _read_h5(root / H5)
    folder = _to_mtx(root, size=f"{counts.shape[1]} 99 {counts.nnz}")
    return f"{folder}/matrix.mtx", "99"


def mtx_entries_missing(root: Path) -> tuple[str, ...]:
    folder = _to_mtx(root)
    lines = (root / folder / "matrix.mtx").read_text().splitlines()
    (root / folder / "matrix.mtx").write_text("\n".join(lines[:-5]) + "\n")
    return f"{folder}/matrix.mtx", "entries"


def mtx_negative_count(root: Path) -> tuple[str, ...]:
    folder = _to_mtx(root)
    lines = (root / folder / "matrix.mtx").read_text().splitlines()
    i, j, _ = lines[-1].split()
    lines[-1] = f"{i} {j} -4"
    (root / folder / "matrix.mtx").write_text("\n".join(lines) + "\n")
    return f"{folder}/matrix.mtx", "negative"


def mtx_duplicate_barcodes(root: Path) -> tuple[str, ...]:
    _, barcodes = _read_h5(root / H5)
    barcodes[7] = barcodes[1]
    folder = _to_mtx(root, barcodes=barcodes)
    return f"{folder}/barcodes.tsv", "barcode", "more than once"


def unrelated_folder(root: Path) -> tuple[str, ...]:
    folder = root / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("lab notes\n")
    (folder / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    _set_sheet(root, path="notes")
    return "notes", "no count matrix"


def etc_passwd(root: Path) -> tuple[str, ...]:
    _set_sheet(root, path="/etc/passwd")
    return ("/etc/passwd",)


def etc_passwd_as_10x_h5(root: Path) -> tuple[str, ...]:
    _set_sheet(root, path="/etc/passwd", format="10x_h5")
    return "/etc/passwd", "not an HDF5 file"


def same_file_twice(root: Path) -> tuple[str, ...]:
    _set_sheet(root, path="D1/filtered_feature_bc_matrix.h5")
    return "S_D1", "D1/filtered_feature_bc_matrix.h5", "same count file"


def same_file_by_its_folder(root: Path) -> tuple[str, ...]:
    _set_sheet(root, path="D1")
    return "S_D1", "D1/filtered_feature_bc_matrix.h5", "same count file"


def same_barcodes_copied_file(root: Path) -> tuple[str, ...]:
    shutil.copyfile(root / "D1" / "filtered_feature_bc_matrix.h5", root / H5)
    return "S_D1", H5, "barcodes"


def genes_differ_in_one_sample(root: Path) -> tuple[str, ...]:
    genes = list(GENES)
    genes[7] = "GENE_RENAMED"
    _rewrite_h5(root, DONOR, genes=genes)
    return H5, "GENE_RENAMED", "GENE7"


CASES: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "h5 truncated to 100 bytes": truncated(lambda n: 100),
    "h5 truncated to half": truncated(lambda n: n // 2),
    "h5 truncated by 200 bytes": truncated(lambda n: n - 200),
    "h5 of zero bytes": zero_bytes,
    "text renamed .h5": text_renamed_h5,
    "h5ad renamed .h5": h5ad_renamed_h5,
    "h5 shape lies about cells": shape_lies_about_cells,
    "h5 shape lies about features": shape_lies_about_features,
    "h5 indptr decreases": indptr_decreases,
    "h5 indptr of the wrong length": indptr_wrong_length,
    "h5 indptr ends before the data": indptr_ends_short,
    "h5 indices out of range": indices_out_of_range,
    "h5 negative count": h5_values(-2, np.int32, "negative"),
    "h5 NaN count": h5_values(np.nan, np.float32, "NaN"),
    "h5 count of 1.5": h5_values(1.5, np.float32, "non-integer"),
    "h5 count of 3e9": h5_values(3e9, np.int64, "3,000,000,000"),
    "h5 duplicated barcode": h5_duplicate_barcodes,
    "h5 duplicated feature": h5_duplicate_feature,
    "sample of 0 cells": zero_cells,
    "format h5ad for a 10x h5": format_h5ad_for_a_10x_h5,
    "format 10x_h5 for an h5ad": format_10x_h5_for_an_h5ad,
    "h5ad negative count": h5ad_values(-1, "negative"),
    "h5ad NaN count": h5ad_values(np.nan, "NaN"),
    "h5ad count of 1.5": h5ad_values(1.5, "non-integer"),
    "h5ad count of 3e9": h5ad_values(3e9, "3,000,000,000"),
    "h5ad duplicated gene names": h5ad_duplicate_genes,
    "h5ad duplicated barcodes": h5ad_duplicate_barcodes,
    "MTX without barcodes.tsv": mtx_without_barcodes,
    "MTX of the wrong size": mtx_wrong_size,
    "MTX missing entries": mtx_entries_missing,
    "MTX negative count": mtx_negative_count,
    "MTX duplicated barcodes": mtx_duplicate_barcodes,
    "folder of unrelated files": unrelated_folder,
    "/etc/passwd": etc_passwd,
    "/etc/passwd as 10x_h5": etc_passwd_as_10x_h5,
    "same file for two samples": same_file_twice,
    "same file, once by its folder": same_file_by_its_folder,
    "same barcodes (a copied file)": same_barcodes_copied_file,
    "genes differ in one sample of four": genes_differ_in_one_sample,
}


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return tiny_cohort(tmp_path / "cohort")


@pytest.mark.parametrize("name", list(CASES))
def test_broken_count_file_is_refused(name: str, cohort: Path, tmp_path: Path) -> None:
    mentions = CASES[name](cohort.parent)
    message = assert_refused(cohort, tmp_path / "out", f"sample '{SAMPLE}'", *mentions)
    assert "Traceback" not in message


def test_the_odd_sample_out_is_blamed_not_the_first(cohort: Path, tmp_path: Path) -> None:
    root = cohort.parent
    genes = list(GENES)
    genes[7] = "GENE_RENAMED"
    _rewrite_h5(root, "D3", genes=genes)
    message = assert_refused(cohort, tmp_path / "out", "sample 'S_D3'", "D3/filtered")
    assert "sample 'S_D1':" not in message and "3 other sample(s)" in message


# ----------------------------------------------------------------------------- guarded


def _refused_in_child(config: Path, out: Path, *mentions: str) -> str:
    """`assert_refused` in a child process killed after `GUARD_S` seconds (a hang fails)."""
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from corpus import assert_refused;"
        "print(assert_refused(Path(sys.argv[2]), Path(sys.argv[3]), *sys.argv[4:]))"
    )
    args = [sys.executable, "-c", code, str(TESTS), str(config), str(out), *mentions]
    done = subprocess.run(args, capture_output=True, text=True, timeout=GUARD_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_named_pipe_is_refused_unopened(cohort: Path, tmp_path: Path) -> None:
    root = cohort.parent
    os.mkfifo(root / "D2" / "pipe.h5")
    _set_sheet(root, path="D2/pipe.h5")
    message = _refused_in_child(cohort, tmp_path / "out", f"sample '{SAMPLE}'", "D2/pipe.h5")
    assert "named pipe (FIFO)" in message and "samples.csv" in message


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero on this system")
def test_device_is_refused_unopened(cohort: Path, tmp_path: Path) -> None:
    _set_sheet(cohort.parent, path="/dev/zero", format="10x_h5")
    message = _refused_in_child(cohort, tmp_path / "out", f"sample '{SAMPLE}'", "/dev/zero")
    assert "character device" in message


WORKER_RUN = """
import sys
from pathlib import Path

import sccohort.pipeline
from sccohort.cli import app

# the probe is skipped, so that the broken file reaches a worker of the local cluster
sccohort.pipeline.check_inputs = lambda config, samples, tissue=None, slides=None: {}
app(["run", sys.argv[1], "--out", sys.argv[2], "--scheduler", "local"])
"""


def test_worker_error_is_the_same_one_line(cohort: Path, tmp_path: Path) -> None:
    """An error raised on a worker of a local Dask cluster reaches the console as our one
    line: no worker log ("distributed.worker - ERROR - Compute Failed"), no traceback."""
    h5_values(-2, np.int32)(cohort.parent)
    args = [sys.executable, "-c", WORKER_RUN, str(cohort), str(tmp_path / "out")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=GUARD_S)
    text = done.stdout + done.stderr
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert done.returncode == 2, text
    assert len(errors) == 1 and f"sample '{SAMPLE}'" in errors[0] and H5 in errors[0], text
    assert not PYTHON_NOISE.search(text) and "distributed" not in text, text


# ----------------------------------------------------------------------------- controls


def _validates(config: Path) -> None:
    result = invoke("validate", config)
    assert result.exit_code == 0, result.output
    assert "error:" not in result.output


def test_absolute_path_is_valid(cohort: Path) -> None:
    _set_sheet(cohort.parent, path=str((cohort.parent / H5).resolve()))
    _validates(cohort)


def test_path_leaving_the_sheet_folder_is_valid(cohort: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(cohort.parent / H5, elsewhere / "counts.h5")
    _set_sheet(cohort.parent, path="../elsewhere/counts.h5")
    _validates(cohort)


def test_mtx_folder_is_valid(cohort: Path) -> None:
    _to_mtx(cohort.parent)
    _validates(cohort)


def test_h5ad_of_integer_valued_floats_is_valid(cohort: Path) -> None:
    _to_h5ad(cohort.parent)
    _validates(cohort)
