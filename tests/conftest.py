"""Shared fixtures: config files on disk, a sandbox server on a free loopback port, and the
CLI run in this process against it with its exit status and output."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiohttp import ClientResponse, web
from aioresponses import aioresponses

from exporter.cli import main
from exporter.dimensions import DIMENSIONS_DIR
from exporter.manifest import RUNS_DIR
from exporter.remote import ObjectStore
from exporter.sandbox import SandboxOptions, SandboxStats, sandbox_stats, start_sandbox
from exporter.writers import WORK_DIR

KEY = "sandbox-key-5f1e2d3c4b5a69788796a5b4"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs in its own directory: a default such as ./sandbox-out never lands in
    the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML text (dedented) to a config file and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@dataclass
class ServerHandle:
    url: str
    app: web.Application
    options: SandboxOptions
    loop: asyncio.AbstractEventLoop

    def open_gate(self) -> None:
        """Let the answers that ``options.gate`` holds go (called from the test's thread)."""
        assert self.options.gate is not None
        self.loop.call_soon_threadsafe(self.options.gate.set)


class _ThreadedSandbox:
    """The sandbox in its own thread and event loop, for tests that call the sync CLI."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.app = web.Application()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.url = ""
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        runner, self.url = self.loop.run_until_complete(start_sandbox(self.options))
        self.app = runner.app
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        # Handlers still sleeping (a "slow" fault) end here, not as destroyed pending tasks.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    def __enter__(self) -> ServerHandle:
        self.thread.start()
        assert self.ready.wait(60), "sandbox did not start"
        return ServerHandle(self.url, self.app, self.options, self.loop)

    def __exit__(self, *_: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def sandbox_server() -> Callable[..., _ThreadedSandbox]:
    """Factory: ``with sandbox_server(limit=..., deny=True) as server: ...``; with
    ``gate=asyncio.Event()`` the answers wait until ``server.open_gate()``."""

    def start(**options: object) -> _ThreadedSandbox:
        options.setdefault("api_key", KEY)
        return _ThreadedSandbox(SandboxOptions(**options))  # type: ignore[arg-type]

    return start


@pytest.fixture
def env_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    monkeypatch.delenv("BRAZE_REST_ENDPOINT", raising=False)
    return KEY


@dataclass(frozen=True)
class Ran:
    """One CLI command run in this process: its exit status and what it printed."""

    code: int
    out: str
    err: str


class Cli:
    """The CLI run in this process against the endpoint the environment names, and sandboxes
    to point it at: ``with cli.sandbox(deny=True) as server: ran = cli("run", config)``."""

    def __init__(
        self,
        start: Callable[..., _ThreadedSandbox],
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        self._start = start
        self._monkeypatch = monkeypatch
        self._capsys = capsys

    def point_at(self, url: str) -> None:
        """Send the real (not --sandbox) commands to ``url``, as BRAZE_REST_ENDPOINT does."""
        self._monkeypatch.setenv("BRAZE_REST_ENDPOINT", url)

    @contextmanager
    def sandbox(self, **options: object) -> Iterator[ServerHandle]:
        """A sandbox (``sandbox_server``'s options) the commands go to until the block ends."""
        with self._start(**options) as server:
            self.point_at(server.url)
            yield server

    def against_sandbox(self, *args: str | Path, **options: object) -> tuple[Ran, SandboxStats]:
        """One command against a new sandbox with these options: what the command did, and
        what the sandbox served it."""
        with self.sandbox(**options) as server:
            ran = self(*args)
            return ran, sandbox_stats(server.app)

    def __call__(self, *args: str | Path) -> Ran:
        """``main`` with these arguments; what it printed, and only that."""
        self._capsys.readouterr()
        code = main([str(arg) for arg in args])
        printed = self._capsys.readouterr()
        return Ran(code, printed.out, printed.err)


@pytest.fixture
def cli(
    sandbox_server: Callable[..., _ThreadedSandbox],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    """Run CLI commands and start sandboxes for them (the key stays ``env_key``'s to give)."""
    return Cli(sandbox_server, monkeypatch, capsys)


class _NoStreamWriter:
    output_size = 0


class _CompatResponse(ClientResponse):
    """aiohttp 3.14 made ``stream_writer`` a required argument that aioresponses 0.7.x does
    not pass (pnuckowski/aioresponses#289); give it a finished one."""

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _NoStreamWriter())
        super().__init__(method, url, **kwargs)


class mocked_http(aioresponses):
    """aioresponses that works with the aiohttp this project installs."""

    def add(self, url: Any, method: str = "GET", **kwargs: Any) -> None:  # type: ignore[override]
        kwargs.setdefault("response_class", _CompatResponse)
        super().add(url, method, **kwargs)


def data_files(out: Path) -> list[Path]:
    """The series' data files under an output directory: not the state, temp files,
    manifests or dimension tables."""
    return sorted(
        p
        for p in out.rglob("*")
        if p.is_file() and not {WORK_DIR, RUNS_DIR, DIMENSIONS_DIR} & set(p.relative_to(out).parts)
    )


def snapshot(out: Path) -> dict[str, bytes]:
    """Every data file's bytes by its path relative to ``out``: for byte-identity checks."""
    return {str(p.relative_to(out)): p.read_bytes() for p in data_files(out)}


def wait_for(condition: Callable[[], object], what: str, timeout: float = 120) -> None:
    """Poll for an event another process or thread brings about (a file, a counter, a log
    line): its start-up time on a busy machine is not ours to bound, so the timeout only ends
    a real hang, and says what never happened."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class FakeClock:
    """A wall clock that only moves when something sleeps on it."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


class NotBraze:
    """A real HTTP server that answers 404 to everything (a wrong host or path); a test may
    set ``status``, ``body`` and ``headers`` to make it answer something else, or ``close``
    to drop every connection without an answer."""

    def __init__(self) -> None:
        self.status = 404
        self.body: Any = {"message": "Not Found"}
        self.headers: dict[str, str] = {}
        self.close = False
        self.hits = 0
        self.url = ""
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.close and request.transport is not None:
            request.transport.abort()
        if isinstance(self.body, bytes):  # sent as it is, for bodies no JSON encoder makes
            return web.Response(
                body=self.body,
                status=self.status,
                headers=self.headers,
                content_type="application/json",
            )
        return web.json_response(self.body, status=self.status, headers=self.headers)

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.loop.run_until_complete(runner.setup())
        # Port 0: the kernel's free port, bound at once (a port looked up first could be taken
        # by another process before the bind).
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(runner.cleanup())
        self.loop.close()


Served = TypeVar("Served", bound=NotBraze)


@contextmanager
def serving(server: Served) -> Iterator[Served]:
    """A NotBraze (or a subclass with its own ``_handle``) serving until the block ends."""
    server.thread.start()
    assert server.ready.wait(60), "the server did not start"
    try:
        yield server
    finally:
        server.loop.call_soon_threadsafe(server.loop.stop)
        server.thread.join(10)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses every connection for the whole test: bound but never
    listening, so no other process can listen on it meanwhile (a port found free and then
    released could be taken by another test on a busy machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def not_braze() -> Iterator[NotBraze]:
    with serving(NotBraze()) as server:
        yield server


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 and a free port; the environment that points the AWS
    credential chain and endpoint at it (and at nothing else)."""
    moto_server = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    # Port 0: bound at once, so no other process can take it between a look-up and the bind.
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    home = tmp_path_factory.mktemp("aws")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield env
    server.stop()


@pytest.fixture
def bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket on the S3 test server; its ``s3://`` URL with a prefix."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    name = f"test-{secrets.token_hex(6)}"
    store = ObjectStore.open(f"s3://{name}")
    store.fs.mkdir(name)
    store.close()
    return f"s3://{name}/exports"
