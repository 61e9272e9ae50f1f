"""A campaign, Canvas or send answer as the client reads it: one point per day."""

from __future__ import annotations

import json

import pytest

from exporter.client import Response, read_answer
from exporter.errors import MalformedResponse
from exporter.plan import Request, Series
from exporter.ratelimit import RateHeaders

CAMPAIGN = Series.of("campaigns", "day", {"campaign_id": "c-1"})
CANVAS = Series.of("canvas", "day", {"canvas_id": "v-1"})


def _answer(doc: object) -> Response:
    return Response(200, RateHeaders(), json.dumps(doc).encode())


def test_a_day_is_a_point_of_all_its_values_and_odd_leaves_are_named() -> None:
    """Each day's values in one point (breakdowns, metric, value); a string where a number
    belongs is no row but comes back by its path; a day with no value is a point too."""
    doc = {
        "message": "success",
        "data": [
            {"time": "2024-01-02", "revenue": 2.5, "conversions": "n/a"},
            {
                "time": "2024-01-01",
                "unique_recipients": 3,
                "messages": {"email": [{"variation_name": "A", "sent": 4}]},
            },
            {"time": "2024-01-03"},
        ],
    }
    request = Request(CAMPAIGN, 738886, 3, "x")
    answer = read_answer(request, _answer(doc))
    assert [(p.time, p.period) for p in answer.points] == [
        ("2024-01-01", 738886),
        ("2024-01-02", 738887),
        ("2024-01-03", 738888),
    ]
    assert answer.points[0].value == (
        (None, None, None, None, "unique_recipients", 3.0),
        ("email", 0, None, "A", "sent", 4.0),
    )
    assert answer.points[1].value == ((None, None, None, None, "revenue", 2.5),)
    assert answer.points[2].value == ()
    assert [p.rows for p in answer.points] == [2, 1, 0]
    assert answer.not_numeric == ("data[0].conversions",)


@pytest.mark.parametrize(
    "doc",
    [
        {"message": "success", "data": {"stats": "none"}},
        {"message": "success", "data": {"stats": [{"time": "2024-01-01", "total_stats": 3}]}},
        {"message": "success", "data": {"stats": [{"time": "yesterday"}]}},
        {"message": "error", "data": {"stats": []}},
    ],
)
def test_a_canvas_answer_of_the_wrong_shape_is_malformed(doc: object) -> None:
    """No stats list, totals that are no object, a time that is no date, no success: the
    answer is MalformedResponse naming the series (retried, then the series fails)."""
    with pytest.raises(MalformedResponse) as caught:
        read_answer(Request(CANVAS, 738886, 1, "x"), _answer(doc))
    assert str(caught.value).startswith("canvas/day/canvas-v-1: HTTP 200: ")
