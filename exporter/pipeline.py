"""Fan the plan's requests out to N workers through the budget; account for every period.

A bounded queue per rate-limit pool feeds its workers in one TaskGroup: no task per request,
so a plan of millions of requests costs the memory of the queue. A request goes: HTTP slot
(``concurrency`` per pool) -> budget (gate + token) -> client -> interpret -> calibration ->
coverage (only periods in the series' planned window are kept) -> writer -> state. The slot
is given back once the answer is in: ``write_behind`` more workers (``concurrency`` unless set)
let answered requests wait for their writes while others are sent.

The feed makes each series' requests as it queues them, covering the periods of its window
still missing (not recorded as done, or provisional) in the fewest requests; then it runs up to
``gap_passes`` gap-fill passes for what is still missing (Braze's windows may sit elsewhere
than we assume), stopping early when a pass adds nothing. A 400/404 fails its series (its
other requests are skipped), an exhausted retry fails its series, a 401/403 stops everything,
and so does a run whose first connections all fail or whose endpoint answers nothing but 404
(:class:`~exporter.errors.Unreachable`). ``stop()`` (a signal) ends the feed; in-flight
requests get ``grace_s`` to finish before they are cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from zoneinfo import ZoneInfo

from exporter.client import Answer, BrazeClient, cannot_reach, interpret, read_answer
from exporter.coverage import COMPLETE, FAILED, OPEN, Calibration, Coverage, gap_requests, runs
from exporter.errors import (
    ApiError,
    AuthError,
    ExporterError,
    RateLimited,
    RetryableError,
    SeriesError,
    TransportError,
    Unreachable,
    WriteError,
)
from exporter.plan import (
    Plan,
    Request,
    Series,
    describe_periods,
    ending_at,
    period_label,
    within_bound,
)
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy, call_with_retries
from exporter.state import GroupRecorder, State
from exporter.writers import PartitionWriter

__all__ = [
    "COUNTERS",
    "Accounting",
    "Pipeline",
    "RunResult",
    "SeriesCounters",
    "Tally",
    "account",
]

log = logging.getLogger(__name__)

# A list position in a key path (``data[3]``, ``email.0``), named ``[*]`` or ``*``.
_ANY_INDEX = re.compile(r"(\[)\d+\]|(?<=\.)\d+(?=\.|$)")


COUNTERS = (
    "sent",
    "done",
    "skipped",
    "retries",
    "rate_limited",
    "rows",
    "planned",
    "gap",
    "outside",
    "not_numeric",
)
# Fail fast: this many connection failures (refused, DNS, TLS) before any HTTP answer, or
# 404s from this many segment/app pairs (or all the plan has) before any success, and
# nothing can work.
CONNECT_FAILURES_TO_GIVE_UP = 5
NOT_FOUND_TO_GIVE_UP = 3
# After answers, the host is lost when this many connection failures in a row span this long.
CONNECT_FAILURES_LOST = 20
LOST_AFTER_S = 30.0
# Writes failing in a row for LOST_AFTER_S stop the run too, and so do this many in a row
# however fast they came (a full disk under a fast run would spend the budget otherwise).
WRITE_FAILURES_TO_STOP = 10
WRITE_FAILURES_AT_ONCE = 200


class _NotNeeded(Exception):
    """Raised by _attempt when, by the time a request has an HTTP slot, its periods are all
    there (another request brought them) or its series failed: it is not sent."""


@dataclass(slots=True)
class _Streak:
    """Failures in a row since the last success: too many of them, for too long, mean the
    host (or the output) is gone, not having a bad moment."""

    limit: int
    span_s: float
    what: str
    at_once: int | None = None  # this many in a row is enough, however short the span
    count: int = 0
    since: float = 0.0
    silent_s: float = 0.0

    def reset(self, now: float) -> None:
        self.count, self.since = 0, now

    def failed(self, now: float) -> bool:
        self.count += 1
        self.silent_s = now - self.since
        if self.at_once is not None and self.count >= self.at_once:
            return True
        return self.count >= self.limit and self.silent_s >= self.span_s

    def describe(self) -> str:
        return f"{self.silent_s:.0f}s and {self.count} {self.what} in a row"


@dataclass(slots=True)
class Tally:
    """Counts for the whole run, or summed over some series."""

    sent: int = 0  # HTTP attempts, retries included
    done: int = 0  # requests answered and written
    skipped: int = 0  # planned requests whose periods other requests had brought meanwhile
    retries: int = 0
    rate_limited: int = 0
    rows: int = 0  # rows written (a period that two responses brought counts twice)
    planned: int = 0  # requests planned for the periods still needed at the start
    gap: int = 0  # gap-fill requests queued
    outside: int = 0  # well-formed points outside the series' planned window: not written
    not_numeric: int = 0  # values of long series that are no number (logged): not written


class SeriesCounters:
    """The same counts per series, as flat arrays indexed by the series' position in the plan:
    a few bytes per series instead of an object and a dict entry each (100,000s of series)."""

    def __init__(self, size: int) -> None:
        # 32-bit counts: a series has at most some millions of periods, rows or requests.
        # A column is made at its first count: most runs never retry, skip or see a 429.
        self._size = size
        self._columns: dict[str, array[int]] = {}

    def add(self, index: int, name: str, n: int = 1) -> None:
        column = self._columns.get(name)
        if column is None:
            column = self._columns[name] = array("i", bytes(4 * self._size))
        column[index] += n

    def get(self, index: int, name: str) -> int:
        column = self._columns.get(name)
        return 0 if column is None else column[index]

    def sum(self, indices: Sequence[int]) -> Tally:
        return Tally(
            **{name: sum(column[i] for i in indices) for name, column in self._columns.items()}
        )


@dataclass
class RunResult:
    requests_planned: int = 0
    totals: Tally = field(default_factory=Tally)
    by_series: SeriesCounters = field(default_factory=lambda: SeriesCounters(0))
    coverage: Coverage | None = None
    calibration: Calibration = field(default_factory=Calibration)
    failures: dict[Series, str] = field(default_factory=dict)
    auth_error: AuthError | None = None
    unreachable: Unreachable | None = None
    interrupted: bool = False
    started: float = 0.0
    finished: float = 0.0

    @property
    def elapsed(self) -> float:
        return max(0.0, self.finished - self.started)

    @property
    def series_complete(self) -> int:
        return 0 if self.coverage is None else self.coverage.count(COMPLETE)

    @property
    def series_failed(self) -> int:
        return len(self.failures)

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
        budgets: Mapping[str, Budget] | None = None,
        state: State | None,
        policy: RetryPolicy,
        concurrency: int,
        fresh: bool = False,
        grace_s: float = 10.0,
        gap_passes: int = 3,
        write_behind: int | None = None,
        calibration: Calibration | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.budget = budget  # the workspace pool: every series not named in ``budgets``
        self.budgets = dict(budgets or {})  # series kind -> the budget of its own pool
        self.writer = writer
        self.state = state
        self._recorder = None if state is None else GroupRecorder(state)
        self.policy = policy
        self.concurrency = concurrency
        # Answered requests whose rows may wait for their write (the Parquet encoder, the
        # group commit) while ``concurrency`` others are in flight, per pool, so that a
        # write's wait never holds an HTTP slot: ``concurrency`` unless set. Each holds one
        # request's points (at most 100 periods); after a kill -9 they are fetched again.
        self.write_behind = concurrency if write_behind is None else write_behind
        self.fresh = fresh
        self.grace_s = grace_s
        self.gap_passes = gap_passes
        self._sleep = sleep
        self._clock = clock
        self.result = RunResult(calibration=calibration or Calibration())
        self._stopping = asyncio.Event()
        # A 401/403 or an unreachable host ends the whole run: set by the request that met
        # it before its task yields, so a request that this answer's slot wakes is not sent.
        self._fatal = False
        self._in_flight = 0
        # Set whenever a request's answer or a write lands: a stop waits for these, not time.
        self._landed = asyncio.Event()
        self._answered = False  # any HTTP response at all
        self._succeeded = False  # any 200
        self._connect_failures = 0  # before any HTTP answer
        self._lost_host = _Streak(CONNECT_FAILURES_LOST, LOST_AFTER_S, "attempts")
        self._lost_output = _Streak(
            WRITE_FAILURES_TO_STOP, LOST_AFTER_S, "writes", at_once=WRITE_FAILURES_AT_ONCE
        )
        self._not_found: set[tuple[str, tuple[tuple[str, str | None], ...]]] = set()
        self._not_found_limit = NOT_FOUND_TO_GIVE_UP
        self._endings: dict[tuple[str, int], str] = {}
        self._plan: Plan | None = None
        self._keeping: set[asyncio.Future[None]] = set()
        self._stopped_at = 0.0

    def stop(self) -> None:
        """Take no new work; what is in flight gets the grace period, and with nothing in
        flight (a pause, a retry's wait) the run ends at once."""
        self.result.interrupted = True
        if not self._stopping.is_set():
            self._stopped_at = self._clock()
        self._stopping.set()

    def _taking_no_work(self) -> bool:
        """True once stop() was called or a fatal error ends the run."""
        return self._fatal or self._stopping.is_set()

    def elapsed(self) -> float:
        return self._clock() - self.result.started if self.result.started else 0.0

    async def run(self, plan: Plan, *, send: bool = True) -> RunResult:
        """Fetch the plan; with ``send`` False (the run stopped before its data phase: a
        401 or an unreachable host during discovery, a signal) only account for it: every
        period not already done is reported missing."""
        result = self.result
        self._plan = plan
        self._tz = ZoneInfo(plan.timezone)
        result.started = self._clock()
        self._lost_host.reset(result.started)
        self._lost_output.reset(result.started)
        result.by_series = SeriesCounters(len(plan.series))
        done = None
        if self.state is not None and not self.fresh:  # what is done already, unless --fresh
            done = self.state.done(lambda: {s.key: i for i, s in enumerate(plan.series)})
        result.coverage = coverage = Coverage(plan, done)
        # Requests cover what is still needed, not the window: a nightly run re-reads its
        # provisional periods and the new ones, in as few requests as they fit.
        for index in coverage.open_series():
            planned = plan.count_requests(index, coverage.missing(index))
            result.by_series.add(index, "planned", planned)
            result.requests_planned += planned
        result.totals.planned = result.requests_planned
        if not send:
            result.finished = result.started
            return result
        pairs: set[tuple[str, tuple[tuple[str, str | None], ...]]] = set()
        for s in plan.series:  # stop counting once there are enough
            pairs.add((s.kind, s.dimensions()))
            if len(pairs) >= NOT_FOUND_TO_GIVE_UP:
                break
        self._not_found_limit = len(pairs)
        # One lane (queue, feeder, workers) per rate-limit pool, so a pool paused by a 429
        # holds up only its own requests.
        lanes = list({id(b): b for b in map(self._budget_of, plan.series)}.values())
        watcher: asyncio.Task[None] | None = None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = []
                workers = self.concurrency + self.write_behind
                for budget in lanes or [self.budget]:
                    queue: asyncio.Queue[Request | None] = asyncio.Queue(2 * self.concurrency)
                    # ``concurrency`` requests in flight per pool; the other workers hold
                    # answered requests whose rows are being written.
                    sending = asyncio.Semaphore(self.concurrency)
                    tasks += [
                        group.create_task(self._worker(queue, sending)) for _ in range(workers)
                    ]
                    tasks.append(group.create_task(self._feed(plan, queue, budget, workers)))
                watcher = asyncio.create_task(self.watch_stop(tasks))
        except* AuthError as errors:
            result.auth_error = errors.exceptions[0]  # type: ignore[assignment]
        except* Unreachable as errors:
            result.unreachable = errors.exceptions[0]  # type: ignore[assignment]
        except* Exception as errors:  # a last resort (a feeder's bug): one line, no traceback
            reason = _unexpected(errors.exceptions[0])
            log.error("stopped: %s", reason, extra={"event": "run_failed"})
            for index in list(coverage.open_series()):
                result.failures.setdefault(plan.series[index], reason)
                coverage.fail(index)
        finally:
            if watcher is not None:
                watcher.cancel()
                await asyncio.wait([watcher])
            if self._keeping:  # writes of answered requests whose workers were cancelled
                # Within the grace a stop gave (a fatal error gives one of its own).
                since = self._clock() - self._stopped_at if self._stopping.is_set() else 0.0
                await asyncio.wait(self._keeping, timeout=max(0.0, self.grace_s - since))
            result.finished = self._clock()
        return result

    def _budget_of(self, series: Series) -> Budget:
        return self.budgets.get(series.kind, self.budget)

    async def _feed(
        self, plan: Plan, queue: asyncio.Queue[Request | None], lane: Budget, workers: int
    ) -> None:
        """Queue the requests of the series paced by ``lane``, then their gap-fills."""
        coverage = self._coverage
        mine = bytearray(self._budget_of(s) is lane for s in plan.series)
        for index in coverage.open_series():
            if not mine[index]:
                continue
            # Made as they are queued (the queue is bounded): memory follows the series.
            for request in plan.requests_for(index, coverage.missing(index)):
                if self._taking_no_work() or coverage.status[index] != OPEN:
                    break
                if not coverage.needs(request):  # another request brought its periods
                    self.result.count(request, "skipped")
                    continue
                await queue.put(request)
            if self._taking_no_work():
                break
        await queue.join()
        missing = self._missing_total(mine)
        for _ in range(self.gap_passes):
            if self._taking_no_work() or missing == 0:
                break
            for index in list(coverage.open_series()):
                if not mine[index]:
                    continue
                for request in gap_requests(plan, index, coverage.missing(index)):
                    if self._taking_no_work():
                        break
                    await queue.put(request)
            await queue.join()
            before, missing = missing, self._missing_total(mine)
            if missing >= before:
                break  # the pass added nothing: more passes would not either
        for _ in range(workers):
            await queue.put(None)

    @property
    def _coverage(self) -> Coverage:
        assert self.result.coverage is not None
        return self.result.coverage

    def _missing_total(self, mine: bytearray) -> int:
        coverage = self._coverage
        return sum(
            hi - lo + 1 for i in coverage.open_series() if mine[i] for lo, hi in coverage.missing(i)
        )

    async def watch_stop(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """After stop(), give in-flight requests and pending writes grace_s, then cancel the
        stragglers. Workers only waiting (for a pause, a retry, a token) are cancelled as soon
        as nothing is in flight: nothing they hold would be lost."""
        await self._stopping.wait()
        ended = asyncio.ensure_future(asyncio.wait(tasks))
        settled = asyncio.ensure_future(self._settled())
        try:
            await asyncio.wait(
                [ended, settled], timeout=self.grace_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in (ended, settled):
                waiter.cancel()
            await asyncio.wait([ended, settled])
        pending = [task for task in tasks if not task.done()]
        if pending and not self._busy():
            log.info(
                "stopping: nothing in flight, no write pending",
                extra={"event": "stopped_idle"},
            )
            for task in pending:
                task.cancel()
        elif pending:
            writing = len(self._keeping)
            log.warning(
                "stopping: cancelling %d request(s) still in flight%s",
                self._in_flight,
                f" and {writing} answered request(s) still being written (a rerun fetches "
                "what was not)"
                if writing
                else "",
                extra={"event": "cancel_in_flight"},
            )
            for task in pending:
                task.cancel()

    async def under_grace(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """Wait for ``tasks``, work before the data phase (the lists, the details), stopped
        as the data phase is: after stop(), the requests they have in flight
        (:meth:`in_flight`) get ``grace_s``, then every task still running is cancelled.
        A task cancelled so ends cancelled: its owner says what it had done."""
        watcher = asyncio.create_task(self.watch_stop(tasks))
        try:
            await asyncio.wait(tasks)
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.wait([watcher, *tasks])

    @contextlib.contextmanager
    def in_flight(self) -> Iterator[None]:
        """Count one request on the wire, from its token to its answer: what a stop's grace
        waits for (a wait for a token, a pause or a retry is not in flight)."""
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            self._landed.set()

    def _busy(self) -> bool:
        """Whether a request is on the wire or an answered request's rows are being written."""
        return self._in_flight > 0 or bool(self._keeping)

    async def _settled(self) -> None:
        """Returns once no request is in flight and no write is pending; woken by each answer
        and write that lands, and checked then (a landed answer may start its write)."""
        while self._busy():
            self._landed.clear()
            await self._landed.wait()

    async def _worker(
        self, queue: asyncio.Queue[Request | None], sending: asyncio.Semaphore
    ) -> None:
        while (request := await queue.get()) is not None:
            try:
                if self._taking_no_work():
                    continue
                try:
                    await self._one(request, sending)
                except (AuthError, Unreachable):
                    raise
                except SeriesError as exc:
                    if request.gap:  # the gap stays missing and is reported; no failure
                        log.warning(
                            "gap-fill %s %s: %s",
                            request.series.label,
                            self._periods(request),
                            exc.reason,
                            extra={"event": "gap_failed", "series": self._fields(request)},
                        )
                    else:
                        self._fail(request, exc.reason)
                except ApiError as exc:
                    self._fail(request, exc.reason)
                except WriteError as exc:
                    self._fail(request, str(exc))
                    self._note_write_failure(exc)
                except ExporterError as exc:
                    self._fail(request, str(exc))
                except Exception as exc:  # a last resort: a bug fails its series, not the run
                    self._fail(request, _unexpected(exc))
            finally:
                queue.task_done()
        queue.task_done()

    async def _one(self, request: Request, sending: asyncio.Semaphore) -> None:
        sent = [False]  # whether an attempt has gone out yet
        try:
            answer = await call_with_retries(
                lambda: self._attempt(request, sending, sent),
                policy=self.policy,
                label=lambda: f"{request.series.label} {self._periods(request)}",
                fields=lambda: self._fields(request),
                on_retry=lambda: self.result.count(request, "retries"),
                stopping=self._taking_no_work,
                sleep=self._sleep,
            )
        except RetryableError:
            if self._taking_no_work():
                return  # retries ended by stop(): interrupted, not failed
            raise
        except _NotNeeded:
            # The series failed, or other requests brought these periods meanwhile.
            if not request.gap and self._coverage.status[request.index] != FAILED:
                self.result.count(request, "skipped")
            return
        # The rows of an answered request are kept even if the run ends meanwhile (a 401 or
        # a lost host elsewhere cancels the workers): the write goes on in its own task, and
        # run() waits up to grace_s for those still landing.
        keeping = asyncio.ensure_future(self._keep(request, answer))
        self._keeping.add(keeping)
        keeping.add_done_callback(self._kept)
        await asyncio.shield(keeping)

    def _kept(self, keeping: asyncio.Future[None]) -> None:
        """A write landed (or failed): its error is its worker's to raise, or, the worker
        cancelled, shows as the periods still missing."""
        self._keeping.discard(keeping)
        self._landed.set()
        if not keeping.cancelled():
            keeping.exception()

    async def _keep(self, request: Request, answer: Answer) -> None:
        """Write the points inside the series' window; record them in state and coverage."""
        index = request.index
        coverage = self._coverage
        points = answer.points
        if answer.not_numeric:
            self._note_not_numeric(request, answer.not_numeric, answer.withheld)
        if answer.doubtful:
            self._warn(
                request,
                "values_doubtful",
                "%d value(s) negative or beyond 2^53 (no count is; float64 holds the latter "
                "only approximately), written as sent, by key: %s",
                len(answer.doubtful),
                _by_key(answer.doubtful),
            )
        if answer.replaced:
            self._warn(
                request,
                "invalid_unicode",
                "%d lone surrogate(s) (invalid Unicode) in names or metric keys; written as U+FFFD",
                answer.replaced,
            )
        inside = coverage.inside(index, points)
        if len(inside) < len(points):
            self.result.count(request, "outside", len(points) - len(inside))
        written = await self.writer.write(request.series, inside) if inside else []
        spans = runs(p.period for p in inside)
        if self._recorder is not None and spans:
            plan = self._plan
            assert plan is not None
            # Without a settle boundary (a plan built by hand), every period is provisional.
            settle_from = plan.settle_from.get(request.series.unit, -(2**62))
            await self._recorder.record(request.series.key, spans, settle_from, written)
        coverage.record(index, spans)
        self._lost_output.reset(self._clock())
        self.result.count(request, "done")
        self.result.count(request, "rows", sum(p.rows for p in inside))

    def _as_sent(self, request: Request) -> tuple[Request, int, str]:
        """The request as it goes out: its window shifted by the calibrated offset (and cut
        where that would reach before the earliest period), the period ``ending_at`` names,
        and its text."""
        unit = request.series.unit
        shift = self.result.calibration.shift(unit)
        if shift == 0 and request.ending_at:
            return request, request.last, request.ending_at
        end, length = within_bound(unit, request.last - shift, request.length)
        if length != request.length:
            request = replace(request, first=request.last - length + 1, length=length)
        key = (unit, end)
        text = self._endings.get(key)
        if text is None:
            text = self._endings[key] = ending_at(unit, end, self._tz)
        return request, end, text

    async def _attempt(
        self, request: Request, sending: asyncio.Semaphore, sent: list[bool]
    ) -> Answer:
        """One HTTP attempt: an HTTP slot of the pool, then (unless stopping, or no period
        is needed any more) a token of its budget and the request. Once an answer ends the
        run (AuthError, Unreachable), no request is sent: at most ``concurrency`` were."""
        try:
            return await self._exchange(request, sending, sent)
        except (AuthError, Unreachable):
            # Set before this task yields: the answer gave its slot back, and the request
            # that slot wakes must see the end before it is sent.
            self._fatal = True
            raise

    async def _exchange(
        self, request: Request, sending: asyncio.Semaphore, sent: list[bool]
    ) -> Answer:
        budget = self._budget_of(request.series)
        async with sending:
            if self._taking_no_work():  # stopped while this request waited for a slot
                raise RetryableError("not sent: the run is stopping")
            if not self._coverage.needs(request):
                raise _NotNeeded
            if request.gap and not sent[0]:
                self.result.count(request, "gap")  # counted when sent, not when queued
            sent[0] = True
            await budget.acquire()  # a wait for a token (or a pause) is not in flight
            try:
                with self.in_flight():
                    # The window as calibration knows it now, not when the request began
                    # waiting.
                    wire, end, text = self._as_sent(request)
                    self.result.count(request, "sent")
                    response = await self.client.get(wire, text)
            except TransportError as exc:
                self._note_transport(exc)
                raise
        self._answered = True
        self._connect_failures = 0
        self._lost_host.reset(self._clock())
        budget.observe(response.rate, status=response.status)
        if response.status == 429:
            self.result.count(request, "rate_limited")
            until = budget.rate_limited(response.rate)
            try:
                interpret(request, response, self._tz)
            except RateLimited as exc:
                exc.reset_at = until  # the budget's sanitized pause, never the raw header
                raise
        elif response.status == 404:
            self._note_not_found(request.series)
        answer = read_answer(request, response, self._tz)
        self._succeeded = True
        self.result.calibration.observe(request.series.unit, wire.length, end, answer.points)
        return answer

    def cannot_reach(self, exc: TransportError) -> Unreachable:
        """The fail-fast error for a host no connection reaches (discovery's too)."""
        return cannot_reach(self.client.host, exc)

    def _note_transport(self, exc: TransportError) -> None:
        if not exc.connect_failed:
            return
        self._connect_failures += 1
        if not self._answered:
            if self._connect_failures >= CONNECT_FAILURES_TO_GIVE_UP:
                raise self.cannot_reach(exc)
            return
        # It answered before: give up only when every connection has failed for a while, so
        # that the retries of every worker do not hammer a dead host for minutes.
        if self._lost_host.failed(self._clock()):
            raise Unreachable(
                f"lost {self.client.host}: {exc.detail}, for {self._lost_host.describe()}. "
                "Completed periods are saved: rerun the same command to resume once it "
                "answers again"
            )

    def _note_write_failure(self, exc: WriteError) -> None:
        """Writes failing in a row for a while (disk full, object store down): stop, rather
        than spend the budget fetching rows that cannot be kept."""
        if self._lost_output.failed(self._clock()):
            raise Unreachable(
                f"the output cannot be written ({exc}; for {self._lost_output.describe()}). "
                "Completed periods are saved: free space or fix the store, then rerun the "
                "same command"
            )

    def _note_not_found(self, series: Series) -> None:
        """404 before any success, from several segment/app pairs (or all there are): the
        host is no Braze REST host. One bad pair alone only fails its own series."""
        if self._succeeded:
            return
        self._not_found.add((series.kind, series.dimensions()))
        if len(self._not_found) >= self._not_found_limit:
            raise Unreachable(
                f"{self.client.host} answers 404 to {series.info.path}: it is not a Braze "
                f"REST host. Check braze.endpoint (or $BRAZE_REST_ENDPOINT) is your "
                f"instance's REST host, such as https://rest.iad-01.braze.com, with no path"
            )

    def _note_not_numeric(
        self, request: Request, paths: Sequence[str], withheld: Sequence[str] = ()
    ) -> None:
        """Values where Braze documents a number that are none (a string, a null): they
        cannot be rows, so they are counted (manifest ``values_not_numeric``) and named.
        ``withheld``: the days none of whose values was a number, left missing."""
        self.result.count(request, "not_numeric", len(paths))
        # Every key named, whatever the count: a path with its day and list positions as *
        # (the keys are Braze's, so there are few), and each full path at DEBUG.
        days = (
            f"; {len(withheld)} day(s) held no number at all ({_span_of_labels(withheld)}): "
            "not written, left missing to be read again"
            if withheld
            else ""
        )
        self._warn(
            request,
            "values_not_numeric",
            "%d value(s) not a number, not written, by key: %s%s",
            len(paths),
            _by_key(paths),
            days,
        )
        for path in paths:
            log.debug("%s: %s is not a number", request.series.label, path)

    def _warn(self, request: Request, event: str, message: str, *args: object) -> None:
        """A warning about what one answer held: ``message`` after the request's series and
        periods, with ``event`` and the request's fields for a JSON log record."""
        log.warning(
            "%s %s: " + message,
            request.series.label,
            self._periods(request),
            *args,
            extra={"event": event, "series": self._fields(request)},
        )

    def _periods(self, request: Request) -> str:
        return describe_periods(request.series.unit, request.first, request.last)

    def _fields(self, request: Request) -> dict[str, str | None]:
        """The request for a JSON log record: its series' fields and its periods as
        ``first`` and ``last`` labels (``2024-01-05``, or ``2024-01-05T10:00Z`` for an hour),
        fields a log query can compare, not one sentence to parse."""
        unit = request.series.unit
        return {
            **request.series.log_fields(),
            "first": period_label(unit, request.first),
            "last": period_label(unit, request.last),
        }

    def _fail(self, request: Request, reason: str) -> None:
        series = request.series
        if series not in self.result.failures:
            log.error(
                "failed %s: %s",
                series.label,
                reason,
                extra={"event": "series_failed", "series": series.log_fields()},
            )
            self.result.failures[series] = reason
            self._coverage.fail(request.index)


def _by_key(paths: Sequence[str]) -> str:
    """``data[*].a (30), data[*].b (2)``: key paths with their day and list positions as
    ``*`` (the keys are Braze's, so there are few), each with its count."""
    keys = Counter(_ANY_INDEX.sub(lambda m: "[*]" if m[1] else "*", p) for p in paths)
    return ", ".join(f"{key} ({n})" for key, n in sorted(keys.items()))


def _span_of_labels(labels: Sequence[str]) -> str:
    """``2024-01-01..2024-01-03`` from the first and last of ``labels`` (one: itself)."""
    ordered = sorted(labels)
    return ordered[0] if len(ordered) == 1 else f"{ordered[0]}..{ordered[-1]}"


def _unexpected(exc: BaseException) -> str:
    """The one line for an exception no part of the exporter expected: its type only (its
    text could hold anything a server sent)."""
    return f"unexpected error ({type(exc).__name__}); please report it"


@dataclass
class Accounting:
    """Where every planned period of some series stands at the end of a run."""

    series: int = 0
    complete: int = 0
    # Series indices, 4 bytes each: an interrupted run of a million series lists them all.
    incomplete: array[int] = field(default_factory=lambda: array("i"))
    failed: array[int] = field(default_factory=lambda: array("i"))
    periods_planned: int = 0
    periods_already_done: int = 0  # recorded as done by earlier runs
    periods_written: int = 0  # newly present after this run
    periods_missing: int = 0
    outside_window: int = 0

    @property
    def series_incomplete(self) -> int:
        return len(self.incomplete)


def account(result: RunResult, plan: Plan, indices: Sequence[int] | range) -> Accounting:
    """Complete (every planned period present), failed (with a reason in ``failures``) or
    incomplete (interrupted, never attempted, or periods missing after gap-fill)."""
    coverage = result.coverage or Coverage(plan)
    out = Accounting()
    for i in indices:
        out.series += 1
        planned, missing = coverage.planned_size(i), coverage.missing_size(i)
        already = coverage.already_done[i]
        out.periods_planned += planned
        out.periods_missing += missing
        out.periods_already_done += already
        out.periods_written += planned - missing - already
        out.outside_window += result.by_series.get(i, "outside") if result.coverage else 0
        if plan.series[i] in result.failures:
            out.failed.append(i)
        elif coverage.status[i] == COMPLETE:
            out.complete += 1
        else:
            out.incomplete.append(i)
    return out
