"""One export run, wired: session, budget, client, writer, state, pipeline, progress, manifest.

The CLI parses arguments and prints; this module owns the lifetime of everything a run opens,
turns signals into a clean stop, and decides the exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from exporter.client import BrazeClient, make_session
from exporter.config import UNITS, ApiKey, Config, Unit
from exporter.coverage import COMPLETE, Calibration
from exporter.dimensions import TableWriter
from exporter.errors import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGHUP,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    ConfigError,
    ExporterError,
    Unreachable,
)
from exporter.manifest import RUNS_DIR, build_manifest, recorded_files, write_manifest
from exporter.pipeline import Pipeline, RunResult
from exporter.plan import Plan, PlanRequest
from exporter.presence import (
    DISPLACED,
    FileCheck,
    Files,
    LocalFiles,
    Ownership,
    StoreFiles,
    check_files,
)
from exporter.progress import Progress, pause_notes, status_line, summary_lines
from exporter.ratelimit import Budget
from exporter.remote import CHECKPOINT_S, RemoteRun, default_work_dir
from exporter.resolve import Discovery
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, start_sandbox
from exporter.series import KINDS, WORKSPACE_POOL
from exporter.state import State, state_path
from exporter.storage import WORK_DIR, DirLock, Journal
from exporter.writers import PartitionWriter, WrittenFile, start_encoder

__all__ = [
    "EXIT_AUTH",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_SIGNAL",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "RunOptions",
    "RunOutcome",
    "execute",
    "run_layout",
    "state_scope",
]

# The signals that stop a run cleanly, and the status each ends it with. SIGHUP: a closed
# terminal or SSH session stops the run as SIGTERM would (nohup ignores it: then it goes on).
EXIT_SIGNAL = {
    signal.SIGHUP: EXIT_SIGHUP,
    signal.SIGINT: EXIT_SIGINT,
    signal.SIGTERM: EXIT_SIGTERM,
}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOptions:
    out_dir: Path
    run_id: str
    fresh: bool = False
    sandbox: bool = False
    progress_interval: float | None = None
    redraw_progress: bool = True  # one line redrawn on a terminal (not with JSON logs)
    command: str = "braze-export run"  # shown to a run that finds the directory held
    remote: str | None = None  # an object storage URL: out_dir is then unused
    work_dir: Path | None = None  # object storage: where the resume state lives while running
    checkpoint_s: float = CHECKPOINT_S  # object storage: how often the state is uploaded


@dataclass
class RunOutcome:
    exit_code: int
    result: RunResult
    summary: list[str]
    manifest: Path | str
    plan: Plan  # as run: with the ids discovery found
    signal_name: str | None = None
    manifest_error: str | None = None  # why ``manifest`` could not be written (disk full)


def _exit_code(result: RunResult, signals: list[int]) -> int:
    if signals:
        return EXIT_SIGNAL[signal.Signals(signals[0])]
    if result.auth_error is not None:
        return EXIT_AUTH
    if result.unreachable is not None:
        return EXIT_UNREACHABLE
    coverage = result.coverage
    complete = coverage is not None and coverage.count(COMPLETE) == len(coverage.status)
    return EXIT_OK if complete and not result.failures else EXIT_FAILED


def source_of(endpoint: str, sandbox: bool) -> dict[str, Any]:
    """What produced the rows, for the manifest and the resume state's scope: the sandbox's
    invented data, or the Braze instance's host (its port is no part of which one it is)."""
    return {
        "sandbox": sandbox,
        "endpoint_host": "127.0.0.1" if sandbox else urlsplit(endpoint).hostname,
    }


def state_scope(config: Config, *, sandbox: bool) -> str:
    """The resume state's scope of a run (see :class:`exporter.state.State`): its source,
    format and time zone."""
    source = source_of(config.braze.endpoint, sandbox)
    origin = "sandbox" if source["sandbox"] else source["endpoint_host"]
    return f"{origin}|{config.output.format}|{config.timezone}"


def run_layout(config: Config, *, sandbox: bool) -> str:
    """What decides the files a run writes (its lock's ``layout``): only runs of one layout
    may share a directory, as its shards K/N."""
    return f"{config.fingerprint}|{sandbox}"


