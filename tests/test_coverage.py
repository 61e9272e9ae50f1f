"""Coverage arithmetic, calibration and gap-fill placement."""

from __future__ import annotations

from datetime import date

import pytest

from exporter.client import Point
from exporter.config import Unit
from exporter.coverage import (
    COMPLETE,
    OPEN,
    Calibration,
    Coverage,
    covers,
    gap_requests,
    runs,
    subtract,
)
from exporter.plan import Plan, Request, Series, earliest_period

S = Series("s", None, "day")


def _plan(*spans: tuple[int, int]) -> Plan:
    requests = tuple(Request(S, lo, hi - lo + 1, "x", 0) for lo, hi in spans)
    return Plan.of_requests(date(2024, 7, 1), "UTC", requests, (S,))


def _points(lo: int, hi: int) -> list[Point]:
    return [Point(str(p), 1, p) for p in range(lo, hi + 1)]


def test_runs_subtract_and_covers() -> None:
    """Span arithmetic on inclusive integer ranges."""
    assert runs([1, 2, 3, 5, 7, 8]) == [(1, 3), (5, 5), (7, 8)]
    assert subtract([(1, 10), (20, 30)], [(0, 2), (5, 6), (25, 40)]) == [
        (3, 4),
        (7, 10),
        (20, 24),
    ]
    assert subtract([(1, 3)], []) == [(1, 3)]
    assert covers([(1, 10)], 3, 10)
    assert not covers([(1, 5), (6, 10)], 3, 7)  # spans must be merged first


def test_a_series_is_complete_once_every_planned_period_is_recorded() -> None:
    """Periods may come from any request, in any order; outside points never count."""
    coverage = Coverage(_plan((10, 19), (20, 29)))
    assert coverage.inside(0, _points(5, 12)) == _points(10, 12)
    coverage.record(0, [(10, 25)])
    assert coverage.missing(0) == [(26, 29)]
    assert coverage.status[0] == OPEN
    coverage.record(0, [(26, 29)])
    assert coverage.status[0] == COMPLETE
    assert coverage.missing(0) == []


def test_a_request_is_needed_only_for_missing_planned_periods() -> None:
    """A widened gap request whose planned periods all arrived is not needed."""
    coverage = Coverage(_plan((10, 29)))
    coverage.record(0, [(10, 20)])
    assert not coverage.needs(Request(S, 9, 12, "", 0, gap=True))  # 9 is not planned
    assert coverage.needs(Request(S, 20, 3, "", 0, gap=True))


def test_done_periods_from_earlier_runs_count() -> None:
    """The state's spans are received periods, and counted as already done."""
    coverage = Coverage(_plan((10, 29)), {0: [(5, 14)]})
    assert coverage.missing(0) == [(15, 29)]
    assert coverage.already_done[0] == 5


@pytest.mark.parametrize(
    ("missing", "windows"),
    [
        ([(50, 50)], [(49, 51)]),
        ([(10, 10), (60, 61)], [(9, 62)]),  # close gaps share one request
        ([(0, 0), (200, 200)], [(-1, 1), (199, 201)]),
        ([(0, 199)], [(-1, 98), (97, 196), (195, 200)]),
    ],
)
def test_gap_requests_are_widened_by_a_period_and_packed(
    missing: list[tuple[int, int]], windows: list[tuple[int, int]]
) -> None:
    """Each gap request asks for one more period on each side, at most 100 in all."""
    base = date(2024, 1, 1).toordinal()  # day periods are ordinals: 0 would be before 1970
    requests = gap_requests(
        _plan((base, base + 300)), 0, [(a + base, b + base) for a, b in missing]
    )
    assert [(r.first - base, r.last - base) for r in requests] == windows
    assert all(r.gap and r.length <= 100 for r in requests)


@pytest.mark.parametrize("unit", ["day", "hour"])
def test_a_gap_at_the_earliest_period_is_not_widened_before_it(unit: Unit) -> None:
    """A gap that starts on 1970-01-01 (or its first hour) asks for nothing earlier."""
    low = earliest_period(unit)
    series = Series("s", None, unit)
    plan = Plan.of_requests(date(1970, 3, 1), "UTC", [Request(series, low, 50, "x", 0)], [series])
    (request,) = gap_requests(plan, 0, [(low, low + 9)])
    assert (request.first, request.last) == (low, low + 10)


@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_a_widened_gap_request_covers_its_gap_whatever_the_offset(offset: int) -> None:
    """Sent for the estimate 0, the window still holds the gap if Braze is off by one."""
    base = date(2024, 1, 1).toordinal()
    (request,) = gap_requests(_plan((base, base + 300)), 0, [(base + 40, base + 45)])
    returned = (request.first + offset, request.last + offset)
    assert returned[0] <= base + 40
    assert returned[1] >= base + 45


def test_calibration_follows_clean_measurements_only() -> None:
    """Whole windows of consecutive periods measure the offset; partial ones do not."""
    calibration = Calibration()
    calibration.observe("day", 5, 104, _points(99, 102))  # 4 of 5 points: not clean
    assert calibration.shift("day") == 0
    calibration.observe("day", 5, 104, _points(99, 103))  # ends one before ending_at
    assert calibration.shift("day") == -1
    assert calibration.shift("hour") == 0
    calibration.observe("day", 5, 104, _points(9999, 10003))  # absurd: ignored
    assert calibration.measured("day") == {-1: 1}


def test_calibration_starts_from_a_saved_offset() -> None:
    """An offset an earlier run measured is the first estimate."""
    assert Calibration({"day": 1}).shift("day") == 1
