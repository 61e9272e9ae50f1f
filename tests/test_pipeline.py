"""The pipeline against the sandbox in this event loop: tokens, failures, stop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.client import BrazeClient, Response, make_session
from exporter.config import ApiKey
from exporter.coverage import Calibration
from exporter.errors import TransportError
from exporter.pipeline import Pipeline, account
from exporter.plan import Plan, Request, Series, ending_at
from exporter.ratelimit import RESET_MARGIN_S, Budget, RateHeaders
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, sandbox_stats, start_sandbox
from exporter.writers import PartitionWriter
from tests.conftest import FakeClock

UTC_ZONE = __import__("zoneinfo").ZoneInfo("UTC")


class CountingBudget(Budget):
    """An unthrottled budget; ``acquired`` counts the attempts it let through."""

    def __init__(self) -> None:
        super().__init__(10**8, 1.0, 0.1)


def _plan(segments: int, days: int = 3) -> Plan:
    last = date(2024, 6, 30).toordinal()
    requests = tuple(
        Request(
            Series(f"s{i}", None, "day"), last - days + 1, days, ending_at("day", last, UTC_ZONE), i
        )
        for i in range(segments)
    )
    series = tuple(r.series for r in requests)
    return Plan.of_requests(date(2024, 7, 1), "UTC", requests, series)


async def _run(
    tmp_path: Path, options: SandboxOptions, plan: Plan, budget: Budget
) -> tuple[Pipeline, int]:
    runner, url = await start_sandbox(options)
    try:
        async with make_session(4) as session:
            pipeline = Pipeline(
                client=BrazeClient(session, url, ApiKey("k"), timeout_s=2),
                budget=budget,
                writer=PartitionWriter(tmp_path, "jsonl", durable=False),
                state=None,
                policy=RetryPolicy(max_attempts=10, backoff_base_s=0.01, backoff_max_s=0.05),
                concurrency=4,
            )
            await pipeline.run(plan)
        return pipeline, sandbox_stats(runner.app).requests
    finally:
        await runner.cleanup()


async def test_every_attempt_takes_a_token(tmp_path: Path) -> None:
    """Retries go through the budget too: tokens taken == requests the server saw."""
    budget = CountingBudget()
    options = SandboxOptions(limit=0, fault_rate=0.3, seed=1, slow_s=0.0)
    pipeline, seen = await _run(tmp_path, options, _plan(20), budget)
    result = pipeline.result
    assert result.failures == {}
    assert result.totals.retries > 0
    assert budget.acquired == result.totals.sent == seen == 20 + result.totals.retries


async def test_a_failed_series_sends_no_more_requests(tmp_path: Path) -> None:
    """After a 400, the series' remaining requests are skipped, other series go on."""
    last = date(2024, 6, 30).toordinal()
    bad, good = Series("bad", None, "day"), Series("good", None, "day")
    requests = tuple(
        Request(s, last - 100 * k - 99, 100, ending_at("day", last - 100 * k, UTC_ZONE), i)
        for i, s in enumerate((bad, good))
        for k in range(3)
    )
    plan = Plan.of_requests(date(2024, 7, 1), "UTC", requests, (bad, good))
    options = SandboxOptions(limit=0, reject_segments=frozenset({"bad"}))
    pipeline, seen = await _run(tmp_path, options, plan, CountingBudget())
    assert set(pipeline.result.failures) == {bad}
    assert pipeline.result.totals.done == 3
    assert seen <= 3 + 3  # at most the in-flight ones of "bad" were sent before it failed
    assert pipeline.result.series_complete == 1


async def test_stop_takes_no_new_work(tmp_path: Path) -> None:
    """stop() before running: nothing is fetched and the result says interrupted."""
    budget = CountingBudget()
    runner, url = await start_sandbox(SandboxOptions(limit=0))
    try:
        async with make_session(4) as session:
            pipeline = Pipeline(
                client=BrazeClient(session, url, ApiKey("k")),
                budget=budget,
                writer=PartitionWriter(tmp_path, "jsonl"),
                state=None,
                policy=RetryPolicy(),
                concurrency=2,
            )
            pipeline.stop()
            result = await pipeline.run(_plan(5))
    finally:
        await runner.cleanup()
    assert result.interrupted
    assert result.totals.sent == 0
    report = account(result, _plan(5), range(5))
    assert (report.complete, report.series_incomplete, report.periods_missing) == (0, 5, 15)


