"""--help, the README, the docs and the manifest say what is true."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import build_parser, main
from exporter.config import load_config
from exporter.manifest import build_manifest
from exporter.pipeline import RunResult, SeriesCounters
from exporter.plan import build_plan
from exporter.ratelimit import Budget
from exporter.sandbox import FAULT_KINDS

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def _parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    parser = build_parser()
    yield "braze-export", parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def test_every_argument_has_help_with_its_default() -> None:
    """Every argument of every command has a help line that states its default."""
    missing = []
    for name, parser in _parsers():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._VersionAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                missing += [f"{name} {c.dest}" for c in action._choices_actions if not c.help]
                continue
            if not action.help or "default" not in action.help:
                missing.append(f"{name} {action.dest}")
    assert not missing


def test_fault_rate_help_lists_the_fault_kinds() -> None:
    """sandbox --help names every fault --fault-rate injects."""
    text = dict(_parsers())["sandbox"].format_help()
    flat = " ".join(text.split())
    for kind in FAULT_KINDS:
        assert kind in flat


def test_help_epilog_lists_exit_codes_and_environment() -> None:
    """--help ends with the exit statuses and the environment variables read."""
    text = build_parser().format_help()
    epilog = text[text.index("exit status:") :]
    for code in ("0", "1", "2", "3", "4", "5", "129", "130", "143"):
        assert re.search(rf"(^|\s|/){code}(\s|/)", epilog), code
    for variable in ("BRAZE_API_KEY", "{api_key_env}_FILE", "BRAZE_REST_ENDPOINT"):
        assert variable in epilog


def test_docs_list_version_and_every_exit_code() -> None:
    """The README and the docs' Commands page show --version; the exit-code page has a row
    for every status."""
    assert "braze-export --version" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "braze-export --version" in (DOCS / "cli.md").read_text(encoding="utf-8")
    table = (DOCS / "reference" / "exit-codes.md").read_text(encoding="utf-8")
    for code in ("0", "1", "2", "3", "4", "5", "129 / 130 / 143"):
        assert f"| {code} |" in table


def _docker_runs() -> Iterator[tuple[str, str]]:
    pages = [ROOT / "README.md", *sorted(DOCS.rglob("*.md")), ROOT / "Dockerfile"]
    for path in [*pages, *sorted((ROOT / "examples").iterdir())]:
        text = path.read_text(encoding="utf-8")
        # A command may span lines (shell continuations, YAML folded scalars).
        for match in re.finditer(r"docker run.*?(?:\n\s*\n|```|\n\s*- |\Z)", text, re.S):
            yield path.name, match.group(0)


def test_docker_examples_can_write_to_a_bind_mount() -> None:
    """Every documented `docker run` that writes to a bind-mounted directory runs as the
    caller (--user), since the image's uid 10001 rarely owns it."""
    writing = [(n, c) for n, c in _docker_runs() if re.search(r'-v "?\$\{?PWD\}?/exports', c)]
    assert len(writing) >= 2  # the docs and Dockerfile; the examples write to a bucket
    for name, command in writing:
        assert '--user "$(id -u):$(id -g)"' in command, (name, command)


def _overlapping(out: Path) -> str:
    return f"""\
version: 1
output: {{dir: {out}}}
exports:
  - name: a
    segment_ids: [s1, s2]
    window: {{days: 5}}
  - name: b
    segment_ids: [s2, s3]
    window: {{days: 150}}
"""


def test_manifest_export_counts_add_up_to_the_totals(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    """A series two exports share counts its requests once, in the first export; the
    exports then add up to the totals, and series_shared says what was counted earlier."""
    out = tmp_path / "out"
    path = write_config(_overlapping(out))
    assert main(["run", str(path), "--sandbox", "--out", str(out), "--as-of", "2024-07-01"]) == 0
    (manifest,) = (out / "_runs").glob("*.json")
    doc = json.loads(manifest.read_text())
    exports, totals = doc["exports"], doc["totals"]
    for key in ("requests_made", "requests_done", "rows_written"):
        assert exports["a"][key] + exports["b"][key] == totals[key], key
    assert totals["requests_made"] == 1 + 2 + 2  # s1: 5 days; s2 and s3: 150 days each
    assert (exports["a"]["series"], exports["b"]["series"]) == (2, 2)
    assert (exports["a"]["series_shared"], exports["b"]["series_shared"]) == (0, 1)
    assert doc["budget"]["effective_rate_per_hour"] is None  # a run of well under a minute


def _manifest_for(elapsed: float, write_config: Callable[..., Path]) -> dict[str, Any]:
    config = load_config(write_config(_overlapping(Path("x"))), env={})
    plan = build_plan(config, date(2024, 7, 1))
    result = RunResult(requests_planned=len(plan.requests))
    result.by_series = SeriesCounters(len(plan.series))
    result.totals.sent = 3000
    return build_manifest(
        run_id="r",
        config=config,
        plan=plan,
        result=result,
        budget=Budget(250_000, 1.0, 0.1),
        started_at=1_700_000_000.0,
        finished_at=1_700_000_000.0 + elapsed,
        exit_code=0,
        source={"sandbox": True, "endpoint_host": "127.0.0.1"},
        sequence=1,
    )


@pytest.mark.parametrize(("elapsed", "per_hour"), [(0.5, None), (59.9, None), (120.0, 90_000)])
def test_effective_rate_only_over_a_minute_or_more(
    elapsed: float, per_hour: int | None, write_config: Callable[..., Path]
) -> None:
    """effective_rate_* are null for runs under a minute (the bucket's burst, not a pace)."""
    budget = _manifest_for(elapsed, write_config)["budget"]
    assert budget["effective_rate_per_hour"] == per_hour
    assert (budget["effective_rate_per_s"] is None) == (per_hour is None)
