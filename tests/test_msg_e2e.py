"""Campaign, Canvas and send exports end to end against the sandbox, in every output format
and on the S3 test server: every value once, reruns and restatements leave no duplicate and
no stale row, Canvas windows are the fewest 14-day ones, and plan counts what a run sends."""

from __future__ import annotations

import csv
import functools
import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter import sandbox_messaging
from exporter.cli import main
from exporter.messaging import MESSAGING, flatten
from exporter.remote import ObjectStore
from exporter.sandbox import SandboxOptions, sandbox_stats
from exporter.sandbox_messaging import (
    campaign_day,
    canvas_day,
    messaging_catalogue,
    send_day,
)
from tests.conftest import Cli, data_files

FORMATS = ["jsonl", "csv", "parquet"]
AS_OF = date(2024, 7, 1)
DAYS = 30


def _now(as_of: date) -> float:
    """The sandbox's clock: 06:00 UTC on the as-of date (the run's days all ended)."""
    return datetime.combine(as_of, datetime.min.time(), UTC).timestamp() + 6 * 3600


CATALOGUE = messaging_catalogue(SandboxOptions(clock=lambda: _now(AS_OF)))
# A triggered campaign that sends every day, a one-off that sent within the window, an API
# campaign whose last two sends Braze still keeps, and a Canvas with a deleted step.
LIVE = next(c for c in CATALOGUE.campaigns if c.schedule_type == "action_based")
ONE_OFF = next(
    c
    for c in CATALOGUE.campaigns
    if c.schedule_type == "time_based"
    and c.first is not None
    and AS_OF - timedelta(days=DAYS) < c.first.date() < AS_OF - timedelta(days=3)
)
API = next(
    c
    for c in CATALOGUE.campaigns
    if c.schedule_type == "api_triggered" and c.last is not None and c.last.date() == AS_OF
)
SENDS = [s for s in API.sends if (AS_OF - s.day).days <= 12][-2:]
CANVAS = next(
    v for v in CATALOGUE.canvases if any(s.deleted for s in v.steps) and v.last is not None
)

# Every day of every window, zeros included, so each value the sandbox serves can be checked
# (skipping the days details prove empty is tests/test_skipping_e2e.py's).
CONFIG = """\
version: 1
output: {{dir: "{out}", format: {fmt}}}
exports:
  - name: campaigns
    series: campaigns
    campaign_ids: [{live}, {one_off}]
    skip_inactive_days: false
    window: {{days: {days}}}
  - name: journeys
    series: canvas
    canvas_ids: [{canvas}]
    skip_inactive_days: false
    window: {{days: {days}}}
  - name: sends
    series: sends
    campaign_id: {api}
    send_ids: [{sends}]
    window: {{days: 14}}
"""


def _config(out: str, fmt: str) -> str:
    return CONFIG.format(
        out=out,
        fmt=fmt,
        live=LIVE.id,
        one_off=ONE_OFF.id,
        canvas=CANVAS.id,
        api=API.id,
        sends=", ".join(s.id for s in SENDS),
        days=DAYS,
    )


def _labels(as_of: date, days: int) -> list[str]:
    return [(as_of - timedelta(days=k)).isoformat() for k in range(days, 0, -1)]


Row = tuple[Any, ...]


def _rows(name: str, ids: dict[str, str], items: list[dict[str, object]]) -> Iterator[Row]:
    """The file rows (columns in order) of sandbox day items, as a long file holds them."""
    kind = MESSAGING[name]
    body: dict[str, object] = {"message": "success", "data": items}
    if name == "canvas":
        body["data"] = {"name": CANVAS.name, "stats": items}
    for row in flatten(kind, body, ids).rows:
        yield (*(getattr(row, c) for c in kind.columns[:-2]), row.metric, row.value)


def expected(
    as_of: date, edit: Callable[[dict[str, object]], dict[str, object]] = lambda d: d
) -> Counter[Row]:
    """Every value the config's exports should hold as of ``as_of`` (first run on AS_OF):
    ``edit`` is what the sandbox did to days read again on ``as_of`` (settle_days: 3)."""
    reread = {(as_of - timedelta(days=k)).isoformat() for k in range(1, 5)}
    out: Counter[Row] = Counter()
    later = (as_of - AS_OF).days

    def fix(item: dict[str, object]) -> dict[str, object]:
        return edit(item) if later and item["time"] in reread else item

    for label in _labels(as_of, DAYS + later):
        for campaign in (LIVE, ONE_OFF):
            day = fix(campaign_day(campaign, label))
            out.update(_rows("campaigns", {"campaign_id": campaign.id}, [day]))
        item = fix(canvas_day(CANVAS, label, True, True, True))
        out.update(_rows("canvas", {"canvas_id": CANVAS.id}, [item]))
    for label in _labels(as_of, 14 + later):
        for send in SENDS:
            ids = {"campaign_id": API.id, "send_id": send.id}
            out.update(_rows("sends", ids, [fix(send_day(API, send, label))]))
    return out


