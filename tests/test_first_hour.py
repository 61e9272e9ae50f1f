"""The docs' first-hour facts hold: the recipes run as written (a standalone sandbox, a local S3
server, the cron line), the sample summary is what the demo prints, doctor's request count is
what it spends, and a standalone sandbox's rows are recorded as the sandbox's (issue #17)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.economy import NIGHTLY
from exporter.cli import main
from tests.conftest import Cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
IN_VENV = sys.prefix != sys.base_prefix
needs_venv = pytest.mark.skipif(not IN_VENV, reason="the recipes run .venv/bin/: needs a venv")


def _block_after(text: str, marker: str) -> str:
    """The first fenced code block after ``marker``, without its fences."""
    rest = text[text.index(marker) :]
    match = re.search(r"```sh\n(.*?)\n\s*```", rest, re.S)
    assert match is not None, marker
    return textwrap.dedent(match.group(1))


def _summary_block(text: str) -> list[str]:
    """The sample run summary (``series: ...`` to ``manifest: ...``) a page shows."""
    match = re.search(r"```\n(series: .*?\nmanifest: [^\n]*)\n```", text, re.S)
    assert match is not None
    return match.group(1).splitlines()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment without any Braze or AWS setting, home and temp in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "AWS_"))}
    return env | {"HOME": str(tmp_path), "TMPDIR": str(tmp_path), "AWS_EC2_METADATA_DISABLED": "1"}


def _checkout(tmp_path: Path) -> Path:
    """A directory that looks like the clone the docs start from: .venv and configs/."""
    work = tmp_path / "clone"
    work.mkdir()
    (work / ".venv").symlink_to(sys.prefix)
    (work / "configs").symlink_to(ROOT / "configs")
    return work


@contextlib.contextmanager
def _shell(script: str, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """``script`` under ``bash -eu`` in its own process group, which is killed at the end
    (a server the script started in the background goes with it, whatever happened)."""
    proc = subprocess.Popen(
        ["/bin/bash", "-euc", script],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _run_script(script: str, cwd: Path, env: dict[str, str]) -> tuple[str, str]:
    with _shell(script, cwd, env) as proc:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    return out, err


def _manifest(runs: Path) -> dict[str, Any]:
    (path,) = runs.glob("*.json")
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


@needs_venv
@pytest.mark.slow
def test_the_standalone_sandbox_recipe_runs_and_records_invented_rows_as_the_sandboxs(
    tmp_path: Path,
) -> None:
    """docs/sandbox.md's opening recipe runs as written; the run's manifest says its rows are
    the sandbox's (not Braze's), and so does its summary."""
    block = _block_after((DOCS / "sandbox.md").read_text(), "<!-- standalone-sandbox")
    work = _checkout(tmp_path)
    out, _ = _run_script(block, work, _clean_env(tmp_path))
    assert "verdict: ready" in out
    assert "source: braze-export's sandbox: invented rows, not Braze data" in out
    source = _manifest(work / "sandbox-try" / "_runs")["source"]
    assert source == {"sandbox": True, "endpoint_host": "127.0.0.1"}


@needs_venv
@pytest.mark.slow
def test_the_local_s3_recipe_runs_as_written(tmp_path: Path) -> None:
    """docs/object-storage.md's recipe (moto on a free loopback port, the bucket, the AWS_*
    variables, a run and verify) runs as written, the install line aside (the tests' venv
    has the extra)."""
    block = _block_after((DOCS / "object-storage.md").read_text(), "<!-- local-s3")
    install, *rest = block.splitlines()
    assert install.startswith(".venv/bin/pip install -e '.[s3-test]'")
    assert "5000" not in block  # never a fixed port
    assert "5055" not in block
    out, _ = _run_script("\n".join(rest), _checkout(tmp_path), _clean_env(tmp_path))
    assert re.search(r"^series: (\d+) complete, 0 incomplete, 0 failed \(of \1\)$", out, re.M)
    assert re.search(r"^\d+ file\(s\) ok, 0 changed, 0 missing, 0 unknown", out, re.M)


def test_the_s3_test_extra_holds_moto_with_the_s3_extra() -> None:
    """[s3-test] installs moto's server with [s3] and a boto3 pinned within aiobotocore's
    botocore range; [dev] reuses it instead of a second moto pin."""
    text = (ROOT / "pyproject.toml").read_text()
    extra = re.search(r"^s3-test = \[(.*)\]$", text, re.M)
    assert extra is not None
    assert '"braze-export[s3]"' in extra.group(1)
    assert '"moto[server]==' in extra.group(1)
    assert '"boto3==' in extra.group(1)  # the newest boto3 needs a botocore s3fs refuses
    assert text.count('"moto[server]') == 1
    assert '"braze-export[s3-test]"' in text


@needs_venv
@pytest.mark.slow
def test_the_cron_line_runs_in_an_empty_environment_and_keeps_json_logs_json(
    tmp_path: Path,
    s3_env: dict[str, str],
    bucket: str,
    sandbox_server: Any,
    write_config: Callable[..., Path],
) -> None:
    """operations.md's crontab line, run as cron runs it (/bin/sh, an empty environment) with
    its env file: exit 0, every stderr line in run.jsonl is JSON, the summary is apart."""
    ops = (DOCS / "operations.md").read_text()
    env_block = _block_after(ops, "Put what the run\n      needs in an env file")
    cron_block = _block_after(ops, "for the job's user first:")
    (line,) = [x for x in cron_block.splitlines() if not x.startswith("#")]
    command = line.split(None, 5)[5]  # after the five schedule fields
    work = _checkout(tmp_path)
    (work / "configs").unlink()
    (work / "configs").mkdir()
    (work / "configs" / "nightly.yaml").write_text((ROOT / "configs/nightly.yaml").read_text())
    logs, etc = tmp_path / "log", tmp_path / "etc"
    logs.mkdir()
    etc.mkdir()
    (etc / "key").write_text("sandbox-key-5f1e2d3c4b5a69788796a5b4\n")  # conftest.KEY
    values = s3_env | {"BRAZE_API_KEY_FILE": str(etc / "key")}
    names = [x.split("=", 1)[0] for x in env_block.splitlines() if not x.startswith("#")]
    # The doc's variables with the test's values, then the test's own: moto's endpoint and
    # isolated AWS files, and where Braze is (the sandbox).
    lines = [f"{name}={values[name]}" for name in names]
    lines += [f"{k}={v}" for k, v in s3_env.items() if k not in names]
    with sandbox_server() as handle:
        lines.append(f"BRAZE_REST_ENDPOINT={handle.url}")
        (etc / "env").write_text("\n".join(lines) + "\n")
        command = (
            command.replace("/srv/braze-export", str(work))
            .replace("/etc/braze-export/", f"{etc}/")
            .replace("/var/log/braze-export/", f"{logs}/")
            .replace("s3://your-bucket/braze", bucket)
        )
        proc = subprocess.run(
            ["/bin/sh", "-c", command], env={}, capture_output=True, text=True, timeout=600
        )
    assert proc.returncode == 0, proc.stderr + (logs / "run.jsonl").read_text()
    records = [json.loads(x) for x in (logs / "run.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "run_finished"
    assert records[-1]["status"] == 0
    summary = (logs / "summary.log").read_text()
    assert summary.startswith("series: ")
    assert "source: braze-export's sandbox" in summary


@pytest.mark.parametrize("page", ["README.md", "docs/getting-started.md"])
def test_the_sample_demo_summary_is_what_the_demo_prints(
    page: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The sample summary of `make demo` on a page is the demo's own, line for line (the
    time, the pace and the manifest's name aside)."""
    out = tmp_path / "demo-out"
    assert (
        main(["run", str(ROOT / "configs/demo.yaml"), "--sandbox", "--out", str(out), *AS_OF]) == 0
    )
    printed = capsys.readouterr().out.splitlines()
    real = printed[[i for i, x in enumerate(printed) if x.startswith("series: ")][-1] :]
    sample = _summary_block((ROOT / page).read_text())
    assert [_timeless(x) for x in sample] == [_timeless(x) for x in real]


