"""The recordings of a run: files, folders and globs in, one job per recording out, with its output name
and the reference annotation to score it against.

Output names: a recording found under a folder keeps its path relative to that folder (without its
suffix), any other its file name without suffix. A BIDS name (entities ``key-value`` joined by ``_``,
``sub`` among them, ending in the ``_eeg`` suffix, e.g. ``sub-01_ses-01_task-szMonitoring_run-00_eeg``)
loses that suffix, so that its events file is the BIDS (and SzCORE) ``<entities>_events.tsv``: a BIDS
folder ``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00_eeg.edf`` gives the output name
``sub-01/ses-01/eeg/sub-01_ses-01_task-szMonitoring_run-00``, and the output folder mirrors the BIDS
tree the way SzCORE's scorer looks hypotheses up (the reference's path relative to its root). Other
names are kept as they are.

References (``--reference DIR``): ``DIR`` is listed once (:class:`ReferenceIndex`). A BIDS recording
matches the ``<entities>_events.tsv`` with the same entities (in any order) wherever it is under
``DIR`` (one in the recording's own relative folder first). Then, and for every other recording,
``DIR/<name>.csv_bi`` or ``DIR/<name>_events.tsv``, with the relative name first, then the bare file
name (for a BIDS recording also its file name with ``_eeg``, as ``brr-synth`` writes its ``csv_bi``
beside the EDF). Recordings left without a reference are logged as a warning (how many, which).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from brr.data import recording_files
from brr.data.annotations import SeizureEvent, read_csv_bi, read_events_tsv
from brr.data.recording import RECORDING_SUFFIXES
from brr.runtime.settings import InferenceUsageError

log = logging.getLogger(__name__)

BIDS_RECORDING_SUFFIX = "eeg"
BIDS_EVENTS_SUFFIX = "events"
REFERENCE_SUFFIXES = (".csv_bi", "_events.tsv")
# How many names of recordings without a reference the warning lists.
MISSING_NAMES_SHOWN = 5
_ENTITY = re.compile(r"([A-Za-z0-9]+)-([A-Za-z0-9]+)")


@dataclass(frozen=True)
class RecordingJob:
    """One input recording: its path, its output name (relative, no suffix) and reference annotation."""

    path: str
    name: str
    reference: str | None = None


def bids_entities(stem: str, suffix: str = BIDS_RECORDING_SUFFIX) -> frozenset[tuple[str, str]] | None:
    """The BIDS entities of a file stem ``key-value_..._<suffix>`` as a set of ``(key, value)``, or None when
    ``stem`` is not such a name (a part that is not ``key-value``, a key given twice, no ``sub``)."""
    parts = stem.split("_")
    if len(parts) < 2 or parts[-1] != suffix:
        return None
    entities = []
    for part in parts[:-1]:
        match = _ENTITY.fullmatch(part)
        if match is None:
            return None
        entities.append((match[1], match[2]))
    keys = [key for key, _ in entities]
    if len(set(keys)) != len(keys) or "sub" not in keys:
        return None
    return frozenset(entities)


def output_name(name: str) -> str:
    """The output name of a recording named ``name`` (relative, no suffix): a BIDS ``<entities>_eeg`` file
    name loses its ``_eeg`` suffix, any other is kept."""
    path = PurePosixPath(name)
    if bids_entities(path.name) is None:
        return name
    return path.with_name(path.name[: -len(BIDS_RECORDING_SUFFIX) - 1]).as_posix()


class ReferenceIndex:
    """The reference annotations under ``root``, listed once: ``*.csv_bi`` and ``*_events.tsv`` files by
    their relative path, and BIDS ``<entities>_events.tsv`` files by their entities."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.files: set[str] = set()
        self.bids: dict[frozenset[tuple[str, str]], list[str]] = {}
        for path in sorted(self.root.rglob("*")):
            if not path.name.endswith(REFERENCE_SUFFIXES) or not path.is_file():
                continue
            relative = path.relative_to(self.root).as_posix()
            self.files.add(relative)
            if path.name.endswith(".tsv"):
                entities = bids_entities(path.name[: -len(".tsv")], BIDS_EVENTS_SUFFIX)
                if entities is not None:
                    self.bids.setdefault(entities, []).append(relative)

    def find(self, name: str, source_name: str | None = None) -> str | None:
        """The reference of the recording with output name ``name`` (its name before :func:`output_name`:
        ``source_name``), or None."""
        source_name = source_name or name
        entities = bids_entities(PurePosixPath(source_name).name)
        if entities is not None and entities in self.bids:
            candidates = self.bids[entities]
            own = f"{name}_events.tsv"
            if own in candidates:
                return str(self.root / own)
            if len(candidates) > 1:
                log.warning("%d reference annotations in %s have the BIDS entities of %s: %s; scoring against "
                            "the first", len(candidates), self.root, name, ", ".join(candidates))
            return str(self.root / candidates[0])
        stems = (name, source_name, PurePosixPath(name).name, PurePosixPath(source_name).name)
        for stem in dict.fromkeys(stems):
            for suffix in REFERENCE_SUFFIXES:
                if f"{stem}{suffix}" in self.files:
                    return str(self.root / f"{stem}{suffix}")
        return None


