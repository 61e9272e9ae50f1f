"""exporter.run: the CLI's run from Python, with a report and exceptions instead of exit codes."""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import exporter
from exporter.api import IncompleteRun, RunReport
from exporter.config import load_config
from exporter.errors import AuthError, ConfigError, DirectoryBusy, Unreachable
from exporter.sandbox import free_port
from exporter.storage import DirLock
from tests.conftest import Cli, serving
from tests.test_redaction import CONFIG as ECHO_CONFIG
from tests.test_redaction import KEY as ECHO_KEY
from tests.test_redaction import EchoServer, _leaks

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
timezone: America/New_York
output: {{dir: {out}, format: jsonl}}
exports:
  - name: nightly
    segment_ids: [seg-a, seg-b]
    app_ids: [null, app-1]
    units: [day]
    window: {{days: 3}}
"""


@pytest.fixture
def config(tmp_path: Path, write_config: Callable[..., Path]) -> Path:
    return write_config(CONFIG.format(out=tmp_path / "out"))


def test_a_complete_run_returns_its_report(config: Path, tmp_path: Path) -> None:
    """A complete sandbox run returns exit status 0, the counts its manifest records and the
    manifest's path."""
    report = exporter.run(config, as_of=AS_OF, sandbox=True, out=tmp_path / "o")
    assert isinstance(report, RunReport)
    assert report.ok
    assert report.exit_status == 0
    assert report.manifest is not None
    doc = json.loads(Path(report.manifest).read_text())
    totals = doc["totals"]
    assert doc["run_id"] == report.run_id
    assert (report.series, report.series_complete) == (4, 4)
    assert (report.series_incomplete, report.series_failed, report.periods_missing) == (0, 0, 0)
    assert report.periods_written == totals["periods_written"] == 12
    assert report.requests_sent == totals["requests_made"] > 0
    assert report.rows_written == totals["rows_written"] > 0
    assert report.missing == {}
    assert report.failed == {}
    assert report.summary[0] == "series: 4 complete, 0 incomplete, 0 failed (of 4)"


def test_a_run_in_a_worker_thread_completes(config: Path, tmp_path: Path) -> None:
    """Orchestrators run tasks in threads: there no signal handler is installed, and the run
    completes (asyncio refuses handlers off the main thread)."""
    reports: list[RunReport] = []
    errors: list[BaseException] = []

    def task() -> None:
        try:
            reports.append(exporter.run(config, as_of=AS_OF, sandbox=True, out=tmp_path / "o"))
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    worker = threading.Thread(target=task)
    worker.start()
    worker.join()
    assert errors == []
    assert reports[0].series_complete == 4


