"""The YAML config: load, validate, resolve defaults.

Every problem becomes one line ``FILE: key.path: what is wrong, got VALUE`` inside a single
:class:`ConfigError`, so a user fixes all of them in one pass and nothing is fetched or
written before the config is known to be good. A key given twice is such a problem too: YAML
would let the last one win silently (a second ``exports:`` dropping the first).
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib.util
import json
import os
import re
import stat
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.errors import ConfigError
from exporter.redact import MIN_KEY_CHARS, holds_secret, register_secret
from exporter.series import DIMENSIONS, KINDS, SERIES_NAMES, WORKSPACE_POOL

__all__ = [
    "CANVAS_FLAGS",
    "DEFAULT_ENDPOINT",
    "DEFAULT_KEY_ENV",
    "ENDPOINT_ENV",
    "FIRST_DATE",
    "KEY_FILE_MAX_BYTES",
    "LAST_DATE",
    "MAX_PAUSE_S",
    "UNITS",
    "ApiKey",
    "BrazeSettings",
    "Config",
    "Discover",
    "DiscoverKey",
    "Export",
    "Limits",
    "Output",
    "Pool",
    "Pools",
    "TableName",
    "Unit",
    "Window",
    "check_date",
    "check_endpoint",
    "key_source",
    "load_config",
    "read_key_file",
    "reads_like_null",
    "register_env_key",
    "resolve_api_key",
]

DEFAULT_ENDPOINT = "https://rest.iad-01.braze.com"
DEFAULT_KEY_ENV = "BRAZE_API_KEY"
ENDPOINT_ENV = "BRAZE_REST_ENDPOINT"
# Braze's rate-limit window is an hour: no pause needs to outlast it by more than 5 minutes.
MAX_PAUSE_S = 3900.0
_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
_MAX_ID = 256
# Dates the planner can do arithmetic on (hour periods count from 1970) with room to spare.
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(2999, 12, 31)
# Ids a YAML writer most likely meant as null (only an unquoted null or ~ is one).
_NULL_LIKE = {"null", "none", "nil", "~"}

Unit = Literal["day", "hour"]
UNITS: tuple[Unit, ...] = ("day", "hour")
SeriesName = Literal[
    "sessions",
    "events",
    "purchases_quantity",
    "purchases_revenue",
    "dau",
    "new_users",
    "uninstalls",
    "mau",
    "segment_size",
    "campaigns",
    "canvas",
    "sends",
]
PoolName = Literal["workspace", "lists", "campaigns"]
# The lists a run may write as dimension tables (exporter.dimensions.TABLES, which checks).
TableName = Literal["segments", "events", "products", "campaigns", "canvases"]
# The config's names are series.py's: a series added there and not here fails at import.
assert set(typing.get_args(SeriesName)) == set(SERIES_NAMES), "SeriesName != series.KINDS"
# Ids are data: anything printable goes, the writers encode it before it touches a path.
Id = Annotated[str, StringConstraints(min_length=1, max_length=_MAX_ID)]
LaxDate = Annotated[date, Field(strict=False)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BrazeSettings(_Model):
    endpoint: str = DEFAULT_ENDPOINT
    api_key_env: Annotated[
        str,
        StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"),
        Field(
            description="The environment variable holding the REST API key. When it is unset "
            "or empty, the file `${api_key_env}_FILE` names is read instead: UTF-8 text "
            "holding the key alone; whitespace around it (a trailing newline) is stripped, "
            "quotes or spaces inside are refused."
        ),
    ] = DEFAULT_KEY_ENV
    timeout_s: float = Field(30.0, gt=0, le=600)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        return check_endpoint(value)


class Pool(_Model):
    """A rate-limit pool other than the workspace's (whose numbers are the top-level
    ``limits.requests_per_hour``, ``share`` and ``reserve``)."""

    requests_per_hour: int = Field(1_000, ge=1, le=1_000_000_000)
    share: float = Field(1.0, gt=0, le=1)
    reserve: float = Field(0.1, ge=0, lt=1)


class CampaignsPool(Pool):
    """The campaigns pool: its own default rate, so that setting one key of it (``share``)
    keeps the others' defaults, not the lists pool's 1,000/hour."""

    # /campaigns/data_series: 50,000 requests per minute in Braze's current "Export campaign
    # analytics" page (rate limit section).
    requests_per_hour: int = Field(50_000 * 60, ge=1, le=1_000_000_000)


class Pools(_Model):
    # Braze documents /events/list and /purchases/product_list with their own 1,000/hour.
    lists: Pool = Pool()
    # /campaigns/data_series: 50,000 requests per minute in Braze's current "Export campaign
    # analytics" page (rate limit section); older pages put it in the workspace's pool, which
    # ``pool_of: {campaigns: workspace}`` restores.
    campaigns: CampaignsPool = CampaignsPool()


class Limits(_Model):
    # 10**9 is far above any Braze plan; the throughput benchmark needs 10**8 to lift the limiter.
    requests_per_hour: int = Field(250_000, ge=1, le=1_000_000_000)
    share: float = Field(1.0, gt=0, le=1)
    reserve: float = Field(0.1, ge=0, lt=1)
    concurrency: int = Field(16, ge=1, le=1000)
    max_attempts: int = Field(8, ge=1, le=100)
    max_pause_s: float = Field(MAX_PAUSE_S, ge=1, le=MAX_PAUSE_S)
    pools: Pools = Pools()
    # A series drawing from another pool than series.py says (Braze's docs disagree on the
    # purchases series): {series: pool}.
    pool_of: dict[SeriesName, PoolName] = {}

    @model_validator(mode="after")
    def _some_pace(self) -> Limits:
        # share: 1e-300 is in (0, 1] but paces nothing: a run would wait forever.
        pools = [("", self), *((f"pools.{n}.", p) for n, p in self.pools)]
        for where, pool in pools:
            if pool.requests_per_hour * pool.share < 1:
                raise ValueError(
                    f"{where}requests_per_hour x share is "
                    f"{pool.requests_per_hour * pool.share:.3g} requests/hour: at least 1 is "
                    "needed for a run to make progress"
                )
        return self

    def pool(self, name: str) -> tuple[int, float, float]:
        """(requests_per_hour, share, reserve) of a pool."""
        pool: Limits | Pool = self if name == WORKSPACE_POOL else getattr(self.pools, name)
        return pool.requests_per_hour, pool.share, pool.reserve

    @property
    def pool_names(self) -> tuple[str, ...]:
        """Every pool: the workspace's, then those under ``pools``."""
        return (WORKSPACE_POOL, *Pools.model_fields)

    def pool_for(self, kind: str) -> str:
        """The pool a series kind draws from: the config's ``pool_of``, else Braze's docs."""
        for name, pool in self.pool_of.items():
            if name == kind:
                return pool
        return KINDS[kind].pool


