"""Odd answers a real server may give: each is data to cope with, never a crash or a loss."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.client import Response, interpret
from exporter.errors import ExporterError
from exporter.manifest import verify
from exporter.plan import Request, Series
from exporter.ratelimit import RateHeaders, parse_rate_headers
from exporter.sandbox import sandbox_stats
from exporter.state import State, state_path
from tests.conftest import Cli, Ran
from tests.test_e2e import _check_every_row

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
timezone: America/New_York
limits: {{concurrency: 4}}
output: {{dir: {out}}}
exports:
  - name: e
    segment_ids: [seg-a, seg-b, seg-c, seg-d]
    units: [day, hour]
    window: {{days: 3}}
"""


def _run(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    **server: Any,
) -> tuple[Ran, Path, int]:
    out = tmp_path / "out"
    config = write_config(CONFIG.format(out=out))
    server.setdefault("limit", 0)
    with cli.sandbox(**server) as handle:
        ran = cli("run", config, "--as-of", AS_OF)
        return ran, out, sandbox_stats(handle.app).requests


def test_a_body_that_arrives_in_pieces_is_read_whole(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """200 bodies written in 20 pieces 1 ms apart: every row, no retry."""
    ran, out, sent = _run(tmp_path, write_config, cli, body_pieces=20)
    assert ran.code == 0
    assert _check_every_row(out) == 4 * (3 + 72)
    assert sent == 8


def test_one_segment_answering_404_fails_alone(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """A 404 for one segment is that segment's failure, not a reason to stop the run."""
    ran, out, _ = _run(tmp_path, write_config, cli, not_found_segments={"seg-a"})
    printed = ran.out
    assert ran.code == 1
    assert "series: 6 complete, 0 incomplete, 2 failed (of 8)" in printed
    assert "0 dropped (other requests brought their periods)" in printed  # moot ones: not counted
    assert _check_every_row(out) == 3 * (3 + 72)


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "Infinity"])
def test_non_finite_header_values_are_ignored(value: str) -> None:
    """NaN and infinities are no rate-limit value: read as missing, never an overflow."""
    headers = {
        "X-RateLimit-Limit": value,
        "X-RateLimit-Remaining": value,
        "X-RateLimit-Reset": value,
        "Retry-After": value,
    }
    assert parse_rate_headers(headers, 1_700_000_000.0) == RateHeaders()


def _one_point(unit: str, label: str, sessions: object) -> list[int]:
    request = Request(Series("s", None, unit), 0, 1, "x")  # type: ignore[arg-type]
    body = json.dumps({"message": "success", "data": [{"time": label, "sessions": sessions}]})
    points = interpret(request, Response(200, RateHeaders(), body.encode()))
    return [int(p.value) for p in points if not isinstance(p.value, tuple)]


def test_a_lowercase_z_and_a_whole_float_are_plausible() -> None:
    """RFC 3339 allows 't' and 'z'; 40463.0 is a whole count."""
    assert _one_point("hour", "2024-01-05t10:00:00z", 3) == [3]
    assert _one_point("day", "2024-01-05", 40463.0) == [40463]


def test_a_port_out_of_range_is_a_config_error(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """braze.endpoint with port 99999 is refused by validate, not a traceback in run."""
    text = CONFIG.format(out="o").replace(
        "version: 1", 'version: 1\nbraze: {endpoint: "https://x:99999"}'
    )
    assert main(["validate", str(write_config(text))]) == 2
    assert "port out of range" in capsys.readouterr().err


def test_a_failed_commit_reports_its_own_error(tmp_path: Path) -> None:
    """When COMMIT fails and SQLite already rolled back, the error says why it failed."""
    state = State(state_path(tmp_path, None), scope="s", as_of=date(2024, 7, 1).toordinal())

    class FailingCommit:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def execute(self, sql: str, *args: Any) -> Any:
            if sql == "COMMIT":
                self.db.execute("ROLLBACK")
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def executemany(self, sql: str, rows: Any) -> Any:
            return self.db.executemany(sql, rows)

    state._db = FailingCommit(state._db)  # type: ignore[assignment]
    with pytest.raises(ExporterError, match="disk is full"):
        state.record("s", [(1, 2)], 10)


def test_an_empty_journal_vouches_for_nothing_and_breaks_nothing(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """A 0-byte journal (a run that hit a full disk at its start) does not break verify."""
    out = tmp_path / "out"
    config = write_config(CONFIG.format(out=out))
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    (out / "_runs" / "20240101T000000Z-dead00.journal.jsonl").write_bytes(b"")
    report = verify(out)
    assert report.ok > 0
    assert not report.changed
    assert not report.unknown


@pytest.mark.parametrize(
    ("unit", "label", "zone", "expected"),
    [
        ("hour", "2026-11-17T03:30:00+05:30", "UTC", "2026-11-16T22:00:00+00:00"),
        ("day", "2026-11-19T15:00:00Z", "Asia/Tokyo", "2026-11-20"),  # Tokyo's midnight
        ("day", "2026-11-20T05:00:00Z", "America/New_York", "2026-11-20"),
        ("day", "2026-11-20T00:00:00", "Asia/Tokyo", "2026-11-20"),  # naive: as written
    ],
)
def test_labels_are_read_as_the_instant_they_name(
    unit: str, label: str, zone: str, expected: str
) -> None:
    """An offset is honoured: hours on a whole UTC hour in any offset, day instants in the
    config's zone (never the UTC date of a Tokyo midnight)."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from exporter.plan import period_of

    period = period_of(unit, label, ZoneInfo(zone))  # type: ignore[arg-type]
    if unit == "day":
        assert date.fromordinal(period).isoformat() == expected
    else:
        assert datetime.fromisoformat(expected).timestamp() == period * 3600


def test_a_bare_date_is_no_hour_label() -> None:
    """'2026-11-13' in an hour series would put a day's count into an hour: malformed."""
    from exporter.plan import period_of

    with pytest.raises(ValueError, match="no time of day"):
        period_of("hour", "2026-11-13")
