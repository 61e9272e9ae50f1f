"""The lists a run reads at its start: the config's ``{discover: ...}`` ids, resolved, then the
plan, then the plan's campaign and Canvas windows cut by their details
(:mod:`exporter.refine`); and the dimension tables.

Each list the config discovers from is read once per query (the campaign and Canvas lists
are read apart for archived ones or an ``edited_since``), whatever filters its exports ask
of it (:func:`exporter.plan.discovery_needs`), all lists at the same time, each through the
budget of its pool; each filter is then applied to what was listed. The campaign and Canvas
lists' ``last_edited`` of each id is kept for the details (:attr:`Discovery.listed`). What
they found is planned like ids written in the config. A discovery that fails (a 403 for the list's
permission, a list that cannot be read to its end) leaves only the exports that depend on it
without series: the others run, the run ends with exit status 1 and the manifest says why. A
401 stops the run (exit 3), as in the pipeline; a host that never answers is exit 4.

Every list read to its end is written as its dimension table (:mod:`exporter.dimensions`),
whether discovery read it or the config's ``dimensions:`` asked for it (those are read the same
way, alongside). A table is written only from a read of the whole list: a campaign or Canvas
read with ``edited_since`` (Braze's ``last_edit.time[gt]``) lists a part, so it writes no
table; where one such list is read with and without archived items, the read with them writes
it. A list that cannot be read to its end leaves its last good table as it was, and ends the
run with exit status 1 as a failed discovery does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

from exporter.client import Response
from exporter.config import Config, Discover, DiscoverKey
from exporter.dimensions import TABLES, TableWriter, table_of, table_path
from exporter.discover import Discovered, DiscoverSpec, ListFetch, discover, keeps
from exporter.errors import (
    AuthError,
    DiscoveryError,
    ExporterError,
    RetryableError,
    TransportError,
    Unreachable,
)
from exporter.messaging import MESSAGING_LISTS
from exporter.pipeline import Pipeline
from exporter.plan import Plan, PlanRequest, discovery_needs
from exporter.ratelimit import Budget
from exporter.refine import Skipping
from exporter.series import DIMENSIONS, WORKSPACE_POOL, ListSource

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

Key = tuple[str, DiscoverKey]
# One read of a list: (its dimension, include_archived, edited_since as an ISO date).
ListKey = tuple[str, bool, str | None]


class _Counted:
    """A ListFetch that counts what it sends, so a discovery that fails still says what it
    cost, and holds each request ``in_flight`` (:meth:`exporter.pipeline.Pipeline.in_flight`)
    so a stop gives it the grace."""

    def __init__(
        self, fetch: ListFetch, in_flight: Callable[[], AbstractContextManager[None]]
    ) -> None:
        self.fetch = fetch
        self.in_flight = in_flight
        self.requests = 0
        self.pages = 0  # answers received

    async def get_list(self, source: ListSource, page: int) -> Response:
        self.requests += 1
        with self.in_flight():
            response = await self.fetch.get_list(source, page)
        self.pages += 1
        return response


INTERRUPTED = "interrupted"  # a discovery's error when the run was stopped during it


class Discovery:
    """Reads the lists of one run: its discoveries and, given ``tables``, the dimension tables
    (``clock``: when a list was read, epoch seconds); keeps what they found for the manifest
    (``docs``: the discoveries, ``table_docs``: the tables)."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        pools: dict[str, Budget],
        tables: TableWriter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.pools = pools
        self.tables = tables
        self.clock = clock
        self.needs = discovery_needs(config)
        self.found: dict[Key, tuple[str, ...]] = {}
        self.docs: list[dict[str, Any]] = []
        self.table_docs: list[dict[str, Any]] = []
        self.failed: list[str] = []
        # The list's last_edited of each campaign or Canvas listed: (param, id) -> time.
        self.listed: dict[tuple[str, str], datetime | None] = {}
        self.skipping = Skipping(config, pipeline, pools, self.listed)
        self.plan: Plan | None = None
        # Each list read once per query: for its discoveries' filters, and for a table the
        # config asks (the whole list, archived ones left out as Braze lists it by default).
        self.lists: dict[ListKey, dict[Key, Discover]] = {}
        for key, spec in self.needs.items():
            self.lists.setdefault((key[0], key[1][3], key[1][4]), {})[key] = spec
        if tables is not None:
            for name in config.dimensions:
                param = TABLES[name][0]
                if not any(k[0] == param and k[2] is None for k in self.lists):
                    self.lists[(param, False, None)] = {}
        # Which read writes each list's table: a whole one, with archived items if read so.
        self.table_reads: set[ListKey] = set()
        for param in {k[0] for k in self.lists}:
            whole = sorted(k for k in self.lists if k[0] == param and k[2] is None)
            if whole:
                self.table_reads.add(whole[-1])  # (param, True, None) sorts after False

    def found_or_nothing(self) -> dict[Key, tuple[str, ...]]:
        """What was found, and no ids for a discovery that did not finish."""
        return {key: self.found.get(key, ()) for key in self.needs}

    async def run(self, request: Plan | PlanRequest) -> Plan:
        """Read the lists, then plan (with no ids for a discovery that did not finish; a Plan
        is taken as it is). A stop (a signal) ends the reading as it ends the data phase:
        what is in flight gets the pipeline's grace period, then is cancelled."""
        if self.lists:
            await self.pipeline.under_grace(
                [asyncio.create_task(self._list(p, specs)) for p, specs in self.lists.items()]
            )
            order = list(TABLES)
            self.table_docs.sort(key=lambda doc: order.index(doc["table"]))
        if isinstance(request, Plan):
            self.plan = request
            return request
        self.plan = request.build(self.found_or_nothing())
        for warning in self.plan.warnings:
            log.warning("%s", warning, extra={"event": "plan_warning"})
        log.info(
            "planned %d series with the discovered ids",
            len(self.plan.series),
            extra={"event": "planned"},
        )
        return self.plan

    async def refine(self, plan: Plan) -> Plan:
        """``plan`` with its campaign and Canvas windows cut to the days that could have data
        (:mod:`exporter.refine`), which becomes :attr:`plan`."""
        self.plan = await self.skipping.run(plan)
        return self.plan

    def status(self) -> str:
        done = len({doc["endpoint"] for doc in self.docs + self.table_docs})
        return f"reading lists: {done} of {len(self.lists)} done"

    def summary(self) -> list[str]:
        lines = []
        reads = Counter((doc["config_key"], doc["endpoint"]) for doc in self.docs)
        for doc in self.docs:
            head = f"discovery: {doc['config_key']} from {doc['endpoint']}"
            if reads[doc["config_key"], doc["endpoint"]] > 1:  # which filter is which
                names = doc["exports"]
                head += f" (export{'s' if len(names) > 1 else ''} {', '.join(names)})"
            if doc["error"] == INTERRUPTED:
                lines.append(
                    f"{head}: interrupted after {doc['pages']} page(s), {doc['requests']} "
                    "request(s); the exports that discover them got no series this run"
                )
            elif doc["error"] is not None:
                lines.append(f"{head}: FAILED after {doc['requests']} request(s): {doc['error']}")
            else:
                lines.append(
                    f"{head}: {len(doc['ids'])} kept, {doc['skipped']} filtered out, in "
                    f"{doc['pages']} page(s), {doc['requests']} request(s)"
                )
        for doc in self.table_docs:
            head = f"dimensions: {doc['table']} from {doc['endpoint']}"
            if doc["error"] is not None:
                lines.append(
                    f"{head}: FAILED after {doc['requests']} request(s): {doc['error']}; the "
                    f"last good table {doc['path']} (if any) is left as it was"
                )
            else:
                lines.append(
                    f"{head}: {doc['rows']} row(s) in {doc['path']}, listed at "
                    f"{doc['listed_at']} ({doc['requests']} request(s))"
                )
        for name, pool in self.pools.items():
            if name != WORKSPACE_POOL and pool.acquired:  # the workspace's is the budget line
                lines.append(
                    f"pool {name}: {pool.acquired} request(s) paced, allowed "
                    f"{pool.allowed_per_hour:,.0f}/hour; paused {pool.pauses} time(s) for "
                    "the reserve or a 429"
                )
        return lines + self.skipping.summary()

    async def _list(self, read_key: ListKey, specs: dict[Key, Discover]) -> None:
        """Read one list once per query (archived ones or not, edited since), whatever filters
        the config asks of it, apply each, and write its dimension table when this read is
        the one that writes it."""
        param, include_archived, since = read_key
        wanted = {key: discover_spec(param, spec) for key, spec in specs.items()}
        # One read serves every filter: with one filter it filters as it reads, with several
        # (or none: a table only) it keeps every listed item and filters them afterwards.
        read = (
            next(iter(wanted.values()))
            if len(wanted) == 1
            else DiscoverSpec(
                param,
                analytics_only=False,
                include_archived=include_archived,
                edited_since=_since(since),
            )
        )
        source = read.source
        pipeline = self.pipeline
        error: str | None = None
        found: Discovered | None = None
        fetch = _Counted(pipeline.client, pipeline.in_flight)
        try:
            found = await discover(
                fetch,
                read,
                budget=self.pools[source.pool],
                retry=pipeline.policy,
                stopping=lambda: pipeline.result.interrupted,
            )
        except asyncio.CancelledError:  # stopped by a signal: still say what it had done
            self._record(param, specs, wanted, None, INTERRUPTED, fetch)
            raise
        except AuthError as exc:
            if exc.status == 401:
                pipeline.result.auth_error = exc
            error = exc.reason  # names the permission
        except TransportError as exc:
            if exc.connect_failed:
                pipeline.result.unreachable = pipeline.cannot_reach(exc)
            error = str(exc)
        except Unreachable as exc:  # a redirect
            pipeline.result.unreachable = exc
            error = str(exc)
        except (DiscoveryError, RetryableError) as exc:
            error = exc.reason if isinstance(exc, DiscoveryError) else str(exc)
        except ExporterError as exc:
            error = str(exc)
        listed_at = datetime.fromtimestamp(self.clock(), UTC)
        failed = found is None and not pipeline.result.interrupted
        if found is None and pipeline.result.interrupted:
            error = INTERRUPTED
        if failed:
            self.failed.append(param)
        if specs and failed:
            log.error(
                "discovery of %s from %s failed: %s; exports that discover them get no "
                "series this run",
                DIMENSIONS[param].config_key,
                source.path,
                error,
                extra={"event": "discovery_failed"},
            )
        if found is not None:
            for item in found.items:
                self.listed[(param, item.id)] = item.last_edited
        self._record(param, specs, wanted, found, error, fetch)
        if self.tables is not None and read_key in self.table_reads:
            await self._table(source, found, fetch.requests, error, listed_at)

    def _record(
        self,
        param: str,
        specs: dict[Key, Discover],
        wanted: dict[Key, DiscoverSpec],
        found: Discovered | None,
        error: str | None,
        fetch: _Counted,
    ) -> None:
        """Keep the ids each filter found and the manifest's account of the discovery."""
        for n, (key, spec) in enumerate(specs.items()):
            source = wanted[key].source
            ids: tuple[str, ...] = ()
            if found is not None:
                ids = tuple(i.id for i in found.items if keeps(wanted[key], i))
                self.found[key] = ids
                state = self.pipeline.state
                if state is not None:  # for plan, should the run stop before their data
                    state.keep_found(param, key[1], ids)
                if not ids:
                    log.warning(
                        "%s: discovery found no id to export (%d listed, all filtered out)",
                        source.path,
                        len(found.items),
                        extra={"event": "discovered_nothing"},
                    )
            first = n == 0  # the list's cost is counted once, on its first filter
            self.docs.append(
                {
                    "config_key": DIMENSIONS[param].config_key,
                    "dimension": param,
                    "endpoint": source.path,
                    "pool": source.pool,
                    "discover": spec.discover,
                    "name": spec.name,
                    "tags": spec.tags,
                    **(
                        {
                            "include_archived": spec.include_archived,
                            "edited_since": key[1][4],
                        }
                        if param in MESSAGING_LISTS
                        else {}
                    ),
                    "exports": [
                        e.name
                        for e in self.config.exports
                        if isinstance(found_spec := e.values(param), Discover)
                        and found_spec.key == key[1]
                    ],
                    "ids": list(ids),
                    "requests": fetch.requests if first else 0,
                    "pages": (found.pages if found else fetch.pages) if first else 0,
                    "same_read_as_above": not first,
                    "skipped": len(found.items) - len(ids) if found else None,
                    "malformed": found.malformed if found else None,
                    "duplicates": found.duplicates if found else None,
                    "error": error,
                }
            )

    async def _table(
        self,
        source: ListSource,
        found: Discovered | None,
        requests: int,
        error: str | None,
        listed_at: datetime,
    ) -> None:
        """Write the list's table when it was read to its end; else leave the last good one
        and say why. A table that cannot be written fails the run (exit 1) like a listing.
        The read must be the whole list: discovery's filters apply after it, in memory (a
        server-side filter such as ``last_edit.time[gt]`` would make the table a part)."""
        assert self.tables is not None
        name = table_of(source.dimension)
        doc: dict[str, Any] = {
            "table": name,
            "endpoint": source.path,
            "pool": source.pool,
            "path": table_path(name, self.tables.fmt),
            "requests": requests,
            "pages": None if found is None else found.pages,
            "rows": None,
            "sha256": None,
            "listed_at": None,
            "malformed": None if found is None else found.malformed,
            "duplicates": None if found is None else found.duplicates,
            "error": error,
        }
        if found is not None:
            try:
                written = await self.tables.replace(name, [i.raw for i in found.items], listed_at)
            except ExporterError as exc:
                doc["error"] = str(exc)
                self.failed.append(source.dimension)
            else:
                doc.update(rows=written.rows, sha256=written.sha256, listed_at=written.listed_at)
        elif error is None:
            doc["error"] = "stopped before the list's end (the run is stopping)"
        if doc["error"] is not None:
            log.error(
                "dimension table %s: %s; the last good table stays",
                doc["path"],
                doc["error"],
                extra={"event": "dimension_failed"},
            )
        self.table_docs.append(doc)


def discover_spec(param: str, spec: Discover) -> DiscoverSpec:
    """What a config's ``{discover: ...}`` of ``param`` keeps, as discovery applies it."""
    since = spec.edited_since
    return DiscoverSpec(
        param,
        None if spec.name is None else re.compile(spec.name),
        tuple(spec.tags or ()),
        spec.discover == "analytics_enabled",
        spec.include_archived,
        None if since is None else datetime.combine(since, datetime.min.time(), UTC),
    )


def _since(iso_date: str | None) -> datetime | None:
    """An ``edited_since`` as the config key holds it (an ISO date), as midnight UTC."""
    return None if iso_date is None else datetime.fromisoformat(iso_date).replace(tzinfo=UTC)
