"""End to end through the CLI, the real HTTP path and the sandbox on loopback."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.plan import Series, build_plan
from exporter.sandbox import sandbox_stats, session_count
from exporter.writers import partition_path
from tests.conftest import Cli, data_files

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
timezone: America/New_York
limits: {{concurrency: 8}}
output: {{dir: {out}, format: {fmt}}}
exports:
  - name: nightly
    segment_ids: [seg-a, "odd/seg id"]
    app_ids: [null, app-1]
    units: [day, hour]
    window: {{days: 3}}
  - name: backfill
    segment_ids: [seg-a]
    units: [day]
    window: {{start: 2024-01-01, end: 2024-06-30}}
"""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """A data file's rows as dicts, in file order, whatever its format."""
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().split("\n") if x]
    with path.open(newline="") as f:
        return [
            {**r, "sessions": int(r["sessions"]), "app_id": r["app_id"] or None}
            for r in csv.DictReader(f)
        ]


def _check_every_row(out: Path) -> int:
    """Every row equals the sandbox's own value, in the file of its series; returns how many
    rows there are."""
    count = 0
    for path in data_files(out):
        rows = read_rows(path)
        times = [r["time"] for r in rows]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        for row in rows:
            series = Series(row["segment_id"], row["app_id"], row["unit"])
            assert partition_path(out, series, path.stem, path.suffix[1:]) == path
            assert row["sessions"] == session_count(
                row["segment_id"], row["app_id"], row["unit"], row["time"]
            )
        count += len(rows)
    return count


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_sandbox_run_writes_every_point_exactly_once(
    tmp_path: Path,
    write_config: Callable[..., Path],
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run --sandbox writes every planned period once, each with the sandbox's value."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt=fmt))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    plan = build_plan(load_config(path, env={}), date.fromisoformat(AS_OF))
    assert _check_every_row(out) == sum(r.length for r in plan.requests)
    summary = capsys.readouterr().out
    assert f"series: {len(plan.series)} complete, 0 incomplete, 0 failed" in summary
    assert f"requests: {len(plan.requests)} done" in summary
    hour_files = list((out / "sessions/hour").rglob(f"*.{fmt}"))
    assert {p.name for p in hour_files} == {f"2024-06-{d}.{fmt}" for d in (28, 29, 30)} | {
        f"2024-07-01.{fmt}"
    }  # New York days end at 04:00 UTC the next day


def test_real_endpoint_path_key_resume_and_fresh(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """With the key from the environment: a rerun skips done requests, --fresh refetches
    and rewrites byte-identical files."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    with cli.sandbox() as server:
        assert cli("run", path, "--as-of", AS_OF).code == 0
        first = {p: p.read_bytes() for p in data_files(out)}
        sent_first = sandbox_stats(server.app).requests
        rerun = cli("run", path, "--as-of", AS_OF)
        assert rerun.code == 0
        assert sandbox_stats(server.app).requests == sent_first  # nothing fetched again
        assert "0 done" in rerun.out
        assert cli("run", path, "--as-of", AS_OF, "--fresh").code == 0
        assert sandbox_stats(server.app).requests == 2 * sent_first
    assert {p: p.read_bytes() for p in data_files(out)} == first


def test_auth_refused_exits_3_with_advice(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong key stops the run with exit 3 and says what to check."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    monkeypatch.setenv("BRAZE_API_KEY", "wrong-key-0123456789")
    ran, stats = cli.against_sandbox("run", path, "--as-of", AS_OF)
    assert ran.code == 3
    err = ran.err
    assert "HTTP 401" in err
    assert "sessions.data_series" in err
    assert "wrong-key-0123456789" not in err
    # limits.concurrency: those in flight at the first 401, none after it
    assert stats.requests <= 8
    assert data_files(out) == []


def test_denied_permission_exits_3(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A 403 stops the run with exit 3."""
    path = write_config(CONFIG.format(out=tmp_path / "out", fmt="jsonl"))
    ran, _ = cli.against_sandbox("run", path, "--as-of", AS_OF, deny=True)
    assert ran.code == 3
    assert "HTTP 403" in ran.err


def test_a_rejected_series_fails_alone(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A 400 fails that segment's series, the others are written, exit 1 lists the failures."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    ran, stats = cli.against_sandbox(
        "run", path, "--as-of", AS_OF, reject_segments=frozenset({"odd/seg id"})
    )
    assert ran.code == 1
    rejected = stats.requests - stats.ok
    summary = ran.out
    assert "series: 4 complete, 0 incomplete, 4 failed" in summary
    assert (
        "failed sessions/day/segment-odd%2Fseg%20id/workspace: HTTP 400: Invalid segment_id"
        in summary
    )
    assert rejected == 4  # one request per failed series: no retries of a 400
    assert _check_every_row(out) > 0
    assert not (out / "sessions/day/segment-odd%2Fseg%20id").exists()


def test_rate_limited_run_waits_for_reset_and_completes(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """Against a tiny window the run pauses at the reserve and still writes everything."""
    out = tmp_path / "out"
    text = """\
version: 1
limits: {requests_per_hour: 1000000, reserve: 0.2, concurrency: 4}
exports:
  - name: many
    segment_ids: [s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12]
    window: {days: 1}
"""
    path = write_config(text)
    ran, stats = cli.against_sandbox(
        "run", path, "--as-of", AS_OF, "--out", out, limit=5, window_s=1.0
    )
    assert ran.code == 0
    assert stats.ok == 12
    assert stats.max_in_window <= 5
    assert _check_every_row(out) == 12


def test_config_error_exits_2_and_writes_nothing(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An invalid config is exit 2 with the key path; no output directory appears."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl").replace("days: 3", "days: 0"))
    assert main(["run", str(path), "--sandbox"]) == 2
    assert "exports[0].window.days: must be >= 1, got 0" in capsys.readouterr().err
    assert not out.exists()


def test_run_without_key_exits_2(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No key in the environment: exit 2 before anything is fetched or written."""
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY_FILE", raising=False)
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    assert main(["run", str(path)]) == 2
    assert "BRAZE_API_KEY is not set" in capsys.readouterr().err
    assert not out.exists()


def test_plan_json_lists_every_request(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan --json --requests has one entry per request with Braze's parameters."""
    path = write_config(CONFIG.format(out=tmp_path / "out", fmt="jsonl"))
    assert main(["plan", str(path), "--as-of", AS_OF, "--json", "--requests"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["series"] == 8
    # 7 series x 1 request; seg-a's day series is the backfill's 182 days, which contain
    # the nightly's 3, in 2 requests.
    assert len(doc["requests"]) == 9
    first = doc["requests"][0]
    assert set(first) == {"segment_id", "app_id", "unit", "path", "length", "ending_at"}


def test_plan_and_validate_summaries(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan states series, requests, budget and time; validate summarises the config."""
    path = write_config(CONFIG.format(out=tmp_path / "out", fmt="jsonl"))
    assert main(["plan", str(path), "--as-of", AS_OF]) == 0
    text = capsys.readouterr().out
    assert "series:   8" in text
    assert "requests: 9" in text
    assert "250,000 requests/hour" in text
    assert "time:" in text
    assert main(["validate", str(path)]) == 0
    assert "valid. 2 export(s)" in capsys.readouterr().out


def test_restated_values_replace_old_ones_without_duplicates(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """When Braze restates recent days, a rerun over them overwrites those rows in place and
    leaves older rows untouched."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    day = out / "sessions/day/segment-seg-a/workspace/2024-06.jsonl"
    # The sandbox's "now" is the as-of date, so the last 3 days are the recent ones.
    now = datetime(2024, 7, 1, 6, tzinfo=UTC).timestamp()
    first, _ = cli.against_sandbox("run", path, "--as-of", AS_OF, clock=lambda: now)
    assert first.code == 0
    before = [json.loads(line) for line in day.read_text().splitlines()]
    fresh, _ = cli.against_sandbox(
        "run", path, "--as-of", AS_OF, "--fresh", clock=lambda: now, restate=7
    )
    assert fresh.code == 0
    after = [json.loads(line) for line in day.read_text().splitlines()]
    assert [r["time"] for r in after] == [r["time"] for r in before]  # no row added
    changed = [b["time"] for b, a in zip(before, after, strict=True) if b != a]
    assert changed == ["2024-06-28", "2024-06-29", "2024-06-30"]
    for row in after:
        restate = 7 if row["time"] in changed else 0
        assert row["sessions"] == session_count("seg-a", None, "day", row["time"], restate)


def test_an_unusable_output_directory_is_a_usage_error(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--out below a regular file: exit 2 with the reason, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = write_config(CONFIG.format(out=tmp_path / "out", fmt="jsonl"))
    assert main(["run", str(path), "--sandbox", "--out", str(blocker / "sub")]) == 2
    assert f"--out: {blocker} is a file, not a directory" in capsys.readouterr().err


def test_a_sandbox_run_never_writes_into_output_dir(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without --out, run --sandbox writes to ./sandbox-out, never to output.dir, and its
    manifest says the rows came from the sandbox."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    assert main(["run", str(path), "--sandbox", "--as-of", AS_OF]) == 0
    assert not out.exists()
    assert _check_every_row(tmp_path / "sandbox-out") > 0
    (manifest,) = (tmp_path / "sandbox-out/_runs").glob("*.json")
    doc = json.loads(manifest.read_text())
    assert doc["source"] == {"sandbox": True, "endpoint_host": "127.0.0.1"}


def test_a_real_runs_manifest_names_its_endpoint_host(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any, cli: Cli, env_key: str
) -> None:
    """A run against an endpoint whose answers do not name the sandbox (as Braze's do not)
    records that host and that it was not the sandbox."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl").replace("days: 3", "days: 1"))
    with sandbox_server(identify=False) as server:
        cli.point_at(server.url.replace("127.0.0.1", "localhost"))
        assert cli("run", path, "--as-of", AS_OF).code == 0
    (manifest,) = (out / "_runs").glob("*.json")
    doc = json.loads(manifest.read_text())
    assert doc["source"] == {"sandbox": False, "endpoint_host": "localhost"}


def test_a_series_error_names_its_series_once(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A write failure reads `failed <label>: cannot write ...`, the label not repeated."""
    out = tmp_path / "out"
    (out / "sessions").mkdir(parents=True)
    (out / "sessions/hour").write_text("in the way")
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 1
    captured = capsys.readouterr()
    (line,) = [x for x in captured.out.splitlines() if "sessions/hour/segment-seg-a/workspace" in x]
    assert line.startswith("failed sessions/hour/segment-seg-a/workspace: cannot write ")
    assert line.count("workspace:") == 1
