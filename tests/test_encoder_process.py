"""Parquet's encoder process: same bytes as inline, errors isolated, crashes and signals."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC
from functools import partial
from pathlib import Path
from typing import IO, Any

import pyarrow.parquet as pq
import pytest

from exporter import writers
from exporter.child import BATCH_TIMEOUT_S, ChildDied, ChildProcess, ChildUnavailable
from exporter.cli import main
from exporter.errors import ExporterError, WriteError
from exporter.plan import Series
from exporter.storage import WORK_DIR, DirLock
from exporter.writers import PartitionWriter, partition_path
from tests.conftest import data_files, wait_for
from tests.test_reliability import AS_OF, ROOT, _config, _env, _Exporter
from tests.test_storage import _sandbox_run_as_pid_1, _unshare
from tests.test_writers import _days

DAY = Series("seg-a", "app-1", "day")
ROWS = [(738_977 + i, f"2024-04-{i + 1:02d}", i * 7) for i in range(31)]


def _parquet(config: str) -> str:
    return config.replace("output: {dir: ", "output: {format: parquet, dir: ")


def _children(pid: int) -> list[int]:
    """The live (not zombie) child processes of ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid and stat[0] != "Z":
                found.append(int(entry.name))
    return found


def _start_run(
    config: Path, url: str, stderr: IO[str], stdout: int, **popen: Any
) -> subprocess.Popen[str]:
    """``braze-export run CONFIG`` against ``url``, as a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", str(config), "--as-of", AS_OF],
        env=_env(url),
        cwd=ROOT,
        stdout=stdout,
        stderr=stderr,
        text=True,
        **popen,
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def test_the_encoder_process_gives_the_bytes_of_an_inline_encode(tmp_path: Path) -> None:
    """Fixed rows merged into an existing partition: the same rows, sha256 and bytes whether
    encoded inline or in the encoder process."""
    path = partition_path(tmp_path, DAY, "2024-04", "parquet")
    path.parent.mkdir(parents=True)
    path.write_bytes(writers._prepare("parquet", UTC, str(path), DAY, ROWS[:20])[2])
    job = partial(writers._prepare, "parquet", UTC, str(path), DAY, ROWS[10:])
    child = ChildProcess()
    try:
        (outcome,) = await child.run([job])
    finally:
        await child.aclose()
    assert outcome == job()
    assert outcome[0] == 31


async def test_a_failing_partition_fails_only_its_own_job(tmp_path: Path) -> None:
    """A foreign file in a batch: its job comes back as the error the inline path raises,
    the jobs around it as results."""
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    jobs = [
        partial(writers._prepare, "parquet", UTC, str(tmp_path / name), DAY, ROWS)
        for name in ("a.parquet", "bad.parquet", "b.parquet")
    ]
    child = ChildProcess()
    try:
        first, failed, last = await child.run(jobs)
    finally:
        await child.aclose()
    with pytest.raises(ExporterError) as inline:
        jobs[1]()
    assert isinstance(failed, ExporterError)
    assert str(failed) == str(inline.value)
    assert first == last == jobs[0]()


async def test_a_killed_encoder_process_loses_no_write_a_new_one_encodes_its_batch(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kill -9 of the encoder process while it holds a batch: the batch is encoded again by a
    new process, the write lands, and one warning line says so."""
    stuck = Series("seg-b", None, "day")
    fifo = partition_path(tmp_path, stuck, "2024-04", "parquet")
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # reading the partition blocks the process until it is killed
    writer = PartitionWriter(tmp_path, "parquet")
    try:
        await writer.write(DAY, _days("2024-04-01", [1]))
        stager = writer._stager
        assert stager is not None
        assert stager._child is not None
        first = stager._child.pid
        assert first is not None
        held = asyncio.ensure_future(writer.write(stuck, _days("2024-04-01", [2])))
        wchan = Path(f"/proc/{first}/wchan")
        for _ in range(12_000):  # until the process waits in open() for the FIFO's writer
            if wchan.read_text() in ("wait_for_partner", "fifo_open"):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail(f"the encoder never opened the FIFO ({wchan.read_text()})")
        fifo.unlink()  # the batch run again finds no partition there: a new file
        os.kill(first, signal.SIGKILL)
        (landed,) = await asyncio.wait_for(held, 120)
        assert pq.read_table(landed.path).column("sessions").to_pylist() == [2]
        assert stager._child is not None
        assert stager._child.pid not in (None, first)
    finally:
        await writer.aclose()
    assert not _alive(first)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"the encoder process (pid {first}) ended abruptly; its 1 partition(s) are encoded "
        "again by a new one"
    ]


