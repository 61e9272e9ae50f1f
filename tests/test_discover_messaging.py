"""Discovery of campaign and Canvas ids from /campaigns/list and /canvas/list: the query every
page carries, and the name, tags, archived and edited-since filters."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.client import BrazeClient
from exporter.config import load_config
from exporter.discover import Discovered, DiscoverSpec, discover, discovery_cost
from exporter.errors import ConfigError
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions
from exporter.sandbox_messaging import messaging_catalogue
from tests.conftest import FakeClock
from tests.mockedbraze import BASE, NOW, MockedBraze, mocked_braze, sandbox_client


def _campaign(i: int, edited: str = "2024-01-01T00:00:00+00:00", **extra: Any) -> Any:
    return {"id": f"c-{i}", "name": f"Campaign {i}", "last_edited": edited, "tags": [], **extra}


async def _discover(client: BrazeClient, spec: DiscoverSpec, clock: FakeClock) -> Discovered:
    return await discover(
        client,
        spec,
        budget=MockedBraze.budget_on(clock),
        retry=RetryPolicy(max_attempts=3),
        sleep=clock.sleep,
        clock=clock,
        rand=lambda: 0.5,
    )


class Mocked(MockedBraze):
    def pages(self, path: str, key: str, pages: Sequence[Sequence[Any]]) -> None:
        for number, items in enumerate(pages):
            pattern = re.compile(re.escape(f"{BASE}{path}?") + f".*page={number}(&|$)")
            self.mocked.get(pattern, payload={"message": "success", key: list(items)})


@pytest.fixture
async def mocked() -> AsyncIterator[Mocked]:
    async with mocked_braze(Mocked) as m:
        yield m


async def test_campaign_pages_ask_oldest_first_without_archived(mocked: Mocked) -> None:
    """Pages from 0, 100 a page; each asks sort_direction=asc and include_archived=false."""
    pages = [[_campaign(i) for i in range(p * 100, min(p * 100 + 100, 230))] for p in range(3)]
    mocked.pages("/campaigns/list", "campaigns", pages)
    found = await _discover(mocked.client, DiscoverSpec("campaign_id"), mocked.clock)
    assert found.ids == tuple(f"c-{i}" for i in range(230))
    assert (found.requests, found.pages) == (3, 3)
    assert [q["page"] for q in mocked.queries()] == ["0", "1", "2"]
    assert all(
        q["sort_direction"] == "asc" and q["include_archived"] == "false" for q in mocked.queries()
    )
    assert "last_edit.time[gt]" not in mocked.queries()[0]


async def test_canvas_list_asks_archived_and_edited_since(mocked: Mocked) -> None:
    """include_archived and edited_since become include_archived=true and last_edit.time[gt]."""
    mocked.pages("/canvas/list", "canvases", [[_campaign(1)]])
    since = datetime(2023, 12, 1, tzinfo=UTC)
    spec = DiscoverSpec("canvas_id", include_archived=True, edited_since=since)
    found = await _discover(mocked.client, spec, mocked.clock)
    assert found.ids == ("c-1",)
    (query,) = mocked.queries()
    assert query["include_archived"] == "true"
    assert query["last_edit.time[gt]"] == "2023-12-01T00:00:00+00:00"


async def test_name_tags_and_edited_since_filter_what_is_listed(mocked: Mocked) -> None:
    """The name regex and tags filter campaigns; edited_since is applied to the items too,
    so a server that ignores last_edit.time[gt] costs pages, never a wrong id."""
    items = [
        _campaign(1, tags=["promo"], name="Winback promo"),
        _campaign(2, tags=["promo"], name="Winback old", edited="2023-01-01T00:00:00Z"),
        _campaign(3, tags=["other"], name="Winback other"),
        _campaign(4, tags=["promo"], name="Welcome"),
    ]
    mocked.pages("/campaigns/list", "campaigns", [items])
    spec = DiscoverSpec(
        "campaign_id",
        re.compile("^Winback"),
        ("promo",),
        edited_since=datetime(2023, 6, 1, tzinfo=UTC),
    )
    found = await _discover(mocked.client, spec, mocked.clock)
    assert found.ids == ("c-1",)
    assert found.skipped == 3
    assert found.items[0].last_edited == datetime(2024, 1, 1, tzinfo=UTC)
    assert found.items[1].last_edited == datetime(2023, 1, 1, tzinfo=UTC)


async def test_an_unreadable_last_edited_is_kept_by_edited_since(mocked: Mocked) -> None:
    """An item whose last_edited is absent or odd was listed for the query: it is kept."""
    items = [_campaign(1, edited="yesterday"), {"id": "c-2", "name": "x"}]
    mocked.pages("/campaigns/list", "campaigns", [items])
    spec = DiscoverSpec("campaign_id", edited_since=datetime(2023, 6, 1, tzinfo=UTC))
    found = await _discover(mocked.client, spec, mocked.clock)
    assert found.ids == ("c-1", "c-2")
    assert [i.last_edited for i in found.items] == [None, None]


def test_archived_and_edited_since_are_for_campaigns_and_canvases_only() -> None:
    """include_archived and edited_since on a list that has no such filter are refused."""
    with pytest.raises(ValueError, match="filter campaigns and Canvases"):
        DiscoverSpec("segment_id", include_archived=True)
    with pytest.raises(ValueError, match="filter campaigns and Canvases"):
        DiscoverSpec("event", edited_since=datetime(2024, 1, 1, tzinfo=UTC))
    assert DiscoverSpec("canvas_id", tags=("a",)).tags == ("a",)


def test_discovery_cost_of_campaigns() -> None:
    """The dry plan line for the campaign list."""
    assert discovery_cost(DiscoverSpec("campaign_id")) == (
        "at least 1 request to /campaigns/list (workspace pool; one per 100 campaigns)"
    )


@pytest.mark.parametrize("dimension", ["campaign_id", "canvas_id"])
async def test_the_sandbox_lists_archived_ones_only_when_asked(dimension: str) -> None:
    """Against the sandbox: archived ones come only with include_archived, edited_since keeps
    exactly those edited after it, and last_edited is read from the list."""
    options = SandboxOptions(campaigns=230, canvases=130, clock=FakeClock(NOW))
    catalogue = messaging_catalogue(options)
    items = catalogue.campaigns if dimension == "campaign_id" else catalogue.canvases
    since = catalogue.now - timedelta(days=200)
    async with sandbox_client(options) as (client, clock):
        live = await _discover(client, DiscoverSpec(dimension), clock)
        every = await _discover(client, DiscoverSpec(dimension, include_archived=True), clock)
        recent = await _discover(
            client, DiscoverSpec(dimension, include_archived=True, edited_since=since), clock
        )
    assert live.ids == tuple(c.id for c in items if not c.archived)
    assert every.ids == tuple(c.id for c in items)
    assert recent.ids == tuple(c.id for c in items if c.last_edited > since)
    assert 0 < len(recent.ids) < len(every.ids)
    assert every.items[0].last_edited == items[0].last_edited


def test_a_canvas_discovery_beside_an_export_with_other_flags_is_a_config_error(
    write_config: Callable[..., Path],
) -> None:
    """A discovery may find the other export's Canvases: both would write their files with
    other rows, so the flags must agree (as for a Canvas listed twice)."""
    text = (
        "version: 1\nexports:\n"
        "  - {name: a, series: canvas, canvas_ids: {discover: all}, window: {days: 3}}\n"
        "  - {name: b, series: canvas, canvas_ids: [v-1], include_step_breakdown: false,"
        " window: {days: 3}}\n"
    )
    with pytest.raises(ConfigError, match=r"exports\[0\].canvas_ids: a discovery may find"):
        load_config(write_config(text), env={})
    load_config(write_config(text.replace(", include_step_breakdown: false", "")), env={})
