"""The sandbox serves campaigns, Canvases and sends as Braze documents them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import date, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.errors import MalformedResponse
from exporter.messaging import MESSAGING, flatten
from exporter.sandbox import SandboxOptions, make_app, sandbox_stats
from exporter.sandbox_messaging import (
    Campaign,
    Canvas,
    MessagingCatalogue,
    campaign_day,
    canvas_day,
    messaging_catalogue,
    send_day,
)
from exporter.series import CAMPAIGNS_POOL, WORKSPACE_POOL
from tests.conftest import FakeClock
from tests.test_sandbox_family import _bad_bodies

AUTH = {"Authorization": "Bearer k"}
NOW = 1_704_888_000.0  # 2024-01-10T12:00:00Z
TODAY = date(2024, 1, 10)

Client = TestClient[Any, Any]
Serve = Callable[..., Coroutine[Any, Any, tuple[Client, MessagingCatalogue]]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Factory: ``client, catalogue = await serve(campaigns=..., ...)`` on a fake clock."""
    clients: list[Client] = []

    async def start(**options: Any) -> tuple[Client, MessagingCatalogue]:
        opts = SandboxOptions(**{"clock": FakeClock(NOW), **options})
        client: Client = TestClient(TestServer(make_app(opts)))
        await client.start_server()
        clients.append(client)
        return client, messaging_catalogue(opts)

    yield start
    for client in clients:
        await client.close()


async def _get(
    client: Client, path: str, params: dict[str, str] | None = None
) -> tuple[int, Any, Any]:
    async with client.get(path, params=params or {}, headers=AUTH) as resp:
        return resp.status, await resp.json(), resp.headers


async def _ok(client: Client, path: str, params: dict[str, str] | None = None) -> Any:
    status, body, _ = await _get(client, path, params)
    assert status == 200, body
    assert body["message"] == "success"
    return body


async def _all(client: Client, path: str, key: str, **params: str) -> list[list[Any]]:
    """Every page, up to and including the first empty one."""
    pages: list[list[Any]] = []
    while not pages or pages[-1]:
        pages.append((await _ok(client, path, {**params, "page": str(len(pages))}))[key])
    return pages


def _sent(c: Campaign) -> bool:
    return c.first is not None


def _entered(c: Canvas) -> bool:
    return c.first is not None


# --- lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "key"), [("/campaigns/list", "campaigns"), ("/canvas/list", "canvases")]
)
async def test_lists_page_by_100_oldest_first_without_archived(
    serve: Serve, path: str, key: str
) -> None:
    """Pages of 100 from page 0, oldest first, archived ones left out, then an empty page."""
    client, cat = await serve(campaigns=230, canvases=130)
    pages = await _all(client, path, key)
    items = getattr(cat, key)
    live = [c.id for c in items if not c.archived]
    assert [len(p) for p in pages[:-1]] == [100] * (len(pages) - 2) + [len(live) % 100 or 100]
    assert [i["id"] for p in pages for i in p] == live
    assert 0 < len(live) < len(items)


@pytest.mark.parametrize(
    ("path", "key"), [("/campaigns/list", "campaigns"), ("/canvas/list", "canvases")]
)
async def test_include_archived_and_sort_direction(serve: Serve, path: str, key: str) -> None:
    """include_archived=true adds the archived ones; sort_direction=desc lists newest first."""
    client, cat = await serve(campaigns=120, canvases=110)
    every = [c.id for c in getattr(cat, key)]
    pages = await _all(client, path, key, include_archived="true", sort_direction="desc")
    assert [i["id"] for p in pages for i in p] == every[::-1]
    asc = await _all(client, path, key, include_archived="false", sort_direction="asc")
    assert [i["id"] for p in asc for i in p] == [c.id for c in getattr(cat, key) if not c.archived]


async def test_last_edit_filter_keeps_those_edited_after_the_time(serve: Serve) -> None:
    """last_edit.time[gt] keeps the items edited strictly after it (a naive time is UTC)."""
    client, cat = await serve(campaigns=80)
    cut = "2023-10-01T00:00:00"
    body = await _ok(client, "/campaigns/list", {"last_edit.time[gt]": cut})
    want = [
        c.id
        for c in cat.campaigns
        if not c.archived and c.last_edited.isoformat() > "2023-10-01T00:00:00+00:00"
    ]
    assert [i["id"] for i in body["campaigns"]] == want
    assert 0 < len(want) < 80
    assert all(i["last_edited"] > cut for i in body["campaigns"])


