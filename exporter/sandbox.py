"""A Braze-compatible local server for GET /sessions/data_series (aiohttp.web).

It behaves as Braze documents the endpoint: Bearer auth, 400 with ``message``/``errors`` for
bad parameters, ``length`` points in Braze's ``time`` format, and a fixed-window rate limit with
``X-RateLimit-Limit/Remaining/Reset`` on every response (``reset_style`` writes Reset in epoch
seconds as Braze does, or in the odd shapes other APIs send: milliseconds, a time already gone,
or not at all). Session counts are deterministic and realistic (weekly and daily rhythms)
functions of (segment, app, unit, time), so a test can check every exported row against
:func:`session_count`.

Which periods a request covers is one of three window semantics, since Braze does not document
it (``SandboxOptions.semantics``):

* ``contains`` (the default): the ``length`` periods ending with the period that contains
  ``ending_at``; day periods are dates in ``ending_at``'s own offset, hour periods UTC hours;
* ``exclusive``: the window ends one period *before* the one containing ``ending_at``;
* ``utc``: as ``contains``, but days are cut in UTC whatever offset ``ending_at`` carries.

Hour labels are written naive (``2024-01-05T10:00:00``), with ``Z`` or with ``+00:00``
(``SandboxOptions.hour_labels``).

Faults for reliability tests are deterministic: whether the n-th identical request fails, and
how, is a hash of (seed, parameters, n), whatever order requests arrive in.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from aiohttp import web

__all__ = [
    "FAULT_KINDS",
    "HOUR_LABELS",
    "RESET_STYLES",
    "SEMANTICS",
    "SandboxOptions",
    "SandboxStats",
    "free_port",
    "make_app",
    "run_sandbox",
    "sandbox_stats",
    "session_count",
    "start_sandbox",
]

FAULT_KINDS = ("500", "502", "503", "504", "reset", "slow", "truncated", "bad_series")
SEMANTICS = ("contains", "exclusive", "utc")
HOUR_LABELS = {"naive": "", "z": "Z", "offset": "+00:00"}
# How X-RateLimit-Reset is written: Braze's epoch seconds, or the odd shapes other APIs send.
RESET_STYLES = ("seconds", "ms", "past", "missing")
_WEEKDAY = (1.0, 1.04, 1.06, 1.03, 0.97, 0.82, 0.78)


@dataclass
class SandboxOptions:
    api_key: str | None = None  # None: any Bearer token is accepted
    limit: int = 250_000  # requests per window; 0 turns the rate limit off
    window_s: float = 3600.0
    fault_rate: float = 0.0
    seed: int = 0
    slow_s: float = 60.0  # how long a "slow" fault stalls; make it exceed the client timeout
    reject_segments: frozenset[str] = frozenset()
    not_found_segments: frozenset[str] = frozenset()  # answered 404, as a wrong path would be
    body_pieces: int = 1  # a 200 body written in this many pieces, 1 ms apart
    deny: bool = False
    restate: int = 0  # 0: values never change; another number: recent days read differently
    restate_days: int = 3
    semantics: str = "contains"  # one of SEMANTICS
    missing_days: frozenset[str] = frozenset()  # dates never returned (a hole in the data)
    hour_labels: str = "naive"  # a key of HOUR_LABELS
    reset_style: str = "seconds"  # one of RESET_STYLES
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if self.reset_style not in RESET_STYLES:
            raise ValueError(f"reset_style must be one of {', '.join(RESET_STYLES)}")


@dataclass
class SandboxStats:
    requests: int = 0
    ok: int = 0
    rate_limited: int = 0
    faults: int = 0
    max_in_window: int = 0
    repeated: int = 0  # distinct requests received more than once (retries, resumed runs)
    window_counts: dict[int, int] = field(default_factory=dict)


def session_count(segment: str, app: str | None, unit: str, label: str, restate: int = 0) -> int:
    """The sandbox's value for one point; ``restate`` shifts it (Braze restating late data)."""
    key = f"{segment}\x1f{app or ''}\x1f{unit}"
    scale = 40 + _hash01(key) * 4000  # sessions per hour at the daily peak
    noise = 0.85 + 0.3 * _hash01(f"{key}\x1f{label}")
    if unit == "day":
        weekday = date.fromisoformat(label[:10]).weekday()
        value = scale * 14 * _WEEKDAY[weekday] * noise
    else:
        hour = int(label[11:13])
        value = scale * (0.25 + 0.75 * math.sin(math.pi * max(0, hour - 5) / 19) ** 2) * noise
    if restate:
        value *= 1 + 0.01 * (1 + restate % 17)
    return round(value)


