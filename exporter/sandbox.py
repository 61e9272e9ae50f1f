"""A Braze-compatible local server for the analytics series family and its list endpoints.

Every series of :data:`exporter.series.KINDS` is served at its path, driven by its description
(dimensions, required ones, units, value key), as Braze documents those endpoints: Bearer auth,
400 with ``message``/``errors`` for bad parameters, ``length`` points in Braze's ``time``
format. Values are deterministic and realistic (weekly and daily rhythms; DAU below MAU; a
segment's size drifting slowly) functions of (series, dimensions, unit, time), so a test can
check every exported row against :func:`series_value` (:func:`session_count` for sessions).

The discovery endpoints of :data:`exporter.series.LISTS` page through a deterministic
catalogue sized by the options (:func:`catalogue`): segments with their analytics flag and
tags, event names, product names.

Each rate-limit pool (``workspace``, ``lists``) has its own fixed-window counter with
``X-RateLimit-Limit/Remaining/Reset`` on its responses and 429 when spent (``reset_style``
writes Reset in epoch seconds as Braze does, or in the odd shapes other APIs send:
milliseconds, a time already gone, or not at all). ``throttle`` answers the first requests of a
pool 429 whatever its count, to show that one pool's pause leaves the other alone.

Which periods a request covers is one of three window semantics, since Braze does not document
it (``SandboxOptions.semantics``):

* ``contains`` (the default): the ``length`` periods ending with the period that contains
  ``ending_at``; day periods are dates in ``ending_at``'s own offset, hour periods UTC hours;
* ``exclusive``: the window ends one period *before* the one containing ``ending_at``;
* ``utc``: as ``contains``, but days are cut in UTC whatever offset ``ending_at`` carries.

Hour labels are written naive (``2024-01-05T10:00:00``), with ``Z`` or with ``+00:00``
(``SandboxOptions.hour_labels``).

Faults for reliability tests are deterministic: whether the n-th identical request fails, and
how, is a hash of (seed, path and parameters, n), whatever order requests arrive in.

A test that must act while a run is mid-way (kill it, start a rival run) passes ``gate``: the
first ``gate_after`` series requests (and those to the ``gated`` paths) are answered, the rest
are counted and then held until the test sets the event, so the run cannot finish early however
fast or slow the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from aiohttp import web

from exporter.client import SANDBOX_HEADER
from exporter.series import (
    CAMPAIGNS_POOL,
    KINDS,
    LIST_POOL,
    LISTS,
    WORKSPACE_POOL,
    ListSource,
    SeriesKind,
)

__all__ = [
    "FAULT_KINDS",
    "HOUR_LABELS",
    "POOLS",
    "PRODUCT_PAGE_SIZE",
    "RESET_STYLES",
    "SEMANTICS",
    "Catalogue",
    "PoolStats",
    "SandboxOptions",
    "SandboxStats",
    "Segment",
    "catalogue",
    "free_port",
    "make_app",
    "run_sandbox",
    "sandbox_stats",
    "series_value",
    "session_count",
    "start_sandbox",
]

FAULT_KINDS = ("500", "502", "503", "504", "reset", "slow", "truncated", "bad_series")
SEMANTICS = ("contains", "exclusive", "utc")
HOUR_LABELS = {"naive": "", "z": "Z", "offset": "+00:00"}
# How X-RateLimit-Reset is written: Braze's epoch seconds, or the odd shapes other APIs send.
RESET_STYLES = ("seconds", "ms", "past", "missing")
POOLS: tuple[str, ...] = tuple(
    dict.fromkeys(
        [WORKSPACE_POOL, LIST_POOL, CAMPAIGNS_POOL]
        + [k.pool for k in KINDS.values()]
        + [s.pool for s in LISTS.values()]
    )
)
PRODUCT_PAGE_SIZE = 50  # Braze does not document it; the exporter must stop at an empty page
_WEEKDAY = (1.0, 1.04, 1.06, 1.03, 0.97, 0.82, 0.78)


@dataclass
class SandboxOptions:
    api_key: str | None = None  # None: any Bearer token is accepted
    limit: int = 250_000  # workspace pool: requests per window; 0 turns the rate limit off
    list_limit: int = 1_000  # the lists pool (/events/list, /purchases/product_list); 0: off
    window_s: float = 3600.0
    campaigns_limit: int = 50_000  # /campaigns/data_series' own pool, per campaigns_window_s
    campaigns_window_s: float = 60.0
    throttle: Mapping[str, int] = field(default_factory=dict)  # pool -> its first K answer 429
    fault_rate: float = 0.0
    seed: int = 0
    slow_s: float = 60.0  # how long a "slow" fault stalls; make it exceed the client timeout
    reject_segments: frozenset[str] = frozenset()
    not_found_segments: frozenset[str] = frozenset()  # answered 404, as a wrong path would be
    body_pieces: int = 1  # a 200 body written in this many pieces, 1 ms apart
    deny: bool = False
    deny_permissions: frozenset[str] = frozenset()  # 403 for these only (a key lacking them)
    restate: int = 0  # 0: values never change; another number: recent days read differently
    restate_days: int = 3
    semantics: str = "contains"  # one of SEMANTICS
    missing_days: frozenset[str] = frozenset()  # dates never returned (a hole in the data)
    hour_labels: str = "naive"  # a key of HOUR_LABELS
    reset_style: str = "seconds"  # one of RESET_STYLES
    segments: int = 230  # the catalogue behind the list endpoints
    events: int = 40
    products: int = 12
    campaigns: int = 150  # the campaigns and Canvases of exporter.sandbox_messaging
    canvases: int = 40
    product_page_size: int = PRODUCT_PAGE_SIZE
    latency_s: float = 0.0  # every answer waits this long first, as over a network
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    gate: asyncio.Event | None = None  # None: answer at once; see the module docstring
    gate_after: int = 0  # series answers given before the gate holds the rest
    # Other paths whose answers the gate holds too (e.g. /campaigns/details), counted with
    # the series answers in ``gate_after``.
    gated: frozenset[str] = frozenset()
    # False: answers without the X-Braze-Export-Sandbox header, as Braze's own do (a test
    # standing in for a real host); True everywhere else, so invented rows are marked.
    identify: bool = True
    # List path -> its first page answered 500, every attempt: a listing that breaks mid-way.
    list_outage: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reset_style not in RESET_STYLES:
            raise ValueError(f"reset_style must be one of {', '.join(RESET_STYLES)}")
        unknown = sorted(set(self.throttle) - set(POOLS))
        if unknown:
            raise ValueError(f"throttle: unknown pool {unknown[0]!r}; pools: {', '.join(POOLS)}")
        sizes = (self.segments, self.events, self.products, self.campaigns, self.canvases)
        if min(sizes) < 0 or self.product_page_size < 1:
            raise ValueError("catalogue sizes must be >= 0 and product_page_size >= 1")
        if self.latency_s < 0:
            raise ValueError("latency_s must be >= 0")

    def pool_limit(self, pool: str) -> int:
        """Requests per window in ``pool`` (0: no limit)."""
        if pool == CAMPAIGNS_POOL:
            return self.campaigns_limit
        return self.list_limit if pool == LIST_POOL else self.limit

    def pool_window(self, pool: str) -> float:
        """The length of ``pool``'s fixed window in seconds."""
        return self.campaigns_window_s if pool == CAMPAIGNS_POOL else self.window_s


