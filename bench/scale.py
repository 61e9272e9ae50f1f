"""3. Scale: plan and run 10,000 and 100,000 series (segments x apps, one day each) against
the unthrottled sandbox. Prints the planning time and the exporter's peak RSS at each size;
goals: <= 200 MB, and at most 1.5x between the two.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from bench.common import (
    AS_OF,
    exporter_env,
    grid_config,
    machine,
    measure,
    sandbox,
    verdict,
    write_config,
)
from exporter.config import load_config
from exporter.plan import build_plan

GOAL_MB = 200.0
GOAL_RATIO = 1.5


def config(out: Path, segments: int, apps: int) -> str:
    return grid_config(out, segments, apps, "requests_per_hour: 100000000, concurrency: 64")


def one(segments: int, apps: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        cfg = write_config(work / "scale.yaml", config(work / "out", segments, apps))
        started = time.perf_counter()
        plan = build_plan(load_config(cfg), date.fromisoformat(AS_OF))
        planning = time.perf_counter() - started
        requests = len(plan.requests)
        del plan
        with sandbox("--limit", "0") as box:
            run = measure(
                [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF],
                env=exporter_env(box.url),
            )
        assert run.returncode == 0, run.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
    series = segments * apps
    print(
        f"| {series:,} | {requests:,} | {planning:.2f} | {run.wall_s:.1f} | "
        f"{requests / run.wall_s:,.0f} | {run.peak_rss_mb:.0f} |"
    )
    return {"series": series, "rss": run.peak_rss_mb, "planning": planning}


def run() -> None:
    print(f"scale: one day per series, sandbox unthrottled in its own process; {machine()}")
    print("| series | requests | planning s | run wall s | requests/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    small = one(1000, 10)
    large = one(1000, 100)
    ratio = large["rss"] / small["rss"]
    print(f"peak RSS ratio 100,000 / 10,000 series: {ratio:.2f}")
    print(
        verdict(
            large["rss"] <= GOAL_MB and ratio <= GOAL_RATIO,
            f"{large['rss']:.0f} MB at 100,000 series (goal <= {GOAL_MB:.0f}), "
            f"{ratio:.2f}x the 10,000-series run (goal <= {GOAL_RATIO})",
        )
    )


if __name__ == "__main__":
    run()
