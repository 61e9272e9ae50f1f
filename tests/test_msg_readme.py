"""docs/output.md's DuckDB queries over the long tables run, and say what the files hold."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.test_msg_e2e import AS_OF, _config, _local, _run, read_long

OUTPUT_DOCS = Path(__file__).resolve().parent.parent / "docs" / "output.md"
duckdb = pytest.importorskip("duckdb")


def _section() -> str:
    text = OUTPUT_DOCS.read_text()
    return text.split("### Campaign, Canvas and send tables", 1)[1].split("\n#", 1)[0]


def _queries(out: Path) -> list[str]:
    """The section's sql blocks, reading ``out`` where they say ``exports``."""
    blocks = re.findall(r"```sql\n(.*?)```", _section(), re.S)
    return [b.replace("'exports/", f"'{out}/") for b in blocks]


@pytest.fixture
def export(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[[str, str], Path]:
    """Export the e2e config's campaigns, Canvas and sends in a format into a directory of
    tmp_path: the tree."""

    def run(fmt: str, name: str) -> Path:
        out = tmp_path / name
        _run(sandbox_server, monkeypatch, write_config(_config(str(out), fmt)), AS_OF)
        return out

    return run


@pytest.fixture
def tree(export: Callable[[str, str], Path]) -> Path:
    """A parquet tree of the e2e config's campaigns, Canvas and sends."""
    return export("parquet", "out")


def _campaign_rows(out: Path, fmt: str = "parquet") -> list[tuple[Any, ...]]:
    files = {k: v for k, v in _local(out).items() if k.startswith("campaigns/")}
    return [row for data in files.values() for row in read_long(data, fmt)]


def test_the_pivot_gives_one_column_per_metric(tree: Path) -> None:
    """One row per day, campaign and message; each metric a column holding its value."""
    _, pivot, _ = _queries(tree)
    relation = duckdb.sql(pivot)
    rows = _campaign_rows(tree)
    keys = ["time", "campaign_id", "channel", "message_index", "variation_api_id"]
    assert relation.columns[:5] == keys
    assert set(relation.columns[6:]) == {r[-2] for r in rows}
    got = {
        (*row[:5], metric): value
        for row in relation.fetchall()
        for metric, value in zip(relation.columns[6:], row[6:], strict=True)
        if value is not None
    }
    assert got == {(*r[:5], r[-2]): r[-1] for r in rows}


def test_sends_opens_clicks_per_channel_per_day(tree: Path) -> None:
    """The pasteable query sums each channel's sends, opens and clicks of every campaign."""
    _, _, query = _queries(tree)
    wanted: dict[tuple[str, str], list[float | None]] = defaultdict(lambda: [None] * 3)
    names = ({"sent"}, {"opens", "direct_opens", "read"}, {"clicks", "body_clicks", "total_clicks"})
    for row in _campaign_rows(tree):
        day, channel, metric, value = row[0], row[2], row[-2], row[-1]
        if channel is None:
            continue
        sums = wanted[day, channel]
        for k, metrics in enumerate(names):
            if metric in metrics:
                sums[k] = (sums[k] or 0.0) + value
    got = {(day, channel): list(sums) for day, channel, *sums in duckdb.sql(query).fetchall()}
    assert got == dict(wanted)
    assert any(sums[0] for sums in got.values())


def test_the_reads_return_every_row_typed(export: Callable[[str, str], Path]) -> None:
    """The section's Parquet and jsonl reads return every row of each tree, typed."""
    for fmt in ("parquet", "jsonl"):
        out = export(fmt, fmt)
        reads = _queries(out)[0].split(";")
        query = reads[0] if fmt == "parquet" else reads[1]
        got = duckdb.sql(query).fetchall()
        assert sorted(got, key=repr) == sorted(_campaign_rows(out, fmt), key=repr)
