"""Campaign, Canvas and send analytics: what each endpoint is, and its answers as long rows.

These three Braze series do not carry one value per period as the rest of the family does:
each day holds totals and, under them, one object per channel and variation (campaigns,
sends) or per variant and step (Canvases), with keys that vary by channel and some that are
open-ended (``carousel_slide_[NUM]_[TITLE]_click``). So an answer becomes LONG rows, one per
(time, ids, breakdown, metric), and no key is lost whatever Braze adds.

Shapes (Braze's endpoint pages "Export campaign analytics", "Export send analytics" and
"Export Canvas data series analytics", braze.com/docs/api/endpoints/export/..., and
../shared/BRAZE_API.md; none checked against a live workspace)::

    /campaigns/data_series, /sends/data_series
    {"message": "success", "data": [
      {"time": "2024-01-05", "unique_recipients": 12, "conversions": 3, "revenue": 9.5, ...,
       "messages": {"email": [{"variation_api_id": "...", "variation_name": "Variant 1",
                               "sent": 100, "opens": 20, ...}, ...], "ios_push": [...]}},
      ...]}

    /canvas/data_series (``data`` is an object here, not a list)
    {"message": "success", "data": {"name": "Onboarding", "stats": [
      {"time": "2024-01-05",
       "total_stats": {"entries": 5, "conversions": 1, "revenue": 2.5, ...},
       "variant_stats": {VARIANT_API_ID: {"name": "Variant 1", "entries": 3, ...}},
       "step_stats": {STEP_API_ID: {"name": "Welcome email", "conversions": 1, ...,
                                   "messages": {"email": [{"sent": 3, "opens": 1, ...}]}}}},
      ...]}}

Rows (:class:`MessagingRow`): the ids come from the request (the answer does not repeat
them) under Braze's parameter names; breakdown columns are None where a row is not broken
down that way, so totals (a campaign day's top level, a Canvas' ``total_stats``) have every
breakdown None. Names (``variation_name``, a variant's or step's ``name``) are attributes of
the breakdown, never metrics. ``message_index`` is an entry's position in its channel's list:
the docs' entries need not carry any id (a Canvas step's never do), and it keeps two entries
of one channel apart.

Every numeric leaf becomes a row with ``metric`` the key exactly as Braze sent it; nested
objects or lists where a number was expected are walked (metric ``a.b``, ``a.0``). Strings,
booleans and nulls where a number was expected are not values: their paths come back in
:attr:`Flattened.skipped` for the caller to count and log. A body whose documented structure
is wrong (``data`` missing, ``messages`` not an object of lists of objects, a ``time`` that is
not a date, a day twice) raises :class:`~exporter.errors.MalformedResponse`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, NoReturn

from exporter.errors import MalformedResponse
from exporter.series import IDS, KINDS, WORKSPACE_POOL, ListSource, SeriesKind
from exporter.text import writable

__all__ = [
    "BREAKDOWNS",
    "IDS",
    "MESSAGING",
    "MESSAGING_LISTS",
    "Flattened",
    "MessagingRow",
    "MessagingSeries",
    "flatten",
]

BREAKDOWNS = (
    "channel",
    "message_index",
    "variation_api_id",
    "variation_name",
    "variant_api_id",
    "variant_name",
    "step_api_id",
    "step_name",
)

# The three series are described with the rest of the family in exporter.series (ids as
# dimensions, ``breakdowns``, ``max_length``, ``retention_days``, ``pool``).
MessagingSeries = SeriesKind
MESSAGING: dict[str, SeriesKind] = {k.name: k for k in KINDS.values() if k.long}

# The lists that name the ids (Braze: "Export campaigns list", "Export Canvas list"): 100 per
# page from page 0, archived ones only with include_archived=true. Not in series.LISTS: no
# export discovers them yet.
MESSAGING_LISTS: dict[str, ListSource] = {
    s.dimension: s
    for s in (
        ListSource(
            "campaign_id", "/campaigns/list", "campaigns", 100, "campaigns.list", WORKSPACE_POOL
        ),
        ListSource("canvas_id", "/canvas/list", "canvases", 100, "canvas.list", WORKSPACE_POOL),
    )
}


@dataclass(frozen=True, slots=True)
class MessagingRow:
    """One value: ``metric`` (Braze's key) of one breakdown of one day, as a float."""

    time: str
    metric: str
    value: float
    campaign_id: str | None = None
    canvas_id: str | None = None
    send_id: str | None = None
    channel: str | None = None
    message_index: int | None = None
    variation_api_id: str | None = None
    variation_name: str | None = None
    variant_api_id: str | None = None
    variant_name: str | None = None
    step_api_id: str | None = None
    step_name: str | None = None


@dataclass(frozen=True, slots=True)
class Flattened:
    """The rows of one answer, in the answer's order, and the key paths of what could not
    be a row (``data[0].messages.email[1].foo``): strings, booleans, nulls, NaN or infinite
    numbers, and keys of a Canvas answer beside its days."""

    rows: tuple[MessagingRow, ...]
    skipped: tuple[str, ...]
    days: tuple[str, ...] = ()  # every day's ``time``, in the answer's order
    replaced: int = 0  # lone surrogates in names and keys written as U+FFFD (exporter.text)
    # Days that held a value where a number belongs that was none: a day with no number at
    # all among them is no answer (Braze's format drifted), not a day of nothing.
    unread: frozenset[str] = frozenset()
    # Key paths of numbers written as sent that no count can be: negative, or beyond 2^53
    # (float64 holds them only approximately).
    doubtful: tuple[str, ...] = ()


def flatten(
    series: MessagingSeries, body: object, ids: Mapping[str, str], label: str | None = None
) -> Flattened:
    """The long rows of one decoded 200 body of ``series`` asked for ``ids`` (exactly the
    series' id parameters). MalformedResponse (with ``label``, what the call was for) when
    the body's documented structure is wrong; ValueError when ``ids`` do not match."""
    if set(ids) != set(series.ids):
        raise ValueError(f"{series.path} needs ids {', '.join(series.ids)}, got {sorted(ids)}")
    walk = _Walk(label, {k: ids[k] for k in series.ids})
    if not isinstance(body, dict):
        walk.bad("the body is not a JSON object")
    if body.get("message") != "success":
        walk.bad("message is not 'success'")
    if series.name == "canvas":
        walk.canvas(body.get("data"))
    else:
        walk.days(body.get("data"))
    return Flattened(
        tuple(walk.rows),
        tuple(walk.skipped),
        tuple(walk.labels),
        walk.replaced,
        frozenset(walk.unread),
        tuple(walk.doubtful),
    )


_Base = dict[str, Any]  # the row fields fixed above a leaf: ids, time and breakdowns


class _Walk:
    """One body's walk: rows and skipped paths accumulate; structure errors raise."""

    def __init__(self, label: str | None, ids: Mapping[str, str]) -> None:
        self.label = label
        self.ids = ids
        self.rows: list[MessagingRow] = []
        self.skipped: list[str] = []
        self.labels: list[str] = []
        self.replaced = 0
        self.unread: set[str] = set()
        self.doubtful: list[str] = []

    def clean(self, text: str) -> str:
        """A name or key as it can be written (:func:`exporter.text.writable`), counted."""
        fixed, count = writable(text)
        self.replaced += count
        return fixed

    def bad(self, why: str) -> NoReturn:
        raise MalformedResponse(why, status=200, label=self.label)

    def days(self, data: object) -> None:
        """Campaign and send answers: ``data`` is a list of days."""
        if not isinstance(data, list):
            self.bad("the body has no data list")
        seen: set[str] = set()
        for i, item in enumerate(data):
            path = f"data[{i}]"
            item = self.obj(item, path)
            base = {**self.ids, "time": self.time(item, path, seen)}
            for key, value in item.items():
                if key == "messages":
                    self.messages(value, f"{path}.messages", base)
                elif key != "time":
                    self.leaf(value, key, f"{path}.{key}", base)

    def canvas(self, data: object) -> None:
        """Canvas answers: ``data`` is an object with ``name`` and the ``stats`` list."""
        data = self.obj(data, "data")
        stats = data.get("stats")
        if not isinstance(stats, list):
            self.bad("data has no stats list")
        # Anything beside the name and the days belongs to no day: it cannot be a row.
        self.skipped.extend(f"data.{key}" for key in data if key not in ("name", "stats"))
        seen: set[str] = set()
        for i, item in enumerate(stats):
            path = f"data.stats[{i}]"
            item = self.obj(item, path)
            base = {**self.ids, "time": self.time(item, path, seen)}
            for key, value in item.items():
                where = f"{path}.{key}"
                if key == "total_stats":
                    self.metrics(self.obj(value, where), where, base)
                elif key == "variant_stats":
                    self.named(value, where, base, "variant_api_id", "variant_name")
                elif key == "step_stats":
                    self.named(value, where, base, "step_api_id", "step_name")
                elif key != "time":
                    self.leaf(value, key, where, base)

    def named(self, value: object, path: str, base: _Base, id_key: str, name_key: str) -> None:
        """``{API_ID: {"name": ..., metrics..., "messages"?: ...}}`` (variants, steps)."""
        if value is None:  # optional: absent unless the breakdown was asked for
            return
        for api_id, stats in self.obj(value, path).items():
            where = f"{path}.{api_id}"
            stats = self.obj(stats, where)
            name = self.text(stats, "name", where)
            named = {**base, id_key: self.clean(api_id), name_key: name}
            for key, leaf in stats.items():
                if key == "messages" and id_key == "step_api_id":
                    self.messages(leaf, f"{where}.messages", named)
                elif key != "name":
                    self.leaf(leaf, key, f"{where}.{key}", named)

    def messages(self, value: object, path: str, base: _Base) -> None:
        """``{channel: [entry, ...]}``; an entry's variation id and name are attributes."""
        if value is None:
            return
        for channel, entries in self.obj(value, path).items():
            where, name = f"{path}.{channel}", self.clean(channel)
            if not isinstance(entries, list):
                self.bad(f"{where} is not a list")
            for index, entry in enumerate(entries):
                at = f"{where}[{index}]"
                entry = self.obj(entry, at)
                row = {
                    **base,
                    "channel": name,
                    "message_index": index,
                    "variation_api_id": self.text(entry, "variation_api_id", at),
                    "variation_name": self.text(entry, "variation_name", at),
                }
                for key, leaf in entry.items():
                    if key not in ("variation_api_id", "variation_name"):
                        self.leaf(leaf, key, f"{at}.{key}", row)

    def metrics(self, stats: Mapping[str, Any], path: str, base: _Base) -> None:
        for key, value in stats.items():
            self.leaf(value, key, f"{path}.{key}", base)

    def leaf(self, value: object, metric: str, path: str, base: _Base) -> None:
        """A value where Braze documents a number: rows for every number in it."""
        before = len(self.skipped)
        for sub, number, where in _numbers(value, metric, path, self.skipped):
            if number < 0 or abs(number) >= _EXACT:
                self.doubtful.append(where)
            self.rows.append(MessagingRow(metric=self.clean(sub), value=number, **base))
        if len(self.skipped) > before:
            self.unread.add(base["time"])

    def obj(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.bad(f"{path} is not an object")
        return value

    def text(self, item: Mapping[str, Any], key: str, path: str) -> str | None:
        """A name or id: a string as sent; a number or boolean where Braze documents a string
        is plausible and kept as its JSON text (``3`` -> ``"3"``), never the reason a whole
        series fails; an object or a list is no name (MalformedResponse)."""
        value = item.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return self.clean(value)
        if isinstance(value, int | float | bool):
            return json.dumps(value)
        self.bad(f"{path}.{key} is not a string")

    def time(self, item: Mapping[str, Any], path: str, seen: set[str]) -> str:
        """The day's ``time``: an ISO 8601 date (a date-time's date part is accepted)."""
        label = item.get("time")
        try:
            if not isinstance(label, str):
                raise ValueError
            date.fromisoformat(label[:10])
        except ValueError:
            self.bad(f"{path}.time {label!r} is not an ISO 8601 date")
        if label in seen:
            self.bad(f"time {label!r} appears twice")
        seen.add(label)
        self.labels.append(label)
        return label


_EXACT = 2.0**53  # float64 holds every integer below this exactly


def _numbers(
    value: object, metric: str, path: str, skipped: list[str]
) -> Iterator[tuple[str, float, str]]:
    """(metric, value, path) for each finite number in ``value``; other leaves' paths go to
    ``skipped``. A bool is not a number here (JSON true is no count)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if math.isfinite(number):
            yield metric, number, path
        else:
            skipped.append(path)
    elif isinstance(value, dict):
        for key, inner in value.items():
            yield from _numbers(inner, f"{metric}.{key}", f"{path}.{key}", skipped)
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            yield from _numbers(inner, f"{metric}.{i}", f"{path}[{i}]", skipped)
    else:
        skipped.append(path)
