"""One Braze call and what each kind of response means."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

from exporter.client import BrazeClient, Response, interpret, make_session
from exporter.config import ApiKey
from exporter.errors import (
    AuthError,
    MalformedResponse,
    RateLimited,
    RetryableError,
    SeriesError,
    ServerError,
    TransportError,
)
from exporter.plan import Request, Series
from exporter.ratelimit import RateHeaders, parse_rate_headers
from tests.conftest import mocked_http

SERIES = Series("seg-a", "app-1", "day")
FIRST = date(2024, 4, 28).toordinal()
REQUEST = Request(SERIES, FIRST, 3, "2024-04-30T23:59:59+00:00")
URL = re.compile(r"^https://rest\.test/sessions/data_series\?.*$")


def _body(data: Any, message: str = "success") -> bytes:
    return json.dumps({"message": message, "data": data}).encode()


def _ok(*days: str) -> Response:
    return Response(200, RateHeaders(), _body([{"time": d, "sessions": 5} for d in days]))


def test_success_gives_points_in_time_order() -> None:
    """A 200 success body becomes points keyed by their period, time kept verbatim."""
    points = interpret(REQUEST, _ok("2024-04-30", "2024-04-28", "2024-04-29"))
    assert [p.time for p in points] == ["2024-04-28", "2024-04-29", "2024-04-30"]
    assert [p.period for p in points] == [FIRST, FIRST + 1, FIRST + 2]


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, SeriesError),
        (404, SeriesError),
        (401, AuthError),
        (403, AuthError),
        (429, RateLimited),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
    ],
)
def test_status_classification(status: int, error: type[Exception]) -> None:
    """Each documented status maps to its error class, with Braze's message kept."""
    body = json.dumps({"message": "Bad thing", "errors": ["detail one"]}).encode()
    with pytest.raises(error) as caught:
        interpret(REQUEST, Response(status, RateHeaders(), body))
    assert "Bad thing: detail one" in str(caught.value)
    assert SERIES.label in str(caught.value)


def test_retryable_and_final_classes() -> None:
    """429/5xx/malformed are retryable; 400/404/401/403 are not."""
    assert issubclass(RateLimited, RetryableError)
    assert issubclass(ServerError, RetryableError)
    assert issubclass(MalformedResponse, RetryableError)
    assert issubclass(TransportError, RetryableError)
    assert not issubclass(SeriesError, RetryableError)
    assert not issubclass(AuthError, RetryableError)


def test_auth_error_says_what_to_check() -> None:
    """401/403 name the key, the permission and the host."""
    with pytest.raises(AuthError, match=r"sessions\.data_series.*braze\.endpoint"):
        interpret(REQUEST, Response(401, RateHeaders(), b"{}"))


def test_429_carries_the_reset_time() -> None:
    """The reset epoch from X-RateLimit-Reset travels with the error."""
    rate = parse_rate_headers(CIMultiDict({"x-ratelimit-reset": "1700000000"}), now=0)
    with pytest.raises(RateLimited) as caught:
        interpret(REQUEST, Response(429, rate, b""))
    assert caught.value.reset_at == 1_700_000_000


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>oops", "not JSON"),
        (b'{"message": "success", "da', "not JSON"),
        (b'{"message": "success"}', "no data list"),
        (json.dumps({"message": "success", "data": {}}).encode(), "no data list"),
        (_body([{"time": "2024-04-28", "sessions": 1}], message="oops"), "not 'success'"),
        (_body([{"time": "2024-04-28", "sessions": -1}]), "non-negative integer"),
        (_body([{"time": "2024-04-28", "sessions": 1.5}]), "non-negative integer"),
        (_body([{"time": "2024-04-28", "sessions": "3"}]), "non-negative integer"),
        (_body([{"time": "2024-04-28", "sessions": True}]), "non-negative integer"),
        (_body([{"time": "yesterday", "sessions": 1}]), "is not a valid day label"),
        (_body([{"sessions": 1}]), "has no time"),
        (_body(["2024-04-28"]), "not an object"),
        (_body([{"time": "2024-04-28", "sessions": 1}] * 2), "appears twice"),
    ],
)
def test_malformed_success_bodies_are_never_data(body: bytes, why: str) -> None:
    """A 200 whose body is not a well-formed series is a retryable error."""
    with pytest.raises(MalformedResponse, match=why):
        interpret(REQUEST, Response(200, RateHeaders(), body))


DEEP = b"[" * 100_000 + b"]" * 100_000  # under 4 MiB, deeper than any parser recurses
UNPARSABLE = [DEEP, b'{"data": ' + DEEP + b"}", b"\xff\xfe{}", b'{"data": [\xff]}']