@dataclass
class PoolStats:
    """One rate-limit pool's counts (``window_counts``: requests per fixed window)."""

    requests: int = 0
    rate_limited: int = 0
    max_in_window: int = 0
    window_counts: dict[int, int] = field(default_factory=dict)


@dataclass
class SandboxStats:
    """What the sandbox served. ``max_in_window`` and ``window_counts`` are the workspace
    pool's (the one the series draw from); ``pools`` has every pool, ``paths`` counts every
    request received per path."""

    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    faults: int = 0
    repeated: int = 0  # distinct requests received more than once (retries, resumed runs)
    paths: dict[str, int] = field(default_factory=dict)
    pools: dict[str, PoolStats] = field(default_factory=lambda: {p: PoolStats() for p in POOLS})

    @property
    def max_in_window(self) -> int:
        return self.pools[WORKSPACE_POOL].max_in_window

    @property
    def window_counts(self) -> dict[int, int]:
        return self.pools[WORKSPACE_POOL].window_counts


# --- values -----------------------------------------------------------------------------


def session_count(segment: str, app: str | None, unit: str, label: str, restate: int = 0) -> int:
    """The sandbox's value for one point; ``restate`` shifts it (Braze restating late data)."""
    return int(
        series_value("sessions", {"segment_id": segment, "app_id": app}, unit, label, restate)
    )


