"""Partition files: layout, merge by time, atomic replace, safe paths."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Sequence
from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from exporter import writers
from exporter.child import ChildProcess, Job
from exporter.client import Point
from exporter.errors import ExporterError, WriteError
from exporter.plan import Series, period_of
from exporter.writers import WORK_DIR, PartitionWriter, encode_id, partition_path

DAY = Series("seg-a", None, "day")


def _days(start: str, values: list[int]) -> list[Point]:
    first = date.fromisoformat(start).toordinal()
    return [
        Point(date.fromordinal(first + i).isoformat(), value, first + i)
        for i, value in enumerate(values)
    ]


def _rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_jsonl_rows_have_the_documented_shape(tmp_path: Path) -> None:
    """One object per point, keys in order, time verbatim, workspace app_id null."""
    writer = PartitionWriter(tmp_path, "jsonl")
    (written,) = await writer.write(DAY, _days("2024-04-29", [42, 7]))
    path = tmp_path / "sessions/day/segment-seg-a/workspace/2024-04.jsonl"
    assert written.path == path
    assert written.rows == 2
    assert path.read_text() == (
        '{"time": "2024-04-29", "sessions": 42, "segment_id": "seg-a", "app_id": null, '
        '"unit": "day"}\n'
        '{"time": "2024-04-30", "sessions": 7, "segment_id": "seg-a", "app_id": null, '
        '"unit": "day"}\n'
    )


async def test_csv_rows_have_the_documented_shape(tmp_path: Path) -> None:
    """CSV has the header and an empty app_id for the workspace."""
    writer = PartitionWriter(tmp_path, "csv")
    await writer.write(DAY, _days("2024-04-30", [42]))
    path = tmp_path / "sessions/day/segment-seg-a/workspace/2024-04.csv"
    assert path.read_text() == "time,sessions,segment_id,app_id,unit\n2024-04-30,42,seg-a,,day\n"


async def test_points_split_by_the_datas_own_month(tmp_path: Path) -> None:
    """A request spanning two months writes two partitions."""
    writer = PartitionWriter(tmp_path, "jsonl")
    written = await writer.write(DAY, _days("2024-04-29", [1, 2, 3, 4]))
    assert [w.path.name for w in written] == ["2024-04.jsonl", "2024-05.jsonl"]
    assert [w.rows for w in written] == [2, 2]


async def test_hour_series_partition_by_utc_date(tmp_path: Path) -> None:
    """Hour points go to a file per UTC day."""
    hours = Series("seg-a", "app-1", "hour")
    first = period_of("hour", "2024-04-30T22:00:00")
    points = [
        Point(
            datetime.fromtimestamp((first + i) * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            i,
            first + i,
        )
        for i in range(4)
    ]
    written = await PartitionWriter(tmp_path, "jsonl").write(hours, points)
    assert [w.path.name for w in written] == ["2024-04-30.jsonl", "2024-05-01.jsonl"]
    assert written[0].path.parent.name == "app-app-1"


async def test_rerun_and_overlap_never_duplicate_and_restated_values_win(tmp_path: Path) -> None:
    """Writing the same and overlapping points again keeps one row per time, newest value."""
    writer = PartitionWriter(tmp_path, "jsonl")
    await writer.write(DAY, _days("2024-04-01", [1, 2, 3, 4, 5]))
    first_bytes = next(tmp_path.rglob("*.jsonl")).read_bytes()
    await writer.write(DAY, _days("2024-04-01", [1, 2, 3, 4, 5]))
    path = next(tmp_path.rglob("*.jsonl"))
    assert path.read_bytes() == first_bytes  # same data, same bytes
    await writer.write(DAY, _days("2024-04-04", [40, 50, 60]))
    rows = _rows(path)
    assert [r["time"] for r in rows] == [f"2024-04-0{d}" for d in range(1, 7)]
    assert [r["sessions"] for r in rows] == [1, 2, 3, 40, 50, 60]


async def test_out_of_order_writes_end_sorted(tmp_path: Path) -> None:
    """Later periods written first still end in time order."""
    writer = PartitionWriter(tmp_path, "csv")
    await writer.write(DAY, _days("2024-04-20", [5]))
    await writer.write(DAY, _days("2024-04-02", [1]))
    lines = next(tmp_path.rglob("*.csv")).read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["2024-04-02", "2024-04-20"]


async def test_replace_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    """Temp files live under .braze-export/ and are gone after the rename."""
    writer = PartitionWriter(tmp_path, "jsonl")
    await writer.write(DAY, _days("2024-04-01", [1]))
    assert writer.tmp_dir == tmp_path / WORK_DIR / "tmp"
    assert list(writer.tmp_dir.iterdir()) == []
    data_files = [p for p in tmp_path.rglob("*") if p.is_file() and WORK_DIR not in p.parts]
    assert len(data_files) == 1


@pytest.mark.parametrize(
    ("broken", "message"),
    [("rename", "No space left on device"), ("sync", "Input/output error")],
)
async def test_a_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str, message: str
) -> None:
    """If the rename or the batch's sync fails, the write fails, the old file is intact and
    no temp file stays."""
    writer = PartitionWriter(tmp_path, "jsonl")
    await writer.write(DAY, _days("2024-04-01", [1]))
    path = next(tmp_path.rglob("*.jsonl"))
    before = path.read_bytes()

    def fail(*_: object) -> None:
        raise OSError(28 if broken == "rename" else 5, message)

    if broken == "rename":
        monkeypatch.setattr(os, "replace", fail)
    else:
        monkeypatch.setattr(writers, "_syncfs", fail)
        monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(ExporterError, match=message):
        await writer.write(DAY, _days("2024-04-01", [99]))
    assert path.read_bytes() == before
    assert list(writer.tmp_dir.iterdir()) == []
    await writer.aclose()


async def test_a_taken_temp_name_never_fails_a_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Temp names already taken (by a crashed process in another pid namespace, say) are
    skipped: the write succeeds and leaves them alone."""
    monkeypatch.setattr(writers, "_TEMP_NAMES", itertools.count())
    writer = PartitionWriter(tmp_path, "jsonl", token="t0ken")
    writer.tmp_dir.mkdir(parents=True)
    taken = {f"{prefix}-{n}.part" for prefix in ("t0ken", os.getpid()) for n in range(5)}
    for name in taken:
        (writer.tmp_dir / name).write_text("taken")
    (written,) = await writer.write(DAY, _days("2024-04-01", [1, 2]))
    writers.atomic_write(tmp_path / "other", b"x", writer.tmp_dir, token="t0ken")
    await writer.aclose()
    assert written.rows == 2
    assert (tmp_path / "other").read_bytes() == b"x"
    assert {p.name for p in writer.tmp_dir.iterdir()} == taken


