"""The series family: one description drives config, planner, client, formats and paths."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from exporter import formats
from exporter.client import Response, interpret
from exporter.config import load_config
from exporter.errors import ConfigError, MalformedResponse
from exporter.plan import Request, Series, build_plan, count_series, shard_of
from exporter.ratelimit import RateHeaders
from exporter.series import KINDS as ALL_KINDS
from exporter.writers import partition_path

# The one-value series (the long message series have their own tests: test_msg_*.py).
KINDS = {name: kind for name, kind in ALL_KINDS.items() if not kind.long}

AS_OF = date(2024, 7, 1)


def _config(write_config: Callable[..., Path], export: str) -> Path:
    return write_config(f"version: 1\nexports:\n  - name: x\n    window: {{days: 3}}\n{export}")


@pytest.mark.parametrize(
    ("export", "expected"),
    [
        ("    series: dau\n    segment_ids: [a]\n", "exports[0].segment_ids: series dau takes no"),
        ("    series: events\n", "exports[0].events: required for series events"),
        ("    series: segment_size\n", "exports[0].segment_ids: required for series segment_size"),
        (
            "    series: dau\n    units: [hour]\n",
            "exports[0].units[0]: series dau has no unit 'hour'",
        ),
        ("    series: events\n    events: [null]\n", "exports[0].events[0]: must be a string"),
        (
            "    series: sessions\n    segment_ids: [null]\n",
            "exports[0].segment_ids: series sessions needs an id here, null is not one",
        ),
        (
            "    series: events\n    events: {discover: analytics_enabled}\n",
            "exports[0].events.discover: must be 'all' for events",
        ),
        (
            "    series: events\n    events: {discover: all, tags: [x]}\n",
            "exports[0].events.tags: tags filter segments, campaigns and Canvases, not events",
        ),
        (
            "    segment_ids: {discover: analytics_enabled, name: '('}\n",
            "exports[0].segment_ids.name: is not a valid regular expression",
        ),
        (
            "    segment_ids: {discover: analytics_enabled, include_archived: true}\n",
            "exports[0].segment_ids.include_archived: filters campaign_ids and canvas_ids only",
        ),
        (
            "    series: campaigns\n    campaign_ids: {discover: all, edited_since: 2024-13-01}\n",
            "exports[0].campaign_ids.edited_since: must be a date YYYY-MM-DD",
        ),
        (
            "    series: canvas\n    canvas_ids: {discover: analytics_enabled}\n",
            "exports[0].canvas_ids.discover: must be 'all' for canvas_ids",
        ),
        (
            "    segment_ids: [a]\n    skip_inactive_days: false\n",
            "exports[0].skip_inactive_days: only series campaigns and canvas take it",
        ),
        ("    segment_ids: {discover: everything}\n", "exports[0].segment_ids.discover: must be"),
        ("    series: sales\n    segment_ids: [a]\n", "exports[0].series: must be"),
        ("    segment_ids: []\n", "exports[0].segment_ids: must not be empty"),
    ],
)
def test_an_export_that_does_not_fit_its_series_is_a_config_error(
    write_config: Callable[..., Path], export: str, expected: str
) -> None:
    """Dimensions, units and discovery forms are checked against the series description."""
    with pytest.raises(ConfigError) as caught:
        load_config(_config(write_config, export), env={})
    assert expected in str(caught.value)
    assert "Traceback" not in str(caught.value)


def test_each_series_expands_over_its_own_dimensions(write_config: Callable[..., Path]) -> None:
    """events x segments x apps x units; KPIs by app only; optional dimensions default null."""
    path = _config(
        write_config,
        "    series: events\n    events: [open, buy]\n    segment_ids: [null, vip]\n"
        "    units: [day, hour]\n"
        "  - name: d\n    series: dau\n    app_ids: [null, ios]\n    window: {days: 3}\n",
    )
    config = load_config(path, env={})
    plan = build_plan(config, AS_OF)
    kinds = sorted({s.kind for s in plan.series})
    assert kinds == ["dau", "events"]
    events = [s for s in plan.series if s.kind == "events"]
    assert len(events) == 2 * 2 * 1 * 2
    assert {(s.event, s.segment_id, s.app_id) for s in events} >= {("buy", None, None)}
    dau = [s for s in plan.series if s.kind == "dau"]
    assert {(s.app_id, s.segment_id, s.unit) for s in dau} == {
        (None, None, "day"),
        ("ios", None, "day"),
    }
    assert count_series(config) == len(plan.series)


def test_params_follow_the_endpoint() -> None:
    """Day-only KPI endpoints get no unit; null dimensions are not sent; events send event."""
    dau = Request(Series(None, "ios", "day", "dau"), 1, 3, "2024-01-01T23:59:59+00:00")
    assert dau.params() == {
        "length": "3",
        "ending_at": "2024-01-01T23:59:59+00:00",
        "app_id": "ios",
    }
    event = Request(Series(None, None, "hour", "events", event="buy"), 1, 2, "E")
    assert event.params() == {"length": "2", "unit": "hour", "ending_at": "E", "event": "buy"}
    assert event.series.info.path == "/events/data_series"


def test_sessions_keep_their_identity() -> None:
    """A sessions series keeps the state key and shard of the versions before the family,
    so existing resume state and shards stay valid; other kinds never collide."""
    s = Series("seg", None, "day")
    assert s.key == "seg\x1f\x1f0\x1fday"
    assert shard_of(s, 7) == shard_of(Series("seg", None, "day", "sessions"), 7)
    other = Series("seg", None, "day", "segment_size")
    assert other.key != s.key
    assert other.label != s.label


@pytest.mark.parametrize(
    ("series", "label"),
    [
        (Series("seg-a", None, "day"), "sessions/day/segment-seg-a/workspace"),
        (Series(None, "ios", "hour"), "sessions/hour/all-users/app-ios"),
        (Series(None, None, "day", "dau"), "dau/day/workspace"),
        (Series(None, "workspace", "day", "dau"), "dau/day/app-workspace"),
        (
            Series(None, None, "hour", "events", event="a/b c"),
            "events/hour/event-a%2Fb%20c/all-users/workspace",
        ),
    ],
)
def test_a_series_is_named_in_the_words_of_its_directory(series: Series, label: str) -> None:
    """Summary, logs and errors name a series by its directory under the output: the words
    of the paths (workspace, all-users, never '_all') where the rows hold null, and an id
    named 'workspace' cannot pass for the whole workspace."""
    assert series.label == label
    assert str(partition_path(Path("out"), series, "2024-07", "jsonl").parent) == f"out/{label}"


def _response(body: object) -> Response:
    return Response(200, RateHeaders(), json.dumps(body).encode())


def test_values_are_read_under_each_kinds_key() -> None:
    """count for events, revenue as a float (an integer revenue too), size for segments."""
    events = Request(Series(None, None, "day", "events", event="e"), 738886, 1, "E")
    body = {"message": "success", "data": [{"time": "2024-01-01", "count": 5}]}
    assert [p.value for p in interpret(events, _response(body))] == [5]
    revenue = Request(Series(None, None, "day", "purchases_revenue"), 738886, 2, "E")
    body = {
        "message": "success",
        "data": [{"time": "2024-01-01", "revenue": 12}, {"time": "2024-01-02", "revenue": 3.5}],
    }
    values = [p.value for p in interpret(revenue, _response(body))]
    assert values == [12.0, 3.5]
    assert all(type(v) is float for v in values)
    with pytest.raises(MalformedResponse, match="count"):
        interpret(
            events,
            _response({"message": "success", "data": [{"time": "2024-01-01", "count": 1.5}]}),
        )
    with pytest.raises(MalformedResponse, match="revenue"):
        interpret(
            revenue,
            _response({"message": "success", "data": [{"time": "2024-01-01", "revenue": -1}]}),
        )
    with pytest.raises(MalformedResponse, match="count"):
        interpret(
            events,
            _response({"message": "success", "data": [{"time": "2024-01-01", "sessions": 1}]}),
        )


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_format_writes_each_kinds_columns_and_reads_them_back(fmt: str, kind: str) -> None:
    """Columns are time, Braze's value key, each dimension by its parameter name, unit."""
    info = KINDS[kind]
    dims = {p: (None if p not in info.required else f"{p}-1") for p in info.dimensions}
    if "app_id" in dims:
        dims["app_id"] = "ios/app"
    series = Series.of(kind, "day", dims)
    value = 2.25 if info.fractional else 7
    rows = [(738886, "2024-01-01", value), (738887, "2024-01-02", value * 2)]
    data = formats.encode(fmt, series, rows)
    assert formats.decode(fmt, series, data) == {p: (t, v) for p, t, v in rows}
    if fmt == "jsonl":
        first = json.loads(data.decode().splitlines()[0])
        assert list(first) == list(info.columns)
        assert first[info.value_key] == value
        assert {k: first[k] for k in info.dimensions} == dims
    elif fmt == "csv":
        assert data.decode().splitlines()[0] == ",".join(info.columns)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(pa.BufferReader(data))
        assert table.column_names == [*info.columns, "day", "hour"]
        assert str(table.schema.field(info.value_key).type) == (
            "double" if info.fractional else "int64"
        )


