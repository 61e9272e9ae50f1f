"""4. Request economy: backfills of 30, 365 and 730 days, day and hour units, one series;
then one series of each kind in the family (a 365-day backfill by day, 30 days by hour
where Braze has hours); then nightly runs: 10 consecutive as-of days of one series by day
and by hour, windows of 7 and 30 days.

Each run goes against the sandbox; the requests it made (counted by the sandbox, per
endpoint) are compared with the minimum: ceil(periods / 100) for a backfill (/ 14 for
Canvas), and for a night ceil(needed / 100) per unit, needed being settle_days + 1 days (the
settling periods read again, and the new day), in days or hours.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
from datetime import date, timedelta
from pathlib import Path

from bench.common import AS_OF, exporter_env, machine, measure, sandbox, verdict, write_config
from exporter.sandbox_messaging import messaging_catalogue
from exporter.series import KINDS

_SERVED = messaging_catalogue()  # the ids the sandbox knows (the same whatever its clock)
# The smallest export of each kind: its required dimensions, one id each. Sends are left
# out: Braze keeps them 14 days after the send, so no 365-day backfill of one exists.
_DIMENSIONS = {
    "sessions": "    segment_ids: [segment-a]\n",
    "events": "    events: [purchase_completed]\n",
    "segment_size": "    segment_ids: [segment-a]\n",
    "campaigns": f"    campaign_ids: [{_SERVED.campaigns[3].id}]\n",
    "canvas": f"    canvas_ids: [{_SERVED.canvases[2].id}]\n",
}
_SKIPPED = {"sends"}


def family_config(out: Path, kind: str, unit: str, days: int) -> str:
    end = date.fromisoformat(AS_OF) - timedelta(days=1)
    start = end - timedelta(days=days - 1)
    return f"""\
version: 1
timezone: UTC
output: {{dir: {out}}}
exports:
  - name: backfill
    series: {kind}
{_DIMENSIONS.get(kind, "")}    units: [{unit}]
    window: {{start: {start}, end: {end}}}
"""


def run_family(work: Path) -> bool:
    print()
    print("economy per series: one series of each kind, UTC days")
    print("| series | endpoint | unit | days | periods | requests made | minimum |")
    print("|---|---|---|---|---|---|---|")
    ok = True
    with sandbox("--limit", "0") as box:
        for kind, info in KINDS.items():
            if kind in _SKIPPED:
                continue
            for unit, days in (("day", 365), ("hour", 30)):
                if unit not in info.units:
                    continue
                before = box.stats()["paths"].get(info.path, 0)
                cfg = write_config(
                    work / f"{kind}-{unit}.yaml",
                    family_config(work / f"out-{kind}-{unit}", kind, unit, days),
                )
                result = measure(
                    [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF],
                    env=exporter_env(box.url),
                )
                assert result.returncode == 0, result.stderr
                made = box.stats()["paths"].get(info.path, 0) - before
                periods = days * (24 if unit == "hour" else 1)
                minimum = math.ceil(periods / info.max_length)
                ok = ok and made == minimum
                print(
                    f"| {kind} | {info.path} | {unit} | {days} | {periods:,} | {made} | {minimum} |"
                )
    return ok


NIGHTLY = """\
version: 1
timezone: UTC
output: {{dir: {out}}}
exports:
  - name: nightly
    segment_ids: [segment-a]
    units: [day, hour]
    window: {{days: {days}}}
"""
NIGHTS = 10
SETTLE_DAYS = 3  # the config default


def run_nightly(work: Path) -> bool:
    """10 consecutive as-of days after a first run: requests per night against the minimum."""
    print()
    print(
        f"nightly: one series by day and by hour, {NIGHTS} consecutive as-of days after a first run"
    )
    print("| window days | first run | requests per night (nights 1..10) | minimum per night |")
    print("|---|---|---|---|")
    ok = True
    first_day = date.fromisoformat(AS_OF)
    with sandbox("--limit", "0") as box:
        for days in (7, 30):
            cfg = write_config(
                work / f"nightly-{days}.yaml",
                NIGHTLY.format(out=work / f"nightly-{days}", days=days),
            )
            made = []
            for night in range(NIGHTS + 1):
                before = box.stats()["requests"]
                as_of = (first_day + timedelta(days=night)).isoformat()
                result = measure(
                    [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", as_of],
                    env=exporter_env(box.url),
                )
                assert result.returncode == 0, result.stderr
                made.append(box.stats()["requests"] - before)
            needed = min(SETTLE_DAYS + 1, days)
            minimum = math.ceil(needed / 100) + math.ceil(needed * 24 / 100)
            ok = ok and all(n == minimum for n in made[1:])
            nights = " ".join(map(str, made[1:]))
            print(f"| {days} | {made[0]} | {nights} | {minimum} |")
    return ok


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
                        family_config(work / f"out-{unit}-{days}", "sessions", unit, days),
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
        ok = run_family(work) and ok
        ok = run_nightly(work) and ok
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(verdict(ok, "every backfill and every night made exactly the minimum number of requests"))


if __name__ == "__main__":
    run()
