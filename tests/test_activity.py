"""The days a campaign or Canvas could have data on: skipped only where Braze's details prove
there is none (issue #19, section 3)."""

from __future__ import annotations

from datetime import UTC, date, datetime

from exporter.activity import NOT_SENT, Activity, Life, active_days


def d(text: str) -> int:
    return date.fromisoformat(text).toordinal()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


YEAR = [(d("2025-01-01"), d("2025-12-31"))]
READ = at("2026-01-01T10:00:00")  # the run's read, after the whole window


def campaign(first: str | None, last: str | None, days: int = 0, **kw: object) -> Life:
    return Life(
        draft=bool(kw.get("draft", False)),
        first=None if first is None else at(first),
        last=None if last is None else at(last),
        read_at=kw.get("read_at", READ),  # type: ignore[arg-type]
        conversion_s=days * 86_400,
    )


def kept(activity: Activity) -> list[tuple[str, str]]:
    return [
        (date.fromordinal(a).isoformat(), date.fromordinal(b).isoformat()) for a, b in activity.kept
    ]


def test_no_details_keeps_the_whole_window() -> None:
    """Without details (none read, or a 403), every day of the window is read."""
    activity = active_days(YEAR, None, fresh=True)
    assert activity.kept == tuple(YEAR)
    assert activity.skipped == ()


def test_fresh_details_keep_first_sent_to_last_sent_plus_conversion_window() -> None:
    """Details read in this run: only first_sent..last_sent + longest window, a day's margin."""
    life = campaign("2025-03-10T08:00:00", "2025-03-20T17:00:00", days=3)
    activity = active_days(YEAR, life, fresh=True)
    assert kept(activity) == [("2025-03-09", "2025-03-24")]
    reasons = [s.reason for s in activity.skipped]
    assert reasons[0].startswith("before first_sent 2025-03-10T08:00Z")
    assert reasons[1].startswith("after last_sent 2025-03-20T17:00Z and its 3-day conversion")
    assert activity.skipped_days + 16 == 365


def test_never_a_day_before_first_sent_minus_the_margin_is_read() -> None:
    """The day before first_sent is read: Braze's day cut may put a send on it."""
    life = campaign("2025-06-01T00:30:00", "2025-06-01T00:30:00")
    activity = active_days(YEAR, life, fresh=True)
    assert kept(activity) == [("2025-05-31", "2025-06-02")]


def test_earlier_details_skip_only_what_was_proven_before_they_were_read() -> None:
    """Details from an earlier run: days before first_sent, and days after last_sent + window
    that ended before the read; everything since the read is read again."""
    read = at("2025-09-01T12:00:00")
    life = campaign("2025-03-10T08:00:00", "2025-03-20T17:00:00", days=3, read_at=read)
    activity = active_days(YEAR, life, fresh=False, settle_from=d("2025-12-29"))
    assert kept(activity) == [("2025-03-09", "2025-03-24"), ("2025-08-31", "2025-12-31")]
    assert "(details of 2025-09-01T12:00Z)" in activity.skipped[1].reason


def test_earlier_details_never_skip_a_provisional_day() -> None:
    """A triggered campaign may send without an edit: provisional days are always read."""
    read = at("2026-01-05T12:00:00")  # read after the window, in an earlier run
    life = campaign("2025-03-10T08:00:00", "2025-03-20T17:00:00", read_at=read)
    activity = active_days(YEAR, life, fresh=False, settle_from=d("2025-12-29"))
    assert kept(activity)[-1] == ("2025-12-29", "2025-12-31")


def test_fresh_details_skip_provisional_days_after_the_last_send() -> None:
    """Read in this run, last_sent bounds every send up to now, provisional days included."""
    life = campaign("2025-03-10T08:00:00", "2025-03-20T17:00:00")
    activity = active_days(YEAR, life, fresh=True, settle_from=d("2025-12-29"))
    assert kept(activity) == [("2025-03-09", "2025-03-21")]


def test_a_draft_that_never_sent_has_nothing() -> None:
    """A draft never sent: no day is read, provisional ones included."""
    life = campaign(None, None, draft=True, read_at=at("2025-06-01T00:00:00"))
    for fresh, confirmed in ((True, False), (False, True)):
        activity = active_days(
            YEAR, life, fresh=fresh, confirmed=confirmed, settle_from=d("2025-12-29")
        )
        assert activity.kept == ()
        assert activity.skipped[0].reason.startswith("a draft that never sent")


def test_an_unconfirmed_draft_is_read_from_its_read_on() -> None:
    """A draft whose details no list of this run confirmed may have launched since: only the
    days ended before the read are skipped."""
    life = campaign(None, None, draft=True, read_at=at("2025-06-01T12:00:00"))
    activity = active_days(YEAR, life, fresh=False, settle_from=d("2025-12-29"))
    assert kept(activity) == [("2025-05-31", "2025-12-31")]
    assert activity.skipped[0].reason == "nothing sent by 2025-06-01T12:00Z"


def test_a_campaign_that_never_sent_by_a_fresh_read_has_nothing_to_read() -> None:
    """Not a draft, never sent by a fresh read: no day is read (a later send lands on a day
    the next run reads)."""
    life = campaign(None, None, read_at=at("2026-01-01T10:00:00"))
    activity = active_days(YEAR, life, fresh=True, settle_from=d("2025-12-29"))
    assert activity.kept == ()
    assert activity.skipped[0].rule == NOT_SENT


def test_the_next_run_reads_the_days_a_send_after_a_fresh_read_could_reach() -> None:
    """Those details, kept and confirmed by the next run's list, leave the day before the
    read and after it to read; the days before are proven empty."""
    life = campaign(None, None, read_at=at("2025-12-30T10:00:00"))
    activity = active_days(YEAR, life, fresh=False, confirmed=True, settle_from=d("2025-12-31"))
    assert kept(activity) == [("2025-12-29", "2025-12-31")]


def test_a_canvas_is_never_skipped_after_its_last_entry() -> None:
    """last_entry does not bound a Canvas' messages (steps may be delayed): only the days
    before first_entry are skipped."""
    life = Life(False, at("2025-03-10T08:00:00"), None, READ, bounded=False)
    activity = active_days(YEAR, life, fresh=True)
    assert kept(activity) == [("2025-03-09", "2025-12-31")]
    assert activity.skipped[0].reason.startswith("before first_entry")


def test_a_window_of_several_spans_is_cut_span_by_span() -> None:
    """The days still needed (the window less done days) are split, each span on its own."""
    window = [(d("2025-03-01"), d("2025-03-12")), (d("2025-03-20"), d("2025-04-30"))]
    life = campaign("2025-03-10T08:00:00", "2025-03-25T08:00:00")
    activity = active_days(window, life, fresh=True)
    assert kept(activity) == [("2025-03-09", "2025-03-12"), ("2025-03-20", "2025-03-26")]
    assert sum(s.days for s in activity.skipped) == 8 + 35


def test_last_sent_before_first_sent_is_bounded_by_first_sent() -> None:
    """Odd details (last_sent before first_sent) never make the kept days vanish."""
    life = campaign("2025-03-10T08:00:00", "2025-01-01T00:00:00")
    activity = active_days(YEAR, life, fresh=True)
    assert kept(activity) == [("2025-03-09", "2025-03-11")]
