"""What is already done, so a rerun resumes instead of re-fetching.

Done is recorded per series and period, not per request: whichever request brought a
period (Braze's windows may sit elsewhere than planned) and whatever the shard layout, a
period written is a period done. A record counts only for the same ``scope``: the source
(Braze host, or the sandbox), the output format and the time zone that decide the rows.

Periods close to the as-of date (``settle_days``) are recorded as *provisional*: Braze
restates recent data, so they count as done only for runs with the same as-of date (a
resumed run), and a later run reads them again.

Each partition file a run writes leaves a *fingerprint*: its size and a stamp that changes
when the file is replaced (its mtime, inode and ctime: :func:`exporter.storage.local_stamp`;
an object's ETag), with the series and the periods the partition holds.
:mod:`exporter.presence` compares them with the files at the start of every run and takes
back (``forget``) the periods of a file gone or changed.

Periods are recorded only after their rows are durably in their partition files, so a crash
at any moment loses at most the requests in flight, and those are simply fetched again (the
merge makes that harmless). SQLite in WAL mode survives ``kill -9`` of the writer at any
point. One run holds its file's lock for its whole life; shards each have their own file,
and every run also reads the records of the other layouts' files in the same directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from exporter.coverage import subtract
from exporter.details import SCHEMA as DETAILS_SCHEMA
from exporter.details import Known, decode, encode
from exporter.errors import ExporterError, Unreachable
from exporter.plan import merge_spans
from exporter.redact import redact
from exporter.storage import relative_path, write_failure
from exporter.writers import WrittenFile

__all__ = ["Fingerprint", "GroupRecorder", "Record", "Records", "State", "state_path"]

log = logging.getLogger(__name__)

Span = tuple[int, int]
_SETTLED = 0  # ``as_of`` column of a settled record; provisional records hold their run's as-of


def state_path(work_dir: Path, shard: tuple[int, int] | None) -> Path:
    """One state file per shard, so parallel shards never wait for each other's locks."""
    return work_dir / ("state.sqlite" if shard is None else f"state-{shard[0]}of{shard[1]}.sqlite")


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS periods (scope TEXT, series TEXT, lo INTEGER, hi INTEGER, "
    "as_of INTEGER, PRIMARY KEY (scope, series, lo, hi, as_of)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS files (run_id TEXT, path TEXT, rows INTEGER, "
    "sha256 TEXT, version INTEGER, PRIMARY KEY (run_id, path)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (scope TEXT, key TEXT, value TEXT, "
    "PRIMARY KEY (scope, key)) WITHOUT ROWID",
    # Added in the version that checks files: a state file without it gets it empty, and
    # the first run checks that state's done periods once (see exporter.presence).
    "CREATE TABLE IF NOT EXISTS fingerprints (scope TEXT, path TEXT, series TEXT, "
    "lo INTEGER, hi INTEGER, size INTEGER, stamp TEXT, sequence INTEGER, "
    "PRIMARY KEY (scope, path)) WITHOUT ROWID",
    # Files whose rename (or PUT) has begun and not yet been heard of as done: after a kill
    # in between, the file on disk may be this one, and it is ours.
    "CREATE TABLE IF NOT EXISTS pending (scope TEXT, path TEXT, size INTEGER, stamp TEXT, "
    "PRIMARY KEY (scope, path, size, stamp)) WITHOUT ROWID",
    # Campaign and Canvas details, so a run reads them again only when they may have changed.
    DETAILS_SCHEMA,
    # The ids each discovery found (``spec``: its filters, :func:`spec_text`), as soon as it
    # found them: ``plan`` counts them even when the run stopped before any of their data.
    "CREATE TABLE IF NOT EXISTS discovered (scope TEXT, dimension TEXT, spec TEXT, id TEXT, "
    "PRIMARY KEY (scope, dimension, spec, id)) WITHOUT ROWID",
)
_DISCOVERED = "SELECT id FROM discovered WHERE scope = ? AND dimension = ? AND spec = ?"


def spec_text(spec: Hashable) -> str:
    """A discovery's filters (``Discover.key``) as the ``discovered`` table keeps them."""
    return json.dumps(spec, default=str)


