"""Which days of a window a campaign or Canvas could have data on: pure, no I/O, no clock.

The facts come from Braze's details endpoints ("Export campaign details",
braze.com/docs/api/endpoints/export/campaigns/get_campaign_details: ``draft``, ``first_sent``,
``last_sent``, ``conversion_behaviors[].window`` in seconds; "Export Canvas details",
.../export/canvas/get_canvas_details: ``draft``, ``first_entry``, ``last_entry``) and from
issue #19, section 3. What they prove, and so what may be skipped:

- Nothing is sent before ``first_sent`` / ``first_entry``, and nothing before the details
  were read when those are null (it had not sent yet): those days are skipped, whenever
  the details were read.
- A draft that never sent has nothing: launching it edits it, which changes the list's
  ``last_edited`` and makes the run read its details again. So a draft's days are skipped
  when its details were read in this run, or when this run's list shows them unchanged.
- Details read in THIS run bound every send up to now: the days after ``last_sent`` plus the
  longest conversion window (every day, when nothing was sent yet) are skipped, to the
  window's end. A send after the read can only land on the last day or two; those were not
  recorded as done, so the next run, whose details are no longer fresh, reads them. Canvas
  details name the last entry, not the last message: a step may send days after it
  (delays), so a Canvas' days after ``last_entry`` are never skipped.
- Details kept by a run of the same as-of date (the one a resumed run resumes) count as
  read in this run (:meth:`exporter.lives.Subject.resumes`), as its provisional periods do.
- Details from an earlier run say nothing of what was sent since they were read (a
  triggered, action-based or recurring campaign sends without an edit): beyond the days
  before ``first_sent``, only the days their read already proved empty (after ``last_sent``
  plus the conversion window, and ended before the read) are skipped, and provisional days
  (``settle_from`` on) are always read.

Braze does not document the zone its days are cut in (../shared/BRAZE_API.md), and any zone
puts an instant on its UTC date or the day either side. So every bound keeps one day of
margin: a day is skipped only if no zone from UTC-12 to UTC+14 could put a send in it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

__all__ = [
    "AFTER_LAST",
    "BEFORE_FIRST",
    "DRAFT",
    "NOT_SENT",
    "RULES",
    "Activity",
    "Life",
    "Skip",
    "active_days",
]

Span = tuple[int, int]  # inclusive day periods: date.toordinal() of the day Braze labels
_FAR = 2**62  # beyond any day ordinal: an open end
_MARGIN = 1  # days: an instant's date in any zone is its UTC date or the day either side


@dataclass(frozen=True, slots=True)
class Life:
    """What a campaign's or Canvas' details say of when it could have sent.

    - ``draft``: Braze's ``draft`` flag.
    - ``first``: ``first_sent`` (campaign) or ``first_entry`` (Canvas), aware UTC; None:
      never yet.
    - ``last``: ``last_sent`` (campaigns only); None for a Canvas (``last_entry`` does not
      bound its messages) or a campaign that never sent.
    - ``bounded``: whether ``last`` bounds the sends (True for campaigns).
    - ``conversion_s``: the longest ``conversion_behaviors`` window, in seconds (0: none).
    - ``read_at``: when the details were read (aware UTC).
    """

    draft: bool
    first: datetime | None
    last: datetime | None
    read_at: datetime
    bounded: bool = True
    conversion_s: int = 0

    @property
    def data_end(self) -> datetime | None:
        """The last instant a send it made can have data (last send plus the longest
        conversion window); None when unbounded (a Canvas)."""
        if not self.bounded:
            return None
        known = [t for t in (self.first, self.last) if t is not None]
        return max(known) + timedelta(seconds=self.conversion_s) if known else None


BEFORE_FIRST = "before the first send or entry"
AFTER_LAST = "after the last send and its conversion window"
DRAFT = "a draft that never sent"
NOT_SENT = "nothing sent yet when the details were read"
RULES = (BEFORE_FIRST, AFTER_LAST, DRAFT, NOT_SENT)


@dataclass(frozen=True, slots=True)
class Skip:
    """Days ``first..last`` (inclusive day ordinals) left unread, by which ``rule`` (one of
    :data:`RULES`), and why, in words with the details' times."""

    first: int
    last: int
    reason: str
    rule: str = BEFORE_FIRST

    @property
    def days(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Activity:
    """A window split: the spans still to read (merged, sorted) and the skipped ones."""

    kept: tuple[Span, ...]
    skipped: tuple[Skip, ...]

    @property
    def skipped_days(self) -> int:
        return sum(s.days for s in self.skipped)


def active_days(
    window: Sequence[Span],
    life: Life | None,
    *,
    fresh: bool,
    confirmed: bool = False,
    settle_from: int = _FAR,
) -> Activity:
    """Split ``window`` (merged, sorted inclusive day ordinals) into the days that could have
    data and those that cannot, by the rules of this module's docstring.

    ``life``: the details (None: none known; every day is kept). ``fresh``: read in this
    run. ``confirmed``: read earlier, and this run's list shows the same ``last_edited``
    (a draft is then still a draft). ``settle_from``: the first provisional day (kept
    whenever the details are not fresh; by default none is)."""
    if life is None:
        return Activity(tuple(window), ())
    cuts: list[Skip] = []
    read = _utc_day(life.read_at)
    # The last day the read proves empty past the last send: with fresh details, to the
    # window's end (a send after the read lands on a day from read - 1 on, which the next
    # run reads: it was not recorded as done, and its details are no longer fresh); with
    # earlier ones, the days ended before the read, and never a provisional day.
    proven = _FAR if fresh else min(read - 1 - _MARGIN, settle_from - 1)
    if life.draft and life.first is None and (fresh or confirmed):
        cuts.append(Skip(-_FAR, _FAR, f"a draft that never sent (details of {_when(life)})", DRAFT))
    elif life.first is None:
        cuts.append(Skip(-_FAR, proven, f"nothing sent by {_when(life)}", NOT_SENT))
    else:
        cuts.append(Skip(-_FAR, _utc_day(life.first) - 1 - _MARGIN, _first_reason(life)))
        end = life.data_end
        if end is not None:
            reason = _after_reason(life) + ("" if fresh else f" (details of {_when(life)})")
            cuts.append(Skip(_utc_day(end) + 1 + _MARGIN, proven, reason, AFTER_LAST))
    return _split(window, cuts)


def _split(window: Sequence[Span], cuts: Sequence[Skip]) -> Activity:
    """The window less the cuts (each clipped to the window, empty ones dropped)."""
    kept: list[Span] = []
    skipped: list[Skip] = []
    for lo, hi in window:
        start = lo
        for cut in sorted(cuts, key=lambda c: c.first):
            a, b = max(cut.first, start), min(cut.last, hi)
            if a > b:
                continue
            if a > start:
                kept.append((start, a - 1))
            skipped.append(Skip(a, b, cut.reason, cut.rule))
            start = b + 1
        if start <= hi:
            kept.append((start, hi))
    return Activity(tuple(kept), tuple(skipped))


def _utc_day(moment: datetime) -> int:
    """The UTC date of an instant (a naive one is read as UTC), as a day ordinal."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().toordinal()


def _when(life: Life) -> str:
    return life.read_at.strftime("%Y-%m-%dT%H:%MZ")


def _first_reason(life: Life) -> str:
    assert life.first is not None
    what = "first_sent" if life.bounded else "first_entry"
    return f"before {what} {life.first.strftime('%Y-%m-%dT%H:%MZ')}"


def _after_reason(life: Life) -> str:
    last = max(t for t in (life.first, life.last) if t is not None)
    window = life.conversion_s / 86_400
    return (
        f"after last_sent {last.strftime('%Y-%m-%dT%H:%MZ')} and its "
        f"{window:g}-day conversion window"
    )
