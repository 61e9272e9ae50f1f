"""The sandbox serves every series of the family, the list endpoints and one limit per pool."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import date, timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter import cli
from exporter.sandbox import (
    POOLS,
    PRODUCT_PAGE_SIZE,
    SandboxOptions,
    catalogue,
    make_app,
    sandbox_stats,
    series_value,
    session_count,
)
from exporter.series import KINDS as ALL_KINDS
from exporter.series import LIST_POOL, LISTS, WORKSPACE_POOL, SeriesKind
from tests.conftest import FakeClock

# The one-value series (the long message series have their own tests: test_msg_*.py).
KINDS = {name: kind for name, kind in ALL_KINDS.items() if not kind.long}

AUTH = {"Authorization": "Bearer k"}
END = "2024-01-10T12:00:00+00:00"
DIMS = {"segment_id": "seg-1", "app_id": "app-1", "event": "viewed_cart", "product": "gems_small"}

Client = TestClient[Any, Any]
Start = Callable[..., Coroutine[Any, Any, Client]]


@pytest.fixture
async def sandbox() -> AsyncIterator[Start]:
    """Factory: ``client = await sandbox(limit=..., throttle=...)``, on a fake clock."""
    clients: list[Client] = []

    async def start(**options: Any) -> Client:
        options.setdefault("clock", FakeClock(1_704_888_000.0))  # 2024-01-10T12:00:00Z
        client: Client = TestClient(TestServer(make_app(SandboxOptions(**options))))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()


def _params(kind: SeriesKind, unit: str | None = None, **extra: str) -> dict[str, str]:
    params = {"length": "5", "ending_at": END, **{d: DIMS[d] for d in kind.dimensions}, **extra}
    if unit is not None:
        params["unit"] = unit
    return params


async def _get(client: Client, path: str, params: dict[str, str]) -> tuple[int, Any, Any]:
    async with client.get(path, params=params, headers=AUTH) as resp:
        return resp.status, await resp.json(), resp.headers


async def _all_pages(client: Client, path: str, key: str) -> list[list[Any]]:
    pages: list[list[Any]] = []
    while not pages or pages[-1]:
        status, body, _ = await _get(client, path, {"page": str(len(pages))})
        assert status == 200
        assert body["message"] == "success"
        pages.append(body[key])
    return pages


UNITS = [(k, u) for k in KINDS.values() for u in k.units]


@pytest.mark.parametrize(("kind", "unit"), UNITS, ids=[f"{k.name}-{u}" for k, u in UNITS])
async def test_every_kind_answers_its_value_key_with_series_value(
    sandbox: Start, kind: SeriesKind, unit: str
) -> None:
    """Each KINDS path serves length points under its value key, equal to series_value."""
    client = await sandbox()
    status, body, _ = await _get(client, kind.path, _params(kind, unit))
    assert status == 200
    assert body["message"] == "success"
    assert len(body["data"]) == 5
    for item in body["data"]:
        assert set(item) == {"time", kind.value_key}
        assert item[kind.value_key] == series_value(kind.name, DIMS, unit, item["time"])
    days = [item["time"] for item in body["data"]]
    if unit == "day":
        assert days == [(date(2024, 1, 6) + timedelta(days=i)).isoformat() for i in range(5)]
    else:
        assert days[-1] == "2024-01-10T12:00:00"


def test_series_value_of_sessions_is_session_count() -> None:
    """series_value('sessions', ...) is session_count, restated or not."""
    for label, restate in (("2024-01-05", 0), ("2024-01-05T10:00:00", 7)):
        unit = "hour" if "T" in label else "day"
        assert series_value(
            "sessions", {"segment_id": "s", "app_id": "a"}, unit, label, restate
        ) == session_count("s", "a", unit, label, restate)


def test_values_are_realistic() -> None:
    """Non-negative; revenue fractional with 2 decimals; DAU below MAU; new users below DAU;
    a segment's size moves slowly; other kinds are ints."""
    days = [(date(2024, 1, 1) + timedelta(days=i)).isoformat() for i in range(120)]
    fractional = False
    for app in (None, "a1", "a2", "a3"):
        dims = {**DIMS, "app_id": app}
        for day in days:
            values = {k: series_value(k, dims, "day", day) for k in KINDS}
            assert all(v >= 0 for v in values.values())
            assert values["dau"] < values["mau"]
            assert values["new_users"] < values["dau"]
            revenue = values["purchases_revenue"]
            assert isinstance(revenue, float)
            assert round(revenue, 2) == revenue
            fractional |= revenue != int(revenue)
            assert all(isinstance(v, int) for k, v in values.items() if k != "purchases_revenue")
    assert fractional
    sizes = [series_value("segment_size", DIMS, "day", day) for day in days]
    assert all(abs(b - a) <= 0.02 * a for a, b in itertools.pairwise(sizes))