_DETAILS = "SELECT id, listed, life FROM details WHERE scope = ? AND dimension = ?"
_RUN_OF = "run_id@"  # meta key prefix: the run id of a holder sequence
_CHECKED = "files_checked"  # meta key: this state's periods all have fingerprints


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What a partition file was when written: ``path`` relative to the output, the key of
    its ``series``, the periods ``lo..hi`` it holds, its ``size`` in bytes and ``stamp``
    (local_stamp locally, the ETag on object storage; "": not known yet)."""

    path: str
    series: str
    lo: int
    hi: int
    size: int
    stamp: str
    sequence: int = 0  # the holder sequence of the run that noted it (0: not known)


@dataclass(frozen=True, slots=True)
class Record:
    """What :meth:`State.record` records for one series: its written periods (``spans``),
    provisional from ``settle_from`` on, and the files holding them."""

    series_key: str
    spans: Sequence[Span]
    settle_from: int
    written: Sequence[WrittenFile] = ()


class State:
    """Done periods, and the files this run wrote (for its manifest, kept out of memory)."""

    def __init__(
        self,
        path: Path,
        *,
        scope: str,
        as_of: int,
        run_id: str = "",
        root: Path | None = None,
        sequence: int = 0,
    ):
        """``scope`` names what decides a period's rows (source, format, time zone);
        ``as_of`` is the run's as-of date ordinal; file paths are recorded relative to
        ``root``; ``sequence`` (the run's holder sequence) orders fingerprints across the
        directory's state files. Raises ExporterError when the file is locked by another
        run or damaged."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_failure(path.parent, exc, "cannot keep the resume state") from None
        self.path = path
        self._scope = scope
        self._as_of = as_of
        self._run_id = run_id
        self._sequence = sequence
        self._root = str(root if root is not None else path.parent.parent)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=2)
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from None
        try:
            # One run owns the file: an exclusive lock taken once, not per commit.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL skips the fsync per commit; WAL still keeps every commit across a kill.
            self._db.execute("PRAGMA synchronous=NORMAL")
            for statement in _SCHEMA:
                self._db.execute(statement)
            self._db.execute("BEGIN IMMEDIATE")  # take the lock now, not at the first write
            # Provisional records of earlier as-of dates will never count again.
            self._db.execute(
                "DELETE FROM periods WHERE scope = ? AND as_of != ? AND as_of < ?",
                (scope, _SETTLED, as_of),
            )
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._db.close()
            if "locked" in str(exc):
                raise ExporterError(
                    f"{path.parent.parent}: another run is exporting into this directory "
                    "right now; wait for it to finish, or use another --out"
                ) from None
            raise _unusable(path, exc) from None

    def done(self, series_keys: Callable[[], Mapping[str, int]]) -> dict[int, list[Span]]:
        """The recorded spans of the series ``series_keys()`` maps (series key -> caller's
        index), from this file and from the other state files of the directory (other shard
        layouts). The map is only built when there are records to look up: a first run of
        100,000s of series need not hold it."""
        found: dict[int, list[Span]] = {}
        keys: Mapping[str, int] | None = None
        # In key order, so each series' records merge as they come: a backfill of years
        # leaves one record per request, but its series holds one span here.
        query = (
            "SELECT series, lo, hi FROM periods WHERE scope = ? AND as_of IN (?, ?) "
            "ORDER BY series, lo"
        )
        for series, lo, hi in self._query_all(query, (self._scope, _SETTLED, self._as_of)):
            if keys is None:
                keys = series_keys()
            index = keys.get(series)
            if index is not None:
                _add_span(found.setdefault(index, []), lo, hi)
        for spans in found.values():  # another layout's file adds records out of order
            spans[:] = _merged(sorted(spans))
        return found

    def scopes(self) -> set[str]:
        """Every scope the directory's state files hold records of (this one's included)."""
        return {row[0] for row in self._query_all("SELECT DISTINCT scope FROM periods")}

    def _query_all(self, sql: str, params: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
        """The rows of ``sql`` in this state file, then in the directory's other ones. This
        file's errors are this state's; another file that cannot be read is skipped."""
        try:
            yield from self._db.execute(sql, params)
        except sqlite3.Error as exc:
            raise _unusable(self.path, exc) from None
        for db in self._others():
            try:
                yield from db.execute(sql, params)
            except sqlite3.Error as exc:
                log.debug("skipping another layout's state file: %s", exc)
            finally:
                db.close()

    def _others(self, mode: str = "ro") -> Iterator[sqlite3.Connection]:
        """Connections to the directory's other state files (``mode`` "ro" or "rw"). One
        that is locked belongs to a shard of this layout running now: its series are not
        ours."""
        for other in sorted(self.path.parent.glob("state*.sqlite")):
            if other == self.path:
                continue
            try:
                yield sqlite3.connect(
                    f"file:{other}?mode={mode}", uri=True, timeout=0.1, isolation_level=None
                )
            except sqlite3.Error as exc:
                log.debug("cannot open %s: %s", other, exc)

    def note_written(self, files: Iterable[WrittenFile]) -> None:
        """Files now in place (renamed, or PUT): for the manifest, and their fingerprints.
        Called as each batch lands, before their periods are recorded, so a recorded period
        always has its file's fingerprint. A failure is logged, never raised: the files are
        in place, and a fingerprint not recorded only makes the next run refetch them."""
        written = list(files)
        try:
            with self._transaction():
                self._insert_files(written)
                self._db.executemany(
                    "DELETE FROM pending WHERE scope = ? AND path = ?",
                    [(self._scope, relative_path(f.path, self._root)) for f in written],
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            self._scope,
                            relative_path(f.path, self._root),
                            f.series,
                            f.lo,
                            f.hi,
                            f.size,
                            f.stamp,
                            self._sequence,
                        )
                        for f in written
                        if f.series
                    ],
                )
        except sqlite3.Error as exc:
            log.warning("cannot record the files written in %s: %s", self.path, exc)

    def note_staged(self, files: Iterable[WrittenFile]) -> None:
        """Files about to land (renamed or PUT): their fingerprints count as the file's too
        until :meth:`note_written` hears they landed, or the next check. Logged on failure:
        a kill in between then only makes the next run fetch their periods again."""
        rows = [
            (self._scope, relative_path(f.path, self._root), f.size, f.stamp)
            for f in files
            if f.series
        ]
        try:
            self._db.executemany("INSERT OR IGNORE INTO pending VALUES (?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            log.warning("cannot record the files being written in %s: %s", self.path, exc)

    def pending(self) -> dict[str, list[tuple[int, str]]]:
        """``{path: [(size, stamp), ...]}`` of the files whose landing was not heard of."""
        found: dict[str, list[tuple[int, str]]] = {}
        sql = "SELECT path, size, stamp FROM pending WHERE scope = ?"
        for path, size, stamp in self._query_all(sql, (self._scope,)):
            found.setdefault(path, []).append((size, stamp))
        return found

    def clear_pending(self) -> None:
        self._db.execute("DELETE FROM pending WHERE scope = ?", (self._scope,))

    def note_gone(self, gone: Sequence[Fingerprint]) -> None:
        """Files found gone or changed (and moved aside), whose periods were taken back:
        for the manifest (``sha256`` null), and a fingerprint of size -1, so the next run
        does not look for them again until a run writes them anew."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO files (run_id, path, rows, sha256, version) "
                "VALUES (?, ?, 0, NULL, 0)",
                [(self._run_id, f.path) for f in gone],
            )
        self.adopt(Fingerprint(f.path, f.series, f.lo, f.hi, -1, "") for f in gone)

    def note_run(self) -> None:
        """Remember this run's id under its holder sequence: whose record (manifest or
        journal under ``_runs/``) vouches for the files whose fingerprint bears it."""
        self.set_meta(f"{_RUN_OF}{self._sequence}", self._run_id)

    def run_of(self, sequence: int) -> str | None:
        """The id of the run of holder ``sequence`` (None: a version that did not note it)."""
        return self.get_meta(f"{_RUN_OF}{sequence}")

    def vouch(self, found: Sequence[tuple[Fingerprint, int, str]]) -> None:
        """``(fingerprint, rows, sha256)`` of files as they are, whose run's record is gone:
        this run's manifest records them (so verify vouches for them), and their
        fingerprints now bear this run's sequence."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO files (run_id, path, rows, sha256, version) "
                "VALUES (?, ?, ?, ?, 0)",
                [(self._run_id, f.path, rows, sha256) for f, rows, sha256 in found],
            )
        self.adopt(f for f, _, _ in found)

    def fingerprints(self) -> Iterator[Fingerprint]:
        """The latest fingerprint of each file of this scope (the highest sequence over
        the directory's state files), by path: streamed, never all in memory. Files known
        to be gone (size -1) are left out."""
        with contextlib.ExitStack() as stack:
            cursors = [self._db.execute(_FINGERPRINTS, (self._scope,))]
            for db in self._others():
                stack.callback(db.close)
                try:
                    cursors.append(db.execute(_FINGERPRINTS, (self._scope,)))
                except sqlite3.Error as exc:
                    log.debug("skipping another layout's state file: %s", exc)
            yield from _latest(cursors)

    def has_fingerprint(self, path: str | None = None) -> bool:
        """Whether a state file of the directory holds a fingerprint of ``path`` (None: of
        any file of this scope)."""
        rows = self._query_all(*_fingerprint_query(self._scope, path))
        return next(rows, None) is not None

    def knows_file(self, path: str) -> bool:
        """Whether a state file of the directory holds a fingerprint of the file ``path``
        as a run wrote or adopted it (one noted gone does not count)."""
        sql = "SELECT 1 FROM fingerprints WHERE scope = ? AND path = ? AND size >= 0"
        return next(self._query_all(sql, (self._scope, path)), None) is not None

    def adopt(self, fingerprints: Iterable[Fingerprint]) -> None:
        """Record fingerprints as found on disk (for files an older version wrote, or whose
        stamp the store did not give when it was written)."""
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (self._scope, f.path, f.series, f.lo, f.hi, f.size, f.stamp, self._sequence)
                    for f in fingerprints
                ],
            )

    def periods(self) -> Iterator[tuple[str, int, int]]:
        """Every done span of this scope, ``(series key, lo, hi)``, from every state file."""
        sql = "SELECT series, lo, hi FROM periods WHERE scope = ?"
        yield from self._query_all(sql, (self._scope,))

    def forget(self, series: str, lo: int, hi: int) -> int:
        """Take back the done periods ``lo..hi`` of a series (its file is gone or changed),
        in this state file and in every other one no running shard holds. Returns how many
        done periods were taken back."""
        removed: list[Span] = []
        removed += self._forget_in(self._db, series, lo, hi)
        for db in self._others("rw"):
            try:
                removed += self._forget_in(db, series, lo, hi)
            except sqlite3.Error as exc:
                log.debug("cannot take periods back in another state file: %s", exc)
            finally:
                db.close()
        return sum(b - a + 1 for a, b in merge_spans(removed))

    def _forget_in(self, db: sqlite3.Connection, series: str, lo: int, hi: int) -> list[Span]:
        removed: list[Span] = []
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute(
                "SELECT lo, hi, as_of FROM periods WHERE scope = ? AND series = ? "
                "AND lo <= ? AND hi >= ?",
                (self._scope, series, hi, lo),
            ).fetchall()
            for a, b, as_of in rows:
                db.execute(
                    "DELETE FROM periods WHERE scope = ? AND series = ? AND lo = ? AND hi = ? "
                    "AND as_of = ?",
                    (self._scope, series, a, b, as_of),
                )
                keep = [(a, lo - 1), (hi + 1, b)]
                db.executemany(
                    "INSERT OR IGNORE INTO periods VALUES (?, ?, ?, ?, ?)",
                    [(self._scope, series, x, y, as_of) for x, y in keep if x <= y],
                )
                removed.append((max(a, lo), min(b, hi)))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        return removed

    def recorded(self, series: str, lo: int, hi: int) -> int:
        """How many periods of ``lo..hi`` this state file holds as done now."""
        rows = self._db.execute(
            "SELECT lo, hi FROM periods WHERE scope = ? AND series = ? AND lo <= ? AND hi >= ?",
            (self._scope, series, hi, lo),
        )
        spans = merge_spans((max(a, lo), min(b, hi)) for a, b in rows)
        return sum(b - a + 1 for a, b in spans)

    @property
    def checked(self) -> bool:
        """Whether every done period of this state file has its file's fingerprint: false
        only for a state an older version wrote, until its first check."""
        return self.get_meta(_CHECKED) is not None

    def mark_checked(self) -> None:
        self.set_meta(_CHECKED, "1")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back itself (disk full): the first error is the news.
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def _insert_files(self, written: Sequence[WrittenFile]) -> None:
        self._db.executemany(
            "INSERT INTO files (run_id, path, rows, sha256, version) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, path) DO UPDATE SET "
            "rows = excluded.rows, sha256 = excluded.sha256, "
            "version = excluded.version "
            "WHERE excluded.version > files.version",  # writes may finish out of order
            [
                (
                    self._run_id,
                    redact(relative_path(f.path, self._root)),
                    f.rows,
                    f.sha256,
                    f.version,
                )
                for f in written
            ],
        )

    def record(
        self,
        series_key: str,
        spans: Sequence[Span],
        settle_from: int,
        written: Iterable[WrittenFile] = (),
    ) -> None:
        """Record written periods, and the files holding them, in one transaction. Periods
        from ``settle_from`` on are provisional. Raises ExporterError when it cannot (disk
        full): the series fails, the others go on."""
        self.record_many([Record(series_key, spans, settle_from, tuple(written))])

    def record_many(self, records: Sequence[Record]) -> None:
        """:meth:`record` for several series in one transaction: all or none of them.
        ExporterError when it cannot."""
        rows: list[tuple[str, str, int, int, int]] = []
        for record in records:
            key = redact(record.series_key)  # ids are key-free already (discovery)
            settle_from = record.settle_from
            for lo, hi in record.spans:
                if lo < settle_from:
                    rows.append((self._scope, key, lo, min(hi, settle_from - 1), _SETTLED))
                if hi >= settle_from:
                    rows.append((self._scope, key, max(lo, settle_from), hi, self._as_of))
        try:
            with self._transaction():
                self._db.executemany("INSERT OR IGNORE INTO periods VALUES (?, ?, ?, ?, ?)", rows)
                self._insert_files([f for record in records for f in record.written])
        except sqlite3.Error as exc:
            raise ExporterError(
                f"cannot record progress in {self.path} ({exc}); the rows are written, "
                "a rerun fetches them again"
            ) from None

    def details(self, dimension: str) -> dict[str, Known]:
        """The campaign (``dimension`` ``campaign_id``) or Canvas details kept by any state
        file of the directory, the latest read of each id."""
        return decode(self._query_all(_DETAILS, (self._scope, dimension)))

    def keep_found(self, dimension: str, spec: Hashable, ids: Iterable[str]) -> None:
        """Keep the ids a discovery (``spec``: its ``Discover.key``) found, in place of those
        it found before. Losing them costs only ``plan``'s count: a failure is a warning."""
        text = spec_text(spec)
        try:
            with self._transaction():
                self._db.execute(
                    "DELETE FROM discovered WHERE scope = ? AND dimension = ? AND spec = ?",
                    (self._scope, dimension, text),
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO discovered VALUES (?, ?, ?, ?)",
                    [(self._scope, dimension, text, i) for i in ids],
                )
        except sqlite3.Error as exc:
            log.warning("cannot keep the discovered ids in %s: %s", self.path, exc)

    def keep_details(self, dimension: str, known: Mapping[str, Known]) -> None:
        """Keep details read in this run (replacing what was kept of those ids), stamped with
        the run's as-of date: a resumed run takes them as its own. Losing them costs only
        their reading again: a failure is a warning."""
        rows = [
            (self._scope, dimension, i, *encode(replace(k, as_of=self._as_of)))
            for i, k in known.items()
        ]
        try:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO details VALUES (?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            log.warning("cannot keep details in %s: %s", self.path, exc)

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM meta WHERE scope = ? AND key = ?", (self._scope, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)", (self._scope, key, redact(value))
            )
        except sqlite3.Error as exc:
            log.warning("cannot record %s in %s: %s", key, self.path, exc)

    def files(self) -> Iterator[tuple[str, int, str | None]]:
        """(path, rows, sha256) of every file this run wrote, by path; sha256 None for a
        file it found gone or changed and did not write again."""
        yield from self._db.execute(
            "SELECT path, rows, sha256 FROM files WHERE run_id = ? ORDER BY path", (self._run_id,)
        )

    def file_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM files WHERE run_id = ?", (self._run_id,))
        count: int = row.fetchone()[0]
        return count

    def snapshot(self, dest: Path) -> None:
        """A consistent copy of the state in ``dest`` (SQLite's backup API), for checkpoints."""
        copy = sqlite3.connect(dest)
        try:
            self._db.backup(copy)
        finally:
            copy.close()

    def close(self) -> None:
        self._db.close()


