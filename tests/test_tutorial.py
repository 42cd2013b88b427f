"""docs/tutorial_api.md runs as written and reproduces the demo's findings (issue 22).

Its ``bash`` blocks run as commands and its ``python`` blocks run in order in one namespace,
in a scratch folder; the tutorial's own asserts check the findings. Every ``sccohort`` name
it uses must be exported by one of the five public namespaces.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial_api.md"
NAMESPACES = ("io", "pl", "pp", "stats", "tl")


def _blocks(text: str) -> list[tuple[str, str]]:
    return re.findall(r"```(bash|python)\n(.*?)```", text, flags=re.S)


def test_tutorial_uses_only_exported_names() -> None:
    code = "\n".join(body for kind, body in _blocks(TUTORIAL.read_text()) if kind == "python")
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sccohort"):
            assert node.module == "sccohort", f"imports from {node.module}"
            assert {a.name for a in node.names} <= set(NAMESPACES)
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in NAMESPACES
        ):
            namespace = importlib.import_module(f"sccohort.{node.value.id}")
            assert node.attr in namespace.__all__, f"{node.value.id}.{node.attr} is not exported"


@pytest.mark.filterwarnings("ignore")
def test_tutorial_runs_and_finds_the_demo_associations(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "tutorial"}
    for kind, body in _blocks(TUTORIAL.read_text()):
        if kind == "bash":
            for line in filter(None, map(str.strip, body.splitlines())):
                args = shlex.split(line)
                assert args[0] == "sccohort"
                env = os.environ | {"COLUMNS": "200"}
                done = subprocess.run(
                    [sys.executable, "-m", "sccohort", *args[1:]],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                assert done.returncode == 0, done.stdout + done.stderr
        else:
            exec(compile(body, str(TUTORIAL), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "sccohort-demo" / "gating_CD14_EGR1.png").is_file()
