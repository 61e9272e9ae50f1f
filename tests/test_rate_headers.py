"""Sandboxes whose X-RateLimit-Reset is odd."""

from __future__ import annotations

import aiohttp
import pytest

from exporter.cli import build_parser
from exporter.sandbox import SandboxOptions, start_sandbox
from tests.conftest import FakeClock


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