def series_value(
    kind: str, dims: Mapping[str, str | None], unit: str, label: str, restate: int = 0
) -> int | float:
    """The sandbox's value for one point of series ``kind`` (a key of ``KINDS``) with the given
    dimension values (missing or None: not given), as the kind's endpoint returns it: an int, or
    a float with 2 decimals for a fractional kind. ``restate`` shifts it (Braze restating late
    data). Day-only kinds ignore ``unit``."""
    series = KINDS[kind]
    given = {d: dims.get(d) or "" for d in series.dimensions}
    value = _VALUES[kind](given, unit if series.takes_unit else "day", label)
    if restate:
        value *= 1 + 0.01 * (1 + restate % 17)
    return round(value, 2) if series.fractional else round(value)


def _hash01(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _flow(key: str, unit: str, label: str, low: float, spread: float) -> float:
    """A count per period with weekly (days) or daily (hours) rhythm; ``low + spread * h`` per
    hour at the daily peak, h a hash of ``key``."""
    scale = low + _hash01(key) * spread
    noise = 0.85 + 0.3 * _hash01(f"{key}\x1f{label}")
    if unit == "day":
        weekday = date.fromisoformat(label[:10]).weekday()
        return scale * 14 * _WEEKDAY[weekday] * noise
    hour = int(label[11:13])
    return scale * (0.25 + 0.75 * math.sin(math.pi * max(0, hour - 5) / 19) ** 2) * noise


def _key(kind: str, dims: Mapping[str, str], unit: str) -> str:
    return "\x1f".join((kind, *dims.values(), unit))


def _level(key: str, label: str, low: float, spread: float, period: float, swing: float) -> float:
    """A slowly varying level: ``low + spread * h`` swinging by ``swing`` over ``period`` days,
    with a little day-to-day noise."""
    day = date.fromisoformat(label[:10]).toordinal()
    base = low + _hash01(key) * spread
    phase = 2 * math.pi * _hash01(f"{key}\x1fphase")
    noise = 1 + 0.004 * (_hash01(f"{key}\x1f{label[:10]}") - 0.5)
    return base * (1 + swing * math.sin(2 * math.pi * day / period + phase)) * noise


def _mau(dims: Mapping[str, str], label: str) -> float:
    return _level(_key("mau", dims, "day"), label, 2_000, 400_000, 120, 0.08)


def _dau(dims: Mapping[str, str], label: str) -> float:
    # At most 0.2 * 1.06 * 1.1 of MAU: always below it.
    key = _key("dau", dims, "day")
    share = (0.08 + 0.12 * _hash01(key)) * _WEEKDAY[date.fromisoformat(label[:10]).weekday()]
    return _mau(dims, label) * share * (0.9 + 0.2 * _hash01(f"{key}\x1f{label[:10]}"))


def _new_users(dims: Mapping[str, str], label: str) -> float:
    key = _key("new_users", dims, "day")
    share = 0.015 + 0.05 * _hash01(key)
    return _dau(dims, label) * share * (0.8 + 0.4 * _hash01(f"{key}\x1f{label[:10]}"))


def _uninstalls(dims: Mapping[str, str], label: str) -> float:
    key = _key("uninstalls", dims, "day")
    share = 0.2 + 0.4 * _hash01(key)
    return _new_users(dims, label) * share * (0.7 + 0.6 * _hash01(f"{key}\x1f{label[:10]}"))


def _quantity(dims: Mapping[str, str], unit: str, label: str) -> int:
    return round(_flow(_key("purchases_quantity", dims, unit), unit, label, 0.2, 80))


def _revenue(dims: Mapping[str, str], unit: str, label: str) -> float:
    price = 0.99 + 30 * _hash01(f"price\x1f{dims['product']}")
    discount = 0.9 + 0.1 * _hash01(f"{_key('purchases_revenue', dims, unit)}\x1f{label}")
    return _quantity(dims, unit, label) * price * discount


_VALUES: dict[str, Callable[[Mapping[str, str], str, str], float]] = {
    # The sessions key predates the family: kept, so session_count's values never change.
    "sessions": lambda d, u, t: _flow(f"{d['segment_id']}\x1f{d['app_id']}\x1f{u}", u, t, 40, 4000),
    "events": lambda d, u, t: _flow(_key("events", d, u), u, t, 2, 1500),
    "purchases_quantity": _quantity,
    "purchases_revenue": _revenue,
    "dau": lambda d, _u, t: _dau(d, t),
    "mau": lambda d, _u, t: _mau(d, t),
    "new_users": lambda d, _u, t: _new_users(d, t),
    "uninstalls": lambda d, _u, t: _uninstalls(d, t),
    "segment_size": lambda d, _u, t: _level(
        _key("segment_size", d, "day"), t, 50, 800_000, 365, 0.15
    ),
}


# --- the catalogue behind the list endpoints ----------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """One ``/segments/list`` item."""

    id: str
    name: str
    analytics_tracking_enabled: bool
    tags: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "analytics_tracking_enabled": self.analytics_tracking_enabled,
            "tags": list(self.tags),
        }


