"""Campaign, Canvas and send exports: their config keys, and how they are planned."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import load_config
from exporter.errors import ConfigError
from exporter.plan import build_plan, cover
from exporter.sandbox_messaging import messaging_catalogue

AS_OF = date(2024, 7, 1)


def _config(write_config: Callable[..., Path], exports: str, limits: str = "") -> Path:
    return write_config(f"version: 1\n{limits}exports:\n{exports}")


def _problems(write_config: Callable[..., Path], exports: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(write_config, exports), env={})
    return str(caught.value)


CAMPAIGNS = """\
  - name: c
    series: campaigns
    campaign_ids: [c-1, c-2]
    window: {days: 30}
"""
CANVAS = """\
  - name: v
    series: canvas
    canvas_ids: [v-1]
    window: {days: 30}
"""
SENDS = """\
  - name: s
    series: sends
    campaign_id: c-1
    send_ids: [s-1, s-2]
    window: {days: 30}
"""


def test_message_series_take_their_ids_under_brazes_names(
    write_config: Callable[..., Path],
) -> None:
    """campaigns take campaign_ids, canvas canvas_ids, sends one campaign_id and send_ids."""
    config = load_config(_config(write_config, CAMPAIGNS + CANVAS + SENDS), env={})
    plan = build_plan(config, AS_OF)
    labels = sorted(s.label for s in plan.series)
    assert labels == [
        "campaigns/day/campaign-c-1",
        "campaigns/day/campaign-c-2",
        "canvas/day/canvas-v-1",
        "sends/day/campaign-c-1/send-s-1",
        "sends/day/campaign-c-1/send-s-2",
    ]


def test_canvas_breakdowns_are_on_unless_turned_off(write_config: Callable[..., Path]) -> None:
    """A Canvas request asks for every breakdown unless the export says otherwise."""
    off = CANVAS + "    include_deleted_step_data: false\n"
    config = load_config(_config(write_config, off), env={})
    (request, *_) = build_plan(config, AS_OF).requests
    params = request.params()
    assert params["include_variant_breakdown"] == "true"
    assert params["include_step_breakdown"] == "true"
    assert params["include_deleted_step_data"] == "false"
    assert "unit" not in params


def test_hours_and_wrong_keys_are_refused_in_one_pass(write_config: Callable[..., Path]) -> None:
    """Day only; each series its own id keys; the Canvas flags only on canvas."""
    text = _problems(
        write_config,
        CAMPAIGNS.replace("window:", "units: [hour]\n    window:")
        + SENDS.replace("campaign_id: c-1", "campaign_ids: [c-1]")
        + CANVAS.replace("series: canvas", "series: campaigns")
        + CAMPAIGNS.replace("name: c", "name: d").replace("campaign_ids: [c-1, c-2]", "")
        + "    include_step_breakdown: false\n",
    )
    assert "exports[0].units[0]: series campaigns has no unit 'hour' (Braze serves it by day)" in (
        text
    )
    assert "exports[1].campaign_ids: series sends takes no campaign_ids" in text
    assert "exports[1].campaign_id: required for series sends" in text
    assert "exports[2].canvas_ids: series campaigns takes no canvas_ids" in text
    assert "exports[3].campaign_ids: required for series campaigns" in text
    assert "exports[3].include_step_breakdown: only series canvas takes it" in text


def test_one_canvas_with_two_sets_of_flags_is_refused(write_config: Callable[..., Path]) -> None:
    """Two exports of one Canvas with other flags would write its files with other rows."""
    other = CANVAS.replace("name: v", "name: w") + "    include_step_breakdown: false\n"
    text = _problems(write_config, CANVAS + other)
    assert "Canvas 'v-1' is also in exports[0] with other include_* flags" in text


def test_campaigns_have_their_own_pool(write_config: Callable[..., Path]) -> None:
    """50,000 requests/minute by default, configurable like the lists pool."""
    config = load_config(_config(write_config, CAMPAIGNS), env={})
    assert config.limits.pool("campaigns") == (3_000_000, 1.0, 0.1)
    assert config.limits.pool_for("campaigns") == "campaigns"
    limits = "limits:\n  pools: {campaigns: {requests_per_hour: 600, share: 0.5}}\n"
    config = load_config(_config(write_config, CAMPAIGNS, limits), env={})
    assert config.limits.pool("campaigns") == (600, 0.5, 0.1)
    # One key set keeps the pool's own defaults (not the lists pool's 1,000/hour).
    limits = "limits:\n  pools: {campaigns: {share: 0.5}}\n"
    config = load_config(_config(write_config, CAMPAIGNS, limits), env={})
    assert config.limits.pool("campaigns") == (3_000_000, 0.5, 0.1)
    moved = "limits:\n  pool_of: {campaigns: workspace}\n"
    assert load_config(_config(write_config, CAMPAIGNS, moved), env={}).limits.pool_for(
        "campaigns"
    ) == ("workspace")


def test_canvas_windows_are_the_fewest_of_14_days(write_config: Callable[..., Path]) -> None:
    """A 30-day Canvas window is 3 requests of at most 14 days, the last ending yesterday."""
    config = load_config(_config(write_config, CANVAS), env={})
    requests = build_plan(config, AS_OF).requests
    assert [r.length for r in requests] == [14, 14, 2]
    assert requests[-1].last == (AS_OF - timedelta(days=1)).toordinal()
    assert len(list(cover([(0, 29)], 14))) == -(-30 // 14)


def test_sends_are_planned_only_for_the_days_braze_keeps(
    write_config: Callable[..., Path],
) -> None:
    """Braze keeps send analytics 14 days after the send: older days are not planned."""
    config = load_config(_config(write_config, SENDS), env={})
    plan = build_plan(config, AS_OF)
    first = (AS_OF - timedelta(days=14)).toordinal()
    assert {r.first for r in plan.requests} == {first}
    assert any("keeps sends analytics 14 days after the send" in w for w in plan.warnings)
    old = SENDS.replace("{days: 30}", "{start: 2024-01-01, end: 2024-02-01}")
    with pytest.raises(ConfigError, match="every day ends before 2024-06-17"):
        build_plan(load_config(_config(write_config, old), env={}), AS_OF)


def test_validate_refuses_a_sends_window_braze_no_longer_keeps_as_run_does(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A sends window that ends before the 14 days Braze keeps is exit 2 for validate too
    (it said valid, then plan and run refused it), and nothing says "valid." (it printed
    that line first, then the error: BREAK19c finding 10)."""
    old = SENDS.replace("{days: 30}", "{start: 2024-01-01, end: 2024-02-01}")
    assert main(["validate", str(_config(write_config, old))]) == 2
    said = capsys.readouterr()
    assert "Braze keeps sends analytics 14 days after the send" in said.err
    assert "valid." not in said.out


