"""The budget: per-second token bucket, reserve and 429 pauses driven by Braze's headers."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from exporter.ratelimit import RESET_MARGIN_S, Budget, RateHeaders, bucket_shape, parse_rate_headers
from tests.conftest import FakeClock


def test_bucket_is_sized_per_second_with_a_small_burst() -> None:
    """250,000/hour becomes ~69.4/s with a burst of 6, never 250,000 at once."""
    burst, period = bucket_shape(250_000)
    assert burst == 6
    assert burst / period == pytest.approx(250_000 / 3600)
    budget = Budget(250_000, 1.0, 0.1)
    assert budget.limiter.max_rate == 6
    assert budget.limiter.max_rate / budget.limiter.time_period == pytest.approx(69.444, 1e-3)


def test_share_scales_the_rate() -> None:
    """share: 0.25 of 250,000/hour allows 62,500/hour."""
    budget = Budget(250_000, 0.25, 0.1)
    assert budget.allowed_per_hour == 62_500
    rate = budget.limiter.max_rate / budget.limiter.time_period
    assert rate == pytest.approx(62_500 / 3600)


def test_tiny_budgets_still_get_one_token() -> None:
    """A budget under 10/s sends one request at a time, evenly spaced."""
    burst, period = bucket_shape(3600)
    assert (burst, period) == (1, 1.0)


def test_headers_are_read_case_insensitively() -> None:
    """Lowercase HTTP/2 names are read like canonical ones."""
    rate = parse_rate_headers(
        CIMultiDict(
            {
                "x-ratelimit-limit": "250000",
                "x-ratelimit-remaining": "12",
                "x-ratelimit-reset": "99",
            }
        ),
        now=0,
    )
    assert rate == RateHeaders(limit=250_000, remaining=12, reset_at=99.0)


def test_retry_after_seconds_and_date() -> None:
    """Retry-After as seconds or as an HTTP date becomes an epoch time."""
    assert parse_rate_headers({"Retry-After": "30"}, now=100).retry_after_at == 130
    dated = parse_rate_headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=0)
    assert dated.retry_after_at == 1_445_412_480


async def test_reaching_the_reserve_pauses_until_reset() -> None:
    """Remaining at the reserve closes the gate until Reset plus a margin."""
    clock = FakeClock(1000.0)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep)
    budget.observe(RateHeaders(limit=1000, remaining=101, reset_at=1060))
    await budget.acquire()
    assert clock.sleeps == []
    budget.observe(RateHeaders(limit=1000, remaining=100, reset_at=1060))
    await budget.acquire()
    assert clock.now == pytest.approx(1060 + RESET_MARGIN_S)
    assert budget.pauses == 1


async def test_a_429_pauses_everyone_until_reset() -> None:
    """After a 429 no acquire returns before the reset time."""
    clock = FakeClock(1000.0)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    until = budget.rate_limited(RateHeaders(limit=10, remaining=0, reset_at=1030))
    assert until == pytest.approx(1030 + 1.5 * RESET_MARGIN_S)
    for _ in range(3):  # three workers, one after the other
        await budget.acquire()
        assert clock.now >= 1030
    assert budget.paused_for == 0


async def test_retry_after_wins_over_reset() -> None:
    """A Retry-After header, when present, sets the pause."""
    clock = FakeClock(1000.0)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    until = budget.rate_limited(RateHeaders(reset_at=1500, retry_after_at=1010))
    assert until == pytest.approx(1010 + RESET_MARGIN_S)


async def test_stale_headers_never_shorten_a_pause() -> None:
    """A late response from before the reset cannot reopen or extend the gate wrongly."""
    clock = FakeClock(1000.0)
    budget = Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.0)
    budget.rate_limited(RateHeaders(reset_at=1030))
    budget.observe(RateHeaders(limit=10, remaining=0, reset_at=990))
    assert budget.paused_for == pytest.approx(30 + RESET_MARGIN_S)


async def test_a_pause_stops_workers_already_waiting_for_a_token() -> None:
    """A worker that passed the gate before a pause began does not send during it."""
    clock = FakeClock(1000.0)
    budget = Budget(3600, 1.0, 0.1, clock=clock, sleep=clock.sleep)  # one token per second

    class PauseWhileWaiting:
        """Stands in for the limiter: the pause starts while the worker waits for a token."""

        def __init__(self) -> None:
            self.calls = 0

        async def acquire(self) -> None:
            self.calls += 1
            if self.calls == 1:
                budget.rate_limited(RateHeaders(reset_at=1030))

    budget.limiter = PauseWhileWaiting()  # type: ignore[assignment]
    await budget.acquire()
    assert clock.now >= 1030
    assert budget.limiter.calls == 2  # type: ignore[attr-defined]
