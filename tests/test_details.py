"""Campaign and Canvas details: read paced and retried, interpreted, kept in the state, and
read again only when they may have changed or when fresh ones pay."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.activity import Life, active_days
from exporter.client import Response
from exporter.details import (
    DETAILS,
    DetailsRead,
    DetailsSource,
    Known,
    interpret_details,
    read_details,
    wants_fresh,
)
from exporter.errors import AuthError, DiscoveryError, MalformedResponse, RetryableError
from exporter.ratelimit import Budget, RateHeaders
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions
from exporter.sandbox_messaging import messaging_catalogue
from exporter.state import Records, State, state_path
from tests.conftest import FakeClock
from tests.mockedbraze import BASE, NOW, MockedBraze, mocked_braze, sandbox_client

READ = datetime.fromtimestamp(NOW, UTC)
CAMPAIGNS, CANVASES = DETAILS["campaign_id"], DETAILS["canvas_id"]


def _ok(doc: Any) -> Response:
    return Response(200, RateHeaders(), json.dumps({"message": "success", **doc}).encode())


def test_campaign_details_give_first_last_draft_and_longest_window() -> None:
    """first_sent, last_sent, draft and the longest conversion_behaviors window are read."""
    doc = {
        "draft": False,
        "first_sent": "2023-05-01T10:00:00+00:00",
        "last_sent": "2023-05-20T08:30:00Z",
        "conversion_behaviors": [{"type": "a", "window": 86_400}, {"type": "b", "window": 259_200}],
    }
    life = interpret_details(CAMPAIGNS, _ok(doc), "c-1", READ)
    assert life == Life(
        False,
        datetime(2023, 5, 1, 10, tzinfo=UTC),
        datetime(2023, 5, 20, 8, 30, tzinfo=UTC),
        READ,
        bounded=True,
        conversion_s=259_200,
    )


def test_canvas_details_are_bounded_by_first_entry_only() -> None:
    """A Canvas' last_entry is no last message: its life has no last and is unbounded."""
    doc = {"draft": False, "first_entry": "2023-05-01", "last_entry": "2023-06-01"}
    life = interpret_details(CANVASES, _ok(doc), "v-1", READ)
    assert life.first == datetime(2023, 5, 1, tzinfo=UTC)
    assert (life.last, life.bounded, life.data_end) == (None, False, None)


@pytest.mark.parametrize(
    "doc",
    [
        {"draft": False, "first_sent": "2024-05-10T00:00:00Z", "last_sent": "2024-05-01T00:00:00Z"},
        {"draft": False, "first_sent": "2024-05-10T00:00:00Z", "last_sent": None},
        {"draft": True, "first_sent": None, "last_sent": "2024-05-10T00:00:00Z"},
    ],
)
def test_details_that_contradict_themselves_skip_no_day(doc: dict[str, Any]) -> None:
    """A last send before the first, a first without a last or a last without a first prove
    nothing: every day of the window is kept, fresh or not (never a live day skipped)."""
    life = interpret_details(CAMPAIGNS, _ok(doc), "c-1", READ)
    window = [(date(2024, 3, 1).toordinal(), date(2024, 7, 1).toordinal())]
    for fresh in (True, False):
        kept = active_days(window, life, fresh=fresh, confirmed=True)
        assert list(kept.kept) == window
        assert not kept.skipped