class Records:
    """The records of a directory's state files, read only (``plan``): no lock is taken and
    nothing is written next to them. A file a run is writing now (its write-ahead log is
    there) is read from a private copy, so the run is neither waited for nor disturbed.

    ``of(series_key)`` gives a series' merged done spans (settled, or provisional of this
    as-of date: as a resumed run counts them) and its provisional spans of earlier as-of
    dates, which the next run reads again. One query per series: memory stays flat."""

    def __init__(self, paths: Iterable[Path], *, scope: str, as_of: int) -> None:
        """Raises ExporterError when a file cannot be read (damaged, unreadable)."""
        self._scope, self._as_of = scope, as_of
        self._copies: tempfile.TemporaryDirectory[str] | None = None  # made when needed
        self._dbs: list[sqlite3.Connection] = []
        self._paths: list[Path] = []
        self._withheld: dict[str, list[Span]] = {}
        try:
            for path in paths:
                self._dbs.append(self._open(path))
                self._paths.append(path)
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            wal = path.with_name(path.name + "-wal")
            if wal.exists():  # a run is writing it (or was killed): read a copy
                if self._copies is None:
                    self._copies = tempfile.TemporaryDirectory(prefix="braze-export-plan-")
                copy = Path(self._copies.name) / f"{len(self._dbs)}.sqlite"
                shutil.copyfile(path, copy)
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
                db = sqlite3.connect(copy)
            else:  # immutable: opens no journal, takes no lock, writes nothing
                db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            db.execute("SELECT 1 FROM periods LIMIT 1").fetchall()
            return db
        except OSError as exc:
            raise ExporterError(f"{path}: cannot read the resume state ({exc})") from None
        except sqlite3.Error as exc:
            raise _unusable(path, exc) from None

    def fingerprints(self) -> Iterator[Fingerprint]:
        """As :meth:`State.fingerprints`, read only."""
        yield from _latest(list(self._each(_FINGERPRINTS, (self._scope,))))

    def periods(self) -> Iterator[tuple[str, int, int]]:
        """As :meth:`State.periods` once a run has dropped the provisional records of
        earlier as-of dates: ``(series key, lo, hi)``."""
        sql = "SELECT series, lo, hi FROM periods WHERE scope = ? AND (as_of = ? OR as_of >= ?)"
        for rows in self._each(sql, (self._scope, _SETTLED, self._as_of)):
            yield from rows

    def series_keys(self) -> Iterator[str]:
        """Each series key the state files hold records of (once per file that holds it)."""
        for rows in self._each(
            "SELECT DISTINCT series FROM periods WHERE scope = ?", (self._scope,)
        ):
            for (key,) in rows:
                yield key

    def has_fingerprint(self, path: str | None = None) -> bool:
        """As :meth:`State.has_fingerprint`, read only."""
        query = _fingerprint_query(self._scope, path)
        return any(next(rows, None) is not None for rows in self._each(*query))

    def checked(self, name: str) -> bool:
        """Whether the state file ``name`` (the one a run of this shard layout keeps) is
        there and its done periods all have fingerprints (see :attr:`State.checked`): when
        not, that run first checks the done periods' files from the periods themselves."""
        sql = "SELECT 1 FROM meta WHERE scope = ? AND key = ?"
        for path, db in zip(self._paths, self._dbs, strict=True):
            if path.name == name:
                with contextlib.suppress(sqlite3.Error):
                    return db.execute(sql, (self._scope, _CHECKED)).fetchone() is not None
        return False

    def _each(self, sql: str, params: tuple[Any, ...]) -> Iterator[sqlite3.Cursor]:
        """A cursor of ``sql`` per state file that has its tables (an older version's may
        lack the newer ones: nothing to read there)."""
        for db in self._dbs:
            try:
                yield db.execute(sql, params)
            except sqlite3.OperationalError as exc:
                log.debug("skipping a state file without the table: %s", exc)

    def pending(self) -> dict[str, list[tuple[int, str]]]:
        """As :meth:`State.pending`, read only."""
        found: dict[str, list[tuple[int, str]]] = {}
        sql = "SELECT path, size, stamp FROM pending WHERE scope = ?"
        for db in self._dbs:
            with contextlib.suppress(sqlite3.Error):  # a state older than the table
                for path, size, stamp in db.execute(sql, (self._scope,)):
                    found.setdefault(path, []).append((size, stamp))
        return found

    def found(self, dimension: str, spec: Hashable) -> set[str]:
        """The ids the last discovery of ``dimension`` with filters ``spec`` found, by any
        state file of the directory (read only; a state older than the table has none)."""
        ids: set[str] = set()
        query = (self._scope, dimension, spec_text(spec))
        for db in self._dbs:
            with contextlib.suppress(sqlite3.Error):
                ids.update(i for (i,) in db.execute(_DISCOVERED, query))
        return ids

    def details(self, dimension: str) -> dict[str, Known]:
        """As :meth:`State.details`, read only (a state older than the table has none)."""
        rows: list[tuple[str, str, str]] = []
        for db in self._dbs:
            with contextlib.suppress(sqlite3.Error):
                rows += db.execute(_DETAILS, (self._scope, dimension))
        return decode(rows)

    def withhold(self, taken: Iterable[tuple[str, int, int]]) -> int:
        """Count ``(series key, lo, hi)`` as not done from now on, as the run's file check
        takes them back (nothing is written). Returns how many done periods that is."""
        for key, lo, hi in taken:
            self._withheld.setdefault(key, []).append((lo, hi))
        count = 0
        for key, spans in self._withheld.items():
            spans[:] = _merged(sorted(spans))
            # A run drops the stale provisional records before its check: not counted.
            done = self._recorded(key)[0]
            count += _size(done) - _size(subtract(done, spans))
        return count

    def of(self, series_key: str) -> tuple[list[Span], list[Span]]:
        done, stale = self._recorded(series_key)
        withheld = self._withheld.get(series_key)
        if withheld:
            done, stale = subtract(done, withheld), subtract(stale, withheld)
        return done, stale

    def _recorded(self, series_key: str) -> tuple[list[Span], list[Span]]:
        done: list[Span] = []
        stale: list[Span] = []
        query = "SELECT lo, hi, as_of FROM periods WHERE scope = ? AND series = ? ORDER BY lo"
        for db in self._dbs:
            for lo, hi, as_of in db.execute(query, (self._scope, series_key)):
                fresh = as_of in (_SETTLED, self._as_of)
                _add_span(done if fresh else stale, lo, hi)
        if len(self._dbs) > 1:
            done, stale = _merged(sorted(done)), _merged(sorted(stale))
        return done, stale

    def close(self) -> None:
        for db in self._dbs:
            db.close()
        if self._copies is not None:
            self._copies.cleanup()


