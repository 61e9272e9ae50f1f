"""Command line: parse arguments, set up logging, call the parts, print, map to exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import json
import logging
import math
import os
import re
import secrets
import shlex
import signal
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from exporter import package_version
from exporter.api import (
    SANDBOX_OUT,
    WORK_DIR_DEFAULT,
    api_key,
    check_out,
    load_plan,
    output_dir,
    prepare_run,
)
from exporter.catalog import catalog, catalog_table
from exporter.completion import SHELLS, completion_script
from exporter.config import (
    DEFAULT_KEY_ENV,
    ApiKey,
    Config,
    Limits,
    expand_home,
    key_source,
    load_config,
    parse_day,
    register_env_key,
)
from exporter.details import DETAILS
from exporter.dimensions import TABLES, listed_tables, table_path
from exporter.discover import DiscoverSpec, discovery_cost
from exporter.doctor import DoctorReport, diagnose
from exporter.errors import (
    EXIT_STATUSES,
    AuthError,
    ConfigError,
    DirectoryBusy,
    ExporterError,
    RetentionError,
    StreamUnwritable,
    Terminated,
    Unreachable,
)
from exporter.lives import SkipReport
from exporter.logs import console, logging_for_run, new_run_id
from exporter.manifest import verify
from exporter.outlook import (
    Figures,
    InTheWay,
    Outlook,
    in_the_way,
    next_requests,
    outlook,
    saved_records,
)
from exporter.plan import (
    MAX_LENGTH,
    Discovered,
    Need,
    Plan,
    Request,
    build_plan,
    count_series,
    discovery_needs,
    known_ids,
)
from exporter.presence import FileCheck
from exporter.progress import Progress, eta_seconds, format_duration
from exporter.redact import redacted_streams, register_secret
from exporter.refine import forecast, read_whole
from exporter.remote import CHECKPOINT_S, ObjectStore, is_remote
from exporter.runner import (
    EXIT_AUTH,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_SIGNAL,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    execute,
    run_layout,
    state_scope,
)
from exporter.sandbox import (
    FAULT_KINDS,
    HOUR_LABELS,
    POOLS,
    RESET_STYLES,
    SEMANTICS,
    SandboxOptions,
    run_sandbox,
    start_sandbox,
)
from exporter.sandbox_messaging import retained_sends
from exporter.series import DIMENSIONS, LIST_POOL, WORKSPACE_POOL
from exporter.starter import StarterSettings, starter_config, workspace_at, write_starter
from exporter.state import Records

__all__ = [
    "ENVIRONMENT",
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

log = logging.getLogger("exporter")


def _epilog() -> str:
    """--help's closing text: the exit statuses from their one table, then the environment."""
    lines = ["exit status:"]
    columns = ["/".join(str(code) for code in status.codes) for status in EXIT_STATUSES]
    indent = 2 + max(len(c) for c in columns) + 2  # the widest codes and two spaces
    for status, codes in zip(EXIT_STATUSES, columns, strict=True):
        wrapped = textwrap.wrap(status.brief, width=90 - indent)
        first = f"  {codes}".ljust(indent) + wrapped[0]
        lines += [first, *(f"{'':{indent}}{line}" for line in wrapped[1:])]
    return "\n".join(lines) + "\n\n" + ENVIRONMENT


ENVIRONMENT = """\
environment:
  BRAZE_API_KEY        the REST API key (the variable braze.api_key_env names; at least
                       16 characters; redacted as *** from every output and file)
  {api_key_env}_FILE   e.g. BRAZE_API_KEY_FILE: a file holding the key, read when the
                       variable is unset or empty (mounted secrets; a regular file
                       of at most 4096 bytes)
  BRAZE_REST_ENDPOINT  overrides braze.endpoint
"""
EPILOG = _epilog()


def main(argv: Sequence[str] | None = None) -> int:
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:  # started with the stream closed (`>&-`)
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 - for the whole process
    argv = sys.argv[1:] if argv is None else list(argv)
    _ASKED_FORMAT.set(_asked_format(argv))
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["braze-export", *argv])
    args.run_id = new_run_id()
    with (
        redacted_streams(),
        logging_for_run(args.log_level, args.log_format, run_id=args.run_id),
    ):
        try:
            code = _dispatch(args)
            sys.stdout.flush()  # a closed pipe shows here, not as noise at interpreter exit
            return code
        except BrokenPipeError:
            # The reader went away (`plan --json | head`): stop writing, quietly. A run's
            # status is the run's; anything else did not get all of its output out.
            _silence_stdout()
            return int(getattr(args, "exit_code", EXIT_FAILED))
        except StreamUnwritable as exc:
            # stdout that cannot be written (`> /dev/full`): one line on stderr, if it works.
            # "The output" is the export's directory in every other message: name stdout. A
            # run keeps its status (its files and manifest are whole), as when the reader of
            # stdout goes away; the other commands did not get their output out.
            _silence_stdout()
            with contextlib.suppress(OSError):
                console(f"error: cannot write to stdout: {exc.strerror or exc}")
            return int(getattr(args, "exit_code", EXIT_FAILED))
        except OSError as exc:
            # Any other OSError a command let through (a file, a store): one line, never a
            # traceback, and never taken for stdout's.
            with contextlib.suppress(OSError):
                console(f"error: {exc.strerror or exc}")
            return EXIT_FAILED