class Output(_Model):
    dir: Annotated[str, StringConstraints(min_length=1)] = "exports"
    format: Literal["jsonl", "csv", "parquet"] = "jsonl"

    @field_validator("format")
    @classmethod
    def _writable(cls, value: str) -> str:
        # pyarrow is an optional extra: say so before anything is fetched.
        if value == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ValueError(
                "parquet needs pyarrow, which is not installed: pip install 'braze-export[parquet]'"
            )
        return value

    @field_validator("dir")
    @classmethod
    def _home(cls, value: str) -> str:
        return expand_home(value)


class Window(_Model):
    days: int | None = Field(None, ge=1, le=36_600)
    start: LaxDate | None = None
    end: LaxDate | None = None

    @field_validator("start", "end")
    @classmethod
    def _in_range(cls, value: date | None) -> date | None:
        return None if value is None else check_date(value)

    @model_validator(mode="after")
    def _one_form(self) -> Window:
        if self.days is not None and (self.start is not None or self.end is not None):
            raise ValueError("give either days or start/end, not both")
        if self.days is None and (self.start is None or self.end is None):
            raise ValueError("needs days, or both start and end")
        if self.start is not None and self.end is not None and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self


class Discover(_Model):
    """``{discover: ...}`` in place of a list of ids: resolved at run time from Braze's list
    endpoints (``analytics_enabled`` for segment_ids, ``all`` for the others). ``tags``
    filter segments, campaigns and Canvases; ``include_archived`` and ``edited_since`` (a
    UTC date: last edited after its midnight) campaigns and Canvases only."""

    discover: Literal["analytics_enabled", "all"]
    name: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = Field(
        None,
        description="A regular expression (Python's `re.search`: it matches anywhere in the "
        "name unless anchored with `^`/`$`): only items whose name matches are exported.",
    )
    tags: Annotated[list[Id], Field(min_length=1)] | None = Field(
        None,
        description="Segments, campaigns and Canvases: keep an item carrying at least one of "
        "these tags (any one of them, not all).",
    )
    include_archived: bool = Field(
        False,
        description="Campaigns and Canvases: list archived ones too (Braze lists them only "
        "when asked).",
    )
    edited_since: LaxDate | None = Field(
        None,
        description="Campaigns and Canvases: keep those last edited after this date's UTC "
        "midnight (Braze's `last_edit.time[gt]`).",
    )

    @field_validator("name")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except (re.error, OverflowError, RecursionError) as exc:
                raise ValueError(f"is not a valid regular expression: {exc}") from None
        return value

    @field_validator("edited_since")
    @classmethod
    def _since(cls, value: date | None) -> date | None:
        return None if value is None else check_date(value)

    @property
    def key(self) -> DiscoverKey:
        since = None if self.edited_since is None else self.edited_since.isoformat()
        return (
            self.discover,
            self.name,
            tuple(sorted(self.tags or ())),
            self.include_archived,
            since,
        )