class ScriptedClient(BrazeClient):
    """Answers each request from a script instead of the network."""

    def __init__(self, *answers: Response, on_get: Callable[[], None] = lambda: None) -> None:
        self.answers = list(answers)
        self.on_get = on_get
        self.calls = 0

    async def get(self, request: Request, ending_at: str | None = None) -> Response:
        self.calls += 1
        self.on_get()
        return self.answers.pop(0)


def _days_body(*days: str) -> bytes:
    return json.dumps(
        {"message": "success", "data": [{"time": d, "sessions": 7} for d in days]}
    ).encode()


OK_3_DAYS = Response(200, RateHeaders(), _days_body("2024-06-28", "2024-06-29", "2024-06-30"))


def _scripted_pipeline(
    tmp_path: Path, client: BrazeClient, clock: FakeClock
) -> tuple[Pipeline, Budget]:
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    pipeline = Pipeline(
        client=client,
        budget=budget,
        writer=PartitionWriter(tmp_path, "jsonl", durable=False),
        state=None,
        policy=RetryPolicy(),
        concurrency=1,
        sleep=clock.sleep,
    )
    return pipeline, budget


async def test_a_429_waits_the_budgets_pause_not_the_raw_reset(tmp_path: Path) -> None:
    """A 429 whose Reset is in milliseconds is retried after 30 s, not thousands of years."""
    clock = FakeClock(time.time())  # the retry policy reads the wall clock
    reset_ms = (clock.now + 30) * 1000
    limited = Response(429, RateHeaders(limit=10, remaining=0, reset_at=reset_ms), b"{}")
    pipeline, _ = _scripted_pipeline(tmp_path, ScriptedClient(limited, OK_3_DAYS), clock)
    result = await pipeline.run(_plan(1))
    assert result.totals.done == 1
    assert result.totals.rate_limited == 1
    assert sum(clock.sleeps) == pytest.approx(30 + 1.5 * RESET_MARGIN_S, abs=1)


async def test_a_stop_ends_retries_and_the_series_is_not_failed(tmp_path: Path) -> None:
    """stop() while a request fails: no retry is sent and the series is interrupted, not failed."""
    clock = FakeClock(time.time())
    pipeline: Pipeline | None = None

    def stop() -> None:
        assert pipeline is not None
        pipeline.stop()

    client = ScriptedClient(Response(503, RateHeaders(), b"{}"), OK_3_DAYS, on_get=stop)
    pipeline, _ = _scripted_pipeline(tmp_path, client, clock)
    result = await pipeline.run(_plan(1))
    assert client.calls == 1
    assert result.failures == {}
    assert result.totals.done == 0


