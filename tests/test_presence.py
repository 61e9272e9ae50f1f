"""The files are the truth: a run fetches again the done periods whose partition file is gone
or changed, and a run that exits 0 is followed by a verify that passes."""

from __future__ import annotations

import io
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.manifest import verify
from exporter.plan import Series, shard_of
from exporter.presence import DISPLACED, LocalFiles, Ownership, check_files
from exporter.progress import Progress
from exporter.sandbox import sandbox_stats
from exporter.state import State, state_path
from exporter.writers import WrittenFile, partition_path, partition_span
from tests.conftest import Cli, ServerHandle, snapshot

AS_OF = "2024-07-01"
NOW = datetime(2024, 7, 1, 6, tzinfo=UTC).timestamp()  # the sandbox's clock: same rows twice
JUNE = "sessions/day/segment-seg-a/workspace/2024-06.{fmt}"
MAY = "sessions/day/segment-seg-a/workspace/2024-05.{fmt}"


def _config(out: Path, fmt: str, days: int = 40) -> str:
    return f"""\
version: 1
timezone: UTC
limits: {{requests_per_hour: 100000000, concurrency: 2}}
output: {{dir: "{out}", format: {fmt}}}
exports:
  - name: all
    segment_ids: [seg-a, seg-b]
    app_ids: [null]
    units: [day]
    window: {{days: {days}}}
"""


