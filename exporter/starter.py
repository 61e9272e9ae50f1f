"""The starter config ``braze-export init`` writes, and the workspace ``init --discover`` reads.

:func:`starter_config` returns commented YAML in which every key says what it does. Without a
workspace it discovers ids at run time (``{discover: ...}``); with one (:func:`read_workspace`)
it lists the ids Braze listed, names as comments beside them, so a user deletes lines instead
of typing ids:

* ``/segments/list``: analytics-enabled segments are listed; the others are written commented
  out, with the reason (Braze has series only for analytics-enabled segments).
* ``/events/list``, ``/purchases/product_list``: every event and product.
* ``/campaigns/list``, ``/canvas/list``: comments only, ids to copy into a ``campaigns`` or
  ``canvas`` export; a 403 on these two lists (a key without ``campaigns.list`` or
  ``canvas.list``, which the starter's exports do not need) becomes a comment instead of a
  failure.

Every list is read by :func:`exporter.discover.discover` (its paging, pacing and error
handling), all five at once, each through the budget of its pool.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from exporter import package_version
from exporter.client import BrazeClient, cannot_reach, make_session
from exporter.config import (
    DEFAULT_ENDPOINT,
    DEFAULT_KEY_ENV,
    ENDPOINT_ENV,
    ApiKey,
    BrazeSettings,
    Config,
    Limits,
    Output,
    load_config,
    reads_like_null,
    resolve_api_key,
)
from exporter.discover import DiscoverSpec, ListFetch, ListItem, discover
from exporter.errors import AuthError, ConfigError, ExporterError, TransportError
from exporter.ratelimit import Budget
from exporter.retry import RetryPolicy
from exporter.sandbox import SandboxOptions, start_sandbox
from exporter.series import DIMENSIONS, KINDS, LIST_POOL, WORKSPACE_POOL
from exporter.writers import atomic_write

__all__ = [
    "INIT_RETRY",
    "Listed",
    "StarterSettings",
    "Workspace",
    "read_workspace",
    "starter_config",
    "workspace_at",
    "write_starter",
]

# init is interactive: a few attempts and two minutes at most, not a run's patience.
INIT_RETRY = RetryPolicy(max_attempts=3, max_total_s=120.0)
_COLUMN = 38  # where comments beside values start
_MAX_NAME = 100  # a name in a comment is cut here


@dataclass(frozen=True)
class StarterSettings:
    """What the starter config's ``braze:`` says, checked as the config checks it."""

    endpoint: str = DEFAULT_ENDPOINT
    api_key_env: str = DEFAULT_KEY_ENV

    @classmethod
    def from_args(cls, endpoint: str | None, api_key_env: str) -> StarterSettings:
        """``endpoint`` None: ``$BRAZE_REST_ENDPOINT``, else Braze's first US instance.
        Raises ConfigError for an endpoint or a variable name the config would refuse."""
        given = endpoint if endpoint is not None else os.environ.get(ENDPOINT_ENV)
        try:
            checked = BrazeSettings(endpoint=given or DEFAULT_ENDPOINT, api_key_env=api_key_env)
        except ValidationError as exc:
            where = {
                "endpoint": "--endpoint" if endpoint is not None else f"${ENDPOINT_ENV}",
                "api_key_env": "--api-key-env",
            }
            raise ConfigError(
                "\n".join(
                    f"init: {where.get(str(err['loc'][0]), 'init')}: "
                    + err["msg"].removeprefix("Value error, ")
                    for err in exc.errors()
                )
            ) from None
        return cls(checked.endpoint, checked.api_key_env)

    def api_key(self) -> ApiKey:
        """The key from the environment, as ``run`` reads it (ConfigError when unset)."""
        # No config file exists yet: the settings alone, and errors that name init.
        config = Config(
            source=Path("init --discover"),
            braze=BrazeSettings(endpoint=self.endpoint, api_key_env=self.api_key_env),
            limits=Limits(),
            timezone="UTC",
            output=Output(),
            exports=(),
        )
        return resolve_api_key(config)


