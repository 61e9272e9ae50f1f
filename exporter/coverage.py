"""Planned against received periods, per series; Braze's window offset; the gap-fill requests.

Braze does not document which periods a request covers (``../shared/BRAZE_API.md``,
"Uncertain"), so nothing here trusts our model of it. Every well-formed point a response
brings counts for its series when its period lies in that series' planned window, whichever
request brought it; the rest are counted as outside the window and never written.

* :class:`Coverage` knows each series' planned periods (its window in the plan) and the
  periods received so far (this run, or recorded as done by earlier runs).
* :class:`Calibration` measures, per unit, the offset between the last period a request
  asked for and the last period the server returned, and shifts later requests to match.
* :func:`gap_requests` turns missing ranges into requests widened by one period on each side,
  so that they cover the gap whether the server's offset is the estimate, one less or one more.

Periods are the planner's integers (see :mod:`exporter.plan`); a span is an inclusive
``(lo, hi)`` pair of them.
"""

from __future__ import annotations

import logging
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence

from exporter.client import Point
from exporter.config import Unit
from exporter.plan import MAX_LENGTH, Plan, Request, cover, earliest_period, merge_spans

__all__ = [
    "COMPLETE",
    "FAILED",
    "OPEN",
    "Calibration",
    "Coverage",
    "Span",
    "covers",
    "describe_offset",
    "gap_requests",
    "runs",
    "subtract",
]

log = logging.getLogger(__name__)

Span = tuple[int, int]
OPEN, COMPLETE, FAILED = 0, 1, 2
# A server whose windows are off by more than a whole request is not answering our question.
_MAX_OFFSET = MAX_LENGTH
_MIN, _MAX = -(2**62), 2**62


def runs(periods: Iterable[int]) -> list[Span]:
    """Sorted distinct periods -> the spans of consecutive ones."""
    out: list[Span] = []
    for p in periods:
        if out and p == out[-1][1] + 1:
            out[-1] = (out[-1][0], p)
        elif not out or p > out[-1][1]:
            out.append((p, p))
    return out


def subtract(spans: Sequence[Span], minus: Sequence[Span]) -> list[Span]:
    """The parts of merged ``spans`` not in merged ``minus``."""
    out: list[Span] = []
    j = 0
    for lo, hi in spans:
        while j < len(minus) and minus[j][1] < lo:
            j += 1
        k, start = j, lo
        while k < len(minus) and minus[k][0] <= hi:
            if minus[k][0] > start:
                out.append((start, minus[k][0] - 1))
            start = max(start, minus[k][1] + 1)
            k += 1
        if start <= hi:
            out.append((start, hi))
    return out


def covers(spans: Sequence[Span], lo: int, hi: int) -> bool:
    """Whether merged ``spans`` hold every period of ``lo..hi``."""
    return any(a <= lo and hi <= b for a, b in spans)


class Coverage:
    """Per series of a plan: planned periods, received periods, and the series' status.

    Received spans are kept only for series still open: a complete series needs no more
    than its status byte, so memory follows the series in progress, not the plan's size.
    """

    def __init__(self, plan: Plan, done: Mapping[int, Sequence[Span]] | None = None) -> None:
        self._plan = plan
        self.status = bytearray(len(plan.series))
        self._received: dict[int, list[Span]] = {}
        # Per series, planned periods that earlier runs had recorded as done.
        self.already_done = array("i", bytes(4 * len(plan.series)))
        for index, spans in (done or {}).items():
            planned = self.planned(index)
            self.already_done[index] = _size(planned) - _size(subtract(planned, spans))
            self._received[index] = merge_spans(spans)
            self._settle(index)
        for index in range(len(plan.series)):
            if not plan.window(index):
                self.status[index] = COMPLETE  # nothing planned (another shard's, say)

    def planned(self, index: int) -> list[Span]:
        """The merged spans of this series' window."""
        return list(self._plan.window(index))

    def missing(self, index: int) -> list[Span]:
        """Planned periods not received (for a failed series too)."""
        if self.status[index] == COMPLETE:
            return []
        return subtract(self.planned(index), self._received.get(index, []))

    def needs(self, request: Request) -> bool:
        """Whether a planned period of the request's window is still missing."""
        index = request.index
        if self.status[index] != OPEN:
            return False
        received = self._received.get(index)
        if not received:  # the usual first look: is any planned period in the window?
            first, last = request.first, request.last
            return any(lo <= last and first <= hi for lo, hi in self.planned(index))
        if covers(received, request.first, request.last):
            return False
        outside = [(_MIN, request.first - 1), (request.last + 1, _MAX)]
        return bool(subtract(subtract(self.planned(index), outside), received))

    def inside(self, index: int, points: Sequence[Point]) -> list[Point]:
        """The points whose period lies in the series' planned window."""
        planned = self.planned(index)
        if len(planned) == 1:
            lo, hi = planned[0]
            return [p for p in points if lo <= p.period <= hi]
        return [p for p in points if covers(planned, p.period, p.period)]

    def record(self, index: int, periods: Sequence[Span]) -> None:
        """Note periods as durably written; a series with nothing missing becomes complete."""
        if self.status[index] == COMPLETE:
            return
        self._received[index] = merge_spans([*self._received.get(index, []), *periods])
        if self.status[index] == OPEN:
            self._settle(index)

    def fail(self, index: int) -> None:
        """No more requests for this series; what it received stays counted."""
        if self.status[index] == OPEN:
            self.status[index] = FAILED

    def planned_size(self, index: int) -> int:
        return _size(self.planned(index))

    def missing_size(self, index: int) -> int:
        return _size(self.missing(index))

    def count(self, status: int) -> int:
        return self.status.count(status)

    def _settle(self, index: int) -> None:
        if not subtract(self.planned(index), self._received[index]):
            self.status[index] = COMPLETE
            del self._received[index]

    def open_series(self) -> Iterator[int]:
        for index, status in enumerate(self.status):
            if status == OPEN:
                yield index