@pytest.mark.parametrize("body", UNPARSABLE)
def test_every_body_that_fails_to_parse_is_malformed(body: bytes) -> None:
    """Nested too deep, not UTF-8, torn: MalformedResponse (retried), never another exception."""
    with pytest.raises(MalformedResponse, match="not JSON"):
        interpret(REQUEST, Response(200, RateHeaders(), body))


@pytest.mark.parametrize("body", UNPARSABLE)
def test_an_unparsable_error_body_keeps_its_status(body: bytes) -> None:
    """A 503 whose body cannot be parsed is still a ServerError, with no message."""
    with pytest.raises(ServerError, match="server error"):
        interpret(REQUEST, Response(503, RateHeaders(), body))


def test_points_outside_the_request_are_data_not_errors() -> None:
    """Braze's window may sit elsewhere than asked: well-formed points all come back, sorted."""
    points = interpret(
        REQUEST,
        Response(
            200,
            RateHeaders(),
            _body(
                [
                    {"time": "2024-05-01", "sessions": 3},
                    {"time": "2024-04-27", "sessions": 1},
                ]
            ),
        ),
    )
    assert [p.time for p in points] == ["2024-04-27", "2024-05-01"]


@pytest.mark.parametrize("suffix", ["", "Z", "+00:00", ".000Z"])
def test_every_iso_spelling_of_an_hour_label_is_accepted(suffix: str) -> None:
    """Naive, Z and +00:00 hour labels name the same UTC hour; time stays Braze's string."""
    first = 474_000
    request = Request(Series("seg-a", None, "hour"), first, 2, "x")
    from datetime import UTC, datetime

    label = datetime.fromtimestamp(first * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S") + suffix
    points = interpret(
        request, Response(200, RateHeaders(), _body([{"time": label, "sessions": 1}]))
    )
    assert (points[0].period, points[0].time) == (first, label)


def test_an_hour_label_that_is_not_a_whole_hour_is_malformed() -> None:
    """10:30 is no hour period."""
    request = Request(Series("seg-a", None, "hour"), 474_000, 2, "x")
    body = _body([{"time": "2024-01-26T10:30:00", "sessions": 1}])
    with pytest.raises(MalformedResponse, match="is not a valid hour label"):
        interpret(request, Response(200, RateHeaders(), body))


async def test_get_sends_bearer_auth_and_query_params() -> None:
    """The key goes in the Authorization header, never in the URL."""
    async with aiohttp.ClientSession() as session:
        client = BrazeClient(session, "https://rest.test", ApiKey("k-secret"))
        with mocked_http() as mocked:
            mocked.get(
                URL,
                status=200,
                body=_body([]),
                headers={
                    "X-RateLimit-Limit": "250000",
                    "X-RateLimit-Remaining": "9",
                    "X-RateLimit-Reset": "1700000000",
                },
            )
            response = await client.get(REQUEST)
            ((_, url), calls) = next(iter(mocked.requests.items()))
        call = calls[0].kwargs
    assert call["headers"]["Authorization"] == "Bearer k-secret"
    assert call["params"] == {
        "length": "3",
        "unit": "day",
        "ending_at": "2024-04-30T23:59:59+00:00",
        "segment_id": "seg-a",
        "app_id": "app-1",
    }
    assert "k-secret" not in str(url)
    assert response.rate == RateHeaders(250_000, 9, 1_700_000_000.0, None)


async def test_timeouts_and_connection_errors_are_transport_errors() -> None:
    """No response at all becomes a retryable TransportError without URL or key."""
    async with aiohttp.ClientSession() as session:
        client = BrazeClient(session, "https://rest.test", ApiKey("k-secret"))
        with mocked_http() as mocked:
            mocked.get(URL, exception=TimeoutError())
            with pytest.raises(TransportError, match=r"no response from rest\.test:443 in time"):
                await client.get(REQUEST)
            mocked.get(URL, exception=aiohttp.ServerDisconnectedError())
            with pytest.raises(TransportError, match="connection closed") as caught:
                await client.get(REQUEST)
    assert caught.value.cause == "reset"
    assert not caught.value.connect_failed
    assert "k-secret" not in str(caught.value)
    assert "/sessions" not in str(caught.value)


async def test_a_refused_connection_names_host_and_cause(closed_port: int) -> None:
    """A real refused port: the message says which host and why, and it is connection-level."""
    port = closed_port
    async with aiohttp.ClientSession() as session:
        client = BrazeClient(session, f"http://127.0.0.1:{port}", ApiKey("k-secret"))
        with pytest.raises(TransportError) as caught:
            await client.get(REQUEST)
    assert caught.value.cause == "refused"
    assert caught.value.connect_failed
    assert str(caught.value).endswith(f"connection refused (127.0.0.1:{port})")


def _key() -> Any:
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey("rest.test", 443, True, True, None, None, None, None)


@pytest.mark.parametrize(
    ("error", "cause", "words"),
    [
        (
            lambda: aiohttp.ClientConnectorDNSError(_key(), OSError(-2, "Name unknown")),
            "dns",
            "host name not resolved",
        ),
        (
            lambda: aiohttp.ClientConnectorCertificateError(_key(), ValueError("self-signed")),
            "tls",
            "TLS handshake failed: certificate not trusted, or not this host's",
        ),
        (
            lambda: aiohttp.ClientConnectorError(_key(), ConnectionRefusedError(111, "refused")),
            "refused",
            "connection refused",
        ),
    ],
)
async def test_connection_failures_name_their_cause(
    error: Callable[[], Exception], cause: str, words: str
) -> None:
    """DNS, certificate and refused connections are connection-level, with the host named."""
    async with aiohttp.ClientSession() as session:
        client = BrazeClient(session, "https://rest.test", ApiKey("k-secret"))
        with mocked_http() as mocked:
            mocked.get(URL, exception=error())
            with pytest.raises(TransportError) as caught:
                await client.get(REQUEST)
    assert caught.value.cause == cause
    assert caught.value.connect_failed
    assert str(caught.value).endswith(f"{words} (rest.test:443)")


async def test_the_session_sends_no_cookies_back() -> None:
    """A cookie the server sets (a load balancer's, say) is not sent with the next request:
    Braze authenticates by header, and a cookie jar costs every request a look-up."""
    seen: list[str | None] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie"))
        response = web.Response(text="{}")
        response.set_cookie("sticky", "node-1")
        return response

    app = web.Application()
    app.router.add_get("/", handle)
    async with TestServer(app, host="127.0.0.1") as server, make_session(2) as session:
        for _ in range(2):
            # By name: aiohttp's jar keeps no cookies of a bare IP address anyway.
            async with session.get(f"http://localhost:{server.port}/") as resp:
                await resp.read()
    assert seen == [None, None]


async def _answered(request: Request, body: bytes) -> Response:
    """What BrazeClient.get reads of ``body`` served by a real loopback server."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", serve)
    async with TestServer(app, host="127.0.0.1") as server, make_session(2) as session:
        client = BrazeClient(session, str(server.make_url("")).rstrip("/"), ApiKey("k"))
        return await client.get(request)


CAMPAIGN = Request(
    Series.of("campaigns", "day", {"campaign_id": "c-1"}), FIRST, 1, "2024-04-28T23:59:59+00:00"
)


def _campaign_day(variations: int) -> bytes:
    """One campaign day of ``variations`` email variations (~60 bytes each)."""
    entries = ",".join(
        f'{{"variation_api_id": "v{i}", "variation_name": "V", "sent": {i}}}'
        for i in range(variations)
    )
    day = (
        f'{{"time": "{date.fromordinal(FIRST).isoformat()}", "messages": {{"email": [{entries}]}}}}'
    )
    return f'{{"message": "success", "data": [{day}]}}'.encode()


async def test_a_long_series_answer_over_4_mib_is_read_whole() -> None:
    """A campaign day of 80,000 variations (~5 MiB): every value read. It was cut at 4 MiB
    and failed as "body is not JSON" on every attempt (BREAK19c finding 5)."""
    body = _campaign_day(80_000)
    assert len(body) > 4 * 1024 * 1024
    points = interpret(CAMPAIGN, await _answered(CAMPAIGN, body))
    assert points[0].rows == 80_000


@pytest.mark.parametrize(
    ("request_", "limit"), [(REQUEST, "4 MiB"), (CAMPAIGN, "64 MiB")], ids=["sessions", "long"]
)
async def test_an_answer_over_its_limit_is_refused_as_too_large_not_retried(
    request_: Request, limit: str
) -> None:
    """Past the kind's limit the answer is not parsed: a SeriesError naming the size (not
    retried: the same request brings it again), never "body is not JSON"."""
    size = 65 * 1024 * 1024 if request_ is CAMPAIGN else 5 * 1024 * 1024
    body = b'{"message": "success", "data": [' + b" " * size + b"]}"
    response = await _answered(request_, body)
    with pytest.raises(SeriesError, match=f"larger than {limit}, the most a") as caught:
        interpret(request_, response)
    assert not isinstance(caught.value, RetryableError)
