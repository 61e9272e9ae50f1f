"""The files are the truth: before a run plans anything, the done periods whose partition
file is gone or changed are taken back, so the run fetches them again.

Every file a run writes leaves a fingerprint in the state (:class:`exporter.state.Fingerprint`:
size, and locally the mtime, inode and ctime (:func:`exporter.storage.local_stamp`), or the
ETag on object storage). :func:`check_files` lists
the files the fingerprints name (one ``os.scandir`` per directory locally; one listing per
series kind on object storage) and compares:

* a file that is not there: its partition's periods are taken back (``missing``);
* a file of another size or stamp (truncated, replaced, edited), or no regular file any more
  (a directory, a link): it is moved aside to
  ``.braze-export/displaced/{run_id}/`` (a rerun never merges into a file it did not write)
  and its partition's periods are taken back (``changed``);
* an object whose stamp the store did not give when it was written: the listing's is adopted;
* a file whose landing began (its fingerprint noted just before the rename or PUT) but was
  never heard of as done, the run killed in between: it is ours, and adopted.

A state written by a version without fingerprints is checked once from its done periods: a
partition file that is there is adopted as it is, one that is not is taken back. The run's
summary and manifest say how many files were missing or changed and how many of their
periods this run fetched again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from exporter.errors import ExporterError
from exporter.formats import decode
from exporter.manifest import is_manifest
from exporter.plan import series_of_key, shard_of
from exporter.remote import ObjectStore
from exporter.state import Fingerprint, State
from exporter.storage import JOURNAL_SUFFIX, RUNS_DIR, WORK_DIR, local_stamp, same_stamp
from exporter.writers import partition_path, partitions

__all__ = [
    "DISPLACED",
    "FileCheck",
    "Files",
    "LocalFiles",
    "Ownership",
    "StoreFiles",
    "Unfingerprinted",
    "check_files",
    "compare",
    "find_unfingerprinted",
    "would_take_back",
]

DISPLACED = f"{WORK_DIR}/displaced"
NOT_A_FILE = -2  # the size a listing gives what is there but no regular file
EXAMPLES = 10  # paths named in the log; the manifest lists them all

log = logging.getLogger(__name__)

_Seen = Mapping[str, tuple[int, str]]  # file name -> (size, stamp)


class Files(Protocol):
    """Where the partition files are, as the check sees them. ``unknown_writes``: why a file
    may differ from the state without anyone having changed it ("" locally)."""

    unknown_writes: str

    def listing(self, directory: str) -> _Seen:
        """The files directly in ``directory`` (relative to the output, ``/``-separated)."""
        ...

    def displace(self, relative: str, to: str) -> None:
        """Move a file out of the data (``to``: relative to the output)."""
        ...

    def read(self, relative: str) -> bytes:
        """A file's bytes (OSError if it cannot be read)."""
        ...

    def record(self, run_id: str) -> str:
        """What ``_runs/`` holds of ``run_id``: KEPT (its journal, or a manifest verify can
        read), GONE, or UNREADABLE (a manifest that is damaged or no manifest)."""
        ...


