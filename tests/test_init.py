"""braze-export init: a commented starter config that validates; --discover fills in ids."""

from __future__ import annotations

import functools
import json
import os
import re
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

import pytest
import yaml

from exporter import cli, starter
from exporter.cli import main
from exporter.client import BrazeClient, Response, make_session
from exporter.config import ApiKey, Limits, Pool, Pools, load_config
from exporter.discover import ListItem
from exporter.errors import AuthError
from exporter.ratelimit import Budget, RateHeaders
from exporter.redact import forget_secrets, register_secret
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, catalogue, free_port, start_sandbox
from exporter.sandbox_messaging import messaging_catalogue
from exporter.series import LIST_POOL, WORKSPACE_POOL, ListSource
from exporter.starter import (
    MESSAGING_SHOWN,
    Listed,
    StarterSettings,
    Workspace,
    read_workspace,
    starter_config,
    write_starter,
)

from .conftest import KEY

# The sandbox's lists at the speed of loopback: the lists pool's 1,000/hour would pace the
# product list's two pages 3.6 s apart.
FAST = Limits(pools=Pools(lists=Pool(requests_per_hour=10**8)))
QUICK_RETRY = RetryPolicy(max_attempts=2, backoff_base_s=0.001, backoff_max_s=0.001)


def _budgets() -> dict[str, Budget]:
    return {name: Budget(10**8, 1.0, 0.1, name=name) for name in (WORKSPACE_POOL, LIST_POOL)}


@pytest.fixture
def fast_init(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "workspace_at", functools.partial(starter.workspace_at, limits=FAST))
    monkeypatch.setattr(starter, "INIT_RETRY", QUICK_RETRY)


def test_init_writes_a_starter_config_that_validates(tmp_path: Path) -> None:
    """init PATH writes a config that `validate` accepts, and sends nothing."""
    path = tmp_path / "my.yaml"
    assert main(["init", str(path)]) == 0
    assert main(["validate", str(path)]) == 0
    config = load_config(path, env={})
    assert [e.series for e in config.exports] == ["sessions", "events", "purchases_revenue", "dau"]


def test_every_key_of_the_starter_says_what_it_does() -> None:
    """Every key in the starter config has a comment beside it (at its first use)."""
    text = starter_config()
    lines = text.splitlines()
    keys = {m[1] for line in lines if (m := re.match(r"\s*(?:- )?(\w+):", line))}
    explained = set()
    for i, line in enumerate(lines):
        m = re.match(r"\s*(?:- )?(\w+):", line)
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if m and ("#" in line or following.lstrip().startswith("#")):
            explained.add(m[1])
    assert keys - explained == set()
    assert "version" in keys
    assert "exports" in keys


def test_init_refuses_an_existing_file_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing PATH is kept (exit 2, one line) unless --force replaces it."""
    path = tmp_path / "my.yaml"
    path.write_text("mine\n")
    assert main(["init", str(path)]) == 2
    assert path.read_text() == "mine\n"
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "--force" in err
    assert main(["init", str(path), "--force"]) == 0
    assert main(["validate", str(path)]) == 0


def test_init_refuses_a_directory_a_special_file_and_a_missing_parent(tmp_path: Path) -> None:
    """A directory, a file that is not a regular one (even with --force: /dev/null must
    stay a device), or a path whose parent is missing, is exit 2 and writes nothing."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["init", str(tmp_path)]) == 2
    assert main(["init", str(fifo), "--force"]) == 2
    assert fifo.is_fifo()
    assert main(["init", str(tmp_path / "no" / "x.yaml")]) == 2
    assert not (tmp_path / "no").exists()


