"""The shared workspace budget: a per-second token bucket plus what Braze's headers say.

Braze counts requests per workspace per hour, across many endpoints and every key. Two things
keep us polite:

* a token bucket sized per *second* from ``requests_per_hour * share`` with a burst of about
  0.1 s worth. ``AsyncLimiter(250_000, 3600)`` would let the whole hour through at once;
* a gate that every request passes before taking a token. It closes until
  ``X-RateLimit-Reset`` when Braze says the pool is down to the reserve that production keeps,
  and on any 429, so one worker's 429 pauses all of them.

Header values are data, not orders (other APIs send Reset in milliseconds, in the past, or not
at all). :meth:`Budget.sane` checks each one against the clock: a Reset that looks like
milliseconds is converted; a Reset or Retry-After in the past, missing, or further ahead than
one window plus a margin is dropped, and the gate then closes for a pool-wide exponential
backoff instead; a negative value, or a Remaining above Limit, is ignored. Every pause is
clamped to ``max_pause_s``. Each kind of anomaly is logged once per run.

A 429 with no usable Reset says only that we were too fast, not when to come back, and the
backoff alone lets every worker rush in again when the gate reopens. So such a 429 also halves
the *pace*, a spacing between requests below the bucket's rate, and each success adds a
little back (AIMD, as TCP does with its window), never above the bucket's rate: the pace
settles just under what the server allows. A 429 that names its Reset leaves the pace alone.
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

from exporter.config import MAX_PAUSE_S

__all__ = [
    "BACKOFF_BASE_S",
    "BACKOFF_MAX_S",
    "PACE_CUT",
    "PACE_RAMP_S",
    "RESET_HORIZON_S",
    "Budget",
    "RateHeaders",
    "bucket_shape",
    "describe_pace",
    "parse_rate_headers",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

RESET_MARGIN_S = 0.25  # Reset is in whole seconds; a little after it the window has moved on
# A Reset up to this far behind our clock is the window that has just rolled over, not a stale
# header: Reset is whole seconds, the answer spent time in flight, and two clocks differ a
# little. Near a minute boundary that is most answers of a 60 s pool (the campaigns pool).
RESET_SKEW_S = 5.0
RESET_HORIZON_S = MAX_PAUSE_S  # a Reset further ahead than one window and a margin is not one
BACKOFF_BASE_S = 1.0  # the pool-wide backoff when the headers say nothing usable
BACKOFF_MAX_S = 60.0
# AIMD: a blind 429 multiplies the pace by PACE_CUT; successes add back, at the pace they come
# at, the bucket's rate in PACE_RAMP_S seconds (a halved 69.4/s climbs back in ~2.5 minutes).
PACE_CUT = 0.5
PACE_RAMP_S = 300.0
_PACE_FLOOR = 1 / 60  # requests/s: one a minute, like the longest backoff
# Epoch seconds have 10 digits until the year 2286; 10**11 seconds is the year 5138, while
# 10**11 milliseconds was 1973. Anything from here to 10**14 is read as milliseconds.
_MS_FROM, _MS_TO = 1e11, 1e14

_ANOMALIES = {
    "reset_ms": "X-RateLimit-Reset looks like milliseconds; reading it as seconds",
    "reset_past": "X-RateLimit-Reset is already in the past; ignoring it, pauses back off "
    "from 1s to 60s instead",
    "reset_far": "X-RateLimit-Reset is {asked:.0f}s ahead, more than an hour (Braze's rate "
    "limits are hourly: implausible); ignoring it, pauses back off from 1s to 60s instead",
    "reset_missing": "no X-RateLimit-Reset where a pause is needed; pauses back off from 1s "
    "to 60s instead",
    "retry_after_past": "Retry-After is not in the future; ignoring it",
    "retry_after_far": "Retry-After asks for a wait of {asked:.0f}s, more than an hour ahead "
    "(Braze's rate limits are hourly: implausible); ignoring it, pauses back off from 1s to "
    "60s instead and the ETA is unknown while they do",
    "negative": "a negative X-RateLimit-Limit, -Remaining or -Reset; ignoring it",
    "over_limit": "X-RateLimit-Remaining is above X-RateLimit-Limit; ignoring it",
    "clamped": "a pause longer than limits.max_pause_s ({max_pause_s:g}s) was asked for; "
    "pausing {max_pause_s:g}s instead",
}


@dataclass(frozen=True)
class RateHeaders:
    """What one response said about the workspace pool (any field may be missing)."""

    limit: int | None = None
    remaining: int | None = None
    reset_at: float | None = None  # epoch seconds
    retry_after_at: float | None = None  # epoch seconds, from Retry-After when present


def parse_rate_headers(headers: Mapping[str, str], now: float) -> RateHeaders:
    """Read X-RateLimit-* and Retry-After as they are; :meth:`Budget.sane` judges them.
    ``headers`` must look keys up case-insensitively (aiohttp's CIMultiDict does); over
    HTTP/2 the names arrive lowercase."""
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
        max_pause_s: float = MAX_PAUSE_S,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        name: str = "workspace",
    ) -> None:
        self.name = name  # the pool, for messages
        self.allowed_per_hour = requests_per_hour * share
        burst, period = bucket_shape(self.allowed_per_hour)
        self.limiter = AsyncLimiter(burst, period)
        self.reserve = reserve
        self.max_pause_s = max_pause_s
        self._clock = clock
        self._sleep = sleep
        self._jitter = jitter
        self._paused_until = 0.0
        self.pause_reason = ""
        self._streak = 0  # 429s (and blind reserve pauses) in a row, without a success between
        self._logged: set[str] = set()
        # The epoch second the server last asked us to wait until (Retry-After or Reset more
        # than an hour ahead) and we did not, until a success: the ETA cannot be known then.
        self.ignored_ask: float | None = None
        self.pauses = 0
        self.acquired = 0  # tokens handed out: every attempt this budget paced
        self.last_seen: RateHeaders = RateHeaders()
        self.max_pace = self.allowed_per_hour / 3600
        self.pace = self.max_pace  # requests/s the AIMD rule allows now (<= the bucket's)
        self.pace_reason = ""  # why the pace was cut below the bucket's rate
        self._next_slot = 0.0  # clock time of the next request while the pace is below max

    async def acquire(self) -> None:
        """Wait for the gate to open and for a token, and check the gate again after the
        token: workers queued for tokens must not slip through a pause that began meanwhile."""
        while True:
            while (delay := self._paused_until - self._clock()) > 0:
                await self._sleep(delay)
            await self.limiter.acquire()
            await self._keep_pace()
            if self._paused_until <= self._clock():
                self.acquired += 1
                return

    async def _keep_pace(self) -> None:
        """Space requests 1/pace apart while the AIMD rule holds the pace below the bucket."""
        if self.pace >= self.max_pace:
            return
        now = self._clock()
        slot = max(self._next_slot, now)
        self._next_slot = slot + 1 / self.pace
        if slot > now:
            await self._sleep(slot - now)

    @property
    def paced(self) -> bool:
        """Whether the AIMD rule holds requests below the bucket's rate (:attr:`pace`)."""
        return self.pace < self.max_pace

    @property
    def ignored_wait(self) -> float | None:
        """Seconds left of a wait the server asked for (over an hour) that was not taken;
        None when there is none (a success since clears it)."""
        return None if self.ignored_ask is None else max(0.0, self.ignored_ask - self._clock())

    @property
    def paused_for(self) -> float:
        """Seconds until the gate opens again (0.0 when it is open)."""
        return max(0.0, self._paused_until - self._clock())

    @property
    def paused_until(self) -> float | None:
        """When the gate opens again, in the clock's epoch seconds; None while it is open.
        :attr:`pause_reason` says why it closed (``429, Reset``, ``reserve reached``...)."""
        return self._paused_until if self._paused_until > self._clock() else None

    def sane(self, headers: RateHeaders) -> RateHeaders:
        """The headers with every implausible value dropped (None), Reset in seconds."""
        now = self._clock()
        limit, remaining, reset = headers.limit, headers.remaining, headers.reset_at
        if any(v is not None and v < 0 for v in (limit, remaining, reset)):
            self._anomaly("negative")
            limit, remaining = _unless_negative(limit), _unless_negative(remaining)
            reset = None if reset is None or reset < 0 else reset
        if limit is not None and remaining is not None and remaining > limit:
            self._anomaly("over_limit")
            remaining = None
        if reset is not None and _MS_FROM <= reset < _MS_TO:
            self._anomaly("reset_ms")
            reset /= 1000
        if reset is not None and reset <= now - RESET_SKEW_S:
            self._anomaly("reset_past")
            reset = None
        elif reset is not None and reset < now:
            reset = now  # the window has just rolled over: the pool is full again
        elif reset is not None and reset > now + RESET_HORIZON_S:
            self._anomaly("reset_far", asked=reset - now)
            self.ignored_ask, reset = reset, None
        retry_after = headers.retry_after_at
        if retry_after is not None and retry_after <= now:
            self._anomaly("retry_after_past")
            retry_after = None
        elif retry_after is not None and retry_after > now + RESET_HORIZON_S:
            self._anomaly("retry_after_far", asked=retry_after - now)
            self.ignored_ask, retry_after = retry_after, None
        return RateHeaders(limit, remaining, reset, retry_after)

    def observe(self, headers: RateHeaders, *, status: int = 200) -> None:
        """Close the gate until Reset when the pool is down to the reserve. A success above
        the reserve ends a run of backoffs."""
        raw, headers = headers, self.sane(headers)
        if headers.limit is not None:
            self.last_seen = headers
        if status == 429:
            return  # rate_limited() decides that pause
        low = (
            headers.remaining is not None
            and headers.limit is not None
            and headers.remaining <= math.ceil(self.reserve * headers.limit)
        )
        if not low:
            if 200 <= status < 300:
                self._streak = 0
                self.ignored_ask = None
                # Additive increase: successes at pace p add max_pace / PACE_RAMP_S per second.
                step = self.max_pace / PACE_RAMP_S / self.pace
                self.pace = min(self.max_pace, self.pace + step)
            return
        if headers.reset_at is not None:
            self._pause(headers.reset_at + RESET_MARGIN_S, "reserve reached")
        else:
            # The pool is nearly spent and nothing says when it refills: slow down, more and
            # more while it stays low.
            if raw.reset_at is None:
                self._anomaly("reset_missing")
            self._escalate()
            self._pause(self._backoff_until(), "reserve reached, no usable Reset: backing off")

    def rate_limited(self, headers: RateHeaders) -> float:
        """A 429: close the gate for everyone; return when it opens again.

        Retry-After or Reset, when plausible, set the time; otherwise the shared backoff does.
        A 429 that follows another without a success between also waits at least the
        backoff, so a server whose Reset lies cannot draw us into a tight loop either."""
        raw, headers = headers, self.sane(headers)
        first = self._gate_open()  # answers to requests sent before the pause are one event
        self._escalate()
        until = headers.retry_after_at or headers.reset_at
        why = "429, Retry-After" if headers.retry_after_at else "429, Reset"
        note = ""
        if until is None:
            why = "429, no usable Reset: backing off"
            if raw.reset_at is None:
                self._anomaly("reset_missing")
            if first:
                # Multiplicative decrease: nothing says when to come back, only "slower".
                self.pace = max(min(_PACE_FLOOR, self.max_pace), self.pace * PACE_CUT)
                self.pace_reason = "429s without Reset"
                note = f"; pace now {describe_pace(self.pace)}"
        else:
            # Jitter so that paused workers do not all hit the new window in the same
            # millisecond.
            until += RESET_MARGIN_S + self._jitter() * RESET_MARGIN_S
        if until is None or self._streak > 1:
            until = max(until or 0.0, self._backoff_until())
        self._pause(until, why, note)
        return self._paused_until

    def _gate_open(self) -> bool:
        return self._paused_until <= self._clock()

    def _escalate(self) -> None:
        """One more pause in a row. Only a pause that begins while the gate is open counts:
        the answers to requests sent before it closed are one event, not many."""
        if self._gate_open():
            self._streak += 1

    def _backoff_until(self) -> float:
        """The end of the shared backoff: 1 s, 2 s, 4 s ... 60 s, each +-25%."""
        if not self._gate_open():
            return self._paused_until
        step = BACKOFF_BASE_S * 2.0 ** min(max(self._streak, 1) - 1, 16)
        return self._clock() + min(BACKOFF_MAX_S, step * (0.75 + 0.5 * self._jitter()))

    def _pause(self, until: float, why: str, note: str = "") -> None:
        now = self._clock()
        if until - now > self.max_pause_s:
            self._anomaly("clamped")
            until = now + self.max_pause_s
        if until > self._paused_until:
            if self._paused_until <= now:
                self.pauses += 1
                log.info(
                    "budget: pausing all requests of the %s pool for %.1fs (%s%s)",
                    self.name,
                    until - now,
                    why,
                    note,
                    extra={"event": "budget_pause", "wait_s": round(until - now, 3)},
                )
            self._paused_until = until
            self.pause_reason = why

    def _anomaly(self, kind: str, asked: float = 0.0) -> None:
        """Warn once per kind (``asked``: the wait in seconds a header asked for)."""
        if kind not in self._logged:
            self._logged.add(kind)
            message = _ANOMALIES[kind].format(max_pause_s=self.max_pause_s, asked=asked)
            log.warning(message, extra={"event": "rate_header_anomaly"})


def describe_pace(pace: float) -> str:
    """``pace`` (requests/s) in words: ``1 request every 60s`` below one a second, else
    ``2.5 requests/s``."""
    if pace < 1:
        return f"1 request every {1 / pace:.3g}s"
    return f"{pace:.3g} requests/s"


def _unless_negative(value: int | None) -> int | None:
    return None if value is None or value < 0 else value


def _int(value: str | None) -> int | None:
    number = _float(value)
    return None if number is None else int(number)


def _float(value: str | None) -> float | None:
    """A finite number, or None: ``nan``, ``inf`` and ``1e999`` are no header value."""
    try:
        number = None if value is None else float(value)
    except ValueError:
        return None
    return number if number is not None and math.isfinite(number) else None


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
