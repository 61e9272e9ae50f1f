"""Command line: parse arguments, set up logging, call the parts, print, map to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path

from exporter import __version__
from exporter.config import ApiKey, Config, load_config, resolve_api_key
from exporter.doctor import DoctorReport, diagnose
from exporter.errors import ConfigError, DirectoryBusy, ExporterError
from exporter.logs import logging_for_run, new_run_id, set_secret
from exporter.manifest import verify
from exporter.plan import Plan, build_plan
from exporter.progress import eta_seconds, format_duration
from exporter.remote import CHECKPOINT_S, LOCK_TTL_S, ObjectStore, is_remote
from exporter.runner import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    RunOptions,
    execute,
)
from exporter.sandbox import (
    HOUR_LABELS,
    RESET_STYLES,
    SEMANTICS,
    SandboxOptions,
    run_sandbox,
    start_sandbox,
)
from exporter.storage import WORK_DIR

__all__ = [
    "EXIT_AUTH",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SANDBOX_OUT",
    "build_parser",
    "main",
]

SANDBOX_OUT = "sandbox-out"  # never the config's output.dir: invented rows beside real ones

log = logging.getLogger("exporter")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["braze-export", *(sys.argv[1:] if argv is None else argv)])
    args.run_id = new_run_id()
    with logging_for_run(args.log_level, args.log_format, run_id=args.run_id) as handler:
        args.log_handler = handler
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}".replace("\n", "\nerror: "), file=sys.stderr)
        return EXIT_USAGE
    except DirectoryBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except ExporterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        # Only before a run installs its own handlers (while starting up): nothing to save.
        print("interrupted", file=sys.stderr)
        return EXIT_SIGNAL[signal.SIGINT]
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="braze-export",
        description="Export Braze app session series (GET /sessions/data_series) to files.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="default INFO",
    )
    parser.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="text for people (default), json: one object per line with run_id and event",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a config and summarise it")
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)

    plan = sub.add_parser("plan", help="show the requests a run would make, and their cost")
    _plan_args(plan)
    plan.add_argument("--json", action="store_true", help="list every request as JSON")
    plan.set_defaults(func=_cmd_plan)

    run = sub.add_parser("run", help="export")
    _plan_args(run)
    run.add_argument(
        "--out",
        help="output directory, or s3://bucket/prefix, gs://..., az://... (default: "
        f"output.dir; with --sandbox: ./{SANDBOX_OUT})",
    )
    run.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="object storage only: local directory for the resume state while the run goes "
        "(default: under $TMPDIR); it is checkpointed to the prefix as the run goes",
    )
    run.add_argument(
        "--checkpoint-interval",
        type=float,
        default=CHECKPOINT_S,
        metavar="S",
        help="object storage only: seconds between checkpoints of the resume state (and "
        "renewals of the lock); a rerun on a fresh disk repeats at most this much work "
        f"(default {CHECKPOINT_S:.0f})",
    )
    run.add_argument(
        "--sandbox",
        action="store_true",
        help="run against an in-process sandbox on loopback (no key needed)",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="fetch everything again, ignoring what earlier runs completed",
    )
    run.add_argument(
        "--progress-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between progress updates (default 0.5 on a terminal, else 10)",
    )
    run.set_defaults(func=_cmd_run)

    doctor = sub.add_parser(
        "doctor",
        help="first contact with a workspace: endpoint, key, rate limit, label formats and "
        "window offset, with a verdict (at most 5 requests)",
    )
    doctor.add_argument("config")
    doctor.add_argument(
        "--sandbox", action="store_true", help="check against the in-process sandbox instead"
    )
    doctor.set_defaults(func=_cmd_doctor)

    check = sub.add_parser(
        "verify", help="check every data file against the latest run that recorded it"
    )
    check.add_argument(
        "dir", help="the output directory (or object storage prefix) of earlier runs"
    )
    check.set_defaults(func=_cmd_verify)

    box = sub.add_parser("sandbox", help="serve the Braze-compatible sandbox")
    box.add_argument("--host", default="127.0.0.1")
    box.add_argument("--port", type=int, default=8080)
    box.add_argument("--api-key", help="accept only this Bearer token (default: any)")
    box.add_argument(
        "--limit",
        type=int,
        default=250_000,
        help="requests per window, 0 for no limit (default 250000)",
    )
    box.add_argument("--window", type=float, default=3600.0, help="seconds (default 3600)")
    box.add_argument("--fault-rate", type=float, default=0.0, help="share of faulty responses")
    box.add_argument("--seed", type=int, default=0, help="fault seed (default 0)")
    box.add_argument(
        "--slow-s", type=float, default=60.0, help="how long a slow fault stalls (default 60)"
    )
    box.add_argument(
        "--reject-segment",
        action="append",
        default=[],
        metavar="ID",
        help="answer 400 for this segment (repeatable)",
    )
    box.add_argument("--deny", action="store_true", help="answer 403 to everything")
    box.add_argument(
        "--reset-style",
        choices=RESET_STYLES,
        default="seconds",
        help="how X-RateLimit-Reset is written: seconds (epoch seconds, as Braze does), ms "
        "(epoch milliseconds), past (a time already gone) or missing (default seconds)",
    )
    box.add_argument(
        "--restate",
        action="store_true",
        help="recent days read differently every time the sandbox starts",
    )
    box.add_argument(
        "--semantics",
        choices=SEMANTICS,
        default="contains",
        help="which periods a request covers: the one containing ending_at and those before "
        "it (contains, default), the ones before it (exclusive), or contains with days cut "
        "in UTC (utc)",
    )
    box.add_argument(
        "--hour-labels",
        choices=sorted(HOUR_LABELS),
        default="naive",
        help="hour time labels: 2024-01-05T10:00:00 (naive, default), ...Z (z), ...+00:00 (offset)",
    )
    box.set_defaults(func=_cmd_sandbox)
    return parser


def _plan_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("config")
    command.add_argument(
        "--as-of", type=_date, help="YYYY-MM-DD; default: today in the config's time zone"
    )
    command.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only the K-th of N disjoint parts of the series, with 1/N of "
        "the budget (for N parallel jobs)",
    )


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {text!r}") from None


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 1000:
        raise argparse.ArgumentTypeError(f"must be K/N with 1 <= K <= N <= 1000, got {text!r}")
    return int(match[1]), int(match[2])


def _load(args: argparse.Namespace) -> tuple[Config, Plan]:
    config = load_config(args.config)
    today = datetime.now(config.tz).date()
    if args.as_of is not None and args.as_of > today:
        raise ConfigError(
            f"--as-of {args.as_of} is after today ({today} in {config.timezone}): only days "
            "that have ended can be exported"
        )
    as_of = args.as_of or today
    plan = build_plan(config, as_of, args.shard)
    for warning in plan.warnings:
        log.warning("%s", warning, extra={"event": "plan_warning"})
    return config, plan


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    series = build_plan(config, datetime.now(config.tz).date()).series  # as the planner counts
    key_var = config.braze.api_key_env
    key_state = (
        "set"
        if os.environ.get(key_var) or os.environ.get(f"{key_var}_FILE")
        else "NOT set: run will refuse to start without it, unless --sandbox"
    )
    print(
        f"{config.source}: valid. {len(config.exports)} export(s) "
        f"({', '.join(e.name for e in config.exports)}) covering {len(series)} series; days cut "
        f"in {config.timezone}; {config.output.format} files under {config.output.dir}/; endpoint "
        f"{config.braze.endpoint}; key from ${key_var} ({key_state}); up to "
        f"{config.limits.requests_per_hour * config.limits.share:,.0f} requests/hour with "
        f"{config.limits.concurrency} in flight."
    )
    return EXIT_OK


def _cmd_plan(args: argparse.Namespace) -> int:
    config, plan = _load(args)
    if args.json:
        doc = {
            "as_of": plan.as_of.isoformat(),
            "timezone": plan.timezone,
            "shard": None if plan.shard is None else f"{plan.shard[0]}/{plan.shard[1]}",
            "series": len(plan.series),
            "requests": [
                {
                    "segment_id": r.series.segment_id,
                    "app_id": r.series.app_id,
                    "unit": r.series.unit,
                    "length": r.length,
                    "ending_at": r.ending_at,
                }
                for r in plan.requests
            ],
        }
        json.dump(doc, sys.stdout, indent=1)
        print()
        return EXIT_OK
    limits = config.limits
    shards = plan.shard[1] if plan.shard else 1
    share = limits.share / shards
    allowed = limits.requests_per_hour * share
    eta = eta_seconds(len(plan.requests), limits.requests_per_hour, share, limits.reserve)
    periods = sum(r.length for r in plan.requests)
    part = f", shard {plan.shard[0]}/{shards}" if plan.shard else ""
    print(f"plan for {config.source} as of {plan.as_of} ({plan.timezone}{part})")
    print(f"series:   {len(plan.series):,}")
    print(f"requests: {len(plan.requests):,} (for {periods:,} periods, at most 100 per request)")
    print(
        f"budget:   {allowed:,.0f} requests/hour ({share:.0%} of "
        f"{limits.requests_per_hour:,}; {allowed / 3600:.1f}/s), pausing when the workspace "
        f"has {limits.reserve:.0%} left"
    )
    print(f"time:     at least {format_duration(eta)} at that rate")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config, plan = _load(args)
    key = None if args.sandbox else resolve_api_key(config)
    if key is not None:
        set_secret(args.log_handler, key.reveal())
    if args.out:
        target = args.out
    elif args.sandbox:
        target = SANDBOX_OUT
        log.info(
            "sandbox run: writing to %s/, not to output.dir (%s); --out DIR chooses",
            target,
            config.output.dir,
            extra={"event": "sandbox_out"},
        )
    else:
        target = config.output.dir
    out_dir = Path(target)
    if not 0 < args.checkpoint_interval <= LOCK_TTL_S / 2:
        raise ConfigError(
            f"--checkpoint-interval must be above 0 and at most {LOCK_TTL_S / 2:.0f} seconds "
            f"(the lock expires after {LOCK_TTL_S:.0f} seconds without renewal)"
        )
    if is_remote(target):
        ObjectStore.open(target).close()  # a missing backend is a config error, up front
    else:
        try:
            (out_dir / WORK_DIR).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"output directory {out_dir}: cannot use it ({exc.strerror})"
            ) from None
    options = RunOptions(
        remote=target if is_remote(target) else None,
        work_dir=args.work_dir,
        checkpoint_s=args.checkpoint_interval,
        out_dir=out_dir,
        run_id=args.run_id,
        fresh=args.fresh,
        sandbox=args.sandbox,
        progress_interval=args.progress_interval,
        command=args.command_line,
    )
    outcome = asyncio.run(execute(config, plan, key, options))
    for line in outcome.summary:
        print(line)
    print(f"manifest: {outcome.manifest}")
    log.info(
        "run finished with exit status %d",
        outcome.exit_code,
        extra={"event": "run_finished", "status": outcome.exit_code},
    )
    if outcome.signal_name:
        print(
            f"interrupted by {outcome.signal_name}: completed requests are saved; "
            f"rerun the same command to resume",
            file=sys.stderr,
        )
    elif outcome.result.auth_error is not None:
        print(f"error: {outcome.result.auth_error}", file=sys.stderr)
    elif outcome.result.unreachable is not None:
        print(f"error: {outcome.result.unreachable}", file=sys.stderr)
    return outcome.exit_code


def _cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    as_of = datetime.now(config.tz).date()
    key = None if args.sandbox else resolve_api_key(config)
    if key is not None:
        set_secret(args.log_handler, key.reveal())

    async def check() -> DoctorReport:
        if key is not None:
            return await diagnose(config, key, config.braze.endpoint, as_of)
        token = ApiKey(secrets.token_urlsafe(24))
        runner, url = await start_sandbox(SandboxOptions(api_key=token.reveal()))
        try:
            return await diagnose(config, token, url, as_of)
        finally:
            await runner.cleanup()

    report = asyncio.run(check())
    for line in report.lines:
        print(line)
    print(f"verdict: {report.verdict}")
    return report.exit_code


def _cmd_verify(args: argparse.Namespace) -> int:
    report = verify(args.dir)
    for kind in ("changed", "missing", "unknown"):
        for name in getattr(report, kind):
            print(f"{kind}: {name}")
    journals = f", {report.journals} journal(s) of killed runs" if report.journals else ""
    print(
        f"{report.ok} file(s) ok, {len(report.changed)} changed, {len(report.missing)} missing, "
        f"{len(report.unknown)} unknown ({report.manifests} manifest(s){journals})"
    )
    return EXIT_FAILED if report.changed or report.missing or report.unknown else EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    if not 0 <= args.fault_rate <= 1:
        raise ConfigError(f"--fault-rate must be between 0 and 1, got {args.fault_rate}")
    options = SandboxOptions(
        api_key=args.api_key,
        limit=args.limit,
        window_s=args.window,
        fault_rate=args.fault_rate,
        seed=args.seed,
        slow_s=args.slow_s,
        reject_segments=frozenset(args.reject_segment),
        deny=args.deny,
        reset_style=args.reset_style,
        restate=secrets.randbelow(10**6) + 1 if args.restate else 0,
        semantics=args.semantics,
        hour_labels=args.hour_labels,
    )
    run_sandbox(options, args.host, args.port)
    return EXIT_OK