@pytest.mark.parametrize(
    ("source", "doc"),
    [
        (
            CAMPAIGNS,
            {"draft": False, "first_sent": "2030-01-01T00:00:00Z", "last_sent": "2030-01-02"},
        ),
        (CAMPAIGNS, {"draft": False, "first_sent": "2024-05-01", "last_sent": "2030-01-02"}),
        (CANVASES, {"draft": False, "first_entry": "2030-01-01T00:00:00Z"}),
        (CANVASES, {"draft": False, "first_entry": "2023-05-01", "last_entry": "2030-01-02"}),
    ],
    ids=["first-and-last", "last", "canvas-first-entry", "canvas-last-entry"],
)
def test_a_send_after_the_details_were_read_skips_no_day(
    source: DetailsSource, doc: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A first or last send (or entry) later than the read contradicts the clock: every day
    is kept, and a warning says why. A first_sent in 2030 once skipped a whole window as
    "before the first send" (BREAK19c finding 3)."""
    with caplog.at_level("WARNING"):
        life = interpret_details(source, _ok(doc), "c-1", READ)
    assert "is after they were read" in caplog.text
    window = [(date(2024, 3, 1).toordinal(), date(2024, 7, 1).toordinal())]
    for fresh in (True, False):
        assert list(active_days(window, life, fresh=fresh, confirmed=True).kept) == window


@pytest.mark.parametrize(
    "doc",
    [
        {"draft": False, "first_entry": "2023-05-01", "last_entry": None},
        {"draft": False, "first_entry": None, "last_entry": "2023-05-01"},
        {"draft": False, "first_entry": "2023-06-01", "last_entry": "2023-05-01"},
    ],
    ids=["first-without-last", "last-without-first", "last-before-first"],
)
def test_canvas_details_that_contradict_themselves_skip_no_day(doc: dict[str, Any]) -> None:
    """A Canvas' last_entry bounds nothing, but it is checked as a campaign's last_sent is:
    details that contradict themselves keep every day (BREAK19d finding 1: a Canvas whose
    times slipped lost days with data, unflagged)."""
    life = interpret_details(CANVASES, _ok(doc), "v-1", READ)
    window = [(date(2023, 3, 1).toordinal(), date(2024, 1, 9).toordinal())]
    for fresh in (True, False):
        assert list(active_days(window, life, fresh=fresh, confirmed=True).kept) == window


@pytest.mark.parametrize(("window", "seconds"), [("2592000", 2_592_000), (90.5, 91), (0, 0)])
def test_a_conversion_window_in_seconds_is_read_as_a_number_or_its_text(
    window: object, seconds: int
) -> None:
    """A window sent as a number's text is plausible drift: read, not dropped as 0."""
    doc = {
        "draft": False,
        "first_sent": "2023-12-01",
        "last_sent": "2023-12-02",
        "conversion_behaviors": [{"type": "a", "window": window}],
    }
    life = interpret_details(CAMPAIGNS, _ok(doc), "c-1", READ)
    assert (life.conversion_s, life.bounded) == (seconds, True)


@pytest.mark.parametrize(
    "behaviors",
    [
        [{"window": "a month"}],
        [{"window": -5}],
        [{"type": "a"}],
        [{"window": True}],
        {"w": 1},
        None,
        "absent",
    ],
    ids=["text", "negative", "missing", "bool", "not-a-list", "null", "absent"],
)
def test_an_unknown_conversion_window_reads_every_day_after_the_first_send(
    behaviors: object, caplog: pytest.LogCaptureFixture
) -> None:
    """A window that is no number of seconds is unknown, not 0: the days after the last
    send are read (they were skipped as if no window applied: BREAK19c finding 2); the days
    before the first send are still skipped, and a warning names the field."""
    doc = {
        "draft": False,
        "first_sent": "2023-12-01",
        "last_sent": "2023-12-02",
        "conversion_behaviors": behaviors,
    }
    if behaviors == "absent":  # no key at all: unknown too (BREAK19d finding 6)
        del doc["conversion_behaviors"]
    with caplog.at_level("WARNING"):
        life = interpret_details(CAMPAIGNS, _ok(doc), "c-1", READ)
    assert "conversion window is unknown" in caplog.text
    window = [(date(2023, 10, 1).toordinal(), date(2024, 1, 9).toordinal())]
    kept = active_days(window, life, fresh=True, confirmed=True).kept
    assert list(kept) == [(date(2023, 11, 30).toordinal(), date(2024, 1, 9).toordinal())]


@pytest.mark.parametrize(
    "doc",
    [{"first_sent": "soon"}, {"draft": "no"}, {"message": "oops"}],
)
def test_details_that_cannot_be_read_are_refused_not_retried(doc: dict[str, Any]) -> None:
    """An unreadable time, a draft that is no boolean, or a failure message: the same request
    brings the same answer, so it is refused (not retried; the id's window is read whole).
    They were retried 8 times with backoff: 436 requests, 217 s for 135 campaigns (BREAK19d
    finding 2). A torn answer, no JSON, is still retried."""
    with pytest.raises(DiscoveryError, match="/campaigns/details campaign_id=c-1") as caught:
        interpret_details(CAMPAIGNS, _ok(doc), "c-1", READ)
    assert not isinstance(caught.value, RetryableError)
    torn = Response(200, RateHeaders(), b'{"message": "succ')
    with pytest.raises(MalformedResponse):
        interpret_details(CAMPAIGNS, torn, "c-1", READ)


class Harness(MockedBraze):
    def details(self, item_id: str, status: int = 200, **doc: Any) -> None:
        url = f"{BASE}/campaigns/details?campaign_id={item_id}"
        self.mocked.get(url, status=status, payload={"message": "success", **doc})

    async def read(self, ids: list[str], concurrency: int = 4, **options: Any) -> DetailsRead:
        clock = self.clock
        return await read_details(
            self.client,
            CAMPAIGNS,
            ids,
            budget=self.budget(),
            retry=RetryPolicy(max_attempts=2),
            concurrency=concurrency,
            sleep=clock.sleep,
            clock=clock,
            rand=lambda: 0.5,
            **options,
        )


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with mocked_braze(Harness) as h:
        yield h


async def test_each_id_is_read_once_and_a_rejected_one_fails_alone(harness: Harness) -> None:
    """Two ids read, one rejected (400): that one lands in failed, the others in lives."""
    harness.details("c-1", first_sent="2023-05-01T00:00:00Z", last_sent=None, draft=False)
    harness.details("c-2", status=400, errors=["Invalid campaign_id"])
    harness.details("c-3", draft=True, first_sent=None)
    read = await harness.read(["c-1", "c-2", "c-3"])
    assert sorted(read.lives) == ["c-1", "c-3"]
    assert read.lives["c-3"].draft
    assert read.lives["c-1"].read_at == READ
    assert list(read.failed) == ["c-2"]
    assert (read.requests, read.denied) == (3, None)


async def test_a_403_stops_reading_details(harness: Harness) -> None:
    """The key lacks campaigns.details: no further id is asked, and the run is told why."""
    harness.details("c-1", status=403, message="no permission")
    read = await harness.read(["c-1", "c-2", "c-3"], concurrency=1)
    assert read.requests == 1
    assert read.lives == {}
    assert "campaigns.details" in (read.denied or "")


class _Refusing:
    """Every details request is refused (403), each answered only once all that will be
    sent together are in flight: a concurrent flight shows in ``asked``."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def get_details(self, source: DetailsSource, item_id: str) -> Response:
        self.asked.append(item_id)
        for _ in range(20):  # let every other worker reach its request first
            await asyncio.sleep(0)
        body = json.dumps({"message": "no permission"}).encode()
        return Response(403, RateHeaders(), body)


async def test_a_403_is_met_by_one_request_not_a_full_flight() -> None:
    """The first id is asked alone, the others only once it was not refused. Before, all 16
    of the concurrency were in flight when the first 403 came back (BREAK19 finding 7)."""
    clock = FakeClock(NOW)
    fetch = _Refusing()
    read = await read_details(
        fetch,
        CAMPAIGNS,
        [f"c-{n}" for n in range(40)],
        budget=Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep),
        retry=RetryPolicy(max_attempts=2),
        concurrency=16,
        sleep=clock.sleep,
        clock=clock,
    )
    assert fetch.asked == ["c-0"]
    assert read.requests == 1
    assert "campaigns.details" in (read.denied or "")


async def test_a_401_stops_the_run(harness: Harness) -> None:
    """An invalid key: AuthError, as for every other call."""
    harness.details("c-1", status=401, message="invalid key")
    with pytest.raises(ExceptionGroup) as caught:
        await harness.read(["c-1"])
    assert isinstance(caught.value.exceptions[0], AuthError)


async def test_a_retry_a_stop_cut_short_leaves_the_id_unread_not_failed(
    harness: Harness,
) -> None:
    """A 5xx, then the run stops before the retry: the id is neither read nor failed (the
    summary counts it as not read; it was said to have failed), and nothing more is asked."""
    harness.details("c-1", status=500)
    harness.details("c-2", status=500)
    read = await harness.read(["c-1", "c-2"], stopping=lambda: bool(harness.mocked.requests))
    assert (read.lives, read.failed, read.requests) == ({}, {}, 1)


async def test_each_life_is_handed_on_as_it_is_read(harness: Harness) -> None:
    """``on_read`` gets every life as its answer comes, and ``into`` holds the read: what a
    stopped or killed run keeps."""
    harness.details("c-1", first_sent="2023-05-01T00:00:00Z", last_sent="2023-05-02T00:00:00Z")
    harness.details("c-2", draft=True, first_sent=None)
    seen: dict[str, Life] = {}
    into = DetailsRead(CAMPAIGNS)
    read = await harness.read(["c-1", "c-2"], into=into, on_read=seen.__setitem__)
    assert read is into
    assert seen == into.lives
    assert set(seen) == {"c-1", "c-2"}


def _known(edited: str | None = "2023-04-01T00:00:00+00:00") -> Known:
    life = Life(False, datetime(2023, 5, 1, tzinfo=UTC), None, READ, conversion_s=60)
    return Known(life, None if edited is None else datetime.fromisoformat(edited))


def test_details_are_read_again_when_none_are_kept_or_the_campaign_was_edited() -> None:
    """No details kept, or the list's last_edited moved: read fresh ones."""
    known = _known()
    listed = known.listed
    assert wants_fresh(None, listed, stale_requests=1, least_requests=1) == "no details kept"
    moved = datetime(2023, 9, 1, tzinfo=UTC)
    assert wants_fresh(known, moved, stale_requests=1, least_requests=1) == (
        "edited since its details were read"
    )
    assert wants_fresh(known, listed, stale_requests=1, least_requests=1) is None


def test_details_are_read_again_when_that_saves_two_data_requests() -> None:
    """Kept details would leave 3 requests where fresh ones might leave 1: read them; 2
    against 1 is no saving (a details request costs one)."""
    known = _known()
    assert wants_fresh(known, known.listed, stale_requests=3, least_requests=1) is not None
    assert wants_fresh(known, known.listed, stale_requests=2, least_requests=1) is None


def test_details_kept_by_a_run_are_read_back_read_only(tmp_path: Path) -> None:
    """What a run keeps, the next run and plan (read-only) read back, stamped with the
    keeping run's as-of date; the latest read wins."""
    path = state_path(tmp_path, None)
    as_of = date(2024, 1, 10).toordinal()
    state = State(path, scope="s", as_of=as_of)
    older = Known(Life(True, None, None, datetime(2023, 1, 1, tzinfo=UTC)))
    state.keep_details("campaign_id", {"c-1": older, "c-2": _known(None)})
    state.keep_details("campaign_id", {"c-1": _known()})
    kept = {"c-1": replace(_known(), as_of=as_of), "c-2": replace(_known(None), as_of=as_of)}
    assert state.details("campaign_id") == kept
    assert state.details("canvas_id") == {}
    state.close()
    for scope, expected in (("s", kept), ("other", {})):
        records = Records([path], scope=scope, as_of=0)
        try:
            assert records.details("campaign_id") == expected
        finally:
            records.close()


async def test_the_sandbox_details_tell_drafts_and_lives() -> None:
    """Against the sandbox's catalogue: each campaign's first and last send and draft flag."""
    options = SandboxOptions(campaigns=20, canvases=0, clock=FakeClock(NOW))
    catalogue = messaging_catalogue(options)
    async with sandbox_client(options) as (client, clock):
        ids = [c.id for c in catalogue.campaigns]
        read = await read_details(
            client,
            CAMPAIGNS,
            ids,
            budget=MockedBraze.budget_on(clock),
            retry=RetryPolicy(max_attempts=2),
        )
    assert read.requests == 20
    for campaign in catalogue.campaigns:
        life = read.lives[campaign.id]
        assert (life.draft, life.first, life.last) == (
            campaign.draft,
            campaign.first,
            campaign.last,
        )
        assert life.conversion_s == 86_400 * campaign.conversion_events
