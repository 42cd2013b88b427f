"""List the licence of every runtime dependency of sccohort; fail on GPL / AGPL.

sccohort is BSD-3-Clause, so nothing it needs at run time may be GPL or AGPL (LGPL is
allowed, and listed). The tree starts at the ``[project] dependencies`` of ``pyproject.toml``
(not at the installed metadata of sccohort, which can be older than the file) and follows
each installed distribution's requirements (``importlib.metadata``), with the extras asked
for (``dask[distributed]``) and only the markers that hold here; optional extras
(``[test]``, ``[bench]``) and packages merely installed alongside are not part of it.

A distribution's licence is read, in this order, from its ``License-Expression`` (SPDX; ``OR``
takes the most permissive alternative, ``AND`` the least, ``WITH`` a linking exception such
as GCC-exception-3.1 lifts GPL), its ``License ::`` classifiers (several: alternatives),
a short ``License`` field, or ``VERIFIED`` below (read from the package's own files where its
metadata say nothing usable). A dependency that is not installed or whose licence cannot be
told is an error too.

``KNOWN_GPL`` lists GPL dependencies found by this check that are not replaced yet: they are
printed as such and fail only with ``--strict``, so that the check fails on any new one.
Remove an entry once the dependency is gone (the test fails on an entry that is no longer a
GPL dependency).

Usage::

    python scripts/check_licences.py [--strict] [--pyproject PATH]

Exit status: 0 clean, 1 a GPL / AGPL dependency (or an unknown licence, or a missing
distribution).
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]

#: Licences verified from the package's files, for metadata that do not say (name: (licence,
#: where it was read)).
VERIFIED: dict[str, tuple[str, str]] = {
    # License field is the whole licence text, no classifier, no License-Expression
    "scverse-misc": ("BSD-3-Clause", "scverse_misc-0.0.3.dist-info/licenses/LICENSE"),
}

#: GPL runtime dependencies known on 2026-12-04, awaiting a decision (replace or accept).
KNOWN_GPL: dict[str, str] = {}

#: Exceptions that allow linking GPL code from non-GPL programs.
LINKING_EXCEPTIONS = ("GCC-EXCEPTION", "CLASSPATH-EXCEPTION", "LLVM-EXCEPTION")
RANK = {"ok": 0, "lgpl": 1, "gpl": 2, "unknown": 3}


def spdx_category(expression: str) -> str:
    """'ok', 'lgpl' or 'gpl' for an SPDX licence expression."""
    tokens = re.findall(r"\(|\)|[^\s()]+", expression)
    pos = 0

    def atom() -> str:
        nonlocal pos
        if tokens[pos] == "(":
            pos += 1
            cat = either()
            pos += 1  # ")"
            return cat
        ident = tokens[pos].upper()
        pos += 1
        if pos < len(tokens) and tokens[pos].upper() == "WITH":
            exception = tokens[pos + 1].upper()
            pos += 2
            if exception.startswith(LINKING_EXCEPTIONS):
                return "ok"
        if ident.startswith("LGPL"):
            return "lgpl"
        return "gpl" if ident.startswith(("GPL", "AGPL")) else "ok"

    def both() -> str:
        nonlocal pos
        cats = [atom()]
        while pos < len(tokens) and tokens[pos].upper() == "AND":
            pos += 1
            cats.append(atom())
        return max(cats, key=RANK.get)

    def either() -> str:
        nonlocal pos
        cats = [both()]
        while pos < len(tokens) and tokens[pos].upper() == "OR":
            pos += 1
            cats.append(both())
        return min(cats, key=RANK.get)

    return either()


def text_category(text: str) -> str:
    """'ok', 'lgpl' or 'gpl' for a licence name in words (a classifier, a License field)."""
    lesser = re.compile(r"lesser general public|library general public|\bLGPL", re.I)
    rest = lesser.sub("", text)
    if re.search(r"general public licen[cs]e|\bA?GPL", rest, re.I):
        return "gpl"
    return "lgpl" if lesser.search(text) else "ok"


def licence_of(dist: metadata.Distribution) -> tuple[str, str, str]:
    """(licence, source, category) of an installed distribution."""
    md = dist.metadata
    name = canonicalize_name(md["Name"])
    if md.get("License-Expression"):
        expr = md["License-Expression"]
        return expr, "License-Expression", spdx_category(expr)
    classifiers = [c for c in md.get_all("Classifier") or [] if c.startswith("License ::")]
    specific = [c.split(" :: ")[-1] for c in classifiers if c != "License :: OSI Approved"]
    if specific:
        cat = min((text_category(c) for c in specific), key=RANK.get)
        return " | ".join(specific), "classifiers", cat
    field = (md.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= 80:
        return field, "License", text_category(field)
    if name in VERIFIED:
        lic, where = VERIFIED[name]
        return lic, f"verified ({where})", text_category(lic)
    return "?", "none", "unknown"


def runtime_tree(pyproject: Path) -> tuple[dict[str, set[str]], list[str]]:
    """Distributions sccohort needs at run time (name -> extras asked for), and missing ones."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    wanted: dict[str, set[str]] = {}
    missing: list[str] = []
    todo = [Requirement(d) for d in deps]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        if name in wanted and set(req.extras) <= wanted[name]:
            continue
        wanted[name] = wanted.get(name, set()) | set(req.extras)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        for line in dist.requires or []:
            sub = Requirement(line)
            extras = wanted[name] or {""}
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in extras):
                todo.append(Requirement(str(sub).split(";")[0]))
    return wanted, sorted(set(missing))


def check(pyproject: Path, strict: bool = False) -> tuple[list[dict], list[str]]:
    """One row per runtime dependency, and the problems found (empty: clean)."""
    wanted, missing = runtime_tree(pyproject)
    rows, problems = [], [f"{name}: not installed, licence unknown" for name in missing]
    for name in sorted(set(wanted) - set(missing)):
        dist = metadata.distribution(name)
        lic, source, cat = licence_of(dist)
        rows.append(
            {"name": name, "version": dist.version, "licence": lic, "source": source,
             "category": cat}
        )  # fmt: skip
        if cat == "unknown":
            problems.append(f"{name}: no licence in its metadata; verify it and add to VERIFIED")
        elif cat == "gpl" and (strict or name not in KNOWN_GPL):
            problems.append(f"{name}: {lic} is GPL/AGPL, not allowed in a BSD-3-Clause package")
    return rows, problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--strict", action="store_true", help="fail on KNOWN_GPL entries too")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    args = parser.parse_args()
    rows, problems = check(args.pyproject, args.strict)
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = {"gpl": "GPL", "lgpl": "LGPL", "unknown": "???"}.get(r["category"], "")
        if r["category"] == "gpl" and r["name"] in KNOWN_GPL:
            flag = f"GPL, known: {KNOWN_GPL[r['name']]}"
        print(f"{r['name']:<{width}}  {r['version']:<12} {r['licence'][:60]:<60}  {flag}")
    print(f"\n{len(rows)} runtime distributions from {args.pyproject.name}")
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
