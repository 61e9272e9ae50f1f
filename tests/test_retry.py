"""The retry policy: transient errors back off, final ones do not retry, 429 waits for reset."""

from __future__ import annotations

import logging

import pytest

from exporter.errors import MalformedResponse, RateLimited, SeriesError, ServerError
from exporter.plan import Series
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
    """One line says which request, the attempt, the cause and the wait; the series once."""
    clock = FakeClock()
    error = ServerError("upstream timeout", status=504, series=Series("a", None, "day"))
    label = "sessions/day/segment-a/workspace periods 2024-01-01..2024-04-09"
    with caplog.at_level(logging.WARNING):
        await call_with_retries(
            Flaky(error), policy=RetryPolicy(), label=label, sleep=clock.sleep, rand=lambda: 1.0
        )
    (record,) = caplog.records
    assert record.getMessage() == (
        f"retry {label}: attempt 1 failed (HTTP 504: upstream timeout); next in 0.5s"
    )


async def test_no_retry_starts_once_stopping() -> None:
    """A stop requested before the wait: the error is raised at once, nothing slept."""
    clock = FakeClock()
    fn = Flaky(ServerError("a"), ServerError("b"))
    with pytest.raises(ServerError, match="a"):
        await call_with_retries(
            fn, policy=RetryPolicy(), label="seg", sleep=clock.sleep, stopping=lambda: True
        )
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_a_stop_during_the_wait_starts_no_retry() -> None:
    """A stop requested while waiting: the wait ends and no further attempt is made."""
    clock = FakeClock()
    stopped: list[bool] = []

    async def sleep(seconds: float) -> None:
        await clock.sleep(seconds)
        stopped.append(True)  # the signal arrives during the wait

    fn = Flaky(RateLimited("slow down", reset_at=clock.now + 30))
    with pytest.raises(RateLimited):
        await call_with_retries(
            fn,
            policy=RetryPolicy(),
            label="seg",
            sleep=sleep,
            clock=clock,
            stopping=lambda: bool(stopped),
        )
    assert fn.calls == 1
    assert clock.sleeps == [30.0]


async def test_a_429_wait_past_the_total_cap_is_not_begun() -> None:
    """A 429 whose pause would end after max_total_s gives up now instead of sleeping."""
    clock = FakeClock(1000.0)
    fn = Flaky(RateLimited("slow down", reset_at=1000.0 + 4 * 3600))
    with pytest.raises(RateLimited):
        await _call(fn, clock)
    assert fn.calls == 1
    assert clock.sleeps == []


async def test_a_label_function_is_called_only_to_log_a_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """label may be a function: a call that succeeds at once never calls it; each retry's
    log line names what it returns."""
    clock = FakeClock()
    calls: list[str] = []

    def label() -> str:
        calls.append("label")
        return "segment=a 2024-06-01"

    async def call(fn: Flaky) -> str:
        return await call_with_retries(
            fn, policy=RetryPolicy(), label=label, sleep=clock.sleep, clock=clock
        )

    assert await call(Flaky()) == "ok"
    assert calls == []
    with caplog.at_level(logging.WARNING):
        assert await call(Flaky(ServerError("a"))) == "ok"
    assert calls == ["label"]
    assert "retry segment=a 2024-06-01: attempt 1 failed" in caplog.text
