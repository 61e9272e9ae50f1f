"""End to end against the sandbox: every series (each unit it has), discovery, pools."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.plan import Series, build_plan
from exporter.sandbox import SandboxOptions, catalogue, series_value
from exporter.series import KINDS as ALL_KINDS
from exporter.writers import partition_path
from tests.conftest import Cli, data_files

# The one-value series (the long message series have their own tests: test_msg_*.py).
KINDS = {name: kind for name, kind in ALL_KINDS.items() if not kind.long}

AS_OF = "2024-07-01"
FAMILY = """\
version: 1
timezone: Asia/Tokyo
output: {{dir: {out}, format: {fmt}}}
exports:
  - name: sessions
    segment_ids: [seg-a]
    app_ids: [null, ios]
    units: [day, hour]
    window: {{days: 2}}
  - name: events
    series: events
    events: [app_open, "add to/cart"]
    segment_ids: [null, seg-a]
    units: [day, hour]
    window: {{days: 2}}
  - name: quantity
    series: purchases_quantity
    products: [null, gold]
    units: [day, hour]
    window: {{days: 2}}
  - name: revenue
    series: purchases_revenue
    products: [gold]
    app_ids: [null, android]
    units: [day, hour]
    window: {{days: 2}}
  - name: kpis
    series: dau
    app_ids: [null, ios]
    window: {{days: 40}}
  - name: new
    series: new_users
    window: {{days: 3}}
  - name: gone
    series: uninstalls
    window: {{days: 3}}
  - name: mau
    series: mau
    app_ids: [ios]
    window: {{days: 3}}
  - name: size
    series: segment_size
    segment_ids: [seg-a, seg-b]
    window: {{days: 3}}
"""


def read_rows(path: Path, kind: str) -> list[dict[str, Any]]:
    """A data file's rows, typed as the writer wrote them, whatever its format."""
    if path.suffix == ".parquet":
        rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
        return rows
    if path.suffix == ".jsonl":
        return [json.loads(x) for x in path.read_text().split("\n") if x]
    info = KINDS[kind]
    number = float if info.fractional else int
    with path.open(newline="") as f:
        return [
            {
                **r,
                info.value_key: number(r[info.value_key]),
                **{p: r[p] or None for p in info.dimensions},
            }
            for r in csv.DictReader(f)
        ]


