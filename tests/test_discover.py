"""Discovery: paging through Braze's list endpoints, filtering, and never spinning."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses

from exporter.client import BrazeClient, Response
from exporter.config import ApiKey
from exporter.discover import (
    Discovered,
    DiscoverSpec,
    discover,
    discovery_cost,
    interpret_list,
)
from exporter.errors import (
    AuthError,
    DiscoveryError,
    MalformedResponse,
    RateLimited,
    ServerError,
    TransportError,
)
from exporter.ratelimit import Budget, RateHeaders
from exporter.retry import RetryPolicy
from exporter.series import LISTS
from tests.conftest import FakeClock, mocked_http

BASE = "https://rest.test"
SEGMENTS, EVENTS, PRODUCTS = LISTS["segment_id"], LISTS["event"], LISTS["product"]


def _url(path: str, page: int) -> str:
    return f"{BASE}{path}?page={page}"


def _segment(i: int, analytics: Any = True, name: str | None = None, **extra: Any) -> Any:
    return {
        "id": f"seg-{i}",
        "name": name or f"Segment {i}",
        "analytics_tracking_enabled": analytics,
        "tags": [],
        **extra,
    }


def _page(key: str, items: Sequence[Any]) -> dict[str, Any]:
    return {"message": "success", key: list(items)}


class Harness:
    """A real BrazeClient against aioresponses, a fake-clock budget and retry policy."""

    def __init__(self, mocked: aioresponses, session: aiohttp.ClientSession) -> None:
        self.mocked = mocked
        self.clock = FakeClock(1_700_000_000.0)
        self.client = BrazeClient(session, BASE, ApiKey("k-secret"), clock=self.clock)
        self.budget = Budget(
            10**8, 1.0, 0.1, clock=self.clock, sleep=self.clock.sleep, jitter=lambda: 0.5
        )

    def pages(self, path: str, key: str, pages: Sequence[Sequence[Any]]) -> None:
        for number, items in enumerate(pages):
            self.mocked.get(_url(path, number), payload=_page(key, items))

    async def run(self, spec: DiscoverSpec, **kwargs: Any) -> Discovered:
        return await discover(
            self.client,
            spec,
            budget=self.budget,
            retry=RetryPolicy(max_attempts=3),
            sleep=self.clock.sleep,
            clock=self.clock,
            rand=lambda: 0.5,
            **kwargs,
        )

    def sent(self) -> list[str]:
        """The query of every request sent, in order."""
        return [
            str(url.query.get("page"))
            for (_, url), calls in self.mocked.requests.items()
            for _ in calls
        ]


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with aiohttp.ClientSession() as session:
        with mocked_http() as mocked:
            yield Harness(mocked, session)


async def test_segments_page_until_a_short_page(harness: Harness) -> None:
    """Full pages of 100 lead to the next page; the short third page ends it, ids in order."""
    pages = [[_segment(i) for i in range(p * 100, min(p * 100 + 100, 230))] for p in range(3)]
    harness.pages("/segments/list", "segments", pages)
    found = await harness.run(DiscoverSpec("segment_id"))
    assert found.ids == tuple(f"seg-{i}" for i in range(230))
    assert (found.requests, found.pages, found.skipped) == (3, 3, 0)


async def test_a_short_first_page_is_the_only_request(harness: Harness) -> None:
    """Fewer than 250 events on page 0: page 1 is never asked for."""
    harness.pages("/events/list", "events", [["a", "b"]])
    found = await harness.run(DiscoverSpec("event"))
    assert found.ids == ("a", "b")
    assert found.requests == 1
    assert harness.sent() == ["0"]


async def test_an_empty_page_after_full_ones_ends_the_list(harness: Harness) -> None:
    """Exactly 250 events: the empty page 1 ends the listing."""
    names = [f"e{i:03d}" for i in range(250)]
    harness.pages("/events/list", "events", [names, []])
    found = await harness.run(DiscoverSpec("event"))
    assert len(found.ids) == 250
    assert (found.requests, found.pages) == (2, 2)


async def test_products_page_until_the_first_empty_page(harness: Harness) -> None:
    """The product list's size is undocumented: short pages do not end it, an empty one does."""
    harness.pages("/purchases/product_list", "products", [["p1", "p2"], ["p3"], []])
    found = await harness.run(DiscoverSpec("product"))
    assert found.ids == ("p1", "p2", "p3")
    assert harness.sent() == ["0", "1", "2"]