AS_OF = ["--as-of", "2026-11-29"]  # no clock change in the demo's windows: the sample's day


def _timeless(line: str) -> str:
    line = re.sub(r" in [0-9.]+m?s( \([0-9.]+/s\))?;", " in T;", line)
    return re.sub(r"^manifest: .*", "manifest: M", line)


@pytest.mark.parametrize(
    ("timezone", "units", "segments", "spent"),
    [
        ("UTC", "[day]", "[seg-a]", 1),
        ("UTC", "[day, hour]", "[seg-a]", 2),
        ("Asia/Tokyo", "[day, hour]", "[seg-a]", 3),
        ("Asia/Tokyo", "[day, hour]", "{discover: analytics_enabled}", 4),
    ],
)
def test_doctor_spends_what_the_docs_say(
    timezone: str,
    units: str,
    segments: str,
    spent: int,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """doctor spends one request per unit, one more for a zone east of UTC, and one for the
    list page when every export discovers its ids: 1 to 4, as the README and
    getting-started say."""
    config = write_config(
        f"version: 1\ntimezone: {timezone}\nexports:\n  - name: s\n"
        f"    segment_ids: {segments}\n    units: {units}\n    window: {{days: 7}}\n"
    )
    assert main(["doctor", str(config), "--sandbox"]) == 0
    assert f"({spent} request(s) spent)" in capsys.readouterr().out
    for page in (ROOT / "README.md", DOCS / "getting-started.md"):
        assert "doctor my.yaml  " in page.read_text()
        assert re.search(r"doctor my\.yaml +# 1-4 requests", page.read_text())


def test_a_run_against_a_standalone_sandbox_is_recorded_as_the_sandboxs(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A run whose endpoint is a `braze-export sandbox` (not --sandbox) records
    source.sandbox true and says in its summary that the rows are invented."""
    config = write_config(NIGHTLY.format(out=tmp_path / "out", days=7))
    ran, _ = cli.against_sandbox("run", config, "--as-of", "2024-09-10")
    assert ran.code == 0
    assert "source: braze-export's sandbox: invented rows, not Braze data" in ran.out
    assert _manifest(tmp_path / "out" / "_runs")["source"]["sandbox"] is True


def test_the_config_reference_says_what_discover_and_the_key_file_take() -> None:
    """The generated config reference states that discover.name is a regex (re.search), that
    tags means any one of them, and the key file's format (newline stripped)."""
    text = (DOCS / "reference" / "config.md").read_text()
    (name,) = [x for x in text.splitlines() if x.startswith("| `name` |")]
    assert "regular expression (Python's `re.search`" in name
    (tags,) = [x for x in text.splitlines() if x.startswith("| `tags` |")]
    assert "at least one of these tags (any one of them, not all)" in tags
    (key,) = [x for x in text.splitlines() if x.startswith("| `braze.api_key_env` |")]
    assert "`${api_key_env}_FILE`" in key
    assert "a trailing newline" in key


def test_plan_says_why_an_export_sends_nothing_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The demo's backfill-q1 shares its series with the nightly export: plan says they are
    counted there instead of a bare '0 requests'."""
    assert main(["plan", str(ROOT / "configs/demo.yaml"), *AS_OF]) == 0
    out = capsys.readouterr().out
    assert "  export backfill-q1: its series are counted under an earlier export" in out
    assert "  export nightly: " in out
