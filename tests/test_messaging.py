"""Campaign, Canvas and send answers flatten to long rows; nothing numeric is lost."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from exporter.errors import MalformedResponse
from exporter.messaging import BREAKDOWNS, MESSAGING, MessagingRow, flatten
from exporter.sandbox import SandboxOptions
from exporter.sandbox_messaging import campaign_day, canvas_day, messaging_catalogue, send_day

CAMPAIGNS, CANVAS, SENDS = MESSAGING["campaigns"], MESSAGING["canvas"], MESSAGING["sends"]
CID = {"campaign_id": "c-1"}

# Braze's "Export campaign analytics" page, multichannel response (placeholders as numbers).
CAMPAIGN_DOC: dict[str, Any] = {
    "message": "success",
    "data": [
        {
            "time": "2020-06-28",
            "conversions_by_send_time": 4,
            "conversions": 5,
            "conversions1": 2,
            "unique_recipients": 120,
            "revenue": 12.5,
            "messages": {
                "ios_push": [
                    {
                        "variation_api_id": "v-ios",
                        "sent": 100,
                        "direct_opens": 7,
                        "total_opens": 11,
                        "bounces": 1,
                        "body_clicks": 3,
                        "carousel_slide_1_Title_click": 2,
                    }
                ],
                "email": [
                    {"variation_api_id": "v-a", "sent": 50, "opens": 20, "unique_opens": 15},
                    {"variation_api_id": "v-b", "sent": 40, "opens": 10, "unique_opens": 8},
                ],
                "webhook": [{"variation_api_id": "v-hook", "sent": 9, "errors": 0}],
            },
        }
    ],
}

# The same page's multivariate response: entries named, not id'd.
MULTIVARIATE_DOC: dict[str, Any] = {
    "message": "success",
    "data": [
        {
            "time": "2020-06-28",
            "conversions": 3,
            "revenue": 1.25,
            "conversions_by_send_time": 2,
            "unique_recipients": 30,
            "messages": {
                "trigger_in_app_message": [
                    {"variation_name": "A", "impressions": 10, "clicks": 2, "revenue": 0.5},
                    {"variation_name": "B", "impressions": 12, "clicks": 3, "revenue": 0.75},
                    {"variation_name": "Control", "unique_recipients": 8, "enrolled": 8},
                ]
            },
        }
    ],
}

# Braze's "Export Canvas data series analytics" page.
CANVAS_DOC: dict[str, Any] = {
    "data": {
        "name": "Onboarding",
        "stats": [
            {
                "time": "2018-05-29",
                "total_stats": {
                    "revenue": 2.5,
                    "conversions": 3,
                    "conversions_by_entry_time": 2,
                    "entries": 40,
                },
                "variant_stats": {
                    "var-1": {
                        "name": "Variant 1",
                        "revenue": 2.5,
                        "conversions": 3,
                        "conversions_by_entry_time": 2,
                        "entries": 40,
                    }
                },
                "step_stats": {
                    "step-1": {
                        "name": "Welcome",
                        "revenue": 1.5,
                        "conversions": 1,
                        "conversions_by_entry_time": 1,
                        "messages": {
                            "email": [{"sent": 30, "opens": 12, "unique_opens": 9, "clicks": 4}],
                            "sms": [{"sent": 5, "sent_to_carrier": 5, "delivered": 4, "help": 0}],
                        },
                    }
                },
            }
        ],
    },
    "message": "success",
}

# Braze's "Export send analytics" page.
SEND_DOC: dict[str, Any] = {
    "message": "success",
    "data": [
        {
            "time": "2014-12-10",
            "messages": {
                "ios_push": [
                    {
                        "variation_name": "iOS_Push",
                        "sent": 10,
                        "delivered": 9,
                        "undelivered": 1,
                        "direct_opens": 2,
                        "revenue": 3.0,
                        "conversions": 1,
                    }
                ]
            },
            "conversions": 1,
            "unique_recipients": 10,
            "revenue": 3.0,
        }
    ],
}


def _numbers(value: object) -> int:
    """How many numeric leaves (not booleans) a JSON value holds."""
    if isinstance(value, dict):
        return sum(_numbers(v) for v in value.values())
    if isinstance(value, list):
        return sum(_numbers(v) for v in value)
    return int(isinstance(value, int | float) and not isinstance(value, bool))


def _by_metric(rows: tuple[MessagingRow, ...], **where: object) -> dict[str, float]:
    return {
        r.metric: r.value
        for r in rows
        if all(getattr(r, key) == value for key, value in where.items())
    }


def _breakdowns(row: MessagingRow) -> dict[str, object]:
    return {b: getattr(row, b) for b in BREAKDOWNS if getattr(row, b) is not None}


def test_campaign_totals_have_every_breakdown_null() -> None:
    """A campaign day's top-level keys are rows with no channel, variation or step."""
    rows = flatten(CAMPAIGNS, CAMPAIGN_DOC, CID).rows
    totals = [r for r in rows if r.channel is None]
    assert {r.metric: r.value for r in totals} == {
        "conversions_by_send_time": 4.0,
        "conversions": 5.0,
        "conversions1": 2.0,
        "unique_recipients": 120.0,
        "revenue": 12.5,
    }
    assert all(_breakdowns(r) == {} for r in totals)
    assert {(r.time, r.campaign_id, r.canvas_id, r.send_id) for r in rows} == {
        ("2020-06-28", "c-1", None, None)
    }