async def test_a_foreign_file_is_not_overwritten(tmp_path: Path) -> None:
    """A partition file that is not ours stops that series with a clear message."""
    path = partition_path(tmp_path, DAY, "2024-04", "jsonl")
    path.parent.mkdir(parents=True)
    path.write_text("hello\n")
    with pytest.raises(ExporterError, match="not a file this tool wrote"):
        await PartitionWriter(tmp_path, "jsonl").write(DAY, _days("2024-04-01", [1]))
    assert path.read_text() == "hello\n"


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("seg-a", "seg-a"),
        ("a/b", "a%2Fb"),
        ("../../x", "..%2F..%2Fx"),
        ("%2F", "%252F"),
        ("..", ".."),
        ("_all", "_all"),
        ("späti", "sp%C3%A4ti"),
        ("x=1", "x%3D1"),
    ],
)
def test_ids_are_percent_encoded(raw: str, encoded: str) -> None:
    """Ids are data: separators are encoded, and so is `=` (no name looks like a Hive key)."""
    assert encode_id(raw) == encoded


def test_the_workspace_and_app_directories_cannot_collide() -> None:
    """The series without an app id has its own directory; an app called `workspace` does not
    land in it, and every name starts with a fixed word (nothing hidden, no `..`)."""
    workspace = partition_path(Path("o"), Series("..", None, "day"), "2024-04", "csv")
    named = partition_path(Path("o"), Series("_x", "workspace", "day"), "2024-04", "csv")
    assert workspace.parts[-4:-1] == ("day", "segment-..", "workspace")
    assert named.parts[-4:-1] == ("day", "segment-_x", "app-workspace")


