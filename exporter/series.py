"""The analytics series family: one description per Braze series drives everything else.

Config validation, the planner, the client, the writers and formats, the sandbox and the
manifest all read a :class:`SeriesKind` from :data:`KINDS` instead of knowing an endpoint.
Adding a series is one entry here (then `make docs` regenerates the docs' series table).

Facts are from Braze's public REST API docs ("Export ... by time" pages, "Get ... list"
pages; see ../shared/BRAZE_API.md); none has been checked against a live workspace. Where the
docs are unsure (revenue documented as an integer, the purchases series' pool) the code takes
the tolerant reading: revenue may be fractional, a series' pool is configurable.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import quote

__all__ = [
    "CAMPAIGNS_POOL",
    "DIMENSIONS",
    "IDS",
    "KINDS",
    "LISTS",
    "LIST_POOL",
    "SERIES_NAMES",
    "WORKSPACE_POOL",
    "Dimension",
    "ListSource",
    "SeriesKind",
    "encode_id",
]

Unit = Literal["day", "hour"]

WORKSPACE_POOL = "workspace"  # Braze's shared per-workspace pool: 250,000 requests/hour
ANSWER_BYTES = 4 * 1024 * 1024  # the largest answer read (lists, details, one-value series)
LONG_ANSWER_BYTES = 64 * 1024 * 1024  # ... of a campaigns, canvas or sends series
LIST_POOL = "lists"  # /events/list and /purchases/product_list: 1,000 requests/hour
# /campaigns/data_series: its own 50,000 requests/minute in Braze's current "Export campaign
# analytics" page (older pages: the workspace pool).
CAMPAIGNS_POOL = "campaigns"
_UNRESERVED = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote(safe="") leaves as it is
_MAX_COMPONENT = 200  # file systems allow 255 bytes per name; leave room for the prefix


def encode_id(value: str) -> str:
    """An id as a path component: percent-encoded, so it cannot name another directory.
    Very long ids keep a readable prefix plus a hash."""
    # Most ids need no escape: checking so costs a tenth of quote().
    encoded = value if _UNRESERVED.fullmatch(value) else quote(value, safe="")
    if len(encoded) > _MAX_COMPONENT:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        encoded = f"{encoded[:150]}~{digest}"
    return encoded


@dataclass(frozen=True, slots=True)
class Dimension:
    """A query parameter that slices a series, and how the exporter names it.

    ``param`` is Braze's parameter name: the query parameter, the output column and the
    manifest key. ``config_key`` is the export's list of values (``segment_ids``).
    ``directory`` starts the path component of a value (``segment-{id}``); ``absent`` is the
    component of the series that does not give the parameter (``workspace``: every app)."""

    param: str
    config_key: str
    directory: str
    absent: str

    def component(self, value: str | None) -> str:
        """The path component of a value (``app-ios``), or of its absence (``workspace``)."""
        return self.absent if value is None else f"{self.directory}-{encode_id(value)}"


DIMENSIONS: dict[str, Dimension] = {
    d.param: d
    for d in (
        Dimension("event", "events", "event", "all-events"),
        Dimension("product", "products", "product", "all-products"),
        Dimension("segment_id", "segment_ids", "segment", "all-users"),
        Dimension("app_id", "app_ids", "app", "workspace"),
        # Message analytics: always given (required), so ``absent`` never names a directory.
        Dimension("campaign_id", "campaign_ids", "campaign", "all-campaigns"),
        Dimension("canvas_id", "canvas_ids", "canvas", "all-canvases"),
        Dimension("send_id", "send_ids", "send", "all-sends"),
    )
}
IDS = ("campaign_id", "canvas_id", "send_id")  # the message-analytics series' id parameters


@dataclass(frozen=True, slots=True)
class SeriesKind:
    """One Braze series endpoint.

    - ``path``: the GET endpoint; every one takes ``length`` (1..``max_length``) and
      ``ending_at``. ``max_length`` is 100 for all but Canvas (14, Braze's Canvas docs).
    - ``dimensions``: Braze parameter names, in column and directory order.
    - ``required``: the dimensions a request must give (an export must list values for them).
    - ``units``: the units Braze serves; ``takes_unit`` is False for the day-only endpoints,
      which take no ``unit`` parameter at all.
    - ``value_key``: the key of the value in each ``data`` item and the output column;
      ``fractional`` when the value may be a non-integer (written as a float64).
    - ``pool``: the rate-limit pool the endpoint draws from (overridable in the config).
    - ``additive``: False when values must never be summed across periods (MAU is a rolling
      30-day count of unique users).
    - ``breakdowns``: non-empty for the message-analytics series (campaigns, Canvas, sends),
      whose days hold many values: their files are LONG, one row per (time, ids, breakdown,
      metric) with the breakdown columns named here (see :mod:`exporter.messaging`).
    - ``single``: dimensions an export gives one value of, under the parameter's own name
      (sends: ``campaign_id``, the campaign its ``send_ids`` belong to).
    - ``retention_days``: how long after a send Braze keeps the series (sends: 14), None
      when the docs name no limit.
    """

    name: str
    path: str
    dimensions: tuple[str, ...]
    required: tuple[str, ...]
    units: tuple[Unit, ...]
    value_key: str
    permission: str
    fractional: bool = False
    takes_unit: bool = True
    pool: str = WORKSPACE_POOL
    additive: bool = True
    max_length: int = 100
    breakdowns: tuple[str, ...] = ()
    single: tuple[str, ...] = ()
    retention_days: int | None = None

    @property
    def max_answer_bytes(self) -> int:
        """The largest answer read: 100 points of one value are a few KiB, so 4 MiB is no
        series; a long series' day holds every channel's and variation's (or step's)
        counters, and a 100-day answer of a campaign with a thousand variations is ~3 MiB:
        64 MiB."""
        return LONG_ANSWER_BYTES if self.long else ANSWER_BYTES

    @property
    def long(self) -> bool:
        """Whether the files are long (``metric``, ``value``) rather than one value a row."""
        return bool(self.breakdowns)

    @property
    def ids(self) -> tuple[str, ...]:
        """The dimensions, as :mod:`exporter.messaging` calls the message series' ids."""
        return self.dimensions

    @property
    def columns(self) -> tuple[str, ...]:
        """The output columns: ``time``, the value, each dimension, ``unit``; for a long
        series ``time``, each id, each breakdown, ``metric``, ``value``."""
        if self.long:
            return ("time", *self.dimensions, *self.breakdowns, "metric", "value")
        return ("time", self.value_key, *self.dimensions, "unit")

    def config_key(self, param: str) -> str:
        """The export's key for a dimension: ``segment_ids``, or ``campaign_id`` (single)."""
        return param if param in self.single else DIMENSIONS[param].config_key


