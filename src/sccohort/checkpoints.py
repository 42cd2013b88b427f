"""Checkpoints of a run: written after each stage, re-validated on resume, published at the end.

A checkpoint (``checkpoints/<n>_<stage>.json`` and, when the stage changed the cohort,
``<n>_<stage>.h5mu``) records the config fingerprint, the inputs' checksums and every output
file with its checksum; resume starts after the last one that still matches.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sccohort.cohort import SampleSheet
from sccohort.config import Config
from sccohort.io.atomic import write_json
from sccohort.io.cohort_file import COHORT_FILE, write_cohort
from sccohort.stages import RunState, Stage


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def input_checksums(config: Config, samples: SampleSheet) -> dict[str, str]:
    """SHA-256 of the config, both tables, each sample's files and other files it names."""
    files: list[Path] = [config.path, config.samples]
    if config.clinical is not None:
        files.append(config.clinical)
    for extra in (
        config.annotation.reference,
        config.characterise.gene_sets,
        config.characterise.tf_targets,
    ):
        if extra is not None:
            files.append(extra)
    for column in ("path", "raw_path"):
        if column not in samples.table:
            continue
        for value in samples.table[column].dropna():
            path = Path(value)
            files.extend(
                sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
            )
    return {str(p): sha256_file(p) for p in files if p.is_file()}


def _fingerprint(config: Config, checksums: dict[str, str]) -> str:
    text = json.dumps(
        {"config": config.to_dict(), "inputs": checksums}, sort_keys=True, default=str
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _checkpoint_name(index: int, stage: Stage) -> str:
    """``<n>_<stage>``: the stem of a stage's checkpoint files (``n`` from 1)."""
    return f"{index + 1:02d}_{stage.name}"


def _resumable_checkpoints(
    out: Path, stages: Sequence[Stage], fingerprint: str
) -> list[dict[str, Any]]:
    """Checkpoints of the leading stages that a resumed run can take as done.

    A run restarts from the last good checkpoint that saved the cohort; good checkpoints
    right after it are kept while their stages did not change the cohort.
    """
    good = _good_checkpoints(out, stages, fingerprint)
    restore = max((i for i, record in enumerate(good) if record.get("cohort")), default=-1)
    keep = restore + 1
    while keep < len(good) and not stages[keep].changes_cohort:
        keep += 1
    return good[:keep]


def _good_checkpoints(out: Path, stages: Sequence[Stage], fingerprint: str) -> list[dict[str, Any]]:
    """Checkpoints of the leading stages that are complete and match this run."""
    good: list[dict[str, Any]] = []
    for index, stage in enumerate(stages):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.json"
        if not path.is_file():
            break
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            break
        if record.get("fingerprint") != fingerprint:
            break
        files = dict(record.get("outputs", {}))
        if record.get("cohort"):
            files[record["cohort"]] = record["cohort_sha256"]
        if not all(
            (out / rel).is_file() and sha256_file(out / rel) == digest
            for rel, digest in files.items()
        ):
            break
        good.append(record)
    return good


def _drop_checkpoints_after(out: Path, stages: Sequence[Stage], n_good: int) -> None:
    """Remove the checkpoints of stages after the first ``n_good``: never trusted later."""
    folder = out / "checkpoints"
    if not folder.is_dir():
        return
    for index, stage in enumerate(stages):
        if index < n_good:
            continue
        for suffix in (".json", ".h5mu"):
            path = folder / f"{_checkpoint_name(index, stage)}{suffix}"
            if path.is_file() and not path.is_symlink():
                path.unlink()


def _write_checkpoint(
    state: RunState,
    stages: Sequence[Stage],
    index: int,
    written: list[Path],
    fingerprint: str,
    timing: dict[str, Any],
) -> None:
    stage = stages[index]
    name = _checkpoint_name(index, stage)
    out = state.out
    entry: dict[str, Any] = {
        "stage": stage.name,
        "fingerprint": fingerprint,
        "timing": timing,
        "outputs": {str(p.relative_to(out)): sha256_file(p) for p in written},
        "cohort": None,
        # what the stages so far resolved from the data and could not run: a resumed run
        # starts from them
        "resolved": state.resolved,
        "skipped": state.skipped,
    }
    last_change = max(i for i, s in enumerate(stages) if s.changes_cohort)
    if stage.saves_cohort or index == last_change:  # the final object is always saved
        rel = f"checkpoints/{name}.h5mu"
        write_cohort(state.mdata, out / rel, final=index == last_change)
        entry.update(cohort=rel, cohort_sha256=sha256_file(out / rel))
    write_json(entry, out / "checkpoints" / f"{name}.json")


def _finish_checkpoints(out: Path, stages: Sequence[Stage], *, keep: bool) -> None:
    """Publish the last cohort object as ``OUT/cohort.h5mu``; unless ``keep``, drop the rest.

    Without ``keep`` the last checkpoint's record is pointed at ``cohort.h5mu`` (so a
    resumed run still starts after it), earlier ones lose their cohort, and every
    ``checkpoints/*.h5mu`` is removed. Each step leaves records that name existing files.
    """
    records = _checkpoint_records(out, stages)
    saved = [(path, r) for path, r in records if r.get("cohort")]
    if not saved:
        return
    last_path, last = saved[-1]
    if last["cohort"] != COHORT_FILE:
        _publish(out / last["cohort"], out / COHORT_FILE)
    if keep:
        return
    if last["cohort"] != COHORT_FILE:
        write_json({**last, "cohort": COHORT_FILE}, last_path)
    for path, entry in saved[:-1]:
        write_json({**entry, "cohort": None, "cohort_sha256": None}, path)
    for index, stage in enumerate(stages):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.h5mu"
        if path.is_file() and not path.is_symlink():
            path.unlink()


def checkpoint_stems(stages: Sequence[Stage]) -> set[str]:
    """The stems of the checkpoint files a run of ``stages`` may write."""
    return {_checkpoint_name(i, s) for i, s in enumerate(stages)}


def _checkpoint_records(out: Path, stages: Sequence[Stage]) -> list[tuple[Path, dict[str, Any]]]:
    """``(path, record)`` of this run's checkpoints, in stage order."""
    found = []
    for index, stage in enumerate(stages):
        path = out / "checkpoints" / f"{_checkpoint_name(index, stage)}.json"
        if path.is_file():
            found.append((path, json.loads(path.read_text())))
    return found


def _publish(source: Path, target: Path) -> None:
    """Make ``source`` available as ``target`` (a hard link, else a copy), atomically."""
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copy2(source, tmp)
    os.replace(tmp, target)