def read_long(data: bytes, fmt: str) -> list[Row]:
    """A long file's rows as tuples in column order, typed as written."""
    if fmt == "parquet":
        table = pq.read_table(pa.BufferReader(data))
        return [tuple(r.values()) for r in table.to_pylist()]
    if fmt == "jsonl":
        return [tuple(json.loads(x).values()) for x in data.decode().split("\n") if x]
    reader = csv.DictReader(io.StringIO(data.decode(), newline=""))
    return [
        tuple(
            float(v) if k == "value" else int(v) if k == "message_index" and v else v or None
            for k, v in rec.items()
        )
        for rec in reader
    ]


def exported(files: dict[str, bytes], fmt: str) -> Counter[Row]:
    """Every row of every file, counted (a duplicate counts twice)."""
    rows: Counter[Row] = Counter()
    for data in files.values():
        rows.update(read_long(data, fmt))
    return rows


def _local(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in data_files(out)}


def _manifest(out: Path) -> dict[str, Any]:
    path = max((out / "_runs").glob("*.json"))
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _drop_revenue(item: dict[str, object]) -> dict[str, object]:
    """A restatement in which Braze no longer sends ``revenue`` (top level, Canvas totals)."""
    item = {k: v for k, v in item.items() if k != "revenue"}
    totals = item.get("total_stats")
    if isinstance(totals, dict):
        item["total_stats"] = {k: v for k, v in totals.items() if k != "revenue"}
    return item


