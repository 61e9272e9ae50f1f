"""What a person (or a CI log) sees while a run goes and when it ends."""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TextIO

from exporter.pipeline import RunResult, account
from exporter.plan import Plan, span_label
from exporter.ratelimit import Budget, describe_pace
from exporter.series import WORKSPACE_POOL

__all__ = [
    "Progress",
    "eta_seconds",
    "format_duration",
    "pause_notes",
    "status_line",
    "summary_lines",
]

log = logging.getLogger(__name__)


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(requests: int, requests_per_hour: float, share: float, reserve: float) -> float:
    """Least time ``requests`` take: at the bucket's rate while the hour's pool lasts, and at
    most (limit - reserve) per hour beyond that."""
    if requests <= 0:
        return 0.0
    per_hour = requests_per_hour * min(share, 1 - reserve)
    if requests <= per_hour:
        return requests / (requests_per_hour * share / 3600)
    return requests / per_hour * 3600


def status_line(
    result: RunResult, plan: Plan, elapsed: float, budgets: Iterable[Budget] = ()
) -> str:
    """The progress line. While a pool's budget is paused, or paced below its rate after
    blind 429s, it says so (see :func:`pause_notes`); the ETA counts the rest of the longest
    pause, then the requests left at the rate seen so far or, if slower, the slowest pace (a
    paced pool's own share of what is left is not known here, so the ETA errs long). While
    a server's ask to wait more than an hour goes unheeded, the ETA is ``unknown``."""
    totals = result.totals
    to_do = result.requests_planned - totals.skipped + totals.gap
    left = to_do - totals.done
    rate = totals.sent / elapsed if elapsed > 0 else 0.0
    budgets = list(budgets)
    waiting = max((b.paused_for for b in budgets), default=0.0)
    going = min([b.pace for b in budgets if b.paced], default=rate)
    going = min(rate, going) if rate > 0 else going
    eta = format_duration(waiting + left / going) if going > 0 and left > 0 else "-"
    if any(b.ignored_wait is not None for b in budgets) and left > 0:
        eta = "unknown"  # the server asked for a wait we did not take: it may refuse until then
    paused = "".join(f"{note} | " for note in pause_notes(budgets))
    return (
        f"series {result.series_complete}/{len(plan.series)} complete | requests "
        f"{totals.done}/{to_do} | {rate:.1f} req/s | {paused}ETA {eta} | retries "
        f"{totals.retries} | 429s {totals.rate_limited} | failed {result.series_failed}"
    )


def pause_notes(budgets: Iterable[Budget]) -> list[str]:
    """``paused until 14:03:10 UTC: 429, Reset`` for each paused budget, and ``paced to 1
    request every 60s: 429s without Reset`` for each budget whose AIMD pace is below its
    rate (a pool other than the workspace's is named: ``lists pool paused until ...``), and
    ``server asked to wait 72h00m, ignored: implausible`` while such an ask goes unheeded."""
    notes = []
    for budget in budgets:
        pool = "" if budget.name == WORKSPACE_POOL else f"{budget.name} pool "
        until = budget.paused_until
        if until is not None:
            when = datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S")
            notes.append(f"{pool}paused until {when} UTC: {budget.pause_reason}")
        if (asked := budget.ignored_wait) is not None:
            notes.append(
                f"{pool}server asked to wait {format_duration(asked)}, ignored: implausible"
            )
        if budget.paced:
            notes.append(f"{pool}paced to {describe_pace(budget.pace)}: {budget.pace_reason}")
    return notes


class Progress:
    """On a terminal: one line redrawn in place. Elsewhere: a log line every ``interval_s``
    (so CI logs and JSON logs get one concise record, never a flood of carriage returns)."""

    def __init__(
        self, stream: TextIO, line: Callable[[], str], *, interactive: bool, interval_s: float
    ) -> None:
        self.stream = stream
        self.line = line
        self.interactive = interactive
        self.interval_s = interval_s
        self._drawn = False
        self._next = interval_s  # for tick(): the first line after one interval

    def tick(self, now: float) -> None:
        """For work that is not a task (verify): draw when ``now`` (seconds since the work
        began) has reached the next interval."""
        if now >= self._next:
            self.draw()
            self._next = now + self.interval_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.draw()

    def draw(self) -> None:
        if self.interactive:
            self.stream.write("\r\x1b[2K" + self.line())
            self.stream.flush()
            self._drawn = True
        else:
            log.info("progress: %s", self.line(), extra={"event": "progress"})

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def summary_lines(
    result: RunResult, plan: Plan, budget: Budget, files: int, most: int = 10
) -> list[str]:
    """The end-of-run report: never calls a series complete that is not, and names what is
    missing (the first ``most`` series of each kind; the manifest lists them all)."""
    totals = result.totals
    report = account(result, plan, range(len(plan.series)))
    # Over a few seconds the bucket's initial burst would make the average look too high.
    pace = f" ({totals.sent / result.elapsed:.1f}/s)" if result.elapsed >= 5 else ""
    allowed = budget.allowed_per_hour
    lines = [
        f"series: {report.complete} complete, {report.series_incomplete} incomplete, "
        f"{len(report.failed)} failed (of {report.series})",
        f"periods: {report.periods_planned} planned, {report.periods_written} written, "
        f"{report.periods_already_done} already done, {report.periods_missing} missing; "
        f"{report.outside_window} returned outside the window (not written)",
        f"requests: {totals.done} done, {totals.skipped} dropped (other requests brought "
        f"their periods), "
        f"{totals.gap} gap-fill, {totals.sent} sent, {totals.retries} retried, "
        f"{totals.rate_limited} rate-limited",
        f"rows: {totals.rows} written to {files} files"
        + (
            f"; {totals.not_numeric} value(s) not a number, not written (see the log)"
            if totals.not_numeric
            else ""
        ),
        f"budget: {totals.sent} requests sent in {format_duration(result.elapsed)}{pace}; "
        f"allowed {math.floor(allowed):,}/hour ({allowed / 3600:.1f}/s); "
        f"paused {budget.pauses} time(s) for the reserve or a 429",
    ]
    first = heapq.nsmallest(most, result.failures.items(), key=lambda i: i[0].sort_key())
    for series, reason in first:
        lines.append(f"failed {series.label}: {reason}")
    coverage = result.coverage
    for index in report.incomplete[:most]:
        missing = coverage.missing(index) if coverage is not None else []
        lines.append(
            f"incomplete {plan.series[index].label}: missing {_spans(plan, index, missing)}"
        )
    hidden = max(0, len(result.failures) - most) + max(0, report.series_incomplete - most)
    if hidden:
        lines.append(f"... and {hidden} more failed or incomplete series: see the manifest")
    return lines


def _spans(plan: Plan, index: int, spans: list[tuple[int, int]], most: int = 3) -> str:
    unit = plan.series[index].unit
    words = [span_label(unit, lo, hi) for lo, hi in spans[:most]]
    more = f" and {len(spans) - most} more range(s)" if len(spans) > most else ""
    return ", ".join(words) + more