_FINGERPRINTS = (
    "SELECT path, sequence, series, lo, hi, size, stamp FROM fingerprints "
    "WHERE scope = ? ORDER BY path, sequence"
)


def _fingerprint_query(scope: str, path: str | None) -> tuple[str, tuple[str, ...]]:
    """SQL and parameters finding a fingerprint of ``path`` (None: of any file)."""
    if path is None:
        return "SELECT 1 FROM fingerprints WHERE scope = ?", (scope,)
    return "SELECT 1 FROM fingerprints WHERE scope = ? AND path = ?", (scope, path)


def _latest(cursors: Sequence[Iterable[tuple[Any, ...]]]) -> Iterator[Fingerprint]:
    """The latest fingerprint of each path over ``cursors`` of :data:`_FINGERPRINTS`,
    streamed; files known to be gone (size -1) are left out."""
    rows = heapq.merge(*cursors, key=lambda r: (r[0], r[1]))
    for _, same in itertools.groupby(rows, key=lambda r: r[0]):
        *_, (path, sequence, series, lo, hi, size, stamp) = same
        if size >= 0:
            yield Fingerprint(path, series, lo, hi, size, stamp, sequence)


def _size(spans: Iterable[Span]) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)


def _add_span(spans: list[Span], lo: int, hi: int) -> None:
    """Append ``(lo, hi)``, joined to the last span when it touches or overlaps it."""
    if spans and spans[-1][0] <= lo <= spans[-1][1] + 1:
        spans[-1] = (spans[-1][0], max(hi, spans[-1][1]))
    else:
        spans.append((lo, hi))