def _size(spans: Iterable[Span]) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)


class Calibration:
    """Braze's window offset per unit: returned last period minus the period ``ending_at``
    named. 0 is the planner's assumption (the window ends with the period containing
    ``ending_at``); -1 means it ends one period before; +1 one after (days cut in UTC for a
    config west of UTC). Requests are sent with ``ending_at`` moved by minus the estimate, so
    the periods that come back are the ones the plan wants.
    """

    def __init__(self, initial: Mapping[Unit, int] | None = None) -> None:
        self._estimate: dict[Unit, int] = {"day": 0, "hour": 0, **(initial or {})}
        self._seen: dict[Unit, Counter[int]] = {"day": Counter(), "hour": Counter()}

    def shift(self, unit: Unit) -> int:
        return self._estimate[unit]

    def measured(self, unit: Unit) -> dict[int, int]:
        """How many clean measurements saw each offset."""
        return dict(self._seen[unit])

    def observe(self, unit: Unit, length: int, sent_end: int, points: Sequence[Point]) -> None:
        """Measure one response: only a whole window of consecutive periods is a clean
        measurement (a series may lack its oldest periods). Logs when the estimate moves."""
        if len(points) != length or points[-1].period - points[0].period != length - 1:
            return
        offset = points[-1].period - sent_end
        if abs(offset) > _MAX_OFFSET:
            return
        seen = self._seen[unit]
        seen[offset] += 1
        best = max(seen, key=lambda o: (seen[o], o == self._estimate[unit]))
        if best != self._estimate[unit]:
            self._estimate[unit] = best
            log.warning(
                "%s",
                describe_offset(unit, best),
                extra={"event": "calibration", "unit": unit, "offset": best},
            )


def describe_offset(unit: Unit, offset: int) -> str:
    """Plain words for an offset, as the run log and doctor say it."""
    if offset == 0:
        return (
            f"Braze returned {unit} windows ending with the {unit} that contains ending_at, "
            "as the planner assumes"
        )
    many = "" if abs(offset) == 1 else f"{abs(offset)} "
    unit_words = f"{unit}s" if abs(offset) != 1 else unit
    where = "before" if offset < 0 else "after"
    utc = unit == "day" and offset > 0
    why = " (days cut in UTC rather than the config's time zone?)" if utc else ""
    return (
        f"Braze returned {unit} windows ending {many or 'one '}{unit_words} {where} the "
        f"{unit} containing ending_at{why}; later requests are shifted to match"
    )


def gap_requests(plan: Plan, index: int, missing: Sequence[Span]) -> list[Request]:
    """Requests that fetch ``missing`` periods of one series whatever the server's offset
    is within one period of the estimate: each asks for the gap plus one period on each side
    (never before the earliest period).
    Gaps close together share a request (at most the series' ``max_length`` each)."""
    series = plan.series[index]
    out: list[Request] = []
    for lo, hi in cover(missing, series.info.max_length - 2):
        first, last = max(lo - 1, earliest_period(series.unit)), hi + 1
        out.append(Request(series, first, last - first + 1, "", index, gap=True))
    return out
