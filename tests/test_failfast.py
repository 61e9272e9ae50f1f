"""Fail fast when nothing can work, and never call a series complete that is not."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.pipeline import CONNECT_FAILURES_TO_GIVE_UP, NOT_FOUND_TO_GIVE_UP
from tests.conftest import Cli, NotBraze, data_files

AS_OF = "2024-07-01"
CONFIG = """\
version: 1
limits: {{concurrency: {concurrency}}}
output: {{dir: {out}}}
braze: {{endpoint: "{endpoint}"}}
exports:
  - name: many
    segment_ids: [{segments}]
    units: [day, hour]
    window: {{days: 3}}
"""


def _config(
    write_config: Callable[..., Path],
    out: Path,
    endpoint: str = "https://rest.iad-01.braze.com",
    segments: int = 20,
    concurrency: int = 8,
) -> Path:
    names = ", ".join(f"seg-{i}" for i in range(segments))
    return write_config(
        CONFIG.format(out=out, endpoint=endpoint, segments=names, concurrency=concurrency)
    )


def _manifest(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(next((out / "_runs").glob("*.json")).read_text())
    return doc


def test_a_refused_port_stops_the_run_at_once_naming_host_and_cause(
    tmp_path: Path,
    write_config: Callable[..., Path],
    env_key: str,
    capsys: pytest.CaptureFixture[str],
    closed_port: int,
) -> None:
    """40 series against a closed port: exit 4 after a handful of attempts, not 320."""
    port = closed_port
    out = tmp_path / "out"
    config = _config(write_config, out, f"http://127.0.0.1:{port}")
    assert main(["run", str(config), "--as-of", AS_OF]) == 4
    printed = capsys.readouterr()
    assert f"cannot reach 127.0.0.1:{port}: connection refused. Check" in printed.err
    assert "braze.endpoint" in printed.err
    assert "Traceback" not in printed.err
    doc = _manifest(out)
    assert doc["exit_code"] == 4
    # The refusals that end the run, and what was in flight then (concurrency 8): none after.
    assert doc["totals"]["requests_made"] <= CONNECT_FAILURES_TO_GIVE_UP + 8 - 1
    assert doc["totals"]["series_complete"] == 0
    assert doc["totals"]["series_incomplete"] == 40


def test_an_endpoint_that_only_answers_404_stops_the_run(
    tmp_path: Path,
    write_config: Callable[..., Path],
    env_key: str,
    not_braze: NotBraze,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every series would get 404: exit 4 after a few, saying it is not a Braze REST host."""
    out = tmp_path / "out"
    config = _config(write_config, out, not_braze.url)
    assert main(["run", str(config), "--as-of", AS_OF]) == 4
    err = capsys.readouterr().err
    assert "answers 404 to /sessions/data_series: it is not a Braze REST host" in err
    # 404s from two segments (day and hour each), the third segment's, and what was in flight
    # then (concurrency 8): none after.
    assert not_braze.hits <= 2 * (NOT_FOUND_TO_GIVE_UP - 1) + 1 + 8 - 1
    assert data_files(out) == []


@pytest.mark.parametrize(
    "endpoint",
    ["https://rest.iad-01.braze.com/sessions/data_series", "https://rest.iad-01.braze.com/api/v1"],
)
def test_an_endpoint_with_a_path_is_refused_by_validate(
    tmp_path: Path,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    endpoint: str,
) -> None:
    """braze.endpoint is a bare host: a path is a usage error naming the key."""
    config = _config(write_config, tmp_path / "out", endpoint)
    assert main(["validate", str(config)]) == 2
    assert "braze.endpoint: must be the instance's REST host only" in capsys.readouterr().err


def test_a_refused_run_calls_no_series_complete(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """403: the summary and the manifest count every series as incomplete, none as ok."""
    out = tmp_path / "out"
    config = _config(write_config, out, segments=8)
    ran, stats = cli.against_sandbox("run", config, "--as-of", AS_OF, deny=True)
    assert ran.code == 3
    assert stats.requests <= 8  # in flight at the first 403 (concurrency)
    assert "series: 0 complete, 16 incomplete, 0 failed (of 16)" in ran.out
    totals = _manifest(out)["totals"]
    assert (totals["series_complete"], totals["series_incomplete"]) == (0, 16)
    assert "series_ok" not in totals
    assert totals["requests_gap_fill"] == 0  # none was sent, so none is counted


def test_an_as_of_after_today_is_a_usage_error(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """--as-of tomorrow (in the config's zone) exits 2 before anything happens."""
    config = _config(write_config, tmp_path / "out")
    tomorrow = (date.today() + timedelta(days=2)).isoformat()
    assert main(["plan", str(config), "--as-of", tomorrow]) == 2
    assert "is after today" in capsys.readouterr().err
