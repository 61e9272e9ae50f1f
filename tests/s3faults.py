"""A fault-injecting HTTP proxy on loopback in front of moto's S3 server.

Each request goes to moto unless a :class:`Fault` matches it; a fault then decides what the
client sees: the real answer dropped after moto applied the request (``lost``), a reset
before anything reached moto (``reset``), or an S3 error document (``409``, ``500``,
``503``). The proxy keeps every request it saw, so tests count attempts instead of timing
them.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import ClientSession, web

from exporter.sandbox import free_port

__all__ = ["Fault", "FaultyS3", "Seen", "is_lock_create"]

# status, S3 error code, message: what S3 itself answers (API_PutObject, ErrorResponses).
_ERRORS = {
    "409": (409, "ConditionalRequestConflict", "A conflicting operation occurred. Retry."),
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "expect", "server", "date"}


def is_lock_create(request: web.BaseRequest) -> bool:
    """The conditional create (``If-None-Match: *``) of a lock epoch object."""
    return (
        request.method == "PUT"
        and "/.braze-export/lock/" in request.path
        and request.headers.get("If-None-Match") == "*"
    )


@dataclass
class Fault:
    """``actions`` in turn, to the first ``times`` requests that ``match`` (None: all)."""

    match: Callable[[web.BaseRequest], bool]
    actions: tuple[str, ...]
    times: int | None = 1
    hits: int = 0

    def take(self, request: web.BaseRequest) -> str | None:
        if (self.times is not None and self.hits >= self.times) or not self.match(request):
            return None
        self.hits += 1
        return self.actions[(self.hits - 1) % len(self.actions)]


@dataclass(frozen=True)
class Seen:
    """One request the proxy saw, and what it did with it (``pass``: forwarded)."""

    method: str
    path: str
    conditional: bool  # If-None-Match: * (a create)
    action: str


@dataclass
class FaultyS3:
    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def count(self, predicate: Callable[[Seen], bool] = lambda _: True) -> int:
        """How many requests that ``predicate`` accepts reached the proxy."""
        return sum(1 for seen in self.seen if predicate(seen))

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        action = next((a for f in self.faults if (a := f.take(request)) is not None), "pass")
        conditional = request.headers.get("If-None-Match") == "*"
        self.seen.append(Seen(request.method, request.path, conditional, action))
        if action == "reset":
            return _drop(request)
        if action in _ERRORS:
            status, code, message = _ERRORS[action]
            xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
            return web.Response(status=status, body=xml.encode(), content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        async with self._session.request(
            request.method, self.upstream + request.path_qs, headers=headers, data=body
        ) as answer:
            data = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":  # the size of the object, not of this empty answer
                kept["Content-Length"] = answer.headers.get("Content-Length", "0")
        if action == "lost":  # moto applied it; the client never hears so
            return _drop(request)
        return web.Response(status=answer.status, body=data, headers=kept)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._session = self._loop.run_until_complete(_session())
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._loop.run_until_complete(runner.setup())
        port = free_port()
        self._loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())
        self._loop.run_until_complete(self._session.close())
        self._loop.close()

    def __enter__(self) -> FaultyS3:
        self._thread.start()
        assert self._ready.wait(10), "proxy did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


async def _session() -> ClientSession:
    return ClientSession(auto_decompress=False)  # bytes as moto sent them


def _drop(request: web.BaseRequest) -> web.Response:
    """Close the connection without an answer (the response returned is never sent)."""
    if request.transport is not None:
        request.transport.abort()
    return web.Response(status=500)