@dataclass(frozen=True, slots=True)
class Catalogue:
    """What the list endpoints serve: segments in creation order, event names alphabetical,
    product names in the order served."""

    segments: tuple[Segment, ...]
    events: tuple[str, ...]
    products: tuple[str, ...]


_AUDIENCES = (
    "New users",
    "Lapsed users",
    "Power users",
    "Purchasers",
    "Trial users",
    "Churn risk",
    "Newsletter subscribers",
    "Cart abandoners",
    "Push enabled",
    "Reactivated users",
)
_QUALIFIERS = ("iOS", "Android", "Web", "EU", "US", "last 7 days", "last 30 days", "VIP", "beta")
_TAGS = ("lifecycle", "paid", "test", "onboarding", "retention", "promo")
_VERBS = ("added", "completed", "opened", "rated", "saved", "shared", "started", "viewed")
_OBJECTS = ("article", "cart", "level", "playlist", "product", "profile", "tutorial", "video")
_ITEMS = ("coins", "gems", "premium", "season_pass", "starter_pack", "remove_ads")
_TIERS = ("small", "medium", "large", "monthly", "yearly")
_ANALYTICS_OFF = 0.3  # share of segments without analytics tracking


def _name(i: int, first: tuple[str, ...], second: tuple[str, ...], sep: str) -> str:
    """The i-th of first x second, numbered once every pair is used."""
    name = f"{first[i % len(first)]}{sep}{second[i // len(first) % len(second)]}"
    lap = i // (len(first) * len(second))
    return f"{name}{sep}{lap + 1}" if lap else name


def _segment(i: int) -> Segment:
    digest = hashlib.blake2b(f"segment\x1f{i}".encode(), digest_size=16).hexdigest()
    uid = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
    tags = tuple(t for j, t in enumerate(_TAGS) if _hash01(f"{uid}\x1ftag\x1f{j}") < 0.2)
    return Segment(
        uid,
        _name(i, _AUDIENCES, _QUALIFIERS, " - "),
        _hash01(f"{uid}\x1fanalytics") >= _ANALYTICS_OFF,
        tags,
    )


def catalogue(options: SandboxOptions | None = None) -> Catalogue:
    """The segments, events and products the list endpoints serve for ``options``; a larger
    catalogue extends a smaller one."""
    opts = options or SandboxOptions()
    return Catalogue(
        tuple(_segment(i) for i in range(opts.segments)),
        tuple(sorted(_name(i, _VERBS, _OBJECTS, "_") for i in range(opts.events))),
        tuple(_name(i, _ITEMS, _TIERS, "_") for i in range(opts.products)),
    )


