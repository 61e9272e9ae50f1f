"""The nightly Braze export as a Dagster asset, materialised by a schedule.

Install ``braze-export[s3]`` beside dagster, point BRAZE_EXPORT_CONFIG at configs/nightly.yaml
and give the code location the key as the variable the config names (BRAZE_API_KEY, or
BRAZE_API_KEY_FILE for a mounted secret). Load it with ``dagster dev -f dagster_assets.py``.

The asset's metadata are the run's report (series complete, periods written and missing, the
manifest); ``IncompleteRun`` (failed or incomplete series) fails the materialisation and the
retry policy runs it again, resuming where it stopped. AuthError, Unreachable and ConfigError
fail it too: fix the cause, then rematerialise. See docs/python-api.md.

Checked by tests/test_examples.py where dagster is installed (it is not a dev dependency):
it materialises the asset against the in-process sandbox.
"""

# No `from __future__ import annotations`: Dagster reads the config class from the
# annotation of the asset's parameter at definition time.
import os

import dagster as dg

import exporter

ZONE = "America/New_York"  # the config's `timezone`


class BrazeExport(dg.Config):
    """What to run: the config, the output, and (for a try without a key) the sandbox."""

    config: str = os.environ.get("BRAZE_EXPORT_CONFIG", "/opt/dagster/config/nightly.yaml")
    out: str = os.environ.get("BRAZE_EXPORT_OUT", "s3://your-data-bucket/braze/sessions-export")
    as_of: str | None = None  # YYYY-MM-DD; default: today in the config's zone
    sandbox: bool = False


@dg.asset(
    retry_policy=dg.RetryPolicy(max_retries=3, delay=600),
    description="Braze's analytics time series, exported by braze-export",
)
def braze_sessions(context: dg.AssetExecutionContext, config: BrazeExport) -> dg.MaterializeResult:
    report = exporter.run(config.config, as_of=config.as_of, out=config.out, sandbox=config.sandbox)
    context.log.info("\n".join(report.summary))
    return dg.MaterializeResult(
        metadata={
            "run_id": report.run_id,
            "series": report.series,
            "series_complete": report.series_complete,
            "periods_written": report.periods_written,
            "periods_missing": report.periods_missing,
            "requests_sent": report.requests_sent,
            "rows_written": report.rows_written,
            "manifest": dg.MetadataValue.path(str(report.manifest)),  # written: the run is complete
        }
    )


nightly = dg.ScheduleDefinition(
    name="braze_nightly",
    target=[braze_sessions],
    # 03:30 in the config's zone: a few hours after its day ended, so Braze has settled it.
    cron_schedule="30 3 * * *",
    execution_timezone=ZONE,
)

defs = dg.Definitions(assets=[braze_sessions], schedules=[nightly])
