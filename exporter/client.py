"""One Braze call, and the one place that decides what its response means."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from yarl import URL

from exporter.config import ApiKey
from exporter.errors import (
    ApiError,
    AuthError,
    MalformedResponse,
    RateLimited,
    SeriesError,
    ServerError,
    TransportError,
    Unreachable,
)
from exporter.formats import DayRows, LongRow
from exporter.messaging import flatten
from exporter.plan import Request, Series, period_of
from exporter.ratelimit import RateHeaders, parse_rate_headers
from exporter.series import ANSWER_BYTES, ListSource

if TYPE_CHECKING:  # details.py reads answers with this module's helpers
    from exporter.details import DetailsSource

__all__ = [
    "PATH",
    "SANDBOX_HEADER",
    "Answer",
    "BrazeClient",
    "Point",
    "Response",
    "cannot_reach",
    "interpret",
    "make_session",
    "parse_body",
    "raise_for_status",
    "read_answer",
]

_T = TypeVar("_T")

PATH = "/sessions/data_series"  # the first series; each Request names its own path
_MAX_VALUE = 2**63 - 1  # int64, as Parquet and query engines store counts; no real count nears it
# Sent by braze-export's own sandbox on every response (never by Braze): a run against a
# standalone sandbox (`braze-export sandbox` named by braze.endpoint) records its rows as the
# sandbox's invented data, whatever the endpoint looks like.
SANDBOX_HEADER = "X-Braze-Export-Sandbox"


@dataclass(frozen=True, slots=True)
class Point:
    time: str  # exactly as Braze sent it
    # Under the series' value key (``sessions``, ``count``, ``revenue``...); for a long series
    # (campaigns, canvas, sends) every value of the day, ``(breakdowns..., metric, value)``.
    value: int | float | DayRows
    period: int

    @property
    def rows(self) -> int:
        """The file rows the point makes: one, or one per value of a long series' day."""
        return len(self.value) if isinstance(self.value, tuple) else 1


@dataclass(frozen=True, slots=True)
class Answer:
    """A good response's points, and the key paths of what it held where a number belongs
    but that is no number (a long series' strings, nulls...: never written, so counted)."""

    points: list[Point]
    not_numeric: tuple[str, ...] = ()
    replaced: int = 0  # lone surrogates in names and keys, written as U+FFFD (exporter.text)
    withheld: tuple[str, ...] = ()  # days whose values were all no number: left missing
    doubtful: tuple[str, ...] = ()  # paths of numbers no count can be (negative, >= 2^53)


@dataclass(frozen=True)
class Response:
    status: int
    rate: RateHeaders
    body: bytes
    redirect: str | None = None  # a 3xx's Location as scheme://host[:port] only, if usable
    cut_at: int | None = None  # the limit in bytes the body was cut at (None: read whole)


def make_session(concurrency: int) -> aiohttp.ClientSession:
    """The run's one session: a connection per worker at most, and no hidden retries."""
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency)
    # Braze authenticates by header; a cookie jar would only cost a look-up per request.
    session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
    # aiohttp silently resends an idempotent request once when a kept-alive connection turns
    # out closed. That attempt would bypass the budget's token and our retry log, so turn it
    # off: the retry policy handles the TransportError. (No public switch as of aiohttp 3.14.)
    if hasattr(session, "_retry_connection"):
        session._retry_connection = False
    return session