# --- the server -------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.stats = SandboxStats()
        self.catalogue = catalogue(options)
        self._seen: dict[str, int] = {}
        self._let_through = 0  # series answers given before the gate

    def _rate(self, pool: str) -> tuple[dict[str, str], bool]:
        """Count this request in its pool's fixed window; headers, and whether it is over."""
        opts = self.options
        counts = self.stats.pools.setdefault(pool, PoolStats())
        counts.requests += 1
        throttled = counts.requests <= opts.throttle.get(pool, 0)
        limit = opts.pool_limit(pool)
        if limit <= 0:
            return {}, throttled
        now = opts.clock()
        window_s = opts.pool_window(pool)
        window = math.floor(now / window_s)
        used = counts.window_counts.get(window, 0) + 1
        counts.window_counts[window] = used
        reset = math.ceil((window + 1) * window_s)
        over = used > limit or throttled
        if not over:
            counts.max_in_window = max(counts.max_in_window, used)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": "0" if throttled else str(max(0, limit - used)),
        }
        if opts.reset_style == "seconds":
            headers["X-RateLimit-Reset"] = str(reset)
        elif opts.reset_style == "ms":
            headers["X-RateLimit-Reset"] = str(reset * 1000)
        elif opts.reset_style == "past":
            # A stale value: a reset that has already happened, a minute before this window.
            headers["X-RateLimit-Reset"] = str(math.floor(window * window_s) - 60)
        return headers, over

    def _admit(
        self, request: web.Request, pool: str, permission: str
    ) -> tuple[dict[str, str], web.Response | None]:
        """What every endpoint does first: count, rate-limit, authenticate, authorise. Returns
        the rate-limit headers and, when the request ends here, its answer."""
        self.stats.requests += 1
        self.stats.paths[request.path] = self.stats.paths.get(request.path, 0) + 1
        headers, over = self._rate(pool)
        auth = request.headers.get("Authorization", "")
        opts = self.options
        if "api_key" in request.query:
            return headers, _error(
                401, "Use the Authorization header; api_key in the URL is refused", headers
            )
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return headers, _error(401, "Invalid API key", headers)
        if opts.api_key is not None and auth[7:] != opts.api_key:
            return headers, _error(401, "Invalid API key", headers)
        if over:
            self.stats.rate_limited += 1
            self.stats.pools[pool].rate_limited += 1
            return headers, _error(429, "Rate limit exceeded", headers)
        if opts.deny or permission in opts.deny_permissions:
            return headers, _error(403, f"API key lacks permission {permission}", headers)
        return headers, None

    async def _answer(
        self, request: web.Request, doc: object, bad: object, headers: dict[str, str]
    ) -> web.StreamResponse:
        """200 with ``doc``, unless this receipt of the request draws a fault (``bad``: the
        body of a 200 that is not a valid answer)."""
        outage = self.options.list_outage.get(request.path)
        page = request.query.get("page", "0")
        if outage is not None and page.isdigit() and int(page) >= outage:
            return _error(500, "Internal Server Error", headers)
        key = request.path_qs
        n = self._seen.get(key, 0)
        self._seen[key] = n + 1
        if n == 1:
            self.stats.repeated += 1
        fault = self._fault(key, n)
        if fault is not None:
            self.stats.faults += 1
            return await _faulty(request, fault, headers, self.options.slow_s, bad)
        self.stats.ok += 1
        if self.options.body_pieces > 1:
            return await _in_pieces(request, doc, headers, self.options)
        return web.json_response(doc, headers=headers)

    async def _wait(self) -> None:
        """The network's round trip: every answer, whatever it is, waits ``latency_s``."""
        if self.options.latency_s > 0:
            await self.options.sleep(self.options.latency_s)

    def series_handler(self, kind: SeriesKind) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            await self._wait()
            headers, done = self._admit(request, kind.pool, kind.permission)
            if done is not None:
                return done
            opts = self.options
            try:
                dims, unit, labels = _parse(
                    kind, request.query, opts.clock(), opts.semantics, opts.hour_labels
                )
            except ValueError as exc:
                return _error(400, "Invalid parameters", headers, [str(exc)])
            segment = dims.get("segment_id")
            if segment in opts.not_found_segments:
                return _error(404, "Not Found", headers)
            if segment in opts.reject_segments:
                return _error(400, "Invalid segment_id", headers, [f"segment {segment} not found"])
            recent = datetime.fromtimestamp(opts.clock(), UTC).date() - timedelta(
                days=opts.restate_days
            )
            data = [
                {
                    "time": label,
                    kind.value_key: series_value(
                        kind.name,
                        dims,
                        unit,
                        label,
                        opts.restate if date.fromisoformat(label[:10]) >= recent else 0,
                    ),
                }
                for label in labels
                if label[:10] not in opts.missing_days
            ]
            bad = {"message": "success", "data": [{"time": "not-a-time", kind.value_key: -3}]}
            await self.pass_gate()
            return await self._answer(request, {"message": "success", "data": data}, bad, headers)

        return handle

    async def pass_gate(self) -> None:
        """Hold this answer while the test's gate is closed, once ``gate_after`` went out."""
        gate = self.options.gate
        if gate is None or gate.is_set():
            return
        if self._let_through < self.options.gate_after:
            self._let_through += 1
            return
        await gate.wait()

    def list_handler(self, source: ListSource) -> Handler:
        items: tuple[object, ...] = {
            "segments": tuple(s.as_json() for s in self.catalogue.segments),
            "events": self.catalogue.events,
            "products": self.catalogue.products,
        }[source.items_key]
        size = source.page_size or self.options.product_page_size

        async def handle(request: web.Request) -> web.StreamResponse:
            await self._wait()
            headers, done = self._admit(request, source.pool, source.permission)
            if done is not None:
                return done
            text = request.query.get("page", "0")
            page = int(text) if text.isascii() and text.isdigit() else -1
            if page < 0:
                errors = [f"page must be a non-negative integer, got {text!r}"]
                return _error(400, "Invalid parameters", headers, errors)
            doc = {
                "message": "success",
                source.items_key: list(items[page * size : (page + 1) * size]),
            }
            bad = {"message": "success", source.items_key: "not-a-list"}
            return await self._answer(request, doc, bad, headers)

        return handle

    def _fault(self, key: str, n: int) -> str | None:
        """Whether the n-th receipt of this exact request fails, and how."""
        if self.options.fault_rate <= 0:
            return None
        roll = _hash01(f"{self.options.seed}\x1f{key}\x1f{n}")
        if roll >= self.options.fault_rate:
            return None
        return FAULT_KINDS[math.floor(roll / self.options.fault_rate * len(FAULT_KINDS))]

    async def stats_view(self, _: web.Request) -> web.Response:
        s = self.stats
        doc = {
            "requests": s.requests,
            "ok": s.ok,
            "rate_limited": s.rate_limited,
            "faults": s.faults,
            "max_in_window": s.max_in_window,
            "repeated": s.repeated,
            "windows": _windows(s.window_counts),
            "paths": dict(sorted(s.paths.items())),
            "pools": {
                name: {
                    "requests": p.requests,
                    "rate_limited": p.rate_limited,
                    "max_in_window": p.max_in_window,
                    "windows": _windows(p.window_counts),
                }
                for name, p in s.pools.items()
            },
        }
        return web.json_response(doc)


