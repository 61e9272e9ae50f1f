"""Long files of the message series: columns, types, and the day as the unit of merge."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from exporter import formats
from exporter.client import Point
from exporter.formats import DayRows
from exporter.plan import Series
from exporter.writers import PartitionWriter, partition_path

FORMATS = ["jsonl", "csv", "parquet"]
CAMPAIGN = Series.of("campaigns", "day", {"campaign_id": "c-1"})
SEND = Series.of("sends", "day", {"campaign_id": "c-1", "send_id": 's,"1\r'})
# (channel, message_index, variation_api_id, variation_name, metric, value)
DAY: DayRows = (
    (None, None, None, None, "unique_recipients", 12.0),
    (None, None, None, None, "revenue", 9.5),
    ("email", 0, "var-1", "Variant 1", "sent", 100.0),
    ("email", 0, "var-1", "Variant 1", 'carousel_slide_1_Title,"x"_click', 3.0),
)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_long_file_reads_back_as_it_was_written(fmt: str) -> None:
    """Every value of each day comes back, nulls and the message index typed as written."""
    rows = [(738886, "2024-01-01", DAY), (738887, "2024-01-02", DAY[2:])]
    for series in (CAMPAIGN, SEND):
        data = formats.encode(fmt, series, rows)
        assert formats.decode(fmt, series, data) == {p: (t, v) for p, t, v in rows}


def test_long_columns_are_time_ids_breakdowns_metric_value() -> None:
    """A jsonl line has Braze's names; a total's breakdowns are null; value is a float."""
    data = formats.encode("jsonl", SEND, [(738886, "2024-01-01", DAY)])
    first, third = (json.loads(line) for line in data.decode().splitlines()[::2])
    assert list(first) == list(SEND.info.columns)
    assert list(first)[:4] == ["time", "campaign_id", "send_id", "channel"]
    assert first["channel"] is None
    assert (first["metric"], first["value"]) == ("unique_recipients", 12.0)
    assert (third["channel"], third["message_index"], third["value"]) == ("email", 0, 100.0)


def test_long_parquet_types_value_as_float64() -> None:
    """value is float64 (revenue is fractional), message_index int64, the rest strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = formats.encode("parquet", CAMPAIGN, [(738886, "2024-01-01", DAY)])
    schema = pq.read_table(pa.BufferReader(data)).schema
    assert str(schema.field("value").type) == "double"
    assert str(schema.field("message_index").type) == "int64"
    assert str(schema.field("metric").type) == "string"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_day_written_again_replaces_all_its_rows(tmp_path: Path, fmt: str) -> None:
    """A restated day loses a metric that disappeared; other days stay; no duplicate."""

    async def run() -> bytes:
        writer = PartitionWriter(tmp_path, fmt, durable=False)
        try:
            await writer.write(
                CAMPAIGN,
                [Point("2024-01-01", DAY, 738886), Point("2024-01-02", DAY, 738887)],
            )
            files = await writer.write(CAMPAIGN, [Point("2024-01-02", DAY[:1], 738887)])
        finally:
            await writer.aclose()
        assert [f.rows for f in files] == [len(DAY) + 1]
        return partition_path(tmp_path, CAMPAIGN, "2024-01", fmt).read_bytes()

    merged = formats.decode(fmt, CAMPAIGN, asyncio.run(run()))
    assert merged == {738886: ("2024-01-01", DAY), 738887: ("2024-01-02", DAY[:1])}