# What makes two discoveries alike: (discover, name, sorted tags, include_archived,
# edited_since as an ISO date).
DiscoverKey = tuple[str, str | None, tuple[str, ...], bool, str | None]


# The dimension lists of an export, by config key; which ones a series takes is series.py's.
_DIMENSION_KEYS = {d.config_key: d for d in DIMENSIONS.values()}
# Every key naming a dimension's values: the lists, and the single values (sends' campaign_id).
_ID_KEYS = {
    **_DIMENSION_KEYS,
    **{p: DIMENSIONS[p] for k in KINDS.values() for p in k.single},
}
_TAGGED_KEYS = ("segment_ids", "campaign_ids", "canvas_ids")  # lists whose items carry tags
_LISTED_KEYS = ("campaign_ids", "canvas_ids")  # lists with archived items and last_edited
CANVAS_FLAGS = ("include_variant_breakdown", "include_step_breakdown", "include_deleted_step_data")


def _ids_or_discover(value: Any) -> str:
    return "discover" if isinstance(value, dict | Discover) else "ids"


# A list of ids, or {discover: ...}: tagged, so an error speaks of the form that was given.
_TAGS = ("ids", "discover")
_DISCOVER_FORMS = typing.get_args(Discover.model_fields["discover"].annotation)
IdsOrDiscover = Annotated[
    Annotated[list[Id | None], Field(min_length=1), Tag("ids")]
    | Annotated[Discover, Tag("discover")],
    Discriminator(_ids_or_discover),
]
StrictIdsOrDiscover = Annotated[
    Annotated[list[Id], Field(min_length=1), Tag("ids")] | Annotated[Discover, Tag("discover")],
    Discriminator(_ids_or_discover),
]


class Export(_Model):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    series: SeriesName = "sessions"
    segment_ids: IdsOrDiscover | None = None
    app_ids: Annotated[list[Id | None], Field(min_length=1)] | None = None
    events: StrictIdsOrDiscover | None = None
    products: IdsOrDiscover | None = None
    # Message analytics (series campaigns, canvas, sends): the ids under Braze's names.
    campaign_ids: StrictIdsOrDiscover | None = None
    canvas_ids: StrictIdsOrDiscover | None = None
    campaign_id: Id | None = None  # sends: the campaign the send_ids belong to
    send_ids: Annotated[list[Id], Field(min_length=1)] | None = None
    # Canvas only: Braze's request flags (each false in Braze's default; true here, so that
    # every step's and variant's rows arrive unless asked otherwise).
    include_variant_breakdown: bool | None = None
    include_step_breakdown: bool | None = None
    include_deleted_step_data: bool | None = None
    # Campaigns and Canvases: read only the days their details say could have data
    # (exporter.activity); false reads every day of the window and no details.
    skip_inactive_days: bool | None = None
    units: Annotated[list[Unit], Field(min_length=1)] = ["day"]
    window: Window
    # Opt-in for ids that read like null ('null', 'None', ...): refused unless this is true.
    allow_null_like_ids: bool = False

    def values(self, param: str) -> list[str | None] | Discover:
        """The ids listed for a dimension (``[None]`` when not given), or its discovery."""
        value: str | list[str | None] | Discover | None = getattr(
            self, KINDS[self.series].config_key(param)
        )
        if isinstance(value, str):
            return [value]
        return [None] if value is None else value

    def flags(self) -> tuple[tuple[str, str], ...]:
        """The series' request flags (Canvas' breakdowns) as query parameters, each given
        or true by default; none for the other series."""
        if self.series != "canvas":
            return ()
        return tuple(
            (name, "true" if getattr(self, name) in (None, True) else "false")
            for name in CANVAS_FLAGS
        )


