"""What a person (or a CI log) sees while a run goes and when it ends."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import TextIO

from exporter.pipeline import RunResult
from exporter.plan import Plan
from exporter.ratelimit import Budget

__all__ = ["Progress", "eta_seconds", "format_duration", "status_line", "summary_lines"]

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


def status_line(result: RunResult, plan: Plan, elapsed: float) -> str:
    totals = result.totals
    to_do = result.requests_planned - totals.skipped
    left = to_do - totals.done
    rate = totals.sent / elapsed if elapsed > 0 else 0.0
    eta = format_duration(left / rate) if rate > 0 and left > 0 else "-"
    return (
        f"series {result.series_done}/{len(plan.series)} | requests {totals.done}/{to_do} | "
        f"{rate:.1f} req/s | ETA {eta} | retries {totals.retries} | 429s {totals.rate_limited} | "
        f"failed {len(result.failures)}"
    )


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


def summary_lines(result: RunResult, plan: Plan, budget: Budget, files: int) -> list[str]:
    totals = result.totals
    failed = len(result.failures)
    # Over a few seconds the bucket's initial burst would make the average look too high.
    pace = f" ({totals.sent / result.elapsed:.1f}/s)" if result.elapsed >= 5 else ""
    allowed = budget.allowed_per_hour
    lines = [
        f"series: {len(plan.series) - failed} ok, {failed} failed",
        f"requests: {totals.done} done, {totals.skipped} skipped (already done), "
        f"{totals.sent} sent, {totals.retries} retried, {totals.rate_limited} rate-limited",
        f"rows: {totals.rows} written to {files} files",
        f"budget: {totals.sent} requests sent in {format_duration(result.elapsed)}{pace}; "
        f"allowed {math.floor(allowed):,}/hour ({allowed / 3600:.1f}/s); "
        f"paused {budget.pauses} time(s) for the reserve or a 429",
    ]
    for series, reason in sorted(result.failures.items(), key=lambda i: i[0].sort_key()):
        lines.append(f"failed {series.label}: {reason}")
    return lines
