"""Command line: parse arguments, set up logging, wire the parts, map outcomes to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import ApiKey, Config, load_config, resolve_api_key
from exporter.errors import ConfigError
from exporter.plan import Plan, build_plan
from exporter.progress import Progress, eta_seconds, format_duration, status_line, summary_lines
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, run_sandbox, start_sandbox
from exporter.state import STATE_FILE, State
from exporter.writers import WORK_DIR, PartitionWriter

__all__ = ["EXIT_AUTH", "EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH = 0, 1, 2, 3
EXIT_SIGNAL = {signal.SIGINT: 130, signal.SIGTERM: 143}

log = logging.getLogger("exporter")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}".replace("\n", "\nerror: "), file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Only before the run installs its own handlers (while starting up): nothing to save.
        print("interrupted", file=sys.stderr)
        return EXIT_SIGNAL[signal.SIGINT]
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="braze-export",
        description="Export Braze app session series (GET /sessions/data_series) to files.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check a config and summarise it")
    validate.add_argument("config")
    validate.set_defaults(func=_cmd_validate)

    plan = sub.add_parser("plan", help="show the requests a run would make, and their cost")
    plan.add_argument("config")
    plan.add_argument("--as-of", type=_date, help="YYYY-MM-DD; default: today in the config's zone")
    plan.add_argument("--json", action="store_true", help="list every request as JSON")
    plan.set_defaults(func=_cmd_plan)

    run = sub.add_parser("run", help="export")
    run.add_argument("config")
    run.add_argument("--as-of", type=_date, help="YYYY-MM-DD; default: today in the config's zone")
    run.add_argument("--out", help="output directory (overrides output.dir)")
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
        help="seconds between progress lines (default 0.5 on a terminal, else 10)",
    )
    run.set_defaults(func=_cmd_run)

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
        "--restate",
        action="store_true",
        help="recent days read differently every time the sandbox starts",
    )
    box.set_defaults(func=_cmd_sandbox)
    return parser


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a date YYYY-MM-DD, got {text!r}") from None


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's own loggers would repeat what our errors already say, with URLs.
    logging.getLogger("aiohttp").setLevel(logging.ERROR)


def _load(args: argparse.Namespace) -> tuple[Config, Plan]:
    config = load_config(args.config)
    as_of = getattr(args, "as_of", None) or datetime.now(config.tz).date()
    plan = build_plan(config, as_of)
    for warning in plan.warnings:
        log.warning("%s", warning)
    return config, plan


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    series = {s for e in config.exports for s in _series_of(e)}
    key_var = config.braze.api_key_env
    key_state = (
        "set"
        if os.environ.get(key_var) or os.environ.get(f"{key_var}_FILE")
        else ("NOT set: run will refuse to start without it, unless --sandbox")
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


def _series_of(export: Any) -> list[tuple[str, str | None, str]]:
    return [(s, a, u) for s in export.segment_ids for a in export.app_ids for u in export.units]


def _cmd_plan(args: argparse.Namespace) -> int:
    config, plan = _load(args)
    limits = config.limits
    if args.json:
        doc = {
            "as_of": plan.as_of.isoformat(),
            "timezone": plan.timezone,
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
    allowed = limits.requests_per_hour * limits.share
    eta = eta_seconds(len(plan.requests), limits.requests_per_hour, limits.share, limits.reserve)
    periods = sum(r.length for r in plan.requests)
    print(f"plan for {config.source} as of {plan.as_of} ({plan.timezone})")
    print(f"series:   {len(plan.series):,}")
    print(f"requests: {len(plan.requests):,} (for {periods:,} periods, at most 100 per request)")
    print(
        f"budget:   {allowed:,.0f} requests/hour ({limits.share:.0%} of "
        f"{limits.requests_per_hour:,}; {allowed / 3600:.1f}/s), pausing when the workspace "
        f"has {limits.reserve:.0%} left"
    )
    print(f"time:     at least {format_duration(eta)} at that rate")
    return EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    options = SandboxOptions(
        api_key=args.api_key,
        limit=args.limit,
        window_s=args.window,
        fault_rate=args.fault_rate,
        seed=args.seed,
        slow_s=args.slow_s,
        reject_segments=frozenset(args.reject_segment),
        deny=args.deny,
        restate=secrets.randbelow(10**6) + 1 if args.restate else 0,
    )
    if not 0 <= options.fault_rate <= 1:
        raise ConfigError(f"--fault-rate must be between 0 and 1, got {options.fault_rate}")
    run_sandbox(options, args.host, args.port)
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    config, plan = _load(args)
    key = None if args.sandbox else resolve_api_key(config)
    out_dir = Path(args.out or config.output.dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output directory {out_dir} exists and is not a directory")
    return asyncio.run(_run(args, config, plan, key, out_dir))


async def _run(
    args: argparse.Namespace, config: Config, plan: Plan, key: ApiKey | None, out_dir: Path
) -> int:
    # Imported here: the pipeline module is only needed by this command.
    from exporter.client import BrazeClient, make_session
    from exporter.pipeline import Pipeline

    limits = config.limits
    runner = None
    endpoint = config.braze.endpoint
    if key is None:
        key = ApiKey(secrets.token_urlsafe(24))
        runner, endpoint = await start_sandbox(SandboxOptions(api_key=key.reveal()))
        log.info("sandbox started on %s", endpoint)
    state = State(
        out_dir / WORK_DIR / STATE_FILE, scope=f"{config.output.format}|{config.timezone}"
    )
    writer = PartitionWriter(out_dir, config.output.format)
    if removed := writer.remove_stale_temp_files():
        log.info("removed %d temp file(s) left by an interrupted run", removed)
    try:
        async with make_session(limits.concurrency) as session:
            budget = Budget(limits.requests_per_hour, limits.share, limits.reserve)
            pipeline = Pipeline(
                client=BrazeClient(session, endpoint, key, timeout_s=config.braze.timeout_s),
                budget=budget,
                writer=writer,
                state=state,
                policy=RetryPolicy(max_attempts=limits.max_attempts),
                concurrency=limits.concurrency,
                fresh=args.fresh,
            )
            received: list[int] = []

            def on_signal(signum: int) -> None:
                if not received:
                    log.warning(
                        "received %s: finishing requests in flight, then stopping",
                        signal.Signals(signum).name,
                    )
                received.append(signum)
                pipeline.stop()

            loop = asyncio.get_running_loop()
            for signum in EXIT_SIGNAL:
                loop.add_signal_handler(signum, on_signal, signum)
            interactive = sys.stderr.isatty()
            interval = args.progress_interval or (0.5 if interactive else 10.0)
            progress = Progress(
                sys.stderr,
                lambda: status_line(pipeline.result, plan, pipeline.elapsed()),
                interactive=interactive,
                interval_s=interval,
            )
            ticker = asyncio.create_task(progress.run())
            try:
                result = await pipeline.run(plan)
            finally:
                ticker.cancel()
                await asyncio.wait([ticker])
                progress.close()
                for signum in EXIT_SIGNAL:
                    loop.remove_signal_handler(signum)
    finally:
        state.close()
        if runner is not None:
            await runner.cleanup()

    for line in summary_lines(result, plan, budget):
        print(line)
    if received:
        print(
            f"interrupted by {signal.Signals(received[0]).name}: completed requests are saved; "
            f"rerun the same command to resume",
            file=sys.stderr,
        )
        return EXIT_SIGNAL[signal.Signals(received[0])]
    if result.auth_error is not None:
        print(f"error: {result.auth_error}", file=sys.stderr)
        return EXIT_AUTH
    return EXIT_FAILED if result.failures else EXIT_OK