async def test_list_items_have_braze_fields(serve: Serve) -> None:
    """Campaign items: id, last_edited, name, is_api_campaign, tags; Canvas items the same
    without is_api_campaign."""
    client, _ = await serve(campaigns=20, canvases=5)
    campaigns = (await _ok(client, "/campaigns/list"))["campaigns"]
    assert {frozenset(i) for i in campaigns} == {
        frozenset({"id", "last_edited", "name", "is_api_campaign", "tags"})
    }
    assert {i["is_api_campaign"] for i in campaigns} == {True, False}
    canvases = (await _ok(client, "/canvas/list"))["canvases"]
    assert {frozenset(i) for i in canvases} == {frozenset({"id", "last_edited", "name", "tags"})}


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"page": "-1"}, "page must be a non-negative integer"),
        ({"sort_direction": "up"}, "sort_direction must be asc or desc"),
        ({"include_archived": "yes"}, "include_archived must be true or false"),
        ({"last_edit.time[gt]": "last week"}, "last_edit.time[gt] must be an ISO 8601"),
    ],
)
async def test_bad_list_parameters_are_400(serve: Serve, params: dict[str, str], why: str) -> None:
    """Bad list parameters answer 400 with Braze's message/errors body."""
    client, _ = await serve(campaigns=3)
    status, body, _ = await _get(client, "/campaigns/list", params)
    assert status == 400
    assert body["message"] == "Invalid parameters"
    assert why in body["errors"][0]


# --- the catalogue ------------------------------------------------------------------------


def test_the_catalogue_holds_every_kind_of_campaign() -> None:
    """Drafts never sent, archived ones, API campaigns with sends, campaigns still sending and
    ones active for part of the past; same options, same catalogue."""
    opts = SandboxOptions(campaigns=100, canvases=30, clock=FakeClock(NOW))
    cat = messaging_catalogue(opts)
    assert cat == messaging_catalogue(
        SandboxOptions(campaigns=100, canvases=30, clock=FakeClock(NOW))
    )
    drafts = [c for c in cat.campaigns if c.draft]
    assert drafts
    assert all(c.first is None and c.last is None for c in drafts)
    assert any(c.archived and _sent(c) for c in cat.campaigns)
    api = [c for c in cat.campaigns if c.is_api_campaign and c.sends]
    assert api
    assert all(c.schedule_type == "api_triggered" for c in api)
    assert {c.schedule_type for c in cat.campaigns} >= {"action_based", "recurring", "time_based"}
    running = [c for c in cat.campaigns if c.last == cat.now]
    ended = [c for c in cat.campaigns if c.last is not None and c.last < cat.now]
    assert running
    assert ended
    created = [c.created_at for c in cat.campaigns]
    assert created == sorted(created)
    assert created[-1] <= cat.now
    assert all(c.created_at <= c.last_edited <= cat.now for c in cat.campaigns)
    assert any(c.draft for c in cat.canvases)
    assert any(c.archived for c in cat.canvases)
    assert any(s.deleted for c in cat.canvases for s in c.steps)


# --- details ------------------------------------------------------------------------------


async def test_campaign_details(serve: Serve) -> None:
    """/campaigns/details has Braze's fields; messages by variation id with their channel."""
    client, cat = await serve(campaigns=20)
    campaign = next(c for c in cat.campaigns if _sent(c))
    body = await _ok(client, "/campaigns/details", {"campaign_id": campaign.id})
    assert body.keys() >= {
        "created_at",
        "updated_at",
        "archived",
        "draft",
        "name",
        "schedule_type",
        "channels",
        "first_sent",
        "last_sent",
        "tags",
        "messages",
        "conversion_behaviors",
    }
    assert campaign.first is not None
    assert body["first_sent"] == campaign.first.strftime("%Y-%m-%dT%H:%M:%S+00:00")
    assert {m["channel"] for m in body["messages"].values()} == set(body["channels"])
    assert len(body["conversion_behaviors"]) == campaign.conversion_events
    draft = next(c for c in cat.campaigns if c.draft)
    body = await _ok(client, "/campaigns/details", {"campaign_id": draft.id})
    assert (body["draft"], body["first_sent"], body["last_sent"]) == (True, None, None)


