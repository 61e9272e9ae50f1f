"""doctor: the first contact with a workspace, in each window semantics and auth case."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.sandbox import sandbox_stats
from tests.conftest import Cli, NotBraze

Doctor = Callable[[str], tuple[int, str]]
CONFIG = """\
version: 1
timezone: America/New_York
exports:
  - name: e
    segment_ids: [seg-a]
    units: [day, hour]
    window: {days: 3}
"""


@pytest.fixture
def doctor(write_config: Callable[..., Path], cli: Cli, env_key: str) -> Doctor:
    """doctor of CONFIG against an endpoint URL, with the key: its exit status and what it
    printed (never a traceback)."""

    def run(url: str) -> tuple[int, str]:
        cli.point_at(url)
        ran = cli("doctor", write_config(CONFIG))
        assert "Traceback" not in ran.err
        return ran.code, ran.out

    return run


@pytest.mark.parametrize(
    ("semantics", "day_words", "hour_words"),
    [
        ("contains", "ending with the day that contains", "ending with the hour that contains"),
        ("exclusive", "ending one day before", "ending one hour before"),
        (
            "utc",
            "ending one day after the day containing ending_at (days cut in UTC",
            "ending with the hour that contains",
        ),
    ],
)
def test_doctor_reports_the_window_offset_of_each_unit(
    doctor: Doctor,
    sandbox_server: Any,
    semantics: str,
    day_words: str,
    hour_words: str,
) -> None:
    """Each semantics is named in plain words per unit; two requests; verdict ready."""
    with sandbox_server(semantics=semantics, hour_labels="z") as server:
        code, out = doctor(server.url)
        assert sandbox_stats(server.app).requests == 2
    assert code == 0
    day = next(line for line in out.splitlines() if line.startswith("day: asked"))
    hour = next(line for line in out.splitlines() if line.startswith("hour: asked"))
    assert day_words in day
    assert hour_words in hour
    assert "hour: labels like" in out
    assert "(UTC with Z)" in out
    assert "other traffic has used 0 (0.0%)" in out
    assert out.splitlines()[-1].startswith("verdict: ready")


@pytest.mark.parametrize(
    ("server", "code", "words"),
    [
        ({"api_key": "another-key"}, 3, "key: rejected (401)"),
        ({"deny": True}, 3, "key: lacks permission (403)"),
    ],
)
def test_doctor_names_auth_problems(
    doctor: Doctor,
    sandbox_server: Any,
    server: dict[str, Any],
    code: int,
    words: str,
) -> None:
    """401 and 403 exit 3 with what to check, after one request."""
    with sandbox_server(**server) as handle:
        got, out = doctor(handle.url)
        assert sandbox_stats(handle.app).requests == 1
    assert got == code
    assert words in out
    assert "verdict: the key" in out


def test_doctor_on_a_closed_port_exits_4(
    doctor: Doctor,
    closed_port: int,
) -> None:
    """Nothing listening: the host and 'connection refused', exit 4."""
    port = closed_port
    code, out = doctor(f"http://127.0.0.1:{port}")
    assert code == 4
    assert f"connection refused (127.0.0.1:{port})" in out
    assert "verdict: unreachable" in out


def test_doctor_on_a_host_that_is_not_braze_exits_4(
    doctor: Doctor,
    not_braze: NotBraze,
) -> None:
    """A 404 says the host is not a Braze REST host."""
    code, out = doctor(not_braze.url)
    assert code == 4
    assert "verdict: not Braze" in out


def test_doctor_sandbox_needs_no_key(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor --sandbox runs with no key in the environment."""
    assert main(["doctor", str(write_config(CONFIG)), "--sandbox"]) == 0
    assert "verdict: ready" in capsys.readouterr().out


def test_doctor_does_not_call_an_empty_answer_ready(
    doctor: Doctor,
    not_braze: NotBraze,
) -> None:
    """200 with no points: the offset is unknown, and the verdict says so instead of ready;
    a Remaining above Limit is called out, not shown as fact."""
    not_braze.status, not_braze.body = 200, {"message": "success", "data": []}
    not_braze.headers = {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "2000"}
    code, out = doctor(not_braze.url)
    assert code == 0
    assert (
        "verdict: reachable and authorised, but no whole window came back for day and hour" in out
    )
    assert "X-RateLimit-Remaining 2000 does not fit X-RateLimit-Limit 1000" in out