def test_campaign_entries_carry_channel_position_and_variation() -> None:
    """Each channel entry's metrics carry its channel, its index in the list and its
    variation id; the variation id is never a metric."""
    rows = flatten(CAMPAIGNS, CAMPAIGN_DOC, CID).rows
    second = [r for r in rows if r.channel == "email" and r.message_index == 1]
    assert {r.metric: r.value for r in second} == {"sent": 40, "opens": 10, "unique_opens": 8}
    assert {tuple(_breakdowns(r).items()) for r in second} == {
        (("channel", "email"), ("message_index", 1), ("variation_api_id", "v-b"))
    }
    assert not {"variation_api_id", "variation_name", "time"} & {r.metric for r in rows}


def test_open_ended_keys_are_kept_as_braze_spells_them() -> None:
    """carousel_slide_[NUM]_[TITLE]_click and its kind are rows under their own key."""
    rows = flatten(CAMPAIGNS, CAMPAIGN_DOC, CID).rows
    assert _by_metric(rows, channel="ios_push")["carousel_slide_1_Title_click"] == 2.0


def test_every_value_is_a_float() -> None:
    """Counts and revenue alike come out as floats."""
    for series, doc, ids in _documented():
        rows = flatten(series, doc, ids).rows
        assert rows
        assert all(type(r.value) is float for r in rows)


def _documented() -> list[tuple[Any, dict[str, Any], dict[str, str]]]:
    return [
        (CAMPAIGNS, CAMPAIGN_DOC, CID),
        (CAMPAIGNS, MULTIVARIATE_DOC, CID),
        (SENDS, SEND_DOC, {"campaign_id": "c-1", "send_id": "s-1"}),
        (CANVAS, CANVAS_DOC, {"canvas_id": "cv-1"}),
    ]


@pytest.mark.parametrize("case", range(4), ids=["campaign", "multivariate", "send", "canvas"])
def test_every_numeric_leaf_of_a_documented_answer_is_one_row(case: int) -> None:
    """Each number in Braze's documented examples becomes exactly one row, nothing skipped."""
    series, doc, ids = _documented()[case]
    flat = flatten(series, doc, ids)
    assert len(flat.rows) == _numbers(doc)
    assert flat.skipped == ()


def test_multivariate_entries_are_told_apart_by_name_and_position() -> None:
    """Entries with only a variation_name keep it as an attribute; extra keys (enrolled) stay."""
    rows = flatten(CAMPAIGNS, MULTIVARIATE_DOC, CID).rows
    control = _by_metric(rows, variation_name="Control")
    assert control == {"unique_recipients": 8.0, "enrolled": 8.0}
    assert {r.message_index for r in rows if r.variation_name == "Control"} == {2}
    assert _by_metric(rows, variation_name="B", channel="trigger_in_app_message")["revenue"] == 0.75


