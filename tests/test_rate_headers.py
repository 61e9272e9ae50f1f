"""Against sandboxes whose X-RateLimit-Reset is odd: exact data, no hang, no tight loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from exporter.cli import build_parser
from exporter.sandbox import RESET_STYLES, SandboxOptions, start_sandbox
from tests.conftest import Cli, FakeClock
from tests.test_e2e import AS_OF, _check_every_row

SEGMENTS = [f"s{i}" for i in range(12)]


def _config(out: Path, *, reserve: float, concurrency: int, extra: str = "") -> str:
    return f"""\
version: 1
limits: {{requests_per_hour: 1000000, reserve: {reserve}, concurrency: {concurrency}{extra}}}
output: {{dir: {out}}}
exports:
  - name: many
    segment_ids: [{", ".join(SEGMENTS)}]
    window: {{days: 2}}
"""


@pytest.mark.parametrize(
    ("style", "reset"),
    [("seconds", "1700000010"), ("ms", "1700000010000"), ("past", "1699999940"), ("missing", None)],
)
async def test_sandbox_writes_reset_in_the_style_asked(style: str, reset: str | None) -> None:
    """reset_style shapes X-RateLimit-Reset on every response; Limit and Remaining stay."""
    clock = FakeClock(1_700_000_003.5)
    options = SandboxOptions(limit=5, window_s=10.0, reset_style=style, clock=clock)
    runner, url = await start_sandbox(options)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{url}/sessions/data_series",
                params={"length": "1", "segment_id": "s"},
                headers={"Authorization": "Bearer k"},
            ) as resp,
        ):
            assert resp.status == 200
            assert resp.headers.get("X-RateLimit-Reset") == reset
            assert resp.headers["X-RateLimit-Remaining"] == "4"
    finally:
        await runner.cleanup()


def test_sandbox_command_lists_the_reset_styles(capsys: pytest.CaptureFixture[str]) -> None:
    """braze-export sandbox --help names every Reset style; an unknown one is refused."""
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "--help"])
    assert "--reset-style {seconds,ms,past,missing}" in capsys.readouterr().out
    assert parser.parse_args(["sandbox"]).reset_style == "seconds"
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "--reset-style", "minutes"])
    with pytest.raises(ValueError, match="reset_style"):
        SandboxOptions(reset_style="minutes")


@pytest.mark.parametrize("style", RESET_STYLES)
def test_each_reset_style_completes_with_exact_data(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str, style: str
) -> None:
    """Reset in seconds, milliseconds, the past or missing: every row equals the sandbox's."""
    out = tmp_path / "out"
    path = write_config(_config(out, reserve=0.2, concurrency=4))
    ran, stats = cli.against_sandbox(
        "run", path, "--as-of", AS_OF, limit=5, window_s=1.0, reset_style=style
    )
    assert ran.code == 0
    assert stats.ok == len(SEGMENTS)
    assert _check_every_row(out) == 2 * len(SEGMENTS)


def test_many_429s_with_a_reset_in_the_past_never_loop_tight(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """With Reset already gone, 429s per 1 s window stay within two rounds of the workers."""
    out = tmp_path / "out"
    concurrency, limit = 12, 3
    path = write_config(_config(out, reserve=0, concurrency=concurrency))
    ran, stats = cli.against_sandbox(
        "run", path, "--as-of", AS_OF, limit=limit, window_s=1.0, reset_style="past"
    )
    assert ran.code == 0
    assert _check_every_row(out) == 2 * len(SEGMENTS)
    assert stats.rate_limited >= concurrency - limit  # the first burst alone overran the limit
    # A 429 closes the gate for everyone: a window sees the requests already in flight, and
    # at most one more round if the gate reopens before the window ends.
    per_window = [max(0, n - limit) for n in stats.window_counts.values()]
    assert max(per_window) <= 2 * concurrency
    assert stats.rate_limited <= 2 * concurrency * len(stats.window_counts)


def test_max_pause_s_clamps_the_pauses_of_a_run(
    tmp_path: Path, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """limits.max_pause_s: 1 against 3 s windows: no pause lasts longer, the data is exact."""
    out = tmp_path / "out"
    path = write_config(_config(out, reserve=0.2, concurrency=2, extra=", max_pause_s: 1"))
    ran, _ = cli.against_sandbox("run", path, "--as-of", AS_OF, limit=6, window_s=3.0)
    assert ran.code == 0
    assert "a pause longer than limits.max_pause_s (1s) was asked for" in ran.err
    assert _check_every_row(out) == 2 * len(SEGMENTS)