def _hash01(text: str) -> float:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class _Sandbox:
    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.stats = SandboxStats()
        self._seen: dict[str, int] = {}

    def _rate(self) -> tuple[dict[str, str], bool]:
        """Count this request in its fixed window; headers, and whether it is over."""
        opts = self.options
        now = opts.clock()
        if opts.limit <= 0:
            return {}, False
        window = math.floor(now / opts.window_s)
        used = self.stats.window_counts.get(window, 0) + 1
        self.stats.window_counts[window] = used
        reset = math.ceil((window + 1) * opts.window_s)
        over = used > opts.limit
        if not over:
            self.stats.max_in_window = max(self.stats.max_in_window, used)
        headers = {
            "X-RateLimit-Limit": str(opts.limit),
            "X-RateLimit-Remaining": str(max(0, opts.limit - used)),
        }
        if opts.reset_style == "seconds":
            headers["X-RateLimit-Reset"] = str(reset)
        elif opts.reset_style == "ms":
            headers["X-RateLimit-Reset"] = str(reset * 1000)
        elif opts.reset_style == "past":
            # A stale value: a reset that has already happened, a minute before this window.
            headers["X-RateLimit-Reset"] = str(math.floor(window * opts.window_s) - 60)
        return headers, over

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.stats.requests += 1
        headers, over = self._rate()
        auth = request.headers.get("Authorization", "")
        opts = self.options
        if "api_key" in request.query:
            return _error(
                401, "Use the Authorization header; api_key in the URL is refused", headers
            )
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _error(401, "Invalid API key", headers)
        if opts.api_key is not None and auth[7:] != opts.api_key:
            return _error(401, "Invalid API key", headers)
        if over:
            self.stats.rate_limited += 1
            return _error(429, "Rate limit exceeded", headers)
        if opts.deny:
            return _error(403, "API key lacks permission sessions.data_series", headers)
        try:
            params = _parse(request.query, opts.clock(), opts.semantics, opts.hour_labels)
        except ValueError as exc:
            return _error(400, "Invalid parameters", headers, [str(exc)])
        segment, app, unit, labels = params
        if segment in opts.not_found_segments:
            return _error(404, "Not Found", headers)
        if segment in opts.reject_segments:
            return _error(400, "Invalid segment_id", headers, [f"segment {segment} not found"])
        n = self._seen.get(request.query_string, 0)
        self._seen[request.query_string] = n + 1
        if n == 1:
            self.stats.repeated += 1
        fault = self._fault(request.query_string, n)
        if fault is not None:
            self.stats.faults += 1
            return await _faulty(request, fault, headers, opts.slow_s)
        recent = datetime.fromtimestamp(opts.clock(), UTC).date() - timedelta(
            days=opts.restate_days
        )
        data = [
            {
                "time": label,
                "sessions": session_count(
                    segment,
                    app,
                    unit,
                    label,
                    opts.restate if date.fromisoformat(label[:10]) >= recent else 0,
                ),
            }
            for label in labels
            if label[:10] not in opts.missing_days
        ]
        self.stats.ok += 1
        if opts.body_pieces > 1:
            return await _in_pieces(request, {"message": "success", "data": data}, headers, opts)
        return web.json_response({"message": "success", "data": data}, headers=headers)

    def _fault(self, query: str, n: int) -> str | None:
        """Whether the n-th receipt of this exact request fails, and how."""
        if self.options.fault_rate <= 0:
            return None
        roll = _hash01(f"{self.options.seed}\x1f{query}\x1f{n}")
        if roll >= self.options.fault_rate:
            return None
        return FAULT_KINDS[math.floor(roll / self.options.fault_rate * len(FAULT_KINDS))]

    async def stats_view(self, _: web.Request) -> web.Response:
        doc = {k: v for k, v in vars(self.stats).items() if k != "window_counts"}
        doc["windows"] = {str(k): v for k, v in sorted(self.stats.window_counts.items())}
        return web.json_response(doc)


