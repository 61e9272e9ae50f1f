"""The sandbox's campaigns, Canvases and sends: their lists, details and analytics series.

Served as Braze's endpoint pages describe them (braze.com/docs/api/endpoints/export/
campaigns/get_campaigns, get_campaign_details, get_campaign_analytics, get_send_analytics;
canvas/get_canvases, get_canvas_details, get_canvas_analytics; see ../shared/BRAZE_API.md),
behind the same Bearer auth, 400 bodies, rate-limit pools, faults and window semantics as
the rest of :mod:`exporter.sandbox`, whose helpers it uses:

- ``GET /campaigns/list``, ``GET /canvas/list``: ``page`` from 0, 100 per page, oldest
  first (``sort_direction=desc``: newest first), archived ones only with
  ``include_archived=true``, ``last_edit.time[gt]`` keeps those edited after that time.
- ``GET /campaigns/details?campaign_id=``, ``GET /canvas/details?canvas_id=``.
- ``GET /campaigns/data_series`` (its own pool, ``CAMPAIGNS_POOL``), ``GET /canvas/data_series``
  and ``GET /sends/data_series``, one item per day of the window.

The catalogue (:func:`messaging_catalogue`) is deterministic for the options: campaigns and
Canvases created over the 400 days before the clock's day, in creation order; about one in
ten a draft (never sent), one in ten archived, API campaigns with a send id every three days,
triggered ones still sending, recurring ones active for months, one-off ones for a day or
three. Values are deterministic functions of (id, breakdown, metric, day):
:func:`campaign_day`, :func:`send_day` and :func:`canvas_day` return the exact item a day
is served as. Within an entry the funnel holds (unique opens <= opens <= delivered <= sent);
totals are the sums of their entries.

Choices where Braze's docs are silent (uncertain; none checked against a live workspace):

- Days outside a campaign's life (before ``first_sent``, after ``last_sent``, every day of a
  draft) are served with every value 0, not left out; Canvas days outside
  ``first_entry``..``last_entry`` likewise.
- An unknown id is a 400 (``Invalid campaign_id``), as is a send older than the 14 days
  Braze keeps send analytics: once dropped, a send cannot be told from one never made.
- ``/canvas/data_series`` with ``starting_at``: the days from ``starting_at``'s date to the
  window's last day, at most 14 (a 400 beyond); with ``length`` too, the shorter of the two.
- A send's values fall on the day of the send; its other days are 0.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from aiohttp import web

from exporter.messaging import MESSAGING, MESSAGING_LISTS
from exporter.sandbox import (
    _TAGS,
    Handler,
    SandboxOptions,
    _error,
    _flow,
    _hash01,
    _parse,
    _Sandbox,
)
from exporter.series import WORKSPACE_POOL, SeriesKind

__all__ = [
    "CHANNEL_METRICS",
    "Campaign",
    "Canvas",
    "Listed",
    "MessagingCatalogue",
    "Send",
    "Step",
    "add_messaging_routes",
    "campaign_day",
    "canvas_day",
    "messaging_catalogue",
    "retained_sends",
    "send_day",
]

PAGE_SIZE = 100
SEND_RETENTION_DAYS = 14

# The metrics of one message entry per channel (Braze's "Export campaign analytics" page),
# parents before children: the first is the root every other one is a share of.
_PUSH = ("sent", "direct_opens", "total_opens", "bounces", "body_clicks")
CHANNEL_METRICS: dict[str, tuple[str, ...]] = {
    "email": (
        "sent",
        "delivered",
        "opens",
        "unique_opens",
        "clicks",
        "unique_clicks",
        "unsubscribes",
        "bounces",
        "reported_spam",
    ),
    "ios_push": _PUSH,
    "android_push": _PUSH,
    "web_push": _PUSH,
    "kindle_push": _PUSH,
    "webhook": ("sent", "errors"),
    "sms": (
        "sent",
        "sent_to_carrier",
        "delivered",
        "rejected",
        "delivery_failed",
        "clicks",
        "opt_out",
        "help",
    ),
    "whats_app": ("sent", "delivered", "failed", "read"),
    "content_cards": (
        "sent",
        "total_impressions",
        "unique_impressions",
        "total_clicks",
        "unique_clicks",
        "total_dismissals",
        "unique_dismissals",
    ),
    "trigger_in_app_message": (
        "impressions",
        "clicks",
        "first_button_clicks",
        "second_button_clicks",
    ),
}
# metric -> (parent, low, high): its value is round(parent * rate), the rate a hash in
# [low, high) of the entry and metric. A parent the channel lacks means its root.
_FUNNEL: dict[str, tuple[str, float, float]] = {
    "delivered": ("sent", 0.93, 0.995),
    "opens": ("delivered", 0.2, 0.6),
    "unique_opens": ("opens", 0.6, 0.9),
    "clicks": ("opens", 0.05, 0.3),
    "unique_clicks": ("clicks", 0.6, 0.9),
    "unsubscribes": ("delivered", 0.0005, 0.005),
    "bounces": ("sent", 0.002, 0.03),
    "reported_spam": ("delivered", 0.0, 0.001),
    "direct_opens": ("sent", 0.02, 0.08),
    "total_opens": ("direct_opens", 1.5, 3.0),
    "body_clicks": ("direct_opens", 0.3, 0.7),
    "errors": ("sent", 0.0, 0.01),
    "sent_to_carrier": ("sent", 0.97, 1.0),
    "rejected": ("sent", 0.0, 0.01),
    "delivery_failed": ("sent_to_carrier", 0.0, 0.02),
    "opt_out": ("delivered", 0.0, 0.003),
    "help": ("delivered", 0.0, 0.001),
    "failed": ("sent", 0.0, 0.03),
    "read": ("delivered", 0.3, 0.8),
    "total_impressions": ("sent", 0.5, 0.9),
    "unique_impressions": ("total_impressions", 0.6, 0.9),
    "total_clicks": ("total_impressions", 0.02, 0.1),
    "total_dismissals": ("total_impressions", 0.05, 0.2),
    "unique_dismissals": ("total_dismissals", 0.7, 0.95),
    "first_button_clicks": ("clicks", 0.3, 0.6),
    "second_button_clicks": ("clicks", 0.1, 0.3),
    "unique_recipients": ("sent", 0.95, 1.0),
    "conversions": ("sent", 0.005, 0.05),
    "conversions1": ("sent", 0.002, 0.03),
    "conversions2": ("sent", 0.001, 0.02),
    "conversions3": ("sent", 0.001, 0.01),
    "conversions_by_send_time": ("conversions", 0.8, 1.0),
    "conversions1_by_send_time": ("conversions1", 0.8, 1.0),
    "conversions2_by_send_time": ("conversions2", 0.8, 1.0),
    "conversions3_by_send_time": ("conversions3", 0.8, 1.0),
    # Open-ended keys (Braze: carousel_slide_[NUM]_[TITLE]_click, notif_button_[NUM]_...).
    "carousel_slide_1_Title_click": ("direct_opens", 0.05, 0.2),
    "notif_button_1_Shop_click": ("direct_opens", 0.05, 0.2),
    "conversions_by_entry_time": ("conversions", 0.8, 1.0),
}
_OPEN_ENDED = ("carousel_slide_1_Title_click", "notif_button_1_Shop_click")
_CONVERSION_TYPES = (
    "Makes Any Purchase",
    "Performs Custom Event",
    "Opens Email",
    "Starts Session",
)
_THEMES = ("Welcome", "Winback", "Black Friday", "Renewal", "Cart reminder", "Weekly digest")
_STEPS = (
    ("Welcome email", "email"),
    ("Reminder push", "ios_push"),
    ("SMS nudge", "sms"),
    ("Card offer", "content_cards"),
    ("Last call", "android_push"),
)


@dataclass(frozen=True, slots=True)
class Send:
    """A tracked send of an API campaign: its id and the day it went out."""

    id: str
    day: date


@dataclass(frozen=True, slots=True)
class Listed:
    """What campaigns and Canvases share: a list item and a life from ``first`` to ``last``
    (first and last send, or entry; both None when there was none: drafts, not yet live)."""

    id: str
    name: str
    created_at: datetime
    last_edited: datetime
    archived: bool
    draft: bool
    tags: tuple[str, ...]
    first: datetime | None
    last: datetime | None

    def active(self, day: date) -> bool:
        """Whether it sent (or was entered) on ``day``: from its first day to its last."""
        return (
            self.first is not None
            and self.last is not None
            and (self.first.date() <= day <= self.last.date())
        )

    def list_item(self) -> dict[str, object]:
        return {
            "id": self.id,
            "last_edited": _iso(self.last_edited),
            "name": self.name,
            "tags": list(self.tags),
        }

    def _details(self) -> dict[str, object]:
        """The details fields both endpoints have."""
        return {
            "message": "success",
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.last_edited),
            "archived": self.archived,
            "draft": self.draft,
            "enabled": self.first is not None and not self.archived,
            "has_post_launch_draft": False,
            "name": self.name,
            "tags": list(self.tags),
            "teams": [],
        }


@dataclass(frozen=True, slots=True)
class Campaign(Listed):
    """One campaign (``first``/``last``: its first and last send). ``messages``: (message
    variation id, variation name, channel); its data series has one entry per message under
    its channel."""

    schedule_type: str
    is_api_campaign: bool
    channels: tuple[str, ...]
    messages: tuple[tuple[str, str, str], ...]
    conversion_events: int  # 1..4: conversions, then conversions1..3
    open_ended: bool  # push entries carry carousel / notification-button click keys
    sends: tuple[Send, ...]

    def list_item(self) -> dict[str, object]:
        return {**Listed.list_item(self), "is_api_campaign": self.is_api_campaign}

    def details(self) -> dict[str, object]:
        return {
            **self._details(),
            "description": f"{self.name} ({self.schedule_type})",
            "schedule_type": self.schedule_type,
            "channels": list(self.channels),
            "first_sent": _iso(self.first),
            "last_sent": _iso(self.last),
            "messages": {
                mid: {"channel": channel, "name": name} for mid, name, channel in self.messages
            },
            "conversion_behaviors": [
                {"type": _CONVERSION_TYPES[k], "window": 86_400 * (k + 1)}
                for k in range(self.conversion_events)
            ],
        }


@dataclass(frozen=True, slots=True)
class Step:
    """A Canvas message step; ``deleted`` ones are served only with
    ``include_deleted_step_data=true`` and are not in the details."""

    id: str
    name: str
    channel: str
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class Canvas(Listed):
    """One Canvas (``first``/``last``: its first and last entry): variants (id, name) and
    message steps."""

    variants: tuple[tuple[str, str], ...]
    steps: tuple[Step, ...]

    def details(self) -> dict[str, object]:
        live = [s for s in self.steps if not s.deleted]
        return {
            **self._details(),
            "description": "",
            "schedule_type": "action_based",
            "first_entry": _iso(self.first),
            "last_entry": _iso(self.last),
            "channels": sorted({s.channel for s in live}),
            "variants": [
                {"name": name, "id": vid, "first_step_ids": [live[0].id]}
                for vid, name in self.variants
            ],
            "steps": [
                {
                    "name": s.name,
                    "type": "message",
                    "id": s.id,
                    "next_step_ids": [n.id for n in live[k + 1 : k + 2]],
                    "next_paths": [
                        {"name": None, "next_step_id": n.id} for n in live[k + 1 : k + 2]
                    ],
                    "channels": [s.channel],
                    "messages": {_uuid(f"{s.id}\x1fmessage"): {"channel": s.channel}},
                }
                for k, s in enumerate(live)
            ],
        }


@dataclass(frozen=True, slots=True)
class MessagingCatalogue:
    """Campaigns and Canvases in creation order; ``now``: the clock's hour when it was made
    (the last send or entry of those still live)."""

    campaigns: tuple[Campaign, ...]
    canvases: tuple[Canvas, ...]
    now: datetime


def retained_sends(options: SandboxOptions | None = None) -> list[tuple[Campaign, Send]]:
    """The sends ``/sends/data_series`` answers today (``options.clock``): those of the last
    :data:`SEND_RETENTION_DAYS` days, by day then campaign. At Braze a send id comes from
    ``POST /sends/id/create`` (or the ``send_id`` given when messaging); the sandbox's are
    only findable here (``braze-export sandbox --sends``)."""
    opts = options or SandboxOptions()
    today = datetime.fromtimestamp(opts.clock(), UTC).date()
    found = [
        (campaign, send)
        for campaign in messaging_catalogue(opts).campaigns
        for send in campaign.sends
        if 0 <= (today - send.day).days <= SEND_RETENTION_DAYS
    ]
    return sorted(found, key=lambda cs: (cs[1].day, cs[0].id, cs[1].id))


def messaging_catalogue(options: SandboxOptions | None = None) -> MessagingCatalogue:
    """The campaigns and Canvases served for ``options`` (sized by ``campaigns`` and
    ``canvases``, dated back from the day of ``options.clock()``)."""
    opts = options or SandboxOptions()
    now = datetime.fromtimestamp(math.floor(opts.clock() / 3600) * 3600, UTC)
    return MessagingCatalogue(
        tuple(_campaign(i, opts.campaigns, now) for i in range(opts.campaigns)),
        tuple(_canvas(j, opts.canvases, now) for j in range(opts.canvases)),
        now,
    )


# --- the catalogue ----------------------------------------------------------------------


def _uuid(text: str) -> str:
    d = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
    return f"{d[:8]}-{d[8:12]}-{d[12:16]}-{d[16:20]}-{d[20:]}"


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%S+00:00")


def _created(i: int, n: int, now: datetime) -> datetime:
    """The i-th of n creation times, spread over the 400 days before ``now``."""
    return now - timedelta(days=400) + timedelta(minutes=i * 400 * 1440 // max(n, 1))


def _later(moment: datetime, days: float) -> datetime:
    """``days`` after ``moment``, to the whole second (Braze's times have no fractions)."""
    return moment + timedelta(seconds=round(days * 86_400))


def _life(
    key: str, created: datetime, now: datetime, days: tuple[int, int] | None
) -> tuple[datetime | None, datetime | None]:
    """First and last activity: from 1-6 days after creation, for ``days`` (low, high) days
    or, when None, until ``now``. Nothing yet when the first day is still to come."""
    first = _later(created, 1 + 5 * _hash01(f"{key}\x1ffirst"))
    if first > now:
        return None, None
    if days is None:
        return first, now
    low, high = days
    return first, min(now, _later(first, low + (high - low) * _hash01(f"{key}\x1flen")))


def _edited(key: str, created: datetime, last: datetime | None, now: datetime) -> datetime:
    end = min(now, (last or created) + timedelta(days=2))
    return _later(created, (end - created) / timedelta(days=1) * _hash01(f"{key}\x1fedited"))


def _tags(key: str) -> tuple[str, ...]:
    return tuple(t for j, t in enumerate(_TAGS) if _hash01(f"{key}\x1ftag\x1f{j}") < 0.25)


def _listed(
    kind: str, i: int, n: int, now: datetime, draft: bool, days: tuple[int, int] | None
) -> dict[str, Any]:
    """The Listed fields of the i-th of n campaigns or Canvases (``kind``), but its name and
    ``archived``; ``days`` as in :func:`_life`."""
    uid = _uuid(f"{kind}\x1f{i}")
    created = _created(i, n, now)
    first, last = (None, None) if draft else _life(uid, created, now, days)
    return {
        "id": uid,
        "created_at": created,
        "last_edited": _edited(uid, created, last, now),
        "draft": draft,
        "tags": _tags(uid),
        "first": first,
        "last": last,
    }


def _campaign(i: int, n: int, now: datetime) -> Campaign:
    profile = i % 10
    schedule, days = {
        2: ("api_triggered", None),
        3: ("action_based", None),
        4: ("recurring", (30, 120)),
        7: ("api_triggered", (20, 90)),
    }.get(profile, ("time_based", (0, 3)))
    base = _listed("campaign", i, n, now, profile == 0, days)
    cid, first, last = base["id"], base["first"], base["last"]
    channel_count = 1 + (_hash01(f"{cid}\x1fmulti") < 0.3)
    start = math.floor(_hash01(f"{cid}\x1fchannel") * len(CHANNEL_METRICS))
    names = tuple(CHANNEL_METRICS)
    channels = tuple(names[(start + k) % len(names)] for k in range(channel_count))
    variations = 1 + math.floor(3 * _hash01(f"{cid}\x1fvariations"))
    api = profile in (2, 7)
    sends: tuple[Send, ...] = ()
    if api and first is not None:
        count = (last.date() - first.date()).days // 3 + 1
        sends = tuple(
            Send(_uuid(f"{cid}\x1fsend\x1f{k}")[:18], first.date() + timedelta(days=3 * k))
            for k in range(count)
        )
    return Campaign(
        **base,
        name=f"{_THEMES[i % len(_THEMES)]} {schedule.replace('_', ' ')} {i + 1}",
        archived=profile == 1,
        schedule_type=schedule,
        is_api_campaign=api,
        channels=channels,
        messages=tuple(
            (_uuid(f"{cid}\x1f{channel}\x1f{v}"), f"Variant {v + 1}", channel)
            for channel in channels
            for v in range(variations)
        ),
        conversion_events=1 + math.floor(4 * _hash01(f"{cid}\x1fconversions")),
        open_ended=_hash01(f"{cid}\x1fopen") < 0.5,
        sends=sends,
    )


def _canvas(j: int, m: int, now: datetime) -> Canvas:
    archived = j % 6 == 1
    base = _listed("canvas", j, m, now, j % 6 == 0, (10, 60) if archived else None)
    cid = base["id"]
    steps = tuple(
        Step(_uuid(f"{cid}\x1fstep\x1f{k}"), *_STEPS[(j + k) % len(_STEPS)])
        for k in range(2 + j % 4)
    )
    if j % 4 == 0:  # a step removed after the Canvas ran: its stats remain
        steps += (Step(_uuid(f"{cid}\x1fstep\x1fdeleted"), "Old reminder", "email", True),)
    return Canvas(
        **base,
        name=f"{_THEMES[j % len(_THEMES)]} journey {j + 1}",
        archived=archived,
        variants=tuple(
            (_uuid(f"{cid}\x1fvariant\x1f{k}"), f"Variant {k + 1}") for k in range(1 + j % 3)
        ),
        steps=steps,
    )


# --- values -------------------------------------------------------------------------------


def _entry(key: str, metrics: tuple[str, ...], root: float) -> dict[str, int | float]:
    """One entry's values: the first metric is ``root`` rounded, every other one a share of
    its parent (the root when the entry lacks the parent); ``revenue`` from conversions."""
    values: dict[str, int | float] = {}
    for metric in metrics:
        if not values:
            values[metric] = round(root)
            continue
        parent, low, high = _FUNNEL[metric]
        base = values.get(parent, values[metrics[0]])
        values[metric] = round(base * (low + (high - low) * _hash01(f"{key}\x1f{metric}")))
    if "conversions" in values:
        price = 5 + 75 * _hash01(f"{key}\x1fprice")
        values["revenue"] = round(values["conversions"] * price, 2)
    return values


def _conversions(events: int) -> tuple[str, ...]:
    """The conversion keys of a campaign with ``events`` conversion events (1..4)."""
    names = ("conversions", *(f"conversions{k}" for k in range(1, events)))
    return (*names, *(f"{n}_by_send_time" for n in names))


def _sum(entries: list[dict[str, int | float]], keys: tuple[str, ...]) -> dict[str, int | float]:
    total: dict[str, int | float] = {k: sum(e.get(k, 0) for e in entries) for k in keys}
    if "revenue" in keys:
        total["revenue"] = round(total["revenue"], 2)
    return total


def _messages_day(
    campaign: Campaign, key: str, label: str, on: bool, with_ids: bool
) -> dict[str, object]:
    """A day item of the campaign (``key`` campaign id, or campaign and send id) with every
    value 0 unless ``on``; entries carry variation_api_id only when ``with_ids``."""
    messages: dict[str, list[dict[str, object]]] = {}
    flat: list[dict[str, int | float]] = []
    conversions = _conversions(campaign.conversion_events)
    for mid, name, channel in campaign.messages:
        metrics = CHANNEL_METRICS[channel]
        if campaign.open_ended and channel in ("ios_push", "android_push"):
            metrics += _OPEN_ENDED
        metrics += ("unique_recipients", *conversions)
        entry_key = f"{key}\x1f{mid}"
        root = _flow(entry_key, "day", label, 5, 2_000) if on else 0.0
        values = _entry(entry_key, metrics, root)
        flat.append(values)
        ids: dict[str, object] = {"variation_api_id": mid} if with_ids else {}
        messages.setdefault(channel, []).append({**ids, "variation_name": name, **values})
    totals = _sum(flat, ("unique_recipients", *conversions, "revenue"))
    return {"time": label, **totals, "messages": messages}


def campaign_day(campaign: Campaign, label: str) -> dict[str, object]:
    """The ``/campaigns/data_series`` item of ``campaign`` for the day ``label``."""
    on = campaign.active(date.fromisoformat(label))
    return _messages_day(campaign, campaign.id, label, on, with_ids=True)


def send_day(campaign: Campaign, send: Send, label: str) -> dict[str, object]:
    """The ``/sends/data_series`` item of one send for the day ``label`` (Braze's send
    analytics page shows entries with variation_name only)."""
    on = date.fromisoformat(label) == send.day
    return _messages_day(campaign, f"{campaign.id}\x1f{send.id}", label, on, with_ids=False)


def canvas_day(
    canvas: Canvas, label: str, variants: bool = False, steps: bool = False, deleted: bool = False
) -> dict[str, object]:
    """The ``/canvas/data_series`` stats item of ``canvas`` for the day ``label``, with the
    variant and step breakdowns when asked (deleted steps only with ``deleted`` too)."""
    on = canvas.active(date.fromisoformat(label))
    stats = ("entries", "conversions", "conversions_by_entry_time")
    by_variant: dict[str, dict[str, object]] = {}
    flat: list[dict[str, int | float]] = []
    for vid, name in canvas.variants:
        key = f"{canvas.id}\x1f{vid}"
        values = _entry(key, stats, _flow(key, "day", label, 2, 400) if on else 0.0)
        flat.append(values)
        by_variant[vid] = {"name": name, **values}
    total = _sum(flat, (*stats, "revenue"))
    item: dict[str, object] = {"time": label, "total_stats": total}
    if variants:
        item["variant_stats"] = by_variant
    if steps:
        by_step: dict[str, object] = {}
        for step in canvas.steps:
            if step.deleted and not deleted:
                continue
            key = f"{canvas.id}\x1f{step.id}"
            reach = 0.3 + 0.7 * _hash01(f"{key}\x1freach")
            sent = _entry(key, CHANNEL_METRICS[step.channel], total["entries"] * reach)
            # The step's share of the Canvas' conversions: never more than the whole.
            outcome = _entry(
                key, ("conversions", "conversions_by_entry_time"), total["conversions"] * reach
            )
            by_step[step.id] = {"name": step.name, **outcome, "messages": {step.channel: [sent]}}
        item["step_stats"] = by_step
    return item


_L = TypeVar("_L", bound="Listed")

# --- the endpoints ------------------------------------------------------------------------


def _flag(query: Mapping[str, str], name: str) -> bool:
    text = query.get(name, "false").lower()
    if text not in ("true", "false"):
        raise ValueError(f"{name} must be true or false, got {query[name]!r}")
    return text == "true"


def _moment(text: str, name: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{name} must be an ISO 8601 datetime, got {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Endpoints:
    """The handlers, over one sandbox's gate (auth, pools, faults) and the catalogue."""

    def __init__(self, sandbox: _Sandbox) -> None:
        self.sandbox = sandbox
        self.opts = sandbox.options
        self.catalogue = messaging_catalogue(sandbox.options)
        self.campaigns = {c.id: c for c in self.catalogue.campaigns}
        self.canvases = {c.id: c for c in self.catalogue.canvases}

    def _route(
        self,
        pool: str,
        permission: str,
        answer: Callable[[Mapping[str, str]], tuple[object, object]],
    ) -> Handler:
        """A handler: admit, then ``answer`` gives (200 body, its faulty variant) or raises
        ValueError (a 400 ``Invalid parameters``) or _Rejected (a 400 with its message)."""

        async def handle(request: web.Request) -> web.StreamResponse:
            headers, done = self.sandbox._admit(request, pool, permission)
            if done is not None:
                return done
            try:
                doc, bad = answer(request.query)
            except _Rejected as exc:
                return _error(400, exc.message, headers, [exc.detail])
            except ValueError as exc:
                return _error(400, "Invalid parameters", headers, [str(exc)])
            if request.path in self.opts.gated:
                await self.sandbox.pass_gate()
            return await self.sandbox._answer(request, doc, bad, headers)

        return handle

    def _labels(self, series: SeriesKind, query: Mapping[str, str]) -> list[str]:
        opts = self.opts
        _, _, labels = _parse(series, query, opts.clock(), opts.semantics)
        return [t for t in labels if t not in opts.missing_days]

    def listing(self, key: str) -> Callable[[Mapping[str, str]], tuple[object, object]]:
        items: tuple[Listed, ...] = (
            self.catalogue.campaigns if key == "campaigns" else self.catalogue.canvases
        )

        def answer(query: Mapping[str, str]) -> tuple[object, object]:
            text = query.get("page", "0")
            if not (text.isascii() and text.isdigit()):
                raise ValueError(f"page must be a non-negative integer, got {text!r}")
            direction = query.get("sort_direction", "asc")
            if direction not in ("asc", "desc"):
                raise ValueError(f"sort_direction must be asc or desc, got {direction!r}")
            archived = _flag(query, "include_archived")
            since = query.get("last_edit.time[gt]")
            after = None if since is None else _moment(since, "last_edit.time[gt]")
            chosen = [
                c
                for c in items
                if (archived or not c.archived) and (after is None or c.last_edited > after)
            ]
            if direction == "desc":
                chosen.reverse()
            page = int(text)
            doc = {
                "message": "success",
                key: [c.list_item() for c in chosen[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]],
            }
            return doc, {"message": "success", key: "not-a-list"}

        return answer

    def campaign_of(self, query: Mapping[str, str]) -> Campaign:
        return _find(self.campaigns, "campaign", query)

    def canvas_of(self, query: Mapping[str, str]) -> Canvas:
        return _find(self.canvases, "canvas", query)

    def campaign_details(self, query: Mapping[str, str]) -> tuple[object, object]:
        return self.campaign_of(query).details(), {"message": "success", "messages": []}

    def canvas_details(self, query: Mapping[str, str]) -> tuple[object, object]:
        return self.canvas_of(query).details(), {"message": "success", "steps": {}}

    def campaign_series(self, query: Mapping[str, str]) -> tuple[object, object]:
        labels = self._labels(MESSAGING["campaigns"], query)
        campaign = self.campaign_of(query)
        return _days([campaign_day(campaign, t) for t in labels])

    def send_series(self, query: Mapping[str, str]) -> tuple[object, object]:
        labels = self._labels(MESSAGING["sends"], query)
        campaign = self.campaign_of(query)
        send = next((s for s in campaign.sends if s.id == query["send_id"]), None)
        if send is None:
            raise _Rejected("Invalid send_id", f"send {query['send_id']} not found")
        today = datetime.fromtimestamp(self.opts.clock(), UTC).date()
        if (today - send.day).days > SEND_RETENTION_DAYS:
            raise _Rejected(
                "Invalid send_id",
                f"send {send.id} was on {send.day}: Braze keeps send analytics "
                f"{SEND_RETENTION_DAYS} days after the send",
            )
        return _days([send_day(campaign, send, t) for t in labels])

    def canvas_series(self, query: Mapping[str, str]) -> tuple[object, object]:
        series = MESSAGING["canvas"]
        if not query.get("ending_at"):
            raise ValueError("ending_at is required")
        length, starting = query.get("length"), query.get("starting_at")
        if length is None and starting is None:
            raise ValueError("length or starting_at is required")
        if length is not None and not (length.isdigit() and 1 <= int(length) <= 14):
            raise ValueError(f"length must be an integer between 1 and 14, got {length!r}")
        longest = {**query, "length": length or str(series.max_length)}
        labels = self._labels(series, longest)
        if starting is not None:
            end = _moment(query["ending_at"], "ending_at")
            start = _moment(starting, "starting_at").astimezone(end.tzinfo)
            first = start.date()
            if first > date.fromisoformat(labels[-1]):
                raise ValueError("starting_at must not be after ending_at")
            if first < date.fromisoformat(labels[-1]) - timedelta(days=series.max_length - 1):
                raise ValueError("starting_at must be at most 14 days before ending_at")
            labels = [t for t in labels if date.fromisoformat(t) >= first]
        canvas = self.canvas_of(query)
        variants, steps, deleted = (
            _flag(query, f"include_{name}")
            for name in ("variant_breakdown", "step_breakdown", "deleted_step_data")
        )
        stats = [canvas_day(canvas, t, variants, steps, deleted) for t in labels]
        doc = {"message": "success", "data": {"name": canvas.name, "stats": stats}}
        return doc, {"message": "success", "data": {"name": canvas.name, "stats": "none"}}


def _find(items: Mapping[str, _L], what: str, query: Mapping[str, str]) -> _L:
    """The campaign or Canvas (``what``) the query's ``{what}_id`` names."""
    wanted = query.get(f"{what}_id")
    if not wanted:
        raise ValueError(f"{what}_id is required")
    if wanted not in items:
        raise _Rejected(f"Invalid {what}_id", f"{what} {wanted} not found")
    return items[wanted]


class _Rejected(Exception):
    """A request Braze would answer 400 with its own message (an unknown id)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


def _days(items: list[dict[str, object]]) -> tuple[object, object]:
    return {"message": "success", "data": items}, {
        "message": "success",
        "data": [{"time": "not-a-time"}],
    }


def add_messaging_routes(app: web.Application, sandbox: _Sandbox) -> None:
    """Serve the campaign, Canvas and send endpoints on ``app`` through ``sandbox``'s gate."""
    ends = _Endpoints(sandbox)
    for source in MESSAGING_LISTS.values():
        app.router.add_get(
            source.path,
            ends._route(source.pool, source.permission, ends.listing(source.items_key)),
        )
    details = (
        ("/campaigns/details", "campaigns.details", ends.campaign_details),
        ("/canvas/details", "canvas.details", ends.canvas_details),
    )
    for path, permission, answer in details:
        app.router.add_get(path, ends._route(WORKSPACE_POOL, permission, answer))
    for name, answer in (
        ("campaigns", ends.campaign_series),
        ("sends", ends.send_series),
        ("canvas", ends.canvas_series),
    ):
        series = MESSAGING[name]
        app.router.add_get(series.path, ends._route(series.pool, series.permission, answer))