async def test_canvas_details_leave_deleted_steps_out(serve: Serve) -> None:
    """/canvas/details has first_entry, last_entry, variants and the live steps only."""
    client, cat = await serve(canvases=10)
    canvas = next(c for c in cat.canvases if any(s.deleted for s in c.steps) and _entered(c))
    body = await _ok(client, "/canvas/details", {"canvas_id": canvas.id})
    assert body.keys() >= {"created_at", "updated_at", "archived", "draft", "first_entry"}
    assert [v["id"] for v in body["variants"]] == [v for v, _ in canvas.variants]
    assert [s["id"] for s in body["steps"]] == [s.id for s in canvas.steps if not s.deleted]
    assert body["last_entry"] is not None


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/campaigns/details", {}, 400, "Invalid parameters"),
        ("/campaigns/details", {"campaign_id": "nope"}, 400, "Invalid campaign_id"),
        ("/canvas/details", {"canvas_id": "nope"}, 400, "Invalid canvas_id"),
        (
            "/campaigns/data_series",
            {"campaign_id": "nope", "length": "3"},
            400,
            "Invalid campaign_id",
        ),
    ],
)
async def test_unknown_or_missing_ids_are_400(
    serve: Serve, path: str, params: dict[str, str], status: int, message: str
) -> None:
    """A missing id is an invalid parameter; an unknown one is named."""
    client, _ = await serve(campaigns=3, canvases=3)
    got, body, _ = await _get(client, path, params)
    assert (got, body["message"]) == (status, message)


# --- /campaigns/data_series ----------------------------------------------------------------


async def test_campaign_series_serves_campaign_day_for_each_day(serve: Serve) -> None:
    """length days ending with ending_at's day, each exactly campaign_day; active days send,
    days outside first_sent..last_sent are all zero."""
    client, cat = await serve(campaigns=40)
    campaign = next(c for c in cat.campaigns if _sent(c) and c.last != cat.now)
    assert campaign.first is not None
    assert campaign.last is not None
    end = campaign.last.date() + timedelta(days=2)
    params = {"campaign_id": campaign.id, "length": "9", "ending_at": f"{end}T10:00:00Z"}
    body = await _ok(client, "/campaigns/data_series", params)
    days = [end - timedelta(days=k) for k in range(8, -1, -1)]
    assert body["data"] == [campaign_day(campaign, d.isoformat()) for d in days]
    rows = flatten(MESSAGING["campaigns"], body, {"campaign_id": campaign.id}).rows
    for day in days:
        sent = sum(r.value for r in rows if r.time == day.isoformat() and r.metric == "sent")
        assert (sent > 0) == (campaign.first.date() <= day <= campaign.last.date())


async def test_campaign_totals_are_the_sums_of_their_entries(serve: Serve) -> None:
    """unique_recipients, conversions and revenue at the top equal the sums over entries."""
    _, cat = await serve(campaigns=30)
    for campaign in [c for c in cat.campaigns if _sent(c)][:10]:
        assert campaign.first is not None
        day = campaign_day(campaign, campaign.first.date().isoformat())
        entries = [e for es in day["messages"].values() for e in es]  # type: ignore[attr-defined]
        assert day["unique_recipients"] == sum(e["unique_recipients"] for e in entries) > 0
        assert day["conversions"] == sum(e["conversions"] for e in entries)
        assert day["revenue"] == pytest.approx(sum(e["revenue"] for e in entries))


async def test_a_draft_campaign_serves_zeros(serve: Serve) -> None:
    """A draft has never sent: every value of every day is 0."""
    client, cat = await serve(campaigns=10)
    draft = next(c for c in cat.campaigns if c.draft)
    body = await _ok(client, "/campaigns/data_series", {"campaign_id": draft.id, "length": "30"})
    rows = flatten(MESSAGING["campaigns"], body, {"campaign_id": draft.id}).rows
    assert len(body["data"]) == 30
    assert rows
    assert {r.value for r in rows} == {0.0}


