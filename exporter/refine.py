"""Before the data phase: the details of a plan's campaigns and Canvases, and their windows
cut to the days that could have data (:mod:`exporter.activity`, :mod:`exporter.lives`).

For each campaign and Canvas series of the plan: the kept details (from the resume state),
the list's ``last_edited`` (when discovery listed it this run) and the periods still needed
decide whether to read its details again (:func:`exporter.lives.refresh_reason`); those are
read, paced by the workspace pool and retried like any call (:func:`exporter.details.
read_details`), and kept for later runs. Each window is then cut, and the plan returned holds
the cut windows: skipped days are neither requested, nor done, nor missing.

A 403 on details reads the windows of that kind whole (or as the kept details allow) and is
said once; a 401 stops the run (exit 3) and a host that cannot be reached is exit 4, as in
the data phase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from exporter.activity import Activity, Life
from exporter.client import Response
from exporter.config import Config
from exporter.coverage import subtract
from exporter.details import DETAILS, DetailsRead, DetailsSource, Known, read_details
from exporter.errors import AuthError, TransportError, Unreachable
from exporter.lives import SkipReport, Subject, refresh_reason, split
from exporter.pipeline import Pipeline
from exporter.plan import Plan, Span, span_label
from exporter.ratelimit import Budget
from exporter.series import WORKSPACE_POOL
from exporter.state import State

__all__ = [
    "SUBJECTS",
    "Skipping",
    "forecast",
    "read_whole",
    "subjects_of",
    "with_windows",
]

log = logging.getLogger(__name__)

# The series whose windows details can cut, by the dimension naming their subject.
SUBJECTS = {"campaigns": "campaign_id", "canvas": "canvas_id"}


class Skipping:
    """One run's details and cut windows; ``reports`` (by dimension) say what it did."""

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        pools: Mapping[str, Budget],
        listed: Mapping[tuple[str, str], datetime | None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.pools = pools
        self.listed = listed
        self.clock = clock
        self.reports: dict[str, SkipReport] = {}
        self.skipped: dict[str, list[dict[str, Any]]] = {}  # by id: its skipped spans

    async def run(self, plan: Plan) -> Plan:
        """``plan`` with its campaign and Canvas windows cut (the same plan when it has none).
        A stop (a signal) ends the reading as it ends the data phase: the details requests
        in flight get the pipeline's grace, then are cancelled; what was read is kept and
        cuts its windows, and the reports say what was not read."""
        state = self.pipeline.state
        reading = state if not self.pipeline.fresh else None  # --fresh: nothing is done

        def done_of(keys: Mapping[str, int]) -> Mapping[int, list[Span]]:
            return {} if reading is None else reading.done(lambda: keys)

        windows: dict[int, tuple[Span, ...]] = {}
        whole = read_whole(self.config, plan)
        subjects = subjects_of(plan, done_of, self.listed, whole)
        known = {d: state.details(d) if state is not None else {} for d in subjects}
        wanted = {
            dimension: {
                s.id: why
                for s in these.values()
                if (why := refresh_reason(s, known[dimension].get(s.id)))
            }
            for dimension, these in subjects.items()
        }
        try:
            for dimension, these in subjects.items():
                cut = await self._dimension(dimension, these, known[dimension], wanted[dimension])
                if cut is None:  # the run stops (401, unreachable): plan as it was
                    return plan
                windows.update(cut)
        finally:  # the run stopped before these kinds: none of their details was read
            for dimension, these in subjects.items():
                if dimension not in self.reports:
                    self.reports[dimension] = SkipReport(
                        dimension, subjects=len(these), unread=len(wanted[dimension])
                    )
        return with_windows(plan, windows)

    async def _dimension(
        self,
        dimension: str,
        subjects: Mapping[int, Subject],
        known: Mapping[str, Known],
        wanted: Mapping[str, str],
    ) -> dict[int, tuple[Span, ...]] | None:
        report = self.reports[dimension] = SkipReport(dimension, unread=len(wanted))
        read = DetailsRead(DETAILS[dimension])
        keeper = _Keeper(
            self.pipeline.state,
            dimension,
            {s.id: s.listed for s in subjects.values()},
            self.pipeline.concurrency,
        )
        try:
            going = await self._read(read, list(wanted), keeper.add) if wanted else True
        finally:  # also when a second signal cancels the reading: keep what it brought
            keeper.flush()
            report.details_requests = read.requests
            report.denied = read.denied
            report.failures = dict(read.failed)
            if read.denied is None:
                report.unread = len(wanted) - len(read.lives) - len(read.failed)
            else:
                report.unread = 0  # refused: not for want of time
        if not going:  # a 401 or no host: what was read is kept and counted, nothing skipped
            report.subjects = len(subjects)
            for item_id in read.lives:
                report.fresh[wanted[item_id]] += 1
            return None
        lives = read.lives
        if read.denied is not None:
            log.warning(
                "%s: details refused (%s); their windows are read whole (or as details "
                "kept from an earlier run allow)",
                DETAILS[dimension].path,
                read.denied,
                extra={"event": "details_denied"},
            )
        windows: dict[int, tuple[Span, ...]] = {}
        for index, subject in subjects.items():
            kept = known.get(subject.id)
            life = lives.get(subject.id)
            if life is not None:
                report.fresh[wanted[subject.id]] += 1
                activity = split(subject, life, fresh=True, known=kept)
                source = "fresh"
            else:
                activity = split(
                    subject, None if kept is None else kept.life, fresh=False, known=kept
                )
                unread = subject.id in wanted and subject.id not in read.failed
                if kept is not None:
                    source = "kept"
                elif read.denied is None and unread:
                    source = "unread"  # counted once, as unread, not also as "none for"
                else:
                    source = "none"
            report.add(subject, activity, source=source)
            self._note(subject, activity)
            windows[index] = activity.kept
        return windows

    async def _read(
        self, read: DetailsRead, ids: list[str], on_read: Callable[[str, Life], None]
    ) -> bool:
        """Read the details of ``ids`` into ``read``, under the pipeline's grace; False when
        the run must stop (the pipeline's result says why)."""
        task = asyncio.create_task(self._fetch(read, ids, on_read))
        await self.pipeline.under_grace([task])
        return task.cancelled() or task.result()

    async def _fetch(
        self, read: DetailsRead, ids: list[str], on_read: Callable[[str, Life], None]
    ) -> bool:
        pipeline = self.pipeline
        result = pipeline.result
        try:
            await read_details(
                _OnTheWire(pipeline),
                read.source,
                ids,
                budget=self.pools[WORKSPACE_POOL],
                retry=pipeline.policy,
                concurrency=pipeline.concurrency,
                stopping=lambda: result.interrupted,
                clock=self.clock,
                into=read,
                on_read=on_read,
            )
            return True
        except* AuthError as errors:
            result.auth_error = errors.exceptions[0]  # type: ignore[assignment]
        except* Unreachable as errors:
            result.unreachable = errors.exceptions[0]  # type: ignore[assignment]
        except* TransportError as errors:
            result.unreachable = pipeline.cannot_reach(errors.exceptions[0])  # type: ignore[arg-type]
        return False

    def _note(self, subject: Subject, activity: Activity) -> None:
        if activity.skipped:
            self.skipped[subject.id] = [
                {"days": span_label("day", s.first, s.last), "rule": s.rule, "reason": s.reason}
                for s in activity.skipped
            ]
            log.debug(
                "%s %s: skipped %s",
                subject.dimension,
                subject.id,
                "; ".join(f"{d['days']}: {d['reason']}" for d in self.skipped[subject.id]),
                extra={"event": "days_skipped"},
            )

    def summary(self) -> list[str]:
        return [line for report in self.reports.values() for line in report.lines()]

    def doc(self) -> dict[str, Any]:
        """The manifest's ``skipping``: each kind's report, and each id's skipped days."""
        return {
            "reports": [report.doc() for report in self.reports.values()],
            "skipped": self.skipped,
        }


class _OnTheWire:
    """The pipeline's client, each details request held ``in_flight`` while it is on the wire
    (:meth:`exporter.pipeline.Pipeline.in_flight`): what a stop gives the grace."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def get_details(self, source: DetailsSource, item_id: str) -> Response:
        with self.pipeline.in_flight():
            return await self.pipeline.client.get_details(source, item_id)


class _Keeper:
    """Details read in this run, kept in the resume state as they come, ``batch`` at a time
    (and at :meth:`flush`): a kill -9 loses fewer than ``batch`` answers beside the requests
    in flight, so a rerun repeats at most ``2 x concurrency`` details requests."""

    def __init__(
        self,
        state: State | None,
        dimension: str,
        listed: Mapping[str, datetime | None],
        batch: int,
    ) -> None:
        self.state = state
        self.dimension = dimension
        self.listed = listed
        self.batch = max(1, batch)
        self.pending: dict[str, Known] = {}

    def add(self, item_id: str, life: Life) -> None:
        self.pending[item_id] = Known(life, self.listed.get(item_id))
        if len(self.pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if self.state is not None and self.pending:
            self.state.keep_details(self.dimension, self.pending)
        self.pending = {}


def read_whole(config: Config, plan: Plan) -> set[int]:
    """The series of ``plan`` an export holding them asks to read whole
    (``skip_inactive_days: false``)."""
    whole: set[int] = set()
    for export in config.exports:
        if export.skip_inactive_days is False:
            whole.update(plan.series_by_export.get(export.name, ()))
    return whole


def subjects_of(
    plan: Plan,
    done_of: Callable[[Mapping[str, int]], Mapping[int, list[Span]]],
    listed: Mapping[tuple[str, str], datetime | None],
    whole: Collection[int] = (),
) -> dict[str, dict[int, Subject]]:
    """The campaign and Canvas series of ``plan`` with a window, by dimension and index,
    but those in ``whole``. ``done_of`` gives the done periods of the series whose
    ``{key: index}`` it is passed."""
    by_dim: dict[str, dict[int, str]] = {}
    for index, series in enumerate(plan.series):
        dimension = SUBJECTS.get(series.kind)
        value = None if dimension is None else series.get(dimension)
        if index in whole:
            continue
        if dimension is not None and value is not None and plan.window(index):
            by_dim.setdefault(dimension, {})[index] = value
    if not by_dim:
        return {}
    done = done_of({plan.series[i].key: i for ids in by_dim.values() for i in ids})
    return {
        dimension: {
            index: Subject(
                dimension,
                item,
                plan.window(index),
                tuple(subtract(list(plan.window(index)), list(done.get(index, [])))),
                plan.series[index].info.max_length,
                plan.settle_from["day"],
                listed.get((dimension, item)),
                plan.as_of.toordinal(),
            )
            for index, item in ids.items()
        }
        for dimension, ids in by_dim.items()
    }


def forecast(
    plan: Plan,
    known: Callable[[str], Mapping[str, Known]],
    done_of: Callable[[Mapping[str, int]], Mapping[int, list[Span]]],
    whole: Collection[int] = (),
) -> tuple[Plan, dict[str, SkipReport]]:
    """What ``plan`` (the command) can say before a run: the windows cut by the details kept
    (as a run cuts them before reading any; fresh ones, and the run's list confirming a
    kept draft, can only cut more, so the run sends at most the data requests counted) and,
    per dimension, the details requests the run will send for the ids whose details it
    reads again. No list is read,
    so a kept draft is not taken as still one."""
    windows: dict[int, tuple[Span, ...]] = {}
    reports: dict[str, SkipReport] = {}
    for dimension, subjects in subjects_of(plan, done_of, {}, whole).items():
        kept = known(dimension)
        report = reports[dimension] = SkipReport(dimension)
        for index, subject in subjects.items():
            was = kept.get(subject.id)
            why = refresh_reason(subject, was)
            if why is not None:
                report.fresh[why] += 1
                report.details_requests += 1
            activity = split(subject, None if was is None else was.life, fresh=False, known=was)
            report.add(subject, activity, source="none" if was is None else "kept")
            windows[index] = activity.kept
    return with_windows(plan, windows), reports


def with_windows(plan: Plan, cut: Mapping[int, tuple[Span, ...]]) -> Plan:
    """``plan`` with the windows of the series in ``cut`` replaced."""
    if not cut:
        return plan
    windows: dict[tuple[Span, ...], int] = {w: i for i, w in enumerate(plan.windows)}
    window_of = array("i", plan.window_of)
    for index, window in cut.items():
        window_of[index] = windows.setdefault(window, len(windows))
    return replace(plan, windows=tuple(windows), window_of=window_of)