@dataclass(frozen=True)
class Listed:
    """What one list returned (every well-formed item, in Braze's order), or, for the
    campaign and Canvas lists only, why it could not be read (``error``)."""

    path: str
    items: tuple[ListItem, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class Workspace:
    """The five lists ``init --discover`` reads; ``sandbox`` when they came from the sandbox
    (invented ids: the config says so)."""

    segments: Listed
    events: Listed
    products: Listed
    campaigns: Listed
    canvases: Listed
    sandbox: bool = False

    def summary(self) -> str:
        """What was listed, in one line: ``166 analytics-enabled segments (64 others
        commented out), 40 events, 12 products; 135 campaigns, 33 Canvases as comments``."""
        enabled = sum(1 for s in self.segments.items if s.analytics is True)
        others = len(self.segments.items) - enabled
        comments = ", ".join(
            f"{what} not listed" if listed.error else f"{len(listed.items)} {what}"
            for what, listed in (("campaigns", self.campaigns), ("Canvases", self.canvases))
        )
        return (
            f"{enabled} analytics-enabled segments ({others} others commented out), "
            f"{len(self.events.items)} events, {len(self.products.items)} products; "
            f"{comments} as comments"
        )


@dataclass(frozen=True)
class _Read:
    dimension: str
    optional: bool  # a 403 becomes a comment, not a failure


_READS = {
    "segments": _Read("segment_id", False),
    "events": _Read("event", False),
    "products": _Read("product", False),
    "campaigns": _Read("campaign_id", True),
    "canvases": _Read("canvas_id", True),
}


async def read_workspace(
    fetch: ListFetch,
    budgets: Mapping[str, Budget],
    *,
    retry: RetryPolicy | None = None,
    sandbox: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> Workspace:
    """Read the five lists at once, each through ``budgets[its pool]`` (``workspace``,
    ``lists``). Raises AuthError (401/403; a 403 on the campaign or Canvas list is kept as
    :attr:`Listed.error` instead), DiscoveryError, or the RetryableError the retries gave up
    on; of several failures, a 401/403 first, then a connection that failed. ``retry``
    defaults to :data:`INIT_RETRY`."""
    policy = retry or INIT_RETRY

    async def one(read: _Read) -> Listed:
        spec = DiscoverSpec(read.dimension, analytics_only=False)
        try:
            found = await discover(
                fetch, spec, budget=budgets[spec.source.pool], retry=policy, sleep=sleep
            )
        except AuthError as exc:
            if not (read.optional and exc.status == 403):
                raise
            return Listed(spec.source.path, error=exc.reason)
        return Listed(spec.source.path, found.items)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = {name: group.create_task(one(read)) for name, read in _READS.items()}
    except ExceptionGroup as failed:
        raise _worst(failed) from None
    lists = {name: task.result() for name, task in tasks.items()}
    return Workspace(**lists, sandbox=sandbox)


def _worst(group: BaseExceptionGroup[Exception]) -> Exception:
    """The failure to report of several: what stops everything comes first."""
    leaves = list(_leaves(group))

    def rank(exc: Exception) -> int:
        if isinstance(exc, AuthError):
            return 0
        if isinstance(exc, TransportError) and exc.connect_failed:
            return 1
        return 2 if isinstance(exc, ExporterError) else 3

    return min(leaves, key=rank)


def _leaves(group: BaseExceptionGroup[Exception]) -> Iterable[Exception]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def workspace_at(
    endpoint: str,
    key: ApiKey | None,
    *,
    limits: Limits | None = None,
    timeout_s: float = 30.0,
) -> Workspace:
    """:func:`read_workspace` over HTTP against ``endpoint``, paced by ``limits``' pools
    (default: the config's defaults, Braze's documented limits); ``key`` None reads an
    in-process sandbox instead. A host no connection reaches raises Unreachable (exit 4)."""
    limits = limits or Limits()
    budgets = {
        name: Budget(*limits.pool(name), max_pause_s=limits.max_pause_s, name=name)
        for name in (WORKSPACE_POOL, LIST_POOL)
    }
    runner = None
    if key is None:
        key = ApiKey(secrets.token_urlsafe(24))
        runner, endpoint = await start_sandbox(SandboxOptions(api_key=key.reveal()))
    try:
        async with make_session(len(_READS)) as session:
            client = BrazeClient(session, endpoint, key, timeout_s=timeout_s)
            try:
                return await read_workspace(client, budgets, sandbox=runner is not None)
            except TransportError as exc:
                if exc.connect_failed:
                    raise cannot_reach(client.host, exc) from None
                raise
    finally:
        if runner is not None:
            await runner.cleanup()


def write_starter(path: Path, text: str, *, force: bool, check_only: bool = False) -> None:
    """Write ``text`` to ``path``, refusing (ConfigError, exit 2) a path that exists unless
    ``force``, a directory or other file that is not a regular one, or one that cannot be
    written (through a symbolic link: to where it points); ``check_only`` only refuses. The
    text is written by :func:`exporter.writers.atomic_write` (the API key redacted), validated
    as ``braze-export validate`` would before it lands (a starter that does not validate is a
    bug: ExporterError), and never lands over a file created meanwhile."""
    if path.is_dir():
        raise ConfigError(f"init: {path} is a directory; name the config file to write")
    if path.exists() and not force:
        raise ConfigError(f"init: {path} exists; --force overwrites it")
    if path.exists() and not path.is_file():  # /dev/null: --force must not replace it
        raise ConfigError(f"init: {path} is not a regular file; name the config file to write")
    path = path.resolve() if path.is_symlink() else path  # --force writes where a link points
    if not path.parent.is_dir():
        raise ConfigError(f"init: cannot write {path}: {path.parent} is not a directory")
    if check_only:
        return

    def validates(temp: Path) -> None:
        try:
            load_config(temp, env={})
        except ConfigError as exc:
            raise ExporterError(
                f"init: the starter config does not validate (a bug): {exc}"
            ) from None

    try:
        # The one redacting write: names Braze listed may echo the key (ids holding it are
        # skipped by discovery), and they land as comments.
        atomic_write(
            path,
            text.encode(),
            path.parent,
            token=f".{path.name}.{secrets.token_hex(4)}",
            replace=force,
            check=validates,
        )
    except FileExistsError:
        raise ConfigError(f"init: {path} exists; --force overwrites it") from None
    except OSError as exc:
        raise ConfigError(f"init: cannot write {path}: {exc.strerror or exc}") from None


# --- the text ------------------------------------------------------------------------------


@dataclass
class _Text:
    lines: list[str] = field(default_factory=list)

    def add(self, line: str = "", comment: str | None = None) -> None:
        """A line, with ``comment`` beside it from column :data:`_COLUMN` on."""
        if comment:
            line = f"{line.ljust(_COLUMN - 1)} # {comment}"
        self.lines.append(line)

    def block(self, text: str) -> None:
        self.lines.extend(text.splitlines())


def starter_config(
    workspace: Workspace | None = None,
    *,
    settings: StarterSettings | None = None,
    command: str = "braze-export init",
) -> str:
    """The commented starter config (YAML text, valid for ``braze-export validate``):
    sessions per segment, custom events, revenue per product and DAU, the 7 complete days
    before today, by day, for the whole workspace. Ids come from ``workspace`` when given,
    else from ``{discover: ...}`` at run time."""
    settings = settings or StarterSettings()
    endpoint, api_key_env = settings.endpoint, settings.api_key_env
    out = _Text()
    sandbox = workspace is not None and workspace.sandbox
    flag = " --sandbox" if sandbox else ""
    out.block(_HEAD.format(version=package_version(), command=command, flag=flag))
    if sandbox:
        out.block(_SANDBOX_NOTE)
    out.add()
    out.add("version: 1", "the config format (the only one so far)")
    out.add()
    out.add("braze:", "where Braze is and how to authenticate")
    out.add(f"  endpoint: {_quote(endpoint)}", "your instance's REST host ($BRAZE_REST_ENDPOINT")
    out.add("", "overrides it; README, Hosts)")
    out.add(f"  api_key_env: {api_key_env}", "the key is read from this variable (or from the")
    out.add("", f"file ${api_key_env}_FILE names), never from this file")
    out.add("  timeout_s: 30", "seconds one request may take, at most 600")
    out.block(_REST)
    segments = workspace.segments.items if workspace else None
    events = workspace.events.items if workspace else None
    products = workspace.products.items if workspace else None

    _export(out, "sessions", "sessions", "Sessions per segment, by day, for the whole workspace.")
    enabled = [s for s in segments or () if s.analytics is True]
    if segments is None or not enabled:
        why = (
            "every analytics-enabled segment, from"
            if segments is None
            else f"none of the {len(segments)} listed segments is analytics-enabled yet:"
        )
        out.add("    segment_ids: {discover: analytics_enabled}", why)
        out.add("", "/segments/list when the run starts; or a list of ids")
    else:
        out.add("    segment_ids:", "analytics-enabled segments from /segments/list")
        _ids(out, enabled, named=True)
    others = [s for s in segments or () if s.analytics is not True]
    if others:
        out.add("      # Not analytics-enabled: Braze keeps no series for these. Turn on analytics")
        out.add("      # tracking for a segment in Braze, then uncomment its line.")
        _ids(out, others, named=True, commented=True)
    out.add("    app_ids: [null]", "null: the whole workspace; add app ids (dashboard:")
    out.add("", "Settings > API Keys) for one app each")
    out.add("    units: [day]", "day and/or hour (hour: UTC hours)")
    _window(out, enabled, explained=True)
    _export(out, "events", "events", "Every custom event, for all users, by day.")
    if not events:
        why = (
            "every custom event, from /events/list when the"
            if events is None
            else "/events/list listed no event yet: this finds them"
        )
        out.add("    events: {discover: all}", why)
        out.add("", "run starts; or a list of event names")
    else:
        out.add("    events:", "custom events from /events/list")
        _ids(out, events, named=False)
    _window(out, events or ())
    _export(out, "revenue", "purchases_revenue", "Revenue per product, by day (may be fractional).")
    if not products:
        why = "null: every product together" + (
            "" if products is None else " (/purchases/product_list listed none)"
        )
        out.add("    products: [null]", why)
        if products is None:
            out.add("", "or {discover: all}: each product on its own")
    else:
        out.add("    products:", "products from /purchases/product_list")
        out.add("      - null", "every product together")
        _ids(out, products, named=False)
    _window(out, products or ())
    _export(out, "dau", "dau", "Daily active users (KPI series are day-only, take no segment).")
    out.add("    app_ids: [null]")
    _window(out, ())
    if workspace is not None:
        _messaging(out, "Campaigns", workspace.campaigns, "campaigns")
        _messaging(out, "Canvases", workspace.canvases, "canvas")
    return "\n".join(out.lines) + "\n"


def _export(out: _Text, name: str, series: str, what: str) -> None:
    """An export's first lines; the first export's keys say what they are."""
    first = name == "sessions"
    out.add()
    out.add(f"  # {what}")
    out.add(
        f"  - name: {name}", "unique; names the export in logs and the manifest" if first else None
    )
    out.add(
        f"    series: {series}",
        "which Braze series: `braze-export series` lists" if first else None,
    )
    if first:
        out.add("", "them all, with their dimensions and permissions")


def _window(out: _Text, items: Sequence[ListItem], *, explained: bool = False) -> None:
    """An export's last lines: its window, and the opt-in an id that reads like null needs."""
    if explained:
        out.add("    window: {days: 7}", "the 7 complete days before today, read again")
        out.add("", "every run (Braze restates recent days)")
    else:
        out.add("    window: {days: 7}")
    if any(reads_like_null(item.id) for item in items):
        out.add("    allow_null_like_ids: true", "an id above reads like null and is one")


def _ids(out: _Text, items: Sequence[ListItem], *, named: bool, commented: bool = False) -> None:
    """One list entry per item; a segment's name beside its id (an event or product name is
    its own id)."""
    prefix = "      # - " if commented else "      - "
    for item in items:
        out.add(f"{prefix}{_quote(item.id)}", _comment(item.name) if named else None)


# Campaigns and Canvases listed as comments, at most: a workspace has hundreds, and the config
# is a file to keep in git, not a catalogue.
MESSAGING_SHOWN = 20


def _messaging(out: _Text, what: str, listed: Listed, series: str) -> None:
    """The first :data:`MESSAGING_SHOWN` of a campaign or Canvas list as comments, and how
    many more there are, with how to export their analytics."""
    out.add()
    out.add(f"# {what} in this workspace, from {listed.path}, for reference only:")
    key = DIMENSIONS[KINDS[series].dimensions[0]].config_key
    out.add(
        f"# To export their analytics: an export of series: {series}, with {key}: [...] or "
        f"{key}: {{discover: all}} (every one listed; days without data are skipped)"
    )
    if listed.error is not None:
        out.add(f"#   not listed: {_comment(listed.error)}")
    elif not listed.items:
        out.add("#   none listed")
    for item in listed.items[:MESSAGING_SHOWN]:
        out.add(f"#   {_comment(item.id)}", _comment(item.name))
    rest = len(listed.items) - MESSAGING_SHOWN
    if rest > 0:
        out.add(f"#   ... and {rest} more (the Braze dashboard, or GET {listed.path}, lists all)")


def _comment(text: str) -> str:
    """Text that stays on its comment line: no control characters or line breaks."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= _MAX_NAME else flat[: _MAX_NAME - 3] + "..."


def _quote(text: str) -> str:
    """A YAML double-quoted scalar that reads back as exactly ``text``."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x10000:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    return '"' + "".join(out) + '"'


_HEAD = """\
# braze-export config, written by `{command}` (braze-export {version}).
# Every key says what it does; docs/reference/config.md lists every key and its default.
# Next: braze-export doctor THIS_FILE{flag}   (first contact with the workspace: 1-3 requests)
#       braze-export plan THIS_FILE{flag}     (the requests a run makes, and how long it takes)
#       braze-export run THIS_FILE{flag}
# After editing it: braze-export validate THIS_FILE (checks it, sends nothing)."""

_SANDBOX_NOTE = """\
# The ids below come from the sandbox: they are invented (hence --sandbox above). Write a
# config for your workspace with `braze-export init --discover`."""

_REST = """\

limits:                               # how fast: the share of Braze's rate limit to use
  requests_per_hour: 250000           # the workspace's rate-limit pool (Braze's default);
                                      # production sends draw from it too
  share: 0.25                         # this export uses at most a quarter of it
  reserve: 0.1                        # pause when 10% of the pool is left, until it resets
  concurrency: 16                     # requests in flight at most

timezone: UTC                         # days are cut at midnight in this IANA zone
                                      # (America/New_York, ...); hour series are UTC hours

output:                               # where the files go
  dir: exports                        # a directory, or s3://bucket/prefix, gs://..., az://...
  format: jsonl                       # jsonl, csv or parquet (pip install 'braze-export[parquet]')

exports:                              # each export: one series, the product of its id lists"""
