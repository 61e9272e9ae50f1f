"""5. Window semantics: the request overhead of not knowing Braze's window in advance.

A 1-year day backfill plus a 9-day hour backfill of 6 segment/app pairs (3 segments x 2 apps:
6 day series of 365 days and 6 hour series of 9 days, 12 series in all) runs against the
sandbox in each window semantics, in a New York and a UTC config, from an empty directory
(no offset measured yet). Each run must end with every planned period exactly once; the
table compares the requests made with the plan's minimum and with the bound: minimum +
concurrency + one per series.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import AS_OF, exporter_env, machine, measure, sandbox, verdict, write_config

CONCURRENCY = 16


def config(out: Path, tz: str) -> str:
    return f"""\
version: 1
timezone: {tz}
limits: {{concurrency: {CONCURRENCY}}}
output: {{dir: {out}}}
exports:
  - name: year
    segment_ids: [seg-a, seg-b, seg-c]
    app_ids: [null, app-1]
    units: [day]
    window: {{days: 365}}
  - name: hours
    segment_ids: [seg-a, seg-b, seg-c]
    app_ids: [null, app-1]
    units: [hour]
    window: {{days: 9}}
"""


def run() -> None:
    print(
        f"semantics: 6 series x (365 days + 9 days of hours), concurrency {CONCURRENCY}; "
        f"{machine()}"
    )
    print(
        "| semantics | zone | minimum | requests made | over the minimum | bound | periods "
        "missing |"
    )
    print("|---|---|---|---|---|---|---|")
    ok = True
    work = Path(tempfile.mkdtemp(prefix="bench-semantics-"))
    try:
        for semantics in ("contains", "exclusive", "utc"):
            with sandbox("--limit", "0", "--semantics", semantics) as box:
                for tz in ("America/New_York", "UTC"):
                    out = work / f"out-{semantics}-{tz.replace('/', '-')}"
                    cfg = write_config(work / f"{semantics}-{tz[:3]}.yaml", config(out, tz))
                    before = box.stats()["requests"]
                    result = measure(
                        [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF],
                        env=exporter_env(box.url),
                    )
                    made = box.stats()["requests"] - before
                    doc = json.loads(next((out / "_runs").glob("*.json")).read_text())
                    minimum = doc["totals"]["requests_planned"]
                    series = doc["totals"]["series"]
                    missing = doc["totals"]["periods_missing"]
                    bound = minimum + CONCURRENCY + series
                    ok = ok and result.returncode == 0 and missing == 0 and made <= bound
                    print(
                        f"| {semantics} | {tz} | {minimum} | {made} | {made - minimum} | "
                        f"{bound} | {missing} |"
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(verdict(ok, "every run complete, within minimum + concurrency + one per series"))


if __name__ == "__main__":
    run()