async def test_retry_lines_name_the_request_by_its_periods(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A retry line names the series once and the request's days, or its UTC hours."""
    clock = FakeClock(time.time())
    first_hour = int(datetime(2024, 6, 30, 22, tzinfo=UTC).timestamp()) // 3600
    hours = Request(Series("h", None, "hour"), first_hour, 2, "2024-06-30T23:59:59+00:00", 1)
    day_plan = _plan(1)
    plan = Plan.of_requests(
        date(2024, 7, 1), "UTC", (day_plan.requests[0], hours), (*day_plan.series, hours.series)
    )
    failing = Response(503, RateHeaders(), b'{"message": "busy"}')
    hour_body = _hours_body("2024-06-30T22:00:00", "2024-06-30T23:00:00")
    client = ScriptedClient(failing, OK_3_DAYS, failing, Response(200, RateHeaders(), hour_body))
    pipeline, _ = _scripted_pipeline(tmp_path, client, clock)
    with caplog.at_level(logging.WARNING):
        await pipeline.run(plan)
    assert [r.getMessage().split(": attempt")[0] for r in caplog.records] == [
        "retry sessions/day/segment-s0/workspace periods 2024-06-28..2024-06-30",
        "retry sessions/hour/segment-h/workspace periods 2024-06-30T22:00Z..2024-06-30T23:00Z",
    ]
    assert all(r.getMessage().count("segment-") == 1 for r in caplog.records)


def _hours_body(*hours: str) -> bytes:
    return json.dumps(
        {"message": "success", "data": [{"time": h, "sessions": 7} for h in hours]}
    ).encode()


class DyingClient(ScriptedClient):
    """Answers once, then every connection is refused (the host went away mid-run)."""

    @property
    def host(self) -> str:
        return "braze.test:443"

    async def get(self, request: Request, ending_at: str | None = None) -> Response:
        self.calls += 1
        if self.calls == 1:
            return OK_3_DAYS
        raise TransportError(
            "connection refused (braze.test:443)", cause="refused", detail="connection refused"
        )


async def test_a_host_lost_mid_run_stops_the_run_instead_of_retrying_for_minutes(
    tmp_path: Path,
) -> None:
    """After answers, connections refused for 30 s in a row end the run (exit 4's error)."""
    clock = FakeClock(0.0)
    client = DyingClient()
    pipeline, _ = _scripted_pipeline(tmp_path, client, clock)
    pipeline._clock = clock  # the pipeline's monotonic clock, faked
    result = await pipeline.run(_plan(20))
    assert result.unreachable is not None
    assert str(result.unreachable).startswith("lost braze.test:443: connection refused, for ")
    assert client.calls < 8 * 20  # not every request's every retry
    assert result.totals.done == 1


async def test_writes_failing_for_a_while_stop_the_run(tmp_path: Path) -> None:
    """A full disk or a dead object store: the run stops instead of fetching what it cannot
    keep (every request answered, every write failing, for 30 s and 10 writes in a row)."""
    clock = FakeClock(0.0)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output directory should be")
    client = ScriptedClient(*[OK_3_DAYS] * 40)
    pipeline, _ = _scripted_pipeline(blocked, client, clock)
    pipeline._clock = clock

    real_write = pipeline.writer.write

    async def slow_failing_write(*args: Any) -> Any:
        clock.now += 5  # each attempt takes a while
        return await real_write(*args)

    pipeline.writer.write = slow_failing_write  # type: ignore[method-assign, assignment]
    result = await pipeline.run(_plan(40))
    assert result.unreachable is not None
    assert str(result.unreachable).startswith("the output cannot be written (cannot write ")
    assert client.calls < 40


class InFlightClient(ScriptedClient):
    """Answers after a moment, and counts the requests in flight at once."""

    def __init__(self, *answers: Response) -> None:
        super().__init__(*answers)
        self.in_flight = self.most_in_flight = 0

    async def get(self, request: Request, ending_at: str | None = None) -> Response:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            return await super().get(request, ending_at)
        finally:
            self.in_flight -= 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_a_waiting_write_holds_no_http_slot_and_concurrency_bounds_what_is_in_flight(
    tmp_path: Path, concurrency: int
) -> None:
    """``concurrency`` bounds the requests in flight, not the writes: while the first write
    waits (a slow disk, a group commit, the Parquet encoder), the next requests go out, and
    never more than ``concurrency`` at once."""
    client = InFlightClient(*[OK_3_DAYS] * 30)
    pipeline, _ = _scripted_pipeline(tmp_path, client, FakeClock(0.0))
    pipeline.concurrency = concurrency
    release = asyncio.Event()
    real_write = pipeline.writer.write

    async def first_write_waits(*args: Any) -> Any:
        if not release.is_set() and args[0].segment_id == "s0":
            await release.wait()
        return await real_write(*args)

    pipeline.writer.write = first_write_waits  # type: ignore[method-assign, assignment]
    running = asyncio.ensure_future(pipeline.run(_plan(30)))
    for _ in range(500):
        if client.calls == 30:
            break
        await asyncio.sleep(0.01)
    assert client.calls == 30  # every other request went out while the first write waited
    assert not running.done()
    release.set()
    result = await asyncio.wait_for(running, 60)
    assert result.totals.done == 30
    assert client.most_in_flight == concurrency


async def test_requests_waiting_for_a_slot_are_not_sent_after_stop(tmp_path: Path) -> None:
    """stop() while requests wait for an HTTP slot: none of them goes out."""
    client = InFlightClient(*[OK_3_DAYS] * 10)
    pipeline, _ = _scripted_pipeline(tmp_path, client, FakeClock(0.0))
    pipeline.write_behind = 5  # five workers wait for the one slot
    client.on_get = pipeline.stop
    result = await pipeline.run(_plan(10))
    assert client.calls == 1
    assert result.interrupted
    assert result.failures == {}
    assert result.totals.done == 1


@pytest.mark.parametrize("concurrency", [1, 3])
async def test_no_request_is_sent_after_an_answer_that_ends_the_run(
    tmp_path: Path, concurrency: int
) -> None:
    """A 401 ends the run: the requests already in flight were sent, the one its freed slot
    wakes is not, so at most ``concurrency`` requests ever go out."""
    refused = Response(401, RateHeaders(), b'{"message": "Invalid API key"}')
    client = InFlightClient(*[refused] * 10)
    sent: list[Request] = []
    get = client.get

    async def send(request: Request, ending_at: str | None = None) -> Response:
        sent.append(request)  # counted as it goes out, not when answered
        return await get(request, ending_at)

    client.get = send  # type: ignore[method-assign]
    pipeline, _ = _scripted_pipeline(tmp_path, client, FakeClock(0.0))
    pipeline.concurrency = concurrency
    pipeline.write_behind = 5  # workers wait for the slots the 401s give back
    result = await pipeline.run(_plan(10))
    assert result.auth_error is not None
    assert len(sent) == concurrency


class _ShiftAfterFirstAnswer(Calibration):
    """Calibration that learns a one-day shift from the first answer."""

    learned = False

    def shift(self, unit: str) -> int:
        return 1 if self.learned else 0


async def test_a_request_takes_its_window_from_calibration_as_it_is_when_sent(
    tmp_path: Path,
) -> None:
    """A request that waited for an HTTP slot while the first answer taught calibration an
    offset is sent with the shifted window, not the one known when it began to wait."""
    calibration = _ShiftAfterFirstAnswer()
    endings: list[str | None] = []

    class Recording(InFlightClient):
        async def get(self, request: Request, ending_at: str | None = None) -> Response:
            endings.append(ending_at)
            answer = await super().get(request, ending_at)
            calibration.learned = True  # taught by the answer
            return answer

    client = Recording(*[OK_3_DAYS] * 3)
    pipeline, _ = _scripted_pipeline(tmp_path, client, FakeClock(0.0))
    pipeline.result.calibration = calibration
    pipeline.write_behind = 2  # two requests wait for the one slot from the start
    await pipeline.run(_plan(3))
    last = date(2024, 6, 30).toordinal()
    shifted = ending_at("day", last - 1, UTC_ZONE)
    assert endings == [ending_at("day", last, UTC_ZONE), shifted, shifted]


async def test_the_stop_line_counts_the_requests_really_in_flight(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests hang in flight (concurrency 2) and two more wait for a slot: after the
    grace period the line says 2 are cancelled, not every busy worker."""
    hang = asyncio.Event()

    class Hanging(InFlightClient):
        async def get(self, request: Request, ending_at: str | None = None) -> Response:
            self.calls += 1
            await hang.wait()
            raise AssertionError("never answered")

    client = Hanging()
    pipeline, _ = _scripted_pipeline(tmp_path, client, FakeClock(0.0))
    pipeline.concurrency = pipeline.write_behind = 2
    pipeline.grace_s = 0.05
    running = asyncio.ensure_future(pipeline.run(_plan(6)))
    for _ in range(500):
        if client.calls == 2:
            break
        await asyncio.sleep(0.01)
    pipeline.stop()
    result = await asyncio.wait_for(running, 60)
    assert result.interrupted
    assert client.calls == 2
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping")]
    assert lines == ["stopping: cancelling 2 request(s) still in flight"]


async def test_a_stop_during_a_long_pause_with_nothing_in_flight_ends_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 with Retry-After: 3000 pauses the pool; stop() with no request in flight and no
    write pending ends the run at once, without waiting out the grace period."""
    caplog.set_level(logging.INFO, "exporter.pipeline")
    clock = FakeClock(time.time())
    waiting = asyncio.Event()

    async def long_sleep(seconds: float) -> None:  # the pause: never over within the test
        clock.sleeps.append(seconds)
        waiting.set()
        await asyncio.Event().wait()

    limited = Response(429, RateHeaders(retry_after_at=clock.now + 3000), b"{}")
    client = ScriptedClient(limited)
    pipeline, budget = _scripted_pipeline(tmp_path, client, clock)
    pipeline._sleep = budget._sleep = long_sleep
    pipeline.grace_s = 10**6  # waited out, the test would time out instead
    running = asyncio.ensure_future(pipeline.run(_plan(3)))
    await waiting.wait()
    pipeline.stop()
    result = await asyncio.wait_for(running, 60)
    assert result.interrupted
    assert client.calls == 1
    assert min(clock.sleeps) > 2900  # it really was paused by the Retry-After
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("stopping")]
    assert lines == ["stopping: nothing in flight, no write pending"]


async def test_a_fast_run_whose_every_write_fails_stops_before_spending_its_budget(
    tmp_path: Path,
) -> None:
    """A full disk under a fast run: 200 writes failing in a row stop it (exit 4's error)
    long before 30 s have passed, instead of fetching all 1,000 requests' rows."""
    clock = FakeClock(0.0)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output directory should be")
    client = ScriptedClient(*[OK_3_DAYS] * 1000)
    pipeline, _ = _scripted_pipeline(blocked, client, clock)
    pipeline._clock = clock  # no time passes
    result = await pipeline.run(_plan(1000))
    assert result.unreachable is not None
    assert str(result.unreachable).startswith("the output cannot be written (cannot write ")
    assert "0s and 200 writes in a row" in str(result.unreachable)
    assert client.calls < 300


async def test_a_calibrated_window_never_reaches_before_1970(tmp_path: Path) -> None:
    """Shifted by a learnt offset of +1, a request starting on 1970-01-01 is sent one day
    shorter, so the window Braze is asked for starts no earlier than 1970-01-01."""
    sent: list[tuple[str, str | None]] = []

    class Recording(ScriptedClient):
        async def get(self, request: Request, ending_at: str | None = None) -> Response:
            sent.append((request.params(ending_at)["length"], ending_at))
            return await super().get(request, ending_at)

    first = date(1970, 1, 1).toordinal()
    series = Series("s", None, "day")
    request = Request(series, first, 3, ending_at("day", first + 2, UTC_ZONE), 0)
    plan = Plan.of_requests(date(1970, 2, 1), "UTC", [request], [series])
    days = _days_body("1970-01-01", "1970-01-02", "1970-01-03")
    pipeline, _ = _scripted_pipeline(
        tmp_path, Recording(Response(200, RateHeaders(), days)), FakeClock(0.0)
    )
    pipeline.result.calibration = Calibration({"day": 1})
    await pipeline.run(plan)
    assert sent == [("2", ending_at("day", first + 1, UTC_ZONE))]


class BuggyClient(ScriptedClient):
    """Raises what no part of the exporter expects (a bug), for every request."""

    async def get(self, request: Request, ending_at: str | None = None) -> Response:
        self.calls += 1
        raise ZeroDivisionError("a bug")


async def test_an_unexpected_exception_fails_its_series_not_the_run(tmp_path: Path) -> None:
    """A worker's unforeseen exception is a failed series with one reason, never an
    ExceptionGroup out of run(): the run still ends with a result (and its manifest)."""
    pipeline, _ = _scripted_pipeline(tmp_path, BuggyClient(), FakeClock(0.0))
    result = await pipeline.run(_plan(2))
    assert result.series_failed == 2
    assert set(result.failures.values()) == {
        "unexpected error (ZeroDivisionError); please report it"
    }


async def test_an_unexpected_exception_in_the_feeder_fails_the_open_series(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder's unforeseen exception fails every series still open, with one reason."""
    plan = _plan(2)

    def broken(*args: object) -> list[Request]:
        raise KeyError("a bug")

    monkeypatch.setattr(type(plan), "requests_for", broken)
    pipeline, _ = _scripted_pipeline(tmp_path, ScriptedClient(), FakeClock(0.0))
    result = await pipeline.run(plan)
    assert result.series_failed == 2
    assert set(result.failures.values()) == {"unexpected error (KeyError); please report it"}
