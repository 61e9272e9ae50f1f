"""2. Budget adherence against a scaled-down fixed window (300 requests per 10 s).

Run A: the exporter alone, configured to the same budget (108,000/hour = 300 per 10 s,
reserve 10%). Run B: the same while a competing client spends half the pool (15 requests/s),
the exporter configured to its half (share 0.5). Prints utilisation (achieved rate / the rate
it may use, i.e. the budget less the reserve), the most requests the sandbox saw in any window
(must not exceed the limit) and the 429 counts (goal 0, the competitor's included).

Run C: a server that sends no X-RateLimit-Reset at all (sandbox ``--limit 20 --window 5
--reset-style missing``, 4 requests/s) and the exporter at its default 250,000/hour: only
429s tell it the pace, so the AIMD pace must keep 429s under 5% while still using the 4/s.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    AS_OF,
    KEY,
    Sandbox,
    exporter_env,
    grid_config,
    machine,
    sandbox,
    verdict,
    write_config,
)

LIMIT, WINDOW = 300, 10.0
RESERVE = 0.1


def config(out: Path, share: float, series: int) -> str:
    rate = int(LIMIT * 3600 / WINDOW)
    limits = f"requests_per_hour: {rate}, share: {share}, reserve: {RESERVE}"
    return grid_config(out, series // 50, 50, limits)


async def _compete(url: str, per_s: float, stop: asyncio.Event) -> dict[str, int]:
    """Another client of the workspace: evenly spaced requests until told to stop."""
    counts = {"sent": 0, "rate_limited": 0}
    if per_s <= 0:
        return counts
    params = {"length": "1", "unit": "day", "segment_id": "competitor"}
    headers = {"Authorization": f"Bearer {KEY}"}
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.get(
                f"{url}/sessions/data_series", params=params, headers=headers
            ) as resp:
                await resp.read()
                counts["sent"] += 1
                counts["rate_limited"] += resp.status == 429
            next_at = started + counts["sent"] / per_s
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return counts


async def _run(box: Sandbox, cfg: Path, competitor_per_s: float) -> tuple[str, dict[str, int]]:
    stop = asyncio.Event()
    competitor = asyncio.create_task(_compete(box.url, competitor_per_s, stop))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--log-level",
        "WARNING",
        "run",
        str(cfg),
        "--as-of",
        AS_OF,
        env=exporter_env(box.url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    stop.set()
    counts = await competitor
    if proc.returncode != 0:
        raise RuntimeError(err.decode())
    return out.decode().split("manifest: ", 1)[1].strip(), counts


def scenario(name: str, share: float, competitor_per_s: float, series: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    try:
        with sandbox("--limit", str(LIMIT), "--window", str(WINDOW)) as box:
            cfg = write_config(work / "bench.yaml", config(work / "out", share, series))
            manifest_path, competitor = asyncio.run(_run(box, cfg, competitor_per_s))
            manifest: dict[str, Any] = json.loads(Path(manifest_path).read_text())
            stats = box.stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sent = manifest["budget"]["requests_sent"]
    elapsed = manifest["elapsed_s"]
    achieved = sent / elapsed
    may_use = min(LIMIT * share, LIMIT * (1 - RESERVE)) / WINDOW
    # The first and last windows are partial (the run starts and ends mid-window); whole
    # windows in between say what the exporter gets out of a window.
    # (Only alone: the sandbox's window counts would include a competitor's requests.)
    per_window = list(stats["windows"].values())[1:-1] if not competitor_per_s else []
    full = sum(per_window) / len(per_window) / (may_use * WINDOW) if per_window else float("nan")
    result = {
        "requests": sent,
        "elapsed": elapsed,
        "achieved": achieved,
        "may_use": may_use,
        "utilisation": achieved / may_use,
        "full_window_utilisation": full,
        "max_in_window": stats["max_in_window"],
        "exporter_429": manifest["totals"]["rate_limited"],
        "competitor_sent": competitor["sent"],
        "competitor_429": competitor["rate_limited"],
        "pauses": manifest["budget"]["pauses"],
    }
    print(
        f"| {name} | {sent:,} | {elapsed:.1f} | {achieved:.2f} | {may_use:.2f} | "
        f"{result['utilisation']:.1%} | {'-' if full != full else f'{full:.1%}'} | "
        f"{stats['max_in_window']} / {LIMIT} | "
        f"{result['exporter_429']} | {competitor['sent']} / {competitor['rate_limited']} |"
    )
    return result


MISSING_LIMIT, MISSING_WINDOW = 20, 5.0


def missing_reset(series: int = 1500) -> dict[str, float]:
    """Run C: no Reset header at all; the exporter configured far above the server's limit."""
    work = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    limit, window = MISSING_LIMIT, MISSING_WINDOW
    try:
        with sandbox(
            "--limit", str(limit), "--window", str(window), "--reset-style", "missing"
        ) as box:
            body = grid_config(work / "out", series // 50, 50, "concurrency: 16")
            cfg = write_config(work / "bench.yaml", body)
            manifest_path, _ = asyncio.run(_run(box, cfg, 0.0))
            elapsed = json.loads(Path(manifest_path).read_text())["elapsed_s"]
            stats = box.stats()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sent, limited = stats["requests"], stats["rate_limited"]
    allowed = limit / window
    result = {
        "requests": sent,
        "rate_limited": limited,
        "share_429": limited / sent,
        "ok_per_s": (sent - limited) / elapsed,
        "allowed_per_s": allowed,
        "max_in_window": stats["max_in_window"],
    }
    print(
        f"| no Reset header, {limit} per {window:g}s, exporter at 250,000/hour | {sent:,} | "
        f"{elapsed:.1f} | {result['ok_per_s']:.2f} | {allowed:.2f} | "
        f"{result['ok_per_s'] / allowed:.1%} | - | {stats['max_in_window']} / {limit} | "
        f"{limited} ({result['share_429']:.1%}) | - |"
    )
    return result


def run(series: int = 2000) -> list[dict[str, float]]:
    print(
        f"budget: sandbox fixed window {LIMIT} per {WINDOW:g}s, reserve {RESERVE:.0%}; {machine()}"
    )
    print(
        "| scenario | requests | wall s | achieved/s | may use/s | utilisation (run) | "
        "utilisation (whole windows) | max in a window | exporter 429s | "
        "competitor sent / 429s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    alone = scenario("alone, share 1.0", 1.0, 0.0, series)
    shared = scenario("competitor at 15/s, share 0.5", 0.5, LIMIT / WINDOW / 2, series)
    blind = missing_reset()
    ok = (
        alone["full_window_utilisation"] >= 0.97
        and all(r["max_in_window"] <= LIMIT and r["exporter_429"] == 0 for r in (alone, shared))
        and shared["competitor_429"] == 0
        and blind["share_429"] < 0.05
        and blind["ok_per_s"] >= 0.8 * blind["allowed_per_s"]
    )
    print(
        verdict(
            ok,
            f"utilisation {alone['full_window_utilisation']:.1%} of each whole window "
            f"(goal >= 97%), "
            f"max {max(alone['max_in_window'], shared['max_in_window'])} per window "
            f"(limit {LIMIT}), 429s: exporter {alone['exporter_429']}+"
            f"{shared['exporter_429']}, competitor {shared['competitor_429']}; without Reset "
            f"{blind['share_429']:.1%} 429s (goal < 5%) at {blind['ok_per_s']:.2f}/s of "
            f"{blind['allowed_per_s']:.0f}/s (goal >= 80%)",
        )
    )
    return [alone, shared, blind]


if __name__ == "__main__":
    if sys.argv[1:2] == ["missing-reset"]:  # run C alone: python -m bench.budget missing-reset
        missing_reset(*(int(n) for n in sys.argv[2:3]))
    else:
        run(int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
