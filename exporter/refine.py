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

import logging
import time
from array import array
from collections.abc import Callable, Collection, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any

from exporter.activity import Activity
from exporter.config import Config
from exporter.coverage import subtract
from exporter.details import DETAILS, DetailsRead, Known, read_details
from exporter.errors import AuthError, TransportError, Unreachable
from exporter.lives import SkipReport, Subject, refresh_reason, split
from exporter.pipeline import Pipeline
from exporter.plan import Plan, Span, span_label
from exporter.ratelimit import Budget
from exporter.series import WORKSPACE_POOL

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
        """``plan`` with its campaign and Canvas windows cut (the same plan when it has none)."""
        state = self.pipeline.state
        reading = state if not self.pipeline.fresh else None  # --fresh: nothing is done

        def done_of(keys: Mapping[str, int]) -> Mapping[int, list[Span]]:
            return {} if reading is None else reading.done(lambda: keys)

        windows: dict[int, tuple[Span, ...]] = {}
        whole = read_whole(self.config, plan)
        for dimension, subjects in subjects_of(plan, done_of, self.listed, whole).items():
            known = state.details(dimension) if state is not None else {}
            cut = await self._dimension(dimension, subjects, known)
            if cut is None:  # the run stops (401, unreachable): plan as it was
                return plan
            windows.update(cut)
        return with_windows(plan, windows)

    async def _dimension(
        self, dimension: str, subjects: Mapping[int, Subject], known: Mapping[str, Known]
    ) -> dict[int, tuple[Span, ...]] | None:
        report = self.reports[dimension] = SkipReport(dimension)
        wanted = {
            s.id: why for s in subjects.values() if (why := refresh_reason(s, known.get(s.id)))
        }
        read = await self._read(dimension, list(wanted)) if wanted else None
        if read is None and wanted:
            return None
        lives = read.lives if read is not None else {}
        if read is not None:
            report.details_requests = read.requests
            report.denied = read.denied
            report.failed = len(read.failed)
            state = self.pipeline.state
            if state is not None and lives:
                listed = {s.id: s.listed for s in subjects.values()}
                state.keep_details(
                    dimension, {i: Known(life, listed[i]) for i, life in lives.items()}
                )
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
                source = "none" if kept is None else "kept"
            report.add(subject, activity, source=source)
            self._note(subject, activity)
            windows[index] = activity.kept
        return windows

    async def _read(self, dimension: str, ids: list[str]) -> DetailsRead | None:
        """The details of ``ids``; None when the run must stop (the pipeline's result says
        why)."""
        pipeline = self.pipeline
        result = pipeline.result
        try:
            return await read_details(
                pipeline.client,
                DETAILS[dimension],
                ids,
                budget=self.pools[WORKSPACE_POOL],
                retry=pipeline.policy,
                concurrency=pipeline.concurrency,
                stopping=lambda: result.interrupted,
                clock=self.clock,
            )
        except* AuthError as errors:
            result.auth_error = errors.exceptions[0]  # type: ignore[assignment]
        except* Unreachable as errors:
            result.unreachable = errors.exceptions[0]  # type: ignore[assignment]
        except* TransportError as errors:
            result.unreachable = pipeline.cannot_reach(errors.exceptions[0])  # type: ignore[arg-type]
        return None

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
    per dimension, the details
    requests the run will send for the ids whose details it reads again. No list is read,
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