async def test_a_batch_in_flight_when_the_process_dies_fails_and_never_hangs() -> None:
    """The process killed while it works on a batch: the batch fails with ChildDied."""
    child = ChildProcess()
    try:
        assert await child.run([partial(int, "1")]) == [1]
        pid = child.pid
        assert pid is not None
        working = asyncio.ensure_future(child.run([signal.pause]))  # blocks until killed
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(ChildDied, match="ended abruptly"):
            await asyncio.wait_for(working, 60)
        assert await child.run([partial(int, "2")]) == [2]
    finally:
        await child.aclose()


@pytest.mark.parametrize("executable", ["/nonexistent/python", "/bin/false"])
async def test_an_encoder_process_that_cannot_start_leaves_parquet_to_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, executable: str
) -> None:
    """No process (cannot exec, or exits at once): Parquet is encoded on threads, the same
    bytes, and the run goes on."""
    monkeypatch.setattr(writers, "ChildProcess", partial(ChildProcess, executable=executable))
    writer = PartitionWriter(tmp_path / "threads", "parquet")
    (item,) = await writer.write(DAY, _days("2024-04-01", [1, 2, 3]))
    await writer.aclose()
    monkeypatch.undo()
    reference = PartitionWriter(tmp_path / "process", "parquet")
    (expected,) = await reference.write(DAY, _days("2024-04-01", [1, 2, 3]))
    await reference.aclose()
    assert item.path.read_bytes() == expected.path.read_bytes()


async def test_a_child_that_dies_before_it_is_ready_is_unavailable() -> None:
    """A process that exits during start-up: ChildUnavailable, not a hang."""
    child = ChildProcess(executable="/bin/false")
    with pytest.raises(ChildUnavailable, match="did not start"):
        await asyncio.wait_for(child.run([partial(int, "1")]), 120)
    await child.aclose()


async def test_the_encoder_process_ignores_sigint_and_sigterm() -> None:
    """SIGINT and SIGTERM to the process (a Ctrl-C reaches the whole process group) leave
    it working: the parent decides when it ends."""
    child = ChildProcess()
    try:
        assert await child.run([partial(int, "1")]) == [1]
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        assert await child.run([partial(int, "2")]) == [2]
        assert child.pid == pid
    finally:
        await child.aclose()


async def test_the_encoder_process_holds_no_file_of_ours(tmp_path: Path) -> None:
    """Started while the directory lock is held, the process has only its standard streams
    and the pool's pipes open: never the lock's file, nor any other of ours."""
    lock = DirLock.acquire(tmp_path, layout="x", shard=None, command="run")
    child = ChildProcess()
    try:
        assert await child.run([partial(int, "1")]) == [1]
        fds = Path(f"/proc/{child.pid}/fd")
        targets = {int(fd.name): os.readlink(fd) for fd in fds.iterdir()}
    finally:
        await child.aclose()
        lock.release()
    beyond_stdio = [t for fd, t in targets.items() if fd > 2]
    assert beyond_stdio
    assert all(t.startswith(("pipe:", "socket:", "/dev/null")) for t in beyond_stdio), targets
    assert not any(str(tmp_path) in t for t in targets.values())


