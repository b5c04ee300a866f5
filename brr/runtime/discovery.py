"""The recordings of a run: files, folders and globs in, one job per recording out, with its output name
and the reference annotation to score it against."""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from brr.data import recording_files
from brr.data.annotations import SeizureEvent, read_csv_bi, read_events_tsv
from brr.data.recording import RECORDING_SUFFIXES
from brr.runtime.settings import InferenceUsageError


@dataclass(frozen=True)
class RecordingJob:
    """One input recording: its path, its output name (relative, no suffix) and reference annotation."""

    path: str
    name: str
    reference: str | None = None


def find_recordings(inputs: Sequence[str | os.PathLike], reference_dir: str | os.PathLike | None = None
                    ) -> list[RecordingJob]:
    """Files (any suffix: a bad one is reported, not dropped), directories (recursive .edf/.bdf) and globs.

    Recordings found under a directory keep their relative path as output name, so equal file names
    in different sub-folders do not collide; a remaining collision is a usage error. A directory entry
    named like a recording that is not a file (a broken link, a pipe) is a job too, so that it is
    reported as failed rather than silently left out; a folder named ``x.edf`` is searched. Jobs keep
    the path as found (links are resolved only to find duplicates). With
    ``reference_dir``, each job gets ``<reference_dir>/<name>.csv_bi`` or ``<name>_events.tsv``
    (relative name first, then the bare file name) when one exists.
    """
    found: dict[Path, tuple[str, Path]] = {}  # resolved path -> (output name, path as found)

    def add(path: Path, name: str) -> None:
        found.setdefault(path.resolve(), (name, path.absolute()))

    def add_tree(root: Path) -> None:
        for path in recording_files(root):
            add(path, path.relative_to(root).with_suffix("").as_posix())

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            add_tree(path)
        elif path.is_file():
            add(path, path.stem)
        elif glob.has_magic(str(item)):
            matches = sorted(Path(m) for m in glob.glob(str(item), recursive=True))
            if not matches:
                raise InferenceUsageError(f"{item}: the pattern matches nothing")
            for match in matches:
                if match.is_dir():
                    add_tree(match)
                elif match.suffix.lower() in RECORDING_SUFFIXES:
                    add(match, match.stem)
        else:
            raise InferenceUsageError(f"{item}: no such file or directory")
    if not found:
        raise InferenceUsageError(f"no .edf/.bdf recordings found in {[os.fspath(i) for i in inputs]}")

    by_name: dict[str, list[Path]] = {}
    for name, path in found.values():
        by_name.setdefault(name, []).append(path)
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        detail = "; ".join(f"{name}: {', '.join(map(str, paths))}" for name, paths in sorted(clashes.items()))
        raise InferenceUsageError(f"recordings with the same output name (pass their folder instead): {detail}")

    if reference_dir is not None and not Path(reference_dir).is_dir():
        raise InferenceUsageError(f"reference folder {reference_dir} does not exist")
    return [
        RecordingJob(str(path), name, find_reference(reference_dir, name))
        for name, (path,) in sorted(by_name.items())
    ]


def find_reference(reference_dir: str | os.PathLike | None, name: str) -> str | None:
    if reference_dir is None:
        return None
    for stem in dict.fromkeys((name, Path(name).name)):
        for suffix in (".csv_bi", "_events.tsv"):
            candidate = Path(reference_dir) / f"{stem}{suffix}"
            if candidate.is_file():
                return str(candidate)
    return None


def read_reference(path: str) -> list[SeizureEvent]:
    return read_csv_bi(path) if path.endswith(".csv_bi") else read_events_tsv(path)