def _silence_stdout() -> None:
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (tests capture it): nothing will flush to a closed pipe
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        with contextlib.nullcontext() if getattr(args, "serves", False) else _signals_unwind():
            code: int = args.func(args)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            console(f"error: {line}")
        return EXIT_USAGE
    except DirectoryBusy as exc:
        console(f"error: {exc}")
        return EXIT_BUSY
    except Unreachable as exc:  # nothing can work: unreachable, or the output not writable
        console(f"error: {exc}")
        return EXIT_UNREACHABLE
    except MemoryError:
        console(f"error: out of memory: {_out_of_memory_advice(args.command)}")
        return EXIT_FAILED
    except ExporterError as exc:
        console(f"error: {exc}")
        return EXIT_FAILED
    except KeyboardInterrupt as exc:
        # Any command but a run going (it has its own handlers): what it was doing is undone
        # on the way here (its temp files and directories removed), nothing is left to save.
        # What stdout still buffers is dropped: a reader that stopped reading must not keep
        # the exit waiting.
        _silence_stdout()
        console("interrupted", event="interrupted")
        return EXIT_SIGNAL[
            signal.Signals(exc.signum) if isinstance(exc, Terminated) else signal.SIGINT
        ]
    return code


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise Terminated while a command goes, as Ctrl-C raises
    KeyboardInterrupt, so that every ``with`` and ``finally`` on the way out runs: no temp
    file or directory is left behind (Python's default for them ends the process where it
    stands). A second one stops at once. A run installs its own handlers on top while it
    goes. Each is left alone when ignored (``nohup``, an orchestrator), and all off the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def unwind(signum: int, frame: FrameType | None) -> None:
        signal.signal(signum, signal.SIG_DFL)
        raise Terminated(signum)

    taken = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is signal.SIG_DFL]
    previous = {signum: signal.signal(signum, unwind) for signum in taken}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


# --log-format as the command line asks it, for usage errors (found before it is parsed).
_ASKED_FORMAT: contextvars.ContextVar[str] = contextvars.ContextVar("log_format", default="text")


def _asked_format(argv: Sequence[str]) -> str:
    fmt = "text"
    for n, arg in enumerate(argv):
        if arg == "--log-format" and n + 1 < len(argv):
            fmt = argv[n + 1]
        elif arg.startswith("--log-format="):
            fmt = arg.partition("=")[2]
    return fmt


