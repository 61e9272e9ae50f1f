"""4. Request economy: backfills of 30, 365 and 730 days, day and hour units, one series.

Each backfill runs against the sandbox; the requests it made (counted by the sandbox) are
compared with the minimum, ceil(periods / 100), and with one request per day.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

from bench.common import AS_OF, exporter_env, machine, measure, sandbox, verdict, write_config


def config(out: Path, unit: str, days: int) -> str:
    end = date.fromisoformat(AS_OF) - timedelta(days=1)
    start = end - timedelta(days=days - 1)
    return f"""\
version: 1
timezone: UTC
output: {{dir: {out}}}
exports:
  - name: backfill
    segment_ids: [segment-a]
    units: [{unit}]
    window: {{start: {start}, end: {end}}}
"""


def run() -> None:
    print(f"economy: one series, UTC days; {machine()}")
    print("| unit | days | periods | requests made | minimum ceil(periods/100) | one per day |")
    print("|---|---|---|---|---|---|")
    ok = True
    work = Path(tempfile.mkdtemp(prefix="bench-economy-"))
    try:
        with sandbox("--limit", "0") as box:
            for unit in ("day", "hour"):
                for days in (30, 365, 730):
                    before = box.stats()["requests"]
                    cfg = write_config(
                        work / f"{unit}-{days}.yaml",
                        config(work / f"out-{unit}-{days}", unit, days),
                    )
                    result = measure(
                        [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF],
                        env=exporter_env(box.url),
                    )
                    assert result.returncode == 0, result.stderr
                    made = box.stats()["requests"] - before
                    periods = days * (24 if unit == "hour" else 1)
                    minimum = math.ceil(periods / 100)
                    ok = ok and made == minimum
                    print(f"| {unit} | {days} | {periods:,} | {made} | {minimum} | {days} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(verdict(ok, "every backfill made exactly the minimum number of requests"))


if __name__ == "__main__":
    run()