class BrazeClient:
    """GETs one request. The session is injected: one per run, shared by every worker.
    ``sandbox`` turns True once an answer carries :data:`SANDBOX_HEADER`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        endpoint: str,
        api_key: ApiKey,
        *,
        timeout_s: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._base = endpoint.rstrip("/")
        self._headers = {
            "Authorization": f"Bearer {api_key.reveal()}",
            "Accept": "application/json",
        }
        # No sock_read: it could never fire before ``total`` (it restarts at each read),
        # and it costs a timer reset per read.
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(10.0, timeout_s))
        self._clock = clock
        self.sandbox = False  # whether any answer came from braze-export's sandbox

    @property
    def secure(self) -> bool:
        """Whether the endpoint is https (DNS, TCP and TLS all checked by an answer)."""
        return URL(self._base).scheme == "https"

    @property
    def host(self) -> str:
        """``host:port`` of the endpoint, for messages (never the path or query)."""
        url = URL(self._base)
        return f"{url.host}:{url.port}"

    async def get(self, request: Request, ending_at: str | None = None) -> Response:
        """Send it (with ``ending_at`` instead of the request's own when given, as calibration
        shifts it); any failure to get a whole response becomes a TransportError."""
        info = request.series.info
        return await self._send(
            self._base + info.path,
            request.params(ending_at),
            series=request.series,
            limit=info.max_answer_bytes,
        )

    async def get_list(self, source: ListSource, page: int) -> Response:
        """GET one page (from 0) of a list endpoint (``/segments/list?page=N``, ...) with the
        source's ``query``; errors as :meth:`get`, labelled ``<path> page <N>``."""
        label = f"{source.path} page {page}"
        params = {"page": str(page), **dict(source.query)}
        return await self._send(self._base + source.path, params, label=label)

    async def get_details(self, source: DetailsSource, item_id: str) -> Response:
        """GET one campaign's or Canvas' details (``/campaigns/details?campaign_id=...``);
        errors as :meth:`get`, labelled ``<path> <param>=<id>``."""
        label = f"{source.path} {source.param}={item_id}"
        return await self._send(self._base + source.path, {source.param: item_id}, label=label)

    async def _send(
        self,
        url: str,
        params: dict[str, str],
        *,
        series: Series | None = None,
        label: str | None = None,
        limit: int = ANSWER_BYTES,
    ) -> Response:
        try:
            # Never follow a redirect: it would resend the key to wherever it points.
            async with self._session.get(
                url,
                params=params,
                headers=self._headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                body, cut = await _read_body(resp, limit)
                if SANDBOX_HEADER in resp.headers:
                    self.sandbox = True
                rate = parse_rate_headers(resp.headers, self._clock())
                return Response(
                    resp.status, rate, body, _redirect_origin(resp), limit if cut else None
                )
        except TimeoutError:
            raise TransportError(
                f"no response from {self.host} in time",
                series=series,
                cause="timeout",
                label=label,
            ) from None
        except aiohttp.ClientError as exc:
            cause, text = _transport_cause(exc)
            # Never the exception's own text: it could hold the query. Host and cause only.
            raise TransportError(
                f"{text} ({self.host})", series=series, cause=cause, detail=text, label=label
            ) from None


def _redirect_origin(resp: aiohttp.ClientResponse) -> str | None:
    """Where a 3xx points, as ``scheme://host[:port]`` (a relative Location is this host):
    never its path, query or user, which may hold anything, the key included."""
    location = resp.headers.get("Location")
    if not 300 <= resp.status < 400 or not location:
        return None
    try:
        target = resp.url.join(URL(location))
        return str(target.origin()) if target.host else None
    except ValueError:
        return None


async def _read_body(resp: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """The whole body, however many pieces it arrives in, and whether it was cut: reading
    stops past ``limit`` bytes (then the answer is refused as too large, never parsed)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks), True
    return b"".join(chunks), False


def _transport_cause(exc: aiohttp.ClientError) -> tuple[str, str]:
    """(cause, words) for a failed exchange: what a user can check."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls", "TLS handshake failed: certificate not trusted, or not this host's"
    if isinstance(exc, aiohttp.ClientSSLError):
        return "tls", "TLS handshake failed (is this port serving https?)"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", "host name not resolved"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(os_error, socket.gaierror):
            return "dns", "host name not resolved"
        if isinstance(os_error, ssl.SSLError):
            return "tls", "TLS handshake failed"
        return "refused", f"cannot connect ({os_error.strerror or type(os_error).__name__})"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "reset", "connection closed before a whole response"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "reset", "response body cut short"
    return "other", f"request failed ({type(exc).__name__})"


def interpret(request: Request, response: Response, tz: tzinfo = UTC) -> list[Point]:
    """The well-formed points of a good response, sorted by period, whatever periods they
    are: which of them the run wants is coverage's business, not a reason to retry (Braze
    does not document which periods a request covers). Otherwise the classified ApiError.
    ``tz`` is the config's zone, for day labels that carry an offset."""
    return read_answer(request, response, tz).points


def read_answer(request: Request, response: Response, tz: tzinfo = UTC) -> Answer:
    """:func:`interpret`, with what a long series' answer held that is no number."""
    if response.status == 200:
        raise_if_cut(response, series=request.series)
        if request.series.info.long:
            return parse_body(
                response.body,
                lambda doc: _long_answer(request, doc, tz),
                series=request.series,
            )
        return Answer(_points(request, response.body, tz))
    series = request.series
    keep = series.info.retention_days
    try:
        raise_for_status(response, permission=series.info.permission, series=series)
    except SeriesError as exc:
        if exc.status != 400 or keep is None:
            raise
        # A send Braze no longer keeps cannot be told from one never made: say both.
        raise SeriesError(
            f"{exc.message} (an unknown id, or a send older than the {keep} days Braze keeps "
            f"{series.kind} analytics after the send)",
            series=series,
            status=400,
        ) from None
    raise AssertionError("unreachable: raise_for_status raised")  # pragma: no cover


def cannot_reach(host: str, exc: TransportError) -> Unreachable:
    """The fail-fast error for a host no connection reaches (a run's, discovery's, init's)."""
    return Unreachable(
        f"cannot reach {host}: {exc.detail}. Check braze.endpoint (or "
        f"$BRAZE_REST_ENDPOINT) is your instance's REST host (see README, Hosts), "
        f"and that this machine can reach it (proxy, firewall, DNS, CA bundle)"
    )


def raise_for_status(
    response: Response,
    *,
    permission: str,
    series: Series | None = None,
    label: str | None = None,
    rejected: type[ApiError] = SeriesError,
) -> None:
    """The classified error of a response that is not a 200, for a series or (``label``) a
    list page: 429 RateLimited (``reset_at`` raw from Retry-After or Reset: the caller's
    budget judges it), 401/403 AuthError naming ``permission``, 5xx and 408 ServerError,
    3xx Unreachable (a redirect is never followed: the run stops, exit 4), anything else
    ``rejected`` (not retried); a 200 cut at its size limit, ``rejected`` too."""
    status = response.status
    if status == 200:
        raise_if_cut(response, series=series, label=label, rejected=rejected)
        return
    if 300 <= status < 400:
        where = response.redirect or "a Location that is no URL"
        hint = (
            f"set braze.endpoint to {response.redirect} if that is your instance's REST host"
            if response.redirect
            else "set braze.endpoint to your instance's REST host (see README, Hosts)"
        )
        raise Unreachable(
            f"the endpoint answered HTTP {status}, a redirect to {where}; redirects are not "
            f"followed (they would send the key elsewhere): {hint}"
        )
    message = _braze_message(response.body)
    if status == 429:
        reset = response.rate.retry_after_at or response.rate.reset_at
        raise RateLimited(
            message or "rate limit reached", series=series, reset_at=reset, label=label
        )
    if status in (401, 403):
        hint = (
            f"check the REST API key, its permission {permission} and that "
            "braze.endpoint is your instance's REST host"
        )
        raise AuthError(
            f"{message or 'refused'}; {hint}", series=series, status=status, label=label
        )
    if status >= 500 or status == 408:
        raise ServerError(message or "server error", series=series, status=status, label=label)
    words = "rejected" if status in (400, 404) else "unexpected status"
    raise rejected(message or words, series=series, status=status, label=label)


def raise_if_cut(
    response: Response,
    *,
    series: Series | None = None,
    label: str | None = None,
    rejected: type[ApiError] = SeriesError,
) -> None:
    """``rejected`` (not retried: the same request brings the same answer, fetched again
    for nothing) when the body was cut at its limit (:attr:`SeriesKind.max_answer_bytes`);
    it was never parsed, so it is never taken for "not JSON"."""
    if response.cut_at is None:
        return
    what = series.kind if series is not None else "list or details"
    raise rejected(
        f"the answer is larger than {response.cut_at / 1024 / 1024:g} MiB, the most a {what} "
        "answer is read at: not read",
        series=series,
        status=200,
        label=label,
    )


def parse_body(
    body: bytes,
    read: Callable[[Any], _T],
    *,
    series: Series | None = None,
    label: str | None = None,
) -> _T:
    """``read`` applied to the JSON document of a 200 body; any way that fails becomes
    MalformedResponse (retried, then the series or page fails): not JSON or not UTF-8
    (ValueError), nested too deep for the parser (RecursionError: a body of 100,000 ``[``
    fits under the 4 MiB limit), too big to hold (MemoryError), or anything else ``read`` raises
    on a shape the checks did not foresee. Never a traceback from a server's bytes."""
    try:
        return read(json.loads(body))
    except ApiError:  # ``read``'s own verdict (malformed, or rejected: not retried)
        raise
    except (ValueError, RecursionError, MemoryError):
        raise MalformedResponse(
            "body is not JSON", series=series, status=200, label=label
        ) from None
    except Exception as exc:  # a last resort: a body is the server's, never our crash
        raise MalformedResponse(
            f"body not understood ({type(exc).__name__})", series=series, status=200, label=label
        ) from None


def _points(request: Request, body: bytes, tz: tzinfo) -> list[Point]:
    return parse_body(body, lambda doc: _points_of(request, doc, tz), series=request.series)


def _points_of(request: Request, doc: Any, tz: tzinfo) -> list[Point]:
    series = request.series
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise MalformedResponse("body has no data list", series=series, status=200)
    if doc.get("message") != "success":
        raise MalformedResponse("message is not 'success'", series=series, status=200)
    points: dict[int, Point] = {}
    for item in doc["data"]:
        point = _point(request, item, tz)
        if point.period in points:
            raise MalformedResponse(f"time {point.time!r} appears twice", series=series, status=200)
        points[point.period] = point
    return [points[p] for p in sorted(points)]


def _point(request: Request, item: Any, tz: tzinfo) -> Point:
    series = request.series
    kind = series.info
    if not isinstance(item, dict):
        raise MalformedResponse("a data item is not an object", series=series, status=200)
    label, value = item.get("time"), item.get(kind.value_key)
    if not isinstance(label, str):
        raise MalformedResponse("a data item has no time", series=series, status=200)
    if type(value) is float and value.is_integer() and not kind.fractional:
        value = int(value)  # 40463.0 is a whole count some JSON encoders write so
    if kind.fractional and type(value) is int and value <= _MAX_VALUE:
        value = float(value)  # one type per column: revenue 12 is 12.0
    if type(value) is float:
        value += 0.0  # -0.0 is 0.0
    wanted = float if kind.fractional else int
    if type(value) is not wanted or not 0 <= value <= _MAX_VALUE:
        what = "number" if kind.fractional else "integer"
        raise MalformedResponse(
            f"{kind.value_key} at {label!r} is not a non-negative {what} up to 2^63-1",
            series=series,
            status=200,
        )
    return Point(label, value, _period(series, label, tz))


def _period(series: Series, label: str, tz: tzinfo) -> int:
    try:
        return period_of(series.unit, label, tz)
    except ValueError:
        raise MalformedResponse(
            f"time {label!r} is not a valid {series.unit} label", series=series, status=200
        ) from None


def _long_answer(request: Request, doc: Any, tz: tzinfo) -> Answer:
    """A campaign, Canvas or send answer as one point per day holding all its values
    (:func:`exporter.messaging.flatten`), in period order; a day with no value is a point
    too (it replaces what the day held before)."""
    series = request.series
    kind = series.info
    ids = {param: value or "" for param, value in series.dimensions()}
    flat = flatten(kind, doc, ids, label=series.label)
    days: dict[str, list[LongRow]] = {label: [] for label in flat.days}
    for row in flat.rows:
        days[row.time].append((*(getattr(row, b) for b in kind.breakdowns), row.metric, row.value))
    points: dict[int, Point] = {}
    withheld: list[str] = []
    for label, rows in days.items():
        period = _period(series, label, tz)
        if period in points:
            raise MalformedResponse(f"time {label!r} appears twice", series=series, status=200)
        if not rows and label in flat.unread:
            # Values came, none a number: not "nothing that day". Written, the empty day
            # would be recorded done and never read again; left out, it stays missing
            # (gap-fill, then incomplete) and the next run reads it.
            withheld.append(label)
            continue
        points[period] = Point(label, tuple(rows), period)
    return Answer(
        [points[p] for p in sorted(points)],
        flat.skipped,
        flat.replaced,
        tuple(withheld),
        flat.doubtful,
    )


def _braze_message(body: bytes) -> str:
    """Braze's ``message`` and ``errors``, trimmed; never more than a line of text."""
    try:
        return _message_of(json.loads(body))
    except Exception:  # not JSON, nested too deep, ...: an error body with no message
        return ""


def _message_of(doc: Any) -> str:
    if not isinstance(doc, dict):
        return ""
    parts = [str(doc.get("message") or "")]
    errors = doc.get("errors")
    if isinstance(errors, list) and errors:
        parts.append("; ".join(str(e) for e in errors[:3]))
    text = ": ".join(p for p in parts if p).replace("\n", " ")
    return text[:300]