async def test_a_full_disk_fails_a_parquet_write_as_it_fails_any_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC writing the temp file (in the parent, as before): the same one-line WriteError."""

    def full(fd: int, chunks: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers, "_write_all", full)
    writer = PartitionWriter(tmp_path, "parquet")
    try:
        with pytest.raises(WriteError, match=r"cannot write .*: No space left on device$"):
            await writer.write(DAY, _days("2024-04-01", [1]))
    finally:
        await writer.aclose()
    assert list((tmp_path / WORK_DIR / "tmp").glob("*.part")) == []


@pytest.mark.slow
def test_kill_9_of_a_parquet_run_leaves_no_encoder_process_and_a_rerun_completes(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any
) -> None:
    """kill -9 of the run: its encoder process dies with it, the lock is free, a rerun
    completes and verify finds every file whole and recorded."""
    out = tmp_path / "out"
    config = write_config(_parquet(_config(out, segments=3)))
    # 20 answers (files for more than 10), then the run waits mid-way for the rest.
    with sandbox_server(limit=0, gate=asyncio.Event(), gate_after=20) as server:
        killed = _Exporter(config, server.url)
        wait_for(lambda: len(data_files(out)) >= 10, "the run to write some files")
        helpers = _children(killed.proc.pid)  # the encoder and multiprocessing's tracker
        assert helpers
        killed.proc.send_signal(signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
        wait_for(lambda: not any(map(_alive, helpers)), "the helper processes to end")
        assert killed.stderr == ""  # no warning from a helper cleaning up after it
        server.open_gate()
        rerun = _Exporter(config, server.url, "rerun.")
        assert rerun.wait(120) == 0, rerun.stderr
    assert main(["verify", str(out)]) == 0
    for path in data_files(out):
        pq.read_table(path)


@pytest.mark.slow
def test_ctrl_c_stops_a_parquet_run_with_130_and_everything_saved(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any
) -> None:
    """SIGINT to the whole process group, as a terminal's Ctrl-C: exit 130, no traceback,
    every file whole, the encoder process reaped; a rerun completes the rest."""
    out = tmp_path / "out"
    config = write_config(_parquet(_config(out)))
    err = tmp_path / "stderr"
    gate = asyncio.Event()  # 20 answers, then the run waits mid-way until the stop is seen
    with sandbox_server(limit=0, gate=gate, gate_after=20) as server, err.open("w") as stderr:
        proc = _start_run(config, server.url, stderr, subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: len(data_files(out)) >= 5, "the run to write some files")
        helpers = _children(proc.pid)
        assert helpers
        os.killpg(proc.pid, signal.SIGINT)
        wait_for(lambda: "then stopping" in err.read_text(), "the run to take the stop")
        server.open_gate()
        assert proc.wait(60) == 130
        wait_for(lambda: not any(map(_alive, helpers)), "the helper processes to end")
        rerun = _Exporter(config, server.url, "rerun.")
        assert rerun.wait(120) == 0, rerun.stderr
    text = err.read_text()
    assert "Traceback" not in text
    assert "leaked" not in text  # multiprocessing's resource tracker found nothing to clean
    assert "rerun the same command to resume" in text
    for path in data_files(out):
        pq.read_table(path)


@pytest.mark.slow
def test_a_parquet_run_as_pid_1_of_a_pid_namespace(tmp_path: Path) -> None:
    """As PID 1 (a container), the run's encoder process knows its parent is PID 1 and works."""
    prefix = _unshare()
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(_parquet(_config(out, segments=2, days=3)))
    started = time.monotonic()
    proc = _sandbox_run_as_pid_1(prefix, config, out)
    assert proc.returncode == 0, proc.stderr
    assert "encoded on threads" not in proc.stderr
    assert time.monotonic() - started < 60
    assert len(data_files(out)) > 0
    for path in data_files(out):
        pq.read_table(path)


