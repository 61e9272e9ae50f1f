"""Rate-limit pools: each pool paces and pauses alone (a 429 in one never holds up another)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import date
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from exporter.client import Response
from exporter.coverage import COMPLETE
from exporter.pipeline import Pipeline
from exporter.plan import Plan, Request, Series, ending_at
from exporter.ratelimit import Budget, RateHeaders
from exporter.retry import RetryPolicy
from exporter.writers import PartitionWriter
from tests.conftest import FakeClock

LAST = date(2024, 6, 30).toordinal()


class FakeBraze:
    """Answers every request with its periods, except the first of ``throttled`` kinds: 429."""

    host = "fake:443"

    def __init__(self, clock: FakeClock, throttled: str) -> None:
        self.clock = clock
        self.throttled = throttled
        self.sent: list[str] = []

    async def get(self, request: Request, ending: str | None = None) -> Response:
        kind = request.series.kind
        self.sent.append(kind)
        await asyncio.sleep(0)
        if kind == self.throttled and self.sent.count(kind) == 1:
            headers = RateHeaders(limit=1000, remaining=0, reset_at=self.clock() + 600)
            return Response(429, headers, b'{"message": "rate limit exceeded"}')
        key = request.series.info.value_key
        data = [
            {"time": date.fromordinal(p).isoformat(), key: 1}
            for p in range(request.first, request.last + 1)
        ]
        body = json.dumps({"message": "success", "data": data}).encode()
        return Response(200, RateHeaders(limit=250_000, remaining=249_000), body)


def _plan(*, lists_first: bool = False) -> Plan:
    series = [Series(f"s{i}", None, "day") for i in range(6)]
    series.append(Series(None, None, "day", "purchases_quantity"))
    if lists_first:
        series.reverse()
    requests = tuple(
        Request(s, LAST - 2, 3, ending_at("day", LAST, ZoneInfo("UTC")), i)
        for i, s in enumerate(series)
    )
    return Plan.of_requests(date(2024, 7, 1), "UTC", requests, series)


def _held(clock: FakeClock, gate: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """A pool's sleep: its pause ends only when ``gate`` is set."""

    async def held(seconds: float) -> None:
        await gate.wait()
        await clock.sleep(seconds)

    return held


def _pipeline(
    tmp_path: Path, braze: FakeBraze, budget: Budget, budgets: Mapping[str, Budget] | None = None
) -> Pipeline:
    """One worker a pool against ``braze``; a retry's own wait takes no time."""

    async def no_wait(_: float) -> None:
        await asyncio.sleep(0)

    return Pipeline(
        client=braze,  # type: ignore[arg-type]
        budget=budget,
        budgets=budgets,
        writer=PartitionWriter(tmp_path, "jsonl", durable=False),
        state=None,
        policy=RetryPolicy(max_attempts=3),
        concurrency=1,  # one worker per pool: with one queue it would wait on the 429
        sleep=no_wait,
    )


async def test_a_429_in_the_list_pool_does_not_pause_the_workspace_pool(tmp_path: Path) -> None:
    """Purchases moved to the list pool get a 429: the sessions (workspace pool) all finish
    while the list pool is still paused; the purchases finish once its pause ends."""
    clock = FakeClock()
    gate = asyncio.Event()
    lists = Budget(10**8, 1.0, 0.1, clock=clock, sleep=_held(clock, gate))
    workspace = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep)
    braze = FakeBraze(clock, "purchases_quantity")
    pipeline = _pipeline(tmp_path, braze, workspace, {"purchases_quantity": lists})
    plan = _plan(lists_first=True)
    running = asyncio.create_task(pipeline.run(plan))

    async def sessions_done() -> None:
        while True:
            coverage: Any = pipeline.result.coverage
            if coverage is not None and all(coverage.status[i] == COMPLETE for i in range(1, 7)):
                return
            await asyncio.sleep(0.01)

    await asyncio.wait_for(sessions_done(), timeout=60)
    assert pipeline.result.coverage is not None
    assert pipeline.result.coverage.status[0] != COMPLETE  # still waiting on its own pool
    assert lists.pauses == 1
    assert workspace.pauses == 0
    assert braze.sent.count("sessions") == 6
    gate.set()
    result = await asyncio.wait_for(running, timeout=60)
    assert result.coverage is not None
    assert result.coverage.count(COMPLETE) == 7
    assert braze.sent.count("purchases_quantity") == 2  # the 429, then the retry


async def test_without_a_pool_override_a_429_pauses_every_series_of_the_pool(
    tmp_path: Path,
) -> None:
    """The control: with every series in one pool, the 429 holds up the sessions too (so the
    test above shows the lanes, not a lucky order)."""
    clock = FakeClock()
    gate = asyncio.Event()
    workspace = Budget(10**8, 1.0, 0.1, clock=clock, sleep=_held(clock, gate))
    braze = FakeBraze(clock, "purchases_quantity")
    pipeline = _pipeline(tmp_path, braze, workspace)
    plan = _plan(lists_first=True)
    running = asyncio.create_task(pipeline.run(plan))
    for _ in range(100):
        await asyncio.sleep(0.01)
    assert braze.sent.count("sessions") == 0  # all behind the paused pool
    gate.set()
    result = await asyncio.wait_for(running, timeout=60)
    assert result.coverage is not None
    assert result.coverage.count(COMPLETE) == 7
