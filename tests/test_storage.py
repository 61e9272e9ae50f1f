"""One output directory, many processes: the directory lock, temp files, pid namespaces."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from exporter.api import output_dir
from exporter.cli import main
from exporter.config import load_config
from exporter.errors import DirectoryBusy, ExporterError, Unreachable
from exporter.storage import RUNS_DIR, WORK_DIR, DirLock, Journal, relative_path, unwritable
from tests.conftest import data_files, snapshot, wait_for
from tests.test_operate import CONFIG
from tests.test_reliability import AS_OF, ROOT, _config, _env, _Exporter

LOCKS = Path(WORK_DIR) / "locks"


def _holders(out: Path) -> int:
    return len(list((out / LOCKS).glob("*.json")))


def _refused(config: Path, url: str, *extra: str) -> str:
    """Run and expect the refusal: exit 5 at once, nothing written; returns stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "run", str(config), "--as-of", AS_OF, *extra],
        env=_env(url),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 5, proc.stderr
    assert "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


def test_lock_holder_has_no_pid_in_its_name_and_removes_only_dead_temp_files(
    tmp_path: Path,
) -> None:
    """Temp files of a live holder survive another holder's start; those of dead or
    unknown holders (an old ``{pid}-{n}.part`` too) are removed."""
    tmp = tmp_path / WORK_DIR / "tmp"
    tmp.mkdir(parents=True)
    first = DirLock.acquire(tmp_path, layout="L", shard=(1, 2), command="one")
    try:
        (tmp / f"{first.token}-0.part").write_text("in flight")
        (tmp / "0123456789abcdef-3.part").write_text("dead holder")
        (tmp / "1-0.part").write_text("an old version's pid-named file")
        second = DirLock.acquire(tmp_path, layout="L", shard=(2, 2), command="two")
        second.release()
    finally:
        first.release()
    assert str(os.getpid()) not in first.token
    assert second.stale_temp_files == 2
    assert [p.name for p in tmp.iterdir()] == [f"{first.token}-0.part"]
    assert list((tmp_path / LOCKS).glob("*.json")) == []


@pytest.mark.parametrize(
    ("held", "asked"),
    [
        (None, None),  # two identical runs
        (None, (1, 2)),  # unsharded + sharded
        ((1, 2), (1, 2)),  # the same shard twice
        ((1, 2), (2, 3)),  # another N
    ],
)
def test_only_other_shards_of_one_layout_may_share(
    tmp_path: Path, held: tuple[int, int] | None, asked: tuple[int, int] | None
) -> None:
    """Every pair but shards K/N of one layout with different K is refused; a different
    layout is refused even for those."""
    holder = DirLock.acquire(tmp_path, layout="L", shard=held, command="braze-export run a.yaml")
    try:
        with pytest.raises(DirectoryBusy, match=r"pid \d+ on .*: braze-export run a\.yaml"):
            DirLock.acquire(tmp_path, layout="L", shard=asked, command="b")
        with pytest.raises(DirectoryBusy):
            DirLock.acquire(tmp_path, layout="other", shard=(2, 2), command="c")
    finally:
        holder.release()


def test_a_directory_that_cannot_hold_a_lock_is_one_line(tmp_path: Path) -> None:
    """An OSError while registering (here: the locks path is a file) is an ExporterError."""
    (tmp_path / WORK_DIR).mkdir()
    (tmp_path / LOCKS).write_text("not a directory")
    with pytest.raises(ExporterError, match="cannot register this run"):
        DirLock.acquire(tmp_path, layout="L", shard=None, command="c")


@pytest.mark.parametrize(
    ("path", "root"),
    [
        ("/o/sessions/day/a.jsonl", "/o"),
        ("/o/sessions/a.jsonl", "/o/"),
        ("/o/x/../a.jsonl", "/o"),
        ("/o/x//a.jsonl", "/o"),
        ("/o/./a.jsonl", "/o"),
        ("/o/x/", "/o"),
        ("/ox/a.jsonl", "/o"),
        ("/o", "/o"),
        ("sessions/a.jsonl", "."),
        ("o/sessions/a.jsonl", "o"),
        ("/elsewhere/a.jsonl", "/o"),
    ],
)
def test_relative_path_is_relpath(path: str, root: str) -> None:
    """relative_path(path, root) is os.path.relpath(path, root), odd spellings included."""
    assert relative_path(Path(path), Path(root)) == os.path.relpath(Path(path), Path(root))
    assert relative_path(path, root) == os.path.relpath(path, root)