def _delete(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _replace(path: Path) -> None:
    """Another partition's file, valid and of this tool, in its place."""
    path.write_bytes(path.with_name(f"2024-05{path.suffix}").read_bytes())


def _directory(path: Path) -> None:
    """A directory where the file was (``rm F; mkdir F``), holding a file of its own."""
    path.unlink()
    path.mkdir()
    (path / "mine").write_text("a user's\n")


DAMAGE = {
    "deleted": _delete,
    "truncated": _truncate,
    "replaced": _replace,
    "a directory": _directory,
}


@pytest.fixture
def sandbox(cli: Cli, env_key: str) -> Iterator[ServerHandle]:
    with cli.sandbox(clock=lambda: NOW) as server:
        yield server


def _run(config: Path, *extra: str) -> int:
    return main(["run", str(config), "--as-of", AS_OF, *extra])


def _last_manifest(out: Path) -> dict[str, Any]:
    """The latest run's manifest (run ids of one second do not sort by time)."""
    docs = [json.loads(p.read_text()) for p in (out / "_runs").glob("*.json")]
    last: dict[str, Any] = max(docs, key=lambda doc: doc["sequence"])
    return last


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_rerun_fetches_again_exactly_the_periods_of_a_damaged_file(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    fmt: str,
    damage: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A partition file deleted, truncated, replaced or made a directory: the rerun sends
    one request (its series'), writes its 30 periods again, exits 0, and verify passes; the
    summary says a file was moved aside only when one was (a changed one)."""
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / "out"
    config = write_config(_config(out, fmt))
    assert _run(config) == 0
    before = snapshot(out)
    sent = sandbox_stats(sandbox.app).requests
    DAMAGE[damage](out / JUNE.format(fmt=fmt))
    capsys.readouterr()
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1
    assert snapshot(out) == before
    check = _last_manifest(out)["file_check"]
    found = check["missing"] if damage == "deleted" else check["changed"]
    assert (found, check["files_missing"] + check["files_changed"]) == ([JUNE.format(fmt=fmt)], 1)
    assert (check["periods_taken_back"], check["periods_refetched"]) == (30, 30)
    summary = capsys.readouterr().out
    assert "30 done period(s) taken back, 30 fetched again" in summary
    assert ("(moved to .braze-export/displaced/)" in summary) == (damage != "deleted")
    assert "periods: 80 planned, 30 written, 50 already done, 0 missing" in summary
    report = verify(out)
    assert (report.changed, report.missing, report.unknown, report.journals) == ([], [], [], 0)
    if damage != "deleted":  # what was there is kept aside, never merged into
        displaced = list((out / DISPLACED).rglob(f"2024-06.{fmt}"))
        assert len(displaced) == 1
    if damage == "a directory":  # and with what the user put in it
        assert (displaced[0] / "mine").read_text() == "a user's\n"


def _plant(path: Path, fmt: str, kind: str) -> None:
    """A file no run wrote where a run will write: parseable, holding a row of the series
    relabelled from another id and a day after the as-of date, or a link to such a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    planted = path.parents[5] / f"planted.{fmt}" if kind == "a link" else path
    lines = [
        '{"time": "2024-06-15", "sessions": 1, "segment_id": "seg-a", "app_id": null, '
        '"unit": "day"}',
        '{"time": "2024-07-28", "sessions": 666, "segment_id": "EVIL", "app_id": "x", '
        '"unit": "day"}',
    ]
    planted.write_text("".join(f"{line}\n" for line in lines))
    if kind == "a link":
        path.symlink_to(planted)


@pytest.mark.parametrize("kind", ["a file", "a link"])
def test_a_run_never_merges_into_a_file_no_run_wrote(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    kind: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A parseable partition file (or a link) that no run wrote is moved aside, never
    merged into: the output holds only Braze's rows, the summary and manifest name it, and
    verify passes."""
    out = tmp_path / "out"
    june = JUNE.format(fmt="jsonl")
    _plant(out / june, "jsonl", kind)
    assert _run(write_config(_config(out, "jsonl"))) == 0
    clean = tmp_path / "clean"
    assert _run(write_config(_config(clean, "jsonl"), "clean.yaml")) == 0
    assert snapshot(out) == snapshot(clean)
    assert "666" not in (out / june).read_text()
    assert "that no run wrote moved to .braze-export/displaced/" in capsys.readouterr().out
    check = _last_manifest(out)["file_check"]
    assert (check["files_foreign"], check["foreign"]) == (1, [june])
    assert len(list((out / DISPLACED).rglob("2024-06.jsonl"))) == 1
    report = verify(out)
    assert (report.changed, report.missing, report.unknown) == ([], [], [])


@pytest.mark.parametrize("lost", ["the state", "the state and the run records"])
def test_a_file_a_run_wrote_is_merged_into_even_when_the_state_is_gone(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any, lost: str
) -> None:
    """The state deleted: a file the run records give the exact bytes of is still ours and
    merged into as it is; with the records gone too, nothing can tell it from a stray one,
    so it is moved aside and written anew. Either way the data is what Braze sent."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    before = snapshot(out)
    for state in (out / ".braze-export").glob("state*.sqlite*"):
        state.unlink()
    if lost != "the state":
        for record in (out / "_runs").iterdir():
            record.unlink()
    assert _run(config) == 0
    assert snapshot(out) == before
    foreign = _last_manifest(out)["file_check"]["foreign"]
    assert len(foreign) == (0 if lost == "the state" else 4)
    assert main(["verify", str(out)]) == 0


def _edit_keeping_size_and_mtime(path: Path) -> None:
    """``sed -i`` of one digit, then ``touch -r`` back to the old mtime: same size."""
    before = path.stat()
    text = path.read_text()
    digit = next(c for c in text if c.isdigit())
    edited = path.with_name(f"{path.name}.sed")
    edited.write_text(text.replace(digit, "9" if digit != "9" else "8", 1))
    edited.replace(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)


@pytest.mark.parametrize("stamps", ["this version's", "an older version's (mtime only)"])
def test_an_edit_of_the_same_size_with_its_mtime_set_back_is_found(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any, stamps: str
) -> None:
    """A file edited to the same size with its mtime set back is changed (its inode and
    ctime tell): the rerun fetches it again and verify passes. A state with mtime-only
    stamps is upgraded by the first check, without fetching anything."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    sent = sandbox_stats(sandbox.app).requests
    if stamps != "this version's":
        db = sqlite3.connect(out / ".braze-export" / "state.sqlite")
        db.execute("UPDATE fingerprints SET stamp = substr(stamp, 1, instr(stamp, ':') - 1)")
        db.commit()
        db.close()
        assert _run(config) == 0
        assert sandbox_stats(sandbox.app).requests == sent
        assert _last_manifest(out)["file_check"]["files_adopted"] == 4
    _edit_keeping_size_and_mtime(out / JUNE.format(fmt="jsonl"))
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1
    assert _last_manifest(out)["file_check"]["changed"] == [JUNE.format(fmt="jsonl")]
    report = verify(out)
    assert (report.changed, report.missing, report.unknown) == ([], [], [])


def test_verify_reports_a_directory_where_a_run_wrote_a_file(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """A partition file replaced by a directory (or a link): verify reports it changed and
    exits 1, before and after a run that found it, never "ok"."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    june, may = out / JUNE.format(fmt="jsonl"), out / MAY.format(fmt="jsonl")
    _directory(june)
    may.unlink()
    may.symlink_to(june / "mine")
    report = verify(out)
    assert (report.changed, report.missing) == (
        sorted([str(june.relative_to(out)), str(may.relative_to(out))]),
        [],
    )
    assert main(["verify", str(out)]) == 1


@pytest.mark.parametrize("lost", ["every record", "one manifest"])
def test_a_rerun_after_run_records_are_deleted_leaves_a_verify_that_passes(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    lost: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """_runs/ deleted (or the manifest of the run that wrote some files): the rerun, with
    nothing to fetch, vouches for the files as they are in its manifest; verify passes."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    june = JUNE.format(fmt="jsonl")
    assert _run(config) == 0
    _delete(out / june)
    assert _run(config) == 0  # writes June again: its manifest alone vouches for it
    if lost == "every record":
        for record in (out / "_runs").iterdir():
            record.unlink()
    else:
        (out / "_runs" / f"{_last_manifest(out)['run_id']}.json").unlink()
    before = snapshot(out)
    sent = sandbox_stats(sandbox.app).requests
    capsys.readouterr()
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent
    assert snapshot(out) == before
    assert "vouched for anew" in capsys.readouterr().out
    manifest = _last_manifest(out)
    vouched = {f["path"]: f["rows"] for f in manifest["files"]}
    assert vouched == ({june: 30} if lost == "one manifest" else {**vouched, june: 30})
    assert len(vouched) == (1 if lost == "one manifest" else 4)
    assert main(["verify", str(out)]) == 0, capsys.readouterr().out
    assert _run(config) == 0  # vouched once: the next run finds every record there
    assert _last_manifest(out)["files"] == []


def test_an_unreadable_manifest_is_treated_as_gone_and_verify_then_passes(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The manifest of the run that wrote the files, truncated: the rerun vouches for the
    files anew, moves the manifest aside and says so; verify then passes."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    (manifest,) = (out / "_runs").glob("*.json")
    manifest.write_bytes(manifest.read_bytes()[:100])
    capsys.readouterr()
    assert _run(config) == 0
    out_text = capsys.readouterr().out
    assert "4 whose run records are gone vouched for anew" in out_text
    assert "(1 unreadable run manifest(s) moved to .braze-export/displaced/)" in out_text
    assert _last_manifest(out)["file_check"]["records_unreadable"] == [f"_runs/{manifest.name}"]
    assert not manifest.exists()
    assert main(["verify", str(out)]) == 0


def test_a_damaged_or_misplaced_state_is_exit_4_with_advice_that_fits(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A damaged state.sqlite is exit 4 (the output cannot be used), not 1 (periods
    missing), and says to delete it; a directory in its place says to move it away."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    state = out / ".braze-export" / "state.sqlite"
    state.write_bytes(b"this is not a database" * 100)
    capsys.readouterr()
    assert _run(config) == 4
    assert "the resume state is damaged" in capsys.readouterr().err
    state.unlink()
    state.mkdir()
    assert _run(config) == 4
    err = capsys.readouterr().err
    assert "it is not a file" in err
    assert "free disk space" not in err


def test_an_untouched_output_is_checked_and_nothing_is_fetched(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """A rerun over intact files checks each and sends nothing."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    sent = sandbox_stats(sandbox.app).requests
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent
    check = _last_manifest(out)["file_check"]
    assert (check["files_checked"], check["files_missing"], check["files_changed"]) == (4, 0, 0)


def test_a_state_without_fingerprints_is_checked_once_by_its_periods(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """A state an older version wrote: the files that are there are adopted as they are,
    the periods of the one that is not are fetched again; the next run trusts the rest."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    db = sqlite3.connect(out / ".braze-export" / "state.sqlite")
    db.execute("DROP TABLE fingerprints")
    db.execute("DELETE FROM meta WHERE key = 'files_checked'")
    db.commit()
    db.close()
    before = snapshot(out)
    (out / JUNE.format(fmt="jsonl")).unlink()
    sent = sandbox_stats(sandbox.app).requests
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1
    assert snapshot(out) == before
    check = _last_manifest(out)["file_check"]
    assert (check["files_adopted"], check["missing"]) == (3, [JUNE.format(fmt="jsonl")])
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1


@pytest.mark.parametrize("table", ["dropped", "emptied"])
def test_plan_checks_a_state_without_fingerprints_as_the_run_does(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    capsys: pytest.CaptureFixture[str],
    table: str,
) -> None:
    """A state an older version wrote (no fingerprints table, or an empty one) and a done
    file gone since: plan finds it by the done periods, as the run's first check does, and
    says the one request the run then sends, writing nothing."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    db = sqlite3.connect(out / ".braze-export" / "state.sqlite")
    db.execute("DROP TABLE fingerprints" if table == "dropped" else "DELETE FROM fingerprints")
    db.execute("DELETE FROM meta WHERE key = 'files_checked'")
    db.commit()
    db.close()
    (out / JUNE.format(fmt="jsonl")).unlink()
    work = sorted((out / ".braze-export").rglob("*"))
    states = {p: p.read_bytes() for p in work if p.is_file()}
    capsys.readouterr()
    assert main(["plan", str(config), "--as-of", AS_OF, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert sorted((out / ".braze-export").rglob("*")) == work
    assert {p: p.read_bytes() for p in states} == states
    assert doc["totals"]["requests"] == 1
    assert doc["file_check"]["files_missing"] == 1
    assert doc["file_check"]["periods_taken_back"] == 30
    sent = sandbox_stats(sandbox.app).requests
    assert _run(config) == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1


def test_a_run_that_exits_0_is_followed_by_a_verify_that_passes(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Whatever was done to the files between runs (deleted, truncated, replaced, or gone
    outside the next run's window), each run that exits 0 leaves a passing verify; a later
    run whose window holds a gone file's periods again fetches them."""
    out = tmp_path / "out"
    wide = write_config(_config(out, "jsonl"), "wide.yaml")
    narrow = write_config(_config(out, "jsonl", days=10), "narrow.yaml")
    june, may = out / JUNE.format(fmt="jsonl"), out / MAY.format(fmt="jsonl")
    steps: list[tuple[Callable[[], None], Path]] = [
        (lambda: None, wide),
        (lambda: _delete(june), wide),
        (lambda: _truncate(june), wide),
        (lambda: _replace(june), wide),
        (lambda: _delete(may), narrow),  # May is not in this run's window
        (lambda: None, wide),  # ... and is in this one's
    ]
    for harm, config in steps:
        harm()
        assert _run(config) == 0
        assert main(["verify", str(out)]) == 0, capsys.readouterr().out
    assert may.exists()


def test_a_shard_checks_only_the_files_of_its_own_series(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """Shards share a directory while the others write: shard 1 leaves seg-b's file (shard
    2's) alone, and shard 2 fetches its periods again."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    assert _run(config) == 0
    assert shard_of(Series("seg-b", None, "day"), 2) == 2
    seg_b = out / JUNE.format(fmt="jsonl").replace("seg-a", "seg-b")
    seg_b.unlink()
    sent = sandbox_stats(sandbox.app).requests
    assert _run(config, "--shard", "1/2") == 0
    assert sandbox_stats(sandbox.app).requests == sent
    assert _last_manifest(out)["file_check"]["files_missing"] == 0
    assert _run(config, "--shard", "2/2") == 0
    assert sandbox_stats(sandbox.app).requests == sent + 1
    assert seg_b.exists()


def test_an_incomplete_run_leaves_no_journal_and_verify_vouches_by_its_manifest(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A run that ends with a failed series writes its manifest, which lists every file it
    wrote: its journal goes, and verify reports no journal."""
    out = tmp_path / "out"
    config = write_config(_config(out, "jsonl"))
    with cli.sandbox(reject_segments=frozenset({"seg-b"})):
        assert _run(config) == 1
    assert list((out / "_runs").glob("*.journal.jsonl")) == []
    report = verify(out)
    assert (report.ok, report.unknown, report.journals) == (2, [], 0)


def test_verify_does_not_report_the_journal_of_a_run_with_a_manifest(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """A journal left beside its run's manifest (an interrupted run keeps it) counts for
    its files, and is not called a killed run's."""
    out = tmp_path / "out"
    assert _run(write_config(_config(out, "jsonl"))) == 0
    doc = _last_manifest(out)
    head = {"run_id": doc["run_id"], "sequence": doc["sequence"]}
    lines = [head, *({"path": f["path"], "rows": 0, "sha256": f["sha256"]} for f in doc["files"])]
    journal = out / "_runs" / f"{doc['run_id']}.journal.jsonl"
    journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = verify(out)
    assert (report.ok, report.manifests, report.journals) == (4, 1, 0)


def test_verify_reports_an_unreadable_manifest_and_does_not_count_it(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A damaged file under _runs/ is named unreadable, is no manifest, and fails verify."""
    out = tmp_path / "out"
    assert _run(write_config(_config(out, "jsonl"))) == 0
    (out / "_runs" / "20240101T000000Z-broken.json").write_bytes(b'{"run_id": "x", "fil')
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "unreadable: _runs/20240101T000000Z-broken.json" in text
    assert "(1 manifest(s), 1 unreadable)" in text


def test_verify_tells_its_progress_file_by_file(
    tmp_path: Path, write_config: Callable[..., Path], sandbox: Any
) -> None:
    """verify reports (checked, total) after each file, ending at total of total."""
    out = tmp_path / "out"
    assert _run(write_config(_config(out, "jsonl"))) == 0
    seen: list[tuple[int, int]] = []
    verify(out, lambda done, total: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_forget_takes_periods_back_in_every_state_file_of_the_directory(
    tmp_path: Path,
) -> None:
    """Taking back 40..50 splits the spans that hold it, in this state file and in another
    layout's, and counts each period once."""
    work = tmp_path / ".braze-export"
    other = State(state_path(work, (1, 2)), scope="s", as_of=1000)
    other.record("k", [(30, 45)], settle_from=10**6)
    other.close()
    state = State(state_path(work, None), scope="s", as_of=1000)
    state.record("k", [(1, 100)], settle_from=10**6)
    assert state.forget("k", 40, 50) == 11
    assert state.done(lambda: {"k": 0}) == {0: [(1, 39), (51, 100)]}
    state.close()


def test_progress_outside_a_terminal_logs_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """tick() (verify's progress) writes one log line per interval, not one per file."""
    stream = io.StringIO()
    progress = Progress(stream, lambda: "3/9 files", interactive=False, interval_s=10.0)
    with caplog.at_level(logging.INFO):
        for now in (0.0, 5.0, 9.9, 10.0, 12.0, 19.9, 20.1):
            progress.tick(now)
    assert [r.getMessage() for r in caplog.records] == ["progress: 3/9 files"] * 2
    assert stream.getvalue() == ""


def test_a_file_that_landed_just_before_a_kill_is_recognised_as_ours(tmp_path: Path) -> None:
    """Killed between a rename and hearing of it: the file on disk is the one noted as
    landing, so its periods stay done; any other content is a change."""
    series = Series("seg-a", None, "day")
    path = partition_path(tmp_path, series, "2024-06", "jsonl")
    path.parent.mkdir(parents=True)

    def written(data: bytes) -> WrittenFile:
        path.write_bytes(data)
        lo, hi = partition_span(series, "2024-06")
        stamp = str(path.stat().st_mtime_ns)
        return WrittenFile(path, 1, "-", 1, series.key, lo, hi, len(data), stamp)

    state = State(state_path(tmp_path / ".braze-export", None), scope="s", as_of=1, root=tmp_path)
    state.note_written([written(b"old\n")])
    state.record(series.key, [(739_038, 739_038)], settle_from=10**6)
    state.note_staged([written(b"newer\n")])  # renamed into place; then kill -9
    check = check_files(state, LocalFiles(tmp_path), fmt="jsonl", run_id="r")
    assert (check.changed, check.adopted) == ([], 1)
    path.write_bytes(b"edited\n")
    check = check_files(state, LocalFiles(tmp_path), fmt="jsonl", run_id="r")
    assert check.changed == [path.relative_to(tmp_path).as_posix()]
    state.close()


def test_a_first_write_that_landed_just_before_a_kill_is_ours_not_foreign(
    tmp_path: Path,
) -> None:
    """Killed between the rename of a file's first write and hearing of it: no fingerprint
    yet, but its landing was noted and it is as staged, so the next run merges into it
    instead of moving it aside as "no file a run of this tool wrote" (found by kill -9 in
    a campaigns backfill: 9 files displaced, with a warning each). Other bytes are foreign."""
    series = Series("seg-a", None, "day")
    path = partition_path(tmp_path, series, "2024-06", "jsonl")
    relative = path.relative_to(tmp_path).as_posix()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"first\n")
    lo, hi = partition_span(series, "2024-06")
    staged = WrittenFile(path, 1, "-", 1, series.key, lo, hi, 6, str(path.stat().st_mtime_ns))
    state = State(state_path(tmp_path / ".braze-export", None), scope="s", as_of=1, root=tmp_path)
    state.note_staged([staged])  # renamed into place; then kill -9
    check = check_files(state, LocalFiles(tmp_path), fmt="jsonl", run_id="r")
    assert check.landed == {relative}
    assert Ownership(state, dict, "r", check).wrote(relative)
    path.write_bytes(b"planted\n")  # the next run noted no landing: a stray file is foreign
    check = check_files(state, LocalFiles(tmp_path), fmt="jsonl", run_id="r")
    assert not Ownership(state, dict, "r", check).wrote(relative)
    state.close()
