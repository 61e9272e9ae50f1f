"""Discovery: the ids to export, read page by page from Braze's list endpoints.

Three lists (:data:`exporter.series.LISTS`; facts from Braze's "Get ... list" docs, see
../shared/BRAZE_API.md, "Discovery"):

* ``/segments/list?page=N``: pages from 0, 100 segments a page, each
  ``{"id", "name", "analytics_tracking_enabled", "tags"}``; archived segments are not listed.
  Only analytics-enabled segments have series, so only those are kept by default.
* ``/events/list?page=N``: 250 event names a page, alphabetical.
* ``/purchases/product_list?page=N``: product names; the page size is undocumented.

The campaign and Canvas lists (:data:`exporter.messaging.MESSAGING_LISTS`; Braze's "Export
campaigns list" and "Export Canvas list", braze.com/docs/api/endpoints/export/campaigns/
get_campaigns and .../canvas/get_canvases) are read the same way: pages from 0, 100 objects a
page, ``{"id", "name", "last_edited", "tags"}`` (campaigns also ``is_api_campaign``). Every page
asks ``sort_direction=asc`` (oldest first: a campaign created while paging lands on the last
page, not between pages already read), ``include_archived`` as the spec says (Braze lists
archived ones only when asked; the list does not say which are, so this cannot be filtered
afterwards) and, with ``edited_since``, ``last_edit.time[gt]``, which is also applied to the
items read (a server ignoring it costs pages, never a wrong id).

Paging ends at a page shorter than the documented size (without asking for the next), or at
the first empty page when the size is undocumented. A server that ignores ``page`` is caught:
a non-empty page identical to the previous one, or one whose well-formed ids were all seen
before, stops discovery with a :class:`~exporter.errors.DiscoveryError`, as does a list longer
than :data:`MAX_PAGES` pages. Every attempt goes through the pool's budget and the run's retry
policy, like a series request; a 401/403 stops at once.

Items are read tolerantly: one that is not a well-formed object (segments) or string (events,
products), or whose id is not a string of 1..256 characters, is counted and skipped, with one
warning per discovery. A segment whose ``analytics_tracking_enabled`` is not a boolean counts
as not enabled (one warning too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol, TypeVar

from exporter.client import Response, parse_body, raise_for_status
from exporter.errors import (
    DiscoveryError,
    MalformedResponse,
    RateLimited,
)
from exporter.messaging import MESSAGING_LISTS
from exporter.ratelimit import Budget
from exporter.redact import holds_secret
from exporter.retry import RetryPolicy, call_with_retries
from exporter.series import LISTS, ListSource

__all__ = [
    "MAX_ID_CHARS",
    "MAX_PAGES",
    "DiscoverSpec",
    "Discovered",
    "ListFetch",
    "ListItem",
    "ListPage",
    "discover",
    "discovery_cost",
    "interpret_list",
    "keeps",
    "paced",
    "read_time",
]

log = logging.getLogger(__name__)

MAX_PAGES = 10_000  # 1,000,000 segments or 2,500,000 events: far beyond any real workspace
MAX_ID_CHARS = 256
# Every list discovery reads; the lists of plain names (the others list objects with an id).
_SOURCES: dict[str, ListSource] = {**LISTS, **MESSAGING_LISTS}
_NAME_LISTS = ("event", "product")
_T = TypeVar("_T")
_TAGGED = ("segment_id", "campaign_id", "canvas_id")  # lists whose items carry tags


class ListFetch(Protocol):
    """What discovery needs of a client (:meth:`exporter.client.BrazeClient.get_list`)."""

    async def get_list(self, source: ListSource, page: int) -> Response:
        """GET page ``page`` (from 0) of ``source``; a failed exchange is a TransportError."""
        ...


@dataclass(frozen=True)
class DiscoverSpec:
    """Which items of one list to export.

    - ``dimension``: a key of :data:`exporter.series.LISTS` (``segment_id``, ``event``,
      ``product``) or of :data:`exporter.messaging.MESSAGING_LISTS` (``campaign_id``,
      ``canvas_id``).
    - ``name``: keep only items whose name (segment name, event or product name) matches,
      with ``re.search``; None keeps all.
    - ``tags`` (segments, campaigns, Canvases): keep items carrying at least one of these
      tags; empty keeps all.
    - ``analytics_only`` (segments only, ignored otherwise): keep only segments whose
      ``analytics_tracking_enabled`` is true: Braze has series only for those.
    - ``include_archived`` (campaigns, Canvases): list archived ones too.
    - ``edited_since`` (campaigns, Canvases; aware): keep those last edited after it.

    Raises ValueError for an unknown dimension, or a filter its list cannot apply."""

    dimension: str
    name: re.Pattern[str] | None = None
    tags: tuple[str, ...] = ()
    analytics_only: bool = True
    include_archived: bool = False
    edited_since: datetime | None = None

    def __post_init__(self) -> None:
        if self.dimension not in _SOURCES:
            raise ValueError(
                f"no list to discover {self.dimension!r} from; one of {list(_SOURCES)}"
            )
        if self.tags and self.dimension not in _TAGGED:
            raise ValueError(
                f"tags filter segments, campaigns and Canvases, not {self.dimension!r}"
            )
        messaging = self.dimension in MESSAGING_LISTS
        if (self.include_archived or self.edited_since is not None) and not messaging:
            raise ValueError(
                f"include_archived and edited_since filter campaigns and Canvases, not "
                f"{self.dimension!r}"
            )

    @property
    def source(self) -> ListSource:
        """The list endpoint, with the query parameters this spec sends on every page."""
        source = _SOURCES[self.dimension]
        if self.dimension not in MESSAGING_LISTS:
            return source
        query = [
            ("sort_direction", "asc"),
            ("include_archived", "true" if self.include_archived else "false"),
        ]
        if self.edited_since is not None:
            query.append(("last_edit.time[gt]", self.edited_since.isoformat()))
        return replace(source, query=tuple(query))


@dataclass(frozen=True)
class Discovered:
    """What one discovery found.

    - ``ids``: the kept ids (segment ids, event names, product names) in the order Braze
      listed them, each once.
    - ``requests``: list requests sent, every attempt counted (retries and 429s included).
    - ``pages``: pages read successfully.
    - ``skipped``: well-formed items left out by the spec (analytics disabled, name, tags).
    - ``malformed``: items that were not well-formed and were ignored.
    - ``duplicates``: items listed again on a later page (Braze's list moved while paging).
    - ``items``: every well-formed item listed, each once, in Braze's order (kept or not):
      other filters can be applied to them without reading the list again (:func:`keeps`)."""

    dimension: str
    ids: tuple[str, ...]
    requests: int
    pages: int
    skipped: int
    malformed: int = 0
    duplicates: int = 0
    items: tuple[ListItem, ...] = ()


@dataclass(frozen=True, slots=True)
class ListItem:
    """One well-formed list entry. For events and products ``id`` and ``name`` are the same
    string (segments, campaigns and Canvases: the object's ``id`` and ``name``).
    ``analytics`` is the segment's ``analytics_tracking_enabled`` when it is a boolean, else
    None (absent or not a boolean; events, products, campaigns, Canvases: None).
    ``last_edited``: a campaign's or Canvas' ``last_edited`` as listed (aware UTC), None
    when absent or not an ISO 8601 time (and for the other lists). ``raw`` is the entry as
    Braze listed it, every field (the dimension tables write them all)."""

    id: str
    name: str
    analytics: bool | None = None
    tags: tuple[str, ...] = ()
    last_edited: datetime | None = None
    raw: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class ListPage:
    """One page as read: its well-formed items, how many entries Braze listed in all (the
    malformed ones included: that is what the page size is about), and the raw entries, to
    recognise a page served twice."""

    items: tuple[ListItem, ...]
    size: int
    malformed: int
    raw: str


def interpret_list(source: ListSource, response: Response, *, page: int | None = None) -> ListPage:
    """The page a 200 response holds, or the classified error (labelled with the path and,
    when given, the page): 429 RateLimited (``reset_at`` from Retry-After or Reset, raw),
    401/403 AuthError naming ``source.permission``, 5xx and 408 ServerError, other statuses
    DiscoveryError; a 200 whose body is not JSON, has no ``source.items_key`` list, or whose
    ``message`` is present and not ``"success"``, MalformedResponse."""
    label = source.path if page is None else f"{source.path} page {page}"
    raise_for_status(response, permission=source.permission, label=label, rejected=DiscoveryError)
    return parse_body(response.body, lambda doc: _page_of(source, doc, label), label=label)


def _page_of(source: ListSource, doc: Any, label: str) -> ListPage:
    if not isinstance(doc, dict) or not isinstance(doc.get(source.items_key), list):
        raise MalformedResponse(f"body has no {source.items_key} list", status=200, label=label)
    # Braze's examples all carry "message": "success"; a body without it is still a list.
    if "message" in doc and doc["message"] != "success":
        raise MalformedResponse("message is not 'success'", status=200, label=label)
    entries: list[Any] = doc[source.items_key]
    read = _name if source.dimension in _NAME_LISTS else _object
    items = [item for item in map(read, entries) if item is not None]
    raw = json.dumps(entries, sort_keys=True, separators=(",", ":"), default=str)
    return ListPage(tuple(items), len(entries), len(entries) - len(items), raw)


def _valid_id(value: Any) -> bool:
    """A string of 1..256 characters that is valid Unicode text (JSON's ``\\ud800`` escapes
    give Python strings no file name, URL or UTF-8 file can hold), and that does not hold
    the API key (a server echoing it into a list): ids become paths, rows and state keys,
    which are then key-free by construction."""
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID_CHARS:
        return False
    if holds_secret(value):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _name(entry: Any) -> ListItem | None:
    return ListItem(entry, entry, raw=entry) if _valid_id(entry) else None


def _object(entry: Any) -> ListItem | None:
    """A segment, campaign or Canvas object with a valid id; a missing or odd name, tag
    list or ``last_edited`` reads as none (and a missing analytics flag, as campaigns have,
    as None)."""
    if not isinstance(entry, dict) or not _valid_id(entry.get("id")):
        return None
    name = entry.get("name")
    tags = entry.get("tags")
    analytics = entry.get("analytics_tracking_enabled")
    return ListItem(
        entry["id"],
        name if isinstance(name, str) else "",
        analytics if isinstance(analytics, bool) else None,
        tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (),
        read_time(entry.get("last_edited")),
        entry,
    )


def read_time(value: Any) -> datetime | None:
    """An ISO 8601 time from Braze as an aware UTC datetime (naive is read as UTC; a bare
    date is its midnight), or None when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


async def paced(
    budget: Budget,
    send: Callable[[], Awaitable[Response]],
    read: Callable[[Response], _T],
) -> _T:
    """One attempt of a call outside the series pipeline (a list page, a details request):
    a token from ``budget``, the call, its rate headers reported to the budget, then
    ``read``'s interpretation. A 429 closes the budget's gate and raises ``read``'s
    RateLimited with the budget's sanitized pause (never the raw header) as ``reset_at``."""
    await budget.acquire()
    response = await send()
    budget.observe(response.rate, status=response.status)
    if response.status == 429:
        until = budget.rate_limited(response.rate)
        try:
            read(response)
        except RateLimited as exc:
            exc.reset_at = until
            raise
    return read(response)


def keeps(spec: DiscoverSpec, item: ListItem) -> bool:
    """Whether ``spec``'s filters keep a listed item. An item without a readable
    ``last_edited`` is kept by ``edited_since`` (Braze listed it for that query)."""
    if spec.dimension == "segment_id" and spec.analytics_only and item.analytics is not True:
        return False
    if spec.tags and not set(spec.tags) & set(item.tags):
        return False
    since, edited = spec.edited_since, item.last_edited
    if since is not None and edited is not None and edited <= since:
        return False
    return spec.name is None or spec.name.search(item.name) is not None


async def discover(
    fetch: ListFetch,
    spec: DiscoverSpec,
    *,
    budget: Budget,
    retry: RetryPolicy,
    max_pages: int = MAX_PAGES,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
) -> Discovered:
    """Read ``spec``'s list page by page and return the ids the spec keeps.

    ``budget`` must be the budget of the list's pool (``spec.source.pool``: the workspace
    pool for segments, the 1,000/hour list pool for events and products). Each attempt
    acquires from it and reports its headers; a 429 closes its gate and the attempt is
    retried when it opens. ``retry`` governs transient failures (429, 5xx, timeouts,
    malformed bodies); ``stopping``, ``sleep``, ``clock`` and ``rand`` are passed to
    :func:`exporter.retry.call_with_retries`.

    Raises AuthError (401/403) at once; DiscoveryError for another 4xx, a repeated page or
    more than ``max_pages`` pages; the last RetryableError when the retries give up."""
    source = spec.source
    requests = 0
    kept: list[str] = []
    seen: set[str] = set()
    skipped = malformed = duplicates = odd_flags = 0
    listed: list[ListItem] = []
    previous: str | None = None

    async def attempt(page: int) -> ListPage:
        nonlocal requests
        requests += 1
        return await paced(
            budget,
            partial(fetch.get_list, source, page),
            partial(interpret_list, source, page=page),
        )

    pages = 0
    while True:
        if stopping():
            raise DiscoveryError(
                "stopped before the list's end (the run is stopping)", label=source.path
            )
        if pages >= max_pages:
            raise DiscoveryError(
                f"more than {max_pages:,} pages; stopped (does the server ignore 'page'?)",
                label=source.path,
            )
        page = pages
        result = await call_with_retries(
            partial(attempt, page),
            policy=retry,
            label=f"{source.path} page {page}",
            stopping=stopping,
            sleep=sleep,
            clock=clock,
            rand=rand,
        )
        pages += 1
        if result.size == 0:
            break
        if result.raw == previous:
            raise DiscoveryError(
                f"page {page} repeats page {page - 1}: the server ignores 'page'; stopped",
                label=source.path,
            )
        previous = result.raw
        new = 0
        for item in result.items:
            if item.id in seen:
                duplicates += 1
                continue
            seen.add(item.id)
            new += 1
            if spec.dimension == "segment_id" and item.analytics is None:
                odd_flags += 1
            listed.append(item)
            if keeps(spec, item):
                kept.append(item.id)
            else:
                skipped += 1
        malformed += result.malformed
        if result.items and not new:
            raise DiscoveryError(
                f"page {page} lists no id that earlier pages did not: the server ignores "
                "'page'; stopped",
                label=source.path,
            )
        if source.page_size is not None and result.size < source.page_size:
            break  # a short page is the last: asking for the next would cost a request
    if malformed:
        log.warning(
            "%s: %d entries were not well-formed (an id must be a string of 1..%d "
            "characters, not holding the API key) and were skipped",
            source.path,
            malformed,
            MAX_ID_CHARS,
            extra={"event": "discover_malformed"},
        )
    if odd_flags:
        log.warning(
            "%s: %d segments have no boolean analytics_tracking_enabled; counted as not enabled",
            source.path,
            odd_flags,
            extra={"event": "discover_analytics_flag"},
        )
    found = Discovered(
        spec.dimension,
        tuple(kept),
        requests,
        pages,
        skipped,
        malformed,
        duplicates,
        tuple(listed),
    )
    log.info(
        "%s: %d kept, %d skipped, in %d pages (%d requests)",
        source.path,
        len(found.ids),
        skipped,
        pages,
        requests,
        extra={"event": "discovered"},
    )
    return found


def discovery_cost(spec: DiscoverSpec) -> str:
    """What discovering ``spec`` costs at least, for a dry ``plan``: one line naming the
    endpoint, its pool and how the requests grow, e.g. ``at least 1 request to
    /segments/list (workspace pool; one per 100 segments)``. Page sizes are Braze's
    documented ones; the product list's is undocumented, so each page costs one request
    and the final empty page one more."""
    source = spec.source
    things = {
        "segment_id": "segments",
        "event": "events",
        "product": "products",
        "campaign_id": "campaigns",
        "canvas_id": "Canvases",
    }[spec.dimension]
    if source.page_size is None:
        growth = f"one per page of {things}, plus the empty page that ends the list"
    else:
        growth = f"one per {source.page_size} {things}"
    return f"at least 1 request to {source.path} ({source.pool} pool; {growth})"
