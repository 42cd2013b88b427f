"""The house rules of issue 22, checked on the source: small functions and modules.

A function longer than `MAX_FUNCTION` lines (its docstring not counted) carries a
``# long: <why>`` comment on the line above its ``def`` (or above its decorators); a module
longer than `MAX_MODULE` lines says why in its docstring, in a paragraph starting "Long:".
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sccohort"
MAX_FUNCTION = 80
MAX_MODULE = 600


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[0].end_lineno - body[0].lineno + 1
    return 0


def _long_functions() -> list[str]:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            above = lines[first - 2].strip() if first >= 2 else ""
            if length > MAX_FUNCTION and not above.startswith("# long:"):
                found.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length})")
    return found


def test_functions_are_short_or_say_why() -> None:
    assert not _long_functions(), "\n".join(_long_functions())


def test_modules_are_small_or_say_why() -> None:
    big = {}
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_MODULE and "\nLong:" not in f"\n{doc}":
            big[path.relative_to(SRC).as_posix()] = len(text.splitlines())
    assert not big, f"over {MAX_MODULE} lines without a reason: {big}"


def test_the_checks_see_a_long_function(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION + 1))
    tree = ast.parse(f'def f():\n    """Doc."""\n{body}\n')
    node = tree.body[0]
    assert node.end_lineno - node.lineno + 1 - _docstring_lines(node) == MAX_FUNCTION + 2
