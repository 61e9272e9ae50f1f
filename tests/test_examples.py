"""The examples parse, keep the key a secret, call real CLI flags, and run where they can:
CI, Kubernetes, docker compose, Airflow and Dagster."""

from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from exporter.cli import build_parser, main
from exporter.config import load_config
from exporter.sandbox import free_port

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


def _documented() -> str:
    """The README and the docs site's pages, where every variable an example sets is named."""
    root = EXAMPLES.parent
    pages = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return "\n".join(p.read_text() for p in pages if p.is_file())


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services running this repository's image (entrypoint braze-export)."""
    return {n: s for n, s in compose["services"].items() if s.get("build") == ".."}


def test_compose_runs_real_cli_commands_with_documented_variables() -> None:
    """Every braze-export service's command parses with the real CLI, the exporter reaches the
    sandbox on loopback (its network), and each variable set is documented."""
    compose = _load("docker-compose.yml")
    ours = _ours(compose)
    assert {"sandbox", "export", "verify"} <= set(ours)
    commands = {name: _check_cli(service["command"]) for name, service in ours.items()}
    assert [commands[n].func.__name__ for n in ("sandbox", "export", "verify")] == [
        "_cmd_sandbox",
        "_cmd_run",
        "_cmd_verify",
    ]
    assert commands["export"].out == commands["verify"].dir
    export = ours["export"]
    assert export["network_mode"] == "service:sandbox"
    endpoint = export["environment"]["BRAZE_REST_ENDPOINT"]
    assert endpoint == f"http://127.0.0.1:{commands['sandbox'].port}"
    config = load_config(CONFIGS / Path(commands["export"].config).name, env=export["environment"])
    assert config.braze.endpoint == endpoint  # plain http is accepted on loopback only
    documented = _documented()
    for service in compose["services"].values():
        for name in service.get("environment", {}):
            assert f"`{name}`" in documented or f"{name}=" in documented, name


@pytest.mark.slow
def test_compose_runs_as_written_without_docker(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The compose file's steps, run here in order with loopback addresses for the service
    names (no Docker engine here): the bucket is made, the sandbox serves, the export into
    s3:// completes and verify passes."""
    compose = _load("docker-compose.yml")
    services = compose["services"]
    for name, value in s3_env.items():  # moto on loopback stands in for the s3 service
        monkeypatch.setenv(name, value)
    bucket = services["bucket"]["entrypoint"]
    assert bucket[:2] == ["python", "-c"]
    exec(bucket[2], {})  # noqa: S102 - the compose file's own one-liner, run as written
    port = free_port()
    sandbox = [
        {"0.0.0.0": "127.0.0.1", "8080": str(port)}.get(arg, arg)  # noqa: S104 - replaced
        for arg in services["sandbox"]["command"]
    ]
    with subprocess.Popen(
        [sys.executable, "-m", "exporter", *sandbox], stdout=subprocess.PIPE, text=True
    ) as server:
        try:
            assert server.stdout is not None
            assert server.stdout.readline().startswith("sandbox listening on")
            export = services["export"]
            for name, value in export["environment"].items():
                if name not in s3_env:
                    monkeypatch.setenv(name, value.replace(":8080", f":{port}"))
            run = [a.replace("/opt/braze-export/configs", str(CONFIGS)) for a in export["command"]]
            assert main(run) == 0
        finally:
            server.terminate()
    assert main(services["verify"]["command"]) == 0
    assert " 0 changed, 0 missing, 0 unknown" in capsys.readouterr().out


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), EXAMPLES / name)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dagster_asset_materialises_against_the_sandbox(tmp_path: Path) -> None:
    """The Dagster example's asset materialises with the in-process sandbox, its metadata the
    run's report."""
    dg = pytest.importorskip(
        "dagster", reason="dagster is not installed here (heavy; not a dev dependency)"
    )
    module = _example("dagster_assets.py")
    config = {"config": str(CONFIGS / "demo.yaml"), "out": str(tmp_path / "o"), "sandbox": True}
    result = dg.materialize(
        [module.braze_sessions], run_config={"ops": {"braze_sessions": {"config": config}}}
    )
    assert result.success
    (materialized,) = result.asset_materializations_for_node("braze_sessions")
    metadata = {key: value.value for key, value in materialized.metadata.items()}
    assert metadata["series_complete"] == metadata["series"] > 0
    assert metadata["periods_missing"] == 0
    assert Path(metadata["manifest"]).is_file()
    assert module.nightly.cron_schedule == "30 3 * * *"


def test_airflow_task_runs_against_the_sandbox(tmp_path: Path) -> None:
    """The Airflow example's DAG loads with its one task, and the task's callable exports with
    the in-process sandbox."""
    pytest.importorskip(
        "airflow", reason="apache-airflow is not installed here (huge; not a dev dependency)"
    )
    module = _example("airflow_dag.py")
    assert module.nightly_dag.task_ids == ["braze_export"]
    report = module.export(
        "2024-07-01", config=str(CONFIGS / "demo.yaml"), out=str(tmp_path / "o"), sandbox=True
    )
    assert report["exit_status"] == 0
    assert report["series_complete"] == report["series"] > 0
