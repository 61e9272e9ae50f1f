"""The retry policy: what is retried, how long it waits, when it gives up.

Only RetryableError is retried. Transient failures (5xx, timeouts, resets, malformed bodies)
back off exponentially with full jitter and count against ``max_attempts``; a 429 waits until
``RateLimited.reset_at``, which the caller sets to when the Budget's gate opens again (never the
raw header: the Budget has sanity-checked it), and counts against its own, larger cap, since
waiting out a busy hour is normal. A wait that would end past ``max_total_s`` is not begun, and
no retry starts once ``stopping()`` is true. Every retry is logged before its sleep. When the
policy gives up, the last original error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type

from exporter.errors import ApiError, RateLimited, RetryableError

__all__ = ["RetryPolicy", "call_with_retries"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8  # transient failures per request
    max_rate_limited: int = 50  # 429s per request
    max_total_s: float = 3 * 3600.0  # longer than one Braze window, so a 429 wait fits
    backoff_base_s: float = 0.5
    backoff_max_s: float = 60.0


class _Budget:
    """Per-request counters behind tenacity's stop and wait callbacks."""

    def __init__(
        self,
        policy: RetryPolicy,
        clock: Callable[[], float],
        rand: Callable[[], float],
        stopping: Callable[[], bool],
    ) -> None:
        self.policy = policy
        self.clock = clock
        self.rand = rand
        self.stopping = stopping
        self.failures = 0
        self.limited = 0
        self.counted = 0
        self.started = clock()

    def _count(self, state: RetryCallState) -> BaseException | None:
        """Tally each failed attempt once, whichever callback sees it first."""
        exc = _error(state)
        if state.attempt_number > self.counted:
            self.counted = state.attempt_number
            if isinstance(exc, RateLimited):
                self.limited += 1
            else:
                self.failures += 1
        return exc

    def stop(self, state: RetryCallState) -> bool:
        exc = self._count(state)
        deadline = self.started + self.policy.max_total_s
        too_long = self.clock() >= deadline or (
            isinstance(exc, RateLimited) and exc.reset_at is not None and exc.reset_at > deadline
        )
        return (
            self.stopping()
            or too_long
            or self.failures >= self.policy.max_attempts
            or self.limited >= self.policy.max_rate_limited
        )

    def wait(self, state: RetryCallState) -> float:
        exc = self._count(state)
        if isinstance(exc, RateLimited):
            # The Budget has closed its gate until then; waiting here keeps this request's
            # log line honest and never retries before the gate opens.
            reset = exc.reset_at if exc.reset_at is not None else self.clock() + 1.0
            return max(0.0, reset - self.clock())
        cap = min(
            self.policy.backoff_max_s, self.policy.backoff_base_s * 2.0 ** (self.failures - 1)
        )
        return self.rand() * cap  # "full jitter"


def _error(state: RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome is not None else None


async def call_with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    label: str | Callable[[], str],
    fields: Callable[[], Mapping[str, object]] | None = None,
    on_retry: Callable[[], None] = lambda: None,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,  # wall clock: 429 resets are epoch seconds
    rand: Callable[[], float] = random.random,
) -> T:
    """Call ``fn`` until it succeeds or the policy gives up. ``label`` (or a function giving
    it, called only when a retry is logged) names the request in the retry log lines;
    ``fields``, when given, gives the request's fields for JSON ones (called only then too);
    ``stopping`` returning true ends the retries (the run is stopping)."""
    counters = _Budget(policy, clock, rand, stopping)
    # Most calls succeed at once: only a failed first attempt pays for tenacity's machinery
    # (about a tenth of a request's CPU), which then starts from that failure.
    try:
        return await fn()
    except RetryableError as exc:
        first: BaseException | None = exc

    async def attempt_again() -> T:
        nonlocal first
        if first is not None:
            failed, first = first, None
            raise failed
        return await fn()

    last: list[BaseException] = []

    def before_sleep(state: RetryCallState) -> None:
        exc = _error(state)
        last[:] = [exc] if exc is not None else []
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        on_retry()
        name = label if isinstance(label, str) else label()
        log.warning(
            "retry %s: attempt %d failed (%s); next in %.1fs",
            name,
            state.attempt_number,
            exc.reason if isinstance(exc, ApiError) else exc,  # the label names the series
            wait,
            extra={
                "event": "retry",
                "series": name if fields is None else fields(),
                "attempt": state.attempt_number,
                "wait_s": round(wait, 3),
            },
        )

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(RetryableError),
        stop=counters.stop,
        wait=counters.wait,
        before_sleep=before_sleep,
        sleep=sleep,
        reraise=True,
    )
    async for attempt in retrying:
        if last and stopping():
            raise last[0]  # stopped during the wait: do not start another attempt
        with attempt:
            return await attempt_again()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