def test_series_differ_by_dimension() -> None:
    """Different events, products and apps give different series."""
    day = "2024-01-05"
    assert series_value("events", {"event": "a"}, "day", day) != series_value(
        "events", {"event": "b"}, "day", day
    )
    assert series_value("purchases_quantity", {"product": "a"}, "day", day) != series_value(
        "purchases_quantity", {"product": "b"}, "day", day
    )
    assert series_value("dau", {"app_id": "a"}, "day", day) != series_value("dau", {}, "day", day)


REQUIRED = [(k, d) for k in KINDS.values() for d in k.required]


@pytest.mark.parametrize(("kind", "dim"), REQUIRED, ids=[f"{k.name}-{d}" for k, d in REQUIRED])
async def test_a_missing_required_dimension_is_a_400(
    sandbox: Start, kind: SeriesKind, dim: str
) -> None:
    """A required dimension left out answers 400 '<dim> is required'."""
    client = await sandbox()
    params = _params(kind)
    del params[dim]
    status, body, _ = await _get(client, kind.path, params)
    assert status == 400
    assert body["errors"] == [f"{dim} is required"]


DAY_ONLY = [k for k in KINDS.values() if not k.takes_unit]


@pytest.mark.parametrize("kind", DAY_ONLY, ids=[k.name for k in DAY_ONLY])
async def test_a_day_only_kind_refuses_hours_and_defaults_to_days(
    sandbox: Start, kind: SeriesKind
) -> None:
    """unit=hour on a day-only endpoint is a 400; unit=day or no unit serve days."""
    client = await sandbox()
    status, body, _ = await _get(client, kind.path, _params(kind, "hour"))
    assert status == 400
    assert "days only" in body["errors"][0]
    _, plain, _ = await _get(client, kind.path, _params(kind))
    _, daily, _ = await _get(client, kind.path, _params(kind, "day"))
    assert plain == daily
    assert plain["data"][-1]["time"] == "2024-01-10"


@pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))
async def test_length_and_unit_are_checked_on_every_kind(sandbox: Start, kind: SeriesKind) -> None:
    """length outside 1..100 and an unknown unit are 400s on every path."""
    client = await sandbox()
    for bad in ({"length": "0"}, {"length": "101"}, {"unit": "week"}):
        status, body, _ = await _get(client, kind.path, {**_params(kind), **bad})
        assert (status, body["message"]) == (400, "Invalid parameters"), bad


async def test_a_dimension_the_kind_does_not_take_is_ignored(sandbox: Start) -> None:
    """As Braze ignores unknown parameters: a segment_id sent to /kpi/dau changes nothing."""
    client = await sandbox()
    kind = KINDS["dau"]
    _, plain, _ = await _get(client, kind.path, _params(kind))
    _, extra, _ = await _get(client, kind.path, _params(kind, segment_id="x", event="y"))
    assert extra == plain


async def test_segment_options_apply_to_every_kind_with_a_segment(sandbox: Start) -> None:
    """not_found_segments and reject_segments answer 404 and 400 on /events/data_series too;
    missing_days leaves those dates out; hour labels follow hour_labels."""
    client = await sandbox(
        not_found_segments=frozenset({"gone"}),
        reject_segments=frozenset({"bad"}),
        missing_days=frozenset({"2024-01-08"}),
        hour_labels="z",
    )
    kind = KINDS["events"]
    assert (await _get(client, kind.path, _params(kind, segment_id="gone")))[0] == 404
    assert (await _get(client, kind.path, _params(kind, segment_id="bad")))[0] == 400
    _, body, _ = await _get(client, kind.path, _params(kind))
    assert "2024-01-08" not in [i["time"] for i in body["data"]]
    assert len(body["data"]) == 4
    _, body, _ = await _get(client, kind.path, _params(kind, "hour"))
    assert body["data"][-1]["time"] == "2024-01-10T12:00:00Z"


