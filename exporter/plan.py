"""Config + as-of date -> the minimal list of Braze requests. Pure: no I/O, no clock.

Periods are integers so ranges can be merged and sliced with arithmetic: a day period is a
proleptic ordinal (``date.toordinal()``) of a local day in the config's time zone; an hour
period is the number of whole hours since the Unix epoch, in UTC. Hour series are always
requested and labelled in UTC so no label is ambiguous across a DST change.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from exporter.config import FIRST_DATE, Config, Discover, Export, Unit, Window
from exporter.errors import ConfigError
from exporter.series import DIMENSIONS, KINDS, SeriesKind

__all__ = [
    "MAX_LENGTH",
    "Discovered",
    "Plan",
    "PlanRequest",
    "Request",
    "Series",
    "build_plan",
    "count_series",
    "describe_periods",
    "discovery_needs",
    "earliest_period",
    "ending_at",
    "hour_range",
    "merge_spans",
    "period_label",
    "period_of",
    "resolve_window",
    "shard_of",
    "span_label",
    "within_bound",
]

MAX_LENGTH = 100  # Braze accepts length 1..100
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_BEFORE_BOUND = f"; no date before {FIRST_DATE} is planned: choose a later --as-of"


@dataclass(frozen=True, slots=True)
class Series:
    """One exported series: a kind of series (:data:`exporter.series.KINDS`), its unit and
    the value of each dimension the kind takes (None: not given, such as the whole workspace
    for ``app_id``). Dimensions a kind does not take are always None."""

    segment_id: str | None
    app_id: str | None
    unit: Unit
    kind: str = "sessions"
    event: str | None = None
    product: str | None = None

    @classmethod
    def of(cls, kind: str, unit: Unit, dims: Mapping[str, str | None]) -> Series:
        """The series of ``kind`` with ``dims`` (Braze parameter name -> value; missing: None)."""
        get = dims.get
        return cls(get("segment_id"), get("app_id"), unit, kind, get("event"), get("product"))

    @property
    def info(self) -> SeriesKind:
        return KINDS[self.kind]

    def get(self, param: str) -> str | None:
        """The value of the dimension named by Braze's parameter name (``segment_id``)."""
        value: str | None = getattr(self, param)
        return value

    def dimensions(self) -> tuple[tuple[str, str | None], ...]:
        """``(param, value)`` for each dimension of the kind, in column order."""
        return tuple((param, getattr(self, param)) for param in KINDS[self.kind].dimensions)

    def log_fields(self) -> dict[str, str | None]:
        """The series for a JSON log record: ``{"series": kind, <param>: value or None
        (all), ..., "unit": unit}``, one key per dimension of the kind."""
        return {"series": self.kind, **dict(self.dimensions()), "unit": self.unit}

    def sort_key(self) -> tuple[str, tuple[tuple[bool, str], ...], str]:
        dims = tuple((v is not None, v or "") for _, v in self.dimensions())
        return (self.kind, dims, self.unit)

    @property
    def key(self) -> str:
        """Identity of the series in the resume state (not a display string). Sessions keep
        the key of the versions before the series family, so their state stays valid."""
        if self.kind == "sessions":
            app = "" if self.app_id is None else self.app_id
            has_app = "1" if self.app_id is not None else "0"
            return "\x1f".join((self.segment_id or "", app, has_app, self.unit))
        parts = [self.kind]
        for _, value in self.dimensions():
            parts += ("" if value is None else value, "0" if value is None else "1")
        return "\x1e".join((*parts, self.unit))

    @property
    def label(self) -> str:
        """The series in messages and logs: its directory under the output, in the words of
        the paths (``sessions/day/segment-seg-a/workspace``: ``workspace``, ``all-users``...
        where the rows hold null), one line whatever the ids hold."""
        components = (DIMENSIONS[param].component(value) for param, value in self.dimensions())
        return "/".join((self.kind, self.unit, *components))


