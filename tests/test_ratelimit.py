"""The budget: per-second token bucket, reserve and 429 pauses driven by Braze's headers."""

from __future__ import annotations

import logging

import pytest
from multidict import CIMultiDict

from exporter.ratelimit import (
    PACE_RAMP_S,
    RESET_MARGIN_S,
    RESET_SKEW_S,
    Budget,
    RateHeaders,
    bucket_shape,
    parse_rate_headers,
)
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


# --- header values are data, not orders ------------------------------------------------------

NOW = 1_700_000_000.0


def _budget(clock: FakeClock, max_pause_s: float = 3900.0) -> Budget:
    # jitter 0.5: backoff steps land exactly on 1 s, 2 s, 4 s ...
    return Budget(
        10**8,
        1.0,
        0.1,
        clock=clock,
        sleep=clock.sleep,
        jitter=lambda: 0.5,
        max_pause_s=max_pause_s,
    )


def _after_pause(clock: FakeClock, budget: Budget) -> None:
    """Let the gate open, as the workers' wait would."""
    clock.now += budget.paused_for


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_reset_in_milliseconds_is_read_as_seconds(caplog: pytest.LogCaptureFixture) -> None:
    """Reset 1700000030000 pauses for 30 s, not for 54,000 years, and says why."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    with caplog.at_level(logging.WARNING):
        budget.observe(RateHeaders(limit=1000, remaining=100, reset_at=(NOW + 30) * 1000))
    assert budget.paused_for == pytest.approx(30 + RESET_MARGIN_S)
    assert _warnings(caplog) == ["X-RateLimit-Reset looks like milliseconds; reading it as seconds"]
    _after_pause(clock, budget)
    until = budget.rate_limited(RateHeaders(limit=1000, remaining=0, reset_at=(NOW + 90) * 1000))
    assert until - NOW == pytest.approx(90 + 1.5 * RESET_MARGIN_S)


@pytest.mark.parametrize(
    ("reset", "warning"),
    [
        (NOW - 60, "X-RateLimit-Reset is already in the past"),
        (NOW + 2 * 3600, "X-RateLimit-Reset is 7200s ahead, more than an hour"),
        (None, "no X-RateLimit-Reset where a pause is needed"),
        (-5.0, "a negative X-RateLimit-Limit, -Remaining or -Reset"),
    ],
    ids=["past", "far", "missing", "negative"],
)
def test_an_unusable_reset_on_a_429_backs_off_one_second(
    reset: float | None, warning: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A Reset in the past, too far ahead, missing or negative: the 429 waits the backoff."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    with caplog.at_level(logging.WARNING):
        until = budget.rate_limited(RateHeaders(limit=10, remaining=0, reset_at=reset))
    assert until - NOW == pytest.approx(1.0)
    assert budget.paused_for == pytest.approx(1.0)
    assert any(m.startswith(warning) for m in _warnings(caplog))


@pytest.mark.parametrize("behind", [0.0, 0.4, 1.0, RESET_SKEW_S - 0.1])
def test_a_reset_that_just_rolled_over_is_the_new_window_not_an_anomaly(
    behind: float, caplog: pytest.LogCaptureFixture
) -> None:
    """A whole-second Reset a moment behind our clock (time in flight, clocks apart) is the
    window that has just begun: no warning, and a 429 or a low reserve waits only the margin,
    not the 1-60 s backoff (BREAK19 finding 9: a 60 s pool warned in most runs)."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    with caplog.at_level(logging.WARNING):
        until = budget.rate_limited(RateHeaders(limit=10, remaining=0, reset_at=NOW - behind))
        assert NOW + RESET_MARGIN_S <= until <= NOW + 2 * RESET_MARGIN_S
        _after_pause(clock, budget)
        budget.observe(RateHeaders(limit=10, remaining=0, reset_at=clock.now - behind))
        assert budget.paused_for == pytest.approx(RESET_MARGIN_S)
    assert _warnings(caplog) == []


def test_a_reset_further_behind_than_the_skew_is_stale() -> None:
    """Beyond RESET_SKEW_S a past Reset is not the new window: the backoff decides."""
    budget = _budget(FakeClock(NOW))
    until = budget.rate_limited(RateHeaders(limit=10, remaining=0, reset_at=NOW - RESET_SKEW_S))
    assert until - NOW == pytest.approx(1.0)