async def test_restate_shifts_recent_days_of_every_kind(sandbox: Start) -> None:
    """With restate, the last restate_days read series_value(..., restate), older days not."""
    client = await sandbox(restate=5, restate_days=2)
    for kind in KINDS.values():
        _, body, _ = await _get(client, kind.path, _params(kind))
        for item in body["data"]:
            restate = 5 if item["time"] >= "2024-01-08" else 0
            want = series_value(kind.name, DIMS, "day", item["time"], restate)
            assert item[kind.value_key] == want, kind.name
        assert body["data"][-1][kind.value_key] != series_value(
            kind.name, DIMS, "day", "2024-01-10"
        )


async def test_deny_names_the_permission_of_the_endpoint(sandbox: Start) -> None:
    """--deny answers 403 naming the permission of the path asked."""
    client = await sandbox(deny=True)
    status, body, _ = await _get(client, KINDS["mau"].path, _params(KINDS["mau"]))
    assert status == 403
    assert body["message"].endswith("kpi.mau.data_series")
    status, body, _ = await _get(client, "/events/list", {})
    assert status == 403
    assert body["message"].endswith("events.list")


async def test_segments_list_pages_the_catalogue(sandbox: Start) -> None:
    """/segments/list: 100 per page from page 0, then an empty page; every item has id, name,
    analytics_tracking_enabled and tags; some segments have analytics off."""
    client = await sandbox()
    pages = await _all_pages(client, "/segments/list", "segments")
    assert [len(p) for p in pages] == [100, 100, 30, 0]
    items = [s for p in pages for s in p]
    assert [s["id"] for s in items] == [s.id for s in catalogue().segments]
    assert len({s["id"] for s in items}) == 230
    for item in items:
        assert set(item) == {"id", "name", "analytics_tracking_enabled", "tags"}
        assert isinstance(item["name"], str)
        assert isinstance(item["tags"], list)
    off = sum(not s["analytics_tracking_enabled"] for s in items)
    assert 0.1 * 230 < off < 0.5 * 230
    assert any(s["tags"] for s in items)


async def test_events_list_pages_names_alphabetically(sandbox: Start) -> None:
    """/events/list: 250 names per page, alphabetical over all pages, then an empty page."""
    client = await sandbox(events=600)
    pages = await _all_pages(client, "/events/list", "events")
    assert [len(p) for p in pages] == [250, 250, 100, 0]
    names = [n for p in pages for n in p]
    assert names == sorted(names) == list(catalogue(SandboxOptions(events=600)).events)
    assert len(set(names)) == 600


@pytest.mark.parametrize(("size", "pages"), [(None, [12, 0]), (5, [5, 5, 2, 0])])
async def test_product_list_pages_until_empty(
    sandbox: Start, size: int | None, pages: list[int]
) -> None:
    """/purchases/product_list: product_page_size names per page, an empty page after the end."""
    client = await sandbox(**({} if size is None else {"product_page_size": size}))
    got = await _all_pages(client, "/purchases/product_list", "products")
    assert [len(p) for p in got] == pages
    assert [n for p in got for n in p] == list(catalogue().products)
    assert PRODUCT_PAGE_SIZE >= 12


async def test_catalogue_sizes_follow_the_options() -> None:
    """A catalogue has the sizes asked, and a larger one extends a smaller one."""
    small = catalogue(SandboxOptions(segments=3, events=5, products=2))
    large = catalogue(SandboxOptions(segments=300, events=100, products=50))
    assert (len(small.segments), len(small.events), len(small.products)) == (3, 5, 2)
    assert large.segments[:3] == small.segments
    assert set(small.events) <= set(large.events)
    assert large.products[:2] == small.products