def test_a_name_that_is_a_number_is_kept_as_text_and_fails_nothing() -> None:
    """A variation_name sent as a number is plausible: kept as its JSON text, every metric
    of the day kept (it once failed the whole series)."""
    doc = copy.deepcopy(MULTIVARIATE_DOC)
    entries = next(iter(doc["data"][0]["messages"].values()))
    entries[0]["variation_name"] = 3
    rows = flatten(CAMPAIGNS, doc, CID).rows
    assert len(rows) == len(flatten(CAMPAIGNS, MULTIVARIATE_DOC, CID).rows)
    assert "3" in {r.variation_name for r in rows}


def test_send_rows_carry_both_ids() -> None:
    """A send's rows carry campaign_id and send_id under Braze's parameter names."""
    rows = flatten(SENDS, SEND_DOC, {"campaign_id": "c-1", "send_id": "s-1"}).rows
    assert {(r.campaign_id, r.send_id) for r in rows} == {("c-1", "s-1")}
    assert _by_metric(rows, variation_name="iOS_Push")["undelivered"] == 1.0


def test_canvas_rows_by_total_variant_step_and_step_message() -> None:
    """Canvas total_stats rows have no breakdown; variants and steps carry their id and name;
    a step's messages add channel and position; names are never metrics."""
    rows = flatten(CANVAS, CANVAS_DOC, {"canvas_id": "cv-1"}).rows
    totals = [r for r in rows if not _breakdowns(r)]
    assert {r.metric: r.value for r in totals} == {
        "revenue": 2.5,
        "conversions": 3.0,
        "conversions_by_entry_time": 2.0,
        "entries": 40.0,
    }
    variant = _by_metric(rows, variant_api_id="var-1", variant_name="Variant 1")
    assert variant["entries"] == 40.0
    step = _by_metric(rows, step_api_id="step-1", step_name="Welcome", channel=None)
    assert step == {"revenue": 1.5, "conversions": 1.0, "conversions_by_entry_time": 1.0}
    sms = [r for r in rows if r.channel == "sms"]
    assert {(r.step_api_id, r.step_name, r.message_index) for r in sms} == {
        ("step-1", "Welcome", 0)
    }
    assert "name" not in {r.metric for r in rows}
    assert {r.canvas_id for r in rows} == {"cv-1"}


def test_canvas_without_breakdowns_has_totals_only() -> None:
    """variant_stats and step_stats are optional (absent or null)."""
    doc = copy.deepcopy(CANVAS_DOC)
    stats = doc["data"]["stats"][0]
    del stats["variant_stats"]
    stats["step_stats"] = None
    rows = flatten(CANVAS, doc, {"canvas_id": "cv-1"}).rows
    assert len(rows) == 4
    assert all(not _breakdowns(r) for r in rows)


def test_non_numeric_leaves_are_reported_not_dropped_silently() -> None:
    """Strings, booleans and nulls where numbers belong come back as skipped key paths."""
    doc = copy.deepcopy(CAMPAIGN_DOC)
    day = doc["data"][0]
    day["revenue"] = None
    day["note"] = "late data"
    day["messages"]["email"][1]["flagged"] = True
    flat = flatten(CAMPAIGNS, doc, CID)
    assert flat.skipped == (
        "data[0].revenue",
        "data[0].messages.email[1].flagged",
        "data[0].note",
    )
    assert len(flat.rows) == _numbers(CAMPAIGN_DOC) - 1


def test_nested_unknown_structure_becomes_dotted_metrics() -> None:
    """An object or list where a number was expected is walked: metric a.b, a.0."""
    doc = copy.deepcopy(CANVAS_DOC)
    doc["data"]["stats"][0]["total_stats"]["by_hour"] = {"am": 3, "pm": [1, "x"]}
    flat = flatten(CANVAS, doc, {"canvas_id": "cv-1"})
    totals = _by_metric(flat.rows, variant_api_id=None, step_api_id=None)
    assert totals["by_hour.am"] == 3.0
    assert totals["by_hour.pm.0"] == 1.0
    assert flat.skipped == ("data.stats[0].total_stats.by_hour.pm[1]",)