def test_sessions_files_keep_their_bytes() -> None:
    """The jsonl of a sessions partition is what versions before the family wrote."""
    data = formats.encode("jsonl", Series("s", None, "day"), [(738886, "2024-01-01", 4)])
    expected = '{"time": "2024-01-01", "sessions": 4, "segment_id": "s", "app_id": null, '
    assert data == (expected + '"unit": "day"}\n').encode()


ODD = 'a"b\\c\u2028d\x00e\x1f\u00e9\U0001f600\x7f/'  # quotes, escapes, separators, emoji


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_jsonl_line_is_json_dumps_of_its_object_whatever_the_ids_hold(kind: str) -> None:
    """Each line is byte for byte ``json.dumps(row, ensure_ascii=False)``: odd ids and labels,
    the largest count, floats whose repr is long or in exponent form."""
    info = KINDS[kind]
    series = Series.of(kind, "day", {p: ODD for p in info.dimensions})
    values = [0.1 + 0.2, 1e22, 5e-324, 0.0] if info.fractional else [0, 2**63 - 1, 40463]
    rows = [
        (738886 + i, label, v)
        for i, (label, v) in enumerate(zip([ODD, "2024-01-02", "t", "u"], values, strict=False))
    ]
    ids = [*(ODD for _ in info.dimensions), "day"]
    expected = "".join(
        json.dumps(dict(zip(info.columns, (t, v, *ids), strict=True)), ensure_ascii=False) + "\n"
        for _, t, v in rows
    )
    assert formats.encode("jsonl", series, rows) == expected.encode()