def _series_problems(exports: object) -> Iterator[str]:
    """Dimensions and units an export's series does not take, or requires and lacks.

    Reads the exports as written (strict validation changes no value these checks read), so
    they run beside the schema's own errors, even for an export the schema refuses; a value
    of the wrong type is left to the schema's message."""
    for i, export in _mappings(exports):
        series = export.get("series", "sessions")
        kind = KINDS.get(series) if isinstance(series, str) else None
        if kind is None:
            continue  # the schema names the unknown series
        takes = [kind.config_key(p) for p in kind.dimensions]
        for key, dim in _ID_KEYS.items():
            where = f"exports[{i}].{key}"
            value = export.get(key)
            taken = dim.param in kind.dimensions and kind.config_key(dim.param) == key
            if value is None:
                if taken and dim.param in kind.required:
                    yield f"{where}: required for series {series}"
            elif not taken:
                yield (
                    f"{where}: series {series} takes no {key} (it takes "
                    f"{', '.join(takes) or 'no dimension'})"
                )
            elif isinstance(value, dict):
                wanted = "analytics_enabled" if key == "segment_ids" else "all"
                found = value.get("discover")
                if found in _DISCOVER_FORMS and found != wanted:
                    yield f"{where}.discover: must be {wanted!r} for {key}, got {found!r}"
                if value.get("tags") is not None and key not in _TAGGED_KEYS:
                    yield f"{where}.tags: tags filter segments, campaigns and Canvases, not {key}"
                for option in ("include_archived", "edited_since"):
                    if value.get(option) is not None and key not in _LISTED_KEYS:
                        yield (
                            f"{where}.{option}: filters campaign_ids and canvas_ids only, not {key}"
                        )
            elif (
                isinstance(value, list)
                and None in value
                and dim.param in kind.required
                and key != "events"  # the schema refuses a null event itself
            ):
                yield f"{where}: series {series} needs an id here, null is not one"
        for flag in CANVAS_FLAGS:
            if export.get(flag) is not None and series != "canvas":
                yield f"exports[{i}].{flag}: only series canvas takes it, not {series}"
        if export.get("skip_inactive_days") is not None and series not in ("campaigns", "canvas"):
            yield (
                f"exports[{i}].skip_inactive_days: only series campaigns and canvas take it, "
                f"not {series}"
            )
        units = export.get("units", ["day"])
        for j, unit in enumerate(units if isinstance(units, list) else []):
            if unit in UNITS and unit not in kind.units:
                yield (
                    f"exports[{i}].units[{j}]: series {series} has no unit {unit!r} "
                    f"(Braze serves it by {' and '.join(kind.units)})"
                )


def _flag_conflicts(exports: object) -> Iterator[str]:
    """A Canvas two exports ask for with other breakdown flags: both would write its files,
    each with other rows."""
    first: dict[str, tuple[int, tuple[object, ...]]] = {}
    flags_of: dict[int, tuple[object, ...]] = {}  # every Canvas export's flags
    discovering: list[int] = []
    for i, export in _mappings(exports):
        ids = export.get("canvas_ids")
        if export.get("series") != "canvas":
            continue
        flags = flags_of[i] = tuple(export.get(flag) in (None, True) for flag in CANVAS_FLAGS)
        if isinstance(ids, dict):
            discovering.append(i)
        if not isinstance(ids, list):
            continue
        for canvas in ids:
            if not isinstance(canvas, str):
                continue
            j, theirs = first.setdefault(canvas, (i, flags))
            if theirs != flags:
                yield (
                    f"exports[{i}].canvas_ids: Canvas {canvas!r} is also in exports[{j}] with "
                    "other include_* flags; give both exports the same flags"
                )
    for i in discovering[:1]:  # a discovery may find any Canvas, the others' too
        others = [k for k, flags in flags_of.items() if flags != flags_of[i]]
        if not others:
            break
        yield (
            f"exports[{i}].canvas_ids: a discovery may find the Canvases of "
            f"{', '.join(f'exports[{k}]' for k in others)}, which ask other include_* flags; "
            "give every Canvas export the same flags"
        )