def _parse(
    query: Mapping[str, str], now: float, semantics: str = "contains", hour_labels: str = "naive"
) -> tuple[str, str | None, str, list[str]]:
    length_text = query.get("length")
    if length_text is None:
        raise ValueError("length is required")
    try:
        length = int(length_text)
    except ValueError:
        raise ValueError(f"length must be an integer, got {length_text!r}") from None
    if not 1 <= length <= 100:
        raise ValueError(f"length must be between 1 and 100, got {length}")
    unit = query.get("unit", "day")
    if unit not in ("day", "hour"):
        raise ValueError(f"unit must be day or hour, got {unit!r}")
    segment = query.get("segment_id")
    if not segment:
        raise ValueError("segment_id is required")
    raw_end = query.get("ending_at")
    try:
        end = datetime.fromisoformat(raw_end) if raw_end else datetime.fromtimestamp(now, UTC)
    except ValueError:
        raise ValueError(f"ending_at must be an ISO 8601 datetime, got {raw_end!r}") from None
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    back = 1 if semantics == "exclusive" else 0
    if unit == "day":
        last = (end.astimezone(UTC) if semantics == "utc" else end).date()
        last -= timedelta(days=back)
        labels = [(last - timedelta(days=i)).isoformat() for i in range(length - 1, -1, -1)]
    else:
        top = math.floor(end.timestamp() / 3600) - back
        suffix = HOUR_LABELS[hour_labels]
        labels = [
            datetime.fromtimestamp((top - i) * 3600, UTC).strftime("%Y-%m-%dT%H:%M:%S") + suffix
            for i in range(length - 1, -1, -1)
        ]
    return segment, query.get("app_id"), unit, labels


def _error(
    status: int, message: str, headers: dict[str, str], errors: list[str] | None = None
) -> web.Response:
    return web.json_response(
        {"message": message, "errors": errors or []}, status=status, headers=headers
    )


async def _in_pieces(
    request: web.Request, doc: object, headers: dict[str, str], opts: SandboxOptions
) -> web.StreamResponse:
    """A body that arrives in several reads, as it does from a real server over a network."""
    body = json.dumps(doc).encode()
    response = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
    await response.prepare(request)
    step = max(1, math.ceil(len(body) / opts.body_pieces))
    for start in range(0, len(body), step):
        await response.write(body[start : start + step])
        await asyncio.sleep(0.001)
    await response.write_eof()
    return response


async def _faulty(
    request: web.Request, fault: str, headers: dict[str, str], slow_s: float
) -> web.StreamResponse:
    if fault.isdigit():
        return _error(int(fault), "Injected fault", headers)
    if fault == "slow":
        await asyncio.sleep(slow_s)
        return _error(503, "Injected slow response", headers)
    if fault == "bad_series":
        body = {"message": "success", "data": [{"time": "not-a-time", "sessions": -3}]}
        return web.json_response(body, headers=headers)
    if fault == "truncated":
        whole = json.dumps({"message": "success", "data": [{"time": "2024-01-01"}]}).encode()
        return web.Response(
            body=whole[: len(whole) // 2], headers=headers, content_type="application/json"
        )
    # "reset": drop the connection without a response.
    assert request.transport is not None
    request.transport.abort()
    return web.Response(status=500)


_SANDBOX = web.AppKey("sandbox", _Sandbox)


def sandbox_stats(app: web.Application) -> SandboxStats:
    """What the sandbox behind ``app`` has served so far."""
    return app[_SANDBOX].stats


def make_app(options: SandboxOptions | None = None) -> web.Application:
    sandbox = _Sandbox(options or SandboxOptions())
    app = web.Application()
    app[_SANDBOX] = sandbox
    app.router.add_get("/sessions/data_series", sandbox.handle)
    app.router.add_get("/_sandbox/stats", sandbox.stats_view)
    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


async def start_sandbox(
    options: SandboxOptions | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Start it in this event loop; returns the runner (call ``cleanup()``) and its URL."""
    # A short shutdown: a "slow" fault may still be sleeping when its client has given up.
    runner = web.AppRunner(
        make_app(options), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server  # aiohttp exposes the bound port only here
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"http://{host}:{bound}"


def run_sandbox(options: SandboxOptions, host: str, port: int) -> None:
    """Serve until interrupted (the ``braze-export sandbox`` command)."""

    async def serve() -> None:
        runner, url = await start_sandbox(options, host, port)
        limit = "off" if options.limit <= 0 else f"{options.limit} per {options.window_s:g}s"
        print(f"sandbox listening on {url} (rate limit {limit})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
