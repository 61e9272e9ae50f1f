"""No traceback ever reaches a user: every failure is one clear line and a documented status.

These run the real CLI in subprocesses (as a user or a CI job would), with hostile input for
every subcommand, a reader that closes the pipe early, a busy port, a full disk and signals.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.storage import _in_container
from tests.conftest import KEY, wait_for
from tests.denied import denied_dir, mounted, read_only_dir

ROOT = Path(__file__).parent.parent
AS_OF = "2024-07-01"
GOOD = """\
version: 1
output: {{dir: {out}}}
exports:
  - name: nightly
    segment_ids: [{segments}]
    app_ids: [null, app-1]
    units: [day, hour]
    window: {{days: {days}}}
"""


# Seconds a command may take before it counts as hung (never reached unless it hangs).
HANG = 600


def _good(out: Path, segments: int = 2, days: int = 3) -> str:
    return GOOD.format(out=out, segments=", ".join(f"s{i}" for i in range(segments)), days=days)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", *args]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port something else already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _hostile_cases(tmp: Path, port: int) -> dict[str, tuple[list[str], dict[str, str], set[int]]]:
    """name -> (argv, extra environment, allowed exit statuses)."""
    good = tmp / "good.yaml"
    good.write_text(_good(tmp / "out"))
    files = {
        "binary.yaml": b"\xff\xfe\x00\x01garbage",
        "dup.yaml": b"version: 1\nexports: []\nexports: []\n",
        "bomb.yaml": b"a: &a [x, x, x, x, x, x, x, x]\n"
        + b"".join(
            f"{c}: &{c} [{', '.join(['*' + p] * 8)}]\n".encode()
            for p, c in zip("abcdefg", "bcdefgh", strict=True)
        )
        + b"version: 1\n",
        "century.yaml": _good(tmp / "c", segments=1, days=36600).encode(),
        "file-out.yaml": _good(tmp / "afile").encode(),
        "old.yaml": _good(tmp / "o")
        .replace("{days: 3}", "{start: 0001-01-01, end: 0001-01-02}")
        .encode(),
        "list.yaml": b"- 1\n- 2\n",
    }
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    (tmp / "afile").write_text("x")
    (tmp / "key-dir").mkdir()
    runs_blocked = tmp / "runs-blocked"
    runs_blocked.mkdir()
    (runs_blocked / "_runs").write_text("a file where the manifests go")
    bad_manifests = tmp / "bad-manifests"
    (bad_manifests / "_runs").mkdir(parents=True)
    (bad_manifests / "_runs" / "x.json").write_text("{not json")
    key = {"BRAZE_API_KEY": KEY}
    usage, failed = {2}, {1}
    cases: dict[str, tuple[list[str], dict[str, str], set[int]]] = {
        "no command": ([], {}, usage),
        "unknown command": (["frobnicate"], {}, usage),
        "bad log level": (["--log-level", "LOUD", "validate", str(good)], {}, usage),
        "bad log format after command": (["validate", str(good), "--log-format", "xml"], {}, usage),
    }
    for command in ("validate", "plan", "run"):
        extra = ["--sandbox"] if command == "run" else []
        for name in files:
            if name == "file-out.yaml" and command in ("plan", "run"):
                # plan writes nothing, and run --sandbox writes to ./sandbox-out: an output.dir
                # that is a file does not matter to either.
                continue
            if name == "century.yaml" and command != "validate":
                continue  # a valid plan, only big: validate must count it without planning
            expect = {0} if name == "century.yaml" else usage
            cases[f"{command} {name}"] = ([command, str(tmp / name), *extra], key, expect)
        cases[f"{command} missing"] = ([command, str(tmp / "missing.yaml")], key, usage)
        cases[f"{command} directory"] = ([command, str(tmp)], key, usage)
    for args in (["--as-of", "0001-01-02"], ["--as-of", "9999-12-31"], ["--shard", "5/4"]):
        cases[f"plan {args}"] = (["plan", str(good), *args], {}, usage)
    for value in ("-1", "0", "nan"):
        cases[f"run interval {value}"] = (
            ["run", str(good), "--sandbox", "--progress-interval", value],
            {},
            usage,
        )
    cases["run no key"] = (["run", str(good)], {}, usage)
    cases["run empty key"] = (["run", str(good)], {"BRAZE_API_KEY": ""}, usage)
    cases["run key file is a dir"] = (
        ["run", str(good)],
        {"BRAZE_API_KEY_FILE": str(tmp / "key-dir")},
        usage,
    )
    cases["run key file missing"] = (
        ["run", str(good)],
        {"BRAZE_API_KEY_FILE": str(tmp / "nope")},
        usage,
    )
    cases["run out is a file"] = (
        ["run", str(good), "--sandbox", "--out", str(tmp / "afile")],
        {},
        usage,
    )
    cases["run out below a file"] = (
        ["run", str(good), "--sandbox", "--out", str(tmp / "afile" / "sub")],
        {},
        usage,
    )
    cases["run manifests dir is a file"] = (
        ["run", str(good), "--sandbox", "--as-of", AS_OF, "--out", str(runs_blocked)],
        {},
        failed,
    )
    cases["run bad endpoint env"] = (
        ["run", str(good)],
        {**key, "BRAZE_REST_ENDPOINT": "ftp://x"},
        usage,
    )
    cases["verify missing"] = (["verify", str(tmp / "nowhere")], {}, {1, 2})
    cases["verify a file"] = (["verify", str(good)], {}, {1, 2})
    cases["verify corrupt manifest"] = (["verify", str(bad_manifests)], {}, {1, 2})
    cases["sandbox busy port"] = (["sandbox", "--port", str(port)], {}, usage)
    cases["sandbox foreign address"] = (
        ["sandbox", "--host", "192.0.2.1", "--port", "0"],
        {},
        usage,
    )
    for args in (["--window", "0"], ["--limit", "-1"], ["--fault-rate", "2"], ["--port", "x"]):
        cases[f"sandbox {args}"] = (["sandbox", *args], {}, usage)
    return cases


@pytest.mark.slow
def test_every_subcommand_with_hostile_input_fails_in_one_line(
    tmp_path: Path, busy_port: int
) -> None:
    """Hostile input to every subcommand: a documented status, no traceback, error lines only."""
    cases = _hostile_cases(tmp_path, busy_port)

    def run(name: str) -> tuple[int, str]:
        argv, env, _ = cases[name]
        proc = subprocess.run(
            _cli(*argv),
            env=_env(**env),
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=HANG,  # a hang guard, not a speed bound: a few run at a time
        )
        return proc.returncode, proc.stderr.decode(errors="replace")

    # As many at a time as there are cores: 40 interpreters started at once on a busy
    # 2-core machine once took longer than any per-process bound meant for a hang.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        outcomes = dict(zip(cases, pool.map(run, cases), strict=True))
    problems = []
    for name, (code, text) in outcomes.items():
        allowed = cases[name][2]
        if code not in allowed:
            problems.append(f"{name}: exit {code}, expected {allowed}: {text!r}")
        if "Traceback" in text or "Exception ignored" in text:
            problems.append(f"{name}: traceback: {text}")
        elif code == 2 and not (
            text.startswith("error: ")
            and all(line.startswith("error: ") for line in text.splitlines())
        ):
            problems.append(f"{name}: not error lines only: {text!r}")
    assert not problems, "\n".join(problems)
    assert len(cases) > 40


@pytest.mark.parametrize("command", ["plan", "validate"])
def test_a_reader_that_closes_the_pipe_early_is_no_error(tmp_path: Path, command: str) -> None:
    """`plan --json | head`: stdout closed early ends quietly (exit 1 documented), no traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(_good(tmp_path / "out", segments=50, days=400))
    args = [command, str(config), *(["--json"] if command == "plan" else [])]
    proc = subprocess.Popen(_cli(*args), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.close()  # like `head` that has read enough
    _, err = proc.communicate(timeout=120)
    assert err == b""
    assert proc.returncode == 1


def test_a_run_whose_reader_went_away_keeps_its_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run's summary to a closed stdout: the run's status, not a traceback."""
    config = tmp_path / "c.yaml"
    config.write_text(_good(tmp_path / "out"))

    def closed(*_: object, **__: object) -> None:
        raise BrokenPipeError(errno.EPIPE, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed)
    assert main(["run", str(config), "--sandbox", "--as-of", AS_OF]) == 0


def test_sandbox_on_a_busy_port_is_one_line(
    busy_port: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """sandbox --port N with N taken: exit 2 and a line saying so, not an OSError traceback."""
    assert main(["sandbox", "--port", str(busy_port)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: sandbox: cannot listen on 127.0.0.1:{busy_port}: Address already in use; "
        "choose another --port or --host\n"
    )


def test_a_manifest_that_cannot_be_written_still_gives_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ENOSPC writing the manifest: the summary prints, stderr says why, exit 1 (incomplete)."""
    config = tmp_path / "c.yaml"
    config.write_text(_good(tmp_path / "out"))

    def full(*_: object, **__: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("exporter.runner.write_manifest", full)
    assert main(["run", str(config), "--sandbox", "--as-of", AS_OF]) == 1
    out, err = capsys.readouterr()
    assert "series: 8 complete, 0 incomplete, 0 failed" in out
    assert "manifest: NOT written: No space left on device" in out
    assert "error: run manifest " in err
    assert "not written: No space left on device" in err


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, where mounting is allowed (root); skipped elsewhere."""
    disk = tmp_path / "disk"
    disk.mkdir()
    with mounted(disk, "-t", "tmpfs", "-o", "size=1m", "tmpfs"):
        yield disk


def _fill(disk: Path) -> None:
    """Take every free byte of ``disk``."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError, match="No space left"):  # noqa: PT012 - the loop is what raises
            while True:
                os.write(fd, b"\0" * 4096)
    finally:
        os.close(fd)


@pytest.mark.slow
def test_a_full_disk_fails_the_series_and_still_prints_the_summary(tiny_disk: Path) -> None:
    """On a really full disk (tmpfs) a run cannot even register in the directory's lock: one
    line saying so, exit 4 (nothing can work), no traceback (a disk that fills during the run
    is the in-process manifest test above)."""
    out = tiny_disk / "out"
    config = tiny_disk.parent / "c.yaml"
    config.write_text(_good(out))
    run = _cli("run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF)
    first = subprocess.run(run, env=_env(), capture_output=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr.decode()
    _fill(tiny_disk)
    again = subprocess.run(
        [*run, "--fresh"], env=_env(), capture_output=True, timeout=120, check=False
    )
    err = again.stderr.decode()
    assert "Traceback" not in err
    assert again.returncode == 4
    assert (
        err.splitlines()[-1] == f"error: {out}: cannot register this run (No space left on "
        "device): the file system is full (or the quota reached); free space or choose "
        "another --out"
    )


class _Exporter:
    """A run against a server that accepts connections and never answers."""

    def __init__(self, tmp: Path, port: int) -> None:
        config = tmp / "c.yaml"
        config.write_text(_good(tmp / "out") + "braze: {timeout_s: 120}\n")
        self.err_path = tmp / "stderr"
        with self.err_path.open("w") as err:
            self.proc = subprocess.Popen(
                _cli("run", str(config), "--as-of", AS_OF),
                env=_env(BRAZE_API_KEY=KEY, BRAZE_REST_ENDPOINT=f"http://127.0.0.1:{port}"),
                stdout=subprocess.PIPE,
                stderr=err,
            )

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (signal.SIGINT, signal.SIGINT, 130),
        (signal.SIGTERM, signal.SIGTERM, 143),
        (signal.SIGINT, signal.SIGTERM, 130),
    ],
)
def test_a_second_signal_stops_at_once(tmp_path: Path, first: int, second: int, code: int) -> None:
    """A second Ctrl-C or SIGTERM during the 10 s grace period stops the run at once, still
    with its summary and the first signal's status."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.settimeout(120)  # the exporter's start-up on a busy machine
        exporter = _Exporter(tmp_path, server.getsockname()[1])
        held, _ = server.accept()  # a request is in flight: it will hang until cancelled
        try:
            exporter.proc.send_signal(first)
            wait_for(lambda: "then stopping" in exporter.stderr, "the run to take the stop")
            exporter.proc.send_signal(second)
            out, _ = exporter.proc.communicate(timeout=120)
        finally:
            held.close()
    assert exporter.proc.returncode == code
    err = exporter.stderr
    # Waiting out the grace would end in the pipeline's "cancelling N request(s)" line.
    assert "cancelling" not in err, "the grace period was waited out"
    assert "again: stopping now" in err
    assert "Traceback" not in err
    assert "rerun the same command to resume" in err
    assert b"series: " in out


def test_too_little_memory_to_start_is_one_line_and_exit_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A tester under ulimit -v 60 MB got a MemoryError traceback while the CLI imported its
    libraries: now one line and exit 4."""
    import builtins
    import sys

    from exporter import entry

    real_import = builtins.__import__

    def starved(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "exporter.cli":
            raise MemoryError
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "exporter.cli")
    monkeypatch.setattr(builtins, "__import__", starved)
    assert entry.main() == 4
    assert capsys.readouterr().err == (
        "error: out of memory while starting: give braze-export more memory\n"
    )


def _refused_output(config: Path, out: Path, prefix: Sequence[str] = ()) -> str:
    """Run a sandbox export into ``out``, expect exit 4 and no traceback; its last line."""
    config.write_text(_good(out))
    run = _cli("run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF)
    done = subprocess.run([*prefix, *run], env=_env(), capture_output=True, timeout=60, check=False)
    err = done.stderr.decode()
    assert done.returncode == 4, err
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    ("new", "doing"),
    [("", "cannot register this run"), ("new", "cannot create it")],
    ids=["existing", "to-create"],
)
def test_an_output_directory_the_user_cannot_write_names_it_and_the_fix(
    tmp_path: Path, new: str, doing: str
) -> None:
    """As with a bind mount owned by another uid in a container: exit 4 whether --out exists
    or must be created in it, one line naming the directory, its owner, the uid that cannot
    write it, and the fix (in a container: --user)."""
    config = tmp_path / "c.yaml"
    with denied_dir(tmp_path) as denied:
        out = denied.dir / new if new else denied.dir
        line = _refused_output(config, out, denied.prefix)
        owner = denied.dir.stat().st_uid
    where = "--out: " if new else ""
    assert line.startswith(
        f"error: {where}{out}: {doing} (Permission denied): {denied.dir} "
        f"(owned by uid {owner}) is not writable by uid {os.geteuid()}; "
    )
    assert ('--user "$(id -u):$(id -g)"' in line) is _in_container()


@pytest.mark.parametrize(
    ("new", "doing"),
    [("", "cannot register this run"), ("new/deeper", "cannot create it")],
    ids=["existing", "to-create"],
)
def test_an_output_directory_on_a_read_only_file_system_says_so(
    tmp_path: Path, new: str, doing: str
) -> None:
    """--out on a read-only mount (a container's ``:ro`` volume): exit 4 whether it exists or
    must be created, one line that names the read-only file system and its fix, never a
    permission or --user hint."""
    config = tmp_path / "c.yaml"
    with read_only_dir(tmp_path) as ro:
        out = ro / new if new else ro
        line = _refused_output(config, out)
    where = "--out: " if new else ""
    assert line == (
        f"error: {where}{out}: {doing} (Read-only file system): it is on a read-only file "
        "system; mount it read-write or choose another --out"
    )


@pytest.mark.parametrize(
    ("command", "where", "says", "never"),
    [
        # run and plan load their config through exporter.api, shared with exporter.run()
        ("run", "api.load_config", "the periods completed so far are saved", "nothing was written"),
        ("plan", "api.load_config", "nothing was written", "saved"),
        ("validate", "cli.load_config", "nothing was written", "saved"),
        ("doctor", "cli.load_config", "nothing was written", "saved"),
        ("verify", "cli.verify", "nothing was written", "saved"),
    ],
)
def test_out_of_memory_advice_fits_the_command(
    command: str,
    where: str,
    says: str,
    never: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Only a run says its completed periods are saved; the others say nothing was written."""

    def starved(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(f"exporter.{where}", starved)
    config = tmp_path / "c.yaml"
    config.write_text(_good(tmp_path / "out"))
    target = str(tmp_path) if command == "verify" else str(config)
    assert main([command, target]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: out of memory: ")
    assert says in line
    assert never not in line
    if command in ("run", "plan"):
        assert "--shard K/N" in line
