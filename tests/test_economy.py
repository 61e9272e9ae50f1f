"""Every run minimal: requests cover the periods still needed, `plan` says what the next run
sends (from the saved state, read only), and a plan's memory follows its series."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from bench.economy import NIGHTLY
from exporter import series as series_module
from exporter.cli import main
from exporter.config import load_config
from exporter.coverage import Coverage
from exporter.manifest import build_manifest, write_manifest
from exporter.pipeline import RunResult
from exporter.plan import Series, build_plan, cover, hour_range
from exporter.ratelimit import Budget
from exporter.sandbox import sandbox_stats
from exporter.state import State, state_path
from exporter.storage import WORK_DIR, DirLock
from tests.conftest import Cli


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def test_cover_uses_the_fewest_requests_and_no_period_more_than_needed() -> None:
    """Greedy from the earliest needed period: nearby gaps share a request, each request
    starts and ends on a needed period, none is longer than the limit."""
    assert list(cover([(0, 249)], 100)) == [(0, 99), (100, 199), (200, 249)]
    assert list(cover([(72, 167)], 100)) == [(72, 167)]  # 96 hours: one request
    assert list(cover([(0, 2), (50, 51), (99, 120)], 100)) == [(0, 99), (100, 120)]
    assert list(cover([(0, 0), (100, 100)], 100)) == [(0, 0), (100, 100)]
    assert list(cover([(5, 5), (10, 30)], 14)) == [(5, 18), (19, 30)]
    assert list(cover([], 100)) == []


def test_cover_is_minimal_against_brute_force() -> None:
    """On every small set of needed periods, no cover has fewer spans than cover's."""
    limit = 3
    for mask in range(1, 1 << 10):
        points = [p for p in range(10) if mask >> p & 1]
        spans = [(p, p) for p in points]
        got = list(cover(spans, limit))
        assert all(hi - lo < limit for lo, hi in got)
        assert all(any(lo <= p <= hi for lo, hi in got) for p in points)
        best, i = 0, 0  # the optimum, counted from the left by its own definition
        while i < len(points):
            best += 1
            reach = points[i] + limit - 1
            while i < len(points) and points[i] <= reach:
                i += 1
        assert len(got) == best