@pytest.mark.slow
def test_concurrent_runs_of_different_layouts_one_is_refused(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any
) -> None:
    """Config A running, config B --shard 1/1 into the same directory: B exits 5 at once and
    names A's pid, host, start time and command; A completes and every file verifies."""
    out = tmp_path / "out"
    config_a = write_config(_config(out, segments=3), "a.yaml")
    config_b = write_config(_config(out, segments=3, days=20), "b.yaml")
    with sandbox_server(limit=0, gate=asyncio.Event()) as server:  # A waits for its answers
        running = _Exporter(config_a, server.url)
        wait_for(lambda: _holders(out) == 1, "run A to hold the directory")
        line = _refused(config_b, server.url, "--shard", "1/1")
        assert running.proc.poll() is None, running.stderr
        server.open_gate()
        assert running.wait(120) == 0, running.stderr
    assert f"pid {running.proc.pid} on {socket.gethostname()}, started 20" in line
    assert f"braze-export run {config_a} --as-of {AS_OF}" in line
    assert len(list((out / "_runs").glob("*.json"))) == 1  # B wrote nothing
    assert main(["verify", str(out)]) == 0


@pytest.mark.slow
def test_parallel_shards_complete_while_other_runs_are_refused(
    tmp_path: Path, write_config: Callable[..., Path], sandbox_server: Any
) -> None:
    """Shards 1/2 and 2/2 run side by side and together write every row of an unsharded
    run; meanwhile an unsharded run and a second 2/2 of the same config are refused."""
    out, reference = tmp_path / "out", tmp_path / "reference"
    config = write_config(_config(out, segments=3))
    with sandbox_server(limit=0, gate=asyncio.Event()) as server:  # shards wait for answers
        shards = [_Exporter(config, server.url, f"{k}.", "--shard", f"{k}/2") for k in (1, 2)]
        wait_for(lambda: _holders(out) == 2, "both shards to hold the directory")
        _refused(config, server.url)
        _refused(config, server.url, "--shard", "2/2")
        for shard in shards:
            assert shard.proc.poll() is None, shard.stderr
        server.open_gate()
        for shard in shards:
            assert shard.wait(120) == 0, shard.stderr
        whole = _Exporter(config, server.url, "ref.", "--out", str(reference))
        assert whole.wait(120) == 0, whole.stderr
    assert snapshot(out) == snapshot(reference)
    assert main(["verify", str(out)]) == 0


