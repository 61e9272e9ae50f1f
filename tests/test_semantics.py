"""Real Braze, not our model of it: whatever window semantics the server has, every planned
period is written exactly once, or the run says precisely what it could not get."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.plan import build_plan, period_of
from exporter.sandbox import sandbox_stats
from tests.conftest import Cli, Ran, data_files
from tests.test_e2e import _check_every_row

AS_OF = "2024-07-01"
CONCURRENCY = 4
CONFIG = """\
version: 1
timezone: {tz}
limits: {{concurrency: {concurrency}}}
output: {{dir: {out}}}
exports:
  - name: backfill
    segment_ids: [seg-a, seg-b]
    app_ids: [null, app-1]
    units: [day]
    window: {{start: 2024-01-15, end: 2024-06-30}}
  - name: hourly
    segment_ids: [seg-a]
    app_ids: [null, app-1]
    units: [hour]
    window: {{days: 5}}
"""


def _rows(out: Path) -> list[dict[str, Any]]:
    rows = []
    for path in data_files(out):
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def _run(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    *,
    tz: str = "America/New_York",
    as_of: str = AS_OF,
    out_name: str = "out",
    **server: Any,
) -> tuple[Ran, Path, Path, int]:
    out = tmp_path / out_name
    config = write_config(CONFIG.format(tz=tz, out=out, concurrency=CONCURRENCY))
    server.setdefault("limit", 0)
    with cli.sandbox(**server) as handle:
        ran = cli("run", config, "--as-of", as_of)
        sent = sandbox_stats(handle.app).requests
    return ran, out, config, sent


@pytest.mark.parametrize(
    ("semantics", "tz", "hour_labels"),
    [
        ("contains", "America/New_York", "naive"),
        ("contains", "UTC", "z"),
        ("exclusive", "America/New_York", "offset"),
        ("exclusive", "UTC", "naive"),
        ("utc", "America/New_York", "z"),
        ("utc", "UTC", "offset"),
    ],
)
def test_every_planned_period_exactly_once_whatever_the_window_semantics(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
    semantics: str,
    tz: str,
    hour_labels: str,
) -> None:
    """Each planned period once with the sandbox's value, never the as-of day, and at most
    concurrency + one request per series over the minimum."""
    ran, out, config, sent = _run(
        tmp_path,
        write_config,
        cli,
        tz=tz,
        semantics=semantics,
        hour_labels=hour_labels,
    )
    assert ran.code == 0, ran.err
    plan = build_plan(load_config(config, env={}), date.fromisoformat(AS_OF))
    wanted = {
        (r.series.segment_id, r.series.app_id or "", r.series.unit, p)
        for r in plan.requests
        for p in range(r.first, r.last + 1)
    }
    rows = _rows(out)
    got = [
        (r["segment_id"], r["app_id"] or "", r["unit"], period_of(r["unit"], r["time"]))
        for r in rows
    ]
    assert sorted(got) == sorted(wanted)  # every planned period, each exactly once
    assert _check_every_row(out) == len(wanted)  # each with the sandbox's own value
    as_of_day = date.fromisoformat(AS_OF)
    assert not [r for r in rows if r["unit"] == "day" and r["time"][:10] >= AS_OF]
    local_end = datetime.combine(as_of_day, datetime.min.time(), ZoneInfo(tz)).timestamp()
    hours = [period_of("hour", r["time"]) for r in rows if r["unit"] == "hour"]
    assert max(hours) * 3600 < local_end
    assert sent <= len(plan.requests) + CONCURRENCY + len(plan.series)
    assert f"series: {len(plan.series)} complete, 0 incomplete, 0 failed" in ran.out


def test_calibration_is_logged_once_in_plain_words(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """An exclusive server: one line says windows end a period early and requests shift."""
    ran, *_ = _run(tmp_path, write_config, cli, semantics="exclusive")
    assert ran.code == 0
    said = [line for line in ran.err.splitlines() if "windows ending" in line]
    assert sorted(
        line.split(" ", 1)[1] for line in said
    ) == [  # one line per unit, whichever answered first
        "Braze returned day windows ending one day before the day containing ending_at; "
        "later requests are shifted to match",
        "Braze returned hour windows ending one hour before the hour containing ending_at; "
        "later requests are shifted to match",
    ]


def test_a_later_run_starts_from_the_measured_offset(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """The offset is kept in the state: a --fresh rerun sends exactly the minimum."""
    ran, _out, config, _ = _run(tmp_path, write_config, cli, semantics="exclusive")
    assert ran.code == 0
    plan = build_plan(load_config(config, env={}), date.fromisoformat(AS_OF))
    with cli.sandbox(limit=0, semantics="exclusive") as handle:
        assert main(["run", str(config), "--as-of", AS_OF, "--fresh"]) == 0
        assert sandbox_stats(handle.app).requests == len(plan.requests)


def test_periods_the_server_never_returns_are_reported_missing(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """A hole in Braze's data: one gap-fill pass, then exit 1 with the missing ranges listed
    in the summary and the manifest; everything else is written."""
    ran, out, config, sent = _run(
        tmp_path,
        write_config,
        cli,
        missing_days=frozenset({"2024-03-10", "2024-03-11"}),
    )
    printed = ran.out
    assert ran.code == 1
    plan = build_plan(load_config(config, env={}), date.fromisoformat(AS_OF))
    day_series = [s for s in plan.series if s.unit == "day"]
    assert f"{len(plan.series) - len(day_series)} complete, {len(day_series)} incomplete" in (
        printed
    )
    assert "missing 2024-03-10..2024-03-11" in printed
    assert "periods: " in printed
    assert f" {2 * len(day_series)} missing;" in printed
    assert sent == len(plan.requests) + len(day_series)  # one pass, then it stops
    manifest = json.loads(next((out / "_runs").glob("*.json")).read_text())
    totals = manifest["totals"]
    assert totals["series_incomplete"] == len(day_series)
    assert totals["periods_missing"] == 2 * len(day_series)
    assert {tuple(i["missing"]) for i in totals["incomplete"]} == {("2024-03-10..2024-03-11",)}
    assert not [r for r in _rows(out) if r["time"] in ("2024-03-10", "2024-03-11")]


def test_recent_periods_are_read_again_by_a_later_run(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
) -> None:
    """settle_days: a resumed run (same as-of) skips everything, the next day's run re-reads
    the series whose last days were still settling."""
    ran, _out, config, _ = _run(tmp_path, write_config, cli)
    assert ran.code == 0
    with cli.sandbox(limit=0) as handle:
        assert main(["run", str(config), "--as-of", AS_OF]) == 0
        assert sandbox_stats(handle.app).requests == 0
        assert main(["run", str(config), "--as-of", "2024-07-02"]) == 0
        # Every series re-reads its settling periods and the new day in one request (the
        # window's slices cost an hour series two: its unsettled hours straddled them).
        assert sandbox_stats(handle.app).requests == 6