def _out_of_memory_advice(command: str) -> str:
    """What is left after a MemoryError and what to try, for the command that ran out: only a
    run has saved anything; the plan and a run hold every request in memory (--shard splits)."""
    if command == "run":
        return (
            "give braze-export more memory, or split the run with --shard K/N; the periods "
            "completed so far are saved, and rerunning the same command resumes"
        )
    if command == "plan":
        return (
            "nothing was written; give braze-export more memory, or plan one part with "
            "--shard K/N (or fewer series or a shorter window)"
        )
    return f"nothing was written; give braze-export more memory and rerun {command}"


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line, like every other error (a JSON record with --log-format
    json), and exit 2."""

    def error(self, message: str) -> NoReturn:
        line = f"error: {self.prog}: {message} (see {self.prog} --help)"
        with logging_for_run("ERROR", _ASKED_FORMAT.get(), run_id=new_run_id()):
            console(line)
        self.exit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="braze-export",
        description="Export Braze's analytics time series (sessions, events, purchases, KPIs, "
        "segment size; GET /sessions/data_series and the rest of the family) to files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {package_version()}",
        help="print the version",
    )
    _global_args(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        made = sub.add_parser(
            name,
            help=help,
            description=help,
            epilog="exit status and environment: see braze-export --help",
        )
        _global_args(made, top=False)  # they parse after the command too
        return made

    validate = command("validate", "check a config and summarise it; sends nothing")
    validate.add_argument("config", help="the YAML config file (no default)")
    validate.set_defaults(func=_cmd_validate)

    plan = command(
        "plan",
        "show the requests the next run will make (its state read, never changed), and their "
        "cost; sends nothing",
    )
    _plan_args(plan)
    plan.add_argument(
        "--json",
        action="store_true",
        help="the same as one JSON document: totals, per export and per series kind "
        "(default: text)",
    )
    plan.add_argument(
        "--requests",
        action="store_true",
        help="also list every request the next run sends, with Braze's parameters, streamed "
        "(millions for a long hourly backfill; default: counts only)",
    )
    plan.add_argument(
        "--out",
        metavar="DIR",
        help="the output the run will write to, whose state is read (default: output.dir; "
        f"with --sandbox: ./{SANDBOX_OUT})",
    )
    plan.add_argument(
        "--sandbox",
        action="store_true",
        help="plan the next `run --sandbox`: the state its sandbox rows left (default: off)",
    )
    plan.set_defaults(func=_cmd_plan)

    run = command("run", "export the series a config describes")
    _plan_args(run)
    run.add_argument(
        "--out",
        metavar="DIR",
        help="output directory, or s3://bucket/prefix, gs://..., az://... (default: "
        f"output.dir; with --sandbox: ./{SANDBOX_OUT})",
    )
    run.add_argument(
        "--work-dir",
        type=str,  # not Path: Path("") is ".", and an empty --work-dir must be refused
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
        help="run against an in-process sandbox on loopback, no key needed (default: off)",
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="fetch everything again, ignoring what earlier runs completed (default: off)",
    )
    run.add_argument(
        "--progress-interval",
        type=_number(">=", 0.01, "seconds"),
        default=None,
        metavar="S",
        help="seconds between progress updates, at least 0.01 (default: 0.5 on a terminal, "
        "else 10)",
    )
    run.set_defaults(func=_cmd_run)

    doctor = command(
        "doctor",
        "first contact with a workspace: endpoint, key, rate limit, label formats and window "
        "offset, with a verdict (at most 5 requests)",
    )
    doctor.add_argument("config", help="the YAML config file (no default)")
    doctor.add_argument(
        "--sandbox",
        action="store_true",
        help="check the in-process sandbox instead, no key needed (default: off)",
    )
    doctor.set_defaults(func=_cmd_doctor)

    check = command("verify", "check every data file against the latest run that recorded it")
    check.add_argument(
        "dir", help="the output directory (or object storage prefix) of earlier runs (no default)"
    )
    check.set_defaults(func=_cmd_verify)

    box = command("sandbox", "serve the Braze-compatible sandbox until interrupted")
    box.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    box.add_argument(
        "--port", type=_port, default=8080, help="port, 0 for any free one (default: %(default)s)"
    )
    box.add_argument(
        "--api-key", metavar="K", help="accept only this Bearer token (default: any token)"
    )
    box.add_argument(
        "--limit",
        type=_integer(">=", 0),
        default=250_000,
        metavar="N",
        help="workspace pool (series, /segments/list): requests per window, 0 for no limit "
        "(default: %(default)s)",
    )
    box.add_argument(
        "--list-limit",
        type=_integer(">=", 0),
        default=1_000,
        metavar="N",
        help="lists pool (/events/list, /purchases/product_list): requests per window, 0 for "
        "no limit (default: %(default)s)",
    )
    box.add_argument(
        "--throttle-pool",
        type=_throttle,
        action="append",
        default=[],
        metavar="POOL:K",
        help=f"answer the first K requests of pool POOL ({', '.join(POOLS)}) with 429, "
        "repeatable (default: none)",
    )
    for flag, default, what in (
        ("--segments", 230, "segments /segments/list serves"),
        ("--events", 40, "event names /events/list serves"),
        ("--products", 12, "product names /purchases/product_list serves"),
        ("--campaigns", 150, "campaigns /campaigns/list serves"),
        ("--canvases", 40, "Canvases /canvas/list serves"),
    ):
        box.add_argument(
            flag,
            type=_integer(">=", 0),
            default=default,
            metavar="N",
            help=f"how many {what} (default: %(default)s)",
        )
    box.add_argument(
        "--window",
        type=_number(">=", 0.01, "seconds"),
        default=3600.0,
        metavar="S",
        help="rate-limit window in seconds (default: %(default)g)",
    )
    box.add_argument(
        "--fault-rate",
        type=_fraction,
        default=0.0,
        metavar="P",
        help=f"share of faulty responses, 0..1, each one of: {', '.join(FAULT_KINDS)} "
        "(default: %(default)g)",
    )
    box.add_argument(
        "--seed", type=int, default=0, metavar="N", help="fault seed (default: %(default)s)"
    )
    box.add_argument(
        "--slow-s",
        type=_number(">=", 0),
        default=60.0,
        metavar="S",
        help="how long a slow fault stalls, in seconds (default: %(default)g)",
    )
    box.add_argument(
        "--latency-ms",
        type=_number(">=", 0, "milliseconds"),
        default=0.0,
        metavar="MS",
        help="every answer waits this long first, as a network's round trip would "
        "(default: %(default)g)",
    )
    box.add_argument(
        "--reject-segment",
        action="append",
        default=[],
        metavar="ID",
        help="answer 400 for this segment, repeatable (default: none)",
    )
    box.add_argument("--deny", action="store_true", help="answer 403 to everything (default: off)")
    box.add_argument(
        "--sends",
        action="store_true",
        help="print the send ids /sends/data_series answers today (tab-separated campaign_id, "
        "send_id, day of the send; for --campaigns N) and exit, serving nothing (default: off)",
    )
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
        help="recent days read differently every time the sandbox starts (default: off)",
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
    box.set_defaults(func=_cmd_sandbox, serves=True)  # serves until killed: no unwinding
    _getting_started(command)
    return parser


def _getting_started(command: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The commands a new user reaches for: init, series, completion."""
    init = command(
        "init",
        "write a commented starter config; --discover fills in the workspace's ids",
    )
    init.add_argument(
        "path",
        nargs="?",
        default="braze-export.yaml",
        help="where to write it (default: %(default)s)",
    )
    init.add_argument(
        "--force", action="store_true", help="overwrite PATH if it exists (default: refuse)"
    )
    init.add_argument(
        "--discover",
        action="store_true",
        help="list the workspace's analytics-enabled segments, events and products into the "
        "config, campaigns and Canvases as comments; needs the key in $BRAZE_API_KEY (or the "
        "variable --api-key-env names) (default: ids found at run time instead)",
    )
    init.add_argument(
        "--sandbox",
        action="store_true",
        help="--discover against the in-process sandbox, no key needed (default: off)",
    )
    init.add_argument(
        "--endpoint",
        metavar="URL",
        help="your instance's REST host, written into the config and read by --discover "
        "(default: $BRAZE_REST_ENDPOINT, else https://rest.iad-01.braze.com)",
    )
    init.add_argument(
        "--api-key-env",
        metavar="NAME",
        default=DEFAULT_KEY_ENV,
        help="the variable holding the key, written into the config (default: %(default)s)",
    )
    init.set_defaults(func=_cmd_init)

    series = command(
        "series",
        "list every series: dimensions, units, value columns, rate-limit pool, permission",
    )
    series.add_argument("--json", action="store_true", help="as JSON (default: a table for people)")
    series.set_defaults(func=_cmd_series)

    completion = command("completion", "print the shell completion script for SHELL")
    completion.add_argument(
        "shell",
        choices=SHELLS,
        help=f"{', '.join(SHELLS)} (no default); see docs/cli.md, Shell completion",
    )
    completion.set_defaults(func=_cmd_completion)