@pytest.mark.slow
def test_a_killed_holder_blocks_nobody_and_verify_vouches_for_its_files(
    tmp_path: Path,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """kill -9 leaves a holder record; the next run sees its flock is gone, takes over and
    completes; verify then finds every data file ok, the killed run's included."""
    out = tmp_path / "out"
    config = write_config(_config(out, segments=3))
    # 20 answers (files for more than 10), then the run waits mid-way for the rest.
    with sandbox_server(limit=0, gate=asyncio.Event(), gate_after=20) as server:
        killed = _Exporter(config, server.url)
        wait_for(lambda: len(data_files(out)) >= 10, "the run to write some files")
        killed.proc.send_signal(signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
        assert _holders(out) == 1  # its record stays behind: only its flock died with it
        server.open_gate()
        rerun = _Exporter(config, server.url, "rerun.")
        assert rerun.wait(120) == 0, rerun.stderr
    assert _holders(out) == 0
    assert list((out / WORK_DIR / "tmp").glob("*.part")) == []
    assert main(["verify", str(out)]) == 0
    files = len(data_files(out))
    assert f"{files} file(s) ok, 0 changed, 0 missing, 0 unknown" in capsys.readouterr().out


def _unshare() -> list[str]:
    """A command prefix that runs as PID 1 of a new pid namespace, or skip."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    for prefix in (
        ["unshare", "--pid", "--fork", "--mount-proc"],
        ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc"],
    ):
        probe = subprocess.run([*prefix, "sh", "-c", "echo $$"], capture_output=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == b"1":
            return prefix
    pytest.skip("pid namespaces are not permitted here")


def _sandbox_run_as_pid_1(
    prefix: list[str], config: Path, out: Path
) -> subprocess.CompletedProcess[str]:
    """``run --sandbox`` of ``config`` into ``out`` as PID 1 behind ``_unshare()``'s prefix."""
    command = (
        f"exec {sys.executable} -m exporter run {config} --sandbox --out {out} --as-of {AS_OF}"
    )
    return subprocess.run(
        [*prefix, "sh", "-c", command],
        env=_env("http://127.0.0.1:9"),  # unused: --sandbox
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_pid_1_in_a_container_after_a_killed_pid_1(tmp_path: Path) -> None:
    """A run that is PID 1 (as in every container) writes although a killed PID 1 left
    ``1-0.part`` behind, and removes that file."""
    prefix = _unshare()
    out = tmp_path / "out"
    (out / WORK_DIR / "tmp").mkdir(parents=True)
    (out / WORK_DIR / "tmp" / "1-0.part").write_text("left by a killed container")
    config = tmp_path / "c.yaml"
    config.write_text(_config(out, segments=2, days=3))
    proc = _sandbox_run_as_pid_1(prefix, config, out)
    assert proc.returncode == 0, proc.stderr
    assert len(data_files(out)) > 0
    assert list((out / WORK_DIR / "tmp").iterdir()) == []


@pytest.mark.parametrize("container", [True, False])
def test_a_permission_error_names_the_directory_and_the_fix(
    tmp_path: Path, container: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory that cannot be created: the parent that refused it, its owner, our uid, and
    the fix; --user only in a container, where it is the usual one."""
    monkeypatch.setattr("exporter.storage._in_container", lambda: container)
    denied = PermissionError(13, "Permission denied", str(tmp_path / "a" / "b"))
    line = unwritable(tmp_path / "a", denied, "cannot register this run")
    assert line.startswith(
        f"{tmp_path / 'a'}: cannot register this run (Permission denied): {tmp_path} (owned by "
        f"uid {tmp_path.stat().st_uid}) is not writable by uid {os.geteuid()}; "
    )
    assert ('--user "$(id -u):$(id -g)"' in line) is container
    assert line.endswith(f"give uid {os.geteuid()} the directory (chown) or use another one")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("code", "says"),
    [
        (
            errno.EROFS,
            "it is on a read-only file system; mount it read-write or choose another --out",
        ),
        (
            errno.ENOSPC,
            "the file system is full (or the quota reached); free space or choose another --out",
        ),
        (
            errno.EDQUOT,
            "the file system is full (or the quota reached); free space or choose another --out",
        ),
    ],
    ids=["erofs", "enospc", "edquot"],
)
def test_a_write_error_gives_the_cause_and_fix_of_its_errno(
    tmp_path: Path, code: int, says: str
) -> None:
    """The cause comes from errno, not the exception's class: a read-only or full file
    system is never explained as a permission problem."""
    exc = OSError(code, os.strerror(code), str(tmp_path / "a"))
    line = unwritable(tmp_path / "a", exc, "cannot register this run")
    assert line == f"{tmp_path / 'a'}: cannot register this run ({os.strerror(code)}): {says}"


def test_an_output_directory_to_create_on_a_read_only_mount_is_exit_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_config: Callable[..., Path]
) -> None:
    """Refused before anything is written, with the read-only cause and the exit status of
    an output that cannot be written (4), as when the directory exists."""
    real_statvfs = os.statvfs

    def read_only(path: Any) -> Any:
        real = real_statvfs(path)
        return SimpleNamespace(f_flag=real.f_flag | os.ST_RDONLY)

    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    monkeypatch.setattr(os, "statvfs", read_only)
    config = load_config(write_config(CONFIG.format(out=tmp_path / "new")), env={})
    with pytest.raises(Unreachable, match=r"\(Read-only file system\): it is on a read-only"):
        output_dir(config, None)
    assert not (tmp_path / "new").exists()


def test_a_journal_on_a_full_disk_is_exit_4_and_one_in_the_way_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses writes (here: full) is the output that cannot be written
    (Unreachable, exit 4) with its cause; a file where _runs should be is not (exit 1)."""
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / RUNS_DIR).write_text("a file where _runs should be")
    with pytest.raises(ExporterError) as in_the_way:
        Journal(tmp_path / "blocked", "r1", 0)
    assert not isinstance(in_the_way.value, Unreachable)

    def full(*args: Any, **kwargs: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(Unreachable, match=r"journal \(No space left on device\): the file sys"):
        Journal(tmp_path, "r1", 0)