def _merged(spans: Iterable[Span]) -> list[Span]:
    """Sorted spans, merged."""
    out: list[Span] = []
    for lo, hi in spans:
        _add_span(out, lo, hi)
    return out


def _unusable(path: Path, exc: sqlite3.Error) -> Unreachable:
    """The state cannot be used: exit 4 (the output cannot be used), never 1, which says
    that periods are missing. The line says why and what to do."""
    text = str(exc)
    if path.exists() and not path.is_file():
        return Unreachable(
            f"{path}: cannot use the resume state: it is not a file (a directory or something "
            "else is in its place); move it away, then rerun"
        )
    if isinstance(exc, sqlite3.OperationalError) and not text.startswith("file is not"):
        # The file may be fine: the disk is full, read-only, or failing. Deleting it would
        # throw away the record of what is done for nothing.
        return Unreachable(
            f"{path}: cannot use the resume state ({text}); free disk space or fix the "
            "permissions of the output directory, then rerun"
        )
    return Unreachable(
        f"{path}: the resume state is damaged ({text}). Delete it to go on: the data "
        "files stay as they are, only the record of what is done is lost, so the next run "
        "fetches every period of its windows again"
    )


class GroupRecorder:
    """:meth:`State.record` for many requests at once (group commit): the records made in one
    turn of the event loop go into one transaction at its end. A transaction costs SQLite
    more than its rows (a WAL frame per page it touches, at each commit), and the writes of
    one batch (see :class:`exporter.writers.PartitionWriter`) come back together, so their
    records share one. Each caller returns once its own record is committed; when the
    transaction fails, each record is tried again alone, so one that cannot be recorded fails
    only its own caller, as :meth:`State.record` would."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._pending: list[tuple[Record, asyncio.Future[None]]] = []

    async def record(
        self,
        series_key: str,
        spans: Sequence[Span],
        settle_from: int,
        written: Sequence[WrittenFile] = (),
    ) -> None:
        """As :meth:`State.record`; raises its ExporterError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._commit)
        self._pending.append((Record(series_key, spans, settle_from, written), future))
        await future

    def _commit(self) -> None:
        batch, self._pending = self._pending, []
        errors: list[Exception | None] = [None] * len(batch)
        try:
            self.state.record_many([record for record, _ in batch])
        except ExporterError:
            errors = [self._alone(record) for record, _ in batch]
        except Exception as exc:  # a bug: fail the callers rather than leave them waiting
            errors = [exc] * len(batch)
        for (_, future), error in zip(batch, errors, strict=True):
            if future.done():  # its caller was cancelled; the record stands
                continue
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

    def _alone(self, record: Record) -> ExporterError | None:
        try:
            self.state.record_many([record])
        except ExporterError as exc:
            return exc
        return None
