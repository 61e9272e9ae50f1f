"""Faults found by trying to break the operations features: each kind stays fixed."""

from __future__ import annotations

import errno
import importlib.abc
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter import entry
from exporter.cli import main
from exporter.manifest import verify
from exporter.state import _unusable
from tests.conftest import Cli

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
timezone: {tz}
output: {{dir: {out}}}
exports:
  - name: e
    segment_ids: [seg-a, seg-b]
    units: [day]
    window: {{start: 2024-01-01, end: 2024-01-31}}
"""


def _config(
    write_config: Callable[..., Path], out: Path, tz: str = "UTC", name: str = "c.yaml"
) -> Path:
    return write_config(CONFIG.format(out=out, tz=tz), name)


def test_a_real_run_never_merges_into_sandbox_rows(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """run --sandbox --out D, then a real run into D: refused (exit 2), D unchanged."""
    out = tmp_path / "out"
    config = _config(write_config, out)
    assert cli("run", config, "--sandbox", "--out", out, "--as-of", AS_OF).code == 0
    before = {p: p.read_bytes() for p in out.rglob("*.jsonl")}
    ran, _ = cli.against_sandbox("run", config, "--as-of", AS_OF)
    assert ran.code == 2
    err = ran.err
    assert f"error: {out} already holds jsonl rows from the sandbox" in err
    assert {p: p.read_bytes() for p in out.rglob("*.jsonl")} == before


def test_days_cut_in_another_zone_are_never_merged(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The same directory with another timezone: refused, since its day files would mix."""
    out = tmp_path / "out"
    utc = _config(write_config, out)
    assert main(["run", str(utc), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    berlin = _config(write_config, out, "Europe/Berlin", "berlin.yaml")
    capsys.readouterr()
    assert main(["run", str(berlin), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 2
    assert "already holds jsonl days cut in UTC" in capsys.readouterr().err
    # Another format writes other files: that may share the directory.
    csv = write_config(
        CONFIG.format(out=out, tz="Europe/Berlin").replace(
            "output: {dir: " + str(out) + "}", "output: {dir: " + str(out) + ", format: csv}"
        ),
        "csv.yaml",
    )
    assert main(["run", str(csv), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0


def test_a_run_without_a_manifest_keeps_its_journal(
    tmp_path: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Manifest write fails (disk full): the journal stays, so verify vouches for the files."""
    out = tmp_path / "out"

    def full(*_: object, **__: object) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("exporter.runner.write_manifest", full)
    config = _config(write_config, out)
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 1
    report = verify(out)
    assert (report.ok, report.unknown, report.journals) == (_files(out), [], 1)


def _files(out: Path) -> int:
    return len(list((out / "sessions").rglob("*.jsonl")))


def test_verify_reports_an_unreadable_manifest_and_checks_the_rest(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign or damaged file in _runs/ is named; the other files are still checked."""
    out = tmp_path / "out"
    config = _config(write_config, out)
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    (out / "_runs" / "foreign.json").write_text('{"sequence": 1e999, "run_id": "x", "files": []}')
    (out / "_runs" / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "unreadable: _runs/deep.json" in printed
    assert "unreadable: _runs/foreign.json" in printed
    assert f"{_files(out)} file(s) ok" in printed


def test_verify_expands_home(
    tmp_path: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify '~/x' finds what run --out '~/x' wrote."""
    monkeypatch.setenv("HOME", str(tmp_path))
    config = _config(write_config, tmp_path / "unused")
    assert main(["run", str(config), "--sandbox", "--out", "~/x", "--as-of", AS_OF]) == 0
    assert main(["verify", "~/x"]) == 0


@pytest.mark.parametrize(
    ("command", "said"),
    [
        (["run", "--out", ""], "error: --out: must not be empty (leave it out to use output.dir)"),
        (
            ["run", "--work-dir", ""],  # was taken as "." (Path("")): BREAK18b leftover
            "error: --work-dir: must not be empty (leave it out to use a directory under $TMPDIR)",
        ),
        (["verify", ""], "error: verify: DIR must not be empty"),
    ],
)
def test_an_empty_path_argument_is_a_usage_error(
    command: list[str],
    said: str,
    write_config: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--out '', --work-dir '' and verify '' are mistakes (an unset variable), not 'the
    default'."""
    config = _config(write_config, tmp_path / "o")
    args = [command[0], str(config), *command[1:]] if command[0] == "run" else command
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == said


def test_a_relative_or_empty_home_is_not_used_for_tilde(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """HOME='' would turn ~/x into /x: refused instead."""
    monkeypatch.setenv("HOME", "")
    config = _config(write_config, tmp_path / "o")
    assert main(["run", str(config), "--sandbox", "--out", "~/x"]) == 2
    assert "HOME is '', not an absolute path" in capsys.readouterr().err


def test_a_full_disk_is_not_called_a_damaged_state() -> None:
    """Only a corrupt file gets 'delete it'; a full disk gets 'free disk space'."""
    full = str(_unusable(Path("s"), sqlite3.OperationalError("database or disk is full")))
    assert "free disk space" in full
    assert "Delete" not in full
    corrupt = str(_unusable(Path("s"), sqlite3.DatabaseError("file is not a database")))
    assert "Delete it to go on" in corrupt


@pytest.mark.slow
def test_output_to_a_full_device_or_a_closed_stdout_is_one_line(tmp_path: Path) -> None:
    """`plan --json > /dev/full` and a closed stdout: exit 1 or quiet, never a traceback; a
    run whose stdout is full keeps its status (0, as its manifest says), naming stdout."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(out=tmp_path / "o", tz="UTC"))
    cli = [sys.executable, "-m", "exporter", "plan", str(config), "--json", "--as-of", AS_OF]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(cli, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr == "error: cannot write to stdout: No space left on device\n"
    run = [
        *cli[:3],
        "run",
        str(config),
        "--sandbox",
        "--out",
        str(tmp_path / "o"),
        "--as-of",
        AS_OF,
    ]
    with open("/dev/full", "w") as full:
        proc = subprocess.run(run, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 0  # the run is complete: its status is the manifest's
    assert "error: cannot write to stdout: No space left on device" in proc.stderr
    (manifest,) = (tmp_path / "o" / "_runs").glob("*.json")
    assert json.loads(manifest.read_text())["exit_code"] == 0
    closed = subprocess.run(
        ["/bin/sh", "-c", " ".join(cli) + " >&-"], capture_output=True, text=True, timeout=120
    )
    assert "Traceback" not in closed.stderr


def test_ctrl_c_while_importing_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Ctrl-C before the CLI module has loaded: 'interrupted', exit 130."""

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *_: object) -> None:
            if name == "exporter.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "exporter.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert entry.main() == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_no_run_starts_while_verify_reads(
    tmp_path: Path, write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify holds the directory: a run starting meanwhile is refused, not half-checked."""
    from exporter import manifest
    from exporter.errors import DirectoryBusy
    from exporter.storage import DirLock

    out = tmp_path / "out"
    config = _config(write_config, out)
    assert main(["run", str(config), "--sandbox", "--out", str(out), "--as-of", AS_OF]) == 0
    check = manifest._check
    refused: list[str] = []

    def check_while_a_run_starts(*args: Any) -> Any:
        try:
            DirLock.acquire(out, layout="L", shard=None, command="braze-export run x")
        except DirectoryBusy as exc:
            refused.append(str(exc))
        return check(*args)

    monkeypatch.setattr(manifest, "_check", check_while_a_run_starts)
    assert verify(out).ok > 0
    assert len(refused) == 1
    assert "braze-export verify" in refused[0]


def test_an_oserror_that_is_not_stdouts_is_never_called_stdouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An OSError a command lets through from a file or a store (here plan's lock reading)
    is one line naming it, exit 1: only a write to stdout that fails says stdout."""
    config = tmp_path / "c.yaml"
    config.write_text(CONFIG.format(out=tmp_path / "o", tz="UTC"))

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("exporter.cli.in_the_way", denied)
    assert main(["plan", str(config), "--as-of", AS_OF]) == 1
    assert capsys.readouterr().err == "error: Permission denied\n"