class LocalFiles:
    """A local output directory: one scandir per directory, a stat per file in it."""

    # Locally a file's fingerprint is noted before its rename: a kill leaves none unknown.
    unknown_writes = ""

    def __init__(self, root: Path) -> None:
        self.root = root

    def listing(self, directory: str) -> _Seen:
        try:
            with os.scandir(self.root / directory) as entries:
                seen = {}
                for entry in entries:
                    info = entry.stat(follow_symlinks=False)
                    # A directory, link or pipe where a file was written is no file of ours:
                    # it matches no fingerprint, so it is changed and moved aside.
                    stamp = local_stamp(info) if entry.is_file(follow_symlinks=False) else ""
                    seen[entry.name] = (info.st_size if stamp else NOT_A_FILE, stamp)
                return seen
        except (FileNotFoundError, NotADirectoryError):
            return {}

    def displace(self, relative: str, to: str) -> None:
        target = self.root / to
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.root / relative, target)

    def read(self, relative: str) -> bytes:
        return (self.root / relative).read_bytes()

    def record(self, run_id: str) -> str:
        runs = self.root / RUNS_DIR
        if (runs / f"{run_id}{JOURNAL_SUFFIX}").is_file():
            return KEPT
        try:
            return _manifest_state((runs / f"{run_id}.json").read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            return GONE
        except IsADirectoryError:
            return UNREADABLE


class StoreFiles:
    """An object storage prefix: each series kind's objects come from one listing."""

    # The resume state is checkpointed, so what a killed run wrote after its last checkpoint
    # is known to no state: it reads as changed (or as written by no run), not as its own.
    unknown_writes = (
        " (on object storage, a run killed after its last checkpoint leaves such objects: "
        "the state it checkpointed does not know them)"
    )

    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self._listed: dict[str, dict[str, dict[str, tuple[int, str]]]] = {}
        self._records: set[str] | None = None

    def listing(self, directory: str) -> _Seen:
        top = directory.split("/", 1)[0]
        if top not in self._listed:
            by_dir: dict[str, dict[str, tuple[int, str]]] = {}
            for path, seen in self.store.fingerprints(top).items():
                parent, _, name = path.rpartition("/")
                by_dir.setdefault(parent, {})[name] = seen
            self._listed[top] = by_dir
        return self._listed[top].get(directory, {})

    def displace(self, relative: str, to: str) -> None:
        self.store.move(relative, to)

    def read(self, relative: str) -> bytes:
        data = self.store.get(relative)
        if data is None:
            raise FileNotFoundError(relative)
        return data

    def record(self, run_id: str) -> str:
        if self._records is None:  # one listing of _runs/ per check
            self._records = {name.rpartition("/")[2] for name in self.store.list(RUNS_DIR)}
        if f"{run_id}{JOURNAL_SUFFIX}" in self._records:
            return KEPT
        if f"{run_id}.json" not in self._records:
            return GONE
        data = self.store.get(f"{RUNS_DIR}/{run_id}.json")
        return GONE if data is None else _manifest_state(data)


KEPT, UNREADABLE = "kept", "unreadable"  # (and GONE) what _runs/ holds of a run


def _manifest_state(data: bytes) -> str:
    return KEPT if is_manifest(data) else UNREADABLE


@dataclass
class FileCheck:
    """What the check found; ``taken_back``: ``(series key, lo, hi)`` per file gone or
    changed, for counting what the run fetched again."""

    checked: int = 0
    missing: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    adopted: int = 0
    vouched: list[tuple[str, int, str]] = field(default_factory=list)  # (path, rows, sha256)
    foreign: list[str] = field(default_factory=list)  # files no run wrote, moved aside
    # Files a killed run renamed (or PUT) into place before it could note them: no
    # fingerprint yet, but their landing was noted, and they are as it staged them.
    landed: set[str] = field(default_factory=set)
    unreadable: list[str] = field(default_factory=list)  # run manifests that were, moved aside
    periods_taken_back: int = 0
    taken_back: list[tuple[str, int, int]] = field(default_factory=list)

    def refetched(self, state: State) -> int:
        """How many of the periods taken back this run has written again."""
        return sum(state.recorded(series, lo, hi) for series, lo, hi in self.taken_back)

    def doc(self, state: State) -> dict[str, object]:
        """The manifest's ``file_check``."""
        return {
            "files_checked": self.checked,
            "files_missing": len(self.missing),
            "files_changed": len(self.changed),
            "files_adopted": self.adopted,
            "files_vouched": len(self.vouched),
            "periods_taken_back": self.periods_taken_back,
            "periods_refetched": self.refetched(state),
            "files_foreign": len(self.foreign),
            "records_unreadable": self.unreadable,
            "missing": self.missing,
            "changed": self.changed,
            "foreign": self.foreign,
        }


class Ownership:
    """Whether a partition file a run is about to merge into is one a run wrote: a run
    never merges the rows of a file it did not write (a stray copy, a planted file) into
    its output (:class:`exporter.writers.PartitionWriter` moves such a file aside first).

    A file is ours when the state holds its fingerprint (a run wrote it; the file check has
    made sure it is still as written), or, failing that (the state was deleted), when the
    latest run record under ``_runs/`` gives its exact sha256. ``records`` reads those
    (:func:`exporter.manifest.recorded_files`), once, the first time a file is not in the
    state; ``report`` names each file moved aside (the summary and manifest say so)."""

    def __init__(
        self,
        state: State,
        records: Callable[[], Mapping[str, str]],
        run_id: str,
        report: FileCheck,
        unknown_writes: str = "",
    ) -> None:
        self._state, self._load, self.run_id, self._report = state, records, run_id, report
        self._records: Mapping[str, str] | None = None
        self._unknown_writes = unknown_writes  # Files.unknown_writes

    def wrote(self, relative: str) -> bool:
        """Whether the state holds a fingerprint of the file (``relative``: to the output),
        or the file is one a killed run landed before noting it (:attr:`FileCheck.landed`)."""
        return relative in self._report.landed or self._state.knows_file(relative)

    def vouches(self, relative: str, data: bytes) -> bool:
        """Whether a run record gives exactly these bytes for the file."""
        if self._records is None:
            try:
                self._records = self._load()
            except (OSError, ExporterError) as exc:  # unreadable records vouch for nothing
                log.debug("cannot read the run records: %s", exc)
                self._records = {}
        digest = self._records.get(relative)
        return digest is not None and hashlib.sha256(data).hexdigest() == digest

    def displaced(self, relative: str) -> str:
        """Where a file that is not ours goes, relative to the output; noted for the report."""
        self._report.foreign.append(relative)
        log.warning(
            "%s is no file a run of this tool wrote (neither the resume state nor a run record "
            "knows it%s): moved to %s/%s/ and not merged into; the file is written anew "
            "from Braze's answers",
            relative,
            self._unknown_writes,
            DISPLACED,
            self.run_id,
            extra={"event": "file_displaced"},
        )
        return f"{DISPLACED}/{self.run_id}/{relative}"


def check_files(
    state: State,
    files: Files,
    *,
    fmt: str,
    run_id: str,
    shard: tuple[int, int] | None = None,
) -> FileCheck:
    """Compare the fingerprints of ``state`` with ``files`` and take back the periods of
    every file gone or changed (see the module docstring). ``fmt``: the output format (an
    older state's files are found by it); ``shard``: only the files of this shard's series
    are checked (the other shards may be writing theirs right now). Raises StorageError (an
    OSError) when the store cannot be listed; OSError when a changed file cannot be moved
    aside."""
    report = FileCheck()
    mine = _ShardFilter(shard)
    gone: list[tuple[Fingerprint, bool]] = []
    if not state.checked:
        gone += _check_unfingerprinted(state, files, fmt, report, mine)
    state.note_run()
    adopt: list[Fingerprint] = []
    unvouched: list[Fingerprint] = []
    records = _Records(files, state, run_id, report)
    landing = state.pending()
    for recorded, verdict, now in compare(state.fingerprints(), files, landing, mine):
        report.checked += 1
        if verdict in (GONE, CHANGED):
            gone.append((recorded, verdict == CHANGED))
        elif verdict == ADOPT and now is not None:
            adopt.append(_with(recorded, now))
        elif verdict == SAME and not records.kept(recorded.sequence):
            unvouched.append(recorded)
    for recorded, changed in gone:
        if changed:
            files.displace(recorded.path, f"{DISPLACED}/{run_id}/{recorded.path}")
        _take_back(state, report, recorded.series, recorded.lo, recorded.hi)
        (report.changed if changed else report.missing).append(recorded.path)
    if gone:
        state.note_gone([recorded for recorded, _ in gone])
    if adopt:
        state.adopt(adopt)
        report.adopted += len(adopt)
    if unvouched:
        _vouch(state, files, fmt, report, unvouched)
    report.landed = _landed_unnoted(state, files, landing)
    state.clear_pending()
    state.mark_checked()
    if report.missing or report.changed:
        named = (report.missing + report.changed)[:EXAMPLES]
        log.warning(
            "%d file(s) recorded as written are gone and %d changed since (%s%s): their %d "
            "period(s) will be fetched again%s",
            len(report.missing),
            len(report.changed),
            ", ".join(named),
            ", ..." if len(report.missing) + len(report.changed) > len(named) else "",
            report.periods_taken_back,
            f"; changed files moved to {DISPLACED}/{run_id}/{files.unknown_writes}"
            if report.changed
            else "",
            extra={"event": "files_checked"},
        )
    return report


GONE, CHANGED, ADOPT, SAME = "gone", "changed", "adopt", "same"


def compare(
    fingerprints: Iterable[Fingerprint],
    files: Files,
    landing: Mapping[str, Sequence[tuple[int, str]]],
    mine: Callable[[str], bool] = lambda _: True,
) -> Iterator[tuple[Fingerprint, str, tuple[int, str] | None]]:
    """Read only: each fingerprint of a series ``mine`` keeps (sorted by path, as
    :meth:`exporter.state.State.fingerprints` gives them) with its verdict and the
    ``(size, stamp)`` seen now (None: not there). GONE and CHANGED: its periods are taken
    back; ADOPT: an unknown stamp, or a landing (``landing``: path -> staged ``(size,
    stamp)``) the run was killed after; SAME: as written. Lists each directory once."""
    for directory, group in _by_directory(f for f in fingerprints if mine(f.series)):
        seen = files.listing(directory)
        for recorded in group:
            now = seen.get(recorded.path.rpartition("/")[2])
            if now is None:
                yield recorded, GONE, None
            elif _matches(now, (recorded.size, recorded.stamp)):
                # A stamp not known, or known in part (an older version's): the whole one
                # seen now is recorded for the next check.
                yield recorded, SAME if recorded.stamp == now[1] else ADOPT, now
            elif any(_matches(now, staged) for staged in landing.get(recorded.path, ())):
                yield recorded, ADOPT, now
            else:
                yield recorded, CHANGED, now


def _landed_unnoted(
    state: State, files: Files, landing: Mapping[str, Sequence[tuple[int, str]]]
) -> set[str]:
    """The files whose landing a run noted (:meth:`State.note_staged`) and was killed before
    hearing of, with no fingerprint yet (a first write): found as staged, they are ours. (A
    file with a fingerprint is :func:`compare`'s.) The noted landings are few: those of one
    batch of writes."""
    landed: set[str] = set()
    for path, staged in landing.items():
        if state.knows_file(path):
            continue
        directory, _, name = path.rpartition("/")
        now = files.listing(directory).get(name)
        if now is not None and any(_matches(now, one) for one in staged):
            landed.add(path)
    return landed


def would_take_back(
    fingerprints: Iterable[Fingerprint],
    files: Files,
    landing: Mapping[str, Sequence[tuple[int, str]]],
    shard: tuple[int, int] | None = None,
    unchecked: tuple[Iterable[tuple[str, int, int]], Callable[[str | None], bool], str]
    | None = None,
) -> FileCheck:
    """What :func:`check_files` would take back, read only (``plan``): nothing moved,
    nothing written. ``unchecked``: the done periods, ``has_fingerprint`` and the format of
    a state an older version wrote, found by their periods first as the run finds them
    (:func:`find_unfingerprinted`). ``taken_back`` holds the spans; ``periods_taken_back``
    is left to the caller, who knows which of them are done."""
    report = FileCheck()
    if unchecked is not None:
        periods, has_fingerprint, fmt = unchecked
        found = find_unfingerprinted(periods, has_fingerprint, files, fmt, _ShardFilter(shard))
        report.checked += len(found.there) + len(found.absent)
        report.taken_back += found.unreadable
        for recorded, changed in found.absent.values():
            (report.changed if changed else report.missing).append(recorded.path)
            report.taken_back.append((recorded.series, recorded.lo, recorded.hi))
    for recorded, verdict, _ in compare(fingerprints, files, landing, _ShardFilter(shard)):
        report.checked += 1
        if verdict in (GONE, CHANGED):
            (report.changed if verdict == CHANGED else report.missing).append(recorded.path)
            report.taken_back.append((recorded.series, recorded.lo, recorded.hi))
    return report


class _Records:
    """Whether a readable record of the run that wrote a file is still under ``_runs/``.
    A manifest that is not (truncated, damaged) vouches for nothing, as verify reads it: it
    is moved aside to ``displaced/{run_id}/`` (so verify no longer reports it) and its
    files are vouched for anew, as those of a manifest that is gone."""

    def __init__(self, files: Files, state: State, run_id: str, report: FileCheck) -> None:
        self.files, self.state, self.run_id, self.report = files, state, run_id, report
        self._kept: dict[int, bool] = {}

    def kept(self, sequence: int) -> bool:
        if sequence not in self._kept:
            run_id = self.state.run_of(sequence)
            # A run of a version that did not note its id: its record cannot be told.
            record = KEPT if run_id is None else self.files.record(run_id)
            if record == UNREADABLE:
                name = f"{RUNS_DIR}/{run_id}.json"
                self.files.displace(name, f"{DISPLACED}/{self.run_id}/{name}")
                self.report.unreadable.append(name)
                log.warning(
                    "%s is no run manifest verify can read (damaged or truncated): moved to "
                    "%s/%s/; the files it recorded are vouched for anew",
                    name,
                    DISPLACED,
                    self.run_id,
                    extra={"event": "record_displaced"},
                )
            self._kept[sequence] = record == KEPT
        return self._kept[sequence]


def _vouch(
    state: State, files: Files, fmt: str, report: FileCheck, found: list[Fingerprint]
) -> None:
    """Files as they were written whose run's manifest and journal are gone (``_runs/``
    deleted): this run's manifest records them (rows and sha256 from the file), so that
    verify vouches for them. One that cannot be read as ours is left to verify to report."""
    vouched: list[tuple[Fingerprint, int, str]] = []
    for recorded in found:
        series = series_of_key(recorded.series)
        data = files.read(recorded.path)
        try:
            rows = len(decode(fmt, series, data)) if series is not None else -1
        except (ValueError, KeyError, TypeError):
            rows = -1
        if rows >= 0:
            vouched.append((recorded, rows, hashlib.sha256(data).hexdigest()))
    state.vouch(vouched)
    report.vouched += [(f.path, rows, sha256) for f, rows, sha256 in vouched]
    log.warning(
        "%d file(s) of earlier runs whose run records under %s/ are gone or unreadable: "
        "this run's manifest vouches for them as they are",
        len(vouched),
        RUNS_DIR,
        extra={"event": "files_vouched"},
    )


def _take_back(state: State, report: FileCheck, series: str, lo: int, hi: int) -> None:
    report.periods_taken_back += state.forget(series, lo, hi)
    report.taken_back.append((series, lo, hi))


def _matches(now: tuple[int, str], recorded: tuple[int, str]) -> bool:
    """Whether a file seen now is the one recorded ("": a stamp not known, any will do)."""
    return now[0] == recorded[0] and (not recorded[1] or same_stamp(now[1], recorded[1]))


def _with(recorded: Fingerprint, now: tuple[int, str]) -> Fingerprint:
    size, stamp = now
    return Fingerprint(recorded.path, recorded.series, recorded.lo, recorded.hi, size, stamp)


def _by_directory(
    fingerprints: Iterable[Fingerprint],
) -> Iterator[tuple[str, list[Fingerprint]]]:
    """Consecutive fingerprints of one directory (they come sorted by path)."""
    directory: str | None = None
    group: list[Fingerprint] = []
    for recorded in fingerprints:
        parent = recorded.path.rpartition("/")[0]
        if parent != directory and group:
            yield directory or "", group
            group = []
        directory = parent
        group.append(recorded)
    if group:
        yield directory or "", group


class _ShardFilter:
    """Whether a series key belongs to the run's shard (consecutive files share a key)."""

    def __init__(self, shard: tuple[int, int] | None) -> None:
        self.shard = shard
        self._last: tuple[str, bool] = ("", True)

    def __call__(self, key: str) -> bool:
        if self.shard is None:
            return True
        if key != self._last[0]:
            series = series_of_key(key)
            # A key this version cannot read has no shard: a run without --shard checks it.
            ours = series is not None and shard_of(series, self.shard[1]) == self.shard[0]
            self._last = (key, ours)
        return self._last[1]


def _check_unfingerprinted(
    state: State, files: Files, fmt: str, report: FileCheck, mine: _ShardFilter
) -> list[tuple[Fingerprint, bool]]:
    """A state an older version wrote: adopt each done period's partition file that is
    there as it is; take back the periods of a key this version cannot read. Returns the
    files that are not there, each with whether something else (a directory, a link) is
    there instead."""
    found = find_unfingerprinted(list(state.periods()), state.has_fingerprint, files, fmt, mine)
    for key, lo, hi in found.unreadable:
        _take_back(state, report, key, lo, hi)
    state.adopt(found.there.values())
    report.checked += len(found.there) + len(found.absent)
    report.adopted += len(found.there)
    return list(found.absent.values())


@dataclass
class Unfingerprinted:
    """What the check of a state without fingerprints finds, by partition path: the files
    ``there`` (adopted as they are), those ``absent`` (with whether something else, a
    directory or a link, is there instead), and the done spans of keys this version cannot
    read (``unreadable``: nothing to find their file by)."""

    there: dict[str, Fingerprint] = field(default_factory=dict)
    absent: dict[str, tuple[Fingerprint, bool]] = field(default_factory=dict)
    unreadable: list[tuple[str, int, int]] = field(default_factory=list)


def find_unfingerprinted(
    periods: Iterable[tuple[str, int, int]],
    has_fingerprint: Callable[[str | None], bool],
    files: Files,
    fmt: str,
    mine: Callable[[str], bool],
) -> Unfingerprinted:
    """Read only: find each done span's partition files from its series key (``periods``:
    ``(key, lo, hi)``) in ``fmt``, for the series ``mine`` keeps. A path a newer run left a
    fingerprint of (``has_fingerprint``) is the fingerprint check's: left out."""
    found = Unfingerprinted()
    mixed = has_fingerprint(None)
    for key, lo, hi in periods:
        if not mine(key):
            continue
        series = series_of_key(key)
        if series is None:
            found.unreadable.append((key, lo, hi))
            continue
        for name, first, last in partitions(series, lo, hi):
            path = partition_path(Path("."), series, name, fmt).as_posix()
            if path in found.there or path in found.absent or (mixed and has_fingerprint(path)):
                continue
            directory, _, file_name = path.rpartition("/")
            now = files.listing(directory).get(file_name)
            if now is None or now[0] == NOT_A_FILE:
                gone = Fingerprint(path, key, first, last, -1, "")
                found.absent[path] = (gone, now is not None)
            else:
                found.there[path] = Fingerprint(path, key, first, last, *now)
    return found