@pytest.mark.parametrize(("path", "key"), [(s.path, s.items_key) for s in LISTS.values()])
async def test_a_bad_page_is_a_400(sandbox: Start, path: str, key: str) -> None:
    """page negative or not an integer answers 400; a page past the end is empty."""
    client = await sandbox()
    for bad in ("-1", "x", "1.5", ""):
        status, body, _ = await _get(client, path, {"page": bad})
        assert status == 400, bad
        assert "page" in body["errors"][0]
    status, body, _ = await _get(client, path, {"page": "99"})
    assert status == 200
    assert body[key] == []


async def test_catalogue_ids_serve_as_series_ids(sandbox: Start) -> None:
    """A listed segment id, event name and product name each give a 200 series."""
    client = await sandbox()
    shown = catalogue()
    for kind, dims in (
        (KINDS["sessions"], {"segment_id": shown.segments[0].id}),
        (KINDS["segment_size"], {"segment_id": shown.segments[-1].id}),
        (KINDS["events"], {"event": shown.events[0]}),
        (KINDS["purchases_revenue"], {"product": shown.products[-1]}),
    ):
        status, body, _ = await _get(client, kind.path, {"length": "2", "ending_at": END, **dims})
        assert status == 200
        want = series_value(kind.name, dims, "day", body["data"][0]["time"])
        assert body["data"][0][kind.value_key] == want


async def test_each_pool_has_its_own_counter_and_headers(sandbox: Start) -> None:
    """Series and /segments/list draw from the workspace pool, the other lists from the lists
    pool: each response carries its own pool's Limit and Remaining."""
    client = await sandbox(limit=50, list_limit=10, window_s=60.0)
    _, _, h = await _get(client, KINDS["dau"].path, _params(KINDS["dau"]))
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("50", "49")
    _, _, h = await _get(client, "/segments/list", {})
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("50", "48")
    _, _, h = await _get(client, "/events/list", {})
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("10", "9")
    _, _, h = await _get(client, "/purchases/product_list", {})
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == ("10", "8")
    assert h["X-RateLimit-Reset"] == "1704888060"


