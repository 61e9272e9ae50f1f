"""Operating it: progress, JSON logs, the run manifest and verify, sharding."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.logs import new_run_id, setup_logging
from exporter.pipeline import RunResult
from exporter.plan import Plan, Request, build_plan
from exporter.progress import Progress, pause_notes, status_line
from exporter.ratelimit import Budget, RateHeaders
from exporter.redact import redacted_streams, register_secret
from exporter.storage import DirLock
from tests.conftest import KEY, Cli, FakeClock, snapshot

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
output: {{dir: {out}}}
exports:
  - name: daily
    segment_ids: [s1, s2, s3, s4, s5, s6, s7, s8]
    app_ids: [null, app-1]
    window: {{days: 5}}
  - name: hourly
    segment_ids: [s1, s2]
    units: [hour]
    window: {{days: 2}}
"""


def _manifest(out: Path) -> dict[str, Any]:
    (path,) = (out / "_runs").glob("*.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_manifest_records_the_run(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The manifest has config hash, as-of, counts per export, budget and every file's sha."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    doc = _manifest(out)
    assert doc["config"] == {"path": str(path), "sha256": load_config(path, env={}).fingerprint}
    assert doc["as_of"] == AS_OF
    assert doc["exit_code"] == 0
    assert doc["totals"]["series"] == 18
    assert doc["totals"]["rows_written"] == 16 * 5 + 2 * 48
    assert doc["exports"]["daily"]["series_complete"] == 16
    assert doc["exports"]["hourly"]["requests_done"] == 2
    assert doc["budget"]["allowed_per_hour"] == 250_000
    assert doc["budget"]["requests_sent"] == doc["totals"]["requests_made"] == 18
    files = {f["path"]: f for f in doc["files"]}
    assert len(files) == 16 + 4
    data = out / "sessions/day/segment-s1/workspace/2024-06.jsonl"
    assert files["sessions/day/segment-s1/workspace/2024-06.jsonl"]["rows"] == 5
    assert data.read_text().count("\n") == 5
    assert f"manifest: {out}/_runs/" in capsys.readouterr().out


def test_verify_reports_changed_and_missing_files(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """verify passes on untouched output and names every changed or missing file."""
    out = tmp_path / "out"
    config = write_config(CONFIG.format(out=out))
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    assert main(["verify", str(out)]) == 0
    assert "20 file(s) ok, 0 changed, 0 missing" in capsys.readouterr().out
    changed = out / "sessions/day/segment-s2/app-app-1/2024-06.jsonl"
    changed.write_text(changed.read_text().replace("s2", "s9"))
    (out / "sessions/hour/segment-s1/workspace/2024-06-29.jsonl").unlink()
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "changed: sessions/day/segment-s2/app-app-1/2024-06.jsonl" in text
    assert "missing: sessions/hour/segment-s1/workspace/2024-06-29.jsonl" in text


def test_verify_without_manifest_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A directory no run wrote is said to have no manifest."""
    assert main(["verify", str(tmp_path)]) == 1
    assert "no run manifest" in capsys.readouterr().err


def test_verify_names_files_no_run_recorded(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A junk file under sessions/ is reported as unknown and fails verify."""
    out = tmp_path / "out"
    config = write_config(CONFIG.format(out=out))
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    (out / "sessions/day/segment-s1/junk.txt").write_text("hello")
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "unknown: sessions/day/segment-s1/junk.txt" in text
    assert "20 file(s) ok, 0 changed, 0 missing, 1 unknown" in text


def test_verify_counts_a_killed_runs_files_by_its_journal(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Files of a run that never wrote its manifest are checked against its journal, and the
    latest run's record of a file wins over an earlier one's."""
    out = tmp_path / "out"
    config = write_config(CONFIG.format(out=out))
    run = ["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]
    assert main(run) == 0
    assert main([*run, "--fresh"]) == 0
    # Two runs in one second: their run ids need not sort in run order; sequences do.
    docs = {path: json.loads(path.read_text()) for path in (out / "_runs").glob("*.json")}
    manifests = sorted(docs, key=lambda path: docs[path]["sequence"])
    first = docs[manifests[0]]
    # The earlier run as if killed before its manifest, with an older content of one file:
    journal = out / "_runs" / f"{first['run_id']}.journal.jsonl"
    lines = [{"run_id": first["run_id"], "sequence": first["sequence"]}, *first["files"]]
    lines[1] = {**lines[1], "sha256": "0" * 64}
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"path": "torn')
    manifests[0].unlink()
    assert list((out / "_runs").glob("*.journal.jsonl")) == [journal]
    assert main(["verify", str(out)]) == 0
    assert "20 file(s) ok, 0 changed, 0 missing, 0 unknown" in capsys.readouterr().out
    manifests[1].unlink()  # now only the journal vouches, and its first record is stale
    assert main(["verify", str(out)]) == 1
    assert f"changed: {lines[1]['path']}" in capsys.readouterr().out


def test_verify_of_a_missing_directory_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """verify /nonexistent exits 2 with one line."""
    assert main(["verify", str(tmp_path / "nonexistent")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nonexistent'}: no such directory\n"


def test_verify_waits_for_a_run_in_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """While a run holds the directory, verify exits 5 naming it instead of reporting its
    half-written state."""
    holder = DirLock.acquire(tmp_path, layout="L", shard=None, command="braze-export run x")
    try:
        assert main(["verify", str(tmp_path)]) == 5
    finally:
        holder.release()
    assert "being written by a run (pid" in capsys.readouterr().err


def test_json_logs_carry_run_id_and_event(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--log-format json: every stderr line is an object with run_id and event; no key."""
    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out))
    run = ["run", str(path), "--as-of", AS_OF, "--progress-interval", "0.01"]
    ran, _ = cli.against_sandbox("--log-format", "json", *run, reject_segments=frozenset({"s3"}))
    assert ran.code == 1
    err = ran.err
    records = [json.loads(line) for line in err.splitlines()]  # every line, none plain
    assert records
    assert {r["run_id"] for r in records} == {_manifest(out)["run_id"]}
    events = {r["event"] for r in records}
    assert {"series_failed", "run_finished"} <= events
    failed = next(r for r in records if r["event"] == "series_failed")
    assert (failed["series"], failed["segment_id"]) == ("sessions", "s3")  # fields, not a label
    assert failed["app_id"] is None
    assert failed["unit"] in ("day", "hour")
    assert KEY not in err


def test_redaction_filter_hides_the_key_even_if_logged() -> None:
    """A library that logged the key would show *** instead."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:]
    try:
        with redacted_streams():
            register_secret("sekrit-0123456789")
            setup_logging("INFO", "text", run_id="r1", stream=stream)
            logging.getLogger("somelib").warning("header: Bearer %s", "sekrit-0123456789")
    finally:
        root.handlers[:] = saved
    assert "sekrit" not in stream.getvalue()
    assert "Bearer ***" in stream.getvalue()


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_libraries_info_lines_show_only_at_debug(level: str) -> None:
    """botocore's "Found credentials" INFO line is chatter at INFO (our own INFO lines and
    every library's warnings stay); --log-level DEBUG shows it."""
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        setup_logging(level, "text", run_id="r1", stream=stream)
        logging.getLogger("botocore.credentials").info("Found credentials in environment")
        logging.getLogger("s3fs").info("s3fs chatter")
        logging.getLogger("exporter.runner").info("our own line")
        logging.getLogger("botocore.hooks").warning("a library warning")
    finally:
        root.handlers[:], root.level = saved
    out = stream.getvalue()
    assert "our own line" in out
    assert "a library warning" in out
    assert ("Found credentials" in out) is (level == "DEBUG")
    assert ("s3fs chatter" in out) is (level == "DEBUG")


def test_run_ids_sort_by_start_time() -> None:
    """Run ids start with a UTC timestamp to the millisecond, so manifests list in run order,
    also for two runs started in the same second (a quick rerun: verify's "later runs win")."""
    assert new_run_id(1_700_000_000) < new_run_id(1_700_000_001)
    for _ in range(20):  # the random suffix must never decide the order
        assert new_run_id(1_700_000_000.1) < new_run_id(1_700_000_000.9)
    assert new_run_id(1_700_000_000.25).startswith("20231114T221320.250Z-")


def _plan() -> Plan:
    return Plan(date(2024, 7, 1), "UTC", (), ())


def test_progress_redraws_one_line_on_a_terminal() -> None:
    """Interactive progress rewrites the same line with a carriage return."""
    stream = io.StringIO()
    progress = Progress(stream, lambda: "series 1/2", interactive=True, interval_s=1)
    progress.draw()
    progress.draw()
    progress.close()
    assert stream.getvalue().count("\r") == 3
    assert "\n" not in stream.getvalue()


def test_progress_logs_a_line_per_interval_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    """Without a terminal each update is one log record, no carriage return."""
    stream = io.StringIO()
    progress = Progress(stream, lambda: "series 1/2", interactive=False, interval_s=10)
    with caplog.at_level(logging.INFO):
        progress.draw()
    assert [r.getMessage() for r in caplog.records] == ["progress: series 1/2"]
    assert stream.getvalue() == ""


def test_status_line_says_what_matters() -> None:
    """Series and requests done, rate, ETA, retries, 429s and failures are all shown."""
    result = RunResult(requests_planned=100)
    result.totals.sent, result.totals.done, result.totals.retries = 50, 40, 10
    result.totals.rate_limited = 2
    line = status_line(result, _plan(), elapsed=10)
    assert line == (
        "series 0/0 complete | requests 40/100 | 5.0 req/s | ETA 12.0s | retries 10 | "
        "429s 2 | failed 0"
    )


# 2026-12-03 14:00:00 UTC
_AT_14H = datetime(2026, 12, 3, 14, 0, tzinfo=UTC).timestamp()


def _half_done() -> RunResult:
    """100 requests planned, 40 done at 5 sent per second: 12 s left at that rate."""
    result = RunResult(requests_planned=100)
    result.totals.sent, result.totals.done = 50, 40
    return result


@pytest.mark.parametrize(
    ("pause", "says", "eta"),
    [
        (
            lambda b, now: b.rate_limited(RateHeaders(limit=20, remaining=0, reset_at=now + 190)),
            "paused until 14:03:10 UTC: 429, Reset",
            "3m22s",
        ),
        (
            lambda b, now: b.observe(RateHeaders(limit=1000, remaining=50, reset_at=now + 60)),
            "paused until 14:01:00 UTC: reserve reached",
            "1m12s",
        ),
        (
            lambda b, now: b.rate_limited(RateHeaders(retry_after_at=now + 3000)),
            "paused until 14:50:00 UTC: 429, Retry-After",
            "50m12s",
        ),
    ],
    ids=["429-reset", "reserve", "retry-after"],
)
def test_the_progress_line_says_a_pause_and_counts_it_in_the_eta(
    pause: Callable[[Budget, float], object], says: str, eta: str
) -> None:
    """While the budget is paused the line says until when (UTC) and why, and the ETA is
    the rest of the pause plus the requests left at the rate so far."""
    clock = FakeClock(_AT_14H)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    pause(budget, clock.now)
    line = status_line(_half_done(), _plan(), elapsed=10, budgets=[budget])
    assert f"| 5.0 req/s | {says} | ETA {eta} |" in line
    clock.now += budget.paused_for  # the gate opens: the line is as before
    assert "paused" not in status_line(_half_done(), _plan(), elapsed=10, budgets=[budget])


def test_an_ignored_ask_to_wait_days_makes_the_eta_unknown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 429 with Retry-After of 3 days (ignored: implausible) shows the server's ask and
    an unknown ETA, never the seconds of the backoff; the warning names the rule that
    applied. A success ends it."""
    clock = FakeClock(_AT_14H)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    with caplog.at_level(logging.WARNING):
        budget.rate_limited(RateHeaders(retry_after_at=clock.now + 3 * 86400))
    warning = caplog.records[0].getMessage()
    assert warning.startswith("Retry-After asks for a wait of 259200s, more than an hour ahead")
    line = status_line(_half_done(), _plan(), elapsed=10, budgets=[budget])
    assert "| server asked to wait 72h00m, ignored: implausible |" in line
    assert "| ETA unknown |" in line
    clock.now += budget.paused_for
    budget.observe(RateHeaders(limit=1000, remaining=900, reset_at=clock.now + 60))
    line = status_line(_half_done(), _plan(), elapsed=10, budgets=[budget])
    assert "server asked" not in line
    assert "ETA unknown" not in line


def test_a_paused_list_pool_is_named() -> None:
    """A pause of a pool other than the workspace's names that pool."""
    clock = FakeClock(_AT_14H)
    lists = Budget(1000, 1.0, 0.1, clock=clock, jitter=lambda: 0.0, name="lists")
    lists.rate_limited(RateHeaders(limit=1000, remaining=0))  # no Reset: backs off 0.75 s
    assert pause_notes([Budget(10**8, 1.0, 0.1, clock=clock), lists]) == [
        "lists pool paused until 14:00:00 UTC: 429, no usable Reset: backing off",
        "lists pool paced to 1 request every 7.2s: 429s without Reset",
    ]


def test_the_progress_line_says_a_cut_pace_between_pauses_and_counts_it_in_the_eta() -> None:
    """After blind 429s cut the pace to one request a minute, the line says so between the
    pauses too, and the ETA counts the 60 requests left at that pace (an hour), not at the
    rate seen so far (12 s)."""
    clock = FakeClock(_AT_14H)
    budget = Budget(3600, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    for _ in range(7):  # 1/s halved down to the floor
        budget.rate_limited(RateHeaders())
        clock.now += budget.paused_for  # the gate opens again
    line = status_line(_half_done(), _plan(), elapsed=10, budgets=[budget])
    assert "| paced to 1 request every 60s: 429s without Reset | ETA 1h00m |" in line
    assert "paused" not in line


def test_shards_are_disjoint_and_cover_everything(write_config: Callable[..., Path]) -> None:
    """Shards 1..N of a plan partition its series and requests."""
    config = load_config(write_config(CONFIG.format(out="x")), env={})
    whole = build_plan(config, date(2024, 7, 1))
    parts = [build_plan(config, date(2024, 7, 1), (k, 3)) for k in (1, 2, 3)]
    series = [set(p.series) for p in parts]
    assert all(series)  # every shard has work at this size
    assert set.union(*series) == set(whole.series)
    assert sum(len(s) for s in series) == len(whole.series)

    def ids(requests: tuple[Request, ...]) -> list[tuple[str, int, int]]:
        return sorted((r.series.key, r.first, r.length) for r in requests)

    assert ids(tuple(r for p in parts for r in p.requests)) == ids(whole.requests)


def test_sharded_runs_write_what_one_run_writes(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Two shards into one directory give the same files as one unsharded run, each shard
    with half the budget."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        main(
            [
                "run",
                str(write_config(CONFIG.format(out=one), "a.yaml")),
                "--sandbox",
                "--out",
                str(one),
                "--as-of",
                AS_OF,
            ]
        )
        == 0
    )
    sharded = write_config(CONFIG.format(out=two), "b.yaml")
    for k in (1, 2):
        shard = ["--shard", f"{k}/2"]
        assert (
            main(["run", str(sharded), "--sandbox", "--out", str(two), "--as-of", AS_OF, *shard])
            == 0
        )
    assert "allowed 125,000/hour" in capsys.readouterr().out

    assert snapshot(one) == snapshot(two)
    assert len(list((two / "_runs").glob("*.json"))) == 2


def test_plan_shows_the_shards_budget(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan --shard states the shard and its share of the budget."""
    assert (
        main(
            ["plan", str(write_config(CONFIG.format(out="x"))), "--as-of", AS_OF, "--shard", "2/4"]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "shard 2/4" in text
    assert "62,500 requests/hour (25% of 250,000" in text


@pytest.mark.parametrize("bad", ["0/2", "3/2", "1", "a/b", "1/0"])
def test_bad_shard_is_a_usage_error(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--shard must be K/N with 1 <= K <= N."""
    with pytest.raises(SystemExit) as caught:
        main(["plan", "x.yaml", "--shard", bad])
    assert caught.value.code == 2
    assert "must be K/N" in capsys.readouterr().err


def test_json_log_records_of_a_request_give_its_periods_as_fields(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A retry record names its request's periods as ``first`` and ``last`` labels a log
    query can compare, not one formatted ``periods`` sentence (BREAK18b leftover)."""
    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    path = write_config(CONFIG.format(out=tmp_path / "out"))
    with sandbox_server(fault_rate=0.3, seed=3, slow_s=0.01) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        # Whether a series runs out of attempts depends on how the faults fall: either way.
        assert main(["--log-format", "json", "run", str(path), "--as-of", AS_OF]) in (0, 1)
    records = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    retries = [r for r in records if r["event"] == "retry"]
    assert retries
    for record in retries:
        assert "periods" not in record
        assert record["first"] <= record["last"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d(T\d\d:00Z)?", record["first"])
