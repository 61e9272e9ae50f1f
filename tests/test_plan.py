"""The planner: complete days only, minimal requests, Braze-shaped parameters."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import Config, load_config
from exporter.errors import ConfigError
from exporter.plan import Series, build_plan, earliest_period, ending_at, period_of, within_bound

AS_OF = date(2024, 7, 1)


@pytest.fixture
def config_for(write_config: Callable[..., Path]) -> Callable[..., Config]:
    def make(
        window: str = "{days: 7}",
        units: str = "[day]",
        timezone: str = "UTC",
        extra_exports: str = "",
    ) -> Config:
        text = f"""\
version: 1
timezone: {timezone}
exports:
  - name: main
    segment_ids: [seg-a]
    units: {units}
    window: {window}
{extra_exports}"""
        return load_config(write_config(text, "plan.yaml"), env={})

    return make


@pytest.mark.parametrize("days", [1, 100, 101, 365])
def test_day_windows_use_the_minimum_requests(config_for: Callable[..., Config], days: int) -> None:
    """D days of a day series take ceil(D/100) requests covering exactly those days."""
    plan = build_plan(config_for(window=f"{{days: {days}}}"), AS_OF)
    assert len(plan.requests) == math.ceil(days / 100)
    assert all(1 <= r.length <= 100 for r in plan.requests)
    assert sum(r.length for r in plan.requests) == days
    assert plan.requests[0].first == date.fromordinal(AS_OF.toordinal() - days).toordinal()
    assert plan.requests[-1].last == date(2024, 6, 30).toordinal()


@pytest.mark.parametrize("days", [1, 100, 101, 365])
def test_hour_windows_use_the_minimum_requests(
    config_for: Callable[..., Config], days: int
) -> None:
    """D UTC days of an hour series are 24*D hours in ceil(24*D/100) requests."""
    plan = build_plan(config_for(window=f"{{days: {days}}}", units="[hour]"), AS_OF)
    hours = 24 * days
    assert len(plan.requests) == math.ceil(hours / 100)
    assert sum(r.length for r in plan.requests) == hours
    last = plan.requests[-1]
    assert last.ending_at == "2024-06-30T23:59:59+00:00"


def test_requests_are_contiguous_and_disjoint(config_for: Callable[..., Config]) -> None:
    """Consecutive requests of a series neither overlap nor leave a gap."""
    plan = build_plan(config_for(window="{days: 365}", units="[hour]"), AS_OF)
    for before, after in zip(plan.requests, plan.requests[1:], strict=False):
        assert after.first == before.last + 1


def test_ending_at_is_the_last_second_with_the_zone_offset(
    config_for: Callable[..., Config],
) -> None:
    """Day requests end at 23:59:59 local time, written with that day's offset."""
    config = config_for(window="{start: 2024-04-01, end: 2024-04-30}", timezone="America/New_York")
    (request,) = build_plan(config, AS_OF).requests
    assert request.ending_at == "2024-04-30T23:59:59-04:00"
    assert request.length == 30
    params = request.params()
    assert params == {
        "length": "30",
        "unit": "day",
        "ending_at": "2024-04-30T23:59:59-04:00",
        "segment_id": "seg-a",
    }


def test_hour_series_of_a_dst_day_has_23_utc_hours(config_for: Callable[..., Config]) -> None:
    """New York's spring-forward day is 23 UTC hours, requested with a UTC ending_at."""
    config = config_for(
        window="{start: 2024-03-10, end: 2024-03-10}", units="[hour]", timezone="America/New_York"
    )
    (request,) = build_plan(config, AS_OF).requests
    assert request.length == 23
    assert request.ending_at == "2024-03-11T03:59:59+00:00"
    fall = config_for(
        window="{start: 2024-11-03, end: 2024-11-03}", units="[hour]", timezone="America/New_York"
    )
    assert build_plan(fall, date(2024, 12, 1)).requests[0].length == 25


def test_end_on_or_after_as_of_is_clipped_with_a_warning(
    config_for: Callable[..., Config],
) -> None:
    """The as-of day is never exported; a later end is clipped and said."""
    config = config_for(window="{start: 2024-06-25, end: 2024-07-10}")
    plan = build_plan(config, AS_OF)
    (request,) = plan.requests
    assert request.last == date(2024, 6, 30).toordinal()
    assert request.length == 6
    assert any("clipped to 2024-06-30" in w for w in plan.warnings)


def test_window_entirely_after_as_of_is_a_config_error(config_for: Callable[..., Config]) -> None:
    """A window with no complete day yet is refused, naming the export, with no second
    (clipping) warning."""
    config = config_for(window="{start: 2024-07-01, end: 2024-07-05}")
    with pytest.raises(ConfigError, match=r"exports\.\w+\.window: no complete day before"):
        build_plan(config, AS_OF)


@pytest.mark.parametrize("timezone", ["UTC", "Asia/Tokyo", "America/New_York"])
def test_no_planned_date_is_before_1970(config_for: Callable[..., Config], timezone: str) -> None:
    """A window reaching before 1970-01-01 is clipped there, with a warning: neither a
    request's first period nor its ending_at is earlier, for days and hours in any zone."""
    config = config_for(window="{days: 30}", units="[day, hour]", timezone=timezone)
    plan = build_plan(config, date(1970, 1, 2))  # settle_days 3 would reach 1969-12-30
    assert plan.warnings == (
        "exports.main: window reaches before 1970-01-01, the earliest date the exporter "
        "plans; clipped to start on 1970-01-01",
    )
    for request in plan.requests:
        assert request.first >= earliest_period(request.series.unit)
        assert request.ending_at >= "1970-01-01"
    assert all(plan.settle_from[unit] >= earliest_period(unit) for unit in ("day", "hour"))
    days = [r for r in plan.requests if r.series.unit == "day"]
    assert [(r.first, r.length) for r in days] == [(date(1970, 1, 1).toordinal(), 1)]