def test_the_callers_signal_handlers_are_put_back(config: Path, tmp_path: Path) -> None:
    """On the main thread the run handles SIGINT/SIGTERM while it goes, then the handlers the
    embedding process had are back."""

    def mine(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("not called")

    interrupt = signal.getsignal(signal.SIGINT)  # what the test runner inherited (may be SIG_IGN)
    before = signal.signal(signal.SIGTERM, mine)
    try:
        exporter.run(config, as_of=AS_OF, sandbox=True, out=tmp_path / "o")
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.getsignal(signal.SIGINT) is interrupt
    finally:
        signal.signal(signal.SIGTERM, before)


def test_failed_series_raise_incomplete_run_with_the_report(
    config: Path, cli: Cli, env_key: str
) -> None:
    """A run with failed series raises IncompleteRun (an orchestrator's task fails) carrying
    the report, which names each failed series and why; check=False returns it instead."""
    with cli.sandbox(reject_segments=frozenset({"seg-b"})):
        with pytest.raises(IncompleteRun) as caught:
            exporter.run(config, as_of=AS_OF)
        report = exporter.run(config, as_of=AS_OF, check=False)
    raised = caught.value.report
    assert raised.exit_status == report.exit_status == 1
    assert (raised.series_complete, raised.series_failed) == (2, 2)
    reason = "HTTP 400: Invalid segment_id: segment seg-b not found"
    assert raised.failed == {
        "sessions/day/segment-seg-b/workspace": reason,
        "sessions/day/segment-seg-b/app-app-1": reason,
    }
    assert "2 of 4 series complete, 2 failed" in str(caught.value)
    assert raised.manifest is not None
    assert raised.manifest in str(caught.value)


def test_a_refused_key_raises_auth_error(config: Path, cli: Cli, env_key: str) -> None:
    """Where the CLI exits 3 the API raises AuthError, without the key in it."""
    with cli.sandbox(deny=True), pytest.raises(AuthError, match="HTTP 403") as caught:
        exporter.run(config, as_of=AS_OF)
    assert env_key not in str(caught.value)


def test_an_endpoint_that_refuses_connections_raises_unreachable(
    config: Path, env_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the CLI exits 4 (fail-fast: nothing listens) the API raises Unreachable."""
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Unreachable):
        exporter.run(config, as_of=AS_OF)


def test_an_output_held_by_another_run_raises_directory_busy(config: Path, tmp_path: Path) -> None:
    """Where the CLI exits 5 the API raises DirectoryBusy, and writes nothing."""
    out = tmp_path / "o"
    out.mkdir()
    layout = f"{load_config(config).fingerprint}|True"
    lock = DirLock.acquire(out, layout=layout, shard=None, command="the other run")
    try:
        with pytest.raises(DirectoryBusy, match="the other run"):
            exporter.run(config, as_of=AS_OF, sandbox=True, out=out)
    finally:
        lock.release()
    assert not (out / "sessions").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"as_of": "July 1st"}, "as_of: must be a date YYYY-MM-DD"),
        ({"as_of": "2999-01-01"}, "is after today"),
        ({"shard": (3, 2)}, "shard: must be"),
        ({"out": ""}, "--out: must not be empty"),
        ({"work_dir": ""}, "work_dir: must not be empty"),
        ({}, "BRAZE_API_KEY"),  # no key in the environment, and not the sandbox
    ],
)
def test_bad_arguments_raise_config_error_before_anything_is_sent(
    config: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, Any], message: str
) -> None:
    """Where the CLI exits 2 the API raises ConfigError."""
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY_FILE", raising=False)
    with pytest.raises(ConfigError, match=message):
        exporter.run(config, **kwargs)


def test_a_loaded_config_runs_too(config: Path, tmp_path: Path) -> None:
    """run() takes a Config as well as a path, and a date as well as a string."""
    from datetime import date

    report = exporter.run(
        load_config(config), as_of=date(2024, 7, 1), sandbox=True, out=tmp_path / "o"
    )
    assert report.series_complete == 4


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with serving(EchoServer()) as server:
        yield server


@pytest.mark.parametrize(
    ("segments", "raised"), [("ok, s400, s429", IncompleteRun), ("s401", AuthError)]
)
def test_an_echoed_key_reaches_neither_the_hosts_logs_nor_the_errors(
    tmp_path: Path,
    echo: EchoServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    segments: str,
    raised: type[Exception],
) -> None:
    """A server that echoes the key: the host's own log handlers (here pytest's, which know
    nothing of redaction), the error raised and the report hold no form of it."""
    monkeypatch.setenv("BRAZE_API_KEY", ECHO_KEY)
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", echo.url)
    path = tmp_path / "config.yaml"
    path.write_text(ECHO_CONFIG.format(segments=segments))
    with caplog.at_level(logging.DEBUG), pytest.raises(raised) as caught:
        exporter.run(path, as_of=AS_OF)
    report = getattr(caught.value, "report", None)
    texts = [caplog.text, str(caught.value), *capsys.readouterr()]
    if report is not None:
        texts += [*report.summary, *report.failed.values()]
    assert "invalid key: Bearer ***" in "\n".join(texts)  # the echo is there, the key is not
    assert [leak for n, text in enumerate(texts) for leak in _leaks(str(n), text.encode())] == []
