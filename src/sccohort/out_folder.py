"""The output folder of a run: what a run may write there, and what it may remove.

A run writes only the names in `OWNED` and removes only files an earlier run listed as its
own, so a user's files in OUT are never touched; it refuses an OUT it cannot write.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sccohort.checkpoints import checkpoint_stems
from sccohort.errors import InputError
from sccohort.pp.store import RNA_STORE_FILE
from sccohort.stages import Stage

#: Names a run writes inside OUT; nothing else there is ever touched, and of these a run
#: removes only the files an earlier run wrote (`OutFolder`).
OWNED = (
    "run.json", "cohort.h5mu", "tissue.h5mu", "spatial.h5mu", RNA_STORE_FILE, "report.html",
    "checkpoints", "tables", "figures",
)  # fmt: skip


#: Folders of OUT a run writes into: real folders, never symbolic links.
RUN_FOLDERS = ("checkpoints", "tables", "figures")


#: Folders where files no run wrote stop a new run (unless ``overwrite``).
USER_FOLDERS = ("tables", "figures")


#: Temporary files of an interrupted write: `sccohort.io.atomic.atomic_path`
#: (``.<stem>.<pid>.tmp<suffix>``) and `_publish` (``.cohort.h5mu.tmp``).
_TEMPORARY = re.compile(r"^\..+\.(\d+\.tmp(\.[^.]+)?|h5mu\.tmp)$")


#: Files named in a refusal, at most.
_LISTED = 3


@dataclass
class OutFolder:
    """The output folder of a run and the files it owns.

    A run owns only what it wrote: ``run.json`` lists those files (``"files"``, paths
    relative to OUT), and a new run removes only them. Files a run did not write are never
    removed; in ``tables/`` or ``figures/`` they stop a fresh run unless ``overwrite``
    (a run's file of the same name then replaces one). No symbolic link is followed.

    Attributes
    ----------
    path
        OUT (absolute).
    earlier
        The files an earlier run in OUT wrote (its ``run.json``), or ``None`` when it
        recorded none (no run, or one from before this record existed).
    foreign
        Files in OUT that no run wrote when this one started, with their identity: one
        that a stage replaces is this run's.
    """

    path: Path
    earlier: set[str] | None = None
    checkpoints: set[str] = field(default_factory=set)
    foreign: dict[str, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def prepare(
        cls, out: Path, *, stages: Sequence[Stage], resume: bool, overwrite: bool
    ) -> OutFolder:
        """Check OUT, then create it and remove what the earlier run wrote.

        A resumed run (``resume``) keeps the earlier run's files but for what an
        interrupted write left (temporary files).

        Raises
        ------
        InputError
            Before anything is written: OUT is a file or cannot be written, a folder a
            run writes into is a symbolic link or a file, OUT holds run outputs without a
            ``run.json``, or (a fresh run without ``overwrite``) files no run wrote are in
            ``tables/`` or ``figures/``.
        """
        _check_writable(out)
        folder = cls(out, earlier=_earlier_files(out), checkpoints=checkpoint_stems(stages))
        present = folder._files()
        folder.foreign = {
            rel: identity for rel, identity in present.items() if not folder._earlier_run(rel)
        }
        if not overwrite:
            folder._refuse_other_folder()
            if not resume:
                folder._refuse_foreign()
        out.mkdir(parents=True, exist_ok=True)
        folder._remove_earlier(present, temporary_only=resume)
        return folder

    def files(self) -> list[str]:
        """What this run has written so far (and, resumed, what the run before it wrote)."""
        return sorted(
            rel
            for rel, identity in self._files().items()
            if self.foreign.get(rel) != identity and not _TEMPORARY.match(Path(rel).name)
        )

    def _earlier_run(self, rel: str) -> bool:
        """Whether an earlier run wrote ``rel`` (or, without its list, could have)."""
        if _TEMPORARY.match(Path(rel).name):
            return True
        if self.earlier is not None:
            return rel in self.earlier
        if not (self.path / "run.json").is_file():
            return False
        # a run from before run.json listed its files: its fixed names are its own
        return "/" not in rel or rel.startswith("checkpoints/") and self._is_checkpoint(rel)

    def _is_checkpoint(self, rel: str) -> bool:
        stem, _, suffix = Path(rel).name.partition(".")
        return stem in self.checkpoints and suffix in ("json", "h5mu")

    def _files(self) -> dict[str, tuple[int, int]]:
        """Regular files of the names a run owns: relative path -> (inode, mtime)."""
        found: dict[str, tuple[int, int]] = {}
        for name in OWNED:
            top = self.path / name
            if name in RUN_FOLDERS:
                if top.is_dir() and not top.is_symlink():
                    for root, _, names in os.walk(top):
                        for file in names:
                            _add_file(found, self.path, Path(root) / file)
            else:
                _add_file(found, self.path, top)
        return found

    def _refuse_other_folder(self) -> None:
        """Refuse a folder that holds names a run writes but no ``run.json``."""
        if (self.path / "run.json").is_file():
            return
        ours = [name for name in OWNED if (self.path / name).exists()]
        if ours:
            raise InputError(
                f"the output folder holds {', '.join(ours)} but no run.json, so it is not an "
                "sccohort run folder and nothing in it will be overwritten",
                file=self.path,
                hint="Choose an empty or new folder for --out, or pass --overwrite to write "
                "into it anyway (files a run did not write are kept)",
            )

    def _refuse_foreign(self) -> None:
        """Refuse files no run wrote (and links) in ``tables/`` and ``figures/``."""
        mine = sorted(
            rel for rel in self.foreign if rel.split("/", 1)[0] in USER_FOLDERS and "/" in rel
        )
        mine += sorted(_links(self.path))
        if mine:
            listed = ", ".join(mine[:_LISTED]) + (", ..." if len(mine) > _LISTED else "")
            raise InputError(
                f"{len(mine)} file(s) in the output folder were not written by an earlier run "
                f"({listed}); a run never removes them",
                file=self.path,
                hint="Move them elsewhere, choose another --out, or pass --overwrite to run "
                "anyway (they are kept; a run's file of the same name replaces one)",
            )

    def _remove_earlier(self, present: dict[str, tuple[int, int]], temporary_only: bool) -> None:
        """Remove the files an earlier run wrote (regular files only, links untouched).

        ``temporary_only``: only what an interrupted write left (a resumed run keeps the
        rest).
        """
        for rel in present:
            if rel in self.foreign:
                continue
            if not temporary_only or _TEMPORARY.match(Path(rel).name):
                (self.path / rel).unlink()


def _add_file(found: dict[str, tuple[int, int]], out: Path, path: Path) -> None:
    """Note ``path`` in ``found`` when it is a regular file (not a link)."""
    try:
        info = path.lstat()
    except OSError:
        return
    if stat.S_ISREG(info.st_mode):
        found[path.relative_to(out).as_posix()] = (info.st_ino, info.st_mtime_ns)


def _links(out: Path) -> list[str]:
    """Symbolic links (and other non-files) inside the folders a user may write into."""
    found = []
    for name in USER_FOLDERS:
        top = out / name
        if not top.is_dir() or top.is_symlink():
            continue
        for root, dirs, names in os.walk(top):
            for entry in [*dirs, *names]:
                path = Path(root) / entry
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    found.append(path.relative_to(out).as_posix())
    return found


def _earlier_files(out: Path) -> set[str] | None:
    """The files the earlier run in ``out`` listed in its ``run.json``, if it did."""
    try:
        record = json.loads((out / "run.json").read_text())
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str)}


def _check_writable(out: Path) -> None:
    """Raise an :class:`InputError` unless a run can create ``out`` or write into it."""
    hint = "Choose a folder you can write to for --out"
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise InputError(
                "the output path exists and is not a folder", file=out, hint="Choose a folder"
            )
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError("the output folder is not writable", file=out, hint=hint)
    else:
        parent = next(p for p in out.parents if p.exists() or p.is_symlink())
        if not parent.is_dir():
            raise InputError(
                f"the output folder cannot be created: {parent} is a file, not a folder",
                file=out,
                hint=hint,
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(
                f"the output folder cannot be created: {parent} is not writable",
                file=out,
                hint=hint,
            )
        return
    for name in OWNED:
        target = out / name
        if target.is_symlink():
            raise InputError(
                f"'{name}' in the output folder is a symbolic link; a run writes only files "
                "and folders it made, and follows no link",
                file=out,
                hint=f"Remove the link {target}, or choose another --out",
            )
        if name in RUN_FOLDERS and target.exists() and not target.is_dir():
            raise InputError(
                f"'{name}' in the output folder is a file; a run writes a folder there",
                file=out,
                hint=f"Move {target} elsewhere, or choose another --out",
            )
        if name in RUN_FOLDERS and target.is_dir() and not os.access(target, os.W_OK | os.X_OK):
            raise InputError(f"'{name}' in the output folder is not writable", file=out, hint=hint)