async def test_hostile_ids_stay_inside_the_output_dir(tmp_path: Path) -> None:
    """Traversal-looking ids write below output.dir under their key= directory."""
    root = tmp_path / "out"
    for segment in ["../../x", "a/b", "..", ".", "%2F", "/etc/passwd", "späti", "x" * 256]:
        series = Series(segment, "../app", "day")
        for written in await PartitionWriter(root, "jsonl").write(series, _days("2024-04-01", [1])):
            resolved = written.path.resolve()
            assert resolved.is_relative_to(root.resolve())
            assert resolved.parent.parent.name.startswith("segment-")
            assert all(len(part.encode()) <= 255 for part in resolved.parts)
    assert {p.name for p in tmp_path.iterdir()} == {"out"}


async def test_without_syncfs_each_file_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the platform has no syncfs, the batch fsyncs each file and directory instead."""
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(writers, "_syncfs", None)
    monkeypatch.setattr(os, "fsync", fsync)
    writer = PartitionWriter(tmp_path, "jsonl")
    await writer.write(DAY, _days("2024-04-30", [1, 2]))  # two partitions, one after the other
    assert len(synced) == 2 * 2  # per partition: its temp file, then its directory
    assert len(list(tmp_path.rglob("*.jsonl"))) == 2
    await writer.aclose()


async def test_concurrent_writes_of_one_file_all_land(tmp_path: Path) -> None:
    """Many writers of the same partition at once: every row ends in the file, once."""
    writer = PartitionWriter(tmp_path, "jsonl")
    await asyncio.gather(*(writer.write(DAY, _days(f"2024-04-{d:02d}", [d])) for d in range(1, 31)))
    rows = _rows(next(tmp_path.rglob("*.jsonl")))
    assert [r["sessions"] for r in rows] == list(range(1, 31))
    await writer.aclose()


async def test_parquet_partitions_written_together_share_a_hand_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 Parquet partitions written at once go to the encoder process in a few batches (at
    most one per loop iteration while it works), not one hand-off per file."""
    batches: list[int] = []
    run = ChildProcess.run

    async def counting(self: ChildProcess, jobs: Sequence[Job]) -> list[object]:
        batches.append(len(jobs))
        return await run(self, jobs)

    monkeypatch.setattr(ChildProcess, "run", counting)
    writer = PartitionWriter(tmp_path, "parquet")
    series = [Series(f"seg-{i}", None, "day") for i in range(40)]
    await asyncio.gather(*(writer.write(s, _days("2024-04-01", [1])) for s in series))
    await writer.aclose()
    assert sum(batches) == 40
    assert len(batches) <= 4
    assert len(list(tmp_path.rglob("*.parquet"))) == 40


async def test_a_parquet_partition_that_cannot_be_merged_fails_only_its_own_write(
    tmp_path: Path,
) -> None:
    """In a batch of Parquet partitions, a foreign file fails its own write; the others land."""
    bad = Series("seg-bad", None, "day")
    path = partition_path(tmp_path, bad, "2024-04", "parquet")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    writer = PartitionWriter(tmp_path, "parquet")
    good = [Series(f"seg-{i}", None, "day") for i in range(5)]
    results = await asyncio.gather(
        *(writer.write(s, _days("2024-04-01", [1])) for s in [*good, bad]),
        return_exceptions=True,
    )
    await writer.aclose()
    assert all(isinstance(r, list) and len(r) == 1 for r in results[:5])
    assert isinstance(results[5], ExporterError)
    assert "not a file this tool wrote" in str(results[5])
    assert path.read_bytes() == b"not parquet"