def test_discover_without_a_key_is_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """init --discover without the key variable refuses before any request, one line."""
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY_FILE", raising=False)
    assert main(["init", str(tmp_path / "x.yaml"), "--discover"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "BRAZE_API_KEY is not set" in err
    assert not (tmp_path / "x.yaml").exists()


async def test_discover_lists_analytics_enabled_segments_and_comments_the_rest() -> None:
    """Against the sandbox: the enabled segments are the config's ids, the others are
    commented out with the reason, events and products are listed, and campaigns and
    Canvases appear only as comments."""
    options = SandboxOptions(api_key=KEY)
    runner, url = await start_sandbox(options)
    try:
        async with make_session(4) as session:
            client = BrazeClient(session, url, ApiKey(KEY))
            workspace = await read_workspace(client, _budgets())
    finally:
        await runner.cleanup()
    text = starter_config(workspace)
    listed = catalogue(options)
    enabled = [s.id for s in listed.segments if s.analytics_tracking_enabled]
    disabled = [s for s in listed.segments if not s.analytics_tracking_enabled]
    assert enabled
    assert disabled
    doc = yaml.safe_load(text)
    by_name = {e["name"]: e for e in doc["exports"]}
    assert by_name["sessions"]["segment_ids"] == enabled
    assert by_name["events"]["events"] == list(listed.events)
    assert by_name["revenue"]["products"] == [None, *listed.products]
    for segment in disabled:
        assert f'# - "{segment.id}"' in text
    assert "Not analytics-enabled: Braze keeps no series" in text
    for segment in listed.segments[:5]:
        assert re.search(rf'"{segment.id}"\s+# {re.escape(segment.name)}$', text, re.M)
    campaigns = [c for c in messaging_catalogue(options).campaigns if not c.archived]
    assert len(campaigns) > MESSAGING_SHOWN
    for campaign in campaigns[:MESSAGING_SHOWN]:
        (line,) = [line for line in text.splitlines() if campaign.id in line]
        assert line.startswith("#")
    assert (
        "an export of series: campaigns, with campaign_ids: [...] or campaign_ids: {discover: all}"
        in text
    )
    assert (
        "an export of series: canvas, with canvas_ids: [...] or canvas_ids: {discover: all}" in text
    )
    assert not any(c.id in text for c in campaigns[MESSAGING_SHOWN:])
    rest = len(campaigns) - MESSAGING_SHOWN
    assert (
        f"#   ... and {rest} more (the Braze dashboard, or GET /campaigns/list, lists all)" in text
    )


def test_init_sandbox_writes_a_config_that_validates(
    tmp_path: Path, fast_init: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """init --sandbox (in-process sandbox, no key) writes ids that validate and plan, and
    says what it listed."""
    path = tmp_path / "s.yaml"
    assert main(["init", str(path), "--sandbox"]) == 0
    listed = catalogue(SandboxOptions())
    enabled = sum(s.analytics_tracking_enabled for s in listed.segments)
    assert (
        f"{enabled} analytics-enabled segments ({len(listed.segments) - enabled} others "
        f"commented out), {len(listed.events)} events, {len(listed.products)} products;"
    ) in capsys.readouterr().out
    assert main(["validate", str(path)]) == 0
    assert main(["plan", str(path)]) == 0
    assert "come from the sandbox: they are invented" in path.read_text()
    sessions = load_config(path, env={}).exports[0]
    assert isinstance(sessions.segment_ids, list)
    assert len(sessions.segment_ids) > 1


def test_init_sandbox_names_itself_and_its_next_steps_follow_the_readme(
    tmp_path: Path, fast_init: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header names the command that wrote the file (`init --sandbox`), and its Next:
    steps (with --sandbox) come in the README's order: doctor, plan, run."""
    path = tmp_path / "s.yaml"
    assert main(["init", str(path), "--sandbox"]) == 0
    assert f"next: braze-export doctor {path} --sandbox" in capsys.readouterr().out
    head = path.read_text().split("\nversion:")[0]
    assert "written by `braze-export init --sandbox`" in head
    steps = re.findall(r"braze-export (\w+) THIS_FILE --sandbox", head)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    five = re.findall(r"^\.venv/bin/braze-export (\w+) my\.yaml", readme, re.M)
    assert five[0] == "init"
    assert steps == five[1:] == ["doctor", "plan", "run"]


class _Refusing:
    """A ListFetch that answers ``status`` for one list and passes the rest on."""

    def __init__(self, fetch: BrazeClient, path: str, status: int) -> None:
        self.fetch, self.path, self.status = fetch, path, status

    async def get_list(self, source: ListSource, page: int) -> Response:
        if source.path == self.path:
            return Response(self.status, RateHeaders(), b'{"message": "Forbidden"}')
        return await self.fetch.get_list(source, page)


async def test_a_key_without_campaigns_list_still_gets_a_config() -> None:
    """A 403 on /campaigns/list (no export needs it) becomes a comment; on /segments/list
    it stops init."""
    runner, url = await start_sandbox(SandboxOptions(api_key=KEY))
    try:
        async with make_session(4) as session:
            client = BrazeClient(session, url, ApiKey(KEY))
            workspace = await read_workspace(_Refusing(client, "/campaigns/list", 403), _budgets())
            with pytest.raises(AuthError, match=r"segments\.list"):
                await read_workspace(_Refusing(client, "/segments/list", 403), _budgets())
    finally:
        await runner.cleanup()
    assert workspace.campaigns.error is not None
    assert not workspace.campaigns.items
    assert workspace.canvases.items
    text = starter_config(workspace)
    assert "#   not listed: HTTP 403: Forbidden; check the REST API key" in text
    assert yaml.safe_load(text)["exports"][0]["segment_ids"]


def test_a_wrong_key_is_exit_3_in_one_line_without_the_key(
    tmp_path: Path,
    sandbox_server: Callable[..., object],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fast_init: None,
) -> None:
    """Braze's 401 is exit 3, one error line, nothing written, the key never shown."""
    wrong = "wrong-key-0123456789abcdef"
    monkeypatch.setenv("BRAZE_API_KEY", wrong)
    with sandbox_server() as server:  # type: ignore[attr-defined]
        code = main(["init", str(tmp_path / "x.yaml"), "--discover", "--endpoint", server.url])
    assert code == 3
    out, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith("error:")] == err.splitlines()[-1:]
    assert "401" in err
    assert wrong not in out + err
    assert not (tmp_path / "x.yaml").exists()


def test_an_unreachable_endpoint_is_exit_4(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    fast_init: None,
) -> None:
    """No connection to the endpoint: exit 4, one error line naming the host."""
    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["init", str(tmp_path / "x.yaml"), "--discover", "--endpoint", url]) == 4
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "cannot reach 127.0.0.1" in errors[0]


def test_odd_ids_and_names_round_trip(tmp_path: Path) -> None:
    """Ids with quotes, line separators or that read like null come back exactly; names
    with line breaks stay in their comment."""
    ids = ['a"b\\c', "None", "x\u2028y\U0001f600"]
    segments = tuple(ListItem(i, "evil\nexports: []  # name", True) for i in ids)
    workspace = Workspace(
        segments=Listed("/segments/list", segments),
        events=Listed("/events/list", tuple(ListItem(i, i) for i in ids)),
        products=Listed("/purchases/product_list"),
        campaigns=Listed("/campaigns/list"),
        canvases=Listed("/canvas/list"),
    )
    path = tmp_path / "odd.yaml"
    path.write_text(starter_config(workspace, settings=StarterSettings()), encoding="utf-8")
    config = load_config(path, env={})
    assert config.exports[0].segment_ids == ids
    assert config.exports[1].events == ids
    assert config.exports[0].allow_null_like_ids


class _Echoing:
    """A ListFetch whose lists echo the key: in every name, and in ids as it is,
    upper-cased, percent-encoded and base64 (one page each, then an empty one)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.read: set[str] = set()

    async def get_list(self, source: ListSource, page: int) -> Response:
        key, entries = self.key, list[object]()
        if source.path not in self.read:
            self.read.add(source.path)
            ids = ["ok", key, f"evt {key.upper()}", quote(key, safe=""), b64encode(key.encode())]
            names = [f"name {key}", f"named {quote(key, safe='')}", json.dumps(key)]
            if source.items_key in ("events", "products"):
                entries = [str(i) for i in ids]
            else:
                entries = [
                    {"id": str(i), "name": names[n % 3], "analytics_tracking_enabled": True}
                    for n, i in enumerate(ids)
                ]
        body = json.dumps({"message": "success", source.items_key: entries})
        return Response(200, RateHeaders(), body.encode())


async def test_discover_writes_no_form_of_the_key_and_skips_ids_holding_it(
    tmp_path: Path,
) -> None:
    """Names that echo the key land masked in the config's comments; ids holding it in any
    form or case are skipped; the file holds no form of the key and validates."""
    key = "t3st/K3y+with=special&chars~0123456789-abcdef"
    register_secret(key)
    try:
        workspace = await read_workspace(_Echoing(key), _budgets())
        path = tmp_path / "disc.yaml"
        write_starter(path, starter_config(workspace), force=False)
    finally:
        forget_secrets()
    data = path.read_bytes()
    for form in (key, quote(key, safe=""), key.upper(), b64encode(key.encode()).rstrip(b"=")):
        assert (form if isinstance(form, bytes) else form.encode()) not in data
    assert b"name ***" in data
    config = load_config(path, env={})
    assert config.exports[0].segment_ids == ["ok"]
    assert config.exports[1].events == ["ok"]
    assert config.exports[2].products == [None, "ok"]
