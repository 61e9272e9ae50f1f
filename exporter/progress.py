"""What a person (or a CI log) sees while a run goes and when it ends."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import TextIO

from exporter.pipeline import RunResult
from exporter.plan import Plan
from exporter.ratelimit import Budget

__all__ = ["Progress", "eta_seconds", "format_duration", "status_line", "summary_lines"]


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def eta_seconds(requests: int, requests_per_hour: float, share: float, reserve: float) -> float:
    """Lower bound on the time ``requests`` take: at the bucket's rate while the hour's pool
    lasts, and at most (limit - reserve) per hour beyond that."""
    if requests <= 0:
        return 0.0
    per_hour = requests_per_hour * min(share, 1 - reserve)
    if requests <= per_hour:
        return requests / (requests_per_hour * share / 3600)
    return requests / per_hour * 3600


def status_line(result: RunResult, plan: Plan, elapsed: float) -> str:
    to_do = result.requests_planned - result.requests_skipped
    left = to_do - result.requests_done
    rate = result.requests_sent / elapsed if elapsed > 0 else 0.0
    eta = format_duration(left / rate) if rate > 0 and left > 0 else "-"
    return (
        f"series {result.series_done}/{len(plan.series)} | requests {result.requests_done}/"
        f"{to_do} | {rate:.1f} req/s | ETA {eta} | "
        f"retries {result.retries} | 429s {result.rate_limited} | failed {len(result.failures)}"
    )


class Progress:
    """Redraws one line on a terminal; prints a plain line every ``interval_s`` elsewhere."""

    def __init__(
        self,
        stream: TextIO,
        line: Callable[[], str],
        *,
        interactive: bool,
        interval_s: float,
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
            self._drawn = True
        else:
            self.stream.write("progress: " + self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()


def summary_lines(result: RunResult, plan: Plan, budget: Budget) -> list[str]:
    allowed_per_hour = budget.allowed_per_hour
    failed = len(result.failures)
    ok = len(plan.series) - failed
    per_s = result.requests_sent / result.elapsed if result.elapsed > 0 else 0.0
    lines = [
        f"series: {ok} ok, {failed} failed",
        f"requests: {result.requests_done} done, {result.requests_skipped} skipped (already "
        f"done), {result.requests_sent} sent, {result.retries} retried, "
        f"{result.rate_limited} rate-limited",
        f"rows: {result.rows_written} written to {len(result.files)} files",
        f"budget: {result.requests_sent} requests sent in {format_duration(result.elapsed)} "
        f"({per_s:.1f}/s); allowed {_rate(allowed_per_hour)}/hour "
        f"({allowed_per_hour / 3600:.1f}/s); paused {budget.pauses} time(s) for the reserve "
        f"or a 429",
    ]
    for series, reason in sorted(result.failures.items(), key=lambda i: i[0].sort_key()):
        lines.append(f"failed {series.label}: {reason}")
    return lines


def _rate(per_hour: float) -> str:
    return f"{math.floor(per_hour):,}"
