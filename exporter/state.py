"""What is already done, so a rerun resumes instead of re-fetching.

A request is recorded only after its rows are in their partition files, so a crash at any
moment loses at most the requests in flight, and those are simply fetched again (the merge
makes that harmless). SQLite in WAL mode survives ``kill -9`` of the writer at any point.
One run holds the file's lock for its whole life; shards each have their own file.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path

from exporter.errors import ExporterError
from exporter.plan import Request
from exporter.writers import WrittenFile

__all__ = ["State", "state_path"]


def state_path(work_dir: Path, shard: tuple[int, int] | None) -> Path:
    """One state file per shard, so parallel shards never wait for each other's locks."""
    return work_dir / ("state.sqlite" if shard is None else f"state-{shard[0]}of{shard[1]}.sqlite")


class State:
    """Done requests, and the files this run wrote (for its manifest, kept out of memory)."""

    def __init__(self, path: Path, *, scope: str, run_id: str = "", root: Path | None = None):
        """``scope`` names what else decides a request's rows (format, time zone); file
        paths are recorded relative to ``root``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._scope = scope
        self._run_id = run_id
        self._root = str(root if root is not None else path.parent.parent)
        self._db = sqlite3.connect(path, isolation_level=None, timeout=2)
        try:
            # One run owns the file: an exclusive lock taken once, not per commit.
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL skips the fsync per commit; WAL still keeps every commit across a kill.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, rows INTEGER) WITHOUT ROWID"
            )
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS files (run_id TEXT, path TEXT, rows INTEGER, "
                "sha256 TEXT, version INTEGER, PRIMARY KEY (run_id, path)) WITHOUT ROWID"
            )
            self._db.execute("BEGIN IMMEDIATE")  # take the lock now, not at the first write
            self._db.execute("COMMIT")
            self._empty = self._db.execute("SELECT 1 FROM done LIMIT 1").fetchone() is None
        except sqlite3.OperationalError as exc:
            self._db.close()
            if "locked" in str(exc):
                raise ExporterError(
                    f"{path.parent.parent}: another run is exporting into this directory "
                    "right now; wait for it to finish, or use another --out"
                ) from None
            raise ExporterError(f"{path}: cannot open the resume state: {exc}") from None

    def _key(self, request: Request) -> str:
        return f"{self._scope}\x1e{request.key}"

    def is_done(self, request: Request) -> bool:
        if self._empty:  # a first run: no lookup per request
            return False
        row = self._db.execute("SELECT 1 FROM done WHERE key = ?", (self._key(request),))
        return row.fetchone() is not None

    def mark_done(self, request: Request, rows: int, written: Iterable[WrittenFile] = ()) -> None:
        """Record the request as done, with the files it wrote, in one transaction."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.execute(
                "INSERT OR REPLACE INTO done (key, rows) VALUES (?, ?)", (self._key(request), rows)
            )
            db.executemany(
                "INSERT INTO files (run_id, path, rows, sha256, version) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (run_id, path) DO UPDATE SET rows = excluded.rows, "
                "sha256 = excluded.sha256, version = excluded.version "
                "WHERE excluded.version > files.version",  # two requests may finish out of order
                [
                    (self._run_id, os.path.relpath(f.path, self._root), f.rows, f.sha256, f.version)
                    for f in written
                ],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def files(self) -> Iterator[tuple[str, int, str]]:
        """(path, rows, sha256) of every file this run wrote, by path."""
        yield from self._db.execute(
            "SELECT path, rows, sha256 FROM files WHERE run_id = ? ORDER BY path", (self._run_id,)
        )

    def file_count(self) -> int:
        row = self._db.execute("SELECT count(*) FROM files WHERE run_id = ?", (self._run_id,))
        count: int = row.fetchone()[0]
        return count

    def close(self) -> None:
        self._db.close()