async def test_only_analytics_enabled_segments_are_kept(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """analytics_tracking_enabled false, missing or not a boolean: skipped, one warning."""
    items = [
        _segment(1),
        _segment(2, analytics=False),
        _segment(3, analytics="true"),
        {"id": "seg-4", "name": "no flag"},
        _segment(5, analytics=1),
    ]
    harness.pages("/segments/list", "segments", [items])
    with caplog.at_level(logging.WARNING):
        found = await harness.run(DiscoverSpec("segment_id"))
    assert found.ids == ("seg-1",)
    assert found.skipped == 4
    flagged = [r for r in caplog.records if "analytics_tracking_enabled" in r.getMessage()]
    assert len(flagged) == 1
    assert "3 segments" in flagged[0].getMessage()


async def test_analytics_only_false_keeps_every_segment(harness: Harness) -> None:
    """analytics_only=False keeps disabled segments too."""
    harness.pages("/segments/list", "segments", [[_segment(1), _segment(2, analytics=False)]])
    found = await harness.run(DiscoverSpec("segment_id", analytics_only=False))
    assert found.ids == ("seg-1", "seg-2")


async def test_name_pattern_filters_events(harness: Harness) -> None:
    """The name pattern is searched (not matched from the start) in each event name."""
    harness.pages("/events/list", "events", [["checkout_done", "login", "pre_checkout"]])
    found = await harness.run(DiscoverSpec("event", name=re.compile("checkout")))
    assert found.ids == ("checkout_done", "pre_checkout")
    assert found.skipped == 1


async def test_name_pattern_filters_segment_names_not_ids(harness: Harness) -> None:
    """For segments the pattern applies to the name, not the id."""
    items = [_segment(1, name="VIP buyers"), _segment(2, name="Churned")]
    harness.pages("/segments/list", "segments", [items])
    found = await harness.run(DiscoverSpec("segment_id", name=re.compile("^VIP")))
    assert found.ids == ("seg-1",)


async def test_tags_keep_segments_carrying_any_of_them(harness: Harness) -> None:
    """A segment is kept when it carries at least one of the tags."""
    items = [
        _segment(1, tags=["export", "team-a"]),
        _segment(2, tags=["team-b"]),
        _segment(3, tags=["nightly"]),
        _segment(4, tags="export"),  # not a list: no tags
    ]
    harness.pages("/segments/list", "segments", [items])
    found = await harness.run(DiscoverSpec("segment_id", tags=("export", "nightly")))
    assert found.ids == ("seg-1", "seg-3")
    assert found.skipped == 2


async def test_an_id_listed_twice_is_kept_once(harness: Harness) -> None:
    """A segment shifted onto the next page while paging appears once, first place kept."""
    first = [_segment(i) for i in range(100)]
    second = [_segment(99), _segment(100)]
    harness.pages("/segments/list", "segments", [first, second])
    found = await harness.run(DiscoverSpec("segment_id"))
    assert found.ids == tuple(f"seg-{i}" for i in range(101))
    assert found.duplicates == 1


async def test_a_server_ignoring_page_is_stopped(harness: Harness) -> None:
    """The same full page served for every page number stops after the second request."""
    names = [f"e{i:03d}" for i in range(250)]
    harness.mocked.get(
        re.compile(r"^https://rest\.test/events/list\?page=\d+$"),
        payload=_page("events", names),
        repeat=True,
    )
    with pytest.raises(DiscoveryError, match="page 1 repeats page 0: the server ignores 'page'"):
        await harness.run(DiscoverSpec("event"))
    assert harness.sent() == ["0", "1"]


async def test_a_page_of_only_known_ids_is_stopped(harness: Harness) -> None:
    """A product page whose ids were all listed before (in another order) stops discovery."""
    harness.pages("/purchases/product_list", "products", [["a", "b"], ["b", "a"], []])
    with pytest.raises(DiscoveryError, match="page 1 lists no id that earlier pages did not"):
        await harness.run(DiscoverSpec("product"))


async def test_pages_are_capped(harness: Harness) -> None:
    """A list that never ends stops at max_pages with a clear error, not a spin."""
    for page in range(5):
        harness.mocked.get(
            _url("/purchases/product_list", page), payload=_page("products", [f"p{page}"])
        )
    with pytest.raises(DiscoveryError, match="more than 3 pages"):
        await harness.run(DiscoverSpec("product"), max_pages=3)
    assert harness.sent() == ["0", "1", "2"]


async def test_bad_items_are_counted_and_skipped_with_one_warning(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """Non-strings, empty and over-long names are skipped, counted and warned about once."""
    harness.pages("/events/list", "events", [[5, None, "", "x" * 257, {"a": 1}, "ok", "x" * 256]])
    with caplog.at_level(logging.WARNING):
        found = await harness.run(DiscoverSpec("event"))
    assert found.ids == ("ok", "x" * 256)
    assert found.malformed == 5
    warned = [r for r in caplog.records if "not well-formed" in r.getMessage()]
    assert len(warned) == 1


async def test_bad_segment_objects_are_skipped(harness: Harness) -> None:
    """A segment that is not an object, or has no string id, is skipped; an odd name is ''."""
    items = ["seg-x", {"name": "no id"}, {"id": 7}, _segment(1), {"id": "seg-2", "name": 3}]
    harness.pages("/segments/list", "segments", [items])
    found = await harness.run(DiscoverSpec("segment_id", analytics_only=False))
    assert found.ids == ("seg-1", "seg-2")
    assert found.malformed == 3


async def test_a_short_page_counts_its_malformed_entries(harness: Harness) -> None:
    """A full page of 100 entries, some malformed, is full: the next page is asked for."""
    first = [_segment(i) for i in range(99)] + [None]
    harness.pages("/segments/list", "segments", [first, [_segment(500)]])
    found = await harness.run(DiscoverSpec("segment_id"))
    assert len(found.ids) == 100
    assert found.pages == 2


async def test_a_429_waits_for_the_reset_then_succeeds(harness: Harness) -> None:
    """A 429 closes the budget until Reset; the page is asked for again after it."""
    reset = harness.clock.now + 30
    harness.mocked.get(
        _url("/events/list", 0),
        status=429,
        payload={"message": "rate limited"},
        headers={"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
                 "X-RateLimit-Reset": str(int(reset))},
    )  # fmt: skip
    harness.pages("/events/list", "events", [["a"]])
    start = harness.clock.now
    found = await harness.run(DiscoverSpec("event"))
    assert found.ids == ("a",)
    assert (found.requests, found.pages) == (2, 1)
    assert harness.clock.now - start >= 30
    assert harness.budget.pauses == 1


async def test_a_401_stops_at_once_naming_the_permission(harness: Harness) -> None:
    """401 is not retried; the error names the list's permission and never the key."""
    harness.mocked.get(_url("/segments/list", 0), status=401, payload={"message": "Invalid"})
    with pytest.raises(AuthError) as caught:
        await harness.run(DiscoverSpec("segment_id"))
    assert "segments.list" in str(caught.value)
    assert str(caught.value).startswith("/segments/list page 0: HTTP 401: Invalid")
    assert "k-secret" not in str(caught.value)
    assert harness.sent() == ["0"]


async def test_a_5xx_is_retried(harness: Harness) -> None:
    """A 503 is retried with backoff and then succeeds; both attempts are counted."""
    harness.mocked.get(_url("/purchases/product_list", 0), status=503, payload={})
    harness.pages("/purchases/product_list", "products", [["p1"], []])
    found = await harness.run(DiscoverSpec("product"))
    assert found.ids == ("p1",)
    assert found.requests == 3
    assert harness.clock.sleeps  # the backoff slept on the fake clock


async def test_retries_give_up_with_the_last_error(harness: Harness) -> None:
    """A list that keeps answering 500 fails after the policy's attempts."""
    harness.mocked.get(_url("/events/list", 0), status=500, payload={}, repeat=True)
    with pytest.raises(ServerError, match="/events/list page 0: HTTP 500"):
        await harness.run(DiscoverSpec("event"))
    assert len(harness.sent()) == 3


async def test_a_400_is_a_discovery_error_without_retry(harness: Harness) -> None:
    """400/404 on a list is final: DiscoveryError, one request."""
    harness.mocked.get(_url("/events/list", 0), status=404, payload={"message": "Not Found"})
    with pytest.raises(DiscoveryError, match="HTTP 404: Not Found"):
        await harness.run(DiscoverSpec("event"))
    assert harness.sent() == ["0"]


async def test_get_list_sends_the_page_and_bearer_auth(harness: Harness) -> None:
    """get_list asks for path?page=N with the key in the header only."""
    harness.pages("/events/list", "events", [["a"]])
    response = await harness.client.get_list(EVENTS, 0)
    ((_, url), calls) = next(iter(harness.mocked.requests.items()))
    assert response.status == 200
    assert str(url) == "https://rest.test/events/list?page=0"
    assert calls[0].kwargs["headers"]["Authorization"] == "Bearer k-secret"


async def test_get_list_transport_errors_name_the_page(harness: Harness) -> None:
    """A timeout on a list page is a TransportError labelled with the path and page."""
    harness.mocked.get(_url("/events/list", 3), exception=TimeoutError())
    with pytest.raises(TransportError) as caught:
        await harness.client.get_list(EVENTS, 3)
    assert str(caught.value) == "/events/list page 3: no response from rest.test:443 in time"


def _response(status: int, body: Any) -> Response:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Response(status, RateHeaders(), raw)


@pytest.mark.parametrize(
    "body",
    [b"<html>", {"message": "success"}, {"message": "oops", "events": []}, ["a"]],
)
def test_malformed_list_bodies(body: Any) -> None:
    """Not JSON, no list under the items key, or a message other than success: malformed."""
    with pytest.raises(MalformedResponse):
        interpret_list(EVENTS, _response(200, body))


def test_a_list_body_nested_too_deep_is_malformed() -> None:
    """100,000 nested arrays: MalformedResponse (retried), never a RecursionError."""
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(MalformedResponse, match="not JSON"):
        interpret_list(EVENTS, _response(200, b'{"events": ' + deep + b"}"))


def test_a_body_without_message_is_still_a_list() -> None:
    """Braze's examples carry message=success, but a body without it is read."""
    page = interpret_list(PRODUCTS, _response(200, {"products": ["p"]}))
    assert [item.id for item in page.items] == ["p"]


def test_a_429_carries_the_raw_reset() -> None:
    """interpret_list's RateLimited holds Retry-After or Reset as sent (the budget judges)."""
    response = Response(429, RateHeaders(reset_at=1234.0), b"{}")
    with pytest.raises(RateLimited) as caught:
        interpret_list(SEGMENTS, response)
    assert caught.value.reset_at == 1234.0
    assert caught.value.label == "/segments/list"


def test_specs_reject_tags_outside_segments_and_unknown_lists() -> None:
    """tags apply to lists whose items carry them; a dimension without a list is refused."""
    with pytest.raises(ValueError, match="tags filter segments, campaigns and Canvases"):
        DiscoverSpec("event", tags=("x",))
    with pytest.raises(ValueError, match="no list to discover 'app_id'"):
        DiscoverSpec("app_id")


def test_discovery_cost_names_endpoint_pool_and_growth() -> None:
    """The dry plan line: minimum requests, endpoint, pool and how it grows."""
    assert discovery_cost(DiscoverSpec("segment_id")) == (
        "at least 1 request to /segments/list (workspace pool; one per 100 segments)"
    )
    assert discovery_cost(DiscoverSpec("event")) == (
        "at least 1 request to /events/list (lists pool; one per 250 events)"
    )
    assert discovery_cost(DiscoverSpec("product")) == (
        "at least 1 request to /purchases/product_list (lists pool; one per page of products, "
        "plus the empty page that ends the list)"
    )


async def test_an_id_that_is_no_unicode_text_is_skipped_as_malformed(harness: Harness) -> None:
    """JSON may escape a lone surrogate ('\\ud800'): no path, URL or UTF-8 file can hold it,
    so it is a malformed entry, skipped and counted, never a crash later."""
    body = '{"message": "success", "segments": [{"id": "\\ud800", "name": "x", '
    body += '"analytics_tracking_enabled": true, "tags": []}, '
    body += '{"id": "ok", "name": "y", "analytics_tracking_enabled": true, "tags": []}]}'
    harness.mocked.get(_url("/segments/list", 0), body=body)
    found = await harness.run(DiscoverSpec("segment_id"))
    assert found.ids == ("ok",)
    assert found.malformed == 1


async def test_a_stopping_run_reads_no_further_page(harness: Harness) -> None:
    """Between pages discovery checks the run's stop: it ends with an error, not the list."""
    names = [f"e{i:03d}" for i in range(250)]
    harness.pages("/events/list", "events", [names, names[:1]])
    asked: list[int] = []

    def stopping() -> bool:
        asked.append(1)
        return len(asked) > 1  # the stop arrives after the first page

    with pytest.raises(DiscoveryError, match="stopped"):
        await harness.run(DiscoverSpec("event"), stopping=stopping)
    assert harness.sent() == ["0"]
