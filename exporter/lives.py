"""The campaigns and Canvases of a plan: whose details to read again, and the days to skip.

Pure: the caller brings the kept details (:meth:`exporter.state.State.details`), the list's
``last_edited`` of each id (when a list was read this run) and the periods each one still
needs; :func:`refresh_reason` says which details are worth a request, :func:`split` cuts a
window by :func:`exporter.activity.active_days`, and :class:`SkipReport` adds it all up for
the run's summary, its manifest and ``plan``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.activity import RULES, Activity, Life, active_days
from exporter.coverage import subtract
from exporter.details import DETAILS, Known, wants_fresh
from exporter.plan import cover

__all__ = ["SkipReport", "Subject", "refresh_reason", "requests_for", "split"]

Span = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Subject:
    """One campaign or Canvas series of a plan: its ``dimension`` (``campaign_id`` or
    ``canvas_id``) and ``id``, its ``window`` and the periods of it still ``needed`` (both
    merged day spans), ``limit`` the series' longest request, ``settle_from`` the first
    provisional day, ``listed`` the list's ``last_edited`` this run (None: not listed),
    ``as_of`` the run's as-of date ordinal (None: not known)."""

    dimension: str
    id: str
    window: tuple[Span, ...]
    needed: tuple[Span, ...]
    limit: int
    settle_from: int
    listed: datetime | None = None
    as_of: int | None = None

    def confirmed(self, known: Known) -> bool:
        """Whether this run's list shows the ``last_edited`` the kept details were read at."""
        return self.listed is not None and known.listed == self.listed

    def resumes(self, known: Known) -> bool:
        """Whether the kept details were read by a run of this run's as-of date: the run this
        one resumes. They count as read in this run, as that run's provisional periods count
        as done (:mod:`exporter.state`): a resumed run skips what the run it resumes would
        have, so its files end as that run's would (BREAK19 finding 8). Sound for the same
        reason fresh details are: the days after the read were not recorded as done, and a
        run of a later as-of date, whose details are then an earlier run's, reads them."""
        return self.as_of is not None and known.as_of == self.as_of


def requests_for(spans: Sequence[Span], limit: int) -> int:
    """The fewest requests of at most ``limit`` days covering ``spans``."""
    return sum(1 for _ in cover(spans, limit))


def refresh_reason(subject: Subject, known: Known | None) -> str | None:
    """Why to read this subject's details in this run (:func:`exporter.details.wants_fresh`),
    or None to plan with the kept ones. Fresh details can bring a campaign down to no data
    request at all; a Canvas' only when it had not been entered yet (its days after the last
    entry are read whatever the details say)."""
    if known is None:
        return wants_fresh(None, subject.listed, stale_requests=0, least_requests=0)
    resumed = subject.resumes(known)  # as good as fresh: reading again cannot cut more
    stale = active_days(
        subject.needed,
        known.life,
        fresh=resumed,
        confirmed=subject.confirmed(known),
        settle_from=subject.settle_from,
    )
    stale_requests = requests_for(stale.kept, subject.limit)
    helps = not resumed and (known.life.bounded or known.life.first is None)
    return wants_fresh(
        known,
        subject.listed,
        stale_requests=stale_requests,
        least_requests=0 if helps else stale_requests,
    )


def split(subject: Subject, life: Life | None, *, fresh: bool, known: Known | None) -> Activity:
    """The subject's window cut by ``life`` (read in this run when ``fresh``, else the kept
    ``known`` one's, which count as fresh when read by the run this one resumes; None:
    every day is kept)."""
    confirmed = known is not None and subject.confirmed(known)
    if not fresh and known is not None and life is known.life:
        fresh = subject.resumes(known)
    return active_days(
        subject.window, life, fresh=fresh, confirmed=confirmed, settle_from=subject.settle_from
    )