@pytest.fixture
def restating(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make the sandbox drop revenue from every day it serves from then on."""

    def start() -> None:
        for name in ("campaign_day", "send_day", "canvas_day"):
            served = getattr(sandbox_messaging, name)
            monkeypatch.setattr(
                sandbox_messaging,
                name,
                lambda *a, _served=served, **k: _drop_revenue(_served(*a, **k)),
            )

    return start


# The sandbox every run of these tests talks to: unthrottled, its clock on AS_OF.
_SANDBOX_AS_OF: dict[str, Any] = {
    "limit": 0,
    "campaigns_limit": 0,
    "clock": lambda: _now(AS_OF),
}


def _serve_campaign_days(
    monkeypatch: pytest.MonkeyPatch, change: Callable[[dict[str, object]], object]
) -> Callable[..., dict[str, object]]:
    """Make the sandbox serve each campaign day through ``change``; what it served before."""
    served: Callable[..., dict[str, object]] = sandbox_messaging.campaign_day
    monkeypatch.setattr(sandbox_messaging, "campaign_day", lambda *a: change(served(*a)))
    return served


def _run(
    sandbox_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    config: Path,
    as_of: date,
    *extra: str,
) -> dict[str, int]:
    """One run as of ``as_of``; the requests the sandbox served. The sandbox's clock stays on
    AS_OF: its catalogue is dated back from it, so another clock is another workspace."""
    with sandbox_server(**_SANDBOX_AS_OF) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        assert main(["run", str(config), "--as-of", as_of.isoformat(), *extra]) == 0
        return dict(sandbox_stats(server.app).paths)


def _restated_run(
    sandbox_server: Any,
    monkeypatch: pytest.MonkeyPatch,
    restating: Callable[[], None],
    config: Path,
    files: Callable[[], dict[str, bytes]],
    fmt: str,
    *extra: str,
) -> Counter[Row]:
    """A run the next day, the sandbox restating days without revenue: every value once,
    restated days as now served. Returns the rows."""
    restating()
    later = AS_OF + timedelta(days=1)
    _run(sandbox_server, monkeypatch, config, later, *extra)
    rows = exported(files(), fmt)
    assert rows == expected(later, _drop_revenue)
    return rows


@pytest.fixture
def run_as_of(
    sandbox_server: Any, env_key: str, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., dict[str, int]]:
    """``_run`` against this test's sandboxes, with the key in the environment."""
    return functools.partial(_run, sandbox_server, monkeypatch)


@pytest.fixture
def restated_run(
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
    restating: Callable[[], None],
) -> Callable[..., Counter[Row]]:
    """``_restated_run`` against this test's sandboxes, with the key in the environment."""
    return functools.partial(_restated_run, sandbox_server, monkeypatch, restating)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_value_once_after_a_rerun_and_a_restatement(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    restated_run: Callable[..., Counter[Row]],
    fmt: str,
) -> None:
    """Every value of the sandbox, once; a --fresh rerun adds no row; a later run that reads
    restated days without revenue leaves no revenue row on those days, and the rest."""
    out = tmp_path / "out"
    config = write_config(_config(str(out), fmt))
    run_as_of(config, AS_OF)
    first = expected(AS_OF)
    assert exported(_local(out), fmt) == first
    assert any(r[-2] == "revenue" and r[2] is None for r in first)  # a total's revenue
    assert main(["verify", str(out)]) == 0
    run_as_of(config, AS_OF, "--fresh")
    assert exported(_local(out), fmt) == first
    rows = restated_run(config, lambda: _local(out), fmt)
    later = AS_OF + timedelta(days=1)
    restated = {(later - timedelta(days=k)).isoformat() for k in range(1, 5)}
    totals = {(r[0], r[-2]) for r in rows if r[1] == LIVE.id and r[2] is None}
    assert not {(day, "revenue") for day in restated} & totals
    assert (min(restated), "unique_recipients") in totals
    assert ((AS_OF - timedelta(days=5)).isoformat(), "revenue") in totals


def test_canvas_windows_are_the_fewest_of_14_days_and_plan_counts_them(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """30 Canvas days are 3 requests; each campaign one; each send one (14 days kept); plan
    --json lists exactly the requests the run then sends, and the manifest counts them."""
    out = tmp_path / "out"
    config = write_config(_config(str(out), "jsonl"))
    capsys.readouterr()
    assert main(["plan", str(config), "--json", "--requests", "--as-of", AS_OF.isoformat()]) == 0
    planned = json.loads(capsys.readouterr().out)
    paths = Counter(r["path"] for r in planned["requests"])
    assert paths == {"/canvas/data_series": 3, "/campaigns/data_series": 2, "/sends/data_series": 2}
    assert [r["length"] for r in planned["requests"] if r["series"] == "canvas"] == [14, 14, 2]
    served = run_as_of(config, AS_OF)
    assert {p: served.get(p, 0) for p in paths} == dict(paths)
    manifest = _manifest(out)
    assert manifest["totals"]["requests_made"] == planned["totals"]["requests"] == 7
    assert manifest["totals"]["values_not_numeric"] == 0
    for name, doc in manifest["exports"].items():
        assert doc["requests_made"] == planned["exports"][name]["requests"]
        assert doc["series_complete"] == doc["series"]


def test_a_value_that_is_no_number_is_counted_and_logged(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A string where Braze documents a number is never written, and never dropped silently:
    the log names it, the summary and the manifest count it."""
    _serve_campaign_days(monkeypatch, lambda day: {**day, "unique_recipients": "n/a"})
    out = tmp_path / "out"
    config = write_config(_config(str(out), "jsonl"))
    run_as_of(config, AS_OF)
    said = capsys.readouterr()
    assert f"{2 * DAYS} value(s) not a number, not written" in said.out
    # Named by key with its count, whatever the count (it once named the first 3 only).
    assert f"by key: data[*].unique_recipients ({DAYS})" in said.err
    assert _manifest(out)["exports"]["campaigns"]["values_not_numeric"] == 2 * DAYS
    assert not any(
        r[-2] == "unique_recipients" and r[2] is None for r in exported(_local(out), "jsonl")
    )


def _objects(url: str) -> dict[str, bytes]:
    store = ObjectStore.open(url)
    try:
        return {
            name: store.get(name) or b""
            for top in ("campaigns", "canvas", "sends")
            for name in store.list(top)
        }
    finally:
        store.close()


@pytest.mark.parametrize("fmt", FORMATS)
def test_object_storage_holds_every_value_once_after_a_restatement(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    restated_run: Callable[..., Counter[Row]],
    bucket: str,
    fmt: str,
) -> None:
    """On the S3 test server too: a first run, then a restated later run, leave every value
    once and no revenue on the restated days."""
    config = write_config(_config(bucket, fmt))
    work = ["--work-dir", str(tmp_path / "work")]
    run_as_of(config, AS_OF, *work)
    assert exported(_objects(bucket), fmt) == expected(AS_OF)
    restated_run(config, lambda: _objects(bucket), fmt, *work)


def test_the_campaigns_pool_paces_campaign_requests_alone(
    tmp_path: Path, write_config: Callable[..., Path], run_as_of: Callable[..., dict[str, int]]
) -> None:
    """/campaigns/data_series draws from its own pool; Canvas and sends from the workspace's."""
    out = tmp_path / "out"
    config = write_config(_config(str(out), "jsonl"))
    run_as_of(config, AS_OF)
    pools = _manifest(out)["pools"]
    assert pools["campaigns"]["requests_paced"] == 2
    assert pools["campaigns"]["allowed_per_hour"] == 3_000_000
    assert _manifest(out)["budget"]["requests_paced"] == 5


def test_a_day_braze_leaves_out_is_gap_filled_within_14_days_then_reported(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A day never served is asked for again by gap-fill requests Braze accepts (Canvas: at
    most 14 days), then reported missing; the rest is written, and a rerun the same day sends
    only the gap-fill for it."""
    hole = (AS_OF - timedelta(days=20)).isoformat()
    out = tmp_path / "out"
    config = write_config(_config(str(out), "jsonl"))
    args = ["run", str(config), "--as-of", AS_OF.isoformat()]
    with cli.sandbox(
        limit=0, campaigns_limit=0, clock=lambda: _now(AS_OF), missing_days=frozenset({hole})
    ) as server:
        assert main(args) == 1
        doc = _manifest(out)["totals"]
        assert doc["series_failed"] == 0
        assert {tuple(i["missing"]) for i in doc["incomplete"]} == {(hole,)}
        assert doc["requests_gap_fill"] > 0
        rows = exported(_local(out), "jsonl")
        assert rows == Counter({r: n for r, n in expected(AS_OF).items() if r[0] != hole})
        first = sandbox_stats(server.app).requests
        assert main(args) == 1  # resumed: only the hole is asked for again
        again = _manifest(out)["totals"]
        assert again["requests_made"] == sandbox_stats(server.app).requests - first
        assert again["requests_made"] == again["requests_gap_fill"] + 3  # one per series


def test_a_send_braze_no_longer_keeps_fails_alone_saying_why(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A send older than 14 days is a 400: its series fails with Braze's words and the
    retention named; every other series is exported (exit 1)."""
    old = API.sends[0]
    assert (AS_OF - old.day).days > 14
    out = tmp_path / "out"
    text = _config(str(out), "jsonl").replace(f"send_ids: [{SENDS[0].id}", f"send_ids: [{old.id}")
    config = write_config(text)
    run = ["run", str(config), "--as-of", AS_OF.isoformat()]
    ran, _ = cli.against_sandbox(*run, limit=0, campaigns_limit=0, clock=lambda: _now(AS_OF))
    assert ran.code == 1
    said = ran.out
    assert f"failed sends/day/campaign-{API.id}/send-{old.id}: HTTP 400: Invalid send_id" in said
    assert "a send older than the 14 days Braze keeps sends analytics after the send" in said
    assert "series: 4 complete, 0 incomplete, 1 failed (of 5)" in said


def test_the_sandbox_lists_the_send_ids_it_answers_and_they_export(
    tmp_path: Path, write_config: Callable[..., Path], env_key: str, cli: Cli
) -> None:
    """`braze-export sandbox --sends` prints the send ids a docs-only user can export (none
    was findable: BREAK19 finding 5); the sends of its first campaign export, with their
    values on the day printed."""
    listed = cli("sandbox", "--sends")
    assert listed.code == 0
    header, *lines = listed.out.splitlines()
    assert header == "campaign_id\tsend_id\tsent_on"
    rows = [line.split("\t") for line in lines]
    assert rows
    campaign = rows[0][0]
    sends = {send: sent_on for cid, send, sent_on in rows if cid == campaign}
    out = tmp_path / "out"
    config = write_config(
        f"version: 1\ntimezone: UTC\noutput: {{dir: {out}}}\nexports:\n"
        f"  - name: s\n    series: sends\n    campaign_id: {campaign}\n"
        f"    send_ids: [{', '.join(sends)}]\n    window: {{days: 14}}\n"
    )
    ran, _ = cli.against_sandbox("run", config, limit=0, campaigns_limit=0)
    assert ran.code == 0
    for send, sent_on in sends.items():
        rows_of = [
            json.loads(line)
            for p in data_files(out)
            if f"send-{send}" in str(p)
            for line in p.read_text().splitlines()
        ]
        assert {r["time"] for r in rows_of if r["value"]} <= {sent_on}
        assert any(r["value"] for r in rows_of) or sent_on == str(datetime.now(UTC).date())


# Lone surrogates as JSON escapes them, in names, metric keys and channels; and what a file
# holds in their place.
_POISON = {
    "Variant ": "Variant \\ud800",
    "conversions2": "conversions\\udc002",
    "push": "pu\\udfffsh",
}
_WRITTEN = {
    "Variant ": "Variant \ufffd",
    "conversions2": "conversions\ufffd2",
    "push": "pu\ufffdsh",
}


def _poisoned(item: dict[str, object]) -> dict[str, object]:
    text = json.dumps(item)
    for plain, escaped in _POISON.items():
        text = text.replace(plain, escaped)
    poisoned: dict[str, object] = json.loads(text)
    return poisoned


def _as_written(row: Row) -> Row:
    def fix(value: object) -> object:
        if not isinstance(value, str):
            return value
        for plain, written in _WRITTEN.items():
            value = value.replace(plain, written)
        return value

    return tuple(fix(v) for v in row)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_lone_surrogate_in_a_name_or_key_is_written_as_a_replacement_character(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fmt: str,
) -> None:
    """JSON may escape a lone surrogate ('\\ud800'), which no UTF-8 file holds: in a
    variation or variant name, a metric key or a channel it is written as U+FFFD, counted
    in a warning, and every other value is exported as served. It used to fail the series
    at the write (UnicodeEncodeError)."""
    for name in ("campaign_day", "send_day", "canvas_day"):
        served = getattr(sandbox_messaging, name)
        monkeypatch.setattr(
            sandbox_messaging, name, lambda *a, _served=served, **k: _poisoned(_served(*a, **k))
        )
    out = tmp_path / "out"
    run_as_of(write_config(_config(str(out), fmt)), AS_OF)
    want = Counter({_as_written(row): n for row, n in expected(AS_OF).items()})
    assert exported(_local(out), fmt) == want
    assert any("\ufffd" in str(row) for row in want)
    said = capsys.readouterr().err
    assert "lone surrogate(s) (invalid Unicode) in names or metric keys; written as U+FFFD" in said


def _strings(value: object) -> object:
    """Every number in a day item as a JSON string, as a gateway or a format drift sends it."""
    if isinstance(value, dict):
        return {k: v if k == "time" else _strings(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def test_a_day_with_no_number_at_all_is_left_missing_and_read_again(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
) -> None:
    """Every campaign value sent as a string: no day is written as an empty day recorded done
    (it was, exit 0, and no later run read it again: BREAK19c finding 1). The days stay
    missing (exit 1, said why); once Braze answers numbers, a rerun writes every value."""
    served = _serve_campaign_days(monkeypatch, _strings)
    out = tmp_path / "out"
    config = write_config(_config(str(out), "jsonl"))
    said, _ = cli.against_sandbox("run", config, "--as-of", AS_OF.isoformat(), **_SANDBOX_AS_OF)
    assert said.code == 1
    assert "day(s) held no number at all" in said.err
    assert "series: 3 complete, 2 incomplete, 0 failed (of 5)" in said.out
    assert not any(r[1] in (LIVE.id, ONE_OFF.id) for r in exported(_local(out), "jsonl"))
    monkeypatch.setattr(sandbox_messaging, "campaign_day", served)
    run_as_of(config, AS_OF)
    assert exported(_local(out), "jsonl") == expected(AS_OF)


def test_a_value_no_count_can_be_is_written_and_warned_of(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_as_of: Callable[..., dict[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A negative unique_recipients is Braze's to send and is written as sent, but never
    without a word: a warning names the key and its count (BREAK19c finding 9)."""
    _serve_campaign_days(monkeypatch, lambda day: {**day, "unique_recipients": -5})
    out = tmp_path / "out"
    run_as_of(write_config(_config(str(out), "jsonl")), AS_OF)
    said = capsys.readouterr().err
    assert "value(s) negative or beyond 2^53" in said
    assert "by key: data[*].unique_recipients (" in said
    rows = exported(_local(out), "jsonl")
    assert any(r[-2] == "unique_recipients" and r[-1] == -5.0 for r in rows)