def check_every_row(out: Path) -> dict[str, int]:
    """Each row holds the sandbox's value for its series, in that series' own file, with the
    kind's columns; returns the rows per kind."""
    counts: dict[str, int] = {}
    for path in data_files(out):
        kind = path.relative_to(out).parts[0]
        info = KINDS[kind]
        rows = read_rows(path, kind)
        times = [r["time"] for r in rows]
        assert times == sorted(times)
        assert len(set(times)) == len(times)
        for row in rows:
            assert list(row)[: len(info.columns)] == list(info.columns)
            dims = {p: row[p] for p in info.dimensions}
            series = Series.of(kind, row["unit"], dims)
            assert partition_path(out, series, path.stem, path.suffix[1:]) == path
            expected = series_value(kind, dims, row["unit"], row["time"])
            assert row[info.value_key] == expected, (path, row)
            assert type(row[info.value_key]) is type(expected)
        counts[kind] = counts.get(kind, 0) + len(rows)
    return counts


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_every_series_exports_every_period_with_the_sandboxs_values(
    tmp_path: Path,
    write_config: Callable[..., Path],
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """One run exports all nine series (day and hour where Braze has hours); every row equals
    the sandbox's value, once; verify accounts for every file of every series."""
    out = tmp_path / "out"
    path = write_config(FAMILY.format(out=out, fmt=fmt))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    plan = build_plan(load_config(path, env={}), date.fromisoformat(AS_OF))
    counts = check_every_row(out)
    assert set(counts) == set(KINDS)
    assert sum(counts.values()) == sum(r.length for r in plan.requests)
    for kind in ("sessions", "events", "purchases_quantity", "purchases_revenue"):
        assert list((out / kind / "hour").rglob(f"*.{fmt}")), kind
    summary = capsys.readouterr().out
    assert f"series: {len(plan.series)} complete, 0 incomplete, 0 failed" in summary
    assert main(["verify", str(out)]) == 0


def test_duckdb_reads_each_series_directory_as_its_rows(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """The docs' query, per series directory, returns every exported row with the
    series' columns and types (revenue a DOUBLE, the other values BIGINT)."""
    duckdb = pytest.importorskip("duckdb")
    out = tmp_path / "out"
    path = write_config(FAMILY.format(out=out, fmt="parquet"))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    counts = check_every_row(out)
    for kind, info in KINDS.items():
        query = "SELECT * FROM read_parquet('{}', hive_partitioning = false, union_by_name = true)"
        relation = duckdb.sql(query.format(f"{out}/{kind}/**/*.parquet"))
        assert relation.columns == [*info.columns, "day", "hour"]
        types = dict(zip(relation.columns, map(str, relation.types), strict=True))
        assert types[info.value_key] == ("DOUBLE" if info.fractional else "BIGINT")
        assert len(relation.fetchall()) == counts[kind]


def test_a_rerun_of_every_series_changes_no_byte(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """Exactly once for the whole family: a --fresh rerun rewrites the same bytes."""
    out = tmp_path / "out"
    path = write_config(FAMILY.format(out=out, fmt="jsonl"))
    args = ["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in data_files(out)}
    assert main([*args, "--fresh"]) == 0
    assert {p: p.read_bytes() for p in data_files(out)} == before


DISCOVER = """\
version: 1
output: {{dir: {out}}}
exports:
  - name: sessions
    segment_ids: {{discover: analytics_enabled{filters}}}
    window: {{days: 1}}
  - name: events
    series: events
    events: {{discover: all, name: '^(add|open)'}}
    window: {{days: 1}}
  - name: revenue
    series: purchases_revenue
    products: {{discover: all}}
    window: {{days: 1}}
"""


def _manifest(out: Path) -> dict[str, Any]:
    (path,) = (out / "_runs").glob("*.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ("", lambda s: True),
        (", name: '^(Power|Trial)'", lambda s: re.search("^(Power|Trial)", s.name)),
        (", tags: [paid, test]", lambda s: {"paid", "test"} & set(s.tags)),
    ],
)
def test_discovery_pages_through_every_list_and_keeps_what_the_filters_say(
    tmp_path: Path,
    write_config: Callable[..., Path],
    filters: str,
    keep: Callable[[Any], Any],
) -> None:
    """Segments over 3 pages (only analytics-enabled, then the name or tag filter), events
    by name, products to the empty page: the ids are the sandbox's catalogue, in its order,
    recorded in the manifest, and each found id is exported."""
    out = tmp_path / "out"
    path = write_config(DISCOVER.format(out=out, filters=filters))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    shelf = catalogue(SandboxOptions())
    doc = _manifest(out)
    found = {d["config_key"]: d for d in doc["discovery"]}
    segments = [s.id for s in shelf.segments if s.analytics_tracking_enabled and keep(s)]
    assert segments
    assert found["segment_ids"]["ids"] == segments
    assert found["segment_ids"]["pages"] == 3  # 230 segments, 100 a page
    assert found["segment_ids"]["skipped"] == len(shelf.segments) - len(segments)
    assert found["events"]["ids"] == [e for e in shelf.events if re.search("^(add|open)", e)]
    assert found["products"]["ids"] == list(shelf.products)
    assert found["products"]["pages"] == found["products"]["requests"]  # the last one empty
    assert found["events"]["pool"] == found["products"]["pool"] == "lists"
    exported = {p.name for p in (out / "sessions" / "day").iterdir()}
    assert exported == {f"segment-{s}" for s in segments}
    assert doc["totals"]["series"] == len(segments) + len(found["events"]["ids"]) + len(
        shelf.products
    )


def test_plan_shows_discovery_and_its_cost_without_sending(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A dry plan names each discovery, its endpoint, pool and least cost, and what one id
    found adds, and sends nothing (no key needed)."""
    path = write_config(DISCOVER.format(out=tmp_path / "out", filters=""))
    assert main(["plan", str(path), "--as-of", AS_OF]) == 0
    text = capsys.readouterr().out
    assert "discover: segment_ids (analytics_enabled)" in text
    assert "at least 1 request to /segments/list (workspace pool; one per 100 segments)" in text
    assert "/events/list (lists pool; one per 250 events)" in text
    assert "each id found that earlier runs did not adds 1 request(s) on its first run" in text
    assert main(["plan", str(path), "--as-of", AS_OF, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {d["endpoint"] for d in plan["discovery"]} == {
        "/segments/list",
        "/events/list",
        "/purchases/product_list",
    }


def test_a_discovery_the_key_may_not_read_fails_only_its_exports(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """The key lacks events.list and purchases.product_list (403): those discoveries fail at
    once and their exports get no series; the segments are discovered and exported; exit 1,
    said in the summary (naming the permission) and the manifest."""
    out = tmp_path / "out"
    path = write_config(DISCOVER.format(out=out, filters=""))
    denied = frozenset({"events.list", "purchases.product_list"})
    ran, stats = cli.against_sandbox(
        "run", path, "--out", out, "--as-of", AS_OF, deny_permissions=denied
    )
    assert ran.code == 1
    summary = ran.out
    assert "discovery: products from /purchases/product_list: FAILED" in summary
    assert "discovery: events from /events/list: FAILED" in summary
    assert "its permission events.list" in summary
    doc = _manifest(out)
    failed = {d["config_key"] for d in doc["discovery"] if d["error"]}
    assert failed == {"events", "products"}
    segments = next(d for d in doc["discovery"] if d["config_key"] == "segment_ids")
    assert len(segments["ids"]) == doc["totals"]["series_complete"] > 0
    assert not (out / "events").exists()
    assert not (out / "purchases_revenue").exists()
    assert stats.paths["/segments/list"] == 3
    assert stats.paths["/events/list"] == stats.paths["/purchases/product_list"] == 1


def test_a_401_during_discovery_stops_before_any_data_request(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key refused (401) by /segments/list stops the run (exit 3) before any series is
    fetched; the listed series are accounted as missing, with their periods named."""
    out = tmp_path / "out"
    path = write_config(
        DISCOVER.format(out=out, filters="")
        + "  - name: dau\n    series: dau\n    window: {days: 2}\n"
    )
    monkeypatch.setenv("BRAZE_API_KEY", "a-wrong-key-0123456789")
    ran, stats = cli.against_sandbox(
        "run", path, "--out", out, "--as-of", AS_OF, api_key="the-right-key-0123456789"
    )
    assert ran.code == 3
    assert set(stats.paths) <= {"/segments/list", "/events/list", "/purchases/product_list"}
    summary = ran.out
    assert "incomplete dau/day/workspace: missing 2024-06-29..2024-06-30" in summary
    assert "a-wrong-key-0123456789" not in summary


def test_each_pool_paces_its_own_endpoints(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """The list pool's budget paces /events/list and /purchases/product_list and nothing
    else; the workspace budget paces /segments/list and every series request: the manifest's
    counts equal what the sandbox saw in each of its pools."""
    out = tmp_path / "out"
    path = write_config(
        DISCOVER.format(out=out, filters="").replace(
            "exports:", "limits: {pools: {lists: {requests_per_hour: 50000}}}\nexports:"
        )
    )
    ran, stats = cli.against_sandbox("run", path, "--out", out, "--as-of", AS_OF)
    assert ran.code == 0
    doc = _manifest(out)
    assert doc["pools"]["lists"]["allowed_per_hour"] == 50000
    assert (
        doc["pools"]["lists"]["requests_paced"]
        == stats.pools["lists"].requests
        == (stats.paths["/events/list"] + stats.paths["/purchases/product_list"])
    )
    assert doc["budget"]["requests_paced"] == stats.pools["workspace"].requests
    assert doc["budget"]["requests_sent"] + 3 == stats.pools["workspace"].requests


def test_two_filters_on_one_list_read_it_once(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """Two exports discovering segments with different filters: /segments/list is read once
    (3 pages for 230 segments), and each filter gets its own ids, recorded apart."""
    out = tmp_path / "out"
    path = write_config(
        f"version: 1\noutput: {{dir: {out}}}\nexports:\n"
        "  - name: paid\n    segment_ids: {discover: analytics_enabled, tags: [paid]}\n"
        "    window: {days: 1}\n"
        "  - name: power\n    series: events\n    events: [open]\n"
        "    segment_ids: {discover: analytics_enabled, name: '^Power'}\n"
        "    window: {days: 1}\n"
    )
    ran, stats = cli.against_sandbox("run", path, "--out", out, "--as-of", AS_OF)
    assert ran.code == 0
    assert stats.paths["/segments/list"] == 3
    shelf = catalogue(SandboxOptions()).segments
    docs = {d["exports"][0]: d for d in _manifest(out)["discovery"]}
    enabled = [s for s in shelf if s.analytics_tracking_enabled]
    assert docs["paid"]["ids"] == [s.id for s in enabled if "paid" in s.tags]
    assert docs["power"]["ids"] == [s.id for s in enabled if s.name.startswith("Power")]
    assert docs["paid"]["requests"] + docs["power"]["requests"] == 3