def _global_args(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--log-level and --log-format: the top level owns the defaults; after the command they
    are SUPPRESSed unless given, so they never reset what was given before it."""
    parser.add_argument(
        "--log-level",
        default="INFO" if top else argparse.SUPPRESS,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much to log to stderr (default: INFO)",
    )
    parser.add_argument(
        "--log-format",
        default="text" if top else argparse.SUPPRESS,
        choices=["text", "json"],
        help="text for people, json: one object per line with run_id and event (default: text)",
    )


def _plan_args(command: argparse.ArgumentParser) -> None:
    command.add_argument("config", help="the YAML config file (no default)")
    command.add_argument(
        "--as-of",
        type=_date,
        metavar="YYYY-MM-DD",
        help="the day after the last exported day (default: today in the config's time zone)",
    )
    command.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="only the K-th of N disjoint parts of the series, with 1/N of "
        "the budget, for N parallel jobs (default: all series)",
    )


def _date(text: str) -> date:
    try:
        return parse_day(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shard(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if not match or not 1 <= int(match[1]) <= int(match[2]) <= 1000:
        raise argparse.ArgumentTypeError(f"must be K/N with 1 <= K <= N <= 1000, got {text!r}")
    return int(match[1]), int(match[2])


_COMPARE = {">": float.__gt__, ">=": float.__ge__}


def _number(op: str, bound: float, unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite number ``op bound``."""
    words = "at least" if op == ">=" and unit else op

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and _COMPARE[op](value, float(bound))):
            need = f"{words} {bound:g}{' ' + unit if unit else ''}"
            raise argparse.ArgumentTypeError(f"must be {need}, got {text!r}")
        return value

    return parse


