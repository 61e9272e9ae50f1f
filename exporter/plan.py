"""Config + as-of date -> each series' window, and the fewest Braze requests covering the
periods of it still needed. Pure: no I/O, no clock.

A plan holds no request: :meth:`Plan.requests_for` makes a series' requests when they are
fed, from the periods still needed then (the window, less what earlier runs recorded as
done), so memory follows the number of series, never the number of periods or requests.

Periods are integers so ranges can be merged and sliced with arithmetic: a day period is a
proleptic ordinal (``date.toordinal()``) of a local day in the config's time zone; an hour
period is the number of whole hours since the Unix epoch, in UTC. Hour series are always
requested and labelled in UTC so no label is ambiguous across a DST change.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import math
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo

from exporter.config import FIRST_DATE, Config, Discover, DiscoverKey, Export, Unit, Window
from exporter.errors import ConfigError, RetentionError
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
    "cover",
    "describe_periods",
    "discovery_needs",
    "earliest_period",
    "ending_at",
    "hour_range",
    "known_ids",
    "merge_spans",
    "period_label",
    "period_of",
    "resolve_window",
    "series_of_key",
    "shard_of",
    "span_label",
    "within_bound",
]

MAX_LENGTH = 100  # Braze accepts length 1..100 (a series' own limit: SeriesKind.max_length)
Span = tuple[int, int]  # inclusive periods (lo, hi)
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
    campaign_id: str | None = None
    canvas_id: str | None = None
    send_id: str | None = None
    # Request flags that shape the answer, not the series' identity (Canvas' breakdowns):
    # the config refuses one series asked for with two sets of them.
    flags: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        kind: str,
        unit: Unit,
        dims: Mapping[str, str | None],
        flags: tuple[tuple[str, str], ...] = (),
    ) -> Series:
        """The series of ``kind`` with ``dims`` (Braze parameter name -> value; missing: None)."""
        get = dims.get
        return cls(
            get("segment_id"),
            get("app_id"),
            unit,
            kind,
            get("event"),
            get("product"),
            get("campaign_id"),
            get("canvas_id"),
            get("send_id"),
            flags,
        )

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
        params.update(series.flags)
        return params


@dataclass(frozen=True)
class Plan:
    """The series of a run and each one's window (merged inclusive spans of periods).

    Series ``i``'s window is ``windows[window_of[i]]``: series alike share one tuple, so a
    million series cost 4 bytes each here. Requests are made per series, on demand."""

    as_of: date
    timezone: str
    series: tuple[Series, ...]
    windows: tuple[tuple[Span, ...], ...] = ()
    window_of: array[int] = field(default_factory=lambda: array("i"))
    # Positions in ``series`` of each export's series (4 bytes each, for 100,000s of them).
    series_by_export: dict[str, array[int]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    # Per unit, the first period still settling (within settle_days of as_of): provisional.
    settle_from: dict[str, int] = field(default_factory=dict)
    _endings: dict[tuple[str, int], str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of_requests(
        cls, as_of: date, timezone: str, requests: Iterable[Request], series: Sequence[Series]
    ) -> Plan:
        """A plan whose windows are the periods of ``requests`` (a plan written by hand)."""
        spans: list[list[Span]] = [[] for _ in series]
        for r in requests:
            spans[r.index].append((r.first, r.last))
        windows = {w: i for i, w in enumerate(dict.fromkeys(tuple(merge_spans(s)) for s in spans))}
        return cls(
            as_of,
            timezone,
            tuple(series),
            tuple(windows),
            array("i", (windows[tuple(merge_spans(s))] for s in spans)),
        )

    def window(self, index: int) -> tuple[Span, ...]:
        """The merged spans series ``index`` exports (empty: another shard's, say)."""
        return self.windows[self.window_of[index]] if self.windows else ()

    def requests_for(self, index: int, needed: Iterable[Span]) -> Iterator[Request]:
        """The fewest requests of series ``index`` that cover the merged spans ``needed``
        (see :func:`cover`), made one by one as they are taken."""
        s = self.series[index]
        for first, last in cover(needed, s.info.max_length):
            yield Request(s, first, last - first + 1, self._ending_at(s.unit, last), index)

    def count_requests(self, index: int, needed: Iterable[Span]) -> int:
        """``len(list(requests_for(index, needed)))``, by arithmetic."""
        return sum(n for _, _, n in _cover_runs(needed, self.series[index].info.max_length))

    def first_run_requests(self) -> dict[str, int]:
        """Requests per series kind of a run with nothing done yet, by arithmetic."""
        counts: dict[str, int] = {}
        for i, s in enumerate(self.series):
            counts[s.kind] = counts.get(s.kind, 0) + self.count_requests(i, self.window(i))
        return counts

    @property
    def requests(self) -> tuple[Request, ...]:
        """Every request of a first run (nothing done yet), materialised: for small plans and
        tests only; a run takes each series' requests from :meth:`requests_for`."""
        return tuple(
            r for i in range(len(self.series)) for r in self.requests_for(i, self.window(i))
        )

    def _ending_at(self, unit: Unit, last: int) -> str:
        # Series of one window end alike: one ending_at string serves all of their requests.
        key = (unit, last)
        text = self._endings.get(key)
        if text is None:
            if len(self._endings) > 4096:  # ends spread out (a resumed backfill): no hoard
                self._endings.clear()
            text = self._endings[key] = ending_at(unit, last, ZoneInfo(self.timezone))
        return text


def series_of_key(key: str) -> Series | None:
    """The series a state key names (:attr:`Series.key`), or None when this version makes
    no such key."""
    if "\x1e" in key:
        kind, *values, unit = key.split("\x1e")
        info = KINDS.get(kind)
        if info is None or len(values) != 2 * len(info.dimensions) or unit not in ("day", "hour"):
            return None
        dims = {
            param: (value if flag == "1" else None)
            for param, value, flag in zip(info.dimensions, values[::2], values[1::2], strict=True)
        }
        series = Series.of(kind, unit, dims)  # type: ignore[arg-type]
    else:
        parts = key.split("\x1f")
        if len(parts) != 4 or parts[3] not in ("day", "hour"):
            return None
        segment, app, has_app, unit = parts
        series = Series(segment, app if has_app == "1" else None, unit)  # type: ignore[arg-type]
    return series if series.key == key else None


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
    if series.info.long:  # (the message series' ids: the older kinds keep their shards)
        key += f"\x1e{series.campaign_id}\x1e{series.canvas_id}\x1e{series.send_id}"
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count + 1


# A discovery: (dimension param, Discover.key).
Need = tuple[str, DiscoverKey]
# Ids found by discovery: {need: ids in Braze's order}.
Discovered = Mapping[Need, Sequence[str]]


def discovery_needs(config: Config) -> dict[Need, Discover]:
    """Each distinct discovery the config asks for (two exports asking alike share one)."""
    needs = {}
    for export in config.exports:
        for param in KINDS[export.series].dimensions:
            values = export.values(param)
            if isinstance(values, Discover):
                needs[(param, values.key)] = values
    return needs


def known_ids(config: Config, keys: Iterable[str]) -> dict[Need, list[str]]:
    """For each discovery the config asks for (:func:`discovery_needs`), the ids of its
    dimension that the series ``keys`` (of a resume state) hold, for the series kinds of
    the exports that discover them: the ids earlier runs found. Sorted; keys this version
    cannot read are left out."""
    kinds: dict[Need, set[str]] = {}
    for export in config.exports:
        for param in KINDS[export.series].dimensions:
            values = export.values(param)
            if isinstance(values, Discover):
                kinds.setdefault((param, values.key), set()).add(export.series)
    found: dict[Need, set[str]] = {need: set() for need in kinds}
    for key in keys:
        series = series_of_key(key)
        if series is None:
            continue
        for (param, spec), of_kinds in kinds.items():
            value = series.get(param) if series.kind in of_kinds else None
            if value is not None:
                found[(param, spec)].add(value)
    return {need: sorted(ids) for need, ids in found.items()}


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
    """The series of ``config`` and their windows as of a date; with ``shard=(k, n)`` only
    the k-th of n disjoint parts of the series. ``discovered`` resolves the
    ``{discover: ...}`` ids (a ConfigError names an export whose discovery is missing).

    Each export's series come out of the product of its sorted ids already in plan order,
    and the exports' streams are merged: no set, dict or sort over all the series, so a
    million series cost their Series objects and a few bytes each."""
    tz = config.tz
    warnings: list[str] = []
    streams: list[Iterator[tuple[Series, int, Span]]] = []
    for number, export in enumerate(config.exports):
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
        days = _kept(config, export, days, as_of, warnings)
        spans = {
            "day": (days[0].toordinal(), days[1].toordinal()),
            "hour": hour_range(days[0], days[1], tz),
        }
        streams.append(_tagged(_expand(config, export, discovered), number, spans, shard))
    all_series: list[Series] = []
    positions = [array("i") for _ in config.exports]
    windows: dict[tuple[Span, ...], int] = {}
    window_of = array("i")
    for s, group in itertools.groupby(_merged(streams), key=lambda item: item[0]):
        index = len(all_series)
        all_series.append(s)
        found = []
        for _, number, span in group:  # one per export that has the series
            positions[number].append(index)
            found.append(span)
        window = tuple(merge_spans(found)) if len(found) > 1 else (found[0],)
        window_of.append(windows.setdefault(window, len(windows)))
    settle_day = max(as_of - timedelta(days=config.settle_days), FIRST_DATE)
    settle_from = {
        "day": settle_day.toordinal(),
        "hour": hour_range(settle_day, settle_day, tz)[0],
    }
    return Plan(
        as_of,
        config.timezone,
        tuple(all_series),
        tuple(windows),
        window_of,
        {export.name: positions[n] for n, export in enumerate(config.exports)},
        tuple(warnings),
        shard,
        settle_from,
    )


def _kept(
    config: Config, export: Export, days: tuple[date, date], as_of: date, warnings: list[str]
) -> tuple[date, date]:
    """The window's days Braze still keeps: a series kept ``retention_days`` after the send
    (sends: 14, Braze's "Export send analytics" page) has nothing older to give, so those
    days are not planned (a warning says so). ConfigError when no day is left."""
    keep = KINDS[export.series].retention_days
    if keep is None or days[0] >= as_of - timedelta(days=keep):
        return days
    first = as_of - timedelta(days=keep)
    if days[1] < first:
        raise RetentionError(
            f"{config.source}: exports.{export.name}.window: every day ends before {first}; "
            f"Braze keeps {export.series} analytics {keep} days after the send"
        )
    warnings.append(
        f"exports.{export.name}: Braze keeps {export.series} analytics {keep} days after the "
        f"send; the window starts on {first}, not {days[0]}"
    )
    return first, days[1]


def count_series(
    config: Config, shard: tuple[int, int] | None = None, discovered: Discovered | None = None
) -> int:
    """``len(build_plan(config, ...).series)`` without a window (``validate``). Without
    ``discovered``, each discovered dimension counts as one id."""
    if discovered is None:
        discovered = {key: ("?",) for key in discovery_needs(config)}
    streams = [
        _tagged(_expand(config, export, discovered), n, {}, shard)
        for n, export in enumerate(config.exports)
    ]
    return sum(1 for _ in itertools.groupby(_merged(streams), key=lambda item: item[0]))


def _tagged(
    series: Iterator[Series], number: int, spans: Mapping[str, Span], shard: tuple[int, int] | None
) -> Iterator[tuple[Series, int, Span]]:
    """The shard's series of export ``number``, each with that export's window for its unit
    (a function, not a generator expression in a loop: those bind the loop's last values)."""
    for s in series:
        if shard is None or shard_of(s, shard[1]) == shard[0]:
            yield s, number, spans.get(s.unit, (0, -1))


def _merged(
    streams: list[Iterator[tuple[Series, int, Span]]],
) -> Iterator[tuple[Series, int, Span]]:
    """The exports' sorted streams as one, in plan order; a series in several exports comes
    once from each, side by side."""
    if len(streams) == 1:
        return streams[0]
    return heapq.merge(*streams, key=lambda item: item[0].sort_key())


def _expand(config: Config, export: Export, discovered: Discovered | None) -> Iterator[Series]:
    """The export's series in plan order (:meth:`Series.sort_key`): each dimension's ids
    without repeats, sorted (the whole workspace first), then the units, and their product."""
    dimensions = KINDS[export.series].dimensions
    lists: list[list[str | None]] = []
    for param in dimensions:
        values = export.values(param)
        if isinstance(values, Discover):
            found = (discovered or {}).get((param, values.key))
            if found is None:
                raise ConfigError(
                    f"{config.source}: exports.{export.name}.{DIMENSIONS[param].config_key}: "
                    "not discovered yet (discovery runs at the start of a run)"
                )
            values = list(found)
        lists.append(sorted(dict.fromkeys(values), key=lambda v: (v is not None, v or "")))
    units = sorted(set(export.units))
    flags = export.flags()
    for combo in itertools.product(*lists):
        dims = dict(zip(dimensions, combo, strict=True))
        for unit in units:
            yield Series.of(export.series, unit, dims, flags)


def merge_spans(spans: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of inclusive integer ranges; touching ranges join so no extra request is made."""
    merged: list[tuple[int, int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def cover(needed: Iterable[Span], limit: int) -> Iterator[Span]:
    """The fewest spans of at most ``limit`` periods that hold every period of the merged,
    sorted spans ``needed``; each starts and ends on a needed period, so a request asks for
    no period it does not need at either end. Greedy from the earliest needed period: for
    points on a line and intervals of one length, that is the minimum (the classic proof:
    the greedy interval ends no earlier than any other first interval can)."""
    for first, last, n in _cover_runs(needed, limit):
        for k in range(n):
            start = first + k * limit
            yield start, min(start + limit - 1, last)


def _cover_runs(needed: Iterable[Span], limit: int) -> Iterator[tuple[int, int, int]]:
    """:func:`cover`'s spans, grouped: ``(first, last, n)`` stands for n spans, the first
    n - 1 of exactly ``limit`` periods from ``first`` on, the last ending at ``last``; a long
    window is one group, so counting requests costs nothing per period."""
    start: int | None = None  # the open span, to which later needed periods may still join
    end = 0
    for lo, hi in needed:
        if start is not None:
            reach = start + limit - 1
            if lo > reach:
                yield start, end, 1
            else:  # this span joins the open one, as far as it reaches
                if hi <= reach:
                    end = hi
                    continue
                yield start, reach, 1
                lo = reach + 1
        full = (hi - lo) // limit  # whole spans before the last (open) one
        if full:
            yield lo, lo + full * limit - 1, full
        start, end = lo + full * limit, hi
    if start is not None:
        yield start, end, 1
