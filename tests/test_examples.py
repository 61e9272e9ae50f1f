"""The CI and Kubernetes examples parse, keep the key a secret, and call real CLI flags."""

from __future__ import annotations

import re
import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config

EXAMPLES = Path(__file__).parent.parent / "examples"
IMAGE = "ghcr.io/your-org/braze-export:latest"
# Sample values for the template expressions the examples use.
SUBSTITUTIONS = {
    r"\$\{\{ matrix\.shard \}\}": "2",
    r"\$\{\{ inputs\.as_of \}\}": "2025-01-01",
    r"\$\(\(JOB_COMPLETION_INDEX \+ 1\)\)": "3",
}


def _load(name: str) -> Any:
    return yaml.safe_load((EXAMPLES / name).read_text())


def _cli_args(command: str) -> list[str]:
    for pattern, value in SUBSTITUTIONS.items():
        command = re.sub(pattern, value, command)
    return shlex.split(command)


def _check_cli(argv: list[str]) -> Any:
    """The arguments parse with the real parser (argparse exits on anything unknown)."""
    return build_parser().parse_args(argv)


def _steps(workflow: dict[Any, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


@pytest.mark.parametrize("name", ["github-nightly.yml", "github-backfill-sharded.yml"])
def test_github_workflows(name: str) -> None:
    """Workflows have a trigger, pass the key from secrets and run valid commands."""
    workflow = _load(name)
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers
    runs = [s["run"] for s in _steps(workflow) if IMAGE in s.get("run", "")]
    assert runs
    for run in runs:
        argv = _cli_args(run.split(IMAGE, 1)[1])
        _check_cli(argv)
    exporting = [s for s in _steps(workflow) if "run /config" in s.get("run", "")]
    for step in exporting:
        assert step["env"]["BRAZE_API_KEY"] == "${{ secrets.BRAZE_API_KEY }}"
        assert "-e BRAZE_API_KEY" in step["run"]


def test_backfill_workflow_shards_with_a_matrix() -> None:
    """Each matrix job runs its own shard of the same N."""
    workflow = _load("github-backfill-sharded.yml")
    job = workflow["jobs"]["backfill"]
    shards = job["strategy"]["matrix"]["shard"]
    (step,) = [s for s in job["steps"] if "--shard" in s.get("run", "")]
    args = _check_cli(_cli_args(step["run"].split(IMAGE, 1)[1]))
    assert args.shard == (2, len(shards))


def test_kubernetes_cronjob() -> None:
    """The CronJob runs as non-root, takes the key from a Secret and valid arguments."""
    cron = _load("k8s-cronjob.yaml")
    assert (cron["apiVersion"], cron["kind"]) == ("batch/v1", "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    _check_cli(container["args"])
    (env,) = container["env"]
    assert env["name"] == "BRAZE_API_KEY"
    assert "secretKeyRef" in env["valueFrom"]


def test_nightly_examples_write_to_a_bucket() -> None:
    """The GitHub nightly and the CronJob export to (and the nightly verifies) an s3:// prefix,
    with no credential in the files."""
    cron = _load("k8s-cronjob.yaml")
    (container,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert _check_cli(container["args"]).out.startswith("s3://")
    workflow = _load("github-nightly.yml")
    out = next(iter(workflow["jobs"].values()))["env"]["OUT"]
    assert out.startswith("s3://")
    runs = [s["run"] for s in _steps(workflow) if IMAGE in s.get("run", "")]
    commands = [_check_cli(_cli_args(r.split(IMAGE, 1)[1].replace('"$OUT"', out))) for r in runs]
    assert [c.func.__name__ for c in commands] == ["_cmd_run", "_cmd_verify"]
    assert commands[0].out == out
    assert commands[1].dir == out
    for name in ("github-nightly.yml", "k8s-cronjob.yaml"):
        assert "AWS_SECRET_ACCESS_KEY:" not in (EXAMPLES / name).read_text()


def test_kubernetes_backfill_job_uses_shards() -> None:
    """The indexed Job gives pod k the shard k+1 of `completions`."""
    job = _load("k8s-backfill-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["spec"]["completionMode"] == "Indexed"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    script = container["args"][0]
    argv = _cli_args(script.split("exec braze-export", 1)[1])
    args = _check_cli(argv)
    assert args.shard == (3, job["spec"]["completions"])
    assert "secretKeyRef" in container["env"][0]["valueFrom"]


CONFIGS = Path(__file__).parent.parent / "configs"


def _example_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(EXAMPLES.iterdir())}


def test_every_config_an_example_names_is_shipped_and_valid() -> None:
    """Each /config/NAME.yaml an example runs, and each configs/ file a comment mounts, exists
    in configs/ and loads."""
    named = set()
    for text in _example_texts().values():
        named |= set(re.findall(r"/config/([\w.-]+\.yaml)", text))
        named |= set(re.findall(r"configs/([\w.-]+\.yaml)", text))
    assert {"nightly.yaml", "backfill.yaml"} <= named
    for name in named:
        assert load_config(CONFIGS / name, env={}).exports, name


def _local_times(cron: str, zone: str, utc: bool) -> list[tuple[int, int]]:
    """The local (hour, minute) a daily cron fires at in ``zone``, winter and summer."""
    minute, hour = (int(f) for f in cron.split()[:2])
    times = []
    for month in (1, 7):
        moment = datetime(2025, month, 15, hour, minute, tzinfo=UTC if utc else ZoneInfo(zone))
        local = moment.astimezone(ZoneInfo(zone))
        times.append((local.hour, local.minute))
    return times


@pytest.mark.parametrize("name", ["github-nightly.yml", "k8s-cronjob.yaml"])
def test_nightly_schedule_fits_the_configs_time_zone(name: str) -> None:
    """The nightly schedule fires between 02:00 and 12:00 in the config's own zone, winter and
    summer: after its day has ended and Braze has had time to settle it, before the next."""
    doc = _load(name)
    if name.startswith("github"):
        cron, zone_of_cron = doc[True]["schedule"][0]["cron"], None  # Actions: always UTC
    else:
        cron, zone_of_cron = doc["spec"]["schedule"], doc["spec"].get("timeZone")
    config = load_config(CONFIGS / "nightly.yaml", env={})
    if zone_of_cron is not None:
        assert zone_of_cron == config.timezone
    for hour, _ in _local_times(cron, config.timezone, utc=zone_of_cron is None):
        assert 2 <= hour < 12, (name, cron, config.timezone)
