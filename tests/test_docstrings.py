"""The ``Examples`` of every public function run as written (doctest), on tiny inputs.

Each example imports what it uses from the public namespaces; ``np`` and ``pd`` are given.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

NAMESPACES = ("io", "pp", "tl", "stats", "pl")
#: Modules whose examples run too (not namespaces of the API).
EXTRA = ("datasets",)


def _public(extra: bool = False) -> list[tuple[str, object]]:
    items = []
    for name in NAMESPACES + (EXTRA if extra else ()):
        namespace = importlib.import_module(f"sccohort.{name}")
        for attr in namespace.__all__:
            obj = getattr(namespace, attr)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                items.append((f"sccohort.{name}.{attr}", obj))
    return items


def _examples() -> list[tuple[str, doctest.DocTest]]:
    finder = doctest.DocTestFinder(recurse=False)
    found = []
    for name, obj in _public(extra=True):
        for test in finder.find(obj, name, globs={"np": np, "pd": pd}):
            if test.examples:
                found.append((name, test))
    return found


EXAMPLES = _examples()


def test_every_namespace_exports_only_what_exists() -> None:
    for name in NAMESPACES:
        namespace = importlib.import_module(f"sccohort.{name}")
        missing = [a for a in namespace.__all__ if not hasattr(namespace, a)]
        assert not missing, f"sccohort.{name} exports missing names {missing}"


@pytest.mark.parametrize(("name", "test"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_example_runs(name: str, test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    result = runner.run(test, out=lambda text: pytest.fail(text, pytrace=False))
    assert result.attempted > 0 and result.failed == 0


def test_api_page_is_current() -> None:
    script = Path(__file__).resolve().parents[1] / "scripts" / "api_docs.py"
    spec = importlib.util.spec_from_file_location("api_docs", script)
    api_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(api_docs)
    assert api_docs.API.read_text() == api_docs.render(), "run python scripts/api_docs.py"


def test_every_public_function_has_an_example() -> None:
    missing = [n for n, obj in _public() if "Examples\n--------" not in (inspect.getdoc(obj) or "")]
    documented = {name for name, _ in EXAMPLES}
    missing += [name for name, _ in _public() if name not in documented and name not in missing]
    assert not missing, f"no runnable Examples section: {missing}"
