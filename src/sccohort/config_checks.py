"""How a config value is checked: the ranges a key declares, and the TOML coerced into sections.

`setting` declares a key's `Check` s beside its default, `config_section` registers a
section's dataclass, and `_build` turns one TOML table into that dataclass: unknown keys
(with the nearest known one), wrong types and values out of range each become a problem that
names the full key and what it accepts.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sccohort.cohort import (
    raise_all,
)
from sccohort.errors import InputError

#: The registered sections: TOML name -> dataclass (`config_section` adds to it).
SECTIONS: dict[str, type] = {}


#: Characters no config string may hold (they end up in file names, tables and the report).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Check:
    """A condition a config value meets beyond its type, and how a message says it.

    Numeric checks test numbers only (``"auto"`` of an ``int | Literal["auto"]`` key
    passes); `at_least_one` tests lists, `matching` strings.
    """

    accepts: str  # what the value must be: "from 0 to 100"
    test: Callable[[Any], bool]
    wrong: str = "is out of range"  # what a value that fails is


def _number_check(accepts: str, test: Callable[[float], bool]) -> Check:
    def passes(value: Any) -> bool:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return not is_number or test(value)

    return Check(accepts, passes)


def at_least(low: float) -> Check:
    """Numbers ``>= low``."""
    return _number_check(f"at least {low:,}", lambda v: v >= low)


def above(low: float) -> Check:
    """Numbers ``> low``."""
    return _number_check(f"above {low:,}", lambda v: v > low)


def between(low: float, high: float) -> Check:
    """Numbers from ``low`` to ``high``, both included."""
    return _number_check(f"from {low:,} to {high:,}", lambda v: low <= v <= high)


def strictly_between(low: float, high: float) -> Check:
    """Numbers above ``low`` and below ``high``."""
    return _number_check(f"above {low:,} and below {high:,}", lambda v: low < v < high)


def matching(pattern: str, accepts: str) -> Check:
    """Strings that match the regular expression ``pattern`` in full."""
    regex = re.compile(pattern)
    return Check(
        accepts, lambda v: not isinstance(v, str) or bool(regex.fullmatch(v)), "is not accepted"
    )


#: Lists with at least one item.
at_least_one = Check(
    "a list of one item or more", lambda v: not isinstance(v, list) or v, "is empty"
)


#: A share: above 0 and below 1 (a significance level, a fraction of donors).
PROBABILITY = strictly_between(0, 1)


#: A percentage of UMIs: from 0 to 100.
PERCENT = between(0, 100)


#: Where per-sample tasks run (see :mod:`sccohort.cluster`).
SCHEDULER = matching(
    r"auto|local|threads|threading|sync|synchronous|[a-z][a-z0-9+.-]*://\S+|[\w.\-\[\]:]+:\d+",
    "'auto', 'local', 'threads', 'sync' or a Dask scheduler address (tcp://HOST:PORT)",
)


def setting(
    *checks: Check, default: Any = dataclasses.MISSING, factory: Any = None, why: str | None = None
) -> Any:
    """A section's key: the `Check` s its values pass, and its default (or ``factory``).

    Parameters
    ----------
    checks
        What the key accepts beyond its type, e.g. ``between(0, 100)``; :func:`load_config`
        refuses other values, naming the key and what it accepts.
    default
        The study's choice.
    factory
        Makes the default of a list or table key (instead of ``default``).
    why
        Why the range is what it is, where that is not plain (the message's hint).
    """
    metadata = {"checks": checks, "why": why}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def config_section(name: str):
    """Register a dataclass as the schema of the TOML section ``[name]``.

    Parameters
    ----------
    name
        The section's name in the TOML file and the attribute of :class:`Config`.
    """

    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if name in SECTIONS or name == "contrasts":
            raise ValueError(f"config section '{name}' is already defined")
        SECTIONS[name] = cls
        return cls

    return register


def _describe(tp: Any) -> str:  # noqa: PLR0911 - one return per kind of type hint
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "nothing"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is list:
        return f"a list of ({_describe(args[0])})"
    if origin is dict:
        return f"a table of ({_describe(args[1])})"
    if dataclasses.is_dataclass(tp):
        return "a table"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Path: "a path (string)",
    }
    return names.get(tp, getattr(tp, "__name__", str(tp)))


class _Mismatch(Exception):
    """A config value that does not fit its declared type."""


class _Invalid(Exception):
    """A config value of the right type that no key accepts (``nan``, ``""``, a NUL)."""


def _coerce(value: Any, tp: Any, key: str, ctx: _Context) -> Any:  # noqa: C901, PLR0911, PLR0912 - a dispatch on the type hint, one flat branch per TOML type
    """Check ``value`` against the type hint ``tp``; return it converted (paths resolved)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(value, arg, key, ctx)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in args and all(type(value) is type(a) for a in args if a == value):
            return value
        raise _Mismatch
    if origin is list:
        if not isinstance(value, list):
            raise _Mismatch
        items = [_coerce(v, args[0], key, ctx) for v in value]
        repeated = [v for i, v in enumerate(items) if v in items[:i]]
        if repeated:
            raise _Invalid(f"the list names {repeated[0]!r} twice")
        return items
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        for name in value:
            _check_text(name, "a name")
        return {k: _checked(v, args[1], f"{key}.{k}", ctx) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, key, ctx)
    if tp is type(None):
        raise _Mismatch  # TOML has no null; None only ever comes from a default
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is float:
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _Mismatch
        if not math.isfinite(value):
            raise _Invalid(f"{value!r} is not a finite number")
        return float(value)
    if tp is str:
        if isinstance(value, str):
            return _check_text(value, "a string")
        raise _Mismatch
    if tp is Path:
        if isinstance(value, str) and value:
            _check_text(value, "a path")
            p = Path(value).expanduser()
            return Path(os.path.abspath(p if p.is_absolute() else ctx.base / p))
        raise _Mismatch
    raise TypeError(f"config type {tp!r} of key '{key}' is not supported")  # a schema bug


def _check_text(text: str, what: str) -> str:
    """``text`` when it is not empty and holds no control character; else `_Invalid`."""
    if not text:
        raise _Invalid(f"expected {what}, got an empty one")
    bad = _CONTROL.search(text)
    if bad:
        raise _Invalid(
            f"{text!r} holds the control character {bad.group()!r}; {what} may not hold one"
        )
    return text


def _checked(value: Any, tp: Any, key: str, ctx: _Context) -> Any:
    """:func:`_coerce`, raising an :class:`InputError` that names the key on a mismatch."""
    try:
        return _coerce(value, tp, key, ctx)
    except _Mismatch:
        raise InputError(
            f"expected {_describe(tp)}, got {type(value).__name__} {value!r}",
            file=ctx.path,
            key=key,
        ) from None
    except _Invalid as exc:
        raise InputError(str(exc), file=ctx.path, key=key) from None


def _check_range(value: Any, declared: Mapping[str, Any], key: str, ctx: _Context) -> None:
    """Raise an :class:`InputError` naming ``key`` when ``value`` fails a declared `Check`.

    ``declared``: the field's metadata (see `setting`).
    """
    for check in declared.get("checks", ()):
        if not check.test(value):
            raise InputError(
                f"{value!r} {check.wrong}: it must be {check.accepts}",
                file=ctx.path,
                key=key,
                hint=declared.get("why"),
            )


@dataclass
class _Context:
    path: Path
    base: Path


def _build(cls: type, raw: dict, prefix: str, ctx: _Context, **given: Any) -> Any:
    """Instantiate the dataclass ``cls`` from a TOML table, checking keys and types."""
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.init and f.name not in given]
    valid = [f.name for f in fields]
    problems: list[InputError] = []
    for key in raw:
        if key not in valid:
            close = [v for v in valid if _similar(key, v)]
            problems.append(
                InputError(
                    f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                    file=ctx.path,
                    key=f"{prefix}.{key}",
                    hint=f"Valid keys of [{prefix}]: {', '.join(valid)}",
                )
            )
    kwargs: dict[str, Any] = dict(given)
    for f in fields:
        key = f"{prefix}.{f.name}"
        if f.name in raw:
            try:
                kwargs[f.name] = _checked(raw[f.name], hints[f.name], key, ctx)
                _check_range(kwargs[f.name], f.metadata, key, ctx)
            except InputError as exc:
                problems.extend(getattr(exc, "problems", [exc]))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(
                InputError(
                    f"missing required key '{f.name}' ({_describe(hints[f.name])})",
                    file=ctx.path,
                    key=key,
                    hint=f"Add it to [{prefix}]",
                )
            )
    raise_all(problems, f"[{prefix}]")
    built = cls(**kwargs)
    relations = getattr(built, "relations", None)
    if relations is not None:
        raise_all(
            [
                InputError(problem, file=ctx.path, key=f"{prefix}.{name}")
                for name, problem in relations()
            ],
            f"[{prefix}]",
        )
    return built


def _similar(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.75


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InputError("config file not found", file=path, hint="Check the path")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("the config is not UTF-8 text", file=path) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        match = re.search(r"\(at line (\d+), column (\d+)\)", message)
        row = int(match.group(1)) if match else None
        problem = re.sub(r"\s*\(at [^)]*\)\s*$", "", message)
        if match:
            problem += f" (column {match.group(2)})"
        raise InputError(
            f"TOML syntax error: {problem}",
            file=path,
            row=row,
            hint="See https://toml.io; strings need quotes, tables need [brackets]",
        ) from None