def _integer(op: str, bound: int) -> Callable[[str], int]:
    """An argparse type: an integer ``op bound``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not _COMPARE[op](float(value), float(bound)):
            raise argparse.ArgumentTypeError(f"must be an integer {op} {bound}, got {text!r}")
        return value

    return parse


def _throttle(text: str) -> tuple[str, int]:
    """An argparse type: ``POOL:K``, a sandbox pool and a count >= 0."""
    pool, _, count = text.partition(":")
    if pool not in POOLS or not count.isdigit():
        raise argparse.ArgumentTypeError(
            f"must be POOL:K with POOL one of {', '.join(POOLS)} and K >= 0, got {text!r}"
        )
    return pool, int(count)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # False for nan too
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
    return value


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0..65535, got {text!r}")
    return int(text)


def _load(args: argparse.Namespace) -> tuple[Config, Plan]:
    return load_plan(args.config, args.as_of, args.shard)


def _cmd_validate(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if is_remote(config.output.dir):
        ObjectStore.open(config.output.dir).close()  # its backend must be installed
    else:
        output_dir(config, None)
    series = count_series(config)  # as the planner counts, without planning a request
    if needs := discovery_needs(config):
        keys = ", ".join(sorted({DIMENSIONS[param].config_key for param, _ in needs}))
        counted = f"{series:,} series with one id per discovery (of {keys}, found at run time)"
    else:
        counted = f"{series:,} series"
    key_var = config.braze.api_key_env
    key_state = "NOT set: run will refuse to start without it, unless --sandbox"
    if os.environ.get(key_var) or os.environ.get(f"{key_var}_FILE"):
        api_key(config)  # refused as run refuses it (too short, quoted, unreadable file)
        key_state = "set"
    warnings = list(_over_a_day(config))  # may refuse the config: before "valid." is said
    print(
        f"{config.source}: valid. {len(config.exports)} export(s) "
        f"({', '.join(e.name for e in config.exports)}) covering {counted}; days cut "
        f"in {config.timezone}; {config.output.format} files under {config.output.dir}/; endpoint "
        f"{config.braze.endpoint}; key from {key_source(key_var)} ({key_state}); up to "
        f"{config.limits.requests_per_hour * config.limits.share:,.0f} requests/hour with "
        f"{config.limits.concurrency} in flight."
    )
    for line in warnings:
        print(f"warning: {line}")
    return EXIT_OK


def _over_a_day(config: Config) -> Iterator[str]:
    """For each pool whose share a first run as of today would need more than a day of
    (with one id per discovery). A plan holds windows, not requests: a 100-year window
    plans at once."""
    try:
        one_each = {key: ("?",) for key in discovery_needs(config)}
        plan = build_plan(config, datetime.now(config.tz).date(), None, one_each)
    except RetentionError:
        raise  # nothing of that window can be had, today or later: as run refuses it
    except ConfigError:
        return  # no complete day yet: nothing to send today
    by_pool = _by_pool(config.limits, plan.first_run_requests())
    # Campaign and Canvas details, read first (none kept yet), as plan counts them.
    _, skips = _forecast(config, plan, None)
    by_pool[WORKSPACE_POOL] += sum(r.details_requests for r in skips.values())
    for pool, n in sorted(by_pool.items()):
        rph, share, reserve = config.limits.pool(pool)
        least = eta_seconds(n, rph, share, reserve)  # as plan says it
        if least > 86400:
            advice = (
                "split the window into runs or ask Braze to raise the workspace's limit"
                if share >= 1
                else "split the window into runs, or raise limits.share if Braze gave the "
                "workspace more"
            )
            yield (
                f"a first run as of today plans {n:,} requests in the {pool} pool, more than "
                f"its share allows in a day ({rph:,}/hour x {share:.0%}, keeping "
                f"{reserve:.0%} in reserve); it takes at least {format_duration(least)}: "
                f"{advice}"
            )


def _cmd_plan(args: argparse.Namespace) -> int:
    config, plan = _load(args)
    check_out(args.out)
    target = args.out or (SANDBOX_OUT if args.sandbox else config.output.dir)
    if is_remote(target):
        where = target
    else:
        where = str(output_dir(config, args.out or (SANDBOX_OUT if args.sandbox else None)))
    scope = state_scope(config, sandbox=args.sandbox)
    as_of = plan.as_of.toordinal()
    way = in_the_way(where, layout=run_layout(config, sandbox=args.sandbox), shard=plan.shard)
    fmt = config.output.format
    needs = discovery_needs(config)
    with saved_records(where, scope=scope, as_of=as_of, fmt=fmt, shard=plan.shard) as saved:
        records, check = saved if saved is not None else (None, None)
        # The ids earlier runs discovered: their series' records are in the state, and the
        # next run finds them again unless Braze dropped them.
        found = _known_ids(config, records) if needs and records else {}
        if any(found.values()):
            plan = build_plan(config, plan.as_of, plan.shard, found)
        plan, skips = _forecast(config, plan, records)
        seen = outlook(plan, records, None if records is None else where)
        if args.json or args.requests:
            requests = next_requests(plan, records) if args.requests else None
            _print_plan_json(config, plan, seen, check, way, found, requests, skips)
            return EXIT_OK
    limits = config.limits
    shards = plan.shard[1] if plan.shard else 1
    share = limits.share / shards
    allowed = limits.requests_per_hour * share
    total = seen.total
    # The workspace pool's least time counts only its own requests: a series in another
    # pool (campaigns, lists) is paced there, side by side. Details requests are the
    # workspace's.
    by_pool = _by_pool(limits, seen.by_kind)
    by_pool[WORKSPACE_POOL] += sum(r.details_requests for r in skips.values())
    eta = eta_seconds(by_pool[WORKSPACE_POOL], limits.requests_per_hour, share, limits.reserve)
    part = f", shard {plan.shard[0]}/{shards}" if plan.shard else ""
    print(f"plan for {config.source} as of {plan.as_of} ({plan.timezone}{part})")
    listed = " with the ids listed in the config" if needs else ""
    if known := sum(map(len, found.values())):
        listed += f" and the {known:,} discovered id(s) the state holds"
    print(f"series:   {len(plan.series):,}{listed}")
    if seen.state is None:
        print(f"state:    none in {where}: the next run fetches every window whole")
    else:
        print(
            f"state:    {where}: {total.done:,} of {total.periods:,} periods settled (kept, "
            f"not fetched again), {total.reread:,} provisional (fetched again)"
        )
    if way is not None:
        print(f"lock:     {_in_the_way_line(way)}")
    if check is not None and (check.missing or check.changed):
        print(
            f"files:    {len(check.missing):,} written file(s) gone and {len(check.changed):,} "
            f"changed since: the run takes back their {check.periods_taken_back:,} period(s) "
            "and fetches them again (counted above)"
        )
    print(
        f"requests: {total.requests:,} (for {total.to_fetch:,} periods, at most "
        f"{_most_per_request(plan)} per request)"
    )
    by_kind = +seen.by_kind
    if len(by_kind) > 1 or (by_kind and "sessions" not in by_kind):
        print("  by series: " + ", ".join(f"{k} {n:,}" for k, n in sorted(by_kind.items())))
    if len(seen.exports) > 1:
        for name, figures in seen.exports.items():
            if plan.series_by_export[name] and not figures.series:  # counted in the first
                print(f"  export {name}: its series are counted under an earlier export")
                continue
            print(
                f"  export {name}: {figures.requests:,} requests; {figures.done:,} periods "
                f"settled (kept), {figures.reread:,} provisional (fetched again)"
            )
    for report in skips.values():
        source = DETAILS[report.dimension]
        why = ", ".join(f"{n:,} {reason}" for reason, n in sorted(report.fresh.items()))
        print(
            f"details:  {report.details_requests:,} request(s) to {source.path} (workspace "
            f"pool) before the data phase{f' ({why})' if why else ''}; the data requests "
            "above are cut by the details kept: the run sends at most as many (fresh details, "
            "and its list showing a kept draft unchanged, cut more)"
        )
        for line in report.lines()[1:]:
            print(f"  {line}")
    for (param, spec_key), spec in needs.items():
        per_id = _requests_per_id(config, plan, param, spec_key)
        wanted = DiscoverSpec(param, None, tuple(spec.tags or ()))
        details_note = ""
        if param in DETAILS:
            details_note = (
                f", plus 1 request to {DETAILS[param].path} for each id without details kept "
                "(its days the details prove empty are then not requested)"
            )
        print(
            f"discover: {DIMENSIONS[param].config_key} ({spec.discover}"
            f"{'' if spec.name is None else f', name ~ {spec.name!r}'}"
            f"{'' if not spec.tags else ', tags ' + '/'.join(spec.tags)}) at run time: "
            f"{discovery_cost(wanted)}; {_found_so_far(found.get((param, spec_key)))}each "
            f"id found that earlier runs did not adds {per_id:,} request(s) on its first run"
            f"{details_note}"
        )
    print(
        f"budget:   {allowed:,.0f} requests/hour ({share:.0%} of "
        f"{limits.requests_per_hour:,}; {allowed / 3600:.1f}/s), pausing when the workspace "
        f"has {limits.reserve:.0%} left"
    )
    print(f"time:     at least {format_duration(eta)} at that rate")
    listing = _listing_requests(config)
    for line in _table_lines(config, listing):
        print(line)
    # The list pool paces the events and products lists (and any series moved there).
    in_lists = listing.get(LIST_POOL, 0) + by_pool[LIST_POOL]
    if in_lists:
        rph, lists_share, _ = limits.pool(LIST_POOL)
        rate = rph * lists_share / shards
        print(
            f"lists:    {in_lists:,} request(s) at least in the lists pool, at "
            f"{rate:,.0f}/hour ({3600 / rate:.1f} s each): at least "
            f"{format_duration(in_lists * 3600 / rate)}; discovery finishes before the first "
            "data request"
        )
    for pool in limits.pool_names:
        if pool in (WORKSPACE_POOL, LIST_POOL):
            continue
        n = by_pool[pool]
        if n:
            rph, pool_share, reserve = limits.pool(pool)
            least = eta_seconds(n, rph, pool_share / shards, reserve)
            print(
                f"{pool + ':':<9} {n:,} request(s) in the {pool} pool, at "
                f"{rph * pool_share / shards:,.0f}/hour: at least {format_duration(least)}, "
                "beside the workspace pool's"
            )
    return EXIT_OK


def _listing_requests(config: Config) -> Counter[str]:
    """The least list requests a run sends, by pool: one per read of a list (for discovery or
    a dimension table: one read serves both), and one more for the product list, which ends
    with an empty page."""
    # One read per list and query (a campaign or Canvas list is read apart for archived ones
    # or an edited_since), and a whole read for a table no discovery reads whole.
    reads = {(param, key[3], key[4]) for param, key in discovery_needs(config)}
    for name, (_, discovered) in listed_tables(config).items():
        if not discovered:
            reads.add((TABLES[name][0], False, None))
    least: Counter[str] = Counter()
    for param, _, _ in reads:
        source = DiscoverSpec(param).source
        least[source.pool] += 1 + (source.page_size is None)
    return least


def _table_lines(config: Config, listing: Counter[str]) -> Iterator[str]:
    tables = listed_tables(config)
    if not tables:
        return
    pools = ", ".join(f"{n:,} in the {pool} pool" for pool, n in sorted(listing.items()))
    yield (
        f"tables:   {len(tables)} dimension table(s) under dimensions/, from at least "
        f"{sum(listing.values()):,} list request(s) before the first data request ({pools})"
    )
    for name, (source, discovered) in tables.items():
        also = "; the read discovery makes" if discovered else ""
        yield (
            f"  {table_path(name, config.output.format)}: "
            f"{discovery_cost(DiscoverSpec(source.dimension))}{also}"
        )


def _by_pool(limits: Limits, by_kind: Mapping[str, int]) -> Counter[str]:
    """Requests per rate-limit pool, from requests per series kind."""
    by_pool: Counter[str] = Counter()
    for kind, n in by_kind.items():
        by_pool[limits.pool_for(kind)] += n
    return by_pool


def _least_seconds(limits: Limits, by_kind: Mapping[str, int], shards: int) -> float:
    """The least time requests take: each pool paces its own, side by side, so the slowest
    pool's (each at its rate, its reserve counted)."""
    return max(
        (
            eta_seconds(n, rph, share / shards, reserve)
            for pool, n in _by_pool(limits, by_kind).items()
            for rph, share, reserve in [limits.pool(pool)]
        ),
        default=0.0,
    )