def find_recordings(inputs: Sequence[str | os.PathLike], reference_dir: str | os.PathLike | None = None
                    ) -> list[RecordingJob]:
    """Files (any suffix: a bad one is reported, not dropped), directories (recursive .edf/.bdf) and globs.

    Recordings found under a directory keep their relative path as output name, so equal file names
    in different sub-folders do not collide; a BIDS ``_eeg`` name loses that suffix (see the module
    docstring); a remaining collision is a usage error. A directory entry named like a recording that
    is not a file (a broken link, a pipe) is a job too, so that it is reported as failed rather than
    silently left out; a folder named ``x.edf`` is searched. Jobs keep the path as found (links are
    resolved only to find duplicates). With ``reference_dir``, each job gets its reference annotation
    when one is found there (:class:`ReferenceIndex`); those without are logged as a warning.
    """
    found: dict[Path, tuple[str, Path]] = {}  # resolved path -> (name before output_name, path as found)

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

    by_name: dict[str, list[tuple[str, Path]]] = {}
    for source_name, path in found.values():
        by_name.setdefault(output_name(source_name), []).append((source_name, path))
    clashes = {name: same for name, same in by_name.items() if len(same) > 1}
    if clashes:
        detail = "; ".join(f"{name}: {', '.join(str(path) for _, path in same)}"
                           for name, same in sorted(clashes.items()))
        raise InferenceUsageError(f"recordings with the same output name (pass their folder instead): {detail}")

    if reference_dir is None:
        return [RecordingJob(str(path), name) for name, ((_, path),) in sorted(by_name.items())]
    if not Path(reference_dir).is_dir():
        raise InferenceUsageError(f"reference folder {reference_dir} does not exist")
    index = ReferenceIndex(reference_dir)
    jobs = [RecordingJob(str(path), name, index.find(name, source_name))
            for name, ((source_name, path),) in sorted(by_name.items())]
    warn_missing_references(jobs, reference_dir)
    return jobs


def warn_missing_references(jobs: Sequence[RecordingJob], reference_dir: str | os.PathLike) -> None:
    """Log a warning naming the recordings that got no reference annotation in ``reference_dir``."""
    missing = [job.name for job in jobs if job.reference is None]
    if not missing:
        return
    shown = ", ".join(missing[:MISSING_NAMES_SHOWN]) + (", ..." if len(missing) > MISSING_NAMES_SHOWN else "")
    looked_for = ("<name>.csv_bi or <name>_events.tsv, and for BIDS names <entities>_events.tsv anywhere "
                  "under it")
    if len(missing) == len(jobs):
        log.warning("no recording has a reference annotation in %s (looked for %s): nothing will be scored; "
                    "recordings: %s", reference_dir, looked_for, shown)
    else:
        log.warning("%d of %d recordings have no reference annotation in %s (looked for %s) and will not be "
                    "scored: %s", len(missing), len(jobs), reference_dir, looked_for, shown)


def read_reference(path: str) -> list[SeizureEvent]:
    return read_csv_bi(path) if path.endswith(".csv_bi") else read_events_tsv(path)
