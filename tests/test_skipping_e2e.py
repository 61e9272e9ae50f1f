"""End to end against the sandbox: discovered campaigns and Canvases are read only on the days
their details say they could have data, never missing a day they did."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.sandbox import _SANDBOX, sandbox_stats
from exporter.sandbox_messaging import Listed, messaging_catalogue
from tests.conftest import snapshot

CONFIG = """\
version: 1
timezone: UTC
output: {{dir: {out}}}
exports:
  - name: messages
    series: {series}
    {key}: {{discover: all{extra}}}
    window: {{days: {days}}}
"""


def _config(out: Path, series: str = "campaigns", days: int = 365, extra: str = "") -> str:
    key = "campaign_ids" if series == "campaigns" else "canvas_ids"
    return CONFIG.format(out=out, series=series, key=key, extra=extra, days=days)


def _days_with_data(out: Path, series: str, id_key: str) -> dict[str, set[date]]:
    """Per id, the days the output holds a non-zero value for."""
    found: dict[str, set[date]] = {}
    for path in (out / series).rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row["value"]:
                found.setdefault(row[id_key], set()).add(date.fromisoformat(row["time"]))
    return found


def _active(item: Listed, first: date, last: date) -> set[date]:
    days = (last - first).days + 1
    return {d for d in (first + timedelta(n) for n in range(days)) if item.active(d)}


@pytest.fixture
def messaging_sandbox(sandbox_server: Any, env_key: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Factory: a sandbox on a clock fixed at the test's start, the endpoint in the env."""
    started = time.time()

    def start(**options: Any) -> Any:
        server = sandbox_server(clock=lambda: started, **options)
        return server

    start.started = started  # type: ignore[attr-defined]
    return start


def _run(server: Any, path: Path, *args: str) -> int:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BRAZE_REST_ENDPOINT", server.url)
        return main(["run", str(path), *args])


def _paths(server: Any) -> dict[str, int]:
    return dict(sandbox_stats(server.app).paths)


def test_a_backfill_reads_details_then_only_the_days_each_campaign_could_have_data(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """365 days of every campaign: one details request each, data only around each one's
    life, and every day a campaign sent on is in the files."""
    out = tmp_path / "out"
    path = write_config(_config(out))
    with messaging_sandbox(campaigns=60, canvases=0) as server:
        assert _run(server, path) == 0
        sent = _paths(server)
        catalogue = messaging_catalogue(server.options)
    listed = [c for c in catalogue.campaigns if not c.archived]
    assert sent["/campaigns/details"] == len(listed)
    assert sent["/campaigns/data_series"] < len(listed) * 4  # 4 each without skipping
    today = datetime.fromtimestamp(messaging_sandbox.started, UTC).date()
    first, last = today - timedelta(days=365), today - timedelta(days=1)
    written = _days_with_data(out, "campaigns", "campaign_id")
    for campaign in listed:
        assert written.get(campaign.id, set()) == _active(campaign, first, last), campaign.name
    lines = capsys.readouterr().out
    assert f"campaigns: {len(listed)}; details read for {len(listed)} (" in lines
    assert "before the first send" in lines
    doc = json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())
    drafts = [c.id for c in listed if c.draft]
    assert drafts
    assert all(
        doc["skipping"]["skipped"][i][0]["rule"] == "a draft that never sent" for i in drafts
    )