def _known_ids(config: Config, records: Records) -> dict[Need, list[str]]:
    """The ids earlier runs discovered: those their series' records hold and, for a campaign
    or Canvas discovery (the only one of its dimension), those whose details the state keeps,
    the ones a backfill skipped whole included (the next run finds them again and reads their
    provisional days). Ids the config lists are not counted again."""
    found = known_ids(config, records.series_keys())
    for (param, key), ids in found.items():  # those a run found and stopped before reading
        found[(param, key)] = sorted(set(ids) | records.found(param, key))
    per_param = Counter(param for param, _ in found)
    for (param, key), ids in found.items():
        if param not in DETAILS or per_param[param] > 1:
            continue  # several filters of one list: whose details these are is not known
        listed = {i for e in config.exports if isinstance(v := e.values(param), list) for i in v}
        found[(param, key)] = sorted(set(ids) | (set(records.details(param)) - listed))
    return found


def _found_so_far(ids: Sequence[str] | None) -> str:
    if not ids:
        return ""
    return f"the {len(ids):,} id(s) earlier runs found are counted above; "


def _in_the_way_line(way: InTheWay) -> str:
    """Why the next run would stop at once (exit 5), as the lock record says."""
    if not way.readable:
        return (
            f"held by a lock this version cannot read ({way.record}): a run now exits "
            f"{EXIT_BUSY}; delete it if no run is writing there"
        )
    until = (
        f"until {way.expires_at} unless it renews it"
        if way.expires_at is not None
        else "while its process lives"
    )
    return (
        f"held by a run ({way.holder.describe()}) {until} ({way.record}): a run now exits "
        f"{EXIT_BUSY}"
    )


def _most_per_request(plan: Plan) -> str:
    lengths = sorted({s.info.max_length for s in {s.kind: s for s in plan.series}.values()})
    return "/".join(map(str, lengths or [MAX_LENGTH]))


