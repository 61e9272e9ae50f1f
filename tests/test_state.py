"""The resume state: done periods per series and source, and the run's file records."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest

from exporter.errors import ExporterError
from exporter.state import GroupRecorder, Record, State, state_path
from exporter.writers import WrittenFile

AS_OF = date(2024, 7, 1).toordinal()
JUNE_1 = date(2024, 6, 1).toordinal()
KEYS = {"s": 0, "t": 1}
NEVER = 2**40  # a settle boundary no period reaches: everything settled


def _open(
    tmp_path: Path,
    scope: str = "braze|jsonl|UTC",
    *,
    shard: tuple[int, int] | None = None,
    as_of: int = AS_OF,
) -> State:
    path = state_path(tmp_path / ".braze-export", shard)
    return State(path, scope=scope, as_of=as_of, root=tmp_path)


def test_done_periods_survive_reopening_for_the_same_scope_only(tmp_path: Path) -> None:
    """Recorded periods are done for the next run of the same source, format and zone only."""
    state = _open(tmp_path)
    state.record("s", [(JUNE_1, JUNE_1 + 2)], NEVER)
    state.close()
    again = _open(tmp_path)
    assert again.done(lambda: KEYS) == {0: [(JUNE_1, JUNE_1 + 2)]}
    again.close()
    for scope in ("sandbox|jsonl|UTC", "braze|csv|UTC", "other-host|jsonl|UTC"):
        other = _open(tmp_path, scope)
        assert other.done(lambda: KEYS) == {}
        other.close()


def test_provisional_periods_count_only_for_the_same_as_of(tmp_path: Path) -> None:
    """Periods from the settle boundary on are done for a resumed run, not for a later one."""
    state = _open(tmp_path)
    state.record("s", [(JUNE_1, JUNE_1 + 9)], JUNE_1 + 7)
    state.close()
    resumed = _open(tmp_path)
    assert resumed.done(lambda: KEYS)[0] == [(JUNE_1, JUNE_1 + 9)]
    resumed.close()
    tomorrow = _open(tmp_path, as_of=AS_OF + 1)
    assert tomorrow.done(lambda: KEYS) == {0: [(JUNE_1, JUNE_1 + 6)]}
    tomorrow.close()


def test_other_shard_layouts_state_is_read(tmp_path: Path) -> None:
    """Work recorded by shards 1/2 and 2/2 counts for an unsharded run, and the other way."""
    for shard, key in (((1, 2), "s"), ((2, 2), "t")):
        part = _open(tmp_path, shard=shard)
        part.record(key, [(JUNE_1, JUNE_1)], NEVER)
        part.close()
    whole = _open(tmp_path)
    assert whole.done(lambda: KEYS) == {0: [(JUNE_1, JUNE_1)], 1: [(JUNE_1, JUNE_1)]}
    whole.close()


def test_the_latest_write_of_a_file_is_kept_whatever_the_commit_order(tmp_path: Path) -> None:
    """Two requests writing one file may commit out of order: the higher version wins."""
    state = State(
        tmp_path / ".braze-export/state.sqlite", scope="s", as_of=AS_OF, run_id="r1", root=tmp_path
    )
    data = tmp_path / "sessions/a.jsonl"
    state.record("s", [(JUNE_1, JUNE_1)], NEVER, [WrittenFile(data, 5, "new", version=2)])
    state.record("s", [(JUNE_1, JUNE_1)], NEVER, [WrittenFile(data, 3, "old", version=1)])
    assert list(state.files()) == [("sessions/a.jsonl", 5, "new")]
    assert state.file_count() == 1
    state.close()


def test_a_damaged_state_file_says_what_to_do_and_what_it_costs(tmp_path: Path) -> None:
    """A corrupt state.sqlite is one clear error: delete it, the data stays, periods refetch."""
    path = state_path(tmp_path / ".braze-export", None)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ExporterError, match="Delete it to go on: the data files stay"):
        _open(tmp_path)


def test_a_failed_record_is_an_exporter_error(tmp_path: Path) -> None:
    """SQLite failing to record (disk full, say) raises ExporterError, not sqlite3.Error."""
    state = _open(tmp_path)

    class Broken:
        def execute(self, *_: object) -> None:
            raise sqlite3.OperationalError("database or disk is full")

    state._db = Broken()  # type: ignore[assignment]
    with pytest.raises(ExporterError, match="disk is full"):
        state.record("s", [(JUNE_1, JUNE_1)], NEVER)


def test_shards_have_their_own_state_file(tmp_path: Path) -> None:
    """state_path names one file per shard."""
    assert state_path(tmp_path, None).name == "state.sqlite"
    assert state_path(tmp_path, (2, 4)).name == "state-2of4.sqlite"


def _commits(state: State) -> list[str]:
    """Every COMMIT the state's connection runs from now on."""
    seen: list[str] = []
    state._db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


async def test_records_made_together_share_one_transaction(tmp_path: Path) -> None:
    """Records of one turn of the event loop are one commit; each is there once, with its
    periods (provisional ones too) and its files."""
    state = State(
        tmp_path / ".braze-export/state.sqlite", scope="s", as_of=AS_OF, run_id="r", root=tmp_path
    )
    commits = _commits(state)
    recorder = GroupRecorder(state)
    keys = {f"k{i}": i for i in range(20)}
    await asyncio.gather(
        *(
            recorder.record(
                key,
                [(JUNE_1, JUNE_1 + i)],
                JUNE_1 + 5,
                [WrittenFile(tmp_path / f"sessions/{key}.jsonl", i + 1, key, version=1)],
            )
            for key, i in keys.items()
        )
    )
    assert commits == ["COMMIT"]
    done = state.done(lambda: keys)
    for i in keys.values():
        assert done[i] == [(JUNE_1, JUNE_1 + i)]  # done() merges a series' records
    assert list(state.files()) == [
        (f"sessions/{k}.jsonl", i + 1, k) for k, i in sorted(keys.items())
    ]
    state.close()


async def test_a_record_that_cannot_be_committed_fails_only_its_own_caller(
    tmp_path: Path,
) -> None:
    """When the shared transaction fails, each record is tried alone: the one SQLite refuses
    raises ExporterError to its caller; the others are recorded."""
    state = _open(tmp_path)
    record_many = state.record_many

    def refuse_bad(records: Sequence[Record]) -> None:
        if any(r.series_key == "bad" for r in records):
            raise ExporterError("cannot record progress (database or disk is full)")
        record_many(records)

    state.record_many = refuse_bad  # type: ignore[method-assign]
    recorder = GroupRecorder(state)
    outcomes = await asyncio.gather(
        *(recorder.record(key, [(JUNE_1, JUNE_1)], NEVER) for key in ("s", "bad", "t")),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], ExporterError)
    assert state.done(lambda: {**KEYS, "bad": 2}) == {0: [(JUNE_1, JUNE_1)], 1: [(JUNE_1, JUNE_1)]}
    state.close()


async def test_an_unexpected_failure_of_the_transaction_reaches_every_caller(
    tmp_path: Path,
) -> None:
    """Anything else going wrong in the shared transaction fails its callers, never leaves
    them waiting."""
    state = _open(tmp_path)

    def broken(records: Sequence[Record]) -> None:
        raise TypeError("a bug")

    state.record_many = broken  # type: ignore[method-assign]
    recorder = GroupRecorder(state)
    outcomes = await asyncio.gather(
        *(recorder.record(key, [(JUNE_1, JUNE_1)], NEVER) for key in ("s", "t")),
        return_exceptions=True,
    )
    assert [type(o) for o in outcomes] == [TypeError, TypeError]
    state.close()