def test_the_next_night_reads_no_details_and_one_request_per_campaign_not_a_draft(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """After a backfill, the next as-of day: details kept serve (the list shows no edit), and
    each campaign that is not a draft costs one data request (its provisional days)."""
    # 30 days: most campaigns lived before the window, so the backfill skips them whole.
    path = write_config(_config(tmp_path / "out", days=30))
    today = datetime.fromtimestamp(messaging_sandbox.started, UTC).date()
    with messaging_sandbox(campaigns=40, canvases=0) as server:
        assert _run(server, path, "--as-of", str(today - timedelta(days=1))) == 0
        before = _paths(server)
        with pytest.MonkeyPatch.context() as patch:  # plan first: what the night will cost
            patch.setenv("BRAZE_REST_ENDPOINT", server.url)
            capsys.readouterr()
            assert main(["plan", str(path), "--as-of", str(today), "--json"]) == 0
            planned = json.loads(capsys.readouterr().out)["totals"]["requests"]
            assert main(["plan", str(path), "--as-of", str(today)]) == 0
            # An upper bound, said as one (it said "at most what the run sends": BREAK19c 7).
            assert "the run sends at most as many" in capsys.readouterr().out
        assert _paths(server) == before  # plan sent nothing
        assert _run(server, path, "--as-of", str(today)) == 0
        after = _paths(server)
        catalogue = messaging_catalogue(server.options)
    listed = [c for c in catalogue.campaigns if not c.archived]
    night = {p: after[p] - before.get(p, 0) for p in after}
    assert night.get("/campaigns/details", 0) == 0
    assert night["/campaigns/data_series"] == sum(not c.draft for c in listed)
    # plan counts every discovered campaign the state knows, those whose windows the
    # backfill skipped whole included (it once counted only those with records: 12 of 32);
    # it reads no list, so a draft kept as one may count: at most what the run sends, plus
    # the drafts.
    drafts = sum(c.draft for c in listed)
    assert night["/campaigns/data_series"] <= planned <= night["/campaigns/data_series"] + drafts


def test_details_refused_read_every_window_whole_and_say_so_once(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key without campaigns.details: one details request, then every window read whole;
    one line says why; the run succeeds."""
    path = write_config(_config(tmp_path / "out", days=150))
    with messaging_sandbox(
        campaigns=20, canvases=0, deny_permissions=frozenset({"campaigns.details"})
    ) as server:
        assert _run(server, path) == 0
        sent = _paths(server)
        listed = [c for c in messaging_catalogue(server.options).campaigns if not c.archived]
    assert sent["/campaigns/details"] <= 16  # the concurrency: no id asked after the 403
    assert sent["/campaigns/data_series"] == 2 * len(listed)
    captured = capsys.readouterr()
    assert captured.out.count("details refused") == 1
    assert "campaigns.details" in captured.out


def test_a_canvas_is_read_from_its_first_entry_to_the_window_end(
    tmp_path: Path, write_config: Callable[..., Path], messaging_sandbox: Any
) -> None:
    """Canvases: the days before first_entry are skipped, never those after last_entry."""
    out = tmp_path / "out"
    path = write_config(_config(out, series="canvas", days=120, extra=", include_archived: true"))
    with messaging_sandbox(campaigns=0, canvases=12) as server:
        assert _run(server, path) == 0
        catalogue = messaging_catalogue(server.options)
    today = datetime.fromtimestamp(messaging_sandbox.started, UTC).date()
    first, last = today - timedelta(days=120), today - timedelta(days=1)
    written = _days_with_data(out, "canvas", "canvas_id")
    days_read: dict[str, set[date]] = {}
    for path_ in (out / "canvas").rglob("*.jsonl"):
        for line in path_.read_text().splitlines():
            row = json.loads(line)
            days_read.setdefault(row["canvas_id"], set()).add(date.fromisoformat(row["time"]))
    ended = 0
    for canvas in catalogue.canvases:  # the archived ones ended: their last entry is past
        assert written.get(canvas.id, set()) == _active(canvas, first, last)
        if canvas.first is not None and canvas.last is not None and canvas.last.date() < last:
            ended += 1
            assert last in days_read[canvas.id]  # read after its last entry, to the end
    assert ended


def test_archived_campaigns_are_exported_only_when_asked(
    tmp_path: Path, write_config: Callable[..., Path], messaging_sandbox: Any
) -> None:
    """include_archived: true lists and exports the archived campaigns too."""
    out = tmp_path / "out"
    path = write_config(_config(out, days=30, extra=", include_archived: true"))
    with messaging_sandbox(campaigns=30, canvases=0) as server:
        assert _run(server, path) == 0
        sent = _paths(server)
        catalogue = messaging_catalogue(server.options)
    assert sent["/campaigns/details"] == len(catalogue.campaigns)
    assert any(c.archived for c in catalogue.campaigns)


def test_skip_inactive_days_false_reads_every_day_and_no_details(
    tmp_path: Path, write_config: Callable[..., Path], messaging_sandbox: Any
) -> None:
    """An export that asks for every day (zeros included) sends no details request."""
    path = write_config(_config(tmp_path / "out", days=150) + "    skip_inactive_days: false\n")
    with messaging_sandbox(campaigns=20, canvases=0) as server:
        assert _run(server, path) == 0
        sent = _paths(server)
        listed = [c for c in messaging_catalogue(server.options).campaigns if not c.archived]
    assert "/campaigns/details" not in sent
    assert sent["/campaigns/data_series"] == 2 * len(listed)


def test_doctor_names_the_list_and_details_permissions_a_run_needs(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A Canvas discovery and campaigns read by their details: doctor names canvas.list,
    campaigns.details and canvas.details among what it did not probe."""
    served = messaging_catalogue()
    path = write_config(
        CONFIG.format(out="out", series="canvas", key="canvas_ids", extra="", days=30)
        + f"  - name: one\n    series: campaigns\n    campaign_ids: [{served.campaigns[3].id}]\n"
        "    window: {days: 30}\n"
    )
    assert main(["doctor", str(path), "--sandbox"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("not probed"))
    for permission in ("canvas.list", "campaigns.details", "canvas.details"):
        assert permission in line


@pytest.mark.parametrize(
    ("series", "filters", "code", "said"),
    [
        ("campaigns", "", 0, "probing campaign_id="),
        ("canvas", "", 0, "probing canvas_id="),
        ("campaigns", ", name: '^no such name$'", 1, "has no id export messages keeps"),
    ],
    ids=["campaigns", "canvas", "none-kept"],
)
def test_doctor_probes_the_first_id_a_discover_only_config_keeps(
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    series: str,
    filters: str,
    code: int,
    said: str,
) -> None:
    """A config that only discovers its campaigns (or Canvases): doctor reads page 0 of the
    list (one request) and probes the first id the export keeps. It gave up with exit 1
    (BREAK19c finding 11)."""
    path = write_config(_config(Path("out"), series=series, days=30, extra=filters))
    assert main(["doctor", str(path), "--sandbox"]) == code
    assert said in capsys.readouterr().out


def test_validate_and_plan_count_the_details_requests_in_the_workspace_pool(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """30 campaigns without details kept at 1 request an hour: both count 30 details
    requests in the workspace pool and give the same least time."""
    ids = ", ".join(f"c-{k}" for k in range(30))
    path = write_config(
        "version: 1\nlimits: {requests_per_hour: 1}\nexports:\n"
        f"  - {{name: c, series: campaigns, campaign_ids: [{ids}], window: {{days: 3}}}}\n"
    )
    assert main(["validate", str(path)]) == 0
    warning = capsys.readouterr().out
    assert "plans 30 requests in the workspace pool" in warning
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "details:  30 request(s) to /campaigns/details" in out
    least = out.split("time:     at least ")[1].split(" ")[0]
    assert f"it takes at least {least}:" in warning


def test_a_resumed_backfill_skips_as_the_run_it_resumes_would_have(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
) -> None:
    """A run stopped after reading details (here: its data requests refused) and resumed the
    same as-of day takes its details as this run's, as it takes its provisional periods: the
    files end byte-identical to an uninterrupted run's. Before, the resumed run took them as
    an earlier run's and read every campaign's provisional days again, writing extra rows of
    zeros (BREAK19 finding 8)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    with messaging_sandbox(campaigns=40, canvases=0) as server:
        assert _run(server, write_config(_config(whole), "whole.yaml")) == 0
        path = write_config(_config(resumed), "resumed.yaml")
        sandbox = server.app[_SANDBOX]
        sandbox.options = replace(
            sandbox.options, deny_permissions=frozenset({"campaigns.data_series"})
        )
        assert _run(server, path) == 3  # the details are kept, no data is written
        sandbox.options = replace(sandbox.options, deny_permissions=frozenset())
        before = _paths(server)
        assert _run(server, path) == 0
        after = _paths(server)
    assert after.get("/campaigns/details", 0) == before.get("/campaigns/details", 0)
    assert snapshot(resumed) == snapshot(whole)


def test_two_discoveries_of_one_list_are_told_apart_by_their_exports(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Two exports discovering campaigns with other filters: each summary line names its
    export (the two lines were alike but for their counts: BREAK19c finding 12)."""
    out = tmp_path / "out"
    path = write_config(
        f"version: 1\ntimezone: UTC\noutput: {{dir: {out}}}\nexports:\n"
        "  - name: welcome\n    series: campaigns\n"
        "    campaign_ids: {discover: all, name: '^Welcome', include_archived: true}\n"
        "    window: {days: 3}\n"
        "  - name: recent\n    series: campaigns\n"
        "    campaign_ids: {discover: all, edited_since: 2020-01-01}\n    window: {days: 3}\n"
    )
    with messaging_sandbox(campaigns=20, canvases=0) as server:
        assert _run(server, path) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("discovery:")]
    assert len(lines) == 2
    assert lines[0].startswith("discovery: campaign_ids from /campaigns/list (export welcome): ")
    assert lines[1].startswith("discovery: campaign_ids from /campaigns/list (export recent): ")


def test_a_details_request_braze_refuses_is_reported_with_braze_s_reason(
    tmp_path: Path,
    write_config: Callable[..., Path],
    messaging_sandbox: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An id Braze does not know: its details fail with a 400, and the summary and the
    manifest give Braze's words (they said only that details of 1 could not be read:
    BREAK19c finding 8)."""
    out = tmp_path / "out"
    path = write_config(
        f"version: 1\ntimezone: UTC\noutput: {{dir: {out}}}\nexports:\n"
        "  - name: m\n    series: campaigns\n    campaign_ids: [no-such-campaign]\n"
        "    window: {days: 3}\n"
    )
    with messaging_sandbox(campaigns=5, canvases=0) as server:
        assert _run(server, path) == 1  # its data is refused too
    said = capsys.readouterr().out
    assert "details of 1 could not be read (first, no-such-campaign: " in said
    assert "Invalid campaign_id" in said.split("could not be read", 1)[1].splitlines()[0]
    doc = json.loads(sorted((out / "_runs").glob("*.json"))[-1].read_text())
    (report,) = doc["skipping"]["reports"]
    assert "Invalid campaign_id" in report["details_failure"]
    assert list(report["details_failures"]) == ["no-such-campaign"]  # each id named