async def execute(
    config: Config, plan: Plan | PlanRequest, key: ApiKey | None, options: RunOptions
) -> RunOutcome:
    """Run the plan; ``key`` None means: start a sandbox in-process and use it. A
    PlanRequest is planned once discovery has found the ids it asks for."""
    started_at = time.time()
    limits = config.limits
    shards = plan.shard[1] if plan.shard else 1
    pools = {
        name: Budget(rph, share / shards, reserve, max_pause_s=limits.max_pause_s, name=name)
        for name in limits.pool_names
        for rph, share, reserve in [limits.pool(name)]
    }
    budget = pools[WORKSPACE_POOL]
    # Series kinds paced by a pool other than the workspace's (Pipeline's ``budgets``).
    by_kind = {
        kind: pools[limits.pool_for(kind)]
        for kind in KINDS
        if limits.pool_for(kind) != WORKSPACE_POOL
    }
    source = source_of(config.braze.endpoint, key is None)
    signals: list[int] = []
    async with contextlib.AsyncExitStack() as stack:  # closes in reverse order
        # Parquet's pyarrow must import before anything is written or sent: an exit 2 for
        # it leaves the output untouched.
        encoder = await start_encoder(config.output.format, local=options.remote is None)
        if encoder is not None:
            stack.push_async_callback(encoder.aclose)  # also closed by the writer: harmless
        layout = run_layout(config, sandbox=key is None)
        remote: RemoteRun | None = None
        if options.remote is None:
            root = options.out_dir
            lock = DirLock.acquire(root, layout=layout, shard=plan.shard, command=options.command)
            stack.callback(lock.release)
            if lock.stale_temp_files:
                log.info(
                    "removed %d temp file(s) left by an interrupted run", lock.stale_temp_files
                )
            holder, state_dir = lock.holder, root / WORK_DIR
        else:
            root = Path(".")  # paths relative to the prefix
            remote = RemoteRun(
                options.remote,
                options.work_dir or default_work_dir(options.remote),
                layout=layout,
                shard=plan.shard,
                command=options.command,
                run_id=options.run_id,
                checkpoint_s=options.checkpoint_s,
            )
            stack.callback(remote.close)
            holder, state_dir = remote.lock.holder, remote.work_dir
        scope = state_scope(config, sandbox=key is None)
        try:
            state = State(
                state_path(state_dir, plan.shard),
                scope=scope,
                as_of=plan.as_of.toordinal(),
                run_id=options.run_id,
                root=root,
                sequence=holder.sequence,
            )
        except ExporterError as exc:
            if options.remote is None:
                raise
            state_name = state_path(state_dir, plan.shard).name
            raise Unreachable(
                f"{options.remote}/{WORK_DIR}/{state_name}: the checkpointed resume state "
                f"cannot be used ({exc}). If it is damaged, delete that object to go on: the "
                "data stays, the next run fetches every period of its windows again"
            ) from None
        stack.callback(state.close)
        _refuse_other_sources(state, scope, options.remote or str(options.out_dir))
        journal: Journal | None = None  # object storage: the checkpoints upload the journal
        if remote is None:
            journal = Journal(root, options.run_id, holder.sequence)
            stack.callback(journal.close, remove=False)
        checked = _check_files(state, root, remote, config.output.format, options.run_id, plan)
        if journal is not None:
            journal.record((root / path, 0, None) for path in checked.missing + checked.changed)
            journal.record((root / path, rows, sha256) for path, rows, sha256 in checked.vouched)

        def on_written(files: list[WrittenFile]) -> None:
            state.note_written(files)
            if journal is not None:
                journal.record((f.path, f.rows, f.sha256) for f in files)

        writer = PartitionWriter(
            root,
            config.output.format,
            token=holder.token,
            on_written=on_written,
            on_staged=state.note_staged,
            store=None if remote is None else remote.store,
            tz=config.tz,
            encoder=encoder,
            ownership=Ownership(
                state,
                functools.partial(recorded_files, root, None if remote is None else remote.store),
                options.run_id,
                checked,
                LocalFiles.unknown_writes if remote is None else StoreFiles.unknown_writes,
            ),
        )
        stack.push_async_callback(writer.aclose)
        endpoint = config.braze.endpoint
        if key is None:
            key = ApiKey(secrets.token_urlsafe(24))
            runner, endpoint = await start_sandbox(SandboxOptions(api_key=key.reveal()))
            stack.push_async_callback(runner.cleanup)
            log.info("sandbox started on %s", endpoint, extra={"event": "sandbox_started"})
        async with make_session(limits.concurrency) as session:
            client = BrazeClient(session, endpoint, key, timeout_s=config.braze.timeout_s)
            pipeline = Pipeline(
                client=client,
                budget=budget,
                budgets=by_kind,
                writer=writer,
                state=state,
                policy=RetryPolicy(max_attempts=limits.max_attempts),
                concurrency=limits.concurrency,
                fresh=options.fresh,
                calibration=Calibration(_saved_offsets(state)),
            )
            if remote is not None:
                remote.start(state, on_lost=pipeline.stop)
            store = None if remote is None else remote.store
            tables = TableWriter(root, config.output.format, token=holder.token, store=store)
            discovery = Discovery(config, pipeline, pools, tables)
            result = await _with_signals_and_progress(pipeline, plan, discovery, signals, options)
        if discovery.plan is not None:  # as discovered and cut by details
            plan = discovery.plan
        elif isinstance(plan, PlanRequest):
            # Planned with what discovery found; with nothing when it was stopped early.
            plan = discovery.plan or plan.build(discovery.found_or_nothing())
        if result.coverage is None:  # a second signal cancelled the lists or details: account
            await pipeline.run(plan, send=False)
        _save_offsets(state, result.calibration)
        if client.sandbox:  # a standalone sandbox named by the endpoint: invented rows
            source = {**source, "sandbox": True}
        code = _exit_code(result, signals)
        if code == EXIT_OK and discovery.failed:
            code = EXIT_FAILED
        if remote is not None and remote.lost is not None:
            code = EXIT_BUSY
        doc = build_manifest(
            run_id=options.run_id,
            config=config,
            plan=plan,
            result=result,
            budget=budget,
            started_at=started_at,
            finished_at=time.time(),
            exit_code=code,
            source=source,
            sequence=holder.sequence,
            pools={name: pool for name, pool in pools.items() if name != WORKSPACE_POOL},
            discovery=discovery.docs,
            file_check=checked.doc(state),
            skipping=discovery.skipping.doc(),
        )
        if discovery.table_docs:
            doc["dimensions"] = discovery.table_docs
        manifest: Path | str = options.out_dir / RUNS_DIR / f"{options.run_id}.json"
        manifest_error: str | None = None
        try:
            manifest = write_manifest(root, doc, state.files(), holder.token, store=store)
        except (OSError, sqlite3.Error) as exc:
            # A full disk fails the series first and then this: the summary must still come
            # out, and the status must not say "complete" when the run left no record.
            manifest_error = getattr(exc, "strerror", None) or str(exc)
            code = EXIT_FAILED if code == EXIT_OK else code
            log.error(
                "cannot write the run manifest %s: %s",
                manifest,
                manifest_error,
                extra={"event": "manifest_failed"},
            )
        files = state.file_count()
        checked_line = _file_check_line(checked, state)
        # The manifest now vouches for every file the run wrote (each is noted in the state
        # as it lands), so the journal goes. An interrupted run keeps it: a write cancelled
        # at the stop may still land after the manifest. So does a run whose manifest could
        # not be written: the journal is its only record.
        keep_journal = result.interrupted or manifest_error is not None
        if remote is not None:
            try:
                await remote.finish(journal_done=not keep_journal)
            except OSError as exc:  # the store went away at the end: say so, still summarise
                code = EXIT_FAILED if code == EXIT_OK else code
                log.error(
                    "the final checkpoint of the resume state failed: %s; a rerun repeats the "
                    "requests since the last one",
                    exc,
                    extra={"event": "checkpoint_failed"},
                )
        elif journal is not None and not keep_journal:
            journal.close(remove=True)
    name = signal.Signals(signals[0]).name if signals else None
    summary = discovery.summary() + summary_lines(result, plan, budget, files)
    summary.append(checked_line)
    if source["sandbox"]:
        summary.append("source: braze-export's sandbox: invented rows, not Braze data")
    return RunOutcome(code, result, summary, manifest, plan, name, manifest_error)


