"""Parquet output, its schema, and the docs' DuckDB queries over every output format."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from exporter import formats
from exporter.cli import main
from exporter.client import Point
from exporter.config import load_config
from exporter.errors import ExporterError
from exporter.plan import Series, build_plan, period_of
from exporter.sandbox import session_count
from exporter.writers import PartitionWriter, partition_path
from tests.conftest import data_files
from tests.test_e2e import read_rows

OUTPUT_DOC = Path(__file__).resolve().parent.parent / "docs" / "output.md"
AS_OF = "2024-07-01"
# Ids that a path cannot hold as they are, or that look like something else in one.
SEGMENTS = [
    "seg/a b",
    "_späti",
    "_all",
    "x=1",
    "..",
    "007",
    "a,b;c",
    " padded ",
    "cr\rin",  # a lone carriage return: csv must quote it
    "ls\u2028ps\u2029nel\u0085",  # Unicode line ends: jsonl lines must not split there
]
APPS = ["null", '"_app/ü"', '"workspace"']
CONFIG = """\
version: 1
timezone: America/New_York
output: {{dir: {out}, format: {fmt}}}
exports:
  - name: odd
    segment_ids: [{segments}]
    app_ids: [{apps}]
    units: [day, hour]
    window: {{days: 2}}
"""
DAY = Series("seg-a", None, "day")
HOUR = Series("seg-a", "app-1", "hour")


def _days(start: str, values: list[int]) -> list[Point]:
    first = date.fromisoformat(start).toordinal()
    return [
        Point(date.fromordinal(first + i).isoformat(), v, first + i) for i, v in enumerate(values)
    ]


def _hours(start: str, values: list[int]) -> list[Point]:
    first = period_of("hour", start)
    return [
        Point(
            datetime.fromtimestamp((first + i) * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            v,
            first + i,
        )
        for i, v in enumerate(values)
    ]


def readme_queries() -> dict[str, str]:
    """The DuckDB queries of the docs' `Querying the output` section, by format."""
    section = OUTPUT_DOC.read_text().split("## Querying the output (DuckDB)", 1)[1]
    block = section.split("```sql\n", 1)[1].split("```", 1)[0]
    readers = {"read_parquet": "parquet", "read_json": "jsonl", "read_csv": "csv"}
    queries = {}
    for statement in block.split(";"):
        if statement.strip():
            reader = re.search(r"FROM (read_\w+)\(", statement)
            assert reader is not None
            queries[readers[reader.group(1)]] = statement.strip()
    return queries


async def test_parquet_has_the_documented_schema(tmp_path: Path) -> None:
    """Columns, types and nullability as in the docs, the schema version in the metadata,
    zstd, null app_id for the workspace, `day` set in day rows and `hour` in hour rows."""
    writer = PartitionWriter(tmp_path, "parquet")
    (day_file,) = await writer.write(DAY, _days("2024-04-29", [42, 7]))
    (hour_file,) = await writer.write(HOUR, _hours("2024-04-30T22:00:00", [5]))
    await writer.aclose()
    table = pq.read_table(day_file.path)
    assert [(f.name, str(f.type), f.nullable) for f in table.schema] == [
        ("time", "string", False),
        ("sessions", "int64", False),
        ("segment_id", "string", False),
        ("app_id", "string", True),
        ("unit", "string", False),
        ("day", "date32[day]", True),
        ("hour", "timestamp[us, tz=UTC]", True),
    ]
    assert table.schema.metadata[b"braze_export.schema_version"] == b"1"
    assert table.to_pylist()[0] == {
        "time": "2024-04-29",
        "sessions": 42,
        "segment_id": "seg-a",
        "app_id": None,
        "unit": "day",
        "day": date(2024, 4, 29),
        "hour": None,
    }
    (row,) = pq.read_table(hour_file.path).to_pylist()
    assert (row["app_id"], row["day"]) == ("app-1", None)
    assert row["hour"] == datetime(2024, 4, 30, 22, tzinfo=UTC)
    column = pq.ParquetFile(day_file.path).metadata.row_group(0).column(0)
    assert column.compression == "ZSTD"


async def test_parquet_merge_restated_values_win_and_same_rows_give_same_bytes(
    tmp_path: Path,
) -> None:
    """Rewriting the same rows gives the same bytes, also from another writer; overlapping
    rows are replaced, never duplicated."""
    first = PartitionWriter(tmp_path / "a", "parquet")
    (one,) = await first.write(DAY, _days("2024-04-01", [1, 2, 3, 4, 5]))
    before = one.path.read_bytes()
    (again,) = await first.write(DAY, _days("2024-04-01", [1, 2, 3]))
    assert again.path.read_bytes() == before
    other = PartitionWriter(tmp_path / "b", "parquet")
    (two,) = await other.write(DAY, _days("2024-04-01", [1, 2, 3, 4, 5]))
    assert two.path.read_bytes() == before
    await first.write(DAY, _days("2024-04-04", [40, 50, 60]))
    rows = pq.read_table(one.path).to_pylist()
    assert [r["time"] for r in rows] == [f"2024-04-0{d}" for d in range(1, 7)]
    assert [r["sessions"] for r in rows] == [1, 2, 3, 40, 50, 60]
    await first.aclose()
    await other.aclose()


