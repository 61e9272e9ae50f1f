"""The retry policy: transient errors back off, final ones do not retry, 429 waits for reset."""

from __future__ import annotations

import logging

import pytest

from exporter.errors import MalformedResponse, RateLimited, SeriesError, ServerError
from exporter.retry import RetryPolicy, call_with_retries
from tests.conftest import FakeClock


class Flaky:
    """Fails with the given errors in turn, then returns 'ok'."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def _call(fn: Flaky, clock: FakeClock, policy: RetryPolicy | None = None) -> str:
    return await call_with_retries(
        fn,
        policy=policy or RetryPolicy(),
        label="seg",
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 1.0,
    )


async def test_transient_errors_are_retried_with_growing_backoff() -> None:
    """5xx and malformed bodies are retried; waits grow exponentially."""
    clock = FakeClock()
    fn = Flaky(ServerError("a"), MalformedResponse("b"), ServerError("c"))
    assert await _call(fn, clock) == "ok"
    assert fn.calls == 4
    assert clock.sleeps == [0.5, 1.0, 2.0]


async def test_backoff_is_capped() -> None:
    """No single wait exceeds backoff_max_s."""
    clock = FakeClock()
    fn = Flaky(*[ServerError("x") for _ in range(9)])
    policy = RetryPolicy(max_attempts=20, backoff_max_s=3.0)
    assert await _call(fn, clock, policy) == "ok"
    assert max(clock.sleeps) == 3.0


async def test_final_errors_are_not_retried() -> None:
    """A 400 is raised at once, after one call."""
    clock = FakeClock()
    fn = Flaky(SeriesError("bad segment", status=400))
    with pytest.raises(SeriesError):
        await _call(fn, clock)
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_gives_up_after_max_attempts_with_the_original_error() -> None:
    """After max_attempts transient failures the last error itself is raised."""
    clock = FakeClock()
    fn = Flaky(*[ServerError(f"boom {i}") for i in range(10)])
    with pytest.raises(ServerError, match="boom 2"):
        await _call(fn, clock, RetryPolicy(max_attempts=3))
    assert fn.calls == 3


async def test_gives_up_after_max_total_time() -> None:
    """The total time cap ends retries even with attempts left."""
    clock = FakeClock()
    fn = Flaky(*[ServerError("x") for _ in range(50)])
    policy = RetryPolicy(max_attempts=50, max_total_s=10, backoff_base_s=4, backoff_max_s=4)
    with pytest.raises(ServerError):
        await _call(fn, clock, policy)
    assert fn.calls == 4  # waits of 4s: 0, 4, 8, 12 -> stop


async def test_429_waits_until_reset_and_has_its_own_cap() -> None:
    """A 429 sleeps until its reset and does not use up transient attempts."""
    clock = FakeClock(1000.0)
    errors = [RateLimited("slow down", reset_at=1060.0), RateLimited("again", reset_at=1120.0)]
    fn = Flaky(*errors, ServerError("x"))
    assert await _call(fn, clock, RetryPolicy(max_attempts=2)) == "ok"
    assert clock.sleeps[:2] == [60.0, 60.0]


async def test_each_retry_is_logged_before_its_sleep(caplog: pytest.LogCaptureFixture) -> None:
    """The log says series, attempt, wait and cause."""
    clock = FakeClock()
    with caplog.at_level(logging.WARNING):
        await _call(Flaky(ServerError("upstream timeout", status=504)), clock)
    (record,) = caplog.records
    assert record.getMessage() == (
        "retry seg: attempt 1 failed (HTTP 504: upstream timeout); next in 0.5s"
    )
