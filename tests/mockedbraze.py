"""A real BrazeClient against aioresponses on a fake clock, for the calls made outside the
series pipeline (list pages, details)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import aiohttp
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses

from exporter.client import BrazeClient
from exporter.config import ApiKey
from exporter.ratelimit import Budget
from exporter.sandbox import SandboxOptions, make_app
from tests.conftest import FakeClock, mocked_http

BASE = "https://rest.test"
NOW = 1_704_888_000.0  # 2024-01-10T12:00:00Z


class MockedBraze:
    """``mocked`` answers; ``client`` sends on ``clock``; :meth:`budget` paces on it."""

    def __init__(self, mocked: aioresponses, session: aiohttp.ClientSession) -> None:
        self.mocked = mocked
        self.clock = FakeClock(NOW)
        self.client = BrazeClient(session, BASE, ApiKey("k-secret"), clock=self.clock)

    def budget(self) -> Budget:
        return self.budget_on(self.clock)

    @staticmethod
    def budget_on(clock: FakeClock) -> Budget:
        """A budget that never waits for pace, on ``clock``."""
        return Budget(10**8, 1.0, 0.1, clock=clock, sleep=clock.sleep, jitter=lambda: 0.5)

    def queries(self) -> list[dict[str, str]]:
        """The query of every request sent."""
        return [dict(url.query) for (_, url), calls in self.mocked.requests.items() for _ in calls]


_M = TypeVar("_M", bound=MockedBraze)


@asynccontextmanager
async def mocked_braze(kind: type[_M]) -> AsyncIterator[_M]:
    """A ``kind`` (MockedBraze or a subclass) for the length of the block."""
    async with aiohttp.ClientSession() as session:
        with mocked_http() as mocked:
            yield kind(mocked, session)


@asynccontextmanager
async def sandbox_client(options: SandboxOptions) -> AsyncIterator[tuple[BrazeClient, FakeClock]]:
    """A real BrazeClient (and its fake clock, at NOW) against an in-process sandbox."""
    server = TestServer(make_app(options))
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            clock = FakeClock(NOW)
            yield (
                BrazeClient(session, str(server.make_url("")), ApiKey("k" * 36), clock=clock),
                clock,
            )
    finally:
        await server.close()