async def test_a_spent_list_pool_leaves_the_workspace_pool_open(sandbox: Start) -> None:
    """Past list_limit the list endpoints answer 429 while the series still answer 200."""
    client = await sandbox(list_limit=2)
    statuses = [(await _get(client, "/events/list", {}))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert (await _get(client, "/purchases/product_list", {}))[0] == 429
    assert (await _get(client, KINDS["sessions"].path, _params(KINDS["sessions"])))[0] == 200
    assert (await _get(client, "/segments/list", {}))[0] == 200


@pytest.mark.parametrize(
    ("pool", "path"), [(LIST_POOL, "/events/list"), (WORKSPACE_POOL, "/segments/list")]
)
async def test_throttle_answers_the_first_requests_of_one_pool_429(
    sandbox: Start, pool: str, path: str
) -> None:
    """throttle={pool: K}: that pool's first K requests answer 429 with Remaining 0, then 200;
    the other pool answers 200 all along."""
    client = await sandbox(throttle={pool: 2})
    other = "/purchases/product_list" if pool == WORKSPACE_POOL else "/segments/list"
    got = []
    for _ in range(3):
        status, _, headers = await _get(client, path, {})
        got.append((status, headers["X-RateLimit-Remaining"] == "0"))
        assert (await _get(client, other, {}))[0] == 200
    assert got == [(429, True), (429, True), (200, False)]
    stats = sandbox_stats(client.app)
    assert stats.pools[pool].rate_limited == 2
    assert stats.rate_limited == 2


def test_throttle_of_an_unknown_pool_is_refused() -> None:
    """SandboxOptions(throttle=...) names only known pools."""
    with pytest.raises(ValueError, match="unknown pool 'canvas'"):
        SandboxOptions(throttle={"canvas": 1})


async def test_stats_count_per_path_and_per_pool(sandbox: Start) -> None:
    """SandboxStats and /_sandbox/stats count requests per path and per pool."""
    client = await sandbox()
    for _ in range(2):
        await _get(client, KINDS["events"].path, _params(KINDS["events"]))
    await _get(client, "/events/list", {})
    await _get(client, "/segments/list", {})
    stats = sandbox_stats(client.app)
    assert stats.paths == {"/events/data_series": 2, "/events/list": 1, "/segments/list": 1}
    assert stats.pools[WORKSPACE_POOL].requests == 3
    assert stats.pools[LIST_POOL].requests == 1
    assert stats.max_in_window == 3
    async with client.get("/_sandbox/stats") as resp:
        doc = await resp.json()
    assert doc["paths"]["/events/data_series"] == 2
    assert doc["pools"][LIST_POOL]["requests"] == 1
    assert doc["max_in_window"] == 3
    assert list(doc["windows"].values()) == [3]
    assert set(doc["pools"]) == set(POOLS)


def test_sandbox_command_passes_catalogue_and_pool_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """braze-export sandbox --segments/--events/--products/--list-limit/--throttle-pool reach
    the sandbox's options; a throttle of an unknown pool is a usage error."""
    seen: list[SandboxOptions] = []
    monkeypatch.setattr(cli, "run_sandbox", lambda options, host, port: seen.append(options))
    flags = ["--segments", "3", "--events", "4", "--products", "5", "--list-limit", "7"]
    assert cli.main(["sandbox", *flags, "--throttle-pool", "lists:5"]) == 0
    (options,) = seen
    assert (options.segments, options.events, options.products) == (3, 4, 5)
    assert options.list_limit == 7
    assert dict(options.throttle) == {"lists": 5}
    with pytest.raises(SystemExit) as exc:
        cli.main(["sandbox", "--throttle-pool", "canvas:5"])
    assert exc.value.code == 2


async def test_latency_delays_every_answer_before_anything_else(sandbox: Start) -> None:
    """latency_s: each answer of a series, a list or a refusal first waits that long."""
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    client = await sandbox(latency_s=0.01, sleep=sleep)
    assert (await _get(client, KINDS["sessions"].path, _params(KINDS["sessions"])))[0] == 200
    assert (await _get(client, "/events/list", {}))[0] == 200
    async with client.get("/segments/list") as resp:  # no key: refused, after the wait too
        assert resp.status == 401
    assert waits == [0.01, 0.01, 0.01]


def test_sandbox_latency_flag_is_in_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """braze-export sandbox --latency-ms 10 waits 0.01 s per answer; a negative one is a
    usage error."""
    seen: list[SandboxOptions] = []
    monkeypatch.setattr(cli, "run_sandbox", lambda options, host, port: seen.append(options))
    assert cli.main(["sandbox", "--latency-ms", "10"]) == 0
    assert seen[0].latency_s == pytest.approx(0.01)
    with pytest.raises(SystemExit) as exc:
        cli.main(["sandbox", "--latency-ms", "-1"])
    assert exc.value.code == 2


async def _bad_bodies(client: Client, path: str, queries: list[dict[str, str]]) -> list[Any]:
    """The 200 bodies among faulty answers (the other faults are errors or dropped)."""
    bodies = []
    for params in queries:
        try:
            async with client.get(path, params=params, headers=AUTH) as resp:
                if resp.status == 200:
                    bodies.append(await resp.json())
        except (aiohttp.ClientError, ValueError):
            continue
    return bodies


async def test_faults_reach_every_endpoint_with_its_own_bad_body(sandbox: Start) -> None:
    """With fault_rate 1, a series' invalid 200 carries its value key and a list's invalid
    200 its items key: the faults of a series and of a list are each their own."""
    client = await sandbox(fault_rate=1.0, slow_s=0.0)
    kind = KINDS["mau"]
    tries = [_params(kind, length=str(n)) for n in range(1, 41)]
    bodies = await _bad_bodies(client, kind.path, tries)
    assert bodies
    assert all(b["data"] == [{"time": "not-a-time", "mau": -3}] for b in bodies)
    lists = await _bad_bodies(client, "/events/list", [{"page": str(n)} for n in range(40)])
    assert lists
    assert all(b["events"] == "not-a-list" for b in lists)
