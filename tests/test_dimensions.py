"""Dimension tables: every list a run reads, written whole as a table in every format, locally
and on object storage; a listing that fails leaves the last good table."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.dimensions import TableWriter, build_table, encode_table
from exporter.errors import ConfigError
from exporter.redact import register_secret
from exporter.remote import ObjectStore
from exporter.sandbox import SandboxOptions, catalogue, sandbox_stats
from exporter.sandbox_messaging import messaging_catalogue
from exporter.storage import WORK_DIR
from tests.conftest import KEY, Cli

AS_OF = "2024-07-01"
OUTPUT_DOCS = Path(__file__).parent.parent / "docs" / "output.md"
CLOCK = 1_780_000_000.0  # the sandbox's fixed now: its campaigns' times do not move
# Small lists: each fits one page (the product list, 12 names at 50 a page: one more, empty).
SIZES: dict[str, Any] = {
    "segments": 60,
    "campaigns": 40,
    "canvases": 12,
    "clock": lambda: CLOCK,
    # No rate-limit headers: their Reset, from CLOCK, would read as long past.
    "limit": 0,
    "list_limit": 0,
}
CONFIG = """\
version: 1
limits: {{max_attempts: 1, pools: {{lists: {{requests_per_hour: 1000000}}}}}}
output: {{dir: "{out}", format: {fmt}}}
dimensions: [segments, events, products, campaigns, canvases]
exports:
  - name: dau
    series: dau
    window: {{days: 2}}
"""
TABLES = ("segments", "events", "products", "campaigns", "canvases")


def read_table(data: bytes, fmt: str) -> list[dict[str, Any]]:
    """A table's rows as the format gives them back: csv's lists parsed from their JSON
    text, its booleans from true/false, its empty fields as null."""
    if fmt == "parquet":
        rows: list[dict[str, Any]] = pq.read_table(pa.BufferReader(data)).to_pylist()
        return rows
    if fmt == "jsonl":
        return [json.loads(line) for line in data.decode().split("\n") if line]
    parsed = []
    for record in csv.DictReader(io.StringIO(data.decode(), newline="")):
        row: dict[str, Any] = {}
        for name, text in record.items():
            if text == "":
                row[name] = None
            elif name == "tags":
                row[name] = json.loads(text)
            elif text in ("true", "false") and name != "name":
                row[name] = text == "true"
            else:
                row[name] = text
        parsed.append(row)
    return parsed


def expected_rows(options: SandboxOptions) -> dict[str, list[dict[str, Any]]]:
    """What each list of the sandbox serves (archived campaigns and Canvases are not
    listed by default), as rows without ``listed_at``."""
    listed = catalogue(options)
    messaging = messaging_catalogue(options)
    return {
        "segments": [s.as_json() for s in listed.segments],
        "events": [{"name": e} for e in listed.events],
        "products": [{"name": p} for p in listed.products],
        "campaigns": [c.list_item() for c in messaging.campaigns if not c.archived],
        "canvases": [c.list_item() for c in messaging.canvases if not c.archived],
    }


def listed_at(row: dict[str, Any]) -> datetime:
    value = row["listed_at"]
    if isinstance(value, datetime):
        return value
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", value), value
    return datetime.fromisoformat(value)


def manifest(out: Path) -> dict[str, Any]:
    """The last run's manifest (runs of one second sort by their sequence)."""
    docs = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    last: dict[str, Any] = max(docs, key=lambda doc: doc["sequence"])
    return last


@pytest.fixture
def run_sandbox(cli: Cli, env_key: str) -> Callable[..., tuple[int, Any]]:
    """Run the CLI against a sandbox of the small lists (options on top); (exit, stats)."""

    def run(args: list[str], **options: Any) -> tuple[int, Any]:
        with cli.sandbox(**{**SIZES, **options}) as server:
            code = main(args)
            return code, sandbox_stats(server.app)

    return run


# --- the table of a list -------------------------------------------------------------------