def _check_files(
    state: State,
    root: Path,
    remote: RemoteRun | None,
    fmt: str,
    run_id: str,
    plan: Plan | PlanRequest,
) -> FileCheck:
    """Before anything is planned: take back the done periods whose file is gone or changed
    (exporter.presence). Unreachable (exit 4) when the output cannot be listed, or the
    state cannot take the periods back (a full disk)."""
    files: Files = LocalFiles(root) if remote is None else StoreFiles(remote.store)
    try:
        return check_files(state, files, fmt=fmt, run_id=run_id, shard=plan.shard)
    except (OSError, sqlite3.Error) as exc:
        raise Unreachable(
            f"cannot check the files earlier runs wrote ({exc}); fix the output, then rerun"
        ) from None


def _file_check_line(checked: FileCheck, state: State) -> str:
    line = f"files of earlier runs: {checked.checked} checked"
    if checked.missing or checked.changed:
        moved = f" (moved to {DISPLACED}/)" if checked.changed else ""
        line += (
            f"; {len(checked.missing)} gone, {len(checked.changed)} changed{moved}: "
            f"{checked.periods_taken_back} done period(s) taken back, "
            f"{checked.refetched(state)} fetched again"
        )
    if checked.vouched:
        line += f"; {len(checked.vouched)} whose run records are gone vouched for anew"
    if checked.unreadable:
        line += f" ({len(checked.unreadable)} unreadable run manifest(s) moved to {DISPLACED}/)"
    if checked.foreign:
        line += (
            f"; {len(checked.foreign)} that no run wrote moved to {DISPLACED}/ and written "
            "anew, never merged into"
        )
    return line