@pytest.mark.parametrize(
    ("semantics", "ending_at", "last"),
    [
        ("contains", "2024-01-09T21:00:00-05:00", "2024-01-09"),
        ("utc", "2024-01-09T21:00:00-05:00", "2024-01-10"),
        ("exclusive", "2024-01-09T21:00:00-05:00", "2024-01-08"),
        ("contains", "2024-01-09", "2024-01-09"),
    ],
)
async def test_campaign_series_follows_the_window_semantics(
    serve: Serve, semantics: str, ending_at: str, last: str
) -> None:
    """The messaging series cut their windows as every other sandbox series does."""
    client, cat = await serve(campaigns=3, semantics=semantics)
    params = {"campaign_id": cat.campaigns[1].id, "length": "2", "ending_at": ending_at}
    body = await _ok(client, "/campaigns/data_series", params)
    assert [d["time"] for d in body["data"]][-1] == last


async def test_campaign_series_ending_at_defaults_to_now(serve: Serve) -> None:
    """Without ending_at the window ends with the clock's day."""
    client, cat = await serve(campaigns=3)
    body = await _ok(
        client, "/campaigns/data_series", {"campaign_id": cat.campaigns[2].id, "length": "1"}
    )
    assert [d["time"] for d in body["data"]] == [TODAY.isoformat()]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({}, "length is required"),
        ({"length": "0"}, "length must be between 1 and 100"),
        ({"length": "101"}, "length must be between 1 and 100"),
        ({"length": "x"}, "length must be an integer"),
        ({"length": "3", "ending_at": "soon"}, "ending_at must be an ISO 8601"),
        ({"length": "3", "campaign_id": ""}, "campaign_id is required"),
    ],
)
async def test_bad_campaign_series_parameters_are_400(
    serve: Serve, params: dict[str, str], why: str
) -> None:
    """length 1..100 is required, ending_at must parse, campaign_id is required."""
    client, cat = await serve(campaigns=3)
    status, body, _ = await _get(
        client, "/campaigns/data_series", {"campaign_id": cat.campaigns[1].id, **params}
    )
    assert status == 400
    assert why in body["errors"][0]