def test_every_field_is_a_column_tags_a_list_and_listed_at_last() -> None:
    """Documented fields come first, then those Braze adds (nested ones as parent.child),
    then listed_at; tags stay a list of strings."""
    entries = [
        {
            "id": "a",
            "name": "A",
            "tags": ["x", 3, "y"],
            "analytics_tracking_enabled": True,
            "team": {"name": "t1", "size": 2},
            "score": 1,
        },
        {"id": "b", "name": "B", "tags": [], "analytics_tracking_enabled": False, "score": 2.5},
    ]
    moment = datetime(2026, 12, 3, 11, 22, 47, 123456, UTC)
    table = build_table("segments", entries, moment)
    names = [c.name for c in table.columns]
    assert names == ["id", "name", "analytics_tracking_enabled", "tags", "team.name",
                     "team.size", "score"]  # fmt: skip
    assert [c.type for c in table.columns][3:] == ["list", "string", "int", "float"]
    assert table.rows[0] == ("a", "A", True, ["x", "3", "y"], "t1", 2, 1.0)
    assert table.rows[1] == ("b", "B", False, [], None, None, 2.5)
    assert table.listed_at == datetime(2026, 12, 3, 11, 22, 47, tzinfo=UTC)
    (first, _) = read_table(encode_table("jsonl", table), "jsonl")
    assert list(first) == [*names, "listed_at"]
    assert first["listed_at"] == "2026-12-03T11:22:47Z"


def test_a_documented_field_of_another_type_is_null_and_counted() -> None:
    """A documented field's column keeps its type: a value of another type is written null."""
    entries = [{"id": "a", "name": 7, "analytics_tracking_enabled": "yes", "tags": "x"}]
    table = build_table("segments", entries, datetime.now(UTC))
    assert table.rows == (("a", None, None, None),)
    assert table.misfits == 3


def test_a_tag_that_is_not_a_string_is_kept_as_its_json_text() -> None:
    """tags ["a", 3, null]: every element is kept, the others as JSON text; none dropped."""
    entries = [{"id": "a", "name": "n", "tags": ["a", 3, None]}]
    table = build_table("campaigns", entries, datetime.now(UTC))
    for fmt in ("jsonl", "csv", "parquet"):
        (row,) = read_table(encode_table(fmt, table), fmt)
        assert row["tags"] == ["a", "3", "null"]


def test_a_field_whose_values_mix_types_is_json_text() -> None:
    """An added field holding a number on one item and an object list on another is kept,
    as JSON text, in every format."""
    entries = [{"id": "a", "extra": 1}, {"id": "b", "extra": [{"k": 1}]}]
    table = build_table("canvases", entries, datetime.now(UTC))
    assert [row[-1] for row in table.rows] == ["1", '[{"k": 1}]']
    for fmt in ("jsonl", "csv", "parquet"):
        got = [row["extra"] for row in read_table(encode_table(fmt, table), fmt)]
        assert got == ["1", '[{"k": 1}]']


