"""Licences of the runtime dependencies (scripts/check_licences.py): no GPL / AGPL."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_licences.py"


@pytest.fixture(scope="module")
def lic():
    spec = importlib.util.spec_from_file_location("check_licences", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_runtime_tree_has_no_new_gpl():
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr
    assert "runtime distributions from pyproject.toml" in done.stdout
    assert "???" not in done.stdout


def test_tree_follows_pyproject_not_the_environment(lic):
    wanted, missing = lic.runtime_tree(ROOT / "pyproject.toml")
    assert not missing
    assert {"numpy", "scipy", "distributed", "numba"} <= set(wanted)  # distributed: dask[...]
    assert "edgepython" not in wanted  # installed here, but no longer a dependency
    assert "pytest" not in wanted  # the [test] extra is not runtime
    rows, problems = lic.check(ROOT / "pyproject.toml")
    assert not problems
    assert all(r["category"] != "unknown" for r in rows)


def test_known_gpl_entries_are_still_gpl_dependencies(lic):
    """An entry whose package was replaced (or is no longer GPL) must leave KNOWN_GPL."""
    rows, _ = lic.check(ROOT / "pyproject.toml")
    gpl = {r["name"] for r in rows if r["category"] == "gpl"}
    assert set(lic.KNOWN_GPL) == gpl
    _, strict = lic.check(ROOT / "pyproject.toml", strict=True)
    assert len(strict) == len(gpl)


def test_a_gpl_dependency_fails(lic, tmp_path):
    pytest.importorskip("edgepython")
    assert metadata.distribution("edgepython").metadata["License-Expression"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["edgepython", "numpy"]\n')
    _, problems = lic.check(pyproject)
    assert any(p.startswith("edgepython: GPL-3.0-or-later") for p in problems)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--pyproject", str(pyproject)],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "edgepython" in done.stderr


@pytest.mark.parametrize(
    ("expression", "category"),
    [
        ("MIT", "ok"),
        ("GPL-3.0-or-later", "gpl"),
        ("AGPL-3.0-only", "gpl"),
        ("LGPL-2.1-or-later", "lgpl"),
        ("MIT OR GPL-2.0-only", "ok"),
        ("BSD-3-Clause AND GPL-2.0-only", "gpl"),
        ("BSD-3-Clause AND (LGPL-3.0-only OR MIT)", "ok"),
        ("BSD-3-Clause AND LGPL-3.0-only", "lgpl"),
        ("GPL-3.0-or-later WITH GCC-exception-3.1", "ok"),
        ("Apache-2.0 WITH LLVM-exception", "ok"),
    ],
)
def test_spdx_expressions(lic, expression, category):
    assert lic.spdx_category(expression) == category


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("BSD License", "ok"),
        ("GNU General Public License (GPL)", "gpl"),
        ("GNU Affero General Public License v3", "gpl"),
        ("GNU Lesser General Public License v3 (LGPLv3)", "lgpl"),
        ("GNU Library or Lesser General Public License (LGPL)", "lgpl"),
        ("GPLv3", "gpl"),
    ],
)
def test_licence_names(lic, text, category):
    assert lic.text_category(text) == category
