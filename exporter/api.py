"""The Python API for orchestrators (Airflow, Dagster, cron scripts): one call, one run.

    report = exporter.run("nightly.yaml", out="s3://bucket/braze")

runs exactly what ``braze-export run`` runs (the CLI calls :func:`prepare_run` and
``runner.execute`` too) and gives back a :class:`RunReport` instead of printed lines and an
exit status. Where the CLI would exit 2, 3, 4 or 5 the API raises the exception behind that
status; a run that ends with failed or incomplete series (exit 1) or is stopped by a signal
(129/130/143) raises :class:`IncompleteRun` carrying its report, so an orchestrator's task fails
and retries (``check=False`` returns the report instead).

The key comes only from the environment (the variable ``braze.api_key_env`` names, or its
``_FILE``), as for the CLI. The API configures no logging: records go to the ``exporter``
logger and the progress line to stderr, where the orchestrator collects them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

from exporter.config import (
    ApiKey,
    Config,
    check_date,
    expand_home,
    load_config,
    parse_day,
    resolve_api_key,
)
from exporter.errors import (
    ApiError,
    ConfigError,
    DirectoryBusy,
    ExporterError,
    IncompleteRun,
    Unreachable,
)
from exporter.logs import new_run_id
from exporter.pipeline import account
from exporter.plan import Discovered, Plan, PlanRequest, build_plan, discovery_needs, span_label
from exporter.redact import holds_secret, redact, redacted_records, register_secret
from exporter.remote import CHECKPOINT_S, LOCK_TTL_S, ObjectStore, is_remote
from exporter.runner import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_OK,
    EXIT_UNREACHABLE,
    RunOptions,
    RunOutcome,
    execute,
)
from exporter.storage import unwritable, write_denied

__all__ = [
    "SANDBOX_OUT",
    "IncompleteRun",
    "PreparedRun",
    "RunReport",
    "api_key",
    "check_out",
    "load_plan",
    "output_dir",
    "prepare_run",
    "report_of",
    "run",
]

SANDBOX_OUT = "sandbox-out"  # never the config's output.dir: invented rows beside real ones

log = logging.getLogger("exporter")
_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True)
class RunReport:
    """What one run did, as its summary and manifest say it.

    ``exit_status`` is the CLI's (0 complete, 1 failed or incomplete series, 129/130/143 stopped
    by SIGINT/SIGTERM). Periods count each series' unit (days, hours, ...). ``missing`` maps
    a series' label to the ranges of periods it lacks (``2024-01-01..2024-01-03``) and
    ``failed`` to the reason it failed; ``manifest`` is the run manifest's path (an object
    storage URL's key under ``runs/``), None when it could not be written
    (``manifest_error`` says why)."""

    exit_status: int
    run_id: str
    series: int
    series_complete: int
    series_incomplete: int
    series_failed: int
    periods_planned: int
    periods_written: int
    periods_already_done: int
    periods_missing: int
    requests_sent: int
    rows_written: int
    missing: dict[str, tuple[str, ...]]
    failed: dict[str, str]
    manifest: str | None
    manifest_error: str | None
    summary: tuple[str, ...]  # the lines `braze-export run` prints

    @property
    def ok(self) -> bool:
        """Every series complete and the manifest written."""
        return self.exit_status == EXIT_OK


@dataclass(frozen=True)
class PreparedRun:
    """Everything ``runner.execute`` needs, checked before anything is sent."""

    config: Config
    plan: Plan | PlanRequest
    key: ApiKey | None  # None: the in-process sandbox
    options: RunOptions


WORK_DIR_DEFAULT = "a directory under $TMPDIR"  # where a remote run keeps its state by default


def check_out(out: str | None, option: str = "--out", default: str = "output.dir") -> None:
    """An empty ``out`` is a mistake (an unset variable), not "the default" (``default``, as
    the message names it); one holding the API key would write it into the paths the run
    prints and records: ConfigError."""
    if out == "":
        raise ConfigError(f"{option}: must not be empty (leave it out to use {default})")
    if out is not None and holds_secret(out):
        raise ConfigError(
            f"{option}: holds the API key: it would be printed and recorded as part of every "
            "path; use another directory"
        )


def load_plan(
    config: str | Path | Config, as_of: date | None, shard: tuple[int, int] | None
) -> tuple[Config, Plan]:
    """The config and its plan; with ``{discover: ...}`` ids, the plan of the listed ids only
    (a run plans again once discovery has found the rest), which also checks every window
    before anything is sent. ConfigError for a bad config or an ``as_of`` after today."""
    loaded = config if isinstance(config, Config) else load_config(config)
    today = datetime.now(loaded.tz).date()
    if as_of is not None and as_of > today:
        raise ConfigError(
            f"--as-of {as_of} is after today ({today} in {loaded.timezone}): only days "
            "that have ended can be exported"
        )
    plan = build_plan(loaded, as_of or today, shard, _nothing_found(loaded))
    for warning in plan.warnings:
        log.warning("%s", warning, extra={"event": "plan_warning"})
    return loaded, plan


def _nothing_found(config: Config) -> Discovered:
    return {key: () for key in discovery_needs(config)}


def output_dir(config: Config, out: str | None) -> Path:
    """Where the run writes, refused (ConfigError) when it cannot be a directory, or
    (Unreachable, exit 4) when it must be created where this process cannot write; nothing
    is created."""
    where = "--out" if out else f"{config.source}: output.dir"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/(?!/)", out or config.output.dir):
        raise ConfigError(
            f"{where}: {out or config.output.dir!r} looks like a URL with one slash too few "
            "(s3://bucket/prefix); a local directory name cannot start with a scheme"
        )
    try:
        path = Path(expand_home(out) if out else config.output.dir)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if path.is_symlink() and not path.exists():
        raise ConfigError(f"{where}: {path} is a broken or looping symbolic link")
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                what = path if existing == path else existing
                raise ConfigError(f"{where}: {what} is a file, not a directory")
            if existing != path and (denied := write_denied(existing)) is not None:
                # The output cannot be written: exit 4, as when the directory exists.
                raise Unreachable(f"{where}: {unwritable(path, denied, 'cannot create it')}")
            break
    return path


def api_key(config: Config) -> ApiKey:
    """The run's key from the environment, registered for redaction before anything could
    echo it (ConfigError when it is missing or too short)."""
    key = resolve_api_key(config)
    register_secret(key.reveal())
    return key


def prepare_run(
    config: Config,
    plan: Plan,
    *,
    out: str | None,
    sandbox: bool,
    fresh: bool,
    run_id: str,
    command: str,
    work_dir: Path | None = None,
    checkpoint_s: float = CHECKPOINT_S,
    progress_interval: float | None = None,
    redraw_progress: bool = True,
) -> PreparedRun:
    """Check the output and the options, read the key: what both the CLI and :func:`run` do
    before a run. ConfigError for anything wrong; nothing is sent or written."""
    key = None if sandbox else api_key(config)
    if out:
        target = out
    elif sandbox:
        target = SANDBOX_OUT
        log.info(
            "sandbox run: writing to %s/, not to output.dir (%s); --out DIR chooses",
            target,
            config.output.dir,
            extra={"event": "sandbox_out"},
        )
    else:
        target = config.output.dir
    if not 0 < checkpoint_s <= LOCK_TTL_S / 2:
        raise ConfigError(
            f"--checkpoint-interval must be above 0 and at most {LOCK_TTL_S / 2:.0f} seconds "
            f"(the lock expires after {LOCK_TTL_S:.0f} seconds without renewal)"
        )
    if is_remote(target):
        ObjectStore.open(target).close()  # a missing backend is a config error, up front
        if work_dir is not None and work_dir.exists() and not work_dir.is_dir():
            raise ConfigError(f"--work-dir: {work_dir} is a file, not a directory")
        out_dir = Path(target)
    else:
        out_dir = output_dir(config, out or (SANDBOX_OUT if sandbox else None))
    options = RunOptions(
        remote=target if is_remote(target) else None,
        work_dir=work_dir,
        checkpoint_s=checkpoint_s,
        out_dir=out_dir,
        run_id=run_id,
        fresh=fresh,
        sandbox=sandbox,
        progress_interval=progress_interval,
        redraw_progress=redraw_progress,
        command=command,
    )
    planned: Plan | PlanRequest = (
        PlanRequest(config, plan.as_of, plan.shard) if discovery_needs(config) else plan
    )
    return PreparedRun(config, planned, key, options)


def report_of(outcome: RunOutcome, run_id: str) -> RunReport:
    """The report of a finished run, counted as its summary and manifest count it."""
    result, plan = outcome.result, outcome.plan
    counted = account(result, plan, range(len(plan.series)))
    coverage = result.coverage
    return RunReport(
        exit_status=outcome.exit_code,
        run_id=run_id,
        series=counted.series,
        series_complete=counted.complete,
        series_incomplete=counted.series_incomplete,
        series_failed=len(counted.failed),
        periods_planned=counted.periods_planned,
        periods_written=counted.periods_written,
        periods_already_done=counted.periods_already_done,
        periods_missing=counted.periods_missing,
        requests_sent=result.totals.sent,
        rows_written=result.totals.rows,
        missing={
            plan.series[i].label: tuple(
                span_label(plan.series[i].unit, lo, hi)
                for lo, hi in (coverage.missing(i) if coverage is not None else [])
            )
            for i in counted.incomplete
        },
        failed={series.label: redact(reason) for series, reason in result.failures.items()},
        manifest=None if outcome.manifest_error else str(outcome.manifest),
        manifest_error=None if outcome.manifest_error is None else redact(outcome.manifest_error),
        summary=tuple(redact(line) for line in outcome.summary),
    )


def _incomplete(report: RunReport) -> str:
    return (
        f"run {report.run_id} ended with exit status {report.exit_status}: "
        f"{report.series_complete} of {report.series} series complete, "
        f"{report.series_failed} failed, {report.series_incomplete} incomplete "
        f"({report.periods_missing} period(s) missing); "
        + (
            f"see the manifest {report.manifest}"
            if report.manifest
            else f"no manifest: {report.manifest_error}"
        )
        + "; rerun the same call to resume"
    )


def _masked(call: Callable[_P, _R]) -> Callable[_P, _R]:
    """``call`` with any registered secret masked in what leaves it: the records it logs (the
    host's handlers do not redact) and the errors it raises."""

    @functools.wraps(call)
    def masked(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with redacted_records():
            try:
                return call(*args, **kwargs)
            except ExporterError as exc:
                _mask(exc)
                raise

    return masked


def _mask(exc: ExporterError) -> None:
    """Any registered secret in the error's message masked (a server may echo the key)."""
    exc.args = tuple(redact(arg) if isinstance(arg, str) else arg for arg in exc.args)
    if isinstance(exc, ApiError):
        exc.message = redact(exc.message)


def _as_date(as_of: date | str | None) -> date | None:
    try:
        if isinstance(as_of, str):
            return parse_day(as_of)
        return None if as_of is None else check_date(as_of)
    except ValueError as exc:
        raise ConfigError(f"as_of: {exc}") from None


@_masked
def run(
    config: str | Path | Config,
    *,
    as_of: date | str | None = None,
    out: str | Path | None = None,
    sandbox: bool = False,
    shard: tuple[int, int] | None = None,
    fresh: bool = False,
    work_dir: str | Path | None = None,
    check: bool = True,
    run_id: str | None = None,
) -> RunReport:
    """Export what ``config`` (a YAML path or a loaded Config) describes, as
    ``braze-export run`` does, and report it.

    ``as_of``: the day after the last exported day (a date or ``YYYY-MM-DD``; default today
    in the config's zone). ``out``: a directory or ``s3://``/``gs://``/``az://`` prefix
    (default ``output.dir``; with ``sandbox=True``, ``./sandbox-out``). ``shard=(k, n)``: the
    k-th of n disjoint parts. ``fresh``: fetch everything again. ``work_dir``: object storage
    only, where the resume state lives while the run goes. ``sandbox``: an in-process sandbox
    on loopback, no key needed.

    Raises ConfigError (CLI exit 2), AuthError (3), Unreachable (4), DirectoryBusy (5), and,
    with ``check`` (the default), IncompleteRun (1, 129, 130, 143) carrying the report. Signal
    handlers (a first SIGINT/SIGTERM stops cleanly) are installed only on the main thread, and
    not for a signal set to be ignored; the previous ones are put back afterwards. Not from a
    running event loop (it runs its own, as ``asyncio.run``).
    """
    check_out(None if out is None else str(out))
    if isinstance(work_dir, str):  # Path("") is ".": an empty string must be caught as one
        check_out(work_dir, "work_dir", WORK_DIR_DEFAULT)
    day = _as_date(as_of)
    if shard is not None and not 1 <= shard[0] <= shard[1] <= 1000:
        raise ConfigError(f"shard: must be (K, N) with 1 <= K <= N <= 1000, got {shard!r}")
    loaded, plan = load_plan(config, day, shard)
    run_id = run_id or new_run_id()
    prepared = prepare_run(
        loaded,
        plan,
        out=None if out is None else str(out),
        sandbox=sandbox,
        fresh=fresh,
        run_id=run_id,
        command=f"exporter.run({str(loaded.source)!r})",  # shown to a run that finds it held
        work_dir=None if work_dir is None else Path(work_dir),
        redraw_progress=False,  # an orchestrator's log, not a terminal
    )
    outcome = asyncio.run(execute(prepared.config, prepared.plan, prepared.key, prepared.options))
    if outcome.result.auth_error is not None and outcome.exit_code == EXIT_AUTH:
        raise outcome.result.auth_error
    if outcome.result.unreachable is not None and outcome.exit_code == EXIT_UNREACHABLE:
        raise outcome.result.unreachable
    report = report_of(outcome, run_id)
    if outcome.exit_code == EXIT_BUSY:  # the object storage lock was taken over mid-run
        raise DirectoryBusy(
            f"another run took over the lock of {prepared.options.remote}; this run stopped "
            f"({report.series_complete} of {report.series} series complete)"
        )
    if check and outcome.exit_code != EXIT_OK:
        raise IncompleteRun(_incomplete(report), report)
    return report
