"""The config's ``{discover: ...}`` ids, resolved at the start of a run, then the plan.

Each list the config discovers from is read once, whatever filters its exports ask of it
(:func:`exporter.plan.discovery_needs`), all lists at the same time, each through the budget
of its pool; each filter is then applied to what was listed. What they found is
planned like ids written in the config. A discovery that fails (a 403 for the list's
permission, a list that cannot be read to its end) leaves only the exports that depend on it
without series: the others run, the run ends with exit status 1 and the manifest says why. A
401 stops the run (exit 3), as in the pipeline; a host that never answers is exit 4.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from exporter.client import Response
from exporter.config import Config, Discover
from exporter.discover import Discovered, DiscoverSpec, ListFetch, discover, keeps
from exporter.errors import (
    AuthError,
    DiscoveryError,
    ExporterError,
    RetryableError,
    TransportError,
    Unreachable,
)
from exporter.pipeline import Pipeline
from exporter.plan import Plan, PlanRequest, discovery_needs
from exporter.ratelimit import Budget
from exporter.series import DIMENSIONS, LISTS, WORKSPACE_POOL, ListSource

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

Key = tuple[str, tuple[str, str | None, tuple[str, ...]]]


class _Counted:
    """A ListFetch that counts what it sends, so a discovery that fails still says what it
    cost."""

    def __init__(self, fetch: ListFetch) -> None:
        self.fetch = fetch
        self.requests = 0
        self.pages = 0  # answers received

    async def get_list(self, source: ListSource, page: int) -> Response:
        self.requests += 1
        response = await self.fetch.get_list(source, page)
        self.pages += 1
        return response


INTERRUPTED = "interrupted"  # a discovery's error when the run was stopped during it


class Discovery:
    """Runs a config's discoveries for one run, and keeps what they found for the manifest."""

    def __init__(self, config: Config, pipeline: Pipeline, pools: dict[str, Budget]) -> None:
        self.config = config
        self.pipeline = pipeline
        self.pools = pools
        self.needs = discovery_needs(config)
        self.found: dict[Key, tuple[str, ...]] = {}
        self.docs: list[dict[str, Any]] = []
        self.failed: list[str] = []
        self.plan: Plan | None = None

    def found_or_nothing(self) -> dict[Key, tuple[str, ...]]:
        """What was found, and no ids for a discovery that did not finish."""
        return {key: self.found.get(key, ()) for key in self.needs}

    async def run(self, request: PlanRequest) -> Plan:
        """Discover, then plan (with no ids for a discovery that did not finish). A stop
        (a signal) ends discovery as it ends the data phase: what is in flight gets the
        pipeline's grace period, then is cancelled."""
        by_list: dict[str, dict[Key, Discover]] = {}
        for key, spec in self.needs.items():
            by_list.setdefault(key[0], {})[key] = spec
        tasks = [asyncio.create_task(self._list(p, specs)) for p, specs in by_list.items()]
        watcher = asyncio.create_task(self.pipeline.watch_stop(tasks))
        try:
            await asyncio.wait(tasks)
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.wait([watcher, *tasks])
        self.plan = request.build(self.found_or_nothing())
        for warning in self.plan.warnings:
            log.warning("%s", warning, extra={"event": "plan_warning"})
        log.info(
            "planned %d series with the discovered ids",
            len(self.plan.series),
            extra={"event": "planned"},
        )
        return self.plan

    def status(self) -> str:
        done = len(self.docs)
        return f"discovering ids: {done} of {len(self.needs)} discoveries done"

    def summary(self) -> list[str]:
        lines = []
        for doc in self.docs:
            head = f"discovery: {doc['config_key']} from {doc['endpoint']}"
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
        for name, pool in self.pools.items():
            if name != WORKSPACE_POOL and pool.acquired:  # the workspace's is the budget line
                lines.append(
                    f"pool {name}: {pool.acquired} request(s) paced, allowed "
                    f"{pool.allowed_per_hour:,.0f}/hour; paused {pool.pauses} time(s) for "
                    "the reserve or a 429"
                )
        return lines

    async def _list(self, param: str, specs: dict[Key, Discover]) -> None:
        """Read one list once, whatever filters the config asks of it, and apply each."""
        source = LISTS[param]
        config_key = DIMENSIONS[param].config_key
        wanted = {key: _spec(param, spec) for key, spec in specs.items()}
        # One read serves every filter: with one filter it filters as it reads, with several
        # it keeps every listed item and filters them in memory afterwards.
        read = (
            next(iter(wanted.values()))
            if len(wanted) == 1
            else DiscoverSpec(param, None, (), False)
        )
        pipeline = self.pipeline
        error: str | None = None
        found: Discovered | None = None
        fetch = _Counted(pipeline.client)
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
        if found is None and pipeline.result.interrupted:
            error = INTERRUPTED
        elif found is None:
            self.failed.append(param)
            log.error(
                "discovery of %s from %s failed: %s; exports that discover them get no "
                "series this run",
                config_key,
                source.path,
                error,
                extra={"event": "discovery_failed"},
            )
        self._record(param, specs, wanted, found, error, fetch)

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
        source = LISTS[param]
        for n, (key, spec) in enumerate(specs.items()):
            ids: tuple[str, ...] = ()
            if found is not None:
                ids = tuple(i.id for i in found.items if keeps(wanted[key], i))
                self.found[key] = ids
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


def _spec(param: str, spec: Discover) -> DiscoverSpec:
    return DiscoverSpec(
        param,
        None if spec.name is None else re.compile(spec.name),
        tuple(spec.tags or ()),
        spec.discover == "analytics_enabled",
    )