def test_non_finite_and_huge_numbers_are_skipped() -> None:
    """NaN, infinity and an integer beyond any float are reported, not written."""
    doc = copy.deepcopy(SEND_DOC)
    doc["data"][0].update(a=float("nan"), b=float("inf"), c=10**400)
    flat = flatten(SENDS, doc, {"campaign_id": "c", "send_id": "s"})
    assert flat.skipped == ("data[0].a", "data[0].b", "data[0].c")


def _break(doc: dict[str, Any], path: str, value: object) -> dict[str, Any]:
    """A copy of ``doc`` with the value at the dotted ``path`` replaced (or deleted: ...)."""
    broken = copy.deepcopy(doc)
    *parents, last = path.split(".")
    node: Any = broken
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return broken


MALFORMED = [
    (CAMPAIGN_DOC, "message", "error", "message is not 'success'"),
    (CAMPAIGN_DOC, "data", ..., "no data list"),
    (CAMPAIGN_DOC, "data", {"time": "2020-06-28"}, "no data list"),
    (CAMPAIGN_DOC, "data.0", [1], r"data\[0\] is not an object"),
    (CAMPAIGN_DOC, "data.0.time", ..., "is not an ISO 8601 date"),
    (CAMPAIGN_DOC, "data.0.time", "yesterday", "'yesterday' is not an ISO 8601 date"),
    (CAMPAIGN_DOC, "data.0.time", 20200628, "is not an ISO 8601 date"),
    (CAMPAIGN_DOC, "data.0.messages", [], r"data\[0\].messages is not an object"),
    (CAMPAIGN_DOC, "data.0.messages.email", {"sent": 1}, "messages.email is not a list"),
    (CAMPAIGN_DOC, "data.0.messages.email.0", 5, r"email\[0\] is not an object"),
    (CAMPAIGN_DOC, "data.0.messages.email.0.variation_api_id", ["7"], "is not a string"),
    (MULTIVARIATE_DOC, "data.0.messages.trigger_in_app_message.1.variation_name", [], "string"),
    (CANVAS_DOC, "data", [], "data is not an object"),
    (CANVAS_DOC, "data.stats", ..., "no stats list"),
    (CANVAS_DOC, "data.stats.0.total_stats", 3, "total_stats is not an object"),
    (CANVAS_DOC, "data.stats.0.variant_stats", [], "variant_stats is not an object"),
    (CANVAS_DOC, "data.stats.0.step_stats.step-1", 1, "step_stats.step-1 is not an object"),
    (CANVAS_DOC, "data.stats.0.step_stats.step-1.name", {"n": 1}, "name is not a string"),
    (CANVAS_DOC, "data.stats.0.step_stats.step-1.messages.sms", {}, "sms is not a list"),
]


@pytest.mark.parametrize(("doc", "path", "value", "why"), MALFORMED)
def test_a_malformed_body_raises_with_a_clear_message(
    doc: dict[str, Any], path: str, value: object, why: str
) -> None:
    """A body whose documented structure is wrong is MalformedResponse saying where."""
    series = CANVAS if doc is CANVAS_DOC else CAMPAIGNS
    ids = {"canvas_id": "cv"} if doc is CANVAS_DOC else CID
    with pytest.raises(MalformedResponse, match=why) as exc:
        flatten(series, _break(doc, path, value), ids, label="campaign c-1")
    assert str(exc.value).startswith("campaign c-1: HTTP 200: ")


@pytest.mark.parametrize("body", [None, [], "success", 3])
def test_a_body_that_is_not_an_object_is_malformed(body: object) -> None:
    """A JSON body that is not an object is MalformedResponse."""
    with pytest.raises(MalformedResponse, match="not a JSON object"):
        flatten(CAMPAIGNS, body, CID)