def test_plan_paces_campaign_requests_in_their_own_pool(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan's workspace time leaves out campaign requests and says theirs on a line of its
    own, at the campaigns pool's rate."""
    limits = "limits: {requests_per_hour: 3600, pools: {campaigns: {requests_per_hour: 60}}}\n"
    config = _config(write_config, CAMPAIGNS + CANVAS, limits)
    assert main(["plan", str(config), "--as-of", AS_OF.isoformat()]) == 0
    out = capsys.readouterr().out
    # The 3 Canvas requests and the 3 details requests (no details kept yet), 1/s.
    assert "time:     at least 6.0s at that rate" in out
    assert "campaigns: 2 request(s) in the campaigns pool, at 60/hour: at least 2m00s" in out


def test_the_demo_exports_a_campaign_and_a_canvas_the_sandbox_serves() -> None:
    """make demo shows one campaign and one Canvas export, of ids the sandbox knows."""
    config = load_config(Path(__file__).parent.parent / "configs" / "demo.yaml", env={})
    served = messaging_catalogue()
    by_series = {e.series: e for e in config.exports}
    assert by_series["campaigns"].campaign_ids == [served.campaigns[3].id]
    assert by_series["canvas"].canvas_ids == [served.canvases[2].id]


def test_plan_json_least_time_is_the_slowest_pools(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """plan --json's seconds_at_least: each pool paces its own requests side by side, so
    the slowest pool's time, not all requests at the workspace's rate."""
    limits = "limits: {requests_per_hour: 3600, pools: {campaigns: {requests_per_hour: 60}}}\n"
    config = _config(write_config, CAMPAIGNS + CANVAS, limits)
    assert main(["plan", str(config), "--json", "--as-of", AS_OF.isoformat()]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["exports"]["v"]["seconds_at_least"] == 3.0  # 3 Canvas requests at 1/s
    assert doc["exports"]["c"]["seconds_at_least"] == 120.0  # 2 at 1/minute
    assert doc["totals"]["seconds_at_least"] == 120.0