def _kpi(name: str, additive: bool = True) -> SeriesKind:
    return SeriesKind(
        name,
        f"/kpi/{name}/data_series",
        ("app_id",),
        (),
        ("day",),
        name,
        f"kpi.{name}.data_series",
        takes_unit=False,
        additive=additive,
    )


# A message entry's place: its channel, its position in the channel's list, its variation.
_CHANNEL_BREAKDOWNS = ("channel", "message_index", "variation_api_id", "variation_name")

KINDS: dict[str, SeriesKind] = {
    k.name: k
    for k in (
        SeriesKind(
            "sessions",
            "/sessions/data_series",
            ("segment_id", "app_id"),
            ("segment_id",),  # optional in the docs, required in the Postman text: we send it
            ("day", "hour"),
            "sessions",
            "sessions.data_series",
        ),
        SeriesKind(
            "events",
            "/events/data_series",
            ("event", "segment_id", "app_id"),
            ("event",),
            ("day", "hour"),
            "count",
            "events.data_series",
        ),
        SeriesKind(
            "purchases_quantity",
            "/purchases/quantity_series",
            ("product", "app_id"),
            (),
            ("day", "hour"),
            "purchase_quantity",
            "purchases.quantity_series",
        ),
        SeriesKind(
            "purchases_revenue",
            "/purchases/revenue_series",
            ("product", "app_id"),
            (),
            ("day", "hour"),
            "revenue",
            "purchases.revenue_series",
            fractional=True,
        ),
        _kpi("dau"),
        _kpi("new_users"),
        _kpi("uninstalls"),
        _kpi("mau", additive=False),
        SeriesKind(
            "segment_size",
            "/segments/data_series",
            ("segment_id",),
            ("segment_id",),
            ("day",),
            "size",
            "segments.data_series",
            takes_unit=False,
            additive=False,  # an estimated size per day: a level, not a flow
        ),
        # Message analytics (Braze's "Export campaign analytics", "Export Canvas data series
        # analytics" and "Export send analytics" pages): day only, no unit parameter.
        SeriesKind(
            "campaigns",
            "/campaigns/data_series",
            ("campaign_id",),
            ("campaign_id",),
            ("day",),
            "value",
            "campaigns.data_series",
            fractional=True,
            takes_unit=False,
            pool=CAMPAIGNS_POOL,
            breakdowns=_CHANNEL_BREAKDOWNS,
        ),
        SeriesKind(
            "canvas",
            "/canvas/data_series",
            ("canvas_id",),
            ("canvas_id",),
            ("day",),
            "value",
            "canvas.data_series",
            fractional=True,
            takes_unit=False,
            max_length=14,  # "length: max of 14" (Braze's Canvas data series page)
            breakdowns=(
                "variant_api_id",
                "variant_name",
                "step_api_id",
                "step_name",
                "channel",
                "message_index",
            ),
        ),
        SeriesKind(
            "sends",
            "/sends/data_series",
            ("campaign_id", "send_id"),
            ("campaign_id", "send_id"),
            ("day",),
            "value",
            "sends.data_series",
            fractional=True,
            takes_unit=False,
            breakdowns=_CHANNEL_BREAKDOWNS,
            single=("campaign_id",),
            retention_days=14,  # "send analytics are kept 14 days after the send" (Braze)
        ),
    )
}
SERIES_NAMES: tuple[str, ...] = tuple(KINDS)


@dataclass(frozen=True, slots=True)
class ListSource:
    """A discovery endpoint: pages of names (or segment objects) under ``items_key``.

    ``page_size`` is Braze's documented page size, or None when undocumented (then paging
    stops at the first empty page). ``query``: parameters every page request carries besides
    ``page`` (the campaign list's ``include_archived``, say), as ``(name, value)`` pairs."""

    dimension: str
    path: str
    items_key: str
    page_size: int | None
    permission: str
    pool: str
    query: tuple[tuple[str, str], ...] = ()


LISTS: dict[str, ListSource] = {
    s.dimension: s
    for s in (
        ListSource(
            "segment_id", "/segments/list", "segments", 100, "segments.list", WORKSPACE_POOL
        ),
        ListSource("event", "/events/list", "events", 250, "events.list", LIST_POOL),
        ListSource(
            "product",
            "/purchases/product_list",
            "products",
            None,  # undocumented: stop at the first empty page
            "purchases.product_list",
            LIST_POOL,
        ),
    )
}
