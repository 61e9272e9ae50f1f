"""Campaign and Canvas details: read, interpreted as a :class:`~exporter.activity.Life`, kept.

Braze's "Export campaign details" (GET /campaigns/details?campaign_id=, permission
campaigns.details) and "Export Canvas details" (GET /canvas/details?canvas_id=, permission
canvas.details), braze.com/docs/api/endpoints/export/campaigns/get_campaign_details and
.../canvas/get_canvas_details; both in the workspace's 250,000/hour pool. Fields used::

    {"message": "success", "draft": bool, "first_sent": ISO 8601 | null,
     "last_sent": ISO 8601 | null, "conversion_behaviors": [{"type": ..., "window": s}, ...]}
    {"message": "success", "draft": bool, "first_entry": ..., "last_entry": ...}

Details are kept in the resume state (table ``details``), each with the ``last_edited`` the
list showed when they were read, so a run reads them again only when that changes or when a
window makes fresh ones pay (:func:`wants_fresh`), not every night.

A details request that fails leaves that id without details: its whole window is read. A
403 (the key lacks the details permission) stops reading details of that kind for the run:
every id of it falls back to its whole window, and the caller says so once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol

from exporter.activity import Life
from exporter.client import Response, parse_body, raise_for_status
from exporter.discover import paced, read_time
from exporter.errors import (
    AuthError,
    DiscoveryError,
    ExporterError,
    RetryableError,
    TransportError,
    Unreachable,
)
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy, call_with_retries
from exporter.series import WORKSPACE_POOL

__all__ = [
    "DETAILS",
    "SCHEMA",
    "DetailsFetch",
    "DetailsRead",
    "DetailsSource",
    "Known",
    "decode",
    "encode",
    "interpret_details",
    "read_details",
    "wants_fresh",
]

log = logging.getLogger(__name__)

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS details (scope TEXT, dimension TEXT, id TEXT, listed TEXT, "
    "life TEXT, PRIMARY KEY (scope, dimension, id)) WITHOUT ROWID"
)


@dataclass(frozen=True, slots=True)
class DetailsSource:
    """A details endpoint: ``param`` is the id parameter (also the dimension), ``first`` and
    ``last`` the fields bounding its sends (``last`` None: none does, as for Canvases, whose
    ``last_entry`` is no last message), ``latest`` the field naming the last send or entry,
    read only to check the details are plausible."""

    param: str
    path: str
    permission: str
    first: str
    last: str | None
    latest: str
    pool: str = WORKSPACE_POOL

    @property
    def things(self) -> str:
        return "campaigns" if self.param == "campaign_id" else "Canvases"


DETAILS: dict[str, DetailsSource] = {
    s.param: s
    for s in (
        DetailsSource(
            "campaign_id",
            "/campaigns/details",
            "campaigns.details",
            "first_sent",
            "last_sent",
            "last_sent",
        ),
        DetailsSource(
            "canvas_id", "/canvas/details", "canvas.details", "first_entry", None, "last_entry"
        ),
    )
}


class DetailsFetch(Protocol):
    """What reading details needs of a client (:meth:`exporter.client.BrazeClient.get_details`)."""

    async def get_details(self, source: DetailsSource, item_id: str) -> Response:
        """GET the details of one id; a failed exchange is a TransportError."""
        ...


@dataclass(frozen=True, slots=True)
class Known:
    """Details as kept: the life they describe, the list's ``last_edited`` when they were
    read (None: not known, e.g. ids written in the config) and ``as_of``, the as-of date
    ordinal of the run that read them (None: kept by a version that did not record it)."""

    life: Life
    listed: datetime | None = None
    as_of: int | None = None


def interpret_details(
    source: DetailsSource, response: Response, item_id: str, read_at: datetime
) -> Life:
    """The life a details response describes, or its classified error (as the lists':
    429 RateLimited, 401/403 AuthError, 5xx ServerError, another status DiscoveryError; a
    200 that is no JSON (a torn answer: retried) MalformedResponse; a JSON answer that is no
    details object, or whose times are not ISO 8601, DiscoveryError: the same request brings
    the same answer, so it is not retried, and that id's window is read whole)."""
    label = f"{source.path} {source.param}={item_id}"
    raise_for_status(response, permission=source.permission, label=label, rejected=DiscoveryError)
    return parse_body(response.body, lambda doc: _life(source, doc, read_at, label), label=label)


def _life(source: DetailsSource, doc: Any, read_at: datetime, label: str) -> Life:
    if not isinstance(doc, dict) or doc.get("message", "success") != "success":
        raise DiscoveryError("not a details object with message 'success'", status=200, label=label)

    def moment(key: str | None) -> datetime | None:
        value = None if key is None else doc.get(key)
        if value is None:
            return None
        found = read_time(value)
        if found is None:
            why = f"{key} {value!r} is not an ISO 8601 time"
            raise DiscoveryError(why, status=200, label=label)
        return found

    draft = doc.get("draft", False)
    if not isinstance(draft, bool):
        raise DiscoveryError(f"draft {draft!r} is not true or false", status=200, label=label)
    first, last, latest = moment(source.first), moment(source.last), moment(source.latest)
    doubt = _implausible(source, first, latest, read_at)
    if doubt is not None:
        # Details that contradict themselves prove nothing: no day of this id is skipped.
        log.warning(
            "%s: the details are not plausible (%s): every day of its window is read",
            label,
            doubt,
            extra={"event": "details_implausible"},
        )
        return Life(draft=False, first=_EPOCH, last=None, read_at=read_at, bounded=False)
    # Only a campaign's window bounds days (after its last send); a Canvas' bounds nothing.
    longest, unknown = (
        _conversion_window(doc.get("conversion_behaviors", _ABSENT))
        if source.last is not None
        else (0, None)
    )
    if unknown is not None:
        # The first send still bounds the days before it; nothing bounds those after.
        log.warning(
            "%s: the details' conversion window is unknown (%s): every day after its first "
            "send is read",
            label,
            unknown,
            extra={"event": "details_implausible"},
        )
        return Life(draft=draft, first=first, last=last, read_at=read_at, bounded=False)
    return Life(
        draft=draft,
        first=first,
        last=last,
        read_at=read_at,
        bounded=source.last is not None,
        conversion_s=longest,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # before every day a plan holds: nothing is cut
# How far past our clock a send time may be before it contradicts it: Braze's clock and ours
# differ by seconds; a send "in the future" by more is no send at all.
_CLOCK_SKEW = timedelta(hours=1)
_LONGEST_WINDOW_S = 10**9  # ~32 years: beyond any window, and within every date's range


_ABSENT = object()  # a key the answer does not hold


def _conversion_window(behaviors: Any) -> tuple[int, str | None]:
    """The longest ``conversion_behaviors[].window`` in whole seconds (0: none), and why the
    windows cannot be read, or None. Braze documents the window as a number of seconds; a
    number sent as a string (``"2592000"``) is plausible drift and read. An empty list is no
    conversion event, so no window. The key absent (or null), or a window that is missing,
    negative or no number, is unknown, and an unknown window bounds nothing: the caller then
    proves no day empty after the last send."""
    if behaviors is _ABSENT or behaviors is None:
        return 0, "no conversion_behaviors"
    if not isinstance(behaviors, list):
        return 0, "conversion_behaviors is not a list"
    longest = 0
    for index, behavior in enumerate(behaviors):
        if not isinstance(behavior, dict) or "window" not in behavior:
            return 0, f"conversion_behaviors[{index}] has no window"
        window = behavior["window"]
        seconds = _seconds(window)
        if seconds is None:
            return 0, f"conversion_behaviors[{index}].window {window!r} is not seconds"
        longest = max(longest, min(seconds, _LONGEST_WINDOW_S))
    return longest, None


def _seconds(value: Any) -> int | None:
    """A non-negative finite number of seconds (or its decimal text), whole; None otherwise."""
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return math.ceil(min(value, _LONGEST_WINDOW_S))


def _implausible(
    source: DetailsSource, first: datetime | None, last: datetime | None, read_at: datetime
) -> str | None:
    """Why the details' send (or entry) times cannot be true, or None: one after the moment
    they were read (more than the clocks' skew), a last without a first, a first without a
    last, or a last before the first. ``last`` is :attr:`DetailsSource.latest`'s (a Canvas'
    ``last_entry`` is checked so, though it bounds nothing)."""
    for key, moment in ((source.first, first), (source.latest, last)):
        if moment is not None and moment > read_at + _CLOCK_SKEW:
            when = read_at.strftime("%Y-%m-%dT%H:%MZ")
            return f"{key} {moment.strftime('%Y-%m-%dT%H:%MZ')} is after they were read ({when})"
    if first is not None and last is None:
        return f"{source.first} without {source.latest}"
    if first is None and last is not None:
        return f"{source.latest} without {source.first}"
    if first is not None and last is not None and last < first:
        return f"{source.latest} before {source.first}"
    return None


@dataclass
class DetailsRead:
    """What one reading of details brought: ``lives`` by id, ``requests`` sent (every
    attempt), ``failed`` ids with why, and ``denied`` (the 403's reason) when the key may not
    read details of this kind (the ids not read then are in neither ``lives`` nor ``failed``)."""

    source: DetailsSource
    lives: dict[str, Life] = field(default_factory=dict)
    requests: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    denied: str | None = None


async def read_details(
    fetch: DetailsFetch,
    source: DetailsSource,
    ids: Sequence[str],
    *,
    budget: Budget,
    retry: RetryPolicy,
    concurrency: int = 16,
    stopping: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.time,
    rand: Callable[[], float] = random.random,
    into: DetailsRead | None = None,
    on_read: Callable[[str, Life], None] = lambda item_id, life: None,
) -> DetailsRead:
    """Read the details of ``ids``, ``concurrency`` at a time, each attempt paced by
    ``budget`` (the workspace pool's) and retried by ``retry``; ``read_at`` of each is the
    ``clock`` time of its answer. Raises (in an ExceptionGroup) AuthError for a 401 (no
    request can succeed), Unreachable for a redirect and TransportError when no connection
    reaches the host; a 403 sets ``denied`` and no further id is asked (the first id is asked
    alone, so a refusal costs one request); any other failure lands in ``failed``.

    The read is filled in ``into`` (a new one unless given) as answers come, and ``on_read``
    is called with each life read: a caller whose reading is cancelled (a stop) still has,
    and may have kept, what was read."""
    done = DetailsRead(source) if into is None else into
    gate = asyncio.Semaphore(concurrency)

    async def send(item_id: str) -> Response:
        done.requests += 1  # counted once paced and sent: an attempt a stop cut short is not
        return await fetch.get_details(source, item_id)

    async def attempt(item_id: str) -> Life:
        return await paced(
            budget,
            partial(send, item_id),
            lambda r: interpret_details(source, r, item_id, datetime.fromtimestamp(clock(), UTC)),
        )

    async def one(item_id: str) -> None:
        async with gate:
            if done.denied is not None or stopping():
                return
            try:
                life = done.lives[item_id] = await call_with_retries(
                    partial(attempt, item_id),
                    policy=retry,
                    label=f"{source.path} {source.param}={item_id}",
                    stopping=stopping,
                    sleep=sleep,
                    clock=clock,
                    rand=rand,
                )
                on_read(item_id, life)
            except AuthError as exc:
                if exc.status == 401:
                    raise
                done.denied = done.denied or exc.reason
            except TransportError as exc:
                if exc.connect_failed:  # no connection reaches the host: nothing will
                    raise
                fail(item_id, exc)
            except Unreachable:
                raise
            except ExporterError as exc:
                fail(item_id, exc)

    def fail(item_id: str, exc: ExporterError) -> None:
        if isinstance(exc, RetryableError) and stopping():
            return  # retries ended by the stop: not read, and not failed either
        done.failed[item_id] = str(exc)

    # The first id goes alone: a key without the permission is refused once, not once per
    # worker already in flight when the first 403 comes back.
    for flight in (ids[:1], ids[1:]):
        async with asyncio.TaskGroup() as group:
            for item_id in flight:
                group.create_task(one(item_id))
    return done


def wants_fresh(
    known: Known | None,
    listed: datetime | None,
    *,
    stale_requests: int,
    least_requests: int,
) -> str | None:
    """Why this run should read an id's details again, or None to use ``known``.

    - none kept: "no details kept";
    - the list's ``last_edited`` differs from the one kept with them: "edited since";
    - fresh ones pay: with the kept ones the id still needs ``stale_requests`` data
      requests, fresh ones could bring that down to ``least_requests`` (its provisional
      days only), and one details request saving two or more is worth it.
    """
    if known is None:
        return "no details kept"
    if listed is not None and known.listed != listed:
        return "edited since its details were read"
    if stale_requests - least_requests >= 2:
        return "fresh details may save data requests"
    return None


def encode(known: Known) -> tuple[str, str]:
    """``(listed, life)`` columns of the ``details`` table."""
    life = known.life
    doc = {
        "draft": life.draft,
        "first": _text(life.first),
        "last": _text(life.last),
        "read_at": _text(life.read_at),
        "bounded": life.bounded,
        "conversion_s": life.conversion_s,
    }
    if known.as_of is not None:
        doc["as_of"] = known.as_of
    return _text(known.listed) or "", json.dumps(doc, sort_keys=True)


def decode(rows: Iterable[tuple[str, str, str]]) -> dict[str, Known]:
    """``{id: Known}`` from ``(id, listed, life)`` rows (of several state files: the latest
    read of an id wins); a row that cannot be read is left out (its details are read again)."""
    found: dict[str, Known] = {}
    for item_id, listed, text in rows:
        try:
            doc = json.loads(text)
            read_at = read_time(doc["read_at"])
            if read_at is None:
                continue
            life = Life(
                draft=bool(doc["draft"]),
                first=read_time(doc["first"]),
                last=read_time(doc["last"]),
                read_at=read_at,
                bounded=bool(doc["bounded"]),
                conversion_s=int(doc["conversion_s"]),
            )
            as_of = doc.get("as_of")
            as_of = as_of if isinstance(as_of, int) and not isinstance(as_of, bool) else None
        except (ValueError, KeyError, TypeError):
            continue
        earlier = found.get(item_id)
        if earlier is None or earlier.life.read_at < read_at:
            found[item_id] = Known(life, read_time(listed), as_of)
    return found


def _text(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()
