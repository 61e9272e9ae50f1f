"""The nightly Braze export as an Airflow DAG: one TaskFlow task calling ``exporter.run``.

Install ``braze-export[s3]`` into the workers' environment, put configs/nightly.yaml where
they can read it, and give them the key as the variable the config names (BRAZE_API_KEY, or
BRAZE_API_KEY_FILE for a mounted secret; never an Airflow Variable or Connection field that
the UI shows). S3 credentials come from the worker's usual AWS chain.

What the task does on each outcome (docs/python-api.md):
- every series complete: the task succeeds and returns the report's counts (an XCom);
- failed or incomplete series: ``IncompleteRun`` fails the task and Airflow retries it; the
  rerun resumes, fetching only the periods still missing;
- the key refused, Braze unreachable, a bad config: AuthError, Unreachable, ConfigError fail
  the task; retrying those changes nothing until someone fixes the cause;
- another run holds the output: DirectoryBusy; a retry after the other run ends goes on.

Checked by tests/test_examples.py where apache-airflow is installed (it is not a dev
dependency).
"""

from __future__ import annotations

import dataclasses
import os
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pendulum  # an Airflow dependency: Airflow takes a DAG's zone from it

try:
    from airflow.sdk import dag, task  # Airflow 3
except ImportError:  # Airflow 2.x
    from airflow.decorators import dag, task

import exporter

ZONE = "America/New_York"  # the config's `timezone`: its days end at local midnight
CONFIG = os.environ.get("BRAZE_EXPORT_CONFIG", "/opt/airflow/config/nightly.yaml")
OUT = os.environ.get("BRAZE_EXPORT_OUT", "s3://your-data-bucket/braze/sessions-export")


def export(
    as_of: str, *, config: str = CONFIG, out: str = OUT, sandbox: bool = False
) -> dict[str, Any]:
    """Run the export for the days before ``as_of`` and return its report as plain data."""
    report = exporter.run(config, as_of=as_of, out=out, sandbox=sandbox)
    return dataclasses.asdict(report)


@dag(
    dag_id="braze_export_nightly",
    # 03:30 in the config's zone: a few hours after its day ended, so Braze has settled it.
    schedule="30 3 * * *",
    start_date=pendulum.datetime(2025, 1, 1, tz=ZONE),  # the schedule's zone
    catchup=False,
    max_active_runs=1,  # two runs on one output: the second would raise DirectoryBusy
    default_args={"retries": 3, "retry_delay": timedelta(minutes=10)},
    tags=["braze"],
)
def braze_export_nightly() -> None:
    @task
    def braze_export(data_interval_end: datetime | None = None) -> dict[str, Any]:
        # The run's own day, not the wall clock: a rerun of last Tuesday's run exports
        # last Tuesday's window (the end of the interval is the scheduled time).
        end = data_interval_end or datetime.now(ZoneInfo(ZONE))
        return export(end.astimezone(ZoneInfo(ZONE)).date().isoformat())

    braze_export()


nightly_dag = braze_export_nightly()