def test_doctor_on_a_server_that_drops_connections_exits_1(
    doctor: Doctor,
    not_braze: NotBraze,
) -> None:
    """Connected, then closed without an answer: not "unreachable", exit 1 with the cause."""
    not_braze.close = True
    code, out = doctor(not_braze.url)
    assert code == 1
    assert "verdict: no usable answer (connection closed before a whole response)" in out


def test_doctor_sees_days_cut_in_utc_east_of_utc(
    write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """Tokyo: a window ending at 23:59:59 local cannot show a UTC cut; a third probe ending at
    00:30 local does, and the verdict says so."""
    tokyo = CONFIG.replace("America/New_York", "Asia/Tokyo")
    for semantics, words in (("utc", "named the day before"), ("contains", "names the same day")):
        ran, stats = cli.against_sandbox("doctor", write_config(tokyo), semantics=semantics)
        assert ran.code == 0
        assert stats.requests == 3
        out = ran.out
        assert words in out
        assert ("with a caveat" in out) == (semantics == "utc")


def test_doctor_probes_a_listed_series_and_names_the_permissions_it_did_not_probe(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With the first export's required ids discovered, doctor probes the next export whose
    ids are listed (here DAU, day only) and names every other permission a run needs."""
    text = (
        "version: 1\nexports:\n"
        "  - name: s\n    segment_ids: {discover: analytics_enabled}\n    units: [hour]\n"
        "    window: {days: 2}\n"
        "  - name: d\n    series: dau\n    app_ids: [ios]\n    window: {days: 2}\n"
    )
    assert main(["doctor", str(write_config(text)), "--sandbox"]) == 0
    out = capsys.readouterr().out
    assert "probing /kpi/dau/data_series app_id='ios' for unit(s) day" in out
    assert "not probed (a run needs them too): sessions.data_series, segments.list" in out
    assert "key: accepted, with the permission kpi.dau.data_series" in out


def test_doctor_names_the_permissions_of_the_dimension_tables(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The lists dimensions: asks for are read by a run too: doctor names their permissions."""
    text = (
        "version: 1\ndimensions: [campaigns, events]\nexports:\n"
        "  - name: d\n    series: dau\n    window: {days: 2}\n"
    )
    assert main(["doctor", str(write_config(text)), "--sandbox"]) == 0
    out = capsys.readouterr().out
    assert "not probed (a run needs them too): campaigns.list, events.list" in out


def test_doctor_on_a_body_nested_too_deep_exits_1(
    doctor: Doctor,
    not_braze: NotBraze,
) -> None:
    """A 200 of 100,000 nested arrays: a verdict (the body is not JSON), exit 1, no traceback."""
    not_braze.status, not_braze.body = 200, b"[" * 100_000 + b"]" * 100_000
    code, out = doctor(not_braze.url)
    assert code == 1
    assert "body is not JSON" in out
    assert "verdict: Braze is busy or odd right now" in out


def test_doctor_on_a_list_page_that_redirects_exits_4(
    write_config: Callable[..., Path], cli: Cli, env_key: str, not_braze: NotBraze
) -> None:
    """A discover-only config whose list page answers a redirect: one line and exit 4, as a
    redirected probe is (the list page's redirect escaped doctor's verdict)."""
    not_braze.status = 302
    not_braze.headers = {"Location": "https://elsewhere.example/campaigns/list"}
    cli.point_at(not_braze.url)
    path = write_config(
        "version: 1\nexports:\n  - name: m\n    series: campaigns\n"
        "    campaign_ids: {discover: all}\n    window: {days: 3}\n"
    )
    ran = cli("doctor", path)
    assert "Traceback" not in ran.err
    assert ran.code == 4
    assert "/campaigns/list page 0 redirected" in ran.out
    assert "redirects are not followed" in ran.out
