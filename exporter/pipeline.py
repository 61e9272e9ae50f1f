"""Fan the plan's requests out to N workers through the budget; record each series' fate.

A bounded queue feeds ``concurrency`` workers in one TaskGroup: no task per request, so a plan
of millions of requests costs the memory of the queue. A request goes: budget (gate + token)
-> client -> interpret -> writer -> state. A 400/404 fails its series (its other requests are
skipped), an exhausted retry fails its series, a 401/403 stops everything. ``stop()`` (a
signal) ends the feed; in-flight requests get ``grace_s`` to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

from exporter.client import BrazeClient, Point, interpret
from exporter.errors import ApiError, AuthError, ExporterError, RateLimited, RetryableError
from exporter.plan import Plan, Request, Series
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy, call_with_retries
from exporter.state import State
from exporter.writers import PartitionWriter

__all__ = ["COUNTERS", "Pipeline", "RunResult", "SeriesCounters", "Tally"]

log = logging.getLogger(__name__)


COUNTERS = ("sent", "done", "skipped", "retries", "rate_limited", "rows", "planned")


@dataclass(slots=True)
class Tally:
    """Counts for the whole run, or summed over some series."""

    sent: int = 0  # HTTP attempts, retries included
    done: int = 0
    skipped: int = 0  # already done in an earlier run
    retries: int = 0
    rate_limited: int = 0
    rows: int = 0
    planned: int = 0  # requests the plan has


class SeriesCounters:
    """The same counts per series, as flat arrays indexed by the series' position in the plan:
    a few bytes per series instead of an object and a dict entry each (100,000s of series)."""

    def __init__(self, size: int) -> None:
        # 32-bit counts: a series has at most some millions of periods, rows or requests.
        self._columns = {name: array("i", bytes(4 * size)) for name in COUNTERS}

    def add(self, index: int, name: str, n: int = 1) -> None:
        self._columns[name][index] += n

    def get(self, index: int, name: str) -> int:
        return self._columns[name][index]

    def sum(self, indices: Sequence[int]) -> Tally:
        return Tally(
            **{name: sum(column[i] for i in indices) for name, column in self._columns.items()}
        )


@dataclass
class RunResult:
    requests_planned: int = 0
    totals: Tally = field(default_factory=Tally)
    by_series: SeriesCounters = field(default_factory=lambda: SeriesCounters(0))
    series_done: int = 0  # every request of the series done or skipped
    failures: dict[Series, str] = field(default_factory=dict)
    auth_error: AuthError | None = None
    interrupted: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(0.0, self.finished - self.started)

    def count(self, request: Request, name: str, n: int = 1) -> None:
        """Add ``n`` to one counter of the request's series and of the totals."""
        self.by_series.add(request.index, name, n)
        setattr(self.totals, name, getattr(self.totals, name) + n)


