"""The shared workspace budget: a per-second token bucket plus what Braze's headers say.

Braze counts requests per workspace per hour, across many endpoints and every key. Two things
keep us polite:

* a token bucket sized per *second* from ``requests_per_hour * share`` with a burst of about
  0.1 s worth. ``AsyncLimiter(250_000, 3600)`` would let the whole hour through at once;
* a gate that every request passes before taking a token. It closes until
  ``X-RateLimit-Reset`` when Braze says the pool is down to the reserve that production keeps,
  and on any 429, so one worker's 429 pauses all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

from aiolimiter import AsyncLimiter

__all__ = ["Budget", "RateHeaders", "bucket_shape", "parse_rate_headers"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

RESET_MARGIN_S = 0.25  # Reset is in whole seconds; a little after it the window has moved on


@dataclass(frozen=True)
class RateHeaders:
    """What one response said about the workspace pool (any field may be missing)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # epoch seconds
    retry_after_at: float | None = None  # epoch seconds, from Retry-After when present


def parse_rate_headers(headers: Mapping[str, str], now: float) -> RateHeaders:
    """Read X-RateLimit-* and Retry-After. ``headers`` must look keys up case-insensitively
    (aiohttp's CIMultiDict does); over HTTP/2 the names arrive lowercase."""
    return RateHeaders(
        limit=_int(headers.get("X-RateLimit-Limit")),
        remaining=_int(headers.get("X-RateLimit-Remaining")),
        reset_at=_float(headers.get("X-RateLimit-Reset")),
        retry_after_at=_retry_after(headers.get("Retry-After"), now),
    )


def bucket_shape(requests_per_hour: float) -> tuple[float, float]:
    """(burst, period) for AsyncLimiter: ``burst`` tokens refill every ``period`` seconds,
    i.e. the hourly rate spread evenly, with at most ~0.1 s of requests sent back to back."""
    per_second = requests_per_hour / 3600
    burst = max(1.0, math.floor(per_second / 10))
    return burst, burst / per_second


class Budget:
    """Paces every attempt of a run, retries included."""

    def __init__(
        self,
        requests_per_hour: int,
        share: float,
        reserve: float,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.allowed_per_hour = requests_per_hour * share
        burst, period = bucket_shape(self.allowed_per_hour)
        self.limiter = AsyncLimiter(burst, period)
        self.reserve = reserve
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._paused_until = 0.0
        self.pauses = 0
        self.last_seen: RateHeaders = RateHeaders()

    async def acquire(self) -> None:
        """Wait for the gate to open and for a token, and check the gate again after the
        token: workers queued for tokens must not slip through a pause that began meanwhile."""
        while True:
            while (delay := self._paused_until - self._clock()) > 0:
                await self._sleep(delay)
            await self.limiter.acquire()
            if self._paused_until <= self._clock():
                return

    @property
    def paused_for(self) -> float:
        return max(0.0, self._paused_until - self._clock())

    def observe(self, headers: RateHeaders) -> None:
        """Close the gate until Reset when the pool is down to the reserve."""
        if headers.limit is not None:
            self.last_seen = headers
        if headers.remaining is None or headers.limit is None or headers.reset_at is None:
            return
        if headers.remaining <= math.ceil(self.reserve * headers.limit):
            self._pause(headers.reset_at + RESET_MARGIN_S, "reserve")

    def rate_limited(self, headers: RateHeaders) -> float:
        """A 429: close the gate for everyone until the pool resets; return that time."""
        until = headers.retry_after_at or headers.reset_at
        if until is None:
            # Braze always sends Reset; a proxy's bare 429 gets a short, jittered pause.
            until = self._clock() + 1.0
        # Jitter so that paused workers do not all hit the new window in the same millisecond.
        until += RESET_MARGIN_S + self._jitter() * RESET_MARGIN_S
        self._pause(until, "429")
        return until

    def _pause(self, until: float, why: str) -> None:
        if until > self._paused_until:
            if self._paused_until <= self._clock():
                self.pauses += 1
                log.info(
                    "budget: pausing all requests for %.1fs (%s)",
                    until - self._clock(),
                    why,
                    extra={"event": "budget_pause", "wait_s": round(until - self._clock(), 3)},
                )
            self._paused_until = until


def _int(value: str | None) -> int | None:
    try:
        return None if value is None else int(float(value))
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


def _retry_after(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    seconds = _float(value)
    if seconds is not None:
        return now + max(0.0, seconds)
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