async def test_a_batch_is_synced_and_renamed_in_one_thread_hand_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data sync, renames and the names' sync of a batch run in one call on the syncer thread
    (one hand-off per batch, not two), in that order."""
    steps: list[str] = []
    writer = PartitionWriter(tmp_path, "jsonl")
    monkeypatch.setattr(writer, "_sync_data", lambda batch: steps.append(f"data {len(batch)}"))
    monkeypatch.setattr(writer, "_sync_names", lambda batch: steps.append(f"names {len(batch)}"))
    land = writer._land

    def counted_land(batch: list[writers._Staged]) -> None:
        steps.append("hand-off")
        land(batch)

    monkeypatch.setattr(writer, "_land", counted_land)
    # Ten partitions under ten different lock stripes (str hashes vary per process: two
    # sharing a stripe would take turns, one batch after the other).
    series, stripes = [], set()
    for i in itertools.count():
        one = Series(f"seg-{i}", None, "day")
        stripe = writers._stripe(partition_path(tmp_path, one, "2024-04", "jsonl"))
        if stripe not in stripes:
            stripes.add(stripe)
            series.append(one)
        if len(series) == 10:
            break
    await asyncio.gather(*(writer.write(s, _days("2024-04-01", [1])) for s in series))
    await writer.aclose()
    assert steps == ["hand-off", "data 10", "names 10"]
    assert len(list(tmp_path.rglob("*.jsonl"))) == 10


@pytest.mark.parametrize(
    ("fmt", "error"),
    [
        ("jsonl", "ArrowMemoryError: malloc of size 65536 failed"),
        ("parquet", "ArrowMemoryError: malloc of size 65536 failed"),
        # What a tester saw under ulimit -v: thrift's allocation failure, as ArrowInvalid.
        ("parquet", "ArrowInvalid: Couldn't deserialize thrift: std::bad_alloc"),
    ],
)
async def test_running_out_of_memory_is_not_blamed_on_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, error: str
) -> None:
    """Memory running out while a partition is read for the merge (pyarrow raises its
    ArrowMemoryError): a WriteError saying so, never 'not a file this tool wrote; move it
    away', which would have a user throw good data away. (The read, merge and encode, as the
    encoder process runs them.)"""
    import pyarrow as pa

    writer = PartitionWriter(tmp_path, fmt, durable=False)
    (first,) = await writer.write(DAY, _days("2024-04-29", [42]))
    await writer.aclose()
    before = first.path.read_bytes()

    kind, message = error.split(": ", 1)

    def short_of_memory(*args: object, **kwargs: object) -> object:
        raise getattr(pa, kind)(message)

    monkeypatch.setattr("pyarrow.parquet.ParquetFile", short_of_memory)
    monkeypatch.setattr("json.loads", short_of_memory)
    with pytest.raises(WriteError, match="out of memory") as raised:
        writers._prepare(fmt, UTC, str(first.path), DAY, [(739_006, "2024-04-30", 7)])
    assert "move it away" not in str(raised.value)
    assert first.path.read_bytes() == before


def test_verify_names_kept_journals_for_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal is kept by a run that was killed, and also by one that ended incomplete or
    without its manifest: verify does not call them all killed."""
    from exporter.cli import main
    from exporter.storage import Journal

    journal = Journal(tmp_path, "20240701T000000Z-abcdef", 1)
    journal.record([])
    journal.close(remove=False)
    assert main(["verify", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "1 journal(s) of runs that were killed or did not complete" in out