def test_partition_paths_name_the_series_and_each_dimension(tmp_path: Path) -> None:
    """{series}/{unit}/{one directory per dimension}; absent dimensions get a fixed word."""
    events = Series(None, "ios", "hour", "events", event="add to cart")
    assert partition_path(tmp_path, events, "2024-01-01", "jsonl").relative_to(
        tmp_path
    ).as_posix() == ("events/hour/event-add%20to%20cart/all-users/app-ios/2024-01-01.jsonl")
    dau = Series(None, None, "day", "dau")
    assert partition_path(tmp_path, dau, "2024-01", "csv").relative_to(tmp_path).as_posix() == (
        "dau/day/workspace/2024-01.csv"
    )
    sessions = Series("s", None, "day")
    assert partition_path(tmp_path, sessions, "2024-01", "jsonl").relative_to(
        tmp_path
    ).as_posix() == ("sessions/day/segment-s/workspace/2024-01.jsonl")


def test_shards_of_a_multi_series_config_are_disjoint_and_cover_it(
    write_config: Callable[..., Path],
) -> None:
    """Every series of every kind is in exactly one of N shards."""
    path = _config(
        write_config,
        "    segment_ids: [a, b, c]\n    units: [day, hour]\n"
        "  - name: e\n    series: events\n    events: [x, y]\n    segment_ids: [null, a]\n"
        "    window: {days: 3}\n"
        "  - name: d\n    series: dau\n    app_ids: [null, i, j]\n    window: {days: 3}\n",
    )
    config = load_config(path, env={})
    every = build_plan(config, AS_OF).series
    parts = [set(build_plan(config, AS_OF, (k, 3)).series) for k in (1, 2, 3)]
    assert sum(len(p) for p in parts) == len(every)
    assert set().union(*parts) == set(every)


def test_a_value_beyond_int64_is_malformed_not_a_crash() -> None:
    """Parquet and query engines hold counts as int64: a bigger one is a bad answer (retried,
    then the series fails), never an OverflowError while writing; -0.0 revenue reads 0.0."""
    dau = Request(Series(None, None, "day", "dau"), 738886, 1, "E")
    too_big = {"message": "success", "data": [{"time": "2024-01-01", "dau": 2**63}]}
    with pytest.raises(MalformedResponse, match="up to 2"):
        interpret(dau, _response(too_big))
    at_most = {"message": "success", "data": [{"time": "2024-01-01", "dau": 2**63 - 1}]}
    assert [p.value for p in interpret(dau, _response(at_most))] == [2**63 - 1]
    revenue = Request(Series(None, None, "day", "purchases_revenue"), 738886, 1, "E")
    zero = {"message": "success", "data": [{"time": "2024-01-01", "revenue": -0.0}]}
    assert str(interpret(revenue, _response(zero))[0].value) == "0.0"


def test_a_regex_python_cannot_compile_is_a_config_error(
    write_config: Callable[..., Path],
) -> None:
    """A repeat count too large for re (OverflowError) is one line, like any bad regex."""
    path = _config(
        write_config, "    segment_ids: {discover: analytics_enabled, name: 'a{99999999999}'}\n"
    )
    with pytest.raises(ConfigError, match="is not a valid regular expression"):
        load_config(path, env={})