def test_as_of_1970_01_01_plans_nothing_before_it(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--as-of 1970-01-01 leaves no complete day from 1970 on: exit 2 saying so, no request
    ending 1969-12-31."""
    path = write_config(
        "version: 1\nexports:\n  - {name: a, segment_ids: [s], window: {days: 1}}\n"
    )
    assert main(["plan", str(path), "--as-of", "1970-01-01", "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "no complete day before the as-of date 1970-01-01" in err
    assert "no date before 1970-01-01 is planned: choose a later --as-of" in err


def test_a_window_is_cut_to_the_earliest_period() -> None:
    """A shifted window that would reach before 1970 ends no earlier than it and is shortened."""
    low = earliest_period("day")
    assert within_bound("day", low + 9, 5) == (low + 9, 5)
    assert within_bound("day", low + 2, 10) == (low + 2, 3)
    assert within_bound("day", low - 1, 10) == (low, 1)
    assert within_bound("hour", -3, 10) == (0, 1)


def test_a_clipped_window_warns_once(config_for: Callable[..., Config]) -> None:
    """An end on or after the as-of date is clipped with one warning."""
    plan = build_plan(config_for(window="{start: 2024-06-01, end: 2024-07-05}"), AS_OF)
    assert len(plan.warnings) == 1
    assert "clipped to 2024-06-30" in plan.warnings[0]


def test_same_series_in_two_exports_is_fetched_once(config_for: Callable[..., Config]) -> None:
    """Overlapping exports of one series merge into one contiguous range."""
    other = """\
  - name: other
    segment_ids: [seg-a, seg-b]
    window: {start: 2024-06-01, end: 2024-06-28}
"""
    plan = build_plan(config_for(window="{days: 7}", extra_exports=other), AS_OF)
    by_series: dict[Series, int] = {}
    for request in plan.requests:
        by_series[request.series] = by_series.get(request.series, 0) + request.length
    assert by_series == {Series("seg-a", None, "day"): 30, Series("seg-b", None, "day"): 28}
    assert len(plan.requests) == 2


def test_slices_are_anchored_at_the_start(config_for: Callable[..., Config]) -> None:
    """Moving a backfill's end forward keeps its earlier requests identical (resume keys)."""
    config = config_for(window="{start: 2024-01-01, end: 2024-12-31}")
    early = build_plan(config, date(2024, 8, 1)).requests
    later = build_plan(config, date(2024, 12, 1)).requests
    assert (early[0].first, early[0].length) == (later[0].first, later[0].length)
    assert (early[1].first, early[1].length) == (later[1].first, later[1].length)
    assert early[2].length < later[2].length  # the partial last slice grows


def test_app_ids_expand_with_segments_and_units(
    write_config: Callable[..., Path],
) -> None:
    """Each export expands segment_ids x app_ids x units; app_id is sent only when set."""
    text = """\
version: 1
exports:
  - name: e
    segment_ids: [s1, s2]
    app_ids: [null, app-1]
    units: [day, hour]
    window: {days: 1}
"""
    plan = build_plan(load_config(write_config(text, "x.yaml"), env={}), AS_OF)
    assert len(plan.series) == 8
    assert len(plan.requests) == 8
    with_app = [r for r in plan.requests if r.series.app_id == "app-1"]
    assert all(r.params()["app_id"] == "app-1" for r in with_app)
    assert all("app_id" not in r.params() for r in plan.requests if r.series.app_id is None)


def test_period_labels_round_trip() -> None:
    """Braze's day and hour labels map back to the periods the planner uses."""
    assert period_of("day", "2024-04-30") == date(2024, 4, 30).toordinal()
    hour = period_of("hour", "2024-04-30T10:00:00")
    assert ending_at("hour", hour, __import__("zoneinfo").ZoneInfo("UTC")) == (
        "2024-04-30T10:59:59+00:00"
    )
    assert period_of("hour", "2024-04-30T10:00:00Z") == hour
    with pytest.raises(ValueError, match="start of an hour"):
        period_of("hour", "2024-04-30T10:30:00")


def test_series_come_once_each_in_plan_order_whatever_the_lists_order(
    config_for: Callable[..., Config],
) -> None:
    """Repeated ids make one series; the plan's series are sorted as Series.sort_key says,
    however the config lists them and however exports overlap."""
    other = """\
  - name: other
    segment_ids: [seg-c, seg-a, seg-c]
    app_ids: [app-2, null, app-1]
    units: [hour, day]
    window: {days: 3}
"""
    plan = build_plan(config_for(extra_exports=other), AS_OF)
    assert list(plan.series) == sorted(set(plan.series), key=Series.sort_key)
    assert len(plan.series) == 2 * 3 * 2
    main = [plan.series[i] for i in plan.series_by_export["main"]]
    assert main == [Series("seg-a", None, "day")]


def test_plan_per_export_counts_add_up_when_exports_share_a_series(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A series in two exports counts in the first that has it (as the manifest counts it):
    the exports' requests and periods add up to the totals."""
    path = write_config(
        f"version: 1\noutput: {{dir: {tmp_path / 'out'}}}\nexports:\n"
        "  - {name: first, segment_ids: [seg-a], window: {days: 7}}\n"
        "  - {name: second, segment_ids: [seg-a, seg-b], window: {days: 3}}\n"
    )
    assert main(["plan", str(path), "--as-of", "2024-07-01", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    first, second = doc["exports"]["first"], doc["exports"]["second"]
    for name in ("series", "requests", "periods", "periods_to_fetch"):
        assert first[name] + second[name] == doc["totals"][name]
    assert (first["series"], second["series"]) == (1, 1)