def test_a_lone_surrogate_in_a_list_is_written_as_a_replacement_character(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A lone surrogate (JSON's '\\ud800', which no UTF-8 file holds) in a name, a tag, a
    field's name or a nested value is written as U+FFFD in every format, and counted in a
    warning; the encode used to fail the whole table (UnicodeEncodeError)."""
    entries = json.loads(
        '[{"id": "a", "name": "x\\ud800", "tags": ["t\\udc00"], "extra\\udfff": [1, "\\ud800"]}]'
    )
    with caplog.at_level("WARNING"):
        table = build_table("campaigns", entries, datetime.now(UTC))
    assert "campaigns: 4 lone surrogate(s)" in caplog.text
    for fmt in ("jsonl", "csv", "parquet"):
        (row,) = read_table(encode_table(fmt, table), fmt)
        assert (row["name"], row["tags"]) == ("x\ufffd", ["t\ufffd"])
        assert row["extra\ufffd"] == '[1, "\ufffd"]'


async def test_a_table_is_written_through_the_redacting_atomic_write(tmp_path: Path) -> None:
    """The key Braze may echo into a list never reaches the table, and no temp file stays."""
    register_secret(KEY)
    writer = TableWriter(tmp_path, "jsonl", token="t0k")
    written = await writer.replace("events", [f"leak {KEY}", "plain"], datetime.now(UTC))
    data = (tmp_path / "dimensions" / "events.jsonl").read_bytes()
    assert KEY.encode() not in data
    assert written.rows == 2
    assert written.sha256 == hashlib.sha256(data).hexdigest()
    assert list((tmp_path / WORK_DIR / "tmp").iterdir()) == []


def test_an_unknown_table_is_a_config_error(write_config: Callable[..., Path]) -> None:
    """dimensions: names only lists the exporter can read."""
    path = write_config(CONFIG.format(out="out", fmt="jsonl").replace("[segments, ", "[segment, "))
    with pytest.raises(ConfigError, match=r"dimensions\[0\]: must be 'segments'"):
        load_config(path)


# --- end to end ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_list_becomes_a_table_in_every_format(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
    fmt: str,
) -> None:
    """Each list asked for is one table holding every item once, in Braze's order, every
    field a column, tags a list, one listed_at; the manifest records each with its sha256."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt=fmt))
    before = datetime.now(UTC).replace(microsecond=0)
    code, _ = run_sandbox(["run", str(path), "--as-of", AS_OF])
    assert code == 0
    expected = expected_rows(SandboxOptions(**SIZES))
    docs = {doc["table"]: doc for doc in manifest(out)["dimensions"]}
    assert list(docs) == list(TABLES)
    for name in TABLES:
        data = (out / "dimensions" / f"{name}.{fmt}").read_bytes()
        rows = read_table(data, fmt)
        assert [{k: v for k, v in r.items() if k != "listed_at"} for r in rows] == expected[name], (
            name
        )
        assert list(rows[0])[-1] == "listed_at"
        (moment,) = {listed_at(r) for r in rows}
        assert moment >= before
        if "id" in rows[0]:
            assert len({r["id"] for r in rows}) == len(rows)
        if "tags" in rows[0]:
            assert all(isinstance(r["tags"], list) for r in rows)
        assert docs[name]["rows"] == len(rows)
        assert docs[name]["sha256"] == hashlib.sha256(data).hexdigest()
        assert docs[name]["error"] is None
        assert docs[name]["malformed"] == docs[name]["duplicates"] == 0


def test_a_discovery_writes_the_table_of_the_list_it_reads(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
) -> None:
    """Without dimensions:, the list discovery reads is its table (every segment, not just
    those kept), from that one read; no other list is read."""
    out = tmp_path / "out"
    config = CONFIG.format(out=out, fmt="jsonl").replace(
        "dimensions: [segments, events, products, campaigns, canvases]\n", ""
    )
    config += (
        "  - name: sessions\n    segment_ids: {discover: analytics_enabled}\n"
        "    window: {days: 1}\n"
    )
    code, stats = run_sandbox(["run", str(write_config(config)), "--as-of", AS_OF])
    assert code == 0
    assert [p.name for p in (out / "dimensions").iterdir()] == ["segments.jsonl"]
    rows = read_table((out / "dimensions" / "segments.jsonl").read_bytes(), "jsonl")
    assert len(rows) == SIZES["segments"] > len(manifest(out)["discovery"][0]["ids"])
    lists = {p for p in stats.paths if "list" in p}
    assert lists == {"/segments/list"}
    assert stats.paths["/segments/list"] == 1


def test_a_rerun_replaces_each_table_whole(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
) -> None:
    """A second run's tables hold exactly what Braze lists now: an item gone from the list
    is gone from the table (a replacement, not a merge), and no temp file is left."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="parquet"))
    assert run_sandbox(["run", str(path), "--as-of", AS_OF])[0] == 0
    assert run_sandbox(["run", str(path), "--as-of", AS_OF], segments=25, events=3)[0] == 0
    segments = pq.read_table(out / "dimensions" / "segments.parquet").to_pylist()
    assert [r["id"] for r in segments] == [s.id for s in catalogue(SandboxOptions()).segments][:25]
    assert pq.read_table(out / "dimensions" / "events.parquet").num_rows == 3
    assert list((out / WORK_DIR / "tmp").iterdir()) == []


def test_a_listing_that_fails_mid_way_keeps_the_last_good_table(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """/segments/list fails on its second page: the segments table is left byte for byte as
    the last run wrote it, the other tables are replaced, the data is exported, and the run
    says so: a FAILED line, the manifest's error, exit 1."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="csv"))
    assert run_sandbox(["run", str(path), "--as-of", AS_OF], segments=230)[0] == 0
    good = (out / "dimensions" / "segments.csv").read_bytes()
    events = (out / "dimensions" / "events.csv").stat().st_ino
    capsys.readouterr()
    code, stats = run_sandbox(
        ["run", str(path), "--as-of", AS_OF], segments=230, list_outage={"/segments/list": 1}
    )
    assert code == 1
    assert stats.paths["/segments/list"] == 2
    assert (out / "dimensions" / "segments.csv").read_bytes() == good
    assert (out / "dimensions" / "events.csv").stat().st_ino != events  # replaced
    summary = capsys.readouterr().out
    assert (
        "dimensions: segments from /segments/list: FAILED after 2 request(s): "
        "/segments/list page 1: HTTP 500"
    ) in summary
    assert "the last good table dimensions/segments.csv (if any) is left as it was" in summary
    assert "series: 1 complete, 0 incomplete, 0 failed" in summary
    doc = {d["table"]: d for d in manifest(out)["dimensions"]}
    assert doc["segments"]["error"] is not None
    assert doc["segments"]["rows"] is None
    assert doc["events"]["error"] is None
    assert manifest(out)["exit_code"] == 1


def test_plan_states_the_list_requests_a_run_then_sends(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan counts each list's requests in its pool; with every list on one page a run sends
    exactly that many (the product list's empty last page included)."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="jsonl"))
    assert main(["plan", str(path), "--as-of", AS_OF]) == 0
    text = capsys.readouterr().out
    assert (
        "tables:   5 dimension table(s) under dimensions/, from at least 6 list request(s) "
        "before the first data request (3 in the lists pool, 3 in the workspace pool)"
    ) in text
    assert "  dimensions/campaigns.jsonl: at least 1 request to /campaigns/list" in text
    assert main(["plan", str(path), "--as-of", AS_OF, "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)["dimensions"]
    assert planned["requests_at_least"] == {"lists": 3, "workspace": 3}
    code, stats = run_sandbox(["run", str(path), "--as-of", AS_OF])
    assert code == 0
    sent = {p: n for p, n in stats.paths.items() if "data_series" not in p}
    assert sent == {t["endpoint"]: t["requests_at_least"] for t in planned["tables"]}
    assert {t["pool"] for t in planned["tables"]} == {"lists", "workspace"}
    assert stats.pools["lists"].requests == planned["requests_at_least"]["lists"]


# --- object storage --------------------------------------------------------------------------


def _objects(url: str) -> dict[str, bytes]:
    store = ObjectStore.open(url)
    try:
        return {name: store.get(name) or b"" for name in store.list("dimensions")}
    finally:
        store.close()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_tables_on_object_storage_and_a_failed_listing_keeps_the_object(
    tmp_path: Path,
    bucket: str,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
    fmt: str,
) -> None:
    """On S3 every table is one object with the rows a local run writes; a listing that
    fails mid-way leaves its object as it was (exit 1)."""
    path = write_config(CONFIG.format(out=bucket, fmt=fmt))
    work = ["--work-dir", str(tmp_path / "w")]
    assert run_sandbox(["run", str(path), "--as-of", AS_OF, *work])[0] == 0
    objects = _objects(bucket)
    assert sorted(objects) == [f"dimensions/{t}.{fmt}" for t in sorted(TABLES)]
    expected = expected_rows(SandboxOptions(**SIZES))
    for name in TABLES:
        rows = read_table(objects[f"dimensions/{name}.{fmt}"], fmt)
        assert [{k: v for k, v in r.items() if k != "listed_at"} for r in rows] == expected[name]
    outage = {"/campaigns/list": 0}
    # Fewer segments listed now: their table is replaced (whatever the second it is read in);
    # the campaigns' listing fails and its object stays as it was.
    run = ["run", str(path), "--as-of", AS_OF, *work]
    code, _ = run_sandbox(run, list_outage=outage, segments=25)
    assert code == 1
    again = _objects(bucket)
    assert again[f"dimensions/campaigns.{fmt}"] == objects[f"dimensions/campaigns.{fmt}"]
    assert len(read_table(again[f"dimensions/segments.{fmt}"], fmt)) == 25


# --- the output page's joins -------------------------------------------------------------------


def documented_joins() -> list[str]:
    """The DuckDB statements of docs/output.md's `Joining on names` section."""
    section = OUTPUT_DOCS.read_text().split("### Joining on names: the dimension tables", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    return [s.strip() for s in block.split(";") if s.strip()]


def test_the_documented_joins_give_sessions_and_campaign_rows_their_names(
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
) -> None:
    """docs/output.md's sessions join names every exported row's segment; its campaign join,
    over a long campaign table (time, campaign_id, channel, ..., metric, value), names each
    campaign row."""
    out = tmp_path / "exports"
    segments = catalogue(SandboxOptions(**SIZES)).segments[:3]
    config = CONFIG.format(out=out, fmt="parquet") + (
        f"  - name: sessions\n    segment_ids: [{', '.join(s.id for s in segments)}]\n"
        "    window: {days: 2}\n"
    )
    assert run_sandbox(["run", str(write_config(config)), "--as-of", AS_OF])[0] == 0
    campaigns = pq.read_table(out / "dimensions" / "campaigns.parquet").to_pylist()
    long = pa.table(
        {
            "time": ["2024-06-29", "2024-06-29", "2024-06-30"],
            "campaign_id": [campaigns[0]["id"], campaigns[0]["id"], campaigns[1]["id"]],
            "channel": ["email", "email", None],
            "metric": ["sent", "opens", "unique_recipients"],
            "value": [10.0, 4.0, 7.0],
        }
    )
    (out / "campaigns").mkdir()
    pq.write_table(long, out / "campaigns" / "2024-06.parquet")
    sessions, by_campaign = (
        duckdb.sql(q.replace("'exports/", f"'{out}/")) for q in documented_joins()
    )
    assert sessions is not None
    assert by_campaign is not None
    rows = sessions.fetchall()
    names = {s.id: s.name for s in segments}
    assert len(rows) == 2 * len(segments)
    col = sessions.columns
    for row in rows:
        got = dict(zip(col, row, strict=True))
        assert got["segment_name"] == names[got["segment_id"]]
    got_campaigns = [dict(zip(by_campaign.columns, r, strict=True)) for r in by_campaign.fetchall()]
    assert sorted((r["campaign_name"], r["metric"]) for r in got_campaigns) == sorted(
        [
            (campaigns[0]["name"], "sent"),
            (campaigns[0]["name"], "opens"),
            (campaigns[1]["name"], "unique_recipients"),
        ]
    )


@pytest.mark.parametrize("asked", [False, True])
def test_a_campaign_list_read_with_edited_since_is_never_the_table(
    asked: bool,
    tmp_path: Path,
    write_config: Callable[..., Path],
    run_sandbox: Callable[..., tuple[int, Any]],
) -> None:
    """A campaign discovery with ``edited_since`` reads a part of the list, so it writes no
    table; with ``dimensions: [campaigns]`` the run reads the whole list too, and the table
    holds every listed campaign while discovery keeps only the edited ones."""
    catalogued = messaging_catalogue(SandboxOptions(**SIZES)).campaigns
    listed = [c for c in catalogued if not c.archived]
    since = sorted(c.last_edited.date() for c in listed)[len(listed) // 2]
    as_of = datetime.fromtimestamp(CLOCK, UTC).date().isoformat()
    out = tmp_path / "out"
    config = CONFIG.format(out=out, fmt="jsonl").replace(
        "dimensions: [segments, events, products, campaigns, canvases]\n",
        "dimensions: [campaigns]\n" if asked else "",
    )
    config += (
        "  - name: promo\n    series: campaigns\n"
        f"    campaign_ids: {{discover: all, edited_since: {since}}}\n"
        "    skip_inactive_days: false\n    window: {days: 1}\n"
    )
    code, _ = run_sandbox(["run", str(write_config(config)), "--as-of", as_of])
    assert code == 0
    ids = manifest(out)["discovery"][0]["ids"]
    assert 0 < len(ids) < len(listed)
    table = out / "dimensions" / "campaigns.jsonl"
    if not asked:
        assert not table.exists()
        return
    rows = read_table(table.read_bytes(), "jsonl")
    assert sorted(r["id"] for r in rows) == sorted(c.id for c in listed)


async def test_an_empty_list_is_written_as_an_empty_table_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An empty listing replaces the table (it may be the workspace's truth), never silently:
    a warning says the table now holds no row (BREAK19d finding 7)."""
    writer = TableWriter(tmp_path, "jsonl", token="t0k")
    await writer.replace("campaigns", [{"id": "a", "name": "A"}], datetime.now(UTC))
    with caplog.at_level("WARNING"):
        written = await writer.replace("campaigns", [], datetime.now(UTC))
    assert written.rows == 0
    assert "campaigns: the list was read to its end and held no item" in caplog.text