async def test_campaign_series_has_its_own_pool(serve: Serve) -> None:
    """/campaigns/data_series draws from the campaigns pool (per minute): spent, it answers
    429 while the workspace pool's endpoints still answer 200."""
    client, cat = await serve(campaigns=3, campaigns_limit=2)
    params = {"campaign_id": cat.campaigns[1].id, "length": "1"}
    got = [await _get(client, "/campaigns/data_series", params) for _ in range(3)]
    assert [g[0] for g in got] == [200, 200, 429]
    assert got[0][2]["X-RateLimit-Limit"] == "2"
    assert int(got[0][2]["X-RateLimit-Reset"]) == (NOW // 60 + 1) * 60
    assert (await _get(client, "/campaigns/list"))[0] == 200
    pools = sandbox_stats(client.app).pools
    assert (pools[CAMPAIGNS_POOL].requests, pools[CAMPAIGNS_POOL].rate_limited) == (3, 1)
    assert pools[WORKSPACE_POOL].rate_limited == 0


# --- /canvas/data_series -------------------------------------------------------------------


def _canvas_params(canvas: Canvas, **extra: str) -> dict[str, str]:
    assert canvas.last is not None
    return {"canvas_id": canvas.id, "ending_at": canvas.last.date().isoformat(), **extra}


async def _canvas(serve: Serve) -> tuple[Client, Canvas]:
    client, cat = await serve(canvases=12)
    return client, next(c for c in cat.canvases if any(s.deleted for s in c.steps) and _entered(c))


async def test_canvas_series_is_totals_only_unless_asked(serve: Serve) -> None:
    """Without the include_* flags each day has total_stats only, under data.stats."""
    client, canvas = await _canvas(serve)
    body = await _ok(client, "/canvas/data_series", _canvas_params(canvas, length="3"))
    assert body["data"]["name"] == canvas.name
    assert [set(s) for s in body["data"]["stats"]] == [{"time", "total_stats"}] * 3


async def test_canvas_breakdowns_when_asked(serve: Serve) -> None:
    """include_variant_breakdown and include_step_breakdown add variant_stats and step_stats;
    deleted steps come only with include_deleted_step_data."""
    client, canvas = await _canvas(serve)
    flags = {"include_variant_breakdown": "true", "include_step_breakdown": "true"}
    body = await _ok(client, "/canvas/data_series", _canvas_params(canvas, length="2", **flags))
    last = body["data"]["stats"][-1]
    assert last == canvas_day(canvas, last["time"], variants=True, steps=True)
    assert set(last["variant_stats"]) == {v for v, _ in canvas.variants}
    assert set(last["step_stats"]) == {s.id for s in canvas.steps if not s.deleted}
    deleted = {**flags, "include_deleted_step_data": "true"}
    body = await _ok(client, "/canvas/data_series", _canvas_params(canvas, length="2", **deleted))
    assert set(body["data"]["stats"][-1]["step_stats"]) == {s.id for s in canvas.steps}


async def test_canvas_length_is_at_most_14(serve: Serve) -> None:
    """length 14 serves 14 days; 15 is a 400."""
    client, canvas = await _canvas(serve)
    body = await _ok(client, "/canvas/data_series", _canvas_params(canvas, length="14"))
    assert len(body["data"]["stats"]) == 14
    status, body, _ = await _get(client, "/canvas/data_series", _canvas_params(canvas, length="15"))
    assert status == 400
    assert "between 1 and 14" in body["errors"][0]


async def test_canvas_starting_at_bounds_the_window(serve: Serve) -> None:
    """starting_at serves its day through ending_at's; with length, the shorter window."""
    client, canvas = await _canvas(serve)
    params = _canvas_params(canvas)
    end = date.fromisoformat(params["ending_at"])
    start = (end - timedelta(days=4)).isoformat()
    body = await _ok(client, "/canvas/data_series", {**params, "starting_at": start})
    assert [s["time"] for s in body["data"]["stats"]] == [
        (end - timedelta(days=k)).isoformat() for k in range(4, -1, -1)
    ]
    body = await _ok(client, "/canvas/data_series", {**params, "starting_at": start, "length": "2"})
    assert len(body["data"]["stats"]) == 2


@pytest.mark.parametrize(
    ("drop", "extra", "why"),
    [
        ("ending_at", {"length": "3"}, "ending_at is required"),
        ("", {}, "length or starting_at is required"),
        ("", {"length": "0"}, "between 1 and 14"),
        ("", {"starting_at": "2000-01-01"}, "at most 14 days before ending_at"),
        ("", {"starting_at": "2999-01-01"}, "must not be after ending_at"),
        ("", {"length": "2", "include_step_breakdown": "1"}, "must be true or false"),
        ("canvas_id", {"length": "2"}, "canvas_id is required"),
    ],
)
async def test_bad_canvas_series_parameters_are_400(
    serve: Serve, drop: str, extra: dict[str, str], why: str
) -> None:
    """ending_at and canvas_id are required, and one of length (1..14) or starting_at."""
    client, canvas = await _canvas(serve)
    params = {k: v for k, v in _canvas_params(canvas, **extra).items() if k != drop}
    status, body, _ = await _get(client, "/canvas/data_series", params)
    assert status == 400
    assert why in body["errors"][0]


async def test_canvas_days_outside_its_entries_are_zero(serve: Serve) -> None:
    """Before first_entry every Canvas value is 0; on it, entries are counted."""
    client, canvas = await _canvas(serve)
    assert canvas.first is not None
    first = canvas.first.date()
    params = {"canvas_id": canvas.id, "ending_at": first.isoformat(), "length": "2"}
    body = await _ok(client, "/canvas/data_series", params)
    before, on = (s["total_stats"]["entries"] for s in body["data"]["stats"])
    assert (before, on > 0) == (0, True)


# --- /sends/data_series --------------------------------------------------------------------


def _api_campaign(cat: MessagingCatalogue) -> Campaign:
    return next(c for c in cat.campaigns if c.sends and c.last == cat.now)


async def test_a_recent_send_serves_send_day(serve: Serve) -> None:
    """A send within 14 days serves send_day: values on the send's day, zeros around it."""
    client, cat = await serve(campaigns=30)
    campaign = _api_campaign(cat)
    send = campaign.sends[-1]
    end = send.day + timedelta(days=1)
    params = {"campaign_id": campaign.id, "send_id": send.id, "length": "3", "ending_at": f"{end}"}
    body = await _ok(client, "/sends/data_series", params)
    days = [(end - timedelta(days=k)).isoformat() for k in (2, 1, 0)]
    assert body["data"] == [send_day(campaign, send, d) for d in days]
    totals = [d["unique_recipients"] for d in body["data"]]
    assert totals[0] == totals[2] == 0 < totals[1]


@pytest.mark.parametrize(("age", "status"), [(14, 200), (15, 400)])
async def test_send_analytics_are_kept_14_days(serve: Serve, age: int, status: int) -> None:
    """Braze keeps send analytics 14 days after the send: an older send is a 400."""
    clock = FakeClock(NOW)
    client, cat = await serve(campaigns=30, clock=clock)
    campaign = _api_campaign(cat)
    send = campaign.sends[-1]
    clock.now += (send.day + timedelta(days=age) - TODAY).days * 86_400  # the catalogue stays
    params = {"campaign_id": campaign.id, "send_id": send.id, "length": "1"}
    got, body, _ = await _get(client, "/sends/data_series", params)
    assert got == status
    if status == 400:
        assert body["message"] == "Invalid send_id"
        assert "14 days after the send" in body["errors"][0]


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"send_id": "nope"}, "send nope not found"),
        ({"send_id": ""}, "send_id is required"),
        ({"length": "101"}, "length must be between 1 and 100"),
    ],
)
async def test_bad_send_series_parameters_are_400(
    serve: Serve, params: dict[str, str], why: str
) -> None:
    """send_id is required and must be one of the campaign's; length is 1..100."""
    client, cat = await serve(campaigns=30)
    campaign = _api_campaign(cat)
    base = {"campaign_id": campaign.id, "send_id": campaign.sends[-1].id, "length": "2"}
    status, body, _ = await _get(client, "/sends/data_series", {**base, **params})
    assert status == 400
    assert why in body["errors"][0]