def _duplicate_names(exports: object) -> Iterator[str]:
    """An export name given to two exports (their state and manifest entries would mix)."""
    first: dict[str, int] = {}
    for i, export in _mappings(exports):
        name = export.get("name")
        if not isinstance(name, str):
            continue
        if name in first:
            yield (
                f"exports[{i}].name: duplicate export name {name!r} "
                f"(also exports[{first[name]}].name)"
            )
        else:
            first[name] = i


def _mappings(exports: object) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(index, export)`` for each export written as a mapping (the schema names the rest)."""
    for i, export in enumerate(exports if isinstance(exports, list) else []):
        if isinstance(export, dict):
            yield i, export


class _File(_Model):
    version: Literal[1]
    braze: BrazeSettings = BrazeSettings()
    limits: Limits = Limits()
    timezone: str = "UTC"
    # Braze restates recent days: periods this close to the as-of date stay provisional.
    settle_days: int = Field(3, ge=0, le=100)
    output: Output = Output()
    exports: Annotated[list[Export], Field(min_length=1)]
    # Lists to write as dimension tables every run, besides those discovery reads anyway.
    dimensions: list[TableName] = []

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value == "localtime":
            raise ValueError(
                "'localtime' is the zone of whatever machine runs the export, so days would be "
                "cut differently on each: name an IANA zone such as 'America/New_York' or 'UTC'"
            )
        try:
            ZoneInfo(value)
            known = value in _zone_names()  # exact case: 'utc' opens on some file systems
        except (ZoneInfoNotFoundError, ValueError):
            known = False
        if not known:
            hint = _did_you_mean(value, _zone_names())
            raise ValueError(f"unknown IANA time zone {value!r}{hint}")
        return value


@dataclass(frozen=True)
class Config:
    """A validated config with every default resolved."""

    source: Path
    braze: BrazeSettings
    limits: Limits
    timezone: str
    output: Output
    exports: tuple[Export, ...]
    settle_days: int = 3
    dimensions: tuple[str, ...] = ()  # the config's ``dimensions:``, each once, in its order

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def fingerprint(self) -> str:
        """sha256 of the resolved config (it holds no secret, only the key's variable name)."""
        doc = {
            "braze": self.braze.model_dump(mode="json"),
            "limits": self.limits.model_dump(mode="json"),
            "timezone": self.timezone,
            "settle_days": self.settle_days,
            "output": self.output.model_dump(mode="json"),
            "exports": [e.model_dump(mode="json") for e in self.exports],
        }
        if self.dimensions:  # absent when empty: configs without the key keep their hash
            doc["dimensions"] = list(self.dimensions)
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()


class ApiKey:
    """The REST API key. Its repr and str never show it; only :meth:`reveal` does."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey('***')"

    __str__ = __repr__


def check_date(value: date) -> date:
    """A date the planner can work with."""
    if not FIRST_DATE <= value <= LAST_DATE:
        raise ValueError(f"must be a date from {FIRST_DATE} to {LAST_DATE}, got {value}")
    return value


def parse_day(text: str) -> date:
    """``YYYY-MM-DD`` as a date the planner can work with; ValueError says what is wrong."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"must be a date YYYY-MM-DD, got {text!r}") from None
    return check_date(day)


def expand_home(value: str) -> str:
    """``~`` and ``~user`` expanded; a ``~`` that cannot be is refused, never made a directory."""
    if value == "~" or value.startswith("~/"):
        home = os.environ.get("HOME")
        if home is not None and not os.path.isabs(home):
            # HOME="" or a relative HOME would put the output at / or somewhere unintended.
            raise ValueError(f"cannot expand '~': HOME is {home!r}, not an absolute path")
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        raise ValueError(f"cannot expand {value.split('/')[0]!r} (is HOME set?)")
    return expanded


def check_endpoint(value: str) -> str:
    """An https URL with a host and nothing else, or plain http on loopback (the sandbox)."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ValueError(f"must be an https:// URL such as {DEFAULT_ENDPOINT}, got {value!r}")
    if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
        raise ValueError("must use https:// (plain http is allowed only on loopback)")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise ValueError(f"has a port out of range 1..65535, got {value!r}") from None
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError("must be a bare host URL, with no query, fragment or credentials")
    if parts.path not in ("", "/"):
        raise ValueError(
            f"must be the instance's REST host only, such as {DEFAULT_ENDPOINT}, without a "
            f"path (got path {parts.path!r}); the exporter adds /sessions/data_series itself"
        )
    return value.strip().rstrip("/")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps dates as text, so a bad date is a config error, not a crash."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a config file; raise ConfigError listing every problem.
    The key in ``env`` is registered for redaction before anything is checked (the default
    variable's, then the one the file names): an error message may quote it."""
    env = os.environ if env is None else env
    register_env_key(DEFAULT_KEY_ENV, env)
    source = Path(path)
    if source.is_dir():
        raise ConfigError(f"{source}: is a directory, not a config file")
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    try:
        loader = _Loader(text)  # reads the first characters already: control characters fail here
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error: {first}") from None
    try:
        node = loader.get_single_node()
        problems = [] if node is None else list(_duplicate_keys(node, ""))
        raw = None if node is None else loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{source}: {where}YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{source}: YAML syntax error: {first}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # An explicit tag with a value it cannot take (`!!int abc`, `!!timestamp 2024-13-45`).
        raise ConfigError(f"{source}: YAML value error: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{source}: YAML nested too deeply to be a config") from None
    finally:
        loader.dispose()
    if not isinstance(raw, dict):
        got = "an empty file" if raw is None else type(raw).__name__
        raise ConfigError(f"{source}: must be a mapping with version: 1 and exports, got {got}")
    named = raw.get("braze")
    if isinstance(named, dict) and isinstance(named.get("api_key_env"), str):
        register_env_key(named["api_key_env"], env)
    model, invalid = _validate(raw)
    problems += invalid
    if problems or model is None:
        raise ConfigError("\n".join(f"{source}: {line}" for line in problems))
    braze = model.braze
    override = env.get(ENDPOINT_ENV)
    if override:
        try:
            braze = braze.model_copy(update={"endpoint": check_endpoint(override)})
        except ValueError as exc:
            raise ConfigError(f"{ENDPOINT_ENV}: {exc}") from None
    return Config(
        source=source,
        braze=braze,
        limits=model.limits,
        timezone=model.timezone,
        output=model.output,
        exports=tuple(model.exports),
        settle_days=model.settle_days,
        dimensions=tuple(dict.fromkeys(model.dimensions)),
    )


def _validate(raw: dict[str, Any]) -> tuple[_File | None, list[str]]:
    """The file's model (None when the schema refuses it) and every problem: the schema's
    and the checks across keys together, so that one pass names them all."""
    problems: list[str] = []
    try:
        model: _File | None = _File.model_validate(raw)
    except ValidationError as exc:
        model = None
        problems += [_describe(err) for err in exc.errors()]
    exports = raw.get("exports")
    problems += _duplicate_names(exports)
    problems += _series_problems(exports)
    problems += _flag_conflicts(exports)
    problems += _null_like_ids(exports)
    problems += _secret_holders(raw)
    return model, problems


_HOLDS_KEY = (
    "holds the API key: it would be written into directory and file names, the state and "
    "the manifest (where it is masked as ***, so they would no longer match); use another id"
)


def _secret_holders(raw: dict[str, Any]) -> Iterator[str]:
    """Ids and the output directory that hold the API key (registered for redaction before
    the file is checked): they name directories and go into the state, and the key must be
    in no file; masking it there would make the rows and the manifest lie."""
    output = raw.get("output")
    where = output.get("dir") if isinstance(output, dict) else None
    if isinstance(where, str) and holds_secret(where):
        yield f"output.dir: {_HOLDS_KEY.replace('use another id', 'use another directory')}"
    for i, export in _mappings(raw.get("exports")):
        for key in _DIMENSION_KEYS:
            ids = export.get(key)
            for j, value in enumerate(ids if isinstance(ids, list) else []):
                if isinstance(value, str) and holds_secret(value):
                    yield f"exports[{i}].{key}[{j}]: {_HOLDS_KEY}"


KEY_FILE_MAX_BYTES = 4096
"""The most a key file may hold: a Braze REST key is 36 characters, so a longer file (or a
device such as /dev/zero) is not a key file, and reading it whole could exhaust memory."""


def _key_file(name: str, env: Mapping[str, str]) -> Path | None:
    """The file ``${name}_FILE`` names when it is where the key is read from: ``$name`` is
    unset or empty (``NAME=""`` is how many CI systems spell "unset")."""
    if not (env.get(name) or "").strip() and env.get(f"{name}_FILE"):
        return Path(env[f"{name}_FILE"])
    return None


def key_source(name: str, env: Mapping[str, str] | None = None) -> str:
    """Where the key is read from, for messages: ``$NAME``, or ``$NAME_FILE (path)`` when
    ``$NAME`` is unset or empty and ``${NAME}_FILE`` is set."""
    key_file = _key_file(name, os.environ if env is None else env)
    return f"${name}" if key_file is None else f"${name}_FILE ({key_file})"


def read_key_file(name: str, path: Path) -> str:
    """The text of the key file ``${name}_FILE`` names, read without blocking and at most
    KEY_FILE_MAX_BYTES + 1 bytes of it. ConfigError (one line naming the file) when it cannot
    be opened, is no regular file (a FIFO would block, a device never ends), is longer than
    KEY_FILE_MAX_BYTES, or is not UTF-8 text."""
    where = f"{name}_FILE: cannot read {path}"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{where}: Is a directory")
        if not stat.S_ISREG(mode):
            raise ConfigError(f"{where}: not a regular file (a key file holds the key as text)")
        data = b""
        while len(data) <= KEY_FILE_MAX_BYTES and (chunk := os.read(fd, 1 + KEY_FILE_MAX_BYTES)):
            data += chunk
    except OSError as exc:
        raise ConfigError(f"{where}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_MAX_BYTES:
        raise ConfigError(
            f"{where}: it holds more than {KEY_FILE_MAX_BYTES} bytes, and a key file holds "
            "only the key (36 characters)"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: not a text file") from None


def register_env_key(name: str, env: Mapping[str, str] | None = None) -> None:
    """Register for redaction the key ``$name`` (or its ``_FILE``) holds, if it can be one,
    before anything could print it: a config error may quote it (an endpoint with the key as
    its path). Never raises: :func:`resolve_api_key` says what is wrong when the key is
    needed; a value shorter than MIN_KEY_CHARS cannot be registered (it is refused there)."""
    env = os.environ if env is None else env
    key_file = _key_file(name, env)
    try:
        value = env.get(name) if key_file is None else read_key_file(name, key_file)
    except ConfigError:
        return
    value = (value or "").strip()
    if len(value) >= MIN_KEY_CHARS:
        register_secret(value)


def resolve_api_key(config: Config, env: Mapping[str, str] | None = None) -> ApiKey:
    """The key from ``$api_key_env``, or, when that is unset or empty, from the file named by
    ``${api_key_env}_FILE`` (``NAME=""`` is how many CI systems spell "unset"; the file is
    read as :func:`read_key_file` says). ConfigError naming the source the key came from."""
    env = os.environ if env is None else env
    name = config.braze.api_key_env
    value = env.get(name)
    key_file = _key_file(name, env)
    source = key_source(name, env)[1:]
    if key_file is not None:
        value = read_key_file(name, key_file)
        if not value.strip():
            raise ConfigError(f"{name}_FILE: {key_file} is empty")
    if value is None:
        raise ConfigError(
            f"{config.source}: braze.api_key_env: environment variable {name} is not set "
            f"(set it to the REST API key, or set {name}_FILE to a file holding it)"
        )
    value = value.strip()
    if not value:
        raise ConfigError(f"{config.source}: braze.api_key_env: {name} is empty")
    if value[0] in "'\"" or any(c.isspace() for c in value):
        # Braze answers 401 to a quoted key; say so before spending a request on it.
        raise ConfigError(f"{config.source}: braze.api_key_env: {source} holds quotes or spaces")
    if len(value) < MIN_KEY_CHARS:
        # Braze's REST keys are 36-character UUIDs; a short value is a placeholder or a
        # truncation, and one too short could not be redacted from the output safely.
        raise ConfigError(
            f"{config.source}: braze.api_key_env: {source} holds {len(value)} character(s), "
            f"fewer than {MIN_KEY_CHARS}: that is no Braze REST API key (those are 36-character "
            "UUIDs)"
        )
    return ApiKey(value)


def _duplicate_keys(node: yaml.Node, path: str) -> Iterator[str]:
    """One line per key given twice in one mapping, at any depth (YAML keeps the last)."""
    todo: list[tuple[yaml.Node, str]] = [(node, path)]
    seen: set[int] = set()  # aliases share nodes: visit each once
    while todo:
        node, path = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            todo.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    continue  # (two `<<:` merge keys are duplicates too: YAML keeps the last)
                where = f"{path}.{key.value}" if path else str(key.value)
                line = key.start_mark.line + 1
                if (key.tag, key.value) in first:
                    yield (
                        f"{where}: duplicate key at line {line} "
                        f"(first at line {first[key.tag, key.value]}); give each key once"
                    )
                else:
                    first[key.tag, key.value] = line
                todo.append((value, where))


def reads_like_null(value: str) -> bool:
    """Whether an id is text a YAML writer most likely meant as null ('None', ' nil ')."""
    return value.strip().casefold() in _NULL_LIKE


def _null_like_ids(exports: object) -> Iterator[str]:
    """Ids such as 'null' or 'None': text, though the writer almost surely meant null."""
    for i, export in _mappings(exports):
        if export.get("allow_null_like_ids") is True:
            continue
        for key in _DIMENSION_KEYS:
            ids = export.get(key)
            if not isinstance(ids, list):
                continue
            for j, value in enumerate(ids):
                if not isinstance(value, str) or not reads_like_null(value):
                    continue
                meant = " (write null unquoted for the whole workspace)" if key == "app_ids" else ""
                yield (
                    f"exports[{i}].{key}[{j}]: {value!r} is text that reads like null{meant}; if "
                    f"it really is an id, set exports[{i}].allow_null_like_ids: true"
                )


# --- error wording -------------------------------------------------------------------------

_TYPE_NAMES = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "date_type": "a date YYYY-MM-DD",
}
_BOUNDS = {
    "greater_than": ">",
    "greater_than_equal": ">=",
    "less_than": "<",
    "less_than_equal": "<=",
}


def _describe(err: Any) -> str:
    loc: tuple[str | int, ...] = tuple(
        part
        for i, part in enumerate(err["loc"])
        if not (part in _TAGS and i and err["loc"][i - 1] in _DIMENSION_KEYS)
    )
    kind: str = err["type"]
    ctx: dict[str, Any] = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        known = _fields_at(loc[:-1])
        return f"{_path(loc)}: unknown key{_did_you_mean(str(loc[-1]), known)}"
    path = _path(loc) or "(top level)"
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return f"{path}: must be {_BOUNDS[kind]} {bound:g}, got {_show(value)}"
    if kind in _TYPE_NAMES:
        return f"{path}: must be {_TYPE_NAMES[kind]}, got {_show(value)}"
    if kind == "literal_error":
        return f"{path}: must be {ctx.get('expected')}, got {_show(value)}"
    if kind in ("too_short", "string_too_short"):
        return f"{path}: must not be empty"
    if kind in ("too_long", "string_too_long"):
        return f"{path}: is too long (at most {ctx.get('max_length')} characters)"
    if kind == "string_pattern_mismatch":
        return f"{path}: must be an environment variable name, got {_show(value)}"
    if kind.startswith("date_"):
        return f"{path}: must be a date YYYY-MM-DD, got {_show(value)}"
    if kind == "value_error":
        return f"{path}: {str(err['msg']).removeprefix('Value error, ')}"
    return f"{path}: {err['msg']}, got {_show(value)}"


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fields_at(loc: Sequence[str | int]) -> list[str]:
    """Names of the keys allowed at ``loc``, for did-you-mean hints."""
    model: Any = _File
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    same = [c for c in choices if c.casefold() == word.casefold()]  # 'utc' -> 'UTC'
    close = same or difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@functools.cache
def _zone_names() -> list[str]:
    import zoneinfo

    return sorted(zoneinfo.available_timezones() - {"localtime"})