@dataclass
class SkipReport:
    """What skipping did for one dimension (campaigns or Canvases) in a run or a plan."""

    dimension: str
    subjects: int = 0
    fresh: Counter[str] = field(default_factory=Counter)  # why details were read, by reason
    kept: int = 0  # subjects planned with details kept from an earlier run
    without: int = 0  # subjects with no details (none kept and none read: 403, a failure)
    details_requests: int = 0
    denied: str | None = None
    failures: dict[str, str] = field(default_factory=dict)  # failed id -> Braze's reason
    unread: int = 0  # details wanted but not read: the run stopped first (a signal, a 401)
    days: Counter[str] = field(default_factory=Counter)  # skipped days by rule
    whole: int = 0  # subjects with no day left to read
    requests_saved: int = 0  # of the data requests the needed periods would take

    def add(self, subject: Subject, activity: Activity, *, source: str) -> None:
        """Count one subject split by details ``source``: "fresh", "kept", "none" or
        "unread" (wanted, but the run stopped first: :attr:`unread` counts those)."""
        self.subjects += 1
        if source == "kept":
            self.kept += 1
        elif source == "none":
            self.without += 1
        for skip in activity.skipped:
            self.days[skip.rule] += skip.days
        if activity.skipped and not activity.kept:
            self.whole += 1
        still = subtract(list(subject.needed), subtract(list(subject.needed), activity.kept))
        self.requests_saved += requests_for(subject.needed, subject.limit) - requests_for(
            still, subject.limit
        )

    @property
    def failed(self) -> int:
        """How many ids' details could not be read."""
        return len(self.failures)

    @property
    def failure(self) -> str | None:
        """The first failed id and Braze's reason (None: none failed)."""
        return next((f"{i}: {why}" for i, why in self.failures.items()), None)

    @property
    def things(self) -> str:
        return DETAILS[self.dimension].things

    def lines(self) -> list[str]:
        """The summary's lines: details read and why, days skipped by rule, the fallback."""
        source = DETAILS[self.dimension]
        read = sum(self.fresh.values())
        why = ", ".join(f"{n} {reason}" for reason, n in sorted(self.fresh.items()))
        if not why:  # nothing read: refused, failed, or nothing to read
            why = "none needed"
            if self.denied is not None:
                why = "refused"
            elif self.failed:
                why = "none could be read"
            elif self.unread:
                why = "the run stopped first"
        lines = [
            f"{self.things}: {self.subjects}; details read for {read} ({why}; "
            f"{self.details_requests} request(s) to {source.path}), kept from an earlier run "
            f"for {self.kept}, none for {self.without}"
        ]
        if self.denied is not None:
            lines.append(
                f"{self.things}: details refused ({self.denied}): their whole windows are "
                "read, no day is skipped for want of details"
            )
        if self.unread:
            lines.append(
                f"{self.things}: details of {self.unread} not read: the run stopped before "
                "their answers came; a rerun reads them"
            )
        if self.failed:
            lines.append(
                f"{self.things}: details of {self.failed} could not be read (first, "
                f"{self.failure}; the manifest's details_failures names each): their whole "
                "windows are read"
            )
        skipped = ", ".join(f"{self.days[r]:,} {r}" for r in RULES if self.days[r])
        if skipped:
            lines.append(
                f"{self.things}: skipped days where Braze's details prove no data: {skipped} "
                f"({self.whole} with no day to read; {self.requests_saved:,} data request(s) "
                "saved)"
            )
        return lines

    def doc(self) -> dict[str, Any]:
        """The manifest's record."""
        return {
            "dimension": self.dimension,
            "subjects": self.subjects,
            "details_read": dict(self.fresh),
            "details_requests": self.details_requests,
            "details_kept": self.kept,
            "without_details": self.without,
            "details_denied": self.denied,
            "details_failed": self.failed,
            "details_failure": self.failure,
            "details_failures": self.failures,
            "details_unread": self.unread,
            "skipped_days": {r: self.days[r] for r in RULES if self.days[r]},
            "nothing_to_read": self.whole,
            "requests_saved": self.requests_saved,
        }
