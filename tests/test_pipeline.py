"""The pipeline against the sandbox in this event loop: tokens, failures, stop."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from exporter.client import BrazeClient, make_session
from exporter.config import ApiKey
from exporter.pipeline import Pipeline, account
from exporter.plan import Plan, Request, Series, ending_at
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, sandbox_stats, start_sandbox
from exporter.writers import PartitionWriter

UTC_ZONE = __import__("zoneinfo").ZoneInfo("UTC")


class CountingBudget(Budget):
    def __init__(self) -> None:
        super().__init__(10**8, 1.0, 0.1)
        self.acquired = 0

    async def acquire(self) -> None:
        self.acquired += 1
        await super().acquire()


def _plan(segments: int, days: int = 3) -> Plan:
    last = date(2024, 6, 30).toordinal()
    requests = tuple(
        Request(
            Series(f"s{i}", None, "day"), last - days + 1, days, ending_at("day", last, UTC_ZONE), i
        )
        for i in range(segments)
    )
    series = tuple(r.series for r in requests)
    return Plan(date(2024, 7, 1), "UTC", requests, series)


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
        Request(s, last - 9 * k - 8, 9, ending_at("day", last - 9 * k, UTC_ZONE), i)
        for i, s in enumerate((bad, good))
        for k in range(3)
    )
    plan = Plan(date(2024, 7, 1), "UTC", requests, (bad, good))
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