def test_a_pyarrow_that_cannot_be_imported_stops_the_run_before_any_request(
    tmp_path: Path,
) -> None:
    """pyarrow installed but failing to import (a broken build, too little memory): exit 2
    before the first request, with the import's own error, not a failure of every series."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "pyarrow.py").write_text('raise ImportError("broken build")\n')
    out = tmp_path / "out"
    config = tmp_path / "c.yaml"
    config.write_text(_parquet(_config(out, segments=2, days=3)))
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "run", str(config), "--sandbox", "--out", str(out)],
        env={**_env("http://127.0.0.1:9"), "PYTHONPATH": f"{shadow}:{ROOT}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines()[-1] == (
        "error: output.format parquet needs pyarrow, which is installed but cannot be imported "
        "(ImportError: broken build); reinstall it (pip install --force-reinstall pyarrow), or "
        "give the run more memory"
    )
    assert "sandbox started" not in proc.stderr  # checked before any request
    assert not out.exists() or list(out.rglob("*")) == []  # nothing written: not even a lock


async def test_a_stopped_encoder_is_killed_after_its_timeout_and_a_new_one_answers() -> None:
    """An encoder that does not answer (SIGSTOP, a hang): its batch fails with ChildDied
    after the timeout, the process is killed, and the next batch gets a new one."""
    # A live encoder answers int("1") in milliseconds; 5 s leaves a busy machine room.
    child = ChildProcess(timeout_s=5.0)
    try:
        assert await child.run([partial(int, "1")]) == [1]
        pid = child.pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(ChildDied, match=r"did not answer within 5s and was killed"):
            await asyncio.wait_for(child.run([partial(int, "2")]), 60)
        wait_for(lambda: not _alive(pid), "the stopped encoder to be killed")
        assert await child.run([partial(int, "3")]) == [3]
        assert child.pid != pid
    finally:
        await child.aclose()


async def test_closing_does_not_wait_for_a_stopped_encoder_forever() -> None:
    """The run's end with the encoder stopped mid-batch: the close kills it after its
    timeout instead of hanging."""
    child = ChildProcess()
    assert await child.run([partial(int, "1")]) == [1]
    pid = child.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    held = asyncio.ensure_future(child.run([partial(int, "2")]))
    await asyncio.sleep(0)  # one turn of the loop: the batch is submitted
    # Without the close's own timeout this would wait for the stopped child forever.
    await asyncio.wait_for(child.aclose(timeout_s=1.0), 60)
    with pytest.raises(ChildDied):
        await asyncio.wait_for(held, 60)
    wait_for(lambda: not _alive(pid), "the stopped encoder to be killed")


@pytest.mark.slow
def test_ctrl_c_with_the_encoder_stopped_still_ends_the_run_with_130(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any
) -> None:
    """The encoder stopped (SIGSTOP) mid-run, then Ctrl-C: the run ends with 130 within the
    grace period plus the close's timeout, prints its summary and no traceback."""
    out = tmp_path / "out"
    config = write_config(_parquet(_config(out)))
    err = tmp_path / "stderr"
    # 20 answers, then the run waits mid-way: it cannot finish before the signal.
    gate = asyncio.Event()
    with sandbox_server(limit=0, gate=gate, gate_after=20) as server, err.open("w") as stderr:
        proc = _start_run(config, server.url, stderr, subprocess.PIPE)
        wait_for(lambda: len(data_files(out)) >= 5, "the run to write some files")
        encoders = [
            pid
            for pid in _children(proc.pid)
            if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()
        ]
        assert len(encoders) == 1
        os.kill(encoders[0], signal.SIGSTOP)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=120)
        assert proc.returncode == 130
        # The grace (10 s) and the close's timeout (10 s), not the batch's timeout (60 s).
        assert time.monotonic() - started < BATCH_TIMEOUT_S
    assert "series:" in stdout
    assert "Traceback" not in err.read_text()
    wait_for(lambda: not _alive(encoders[0]), "the stopped encoder to be killed")