@dataclass(frozen=True, slots=True)
class Request:
    """One GET of the series' endpoint (``series.info.path``): ``length`` periods from
    ``first`` on.

    ``ending_at`` is the planner's value (the last second of ``last``); a calibrated run may
    send another (see :mod:`exporter.coverage`). ``gap`` marks a gap-fill request."""

    series: Series
    first: int
    length: int
    ending_at: str
    index: int = 0  # position of the series in its Plan's ``series``
    gap: bool = False

    @property
    def last(self) -> int:
        return self.first + self.length - 1

    def params(self, ending_at: str | None = None) -> dict[str, str]:
        series = self.series
        params = {"length": str(self.length)}
        if series.info.takes_unit:
            params["unit"] = series.unit
        params["ending_at"] = ending_at or self.ending_at
        for param, value in series.dimensions():
            if value is not None:
                params[param] = value
        return params


@dataclass(frozen=True)
class Plan:
    as_of: date
    timezone: str
    requests: tuple[Request, ...]
    series: tuple[Series, ...]
    # Positions in ``series`` of each export's series (4 bytes each, for 100,000s of them).
    series_by_export: dict[str, array[int]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    # Series i's requests are requests[first_request[i]:first_request[i + 1]] (derived from
    # ``requests``, which are grouped by series, when not given).
    first_request: array[int] | None = None
    # Per unit, the first period still settling (within settle_days of as_of): provisional.
    settle_from: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.first_request is None:
            starts = array("i", [0] * (len(self.series) + 1))
            for request in self.requests:
                starts[request.index + 1] += 1
            for i in range(len(self.series)):
                starts[i + 1] += starts[i]
            object.__setattr__(self, "first_request", starts)

    def requests_of(self, index: int) -> tuple[Request, ...]:
        """The planned requests of series ``index``."""
        starts = self.first_request
        assert starts is not None
        return self.requests[starts[index] : starts[index + 1]]


def resolve_window(window: Window, as_of: date) -> tuple[date, date] | None:
    """The inclusive local days a window covers before ``as_of`` and from FIRST_DATE on (an
    earlier start is clipped); None when none are left."""
    end = as_of - timedelta(days=1)
    if window.days is not None:
        start = as_of - timedelta(days=window.days)
    else:
        assert window.start is not None
        assert window.end is not None
        start, end = window.start, min(window.end, end)
    start = max(start, FIRST_DATE)
    return None if end < start else (start, end)


def hour_range(first_day: date, last_day: date, tz: ZoneInfo) -> tuple[int, int]:
    """UTC hour periods that overlap the local days ``first_day..last_day`` (inclusive), none
    before the earliest hour (local days of FIRST_DATE east of UTC begin in 1969 in UTC)."""
    start = datetime.combine(first_day, time(0), tz).timestamp()
    stop = datetime.combine(last_day + timedelta(days=1), time(0), tz).timestamp()
    return max(math.floor(start / 3600), earliest_period("hour")), math.ceil(stop / 3600) - 1


def earliest_period(unit: Unit | str) -> int:
    """The first period any request may name: FIRST_DATE (1970-01-01), or its first UTC hour.
    Every date a plan, a gap-fill or a calibrated request computes is this or later."""
    return (
        FIRST_DATE.toordinal() if unit == "day" else (FIRST_DATE.toordinal() - _EPOCH_ORDINAL) * 24
    )


def within_bound(unit: Unit | str, end: int, length: int) -> tuple[int, int]:
    """``(end, length)`` of a window of ``length`` periods ending with ``end``, moved and cut
    so that it names no period before :func:`earliest_period` (at least one period)."""
    low = earliest_period(unit)
    end = max(end, low)
    return end, max(1, min(length, end - low + 1))


def ending_at(unit: Unit, period: int, tz: ZoneInfo) -> str:
    """The last second of a period, with the offset Braze should read it in."""
    if unit == "day":
        day = date.fromordinal(period)
        return datetime.combine(day, time(23, 59, 59), tz).isoformat()
    return datetime.fromtimestamp(period * 3600 + 3599, UTC).isoformat()


def period_of(unit: Unit, label: str, tz: tzinfo = UTC) -> int:
    """The period a Braze ``time`` label names; ValueError when it is not a valid label.

    Day: a date, or a date-time whose date is taken as is when naive and in ``tz`` (the
    config's zone) when it carries an offset (``2026-11-19T15:00:00Z`` is the Tokyo day
    2026-11-20). Hour: a date-time on a whole UTC hour, in any ISO 8601 spelling (naive is
    UTC; ``+05:30`` works; RFC 3339's lowercase ``t`` and ``z`` too); a bare date is no hour.
    """
    if unit == "day":
        if len(label) == 10:
            return date.fromisoformat(label).toordinal()
        moment = datetime.fromisoformat(label.upper())
        if moment.tzinfo is not None:
            moment = moment.astimezone(tz)
        return moment.date().toordinal()
    if len(label) <= 10:
        raise ValueError(f"{label!r} has no time of day")
    moment = datetime.fromisoformat(label.upper())  # RFC 3339 allows a lowercase t and z
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    if moment.minute or moment.second or moment.microsecond:
        raise ValueError(f"{label!r} is not the start of an hour")
    return math.floor(moment.timestamp() / 3600)


def period_label(unit: Unit | str, period: int) -> str:
    """A period for people: ``2024-01-05`` (day) or ``2024-01-05T10:00Z`` (UTC hour)."""
    if unit == "day":
        return date.fromordinal(period).isoformat()
    return datetime.fromtimestamp(period * 3600, UTC).strftime("%Y-%m-%dT%H:%MZ")


def span_label(unit: Unit | str, first: int, last: int) -> str:
    """``2024-01-01..2024-04-09``, or one label when ``first == last``."""
    if first == last:
        return period_label(unit, first)
    return f"{period_label(unit, first)}..{period_label(unit, last)}"


def describe_periods(unit: Unit | str, first: int, last: int) -> str:
    """``periods 2024-01-01..2024-04-09``: which periods a request or a gap is about."""
    return f"period{'' if first == last else 's'} {span_label(unit, first, last)}"


def shard_of(series: Series, count: int) -> int:
    """The shard (1..count) a series belongs to: a stable hash, the same on every machine."""
    key = f"{series.segment_id}\x1f{series.app_id is not None}\x1f{series.app_id}\x1f{series.unit}"
    if series.kind != "sessions":  # sessions keep the shards they had before the family
        key = f"{series.kind}\x1e{series.event}\x1e{series.product}\x1e{key}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


# Ids found by discovery: {(dimension param, Discover.key): ids in Braze's order}.
Discovered = Mapping[tuple[str, tuple[str, str | None, tuple[str, ...]]], Sequence[str]]


def discovery_needs(
    config: Config,
) -> dict[tuple[str, tuple[str, str | None, tuple[str, ...]]], Discover]:
    """Each distinct discovery the config asks for (two exports asking alike share one)."""
    needs = {}
    for export in config.exports:
        for param in KINDS[export.series].dimensions:
            values = export.values(param)
            if isinstance(values, Discover):
                needs[(param, values.key)] = values
    return needs


@dataclass(frozen=True)
class PlanRequest:
    """A plan to build once discovery has resolved the config's ``{discover: ...}`` ids."""

    config: Config
    as_of: date
    shard: tuple[int, int] | None = None

    def build(self, discovered: Discovered) -> Plan:
        return build_plan(self.config, self.as_of, self.shard, discovered)


def build_plan(
    config: Config,
    as_of: date,
    shard: tuple[int, int] | None = None,
    discovered: Discovered | None = None,
) -> Plan:
    """The requests for ``config`` as of a date; with ``shard=(k, n)`` only the k-th of n
    disjoint parts of the series. ``discovered`` resolves the ``{discover: ...}`` ids (a
    ConfigError names an export whose discovery is missing from it)."""
    tz = config.tz
    warnings: list[str] = []
    # A series' spans: one tuple in the usual case, a list once exports overlap (memory).
    ranges: dict[Series, tuple[int, int] | list[tuple[int, int]]] = {}
    by_export: dict[str, tuple[Series, ...]] = {}
    for export in config.exports:
        days = resolve_window(export.window, as_of)
        if export.window.days is not None and as_of - timedelta(export.window.days) < FIRST_DATE:
            warnings.append(
                f"exports.{export.name}: window reaches before {FIRST_DATE}, the earliest date "
                f"the exporter plans; clipped to start on {FIRST_DATE}"
            )
        if export.window.end is not None and export.window.end >= as_of and days is not None:
            warnings.append(
                f"exports.{export.name}: end {export.window.end} is not before the as-of date "
                f"{as_of}; clipped to {as_of - timedelta(days=1)} (only complete days export)"
            )
        if days is None:
            raise ConfigError(
                f"{config.source}: exports.{export.name}.window: no complete day before the "
                f"as-of date {as_of} (days are complete once they have ended in "
                f"{config.timezone}){_BEFORE_BOUND if as_of <= FIRST_DATE else ''}"
            )
        series = tuple(
            s
            for s in _expand(config, export, discovered)
            if shard is None or shard_of(s, shard[1]) == shard[0]
        )
        by_export[export.name] = series
        if days is None:
            continue
        day_span = (days[0].toordinal(), days[1].toordinal())
        hour_span = hour_range(days[0], days[1], tz)
        for s in series:
            span = day_span if s.unit == "day" else hour_span
            known = ranges.get(s)
            if known is None:
                ranges[s] = span
            elif isinstance(known, list):
                known.append(span)
            else:
                ranges[s] = [known, span]
    all_series = tuple(
        sorted({s for group in by_export.values() for s in group}, key=Series.sort_key)
    )
    index = {s: i for i, s in enumerate(all_series)}
    exports = {name: array("i", (index[s] for s in group)) for name, group in by_export.items()}
    del by_export, index  # the plan's peak memory is here: let go of what is no longer needed
    # Series of one window end alike: one ending_at string serves all of their requests.
    endings: dict[tuple[str, int], str] = {}

    def end_of(unit: Unit, last: int) -> str:
        key = (unit, last)
        if key not in endings:
            endings[key] = ending_at(unit, last, tz)
        return endings[key]

    requests = []
    first_request = array("i", [0])
    for i, s in enumerate(all_series):
        spans = ranges.pop(s, None)
        for lo, hi in merge_spans(spans if isinstance(spans, list) else [spans] if spans else []):
            for first, length in _slices(lo, hi):
                requests.append(Request(s, first, length, end_of(s.unit, first + length - 1), i))
        first_request.append(len(requests))
    settle_day = max(as_of - timedelta(days=config.settle_days), FIRST_DATE)
    settle_from = {
        "day": settle_day.toordinal(),
        "hour": hour_range(settle_day, settle_day, tz)[0],
    }
    return Plan(
        as_of,
        config.timezone,
        tuple(requests),
        all_series,
        exports,
        tuple(warnings),
        shard,
        first_request,
        settle_from,
    )


def count_series(
    config: Config, shard: tuple[int, int] | None = None, discovered: Discovered | None = None
) -> int:
    """``len(build_plan(config, ...).series)`` without planning a request (``validate``).
    Without ``discovered``, each discovered dimension counts as one id."""
    if discovered is None:
        discovered = {key: ("?",) for key in discovery_needs(config)}
    return len(
        {
            s
            for export in config.exports
            for s in _expand(config, export, discovered)
            if shard is None or shard_of(s, shard[1]) == shard[0]
        }
    )


def _expand(config: Config, export: Export, discovered: Discovered | None) -> Iterator[Series]:
    dimensions = KINDS[export.series].dimensions
    lists: list[Sequence[str | None]] = []
    for param in dimensions:
        values = export.values(param)
        if isinstance(values, Discover):
            found = (discovered or {}).get((param, values.key))
            if found is None:
                raise ConfigError(
                    f"{config.source}: exports.{export.name}.{DIMENSIONS[param].config_key}: "
                    "not discovered yet (discovery runs at the start of a run)"
                )
            lists.append(found)
        else:
            lists.append(values)
    seen: set[Series] = set()
    for combo in itertools.product(*lists):
        dims = dict(zip(dimensions, combo, strict=True))
        for unit in export.units:
            s = Series.of(export.series, unit, dims)
            if s not in seen:
                seen.add(s)
                yield s


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive integer ranges; touching ranges join so no extra request is made."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _slices(lo: int, hi: int) -> Iterator[tuple[int, int]]:
    # Anchored at the range's start, so a backfill's early requests keep their identity (and
    # their resume state) when the range's end moves forward on a later day.
    for first in range(lo, hi + 1, MAX_LENGTH):
        yield first, min(MAX_LENGTH, hi - first + 1)