def _print_plan_json(
    config: Config,
    plan: Plan,
    seen: Outlook,
    check: FileCheck | None,
    way: InTheWay | None,
    found: Discovered,
    requests: Iterator[Request] | None,
    skips: Mapping[str, SkipReport],
) -> None:
    """The plan as one JSON document, its size independent of the periods; with
    ``requests``, each of them too (``"requests": [...]``, last), written as they are made,
    so a plan of millions of them holds none in memory."""
    limits = config.limits
    shards = plan.shard[1] if plan.shard else 1

    def figures(f: Figures) -> dict[str, Any]:
        return {
            "series": f.series,
            "requests": f.requests,
            "periods": f.periods,
            "periods_done": f.done,
            "periods_to_read_again": f.reread,
            "periods_to_fetch": f.to_fetch,
            "seconds_at_least": round(_least_seconds(limits, f.by_kind, shards), 1),
        }

    doc = {
        "as_of": plan.as_of.isoformat(),
        "timezone": plan.timezone,
        "shard": None if plan.shard is None else f"{plan.shard[0]}/{plan.shard[1]}",
        "series": len(plan.series),
        "state": seen.state,
        "totals": figures(seen.total),
        "file_check": None
        if check is None
        else {
            "files_checked": check.checked,
            "files_missing": len(check.missing),
            "files_changed": len(check.changed),
            "periods_taken_back": check.periods_taken_back,
        },
        "lock": None
        if way is None
        else {
            "pid": way.holder.pid,
            "host": way.holder.host,
            "started_at": way.holder.started_at,
            "command": way.holder.command,
            "expires_at": way.expires_at,
            "record": way.record,
            "run_exits": EXIT_BUSY,
        },
        "exports": {name: figures(f) for name, f in seen.exports.items()},
        "requests_by_series": dict(sorted((+seen.by_kind).items())),
        "discovery": [
            {
                "config_key": DIMENSIONS[param].config_key,
                "endpoint": DiscoverSpec(param).source.path,
                "pool": DiscoverSpec(param).source.pool,
                "discover": spec.discover,
                "name": spec.name,
                "tags": spec.tags,
                "requests_at_least": 1,
                "ids_in_state": len(found.get((param, spec_key), ())),
                "requests_per_new_id": _requests_per_id(config, plan, param, spec_key),
            }
            for (param, spec_key), spec in discovery_needs(config).items()
        ],
        "dimensions": {
            "requests_at_least": dict(sorted(_listing_requests(config).items())),
            "tables": [
                {
                    "table": name,
                    "path": table_path(name, config.output.format),
                    "endpoint": source.path,
                    "pool": source.pool,
                    "requests_at_least": 1 + (source.page_size is None),
                    "read_for_discovery": discovered,
                }
                for name, (source, discovered) in listed_tables(config).items()
            ],
        },
        "skipping": [report.doc() for report in skips.values()],
    }
    head = json.dumps(doc, indent=1)
    if requests is None:
        sys.stdout.write(head + "\n")
        return
    sys.stdout.write(head[:-2] + ',\n "requests": [')
    separator, series, prefix = "\n  ", None, ""
    batch: list[str] = []  # a write per request costs more than making the request
    for r in requests:
        if r.series is not series:  # a series' requests come together: its fields once
            series = r.series
            fields = {
                **({} if series.kind == "sessions" else {"series": series.kind}),
                **dict(series.dimensions()),
                "unit": series.unit,
                "path": series.info.path,
            }
            prefix = json.dumps(fields)[:-1]
        # ending_at is an ISO 8601 date-time: nothing in it to escape.
        batch.append(f'{separator}{prefix}, "length": {r.length}, "ending_at": "{r.ending_at}"}}')
        separator = ",\n  "
        if len(batch) >= 1000:
            sys.stdout.write("".join(batch))
            batch.clear()
    sys.stdout.write("".join(batch) + "\n ]\n}\n")


def _forecast(
    config: Config, plan: Plan, records: Records | None
) -> tuple[Plan, dict[str, SkipReport]]:
    """The plan cut by the campaign and Canvas details kept in the state (exporter.refine)."""
    whole = read_whole(config, plan)
    if records is None:
        return forecast(plan, lambda _: {}, lambda _: {}, whole)
    return forecast(
        plan,
        records.details,
        lambda keys: {i: records.of(k)[0] for k, i in keys.items()},
        whole,
    )


def _requests_per_id(config: Config, plan: Plan, param: str, spec_key: Any) -> int:
    """How many requests one more discovered id adds to the plan (the other discoveries
    counted with one id each)."""
    one = {key: ("\x00a",) for key in discovery_needs(config)}
    two = {**one, (param, spec_key): ("\x00a", "\x00b")}
    more = build_plan(config, plan.as_of, None, two).first_run_requests()
    return sum(more.values()) - sum(
        build_plan(config, plan.as_of, None, one).first_run_requests().values()
    )


def _cmd_run(args: argparse.Namespace) -> int:
    check_out(args.out)  # before the config is read: an empty --out is refused first
    config, plan = _load(args)
    check_out(args.out)  # the key is registered once the config is read
    check_out(args.work_dir, "--work-dir", WORK_DIR_DEFAULT)
    run = prepare_run(
        config,
        plan,
        out=args.out,
        sandbox=args.sandbox,
        fresh=args.fresh,
        run_id=args.run_id,
        command=args.command_line,
        work_dir=None if args.work_dir is None else Path(args.work_dir),
        checkpoint_s=args.checkpoint_interval,
        progress_interval=args.progress_interval,
        redraw_progress=args.log_format == "text",  # in JSON, every stderr line is a record
    )
    outcome = asyncio.run(execute(run.config, run.plan, run.key, run.options))
    args.exit_code = outcome.exit_code  # what main() returns should stdout be closed
    for line in outcome.summary:
        if outcome.manifest_error is not None:  # there is no manifest to see
            line = line.replace(": see the manifest", " (the manifest would have listed them)")
        print(line)
    if outcome.manifest_error is None:
        print(f"manifest: {outcome.manifest}")
    else:
        print(f"manifest: NOT written: {outcome.manifest_error}")
        console(
            f"error: run manifest {outcome.manifest} not written: {outcome.manifest_error}; "
            f"the data files written are whole, but no manifest records them for verify"
        )
    log.info(
        "run finished with exit status %d",
        outcome.exit_code,
        extra={"event": "run_finished", "status": outcome.exit_code},
    )
    if outcome.signal_name:
        console(
            f"interrupted by {outcome.signal_name}: completed requests are saved; "
            f"rerun the same command to resume",
            event="interrupted",
        )
    elif outcome.result.auth_error is not None:
        console(f"error: {outcome.result.auth_error}")
    elif outcome.result.unreachable is not None:
        console(f"error: {outcome.result.unreachable}")
    return outcome.exit_code