# --- the gate -------------------------------------------------------------------------------

PATHS = [
    "/campaigns/list",
    "/canvas/list",
    "/campaigns/details",
    "/canvas/details",
    "/campaigns/data_series",
    "/canvas/data_series",
    "/sends/data_series",
]


@pytest.mark.parametrize("path", PATHS)
async def test_every_messaging_path_wants_a_bearer_key(serve: Serve, path: str) -> None:
    """No Authorization header: 401, as on every sandbox path."""
    client, _ = await serve(campaigns=2, canvases=2)
    async with client.get(path) as resp:
        assert resp.status == 401


@pytest.mark.parametrize(
    ("path", "permission"),
    [
        ("/campaigns/list", "campaigns.list"),
        ("/canvas/list", "canvas.list"),
        ("/campaigns/details", "campaigns.details"),
        ("/canvas/details", "canvas.details"),
        ("/campaigns/data_series", "campaigns.data_series"),
        ("/canvas/data_series", "canvas.data_series"),
        ("/sends/data_series", "sends.data_series"),
    ],
)
async def test_a_missing_permission_is_403_naming_it(
    serve: Serve, path: str, permission: str
) -> None:
    """deny_permissions answers 403 naming the endpoint's Braze permission."""
    client, _ = await serve(campaigns=2, canvases=2, deny_permissions=frozenset({permission}))
    status, body, _ = await _get(client, path)
    assert (status, body["message"]) == (403, f"API key lacks permission {permission}")


@pytest.mark.parametrize("series", ["campaigns", "sends", "canvas"])
async def test_faulty_bodies_are_malformed_for_flatten(serve: Serve, series: str) -> None:
    """With every request faulty, each 200 served is a body flatten refuses."""
    client, cat = await serve(campaigns=30, canvases=12, fault_rate=1.0, slow_s=0.0)
    campaign = _api_campaign(cat)
    canvas = next(c for c in cat.canvases if _entered(c))
    ids = {
        "campaigns": {"campaign_id": campaign.id},
        "sends": {"campaign_id": campaign.id, "send_id": campaign.sends[-1].id},
        "canvas": {"canvas_id": canvas.id, "ending_at": "2024-01-09"},
    }[series]
    tries = [{**ids, "length": str(n)} for n in range(1, 15)] * 3
    bodies = await _bad_bodies(client, MESSAGING[series].path, tries)
    assert bodies
    for body in bodies:
        with pytest.raises(MalformedResponse):
            flatten(MESSAGING[series], body, {k: v for k, v in ids.items() if k != "ending_at"})