def test_a_day_twice_is_malformed() -> None:
    """Two items with one time would write two values for one row: refused."""
    doc = copy.deepcopy(CAMPAIGN_DOC)
    doc["data"].append(copy.deepcopy(doc["data"][0]))
    with pytest.raises(MalformedResponse, match="'2020-06-28' appears twice"):
        flatten(CAMPAIGNS, doc, CID)


def test_keys_beside_the_canvas_days_are_reported() -> None:
    """A Canvas data key other than name and stats belongs to no day: reported, not a row."""
    doc = _break(CANVAS_DOC, "data.total", 7)
    assert flatten(CANVAS, doc, {"canvas_id": "cv"}).skipped == ("data.total",)


def test_ids_must_be_the_series_parameters() -> None:
    """flatten needs exactly the series' id parameters (a caller's mistake, not Braze's)."""
    with pytest.raises(ValueError, match="needs ids campaign_id, send_id"):
        flatten(SENDS, SEND_DOC, CID)


def test_columns_follow_the_series_description() -> None:
    """A series' long-format columns: time, its ids, its breakdowns, metric, value."""
    assert CAMPAIGNS.columns == (
        "time",
        "campaign_id",
        "channel",
        "message_index",
        "variation_api_id",
        "variation_name",
        "metric",
        "value",
    )
    assert SENDS.columns[:3] == ("time", "campaign_id", "send_id")
    assert CANVAS.columns[:2] == ("time", "canvas_id")
    assert (CANVAS.max_length, SENDS.retention_days) == (14, 14)


OPTIONS = SandboxOptions(campaigns=30, canvases=12, clock=lambda: 1_704_888_000.0)


def _sandbox_answers() -> list[tuple[Any, dict[str, Any], dict[str, str]]]:
    """One sandbox answer per series, built by the functions the sandbox serves them with."""
    cat = messaging_catalogue(OPTIONS)
    campaign = next(c for c in cat.campaigns if c.sends and len(c.channels) == 2)
    send = campaign.sends[-1]
    days = [campaign.first.date().isoformat()] if campaign.first else []
    canvas = next(c for c in cat.canvases if any(s.deleted for s in c.steps) and c.first)
    on = canvas.first.isoformat()[:10] if canvas.first else ""
    return [
        (
            CAMPAIGNS,
            {"message": "success", "data": [campaign_day(campaign, d) for d in days]},
            {"campaign_id": campaign.id},
        ),
        (
            SENDS,
            {"message": "success", "data": [send_day(campaign, send, send.day.isoformat())]},
            {"campaign_id": campaign.id, "send_id": send.id},
        ),
        (
            CANVAS,
            {
                "message": "success",
                "data": {"name": canvas.name, "stats": [canvas_day(canvas, on, True, True, True)]},
            },
            {"canvas_id": canvas.id},
        ),
    ]


@pytest.mark.parametrize("case", range(3), ids=["campaign", "send", "canvas"])
def test_every_numeric_leaf_of_a_sandbox_answer_is_one_row(case: int) -> None:
    """The sandbox's answers flatten with one row per number and nothing skipped."""
    series, doc, ids = _sandbox_answers()[case]
    flat = flatten(series, doc, ids)
    assert len(flat.rows) == _numbers(doc) > 20
    assert flat.skipped == ()
    assert any(r.value > 0 for r in flat.rows)


def test_numbers_no_count_can_be_are_written_and_named() -> None:
    """Negative, or at or beyond 2^53 (float64 holds it approximately): written as sent and
    named by path, for the run to warn of (they came without a word: BREAK19c finding 9).
    A fraction (revenue) or a count below 2^53 is no doubt."""
    day = {"time": "2024-06-01", "a": -5, "b": 2**53 + 1, "c": 0.5, "d": 2**53 - 1, "e": 7}
    flat = flatten(CAMPAIGNS, {"message": "success", "data": [day]}, CID)
    assert flat.doubtful == ("data[0].a", "data[0].b")
    assert [row.value for row in flat.rows] == [-5.0, float(2**53), 0.5, float(2**53 - 1), 7.0]
