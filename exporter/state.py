"""What is already done, so a rerun resumes instead of re-fetching.

A request is recorded only after its rows are in their partition files, so a crash at any
moment loses at most the requests in flight, and those are simply fetched again (the merge
makes that harmless). SQLite in WAL mode survives ``kill -9`` of the writer at any point.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exporter.plan import Request

__all__ = ["STATE_FILE", "State"]

STATE_FILE = "state.sqlite"


class State:
    def __init__(self, path: Path, *, scope: str) -> None:
        """``scope`` names what else decides a request's rows (format, time zone)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._scope = scope
        # Shards of one export may share the directory: wait for each other's commits.
        self._db = sqlite3.connect(path, isolation_level=None, timeout=60)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL skips the fsync per commit; WAL still keeps every commit across a process kill.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS done (key TEXT PRIMARY KEY, rows INTEGER)")

    def _key(self, request: Request) -> str:
        return f"{self._scope}\x1e{request.key}"

    def is_done(self, request: Request) -> bool:
        row = self._db.execute("SELECT 1 FROM done WHERE key = ?", (self._key(request),))
        return row.fetchone() is not None

    def mark_done(self, request: Request, rows: int) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO done (key, rows) VALUES (?, ?)", (self._key(request), rows)
        )

    def close(self) -> None:
        self._db.close()