class Pipeline:
    def __init__(
        self,
        *,
        client: BrazeClient,
        budget: Budget,
        writer: PartitionWriter,
        state: State | None,
        policy: RetryPolicy,
        concurrency: int,
        fresh: bool = False,
        grace_s: float = 10.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.budget = budget
        self.writer = writer
        self.state = state
        self.policy = policy
        self.concurrency = concurrency
        self.fresh = fresh
        self.grace_s = grace_s
        self._sleep = sleep
        self._clock = clock
        self.result = RunResult()
        self._stopping = asyncio.Event()
        self._in_flight = 0

    def stop(self) -> None:
        """Take no new work; the caller's grace period then bounds what is in flight."""
        self.result.interrupted = True
        self._stopping.set()

    def elapsed(self) -> float:
        return self._clock() - self.result.started if self.result.started else 0.0

    async def run(self, plan: Plan) -> RunResult:
        result = self.result
        result.requests_planned = len(plan.requests)
        result.started = self._clock()
        result.by_series = SeriesCounters(len(plan.series))
        for request in plan.requests:
            result.count(request, "planned")
        result.series_done = sum(
            1 for i in range(len(plan.series)) if result.by_series.get(i, "planned") == 0
        )
        queue: asyncio.Queue[Request | None] = asyncio.Queue(maxsize=2 * self.concurrency)
        watcher: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._worker(queue)) for _ in range(self.concurrency)]
                tasks.append(group.create_task(self._feed(plan, queue)))
                watcher = asyncio.create_task(self._watch_stop(tasks))
        except* AuthError as errors:
            result.auth_error = errors.exceptions[0]  # type: ignore[assignment]
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
            result.finished = self._clock()
        return result

    async def _feed(self, plan: Plan, queue: asyncio.Queue[Request | None]) -> None:
        state = None if self.fresh else self.state  # what is done already, unless --fresh
        for request in plan.requests:
            if self._stopping.is_set():
                break
            if state is not None and state.is_done(request):
                self.result.count(request, "skipped")
                self._note_if_series_done(request)
                continue
            await queue.put(request)
        for _ in range(self.concurrency):
            await queue.put(None)

    async def _watch_stop(self, tasks: list[asyncio.Task[None]]) -> None:
        """After stop(), give in-flight requests grace_s, then cancel the stragglers."""
        await self._stopping.wait()
        _, pending = await asyncio.wait(tasks, timeout=self.grace_s)
        if pending:
            log.warning(
                "stopping: cancelling %d request(s) still in flight",
                self._in_flight,
                extra={"event": "cancel_in_flight"},
            )
            for task in pending:
                task.cancel()

    async def _worker(self, queue: asyncio.Queue[Request | None]) -> None:
        while (request := await queue.get()) is not None:
            if self._stopping.is_set() or request.series in self.result.failures:
                continue
            self._in_flight += 1
            try:
                await self._one(request)
            except AuthError:
                raise
            except ApiError as exc:
                self._fail(request.series, exc.reason)
            except ExporterError as exc:
                self._fail(request.series, str(exc))
            finally:
                self._in_flight -= 1

    async def _one(self, request: Request) -> None:
        try:
            points = await call_with_retries(
                lambda: self._attempt(request),
                policy=self.policy,
                label=_describe(request),
                on_retry=lambda: self.result.count(request, "retries"),
                stopping=self._stopping.is_set,
                sleep=self._sleep,
            )
        except RetryableError:
            if self._stopping.is_set():
                return  # retries ended by stop(): interrupted, not failed
            raise
        written = await self.writer.write(request.series, points)
        if self.state is not None:
            self.state.mark_done(request, len(points), written)
        self.result.count(request, "done")
        self.result.count(request, "rows", len(points))
        self._note_if_series_done(request)

    def _note_if_series_done(self, request: Request) -> None:
        counters, i = self.result.by_series, request.index
        if counters.get(i, "done") + counters.get(i, "skipped") == counters.get(i, "planned"):
            self.result.series_done += 1

    async def _attempt(self, request: Request) -> list[Point]:
        await self.budget.acquire()
        self.result.count(request, "sent")
        response = await self.client.get(request)
        self.budget.observe(response.rate, status=response.status)
        if response.status == 429:
            self.result.count(request, "rate_limited")
            until = self.budget.rate_limited(response.rate)
            try:
                return interpret(request, response)
            except RateLimited as exc:
                exc.reset_at = until  # the budget's sanitized pause, never the raw header
                raise
        return interpret(request, response)

    def _fail(self, series: Series, reason: str) -> None:
        if series not in self.result.failures:
            log.error(
                "failed %s: %s",
                series.label,
                reason,
                extra={"event": "series_failed", "series": series.label},
            )
            self.result.failures[series] = reason


def _describe(request: Request) -> str:
    """Which request: ``segment=a app=_all unit=day periods 2024-01-01..2024-04-09``."""
    unit = request.series.unit

    def name(period: int) -> str:
        if unit == "day":
            return date.fromordinal(period).isoformat()
        return datetime.fromtimestamp(period * 3600, UTC).strftime("%Y-%m-%dT%H:00Z")

    return f"{request.series.label} periods {name(request.first)}..{name(request.last)}"
