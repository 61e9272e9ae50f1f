"""The first-contact check against a real workspace: ``braze-export doctor CONFIG``.

It spends at most :data:`MAX_REQUESTS` requests (today 1 to 4: one small probe of 3 periods
per unit the config uses, on the config's first series; one more east of UTC; and page 0 of a
list first when every export discovers its ids). It reports, in plain lines:

* whether the endpoint was reached (DNS, TCP, TLS), or why not;
* whether the key was accepted (401) and has the permission (403), with what to check;
* the rate-limit headers and how much of the hour's pool other traffic has already used;
* the ``time`` label format of each unit;
* the window offset observed against the planner's assumption (see :mod:`exporter.coverage`).

It ends with one ``verdict:`` line. Exit status: 0 ready, 1 a problem a run would survive
(429, 5xx, odd bodies), 3 authentication, 4 nothing reachable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from exporter.client import BrazeClient, Point, Response, interpret, make_session
from exporter.config import ApiKey, Config, Discover, Export, Unit
from exporter.coverage import describe_offset
from exporter.details import DETAILS
from exporter.dimensions import listed_tables
from exporter.discover import interpret_list, keeps
from exporter.errors import (
    EXIT_AUTH,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    ApiError,
    AuthError,
    RetryableError,
    TransportError,
    Unreachable,
)
from exporter.plan import Request, Series, ending_at, hour_range, span_label
from exporter.ratelimit import RESET_SKEW_S, RateHeaders
from exporter.refine import SUBJECTS
from exporter.resolve import discover_spec
from exporter.series import KINDS

__all__ = ["MAX_REQUESTS", "DoctorReport", "diagnose"]

MAX_REQUESTS = 5
EXIT_READY, EXIT_PROBLEM = EXIT_OK, EXIT_FAILED  # doctor's words for the shared statuses
_PROBE_LENGTH = 3


@dataclass
class DoctorReport:
    lines: list[str] = field(default_factory=list)
    verdict: str = ""
    exit_code: int = EXIT_READY
    requests: int = 0
    unmeasured: list[str] = field(default_factory=list)  # units whose offset is unknown
    cut_elsewhere: bool = False  # days are not cut in the config's zone
    probed: set[str] = field(default_factory=set)  # permissions a list read here has shown

    def say(self, text: str) -> None:
        self.lines.append(text)


def _probe_series(config: Config) -> tuple[Export, dict[str, str | None]] | None:
    """The first series of the first export whose required dimensions list ids (discovered
    optional ones are left out: the probe asks for every segment or app)."""
    for export in config.exports:
        dims: dict[str, str | None] = {}
        for param in KINDS[export.series].dimensions:
            values = export.values(param)
            if isinstance(values, Discover):
                if param in KINDS[export.series].required:
                    break
                dims[param] = None
            else:
                dims[param] = values[0]
        else:
            return export, dims
    return None


def _probe(series: Series, as_of: date, tz: ZoneInfo) -> Request:
    """Three complete periods that ended well before the as-of date."""
    if series.unit == "day":
        last = (as_of - timedelta(days=2)).toordinal()
    else:
        last = hour_range(as_of - timedelta(days=2), as_of - timedelta(days=2), tz)[1]
    return Request(
        series, last - _PROBE_LENGTH + 1, _PROBE_LENGTH, ending_at(series.unit, last, tz)
    )


def _label_format(unit: Unit, label: str) -> str:
    if unit == "day":
        return "an ISO date" if len(label) == 10 else "a date with a time part"
    if label.endswith("Z"):
        return "UTC with Z"
    if label.endswith("+00:00"):
        return "UTC with +00:00"
    if len(label) == 19:
        return "naive (read as UTC)"
    return "with an offset other than UTC (read as that instant)"


def _rate_line(rate: RateHeaders, sent: int, now: float) -> str:
    if rate.limit is None or rate.remaining is None:
        return "rate limit: no X-RateLimit headers seen; runs pace themselves by limits.*"
    if rate.limit <= 0 or not 0 <= rate.remaining <= rate.limit:
        return (
            f"rate limit: X-RateLimit-Remaining {rate.remaining} does not fit "
            f"X-RateLimit-Limit {rate.limit}: runs ignore such values and pace themselves"
        )
    used = max(0, rate.limit - rate.remaining - sent)
    share = used / rate.limit if rate.limit else 0.0
    reset = rate.reset_at
    if reset is None:
        when = "no reset time given"
    elif reset > 10**11:
        when = f"X-RateLimit-Reset {reset:.0f} looks like milliseconds"
    elif reset <= now - RESET_SKEW_S:
        when = "X-RateLimit-Reset is already in the past"
    elif reset <= now:
        when = "the window has just rolled over"
    else:
        at = datetime.fromtimestamp(reset, UTC).strftime("%H:%M:%SZ")
        when = f"resets in {math.ceil(reset - now)}s (at {at})"
    return (
        f"rate limit: {rate.limit:,} per window, {rate.remaining:,} remaining, {when}; other "
        f"traffic has used {used:,} ({share:.1%}) of this window's pool"
    )


async def diagnose(
    config: Config,
    key: ApiKey,
    endpoint: str,
    as_of: date,
    *,
    clock: Callable[[], float] = time.time,
) -> DoctorReport:
    """Probe ``endpoint`` as a run of ``config`` would; never more than MAX_REQUESTS."""
    report = DoctorReport()
    async with make_session(1) as session:
        client = BrazeClient(session, endpoint, key, timeout_s=config.braze.timeout_s)
        first = _probe_series(config) or await _first_listed(client, config.exports[0], report)
        if first is None:
            return report
        await _probe_export(client, config, first, report, as_of, clock)
    return report


async def _first_listed(
    client: BrazeClient, export: Export, report: DoctorReport
) -> tuple[Export, dict[str, str | None]] | None:
    """For a config whose every export discovers an id its series requires: the first id
    the export's filters keep on page 0 of each such list, one request a list. None (the
    report then says why) when a list cannot be read or keeps no id on its first page."""
    kind = KINDS[export.series]
    dims: dict[str, str | None] = {}
    for param in kind.dimensions:
        values = export.values(param)
        if not isinstance(values, Discover):
            dims[param] = values[0]
            continue
        if param not in kind.required:
            dims[param] = None
            continue
        spec = discover_spec(param, values)
        source = spec.source
        report.requests += 1
        try:
            page = interpret_list(source, await client.get_list(source, 0), page=0)
        except TransportError as exc:
            _unreachable(exc, report)
            return None
        except (ApiError, Unreachable) as exc:
            _refused(exc, source.permission, f"{source.path} page 0", report)
            return None
        kept = next((item.id for item in page.items if keeps(spec, item)), None)
        if kept is None:
            report.verdict = (
                f"the first page of {source.path} has no id export {export.name} keeps: "
                "nothing to probe (a run reads the whole list)"
            )
            report.exit_code = EXIT_PROBLEM
            return None
        report.say(
            f"{source.path}: reached; probing {param}={kept!r}, the first id export "
            f"{export.name} keeps on page 0 (1 request)"
        )
        dims[param] = kept
        report.probed.add(source.permission)
    return export, dims


async def _probe_export(
    client: BrazeClient,
    config: Config,
    first: tuple[Export, dict[str, str | None]],
    report: DoctorReport,
    as_of: date,
    clock: Callable[[], float],
) -> None:
    """Probe the series ``first`` names (its export and dimension values) in every unit the
    config exports, then say the verdict."""
    tz = config.tz
    export, dims = first
    kind = KINDS[export.series]
    units = list(dict.fromkeys(u for e in config.exports for u in e.units if u in kind.units))
    shown = " ".join(f"{param}={value!r}" for param, value in dims.items())
    report.say(
        f"probing {kind.path} {shown} for unit(s) {', '.join(units)}; days cut in {config.timezone}"
    )
    others = sorted({KINDS[e.series].permission for e in config.exports} - {kind.permission})
    # Every list a run reads: its discoveries' and its dimension tables'.
    lists = sorted(
        {source.permission for source, _ in listed_tables(config).values()} - report.probed
    )
    # Campaign and Canvas details, read before their data unless skip_inactive_days is false.
    lists += sorted(
        {
            DETAILS[SUBJECTS[e.series]].permission
            for e in config.exports
            if e.series in SUBJECTS and e.skip_inactive_days is not False
        }
    )
    if report.probed:
        report.say(f"key: accepted, with the permission {', '.join(sorted(report.probed))}")
    if others or lists:
        report.say(
            f"not probed (a run needs them too): {', '.join(others + lists)}; grant them in "
            "Settings > API Keys"
        )
    rate: RateHeaders | None = None
    reached = False
    for unit in units:
        probe = _probe(Series.of(export.series, unit, dims), as_of, tz)
        response = await _send(client, probe, None, report)
        if response is None:
            return
        if not reached:
            reached = True
            how = "DNS, TCP and TLS" if client.secure else "plain HTTP"
            report.say(f"endpoint: reached {client.host} ({how} ok)")
        rate = response.rate if response.rate.limit is not None else rate
        points = _points(probe, response, report, tz)
        if points is None:
            return
        if unit == units[0]:
            report.say(f"key: accepted, with the permission {kind.permission}")
        offset = _window(probe, points, report, unit)
        if unit == "day" and offset is not None and _east_of_utc(probe.last, tz):
            await _where_days_are_cut(client, probe, points[-1].period, report, tz)
            if report.exit_code != EXIT_READY:
                return
    if rate is not None or reached:
        report.say(_rate_line(rate or RateHeaders(), report.requests, clock()))
    if report.exit_code == EXIT_READY and report.unmeasured:
        report.verdict = (
            f"reachable and authorised, but no whole window came back for "
            f"{' and '.join(report.unmeasured)}: the window offset is unknown, and runs will "
            f"measure it themselves and report any period Braze does not return "
            f"({report.requests} request(s) spent)"
        )
    elif report.exit_code == EXIT_READY and report.cut_elsewhere:
        report.verdict = (
            f"ready, with a caveat: Braze cuts days elsewhere than {config.timezone}; set "
            f"timezone to the zone Braze uses so the config says what the rows are "
            f"({report.requests} request(s) spent)"
        )
    elif report.exit_code == EXIT_READY:
        report.verdict = (
            f"ready: endpoint, key and windows as runs need them "
            f"({report.requests} request(s) spent)"
        )


async def _send(
    client: BrazeClient, probe: Request, ending: str | None, report: DoctorReport
) -> Response | None:
    report.requests += 1
    try:
        return await client.get(probe, ending)
    except TransportError as exc:
        _unreachable(exc, report)
        return None


def _unreachable(exc: TransportError, report: DoctorReport) -> None:
    """A failed exchange in the report: what failed and what to check."""
    report.say(f"endpoint: {exc.message}")
    hint = {
        "dns": "check the host name in braze.endpoint (see README, Hosts) and DNS",
        "tls": "check the CA bundle (SSL_CERT_FILE) or a TLS-inspecting proxy",
        "refused": "check braze.endpoint, proxies and firewalls",
    }.get(exc.cause, "check the network path to Braze, then retry")
    if exc.connect_failed:
        report.verdict = f"unreachable: {hint}"
        report.exit_code = EXIT_UNREACHABLE
    else:
        report.verdict = f"no usable answer ({exc.detail}): {hint}"
        report.exit_code = EXIT_PROBLEM


def _refused(exc: ApiError | Unreachable, permission: str, what: str, report: DoctorReport) -> None:
    """A refused or odd answer to ``what`` (a probe, a list page) in the report."""
    if isinstance(exc, AuthError):
        word = "key: rejected (401)" if exc.status == 401 else "key: lacks permission (403)"
        report.say(f"{word}: {exc.message}")
        report.verdict = (
            "the key is invalid, quoted, or for another instance"
            if exc.status == 401
            else f"the key needs the permission {permission} (Settings > API Keys)"
        )
        report.exit_code = EXIT_AUTH
    elif isinstance(exc, Unreachable):  # a redirect
        report.say(f"endpoint: {what} redirected")
        report.verdict = str(exc)
        report.exit_code = EXIT_UNREACHABLE
    elif isinstance(exc, RetryableError):
        report.say(f"{what}: {exc.reason}")
        report.verdict = "Braze is busy or odd right now: runs retry this; try doctor later"
        report.exit_code = EXIT_PROBLEM
    else:
        report.say(f"{what}: {exc.reason}")
        report.verdict = f"{what} was refused: check the first export's ids"
        report.exit_code = EXIT_PROBLEM


def _points(
    probe: Request, response: Response, report: DoctorReport, tz: ZoneInfo
) -> list[Point] | None:
    if response.status == 404:
        report.say(f"endpoint: {probe.series.unit} probe answered 404")
        report.verdict = (
            f"not Braze: this host answers 404 to {probe.series.info.path}; set braze.endpoint "
            "to your instance's REST host, such as https://rest.iad-01.braze.com"
        )
        report.exit_code = EXIT_UNREACHABLE
        return None
    try:
        return interpret(probe, response, tz)
    except (ApiError, Unreachable) as exc:
        what = f"{probe.series.unit} probe"
        _refused(exc, probe.series.info.permission, what, report)
    return None


def _east_of_utc(period: int, tz: ZoneInfo) -> bool:
    noon = datetime.combine(date.fromordinal(period), datetime.min.time().replace(hour=12), tz)
    offset = noon.utcoffset()
    return offset is not None and offset > timedelta(0)


async def _where_days_are_cut(
    client: BrazeClient, probe: Request, last: int, report: DoctorReport, tz: ZoneInfo
) -> None:
    """East of UTC, a window ending at 23:59:59 local ends on the same UTC date, so the first
    probe cannot tell days cut in UTC from days cut in the config's zone. The same window
    ending at 00:30 local can: that instant lies on the day before in UTC."""
    day = date.fromordinal(probe.last)
    early = datetime.combine(day, datetime.min.time().replace(minute=30), tz).isoformat()
    response = await _send(client, probe, early, report)
    if response is None:
        return
    points = _points(probe, response, report, tz)
    if not points:
        return
    if points[-1].period == last:
        report.say(f"day: ending_at {early} names the same day: days are cut in {tz.key}")
    else:
        report.say(
            f"day: ending_at {early} named the day before: Braze cuts days in UTC (or another "
            f"zone), not in {tz.key}; the rows are Braze's days (see docs/getting-started.md, "
            "First run)"
        )
        report.cut_elsewhere = True


def _window(probe: Request, points: list[Point], report: DoctorReport, unit: Unit) -> int | None:
    asked = span_label(unit, probe.first, probe.last)
    if not points:
        report.say(f"{unit}: asked for {asked}, got no points: cannot see the window")
        report.unmeasured.append(unit)
        return None
    got = span_label(unit, points[0].period, points[-1].period)
    report.say(f"{unit}: labels like {points[-1].time!r} ({_label_format(unit, points[-1].time)})")
    whole = len(points) == probe.length and points[-1].period - points[0].period == probe.length - 1
    if not whole:
        report.say(f"{unit}: asked for {asked}, got {got}: not a whole window, offset unknown")
        report.unmeasured.append(unit)
        return None
    offset = points[-1].period - probe.last
    if offset == 0:
        report.say(f"{unit}: asked for {asked}, got {got}: {describe_offset(unit, 0)}")
    else:
        report.say(
            f"{unit}: asked for {asked}, got {got}: {describe_offset(unit, offset)} "
            "(runs measure this themselves and shift)"
        )
    return offset
