"""The config's ``{discover: ...}`` ids, resolved at the start of a run, then the plan.

Each distinct discovery the config asks for (:func:`exporter.plan.discovery_needs`) runs once,
all of them at the same time, each through the budget of its list's pool. What they found is
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

from exporter.config import Config, Discover
from exporter.discover import Discovered, DiscoverSpec, discover
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
from exporter.series import DIMENSIONS, LISTS

__all__ = ["Discovery"]

log = logging.getLogger(__name__)

Key = tuple[str, tuple[str, str | None, tuple[str, ...]]]


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
        """Discover, then plan (with no ids for a discovery that did not finish)."""
        await asyncio.gather(*(self._one(key, spec) for key, spec in self.needs.items()))
        self.plan = request.build(self.found_or_nothing())
        for warning in self.plan.warnings:
            log.warning("%s", warning, extra={"event": "plan_warning"})
        log.info(
            "planned %d series, %d requests with the discovered ids",
            len(self.plan.series),
            len(self.plan.requests),
            extra={"event": "planned"},
        )
        return self.plan

    def status(self) -> str:
        done = len(self.docs)
        return f"discovering ids: {done} of {len(self.needs)} list(s) read"

    def summary(self) -> list[str]:
        lines = []
        for doc in self.docs:
            head = f"discovery: {doc['config_key']} from {doc['endpoint']}"
            if doc["error"] is not None:
                lines.append(f"{head}: FAILED: {doc['error']}")
            else:
                lines.append(
                    f"{head}: {len(doc['ids'])} kept, {doc['skipped']} filtered out, in "
                    f"{doc['pages']} page(s), {doc['requests']} request(s)"
                )
        return lines

    async def _one(self, key: Key, spec: Discover) -> None:
        param = key[0]
        source = LISTS[param]
        config_key = DIMENSIONS[param].config_key
        wanted = DiscoverSpec(
            param,
            None if spec.name is None else re.compile(spec.name),
            tuple(spec.tags or ()),
            spec.discover == "analytics_enabled",
        )
        pipeline = self.pipeline
        error: str | None = None
        found: Discovered | None = None
        try:
            found = await discover(
                pipeline.client,
                wanted,
                budget=self.pools[source.pool],
                retry=pipeline.policy,
                stopping=lambda: pipeline.result.interrupted,
            )
        except AuthError as exc:
            if exc.status == 401:
                pipeline.result.auth_error = exc
            error = exc.reason  # names the permission
        except TransportError as exc:
            if exc.connect_failed:
                pipeline.result.unreachable = Unreachable(
                    f"cannot reach {pipeline.client.host}: {exc.detail}. Check braze.endpoint "
                    "(or $BRAZE_REST_ENDPOINT) and the network"
                )
            error = str(exc)
        except (DiscoveryError, RetryableError) as exc:
            error = exc.reason if isinstance(exc, DiscoveryError) else str(exc)
        except ExporterError as exc:
            error = str(exc)
        if found is not None:
            self.found[key] = found.ids
            if not found.ids:
                log.warning(
                    "%s: discovery found no id to export (%d listed, all filtered out)",
                    source.path,
                    found.skipped,
                    extra={"event": "discovered_nothing"},
                )
        elif not pipeline.result.interrupted:
            self.failed.append(param)
            log.error(
                "discovery of %s from %s failed: %s; exports that discover them get no "
                "series this run",
                config_key,
                source.path,
                error,
                extra={"event": "discovery_failed"},
            )
        self.docs.append(
            {
                "config_key": config_key,
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
                "ids": list(found.ids) if found else [],
                "requests": found.requests if found else None,
                "pages": found.pages if found else None,
                "skipped": found.skipped if found else None,
                "malformed": found.malformed if found else None,
                "duplicates": found.duplicates if found else None,
                "error": error,
            }
        )