def _refuse_other_sources(state: State, scope: str, where: str) -> None:
    """Rows of another source (the sandbox, another Braze host) or days cut in another zone
    would be merged into the same partition files as this run's: refuse, before anything."""
    origin, fmt, zone = scope.split("|", 2)
    for other in sorted(state.scopes()):
        their_origin, their_fmt, their_zone = [*other.split("|", 2), "", ""][:3]
        if their_fmt != fmt or other == scope:
            continue
        what = (
            f"rows from {'the sandbox' if their_origin == 'sandbox' else their_origin}"
            if their_origin != origin
            else f"days cut in {their_zone}"
        )
        raise ConfigError(
            f"{where} already holds {fmt} {what}; this run ("
            f"{'the sandbox' if origin == 'sandbox' else origin}, days cut in {zone}) would "
            "merge its rows into the same files. Use another --out (or output.dir), or "
            "remove that output first"
        )


def _saved_offsets(state: State) -> dict[Unit, int]:
    """Window offsets an earlier run into this directory measured: start from them."""
    saved: dict[Unit, int] = {}
    for unit in UNITS:
        value = state.get_meta(f"offset.{unit}")
        if value is not None and value.lstrip("-").isdigit():
            saved[unit] = int(value)
    return saved


def _save_offsets(state: State, calibration: Calibration) -> None:
    for unit in UNITS:
        if calibration.measured(unit):
            state.set_meta(f"offset.{unit}", str(calibration.shift(unit)))


async def _with_signals_and_progress(
    pipeline: Pipeline,
    plan: Plan | PlanRequest,
    discovery: Discovery,
    signals: list[int],
    options: RunOptions,
) -> RunResult:
    async def work() -> RunResult:
        built = await discovery.run(plan)  # the lists first (none: the plan as it is)
        result = pipeline.result
        if not (result.auth_error or result.unreachable or result.interrupted):
            built = await discovery.refine(built)  # campaigns' and Canvases' details
        stop = result.auth_error or result.unreachable or result.interrupted
        return await pipeline.run(built, send=not stop)

    def status() -> str:
        current = discovery.plan
        budgets = discovery.pools.values()
        if current is None:
            return " | ".join([discovery.status(), *pause_notes(budgets)])
        return status_line(pipeline.result, current, pipeline.elapsed(), budgets)

    running = asyncio.create_task(work())

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not signals:
            log.warning(
                "received %s: finishing requests in flight (%gs at most), then stopping; "
                "signal again to stop at once",
                name,
                pipeline.grace_s,
                extra={"event": "signal"},
            )
        elif len(signals) == 1:
            # The user will not wait out the grace period: cancel what is in flight now.
            # Only finished requests were recorded, so a rerun refetches just those cut off.
            log.warning("received %s again: stopping now", name, extra={"event": "signal"})
            running.cancel()
        signals.append(signum)
        pipeline.stop()

    interactive = options.redraw_progress and sys.stderr.isatty()
    if options.progress_interval is not None:
        interval = options.progress_interval
    else:
        interval = 0.5 if interactive else 10.0
    progress = Progress(
        sys.stderr,
        status,
        interactive=interactive,
        interval_s=interval,
    )
    with _signals_to(on_signal):
        ticker = asyncio.create_task(progress.run())
        try:
            return await running
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not running.cancelled() or (current is not None and current.cancelling()):
                raise  # we are being cancelled ourselves, not by a second signal
            return pipeline.result
        finally:
            ticker.cancel()
            await asyncio.wait([ticker])
            progress.close()


@contextlib.contextmanager
def _signals_to(on_signal: Callable[[int], None]) -> Iterator[None]:
    """SIGHUP, SIGINT and SIGTERM call ``on_signal`` while the run goes, then the handlers that were
    there before are back (a process that embeds the run, through :mod:`exporter.api`, keeps
    its own). Only on the main thread: only it receives signals, asyncio refuses handlers
    elsewhere, and orchestrators run tasks in threads; there the orchestrator stops the run.
    A signal the parent set to be ignored stays ignored from start to end: a non-interactive
    shell's ``cmd &`` ignores SIGINT (POSIX), ``nohup``-style wrappers SIGTERM. Taking it over
    here honoured it in the middle of a run but not before (BREAK19 finding 12)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    inherited = {signum: signal.getsignal(signum) for signum in EXIT_SIGNAL}
    previous = {s: h for s, h in inherited.items() if h is not signal.SIG_IGN}
    for signum in previous:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            loop.remove_signal_handler(signum)
            if handler is not None:  # None: a handler not set from Python, left as it is
                signal.signal(signum, handler)