async def test_a_parquet_file_of_a_newer_schema_is_never_merged_into(tmp_path: Path) -> None:
    """A file whose schema_version is newer than ours is left alone, with a message to
    upgrade; so is a Parquet file that is not ours."""
    path = partition_path(tmp_path, DAY, "2024-04", "parquet")
    path.parent.mkdir(parents=True)
    newer = pa.table({"time": ["2024-04-01"], "sessions": [1]})
    pq.write_table(newer.replace_schema_metadata({formats.SCHEMA_VERSION_KEY: "2"}), path)
    writer = PartitionWriter(tmp_path, "parquet")
    with pytest.raises(ExporterError, match=r"schema version 2, newer .* upgrade braze-export"):
        await writer.write(DAY, _days("2024-04-01", [9]))
    pq.write_table(pa.table({"x": [1]}), path)
    foreign = path.read_bytes()
    with pytest.raises(ExporterError, match="not a file this tool wrote"):
        await writer.write(DAY, _days("2024-04-01", [9]))
    assert path.read_bytes() == foreign
    await writer.aclose()


def test_parquet_without_pyarrow_is_a_config_error(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Asking for parquet where pyarrow is not installed: exit 2, one line naming the extra."""
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # find_spec then says: not installed
    path = write_config(
        CONFIG.format(out=tmp_path / "out", fmt="parquet", segments="s", apps="null")
    )
    assert main(["run", str(path), "--sandbox", "--as-of", AS_OF]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith(
        "output.format: parquet needs pyarrow, which is not installed: "
        "pip install 'braze-export[parquet]'"
    )
    assert not (tmp_path / "out").exists()


def test_verify_covers_parquet_files(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A parquet run's files are in its manifest; verify passes, then names a changed one."""
    out = tmp_path / "out"
    path = write_config(CONFIG.format(out=out, fmt="parquet", segments="s", apps="null"))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    files = data_files(out)
    assert files
    assert {p.suffix for p in files} == {".parquet"}
    assert main(["verify", str(out)]) == 0
    assert f"{len(files)} file(s) ok, 0 changed" in capsys.readouterr().out
    table = pq.read_table(files[0])
    pq.write_table(
        table.set_column(1, "sessions", pa.array([0] * len(table), pa.int64())), files[0]
    )
    assert main(["verify", str(out)]) == 1
    assert f"changed: {files[0].relative_to(out)}" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_the_readme_duckdb_query_returns_exactly_the_exported_rows(
    tmp_path: Path, write_config: Callable[..., Path], fmt: str
) -> None:
    """The docs' query for the format, over a whole tree of day and hour series whose ids
    hold `/`, spaces, unicode, `=`, a leading `_`, `..` and a number, returns every exported
    row once, with the ids and the null app_id as in the config."""
    out = tmp_path / "exports"
    segments = ", ".join(json.dumps(s) for s in SEGMENTS)  # YAML reads JSON's escapes
    path = write_config(CONFIG.format(out=out, fmt=fmt, segments=segments, apps=", ".join(APPS)))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    first = {p: p.read_bytes() for p in data_files(out)}
    # A rerun merges into every file (ids with line-end characters included), changing none.
    assert (
        main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", AS_OF, "--fresh"]) == 0
    )
    assert {p: p.read_bytes() for p in data_files(out)} == first
    plan = build_plan(load_config(path, env={}), date.fromisoformat(AS_OF))

    query = readme_queries()[fmt].replace("'exports/", f"'{out}/")
    result = duckdb.sql(query)
    assert result is not None
    columns = result.columns
    got = [dict(zip(columns, row, strict=True)) for row in result.fetchall()]

    key = ("time", "sessions", "segment_id", "app_id", "unit")
    in_files = sorted(tuple(r[k] for k in key) for p in data_files(out) for r in read_rows(p))
    assert sorted(tuple(r[k] for k in key) for r in got) == in_files
    assert len(got) == sum(r.length for r in plan.requests)
    assert {(r["segment_id"], r["app_id"], r["unit"]) for r in got} == {
        (s.segment_id, s.app_id, s.unit) for s in plan.series
    }
    for row in got:
        assert row["sessions"] == session_count(
            row["segment_id"], row["app_id"], row["unit"], row["time"]
        )
    if fmt == "parquet":
        assert columns == [*key, "day", "hour"]
        # No directory looks like a Hive partition: even DuckDB's default guess finds none.
        assert duckdb.read_parquet(f"{out}/sessions/**/*.parquet").columns == columns
        for row in got:
            period = period_of(row["unit"], row["time"])
            if row["unit"] == "day":
                assert (row["day"], row["hour"]) == (date.fromordinal(period), None)
            else:
                assert row["day"] is None
                assert row["hour"].timestamp() == period * 3600


def test_the_documented_queries_cover_every_format() -> None:
    """The docs show one query for each output format."""
    assert set(readme_queries()) == set(formats.FORMATS)
