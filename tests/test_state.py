"""The resume state: done requests and the run's file records."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from exporter.plan import Request, Series
from exporter.state import State, state_path
from exporter.writers import WrittenFile

REQUEST = Request(Series("s", None, "day"), date(2024, 6, 1).toordinal(), 3, "x")


def test_done_requests_survive_reopening(tmp_path: Path) -> None:
    """A request marked done is done for the next run with the same scope only."""
    path = state_path(tmp_path / ".braze-export", None)
    state = State(path, scope="jsonl|UTC")
    assert not state.is_done(REQUEST)
    state.mark_done(REQUEST, 3)
    state.close()
    again = State(path, scope="jsonl|UTC")
    assert again.is_done(REQUEST)
    again.close()
    other = State(path, scope="csv|UTC")
    assert not other.is_done(REQUEST)
    other.close()


def test_the_latest_write_of_a_file_is_kept_whatever_the_commit_order(tmp_path: Path) -> None:
    """Two requests writing one file may commit out of order: the higher version wins."""
    state = State(tmp_path / ".braze-export/state.sqlite", scope="s", run_id="r1", root=tmp_path)
    data = tmp_path / "sessions/a.jsonl"
    state.mark_done(REQUEST, 1, [WrittenFile(data, 5, "new", version=2)])
    state.mark_done(REQUEST, 1, [WrittenFile(data, 3, "old", version=1)])
    assert list(state.files()) == [("sessions/a.jsonl", 5, "new")]
    assert state.file_count() == 1
    state.close()


def test_shards_have_their_own_state_file(tmp_path: Path) -> None:
    """state_path names one file per shard."""
    assert state_path(tmp_path, None).name == "state.sqlite"
    assert state_path(tmp_path, (2, 4)).name == "state-2of4.sqlite"
