"""Whose details a run reads again, and what skipping adds up to."""

from __future__ import annotations

from datetime import UTC, date, datetime

from exporter.activity import Life
from exporter.details import Known
from exporter.lives import SkipReport, Subject, refresh_reason, split


def d(text: str) -> int:
    return date.fromisoformat(text).toordinal()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


EDITED = at("2025-02-01T00:00:00")
YEAR = ((d("2025-01-01"), d("2025-12-31")),)
SETTLE = d("2025-12-29")


def subject(needed: tuple[tuple[int, int], ...], **kw: object) -> Subject:
    return Subject(
        str(kw.get("dimension", "campaign_id")),
        "c-1",
        YEAR,
        needed,
        int(kw.get("limit", 100)),  # type: ignore[call-overload]
        SETTLE,
        kw.get("listed", EDITED),  # type: ignore[arg-type]
        kw.get("as_of"),  # type: ignore[arg-type]
    )


def known(
    bounded: bool = True, read: str = "2025-12-31T10:00:00", as_of: int | None = None
) -> Known:
    life = Life(
        False,
        at("2025-03-01T00:00:00"),
        at("2025-03-20T00:00:00") if bounded else None,
        at(read),
        bounded=bounded,
    )
    return Known(life, EDITED, as_of)


def test_details_never_kept_are_read() -> None:
    """A campaign first seen: its details are read."""
    assert refresh_reason(subject(YEAR), None) == "no details kept"


def test_a_nightly_run_keeps_the_details_it_has() -> None:
    """Unchanged in the list, and only the last days needed: kept details serve."""
    nightly = ((d("2025-12-28"), d("2025-12-31")),)
    assert refresh_reason(subject(nightly), known(read="2025-12-30T10:00:00")) is None


def test_an_edited_campaign_has_its_details_read_again() -> None:
    """The list's last_edited moved since the details were read: read them again."""
    nightly = ((d("2025-12-28"), d("2025-12-31")),)
    moved = subject(nightly, listed=at("2025-12-29T00:00:00"))
    assert refresh_reason(moved, known()) == "edited since its details were read"


def test_a_window_beyond_what_was_proven_pays_for_fresh_details() -> None:
    """Kept details read long ago leave most of a year to read (3+ requests): fresh ones pay."""
    old = known(read="2025-04-01T00:00:00")
    assert refresh_reason(subject(YEAR), old) == "fresh details may save data requests"


def test_fresh_details_never_pay_for_a_canvas_already_entered() -> None:
    """A Canvas' days after its last entry are read whatever its details say: no refresh."""
    old = known(bounded=False, read="2025-04-01T00:00:00")
    assert refresh_reason(subject(YEAR, dimension="canvas_id", limit=14), old) is None


def test_the_report_adds_days_by_rule_and_requests_saved() -> None:
    """One campaign split by fresh details: skipped days by rule, requests saved, lines."""
    report = SkipReport("campaign_id")
    subj = subject(YEAR)
    life = known().life
    report.fresh["no details kept"] += 1
    report.details_requests += 1
    report.add(subj, split(subj, life, fresh=True, known=None), source="fresh")
    assert report.days == {
        "before the first send or entry": 58,
        "after the last send and its conversion window": 285,
    }
    assert report.requests_saved == 3
    lines = report.lines()
    assert lines[0].startswith("campaigns: 1; details read for 1 (1 no details kept; 1 request")
    assert "58 before the first send" in lines[1]
    assert report.doc()["requests_saved"] == 3


def test_a_refusal_is_said_once() -> None:
    """A 403 on details: one line says the windows are read whole."""
    report = SkipReport("canvas_id", denied="refused; check campaigns.details")
    assert sum("details refused" in line for line in report.lines()) == 1


def test_refused_or_failed_details_are_never_called_none_needed() -> None:
    """The first line says why no details were read: refused, could not be read, or none
    needed, never 'none needed' for a refusal."""
    refused = SkipReport("campaign_id", denied="refused; check campaigns.details")
    assert "details read for 0 (refused;" in refused.lines()[0]
    failed = SkipReport("campaign_id", failures={"c-1": "HTTP 400", "c-2": "HTTP 400"})
    assert "details read for 0 (none could be read;" in failed.lines()[0]
    assert "(none needed;" in SkipReport("campaign_id").lines()[0]


def test_details_kept_by_the_run_this_one_resumes_count_as_read_in_it() -> None:
    """Kept by a run of the same as-of date (the one this resumes): the provisional days
    after the last send are skipped as that run skipped them, and nothing is read again.
    Kept by a run of another as-of date: the provisional days are read (BREAK19 finding 8)."""
    as_of = d("2026-01-01")
    now = known(as_of=as_of)
    resumed = split(subject(YEAR, as_of=as_of), now.life, fresh=False, known=now)
    assert resumed.kept == ((d("2025-02-28"), d("2025-03-21")),)
    assert refresh_reason(subject(YEAR, as_of=as_of), now) is None
    earlier = known(as_of=as_of - 1)
    nightly = split(subject(YEAR, as_of=as_of), earlier.life, fresh=False, known=earlier)
    assert nightly.kept[-1] == (d("2025-12-29"), d("2025-12-31"))
    assert refresh_reason(subject(YEAR, as_of=as_of), earlier) is not None
    unstamped = known()  # kept by a version that did not stamp them: an earlier run's
    assert split(subject(YEAR, as_of=as_of), unstamped.life, fresh=False, known=unstamped).kept[
        -1
    ] == (d("2025-12-29"), d("2025-12-31"))