def _windows(counts: Mapping[int, int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counts.items())}


def _parse(
    kind: SeriesKind,
    query: Mapping[str, str],
    now: float,
    semantics: str = "contains",
    hour_labels: str = "naive",
) -> tuple[dict[str, str | None], str, list[str]]:
    """The dimensions, unit and period labels a series request asks for; ValueError when its
    parameters are bad. Parameters the kind does not take are ignored, as Braze does."""
    length_text = query.get("length")
    if length_text is None:
        raise ValueError("length is required")
    try:
        length = int(length_text)
    except ValueError:
        raise ValueError(f"length must be an integer, got {length_text!r}") from None
    if not 1 <= length <= 100:
        raise ValueError(f"length must be between 1 and 100, got {length}")
    unit = query.get("unit", "day")
    if not kind.takes_unit and unit != "day":
        raise ValueError(f"{kind.path} takes no unit: it serves days only, got unit={unit!r}")
    if unit not in kind.units:
        raise ValueError(f"unit must be {' or '.join(kind.units)}, got {unit!r}")
    dims = {d: query.get(d) or None for d in kind.dimensions}
    for d in kind.required:
        if not dims[d]:
            raise ValueError(f"{d} is required")
    raw_end = query.get("ending_at")
    try:
        end = datetime.fromisoformat(raw_end) if raw_end else datetime.fromtimestamp(now, UTC)
    except ValueError:
        raise ValueError(f"ending_at must be an ISO 8601 datetime, got {raw_end!r}") from None
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    back = 1 if semantics == "exclusive" else 0
    if unit == "day":
        last = (end.astimezone(UTC) if semantics == "utc" else end).date()
        last -= timedelta(days=back)
        labels = [(last - timedelta(days=i)).isoformat() for i in range(length - 1, -1, -1)]
    else:
        top = math.floor(end.timestamp() / 3600) - back
        suffix = HOUR_LABELS[hour_labels]
        labels = [
            datetime.fromtimestamp((top - i) * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S") + suffix
            for i in range(length - 1, -1, -1)
        ]
    return dims, unit, labels


def _error(
    status: int, message: str, headers: dict[str, str], errors: list[str] | None = None
) -> web.Response:
    return web.json_response(
        {"message": message, "errors": errors or []}, status=status, headers=headers
    )


async def _in_pieces(
    request: web.Request, doc: object, headers: dict[str, str], opts: SandboxOptions
) -> web.StreamResponse:
    """A body that arrives in several reads, as it does from a real server over a network."""
    body = json.dumps(doc).encode()
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
    await response.prepare(request)
    step = max(1, math.ceil(len(body) / opts.body_pieces))
    for start in range(0, len(body), step):
        await response.write(body[start : start + step])
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


async def _faulty(
    request: web.Request, fault: str, headers: dict[str, str], slow_s: float, bad: object
) -> web.StreamResponse:
    if fault.isdigit():
        return _error(int(fault), "Injected fault", headers)
    if fault == "slow":
        await asyncio.sleep(slow_s)
        return _error(503, "Injected slow response", headers)
    if fault == "bad_series":
        return web.json_response(bad, headers=headers)
    if fault == "truncated":
        whole = json.dumps({"message": "success", "data": [{"time": "2024-01-01"}]}).encode()
        return web.Response(
            body=whole[: len(whole) // 2], headers=headers, content_type="application/json"
        )
    # "reset": drop the connection without a response.
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=500)


_SANDBOX = web.AppKey("sandbox", _Sandbox)


def sandbox_stats(app: web.Application) -> SandboxStats:
    """What the sandbox behind ``app`` has served so far."""
    return app[_SANDBOX].stats


async def _say_sandbox(_request: web.Request, response: web.StreamResponse) -> None:
    """Every answer, errors included, names its source: no run can take these invented rows
    for Braze's (the run's manifest records ``source.sandbox: true``)."""
    response.headers[SANDBOX_HEADER] = "1"


def make_app(options: SandboxOptions | None = None) -> web.Application:
    sandbox = _Sandbox(options or SandboxOptions())
    app = web.Application()
    app[_SANDBOX] = sandbox
    if sandbox.options.identify:
        app.on_response_prepare.append(_say_sandbox)
    for kind in KINDS.values():
        if not kind.long:  # the message series: exporter.sandbox_messaging serves them
            app.router.add_get(kind.path, sandbox.series_handler(kind))
    for source in LISTS.values():
        app.router.add_get(source.path, sandbox.list_handler(source))
    # Imported here: the campaign and Canvas endpoints are built on this module's helpers.
    from exporter.sandbox_messaging import add_messaging_routes

    add_messaging_routes(app, sandbox)
    app.router.add_get("/_sandbox/stats", sandbox.stats_view)
    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def start_sandbox(
    options: SandboxOptions | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start it in this event loop; returns the runner (call ``cleanup()``) and its URL."""
    # A short shutdown: a "slow" fault may still be sleeping when its client has given up.
    runner = web.AppRunner(
        make_app(options), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only here
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}"


def run_sandbox(options: SandboxOptions, host: str, port: int) -> None:
    """Serve until interrupted (the ``braze-export sandbox`` command)."""

    async def serve() -> None:
        runner, url = await start_sandbox(options, host, port)
        limits = ", ".join(
            f"{pool} {'off' if n <= 0 else f'{n}/{options.pool_window(pool):g}s'}"
            for pool, n in ((p, options.pool_limit(p)) for p in POOLS)
        )
        print(f"sandbox listening on {url} (rate limits: {limits})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