def _cmd_doctor(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    as_of = datetime.now(config.tz).date()
    key = None if args.sandbox else api_key(config)

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
    if not args.dir:
        raise ConfigError("verify: DIR must not be empty")
    try:
        target = args.dir if is_remote(args.dir) else expand_home(args.dir)
    except ValueError as exc:
        raise ConfigError(f"verify: {exc}") from None
    interactive = sys.stderr.isatty()
    checked = [0, 0]
    progress = Progress(
        sys.stderr,
        lambda: f"verify: {checked[0]}/{checked[1]} files checked",
        interactive=interactive,
        interval_s=0.5 if interactive else 10.0,
    )
    started = time.monotonic()

    def on_progress(done: int, total: int) -> None:
        checked[:] = [done, total]
        progress.tick(time.monotonic() - started)

    try:
        report = verify(target, on_progress)
    finally:
        progress.close()
    for name in report.unreadable:
        print(f"unreadable: {name} (damaged, or not a run manifest)")
    for kind in ("changed", "missing", "unknown"):
        for name in getattr(report, kind):
            print(f"{kind}: {name}")
    journals = (
        f", {report.journals} journal(s) of runs that were killed or did not complete"
        if report.journals
        else ""
    )
    print(
        f"{report.ok} file(s) ok, {len(report.changed)} changed, {len(report.missing)} missing, "
        f"{len(report.unknown)} unknown ({report.manifests} manifest(s){journals}"
        f"{f', {len(report.unreadable)} unreadable' if report.unreadable else ''})"
    )
    bad = report.changed or report.missing or report.unknown or report.unreadable
    return EXIT_FAILED if bad else EXIT_OK


def _cmd_sandbox(args: argparse.Namespace) -> int:
    if args.sends:
        # Braze hands send ids out (POST /sends/id/create); the sandbox's are found here.
        print("campaign_id\tsend_id\tsent_on")
        for campaign, send in retained_sends(SandboxOptions(campaigns=args.campaigns)):
            print(f"{campaign.id}\t{send.id}\t{send.day.isoformat()}")
        return EXIT_OK
    options = SandboxOptions(
        api_key=args.api_key,
        limit=args.limit,
        list_limit=args.list_limit,
        throttle=dict(args.throttle_pool),
        segments=args.segments,
        events=args.events,
        products=args.products,
        campaigns=args.campaigns,
        canvases=args.canvases,
        window_s=args.window,
        fault_rate=args.fault_rate,
        seed=args.seed,
        slow_s=args.slow_s,
        latency_s=args.latency_ms / 1000,
        reject_segments=frozenset(args.reject_segment),
        deny=args.deny,
        reset_style=args.reset_style,
        restate=secrets.randbelow(10**6) + 1 if args.restate else 0,
        semantics=args.semantics,
        hour_labels=args.hour_labels,
    )
    try:
        run_sandbox(options, args.host, args.port)
    except OSError as exc:  # a busy port, an address not on this machine
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror
        raise ConfigError(
            f"sandbox: cannot listen on {args.host}:{args.port}: {reason or exc}; "
            f"choose another --port or --host"
        ) from None
    return EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    for name in {DEFAULT_KEY_ENV, args.api_key_env}:  # an error below may quote the key
        register_env_key(name)
    settings = StarterSettings.from_args(args.endpoint, args.api_key_env)
    if not args.path:
        raise ConfigError("init: PATH must not be empty")
    try:
        path = Path(expand_home(args.path))
    except ValueError as exc:
        raise ConfigError(f"init: {exc}") from None
    write_starter(path, "", force=args.force, check_only=True)  # refused before any request
    workspace = None
    if args.discover or args.sandbox:
        key = None if args.sandbox else settings.api_key()
        if key is not None:
            register_secret(key.reveal())
        try:
            workspace = asyncio.run(workspace_at(settings.endpoint, key))
        except AuthError as exc:
            console(f"error: {exc}")
            return EXIT_AUTH
    flag = " --sandbox" if args.sandbox else " --discover" if workspace else ""
    text = starter_config(workspace, settings=settings, command=f"braze-export init{flag}")
    write_starter(path, text, force=args.force)
    listed = "" if workspace is None else f" with {workspace.summary()}"
    then = " --sandbox" if args.sandbox else ""
    print(f"wrote {path}{listed}; next: braze-export doctor {shlex.quote(str(path))}{then}")
    return EXIT_OK


def _cmd_series(args: argparse.Namespace) -> int:
    entries = catalog()
    if args.json:
        json.dump([e.as_json() for e in entries], sys.stdout, indent=1)
        print()
    else:
        print(catalog_table(entries))
    return EXIT_OK


def _cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(completion_script(build_parser(), args.shell))
    return EXIT_OK