def test_429s_in_a_row_double_the_backoff_up_to_60s() -> None:
    """Each 429 after the gate reopened waits twice as long as the last, at most 60 s."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    waits = []
    for _ in range(9):
        waits.append(budget.rate_limited(RateHeaders(reset_at=NOW - 60)) - clock.now)
        _after_pause(clock, budget)
    assert waits == pytest.approx([1, 2, 4, 8, 16, 32, 60, 60, 60])


def test_the_backoff_has_jitter() -> None:
    """The backoff varies by +-25% with the random draw."""
    low = Budget(10**8, 1.0, 0.1, clock=FakeClock(NOW), jitter=lambda: 0.0)
    high = Budget(10**8, 1.0, 0.1, clock=FakeClock(NOW), jitter=lambda: 1.0)
    assert low.rate_limited(RateHeaders()) - NOW == pytest.approx(0.75)
    assert high.rate_limited(RateHeaders()) - NOW == pytest.approx(1.25)


def test_a_success_resets_the_backoff() -> None:
    """After a 200 with room left in the pool, the next 429 backs off 1 s again."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    for _ in range(3):
        budget.rate_limited(RateHeaders())
        _after_pause(clock, budget)
    budget.observe(RateHeaders(limit=1000, remaining=500, reset_at=NOW + 600), status=200)
    assert budget.rate_limited(RateHeaders()) - clock.now == pytest.approx(1.0)


async def test_the_backoff_is_shared_by_all_workers() -> None:
    """429s answered to requests already in flight join the pause; they do not grow it."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    first = budget.rate_limited(RateHeaders())
    clock.now += 0.1
    others = [budget.rate_limited(RateHeaders()) for _ in range(7)]  # the other workers
    assert others == [first] * 7
    for _ in range(3):
        await budget.acquire()
        assert clock.now >= first
    assert budget.rate_limited(RateHeaders()) - clock.now == pytest.approx(2.0)


def test_a_lying_reset_cannot_draw_us_into_a_tight_loop() -> None:
    """429s in a row whose Reset is always 0.1 s ahead still wait the growing backoff."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    waits = []
    for _ in range(4):
        waits.append(budget.rate_limited(RateHeaders(reset_at=clock.now + 0.1)) - clock.now)
        _after_pause(clock, budget)
    assert waits[0] == pytest.approx(0.1 + 1.5 * RESET_MARGIN_S)  # the first is believed
    assert waits[1:] == pytest.approx([2, 4, 8])


def test_a_low_pool_without_a_usable_reset_slows_down() -> None:
    """At the reserve with Reset missing, the gate closes for the backoff, growing while low."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    waits = []
    for _ in range(3):
        budget.observe(RateHeaders(limit=1000, remaining=50), status=200)
        waits.append(budget.paused_for)
        _after_pause(clock, budget)
    assert waits == pytest.approx([1, 2, 4])


@pytest.mark.parametrize(
    "headers",
    [
        RateHeaders(limit=1000, remaining=-1, reset_at=NOW + 30),
        RateHeaders(limit=-1000, remaining=5, reset_at=NOW + 30),
        RateHeaders(limit=1000, remaining=5000, reset_at=NOW + 30),
    ],
    ids=["negative-remaining", "negative-limit", "remaining-above-limit"],
)
def test_nonsense_remaining_or_limit_is_ignored(headers: RateHeaders) -> None:
    """A negative value, or Remaining above Limit, neither pauses nor is reported as seen."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    budget.observe(headers)
    assert budget.paused_for == 0
    assert budget.last_seen.remaining is None