def test_a_series_requests_follow_its_kind_s_max_length(
    write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kind whose endpoint takes at most 14 periods (Canvas) is planned in 14s."""
    kind = dataclasses.replace(series_module.KINDS["sessions"], max_length=14)
    monkeypatch.setitem(series_module.KINDS, "sessions", kind)
    config = load_config(write_config(NIGHTLY.format(out="o", days=30)), env={})
    plan = build_plan(config, date(2024, 9, 10))
    day = plan.series.index(Series("segment-a", None, "day"))
    requests = list(plan.requests_for(day, plan.window(day)))
    assert [r.length for r in requests] == [14, 14, 2]
    assert plan.count_requests(day, plan.window(day)) == 3


def test_the_days_after_a_run_need_one_request_per_unit(
    write_config: Callable[..., Path],
) -> None:
    """The issue's nightly case: as of 09-11 after a run as of 09-10, the settling 3 days and
    the new one are 4 days and 96 hours: one request each (the window's slices took 3)."""
    config = load_config(write_config(NIGHTLY.format(out="o", days=7)), env={})
    plan = build_plan(config, date(2024, 9, 11))
    settled_until = date(2024, 9, 7)  # settle_days 3 before the run as of 09-10
    counts = {}
    for i, s in enumerate(plan.series):
        lo, _ = plan.window(i)[0]
        hi = (
            settled_until.toordinal()
            if s.unit == "day"
            else hour_range(settled_until, settled_until, config.tz)[0]
        ) - 1
        needed = [(hi + 1, plan.window(i)[-1][1])]
        assert lo <= hi
        counts[s.unit] = plan.count_requests(i, needed)
        assert len(list(plan.requests_for(i, needed))) == counts[s.unit]
    assert counts == {"day": 1, "hour": 1}


def test_a_hundred_year_plan_holds_windows_not_requests(
    write_config: Callable[..., Path],
) -> None:
    """36,600 days of days and hours: series alike share one window, and their requests are
    counted by arithmetic, ceil(periods / 100) each."""
    text = NIGHTLY.replace("[segment-a]", "[segment-a, segment-b, segment-c]").format(
        out="o", days=36_600
    )
    # An as-of late enough that the century starts after 1970-01-01, the earliest date planned.
    plan = build_plan(load_config(write_config(text), env={}), date(2124, 9, 10))
    assert len(plan.series) == 6
    assert len(plan.windows) == 2  # one per unit
    assert plan.first_run_requests() == {"sessions": 3 * (366 + math.ceil(36_600 * 24 / 100))}


Nightly = Callable[[int, list[str]], list[int]]


@pytest.fixture
def nightly(tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str) -> Nightly:
    """Run the nightly config (``days`` long, into tmp_path/out) once per as-of date against
    one sandbox; the requests each run sent."""

    def run(days: int, nights: list[str]) -> list[int]:
        config = write_config(NIGHTLY.format(out=tmp_path / "out", days=days))
        sent = []
        with cli.sandbox(limit=0) as handle:
            for as_of in nights:
                before = sandbox_stats(handle.app).requests
                assert main(["run", str(config), "--as-of", as_of]) == 0
                sent.append(sandbox_stats(handle.app).requests - before)
        return sent

    return run


@pytest.mark.parametrize(("days", "first"), [(7, 1 + 2), (30, 1 + 8)])
def test_a_nightly_run_sends_one_request_per_series_per_unit(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    days: int,
    first: int,
) -> None:
    """After the first run, each day's run re-reads the settling days and the new one in
    one request per unit (2 for day + hour, where the window's slices sent 3)."""
    nights = ["2024-09-10", "2024-09-11", "2024-09-12"]
    sent = nightly(days, nights)
    assert sent == [first, 2, 2]


def test_plan_says_what_the_next_run_sends_from_the_saved_state(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan reads the state: 0 requests for the same as-of date; the next day, 2 requests,
    with the settling 3 days and 72 hours to read again, per export in --json."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    nightly(7, ["2024-09-10"])
    capsys.readouterr()
    assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
    text = capsys.readouterr().out
    assert "requests: 0 (for 0 periods" in text
    assert (
        f"state:    {tmp_path / 'out'}: 175 of 175 periods settled (kept, not fetched again), "
        "0 provisional (fetched again)"
    ) in text
    assert main(["plan", str(config), "--as-of", "2024-09-11", "--json", "--requests"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exports"]["nightly"] == doc["totals"]
    assert doc["totals"] | {"seconds_at_least": 0} == {
        "series": 2,
        "requests": 2,
        "periods": 7 + 7 * 24,
        "periods_done": 3 + 3 * 24,
        "periods_to_read_again": 3 + 3 * 24,
        "periods_to_fetch": 4 + 4 * 24,
        "seconds_at_least": 0,
    }
    assert [r["length"] for r in doc["requests"]] == [4, 96]


def test_plan_says_the_settled_periods_are_kept_and_the_provisional_fetched_again(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The next night's plan counts the settled periods as kept and only the provisional
    ones (the last settle_days) as fetched again: the two never overlap."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    nightly(7, ["2024-09-10"])
    capsys.readouterr()
    assert main(["plan", str(config), "--as-of", "2024-09-11"]) == 0
    assert (
        f"state:    {tmp_path / 'out'}: {3 + 3 * 24} of 175 periods settled (kept, not fetched "
        f"again), {3 + 3 * 24} provisional (fetched again)"
    ) in capsys.readouterr().out


def test_a_rerun_with_nothing_to_do_says_no_request_was_needed(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A rerun of a finished night sends nothing: every period already done, and no request
    counted as dropped (that count is of requests other requests made moot)."""
    nightly(7, ["2024-09-10"] * 2)
    last = capsys.readouterr().out.split("series: ")[-1]
    assert "periods: 175 planned, 0 written, 175 already done, 0 missing" in last
    assert "requests: 0 done, 0 dropped (other requests brought their periods)" in last


def test_plan_without_state_says_so_and_counts_whole_windows(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """No state in the output directory: plan says the next run fetches every window whole."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
    text = capsys.readouterr().out
    assert f"state:    none in {tmp_path / 'out'}" in text
    assert "requests: 3 (for 175 periods" in text
    assert not (tmp_path / "out").exists()


def test_plan_reads_a_state_a_run_holds_and_writes_nothing(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan takes no lock and writes nothing: it reads a state file a run holds open (its
    exclusive lock, its write-ahead log) and leaves the directory as it was."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    nightly(7, ["2024-09-10"])
    work = tmp_path / "out" / WORK_DIR
    held = State(state_path(work, None), scope="other", as_of=0)  # a run holding the file
    try:
        before = _tree(tmp_path / "out")
        capsys.readouterr()
        assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
        assert "requests: 0 (for 0 periods" in capsys.readouterr().out
        assert _tree(tmp_path / "out") == before
    finally:
        held.close()


def test_validate_warns_when_a_first_run_needs_more_than_a_day_of_the_pool(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """validate: more requests than the pool's share allows in a day is a warning, exit 0."""
    # 20,000 days from today start after 1970-01-01, the earliest date planned.
    text = NIGHTLY.format(out=tmp_path / "out", days=20_000).replace(
        "version: 1\n", "version: 1\nlimits: {requests_per_hour: 100, share: 0.5}\n"
    )
    assert main(["validate", str(write_config(text))]) == 0
    out = capsys.readouterr().out
    requests = 200 + math.ceil(20_000 * 24 / 100)
    assert f"warning: a first run as of today plans {requests:,} requests in the workspace" in out
    assert "(100/hour x 50%, keeping 10% in reserve)" in out
    assert "raise limits.share if Braze gave the workspace more" in out
    small = NIGHTLY.format(out=tmp_path / "out", days=7)
    assert main(["validate", str(write_config(small))]) == 0
    assert "warning" not in capsys.readouterr().out


def test_plan_counts_the_files_gone_as_the_run_s_file_check_does(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A done period's file deleted and another changed: plan says the requests the run then
    sends, and how many files and periods the file check takes back, moving or writing
    nothing."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    nightly(7, ["2024-09-10"])
    out = tmp_path / "out"
    data = sorted(p for p in out.rglob("*") if p.is_file() and p.parts[-2] != WORK_DIR)
    hourly = [p for p in data if "_runs" not in p.parts and "hour" in str(p)]
    hourly[0].unlink()
    with hourly[1].open("ab") as changed:
        changed.write(b"\n")
    before = _tree(out)
    capsys.readouterr()
    assert main(["plan", str(config), "--as-of", "2024-09-10", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert _tree(out) == before  # nothing moved aside, nothing written
    planned = doc["totals"]["requests"]
    assert planned == 1  # the two days' 48 hours: one request
    assert doc["file_check"] | {"files_checked": 0} == {
        "files_checked": 0,
        "files_missing": 1,
        "files_changed": 1,
        "periods_taken_back": 48,
    }
    assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
    text = capsys.readouterr().out
    assert "files:    1 written file(s) gone and 1 changed since" in text
    assert "their 48 period(s)" in text
    assert nightly(7, ["2024-09-10"]) == [planned]


def test_validate_and_plan_give_one_least_time_and_no_share_advice_at_100_percent(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """validate's least time is plan's (the reserve counted in both); with share 100% its
    advice is to split the window or ask Braze, never to raise limits.share."""
    text = NIGHTLY.format(out=tmp_path / "out", days=20_000).replace(
        "version: 1\n", "version: 1\nlimits: {requests_per_hour: 100, share: 1.0}\n"
    )
    config = write_config(text)
    assert main(["validate", str(config)]) == 0
    warning = capsys.readouterr().out
    assert main(["plan", str(config)]) == 0
    least = capsys.readouterr().out.split("time:     at least ")[1].split(" ")[0]
    assert f"it takes at least {least}:" in warning
    assert "split the window into runs or ask Braze to raise the workspace's limit" in warning
    assert "limits.share" not in warning


def test_plan_counts_as_taken_back_what_the_run_s_manifest_counts(
    tmp_path: Path,
    write_config: Callable[..., Path],
    nightly: Nightly,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The next day, a provisional day's file deleted: its periods are read again anyway, so
    plan, like the run's manifest, counts none of them as taken back."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    nightly(7, ["2024-09-10"])
    out = tmp_path / "out"
    hourly = sorted(p for p in out.rglob("*") if p.is_file() and "hour" in p.parts)
    hourly[-1].unlink()
    capsys.readouterr()
    assert main(["plan", str(config), "--as-of", "2024-09-11", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)["file_check"]
    nightly(7, ["2024-09-11"])
    manifests = sorted((out / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime_ns)
    ran = json.loads(manifests[-1].read_text())["file_check"]
    assert (check["files_missing"], check["periods_taken_back"]) == (1, 0)
    assert ran["periods_taken_back"] == check["periods_taken_back"]


def test_plan_json_is_a_summary_of_bounded_size_and_lists_requests_only_when_asked(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan --json of 52 years of hours gives counts (totals, per export, per series kind),
    never the requests; --requests lists each of them, Braze's parameters."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=19_000))
    as_of = "2024-09-10"
    assert main(["plan", str(config), "--as-of", as_of, "--json"]) == 0
    text = capsys.readouterr().out
    doc = json.loads(text)
    requests = 190 + math.ceil(19_000 * 24 / 100)
    assert "requests" not in doc
    assert doc["totals"]["requests"] == doc["requests_by_series"]["sessions"] == requests
    assert len(text) < 4000
    assert main(["plan", str(config), "--as-of", as_of, "--json", "--requests"]) == 0
    listed = json.loads(capsys.readouterr().out)["requests"]
    assert len(listed) == requests
    assert listed[-1] == {
        "segment_id": "segment-a",
        "app_id": None,
        "unit": "hour",
        "path": "/sessions/data_series",
        "length": 19_000 * 24 % 100 or 100,
        "ending_at": "2024-09-09T23:59:59+00:00",
    }


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_sigterm_or_sighup_during_plan_leaves_no_temp_directory(
    tmp_path: Path, write_config: Callable[..., Path], signum: int, code: int
) -> None:
    """SIGTERM (or SIGHUP: the terminal closed; it used to end plan where it stood) while
    plan streams its requests (reading a state a run holds, from a private copy in a temp
    directory): exit 143 (129), one line, and the temp directory is gone."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=19_000))
    held = State(state_path(tmp_path / "out" / WORK_DIR, None), scope="s", as_of=0)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    argv = ["plan", str(config), "--as-of", "2024-09-10", "--json", "--requests"]
    with subprocess.Popen(
        [sys.executable, "-m", "exporter", *argv],
        cwd=Path(__file__).parent.parent,  # this checkout's exporter
        env={**os.environ, "TMPDIR": str(tmp)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # The signal as a service manager or a terminal sends it, whatever this test runner
        # inherited.
        preexec_fn=lambda: signal.signal(signum, signal.SIG_DFL),
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stderr is not None
            assert proc.stdout.readline() == b"{\n"  # the copy is made: the plan is written
            assert any(p.name.startswith("braze-export-plan-") for p in tmp.iterdir())
            proc.send_signal(signum)  # it writes on into the pipe no one reads
            err = proc.stderr.read().decode()
            assert proc.wait(timeout=120) == code
        finally:
            proc.kill()
            held.close()
    assert err.splitlines()[-1:] == ["interrupted"]
    assert "Traceback" not in err
    assert list(tmp.iterdir()) == []


def test_the_manifest_of_an_interrupted_run_is_written_without_holding_its_series(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """A run stopped before any request: each of its 40,000 series is listed as incomplete
    in the manifest, written entry by entry (4 bytes a series held, not an entry each)."""
    segments = ", ".join(f"segment-{i:03d}" for i in range(200))
    apps = ", ".join(f"app-{i:03d}" for i in range(100))
    text = NIGHTLY.replace("[segment-a]", f"[{segments}]\n    app_ids: [{apps}]")
    config = load_config(write_config(text.format(out="o", days=7)), env={})
    plan = build_plan(config, date(2024, 9, 10))
    result = RunResult(coverage=Coverage(plan), interrupted=True)
    budget = Budget(1000, 1.0, 0.1)
    tracemalloc.start()
    try:
        doc = build_manifest(
            run_id="r",
            config=config,
            plan=plan,
            result=result,
            budget=budget,
            started_at=0.0,
            finished_at=1.0,
            exit_code=130,
            source={"sandbox": True},
            sequence=1,
        )
        path = write_manifest(tmp_path, doc, iter(()), "t")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    written = json.loads(Path(path).read_text())
    assert len(written["totals"]["incomplete"]) == len(plan.series) == 40_000
    assert written["totals"]["incomplete"][0]["missing"] == ["2024-09-03..2024-09-09"]
    assert written["exports"]["nightly"]["series_incomplete"] == 40_000
    assert written["files"] == []
    assert peak < 2_000_000  # the lists in memory took 40 MB


def test_plan_says_a_directory_a_live_run_holds_is_locked_and_a_killed_one_is_not(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A live holder of the directory: plan names it and that a run exits 5 while it lives;
    a holder killed (its flock gone with its process, its record left) holds nothing."""
    out = tmp_path / "out"
    config = write_config(NIGHTLY.format(out=out, days=7))
    holder = DirLock.acquire(out, layout="other", shard=None, command="braze-export run live")
    try:
        assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
        text = capsys.readouterr().out
        record = out / WORK_DIR / "locks" / f"{holder.token}.json"
        assert (
            f"lock:     held by a run ({holder.holder.describe()}) while its process lives "
            f"({record}): a run now exits 5"
        ) in text
        assert (
            main(["run", str(config), "--as-of", "2024-09-10", "--sandbox", "--out", str(out)]) == 5
        )
        assert main(["plan", str(config), "--as-of", "2024-09-10", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["lock"]["run_exits"] == 5
        assert holder._fd is not None
        os.close(holder._fd)  # as kill -9 leaves it: the flock released, the record there
        holder._fd = None
        assert record.exists()
        assert main(["plan", str(config), "--as-of", "2024-09-10", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["lock"] is None
        assert record.exists()  # plan breaks no lock: the next run clears it
    finally:
        holder.release()


FOUND = NIGHTLY.replace("[segment-a]", "{{discover: analytics_enabled}}")


def test_plan_of_a_discovery_config_counts_the_ids_earlier_runs_found(
    tmp_path: Path,
    write_config: Callable[..., Path],
    cli: Cli,
    env_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a run, plan counts the discovered ids' done and provisional periods from the
    state and the requests the next run sends for them (what it then sends), and says
    apart what each id not seen before adds on its first run, in text and --json alike."""
    config = write_config(FOUND.format(out=tmp_path / "out", days=7))
    with cli.sandbox(limit=0, segments=6) as server:
        assert main(["run", str(config), "--as-of", "2024-09-10"]) == 0
        ids = len({p.parts[-3] for p in (tmp_path / "out" / "sessions").rglob("*.jsonl")})
        assert ids > 1
        capsys.readouterr()
        assert main(["plan", str(config), "--as-of", "2024-09-10"]) == 0
        text = capsys.readouterr().out
        periods = ids * (7 + 7 * 24)
        assert f"series:   {2 * ids} with the ids listed in the config and the {ids} " in text
        assert f"the {ids} id(s) earlier runs found are counted above" in text
        assert f"{periods:,} of {periods:,} periods settled" in text
        assert "requests: 0 (for 0 periods" in text
        assert "each id found that earlier runs did not adds 3 request(s) on its first run" in text
        assert main(["plan", str(config), "--as-of", "2024-09-11", "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["totals"]["requests"] == 2 * ids
        assert doc["totals"]["periods_to_read_again"] == ids * (3 + 3 * 24)
        (found,) = doc["discovery"]
        assert (found["ids_in_state"], found["requests_per_new_id"]) == (ids, 3)
        data = server.app  # the requests of the series: all but the list's
        before = sandbox_stats(data).requests - sandbox_stats(data).paths["/segments/list"]
        assert main(["run", str(config), "--as-of", "2024-09-11"]) == 0
        after = sandbox_stats(data).requests - sandbox_stats(data).paths["/segments/list"]
        assert after - before == doc["totals"]["requests"]
