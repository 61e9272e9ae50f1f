"""What is already done, so a rerun resumes instead of re-fetching.

Done is recorded per series and period, not per request: whichever request brought a
period (Braze's windows may sit elsewhere than planned) and whatever the shard layout, a
period written is a period done. A record counts only for the same ``scope``: the source
(Braze host, or the sandbox), the output format and the time zone that decide the rows.

Periods close to the as-of date (``settle_days``) are recorded as *provisional*: Braze
restates recent data, so they count as done only for runs with the same as-of date (a
resumed run), and a later run reads them again.

Periods are recorded only after their rows are durably in their partition files, so a crash
at any moment loses at most the requests in flight, and those are simply fetched again (the
merge makes that harmless). SQLite in WAL mode survives ``kill -9`` of the writer at any
point. One run holds its file's lock for its whole life; shards each have their own file,
and every run also reads the records of the other layouts' files in the same directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError
from exporter.writers import WrittenFile

__all__ = ["Records", "State", "state_path"]

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
)


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
    ):
        """``scope`` names what decides a period's rows (source, format, time zone);
        ``as_of`` is the run's as-of date ordinal; file paths are recorded relative to
        ``root``. Raises ExporterError when the file is locked by another run or damaged."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._scope = scope
        self._as_of = as_of
        self._run_id = run_id
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

    def _others(self) -> Iterator[sqlite3.Connection]:
        """Read-only connections to the directory's other state files. One that is locked
        belongs to a shard of this layout running now: its series are not ours."""
        for other in sorted(self.path.parent.glob("state*.sqlite")):
            if other == self.path:
                continue
            try:
                yield sqlite3.connect(f"file:{other}?mode=ro", uri=True, timeout=0.1)
            except sqlite3.Error as exc:
                log.debug("cannot open %s: %s", other, exc)

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
        rows: list[tuple[str, str, int, int, int]] = []
        for lo, hi in spans:
            if lo < settle_from:
                rows.append((self._scope, series_key, lo, min(hi, settle_from - 1), _SETTLED))
            if hi >= settle_from:
                rows.append((self._scope, series_key, max(lo, settle_from), hi, self._as_of))
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                db.executemany("INSERT OR IGNORE INTO periods VALUES (?, ?, ?, ?, ?)", rows)
                db.executemany(
                    "INSERT INTO files (run_id, path, rows, sha256, version) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, path) DO UPDATE SET "
                    "rows = excluded.rows, sha256 = excluded.sha256, "
                    "version = excluded.version "
                    "WHERE excluded.version > files.version",  # writes may finish out of order
                    [
                        (
                            self._run_id,
                            os.path.relpath(f.path, self._root),
                            f.rows,
                            f.sha256,
                            f.version,
                        )
                        for f in written
                    ],
                )
                db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back itself (disk full): the first error is the news.
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise ExporterError(
                f"cannot record progress in {self.path} ({exc}); the rows are written, "
                "a rerun fetches them again"
            ) from None

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM meta WHERE scope = ? AND key = ?", (self._scope, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        try:
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES (?, ?, ?)", (self._scope, key, value)
            )
        except sqlite3.Error as exc:
            log.warning("cannot record %s in %s: %s", key, self.path, exc)

    def files(self) -> Iterator[tuple[str, int, str]]:
        """(path, rows, sha256) of every file this run wrote, by path."""
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
        self._copies = tempfile.TemporaryDirectory(prefix="braze-export-plan-")
        self._dbs: list[sqlite3.Connection] = []
        try:
            for path in paths:
                self._dbs.append(self._open(path))
        except BaseException:
            self.close()
            raise

    def _open(self, path: Path) -> sqlite3.Connection:
        try:
            wal = path.with_name(path.name + "-wal")
            if wal.exists():  # a run is writing it (or was killed): read a copy
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

    def of(self, series_key: str) -> tuple[list[Span], list[Span]]:
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
        self._copies.cleanup()


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


def _unusable(path: Path, exc: sqlite3.Error) -> ExporterError:
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and not text.startswith("file is not"):
        # The file may be fine: the disk is full, read-only, or failing. Deleting it would
        # throw away the record of what is done for nothing.
        return ExporterError(
            f"{path}: cannot use the resume state ({text}); free disk space or fix the "
            "permissions of the output directory, then rerun"
        )
    return ExporterError(
        f"{path}: the resume state is damaged ({text}). Delete it to go on: the data "
        "files stay as they are, only the record of what is done is lost, so the next run "
        "fetches every period of its windows again"
    )