@pytest.mark.parametrize("retry_after", [NOW, NOW - 30, NOW + 2 * 3600], ids=["now", "past", "far"])
def test_an_implausible_retry_after_falls_back_to_reset(retry_after: float) -> None:
    """Retry-After now, in the past or hours ahead is ignored; the plausible Reset decides."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    until = budget.rate_limited(RateHeaders(reset_at=NOW + 20, retry_after_at=retry_after))
    assert until - NOW == pytest.approx(20 + 1.5 * RESET_MARGIN_S)


def test_every_pause_is_clamped_to_max_pause_s(caplog: pytest.LogCaptureFixture) -> None:
    """Reserve pauses and 429 pauses never exceed max_pause_s, whatever Reset says."""
    clock = FakeClock(NOW)
    budget = _budget(clock, max_pause_s=10)
    with caplog.at_level(logging.WARNING):
        budget.observe(RateHeaders(limit=1000, remaining=0, reset_at=NOW + 1800))
        assert budget.paused_for == pytest.approx(10)
        _after_pause(clock, budget)
        until = budget.rate_limited(RateHeaders(reset_at=clock.now + 1800))
    assert until - clock.now == pytest.approx(10)
    assert _warnings(caplog) == [
        "a pause longer than limits.max_pause_s (10s) was asked for; pausing 10s instead"
    ]


def test_each_kind_of_anomaly_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """Many odd headers of two kinds give two warnings, not one per response."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(5):
            budget.rate_limited(RateHeaders(reset_at=(clock.now + 5) * 1000))
            budget.observe(RateHeaders(limit=10, remaining=50))
            _after_pause(clock, budget)
    assert len(_warnings(caplog)) == 2


# --- AIMD: the pace when 429s come without a usable Reset -------------------------------------


def test_a_429_without_a_usable_reset_halves_the_pace() -> None:
    """Blind 429s halve the pace once per pause (the in-flight answers are one event); a 429
    that names its Reset leaves the pace alone."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    full = budget.max_pace
    budget.rate_limited(RateHeaders(limit=20, remaining=0))
    for _ in range(5):  # the other workers' answers to requests sent before the pause
        budget.rate_limited(RateHeaders(limit=20, remaining=0))
    assert budget.pace == pytest.approx(full / 2)
    _after_pause(clock, budget)
    budget.rate_limited(RateHeaders(reset_at=NOW - 60))  # a Reset in the past: unusable
    assert budget.pace == pytest.approx(full / 4)
    _after_pause(clock, budget)
    budget.rate_limited(RateHeaders(limit=20, remaining=0, reset_at=clock.now + 5))
    assert budget.pace == pytest.approx(full / 4)


def test_successes_raise_the_pace_additively_up_to_the_bucket() -> None:
    """Each success at pace p adds max_pace / PACE_RAMP_S / p: back to full after a cut
    within PACE_RAMP_S seconds of successes, and never above the bucket's rate."""
    clock = FakeClock(NOW)
    budget = Budget(36_000, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    budget.rate_limited(RateHeaders())
    assert budget.pace == pytest.approx(5.0)
    _after_pause(clock, budget)
    ok = RateHeaders(limit=1000, remaining=500)
    budget.observe(ok, status=200)
    assert budget.pace == pytest.approx(5.0 + 10 / PACE_RAMP_S / 5.0)
    seconds = 0.0
    while budget.pace < budget.max_pace:
        seconds += 1 / budget.pace  # successes come at the pace
        budget.observe(ok, status=200)
    assert seconds < PACE_RAMP_S
    budget.observe(ok, status=200)
    assert budget.pace == budget.max_pace == pytest.approx(10.0)


def test_the_pause_line_says_the_cut_pace_in_words(caplog: pytest.LogCaptureFixture) -> None:
    """The log line of a blind 429 gives the new pace as a person reads it: one request
    every N seconds, not a rate of 0.0167/s."""
    clock = FakeClock(NOW)
    budget = Budget(3600, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)
    caplog.set_level(logging.INFO, "exporter.ratelimit")
    for _ in range(7):  # 1/s halved down to the floor: one a minute
        budget.rate_limited(RateHeaders())
        _after_pause(clock, budget)
    last = [r.getMessage() for r in caplog.records if "pausing" in r.getMessage()][-1]
    assert last.endswith("(429, no usable Reset: backing off; pace now 1 request every 60s)")


async def test_a_cut_pace_spaces_the_requests() -> None:
    """Below the bucket's rate, acquire hands out one request every 1/pace seconds."""
    clock = FakeClock(NOW)
    budget = _budget(clock)
    budget.pace = 4.0
    for _ in range(4):
        await budget.acquire()
    assert clock.now - NOW == pytest.approx(0.75)
    assert clock.sleeps == pytest.approx([0.25, 0.25, 0.25])
