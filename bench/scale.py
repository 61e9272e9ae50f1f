"""3. Scale: plan and run 10,000, 100,000 and 1,000,000 series (segments x apps, one day each)
against the unthrottled sandbox, then `plan` a century (36,600 days) of 1,000 segments x 3
apps x day + hour. Prints wall time and the exporter's peak RSS for each.

Goals: a run's memory follows its series (<= 250 MB at 1,000,000 series); the century's
plan in under 60 s and 300 MB. `--quick` leaves out the million (some 10 minutes and 1M
partition files on an idle 2-core machine, well over an hour on a loaded one); `--million`
runs the million alone (its row and verdict), `--century` the century's plans alone;
`--first S` runs the million for S seconds only, printing its peak RSS every 10 s, then
stops it with one SIGINT and prints the peak of the whole process, its manifest and summary
of a million unfinished series included. Wall and CPU times vary with the machine's load;
peak RSS does not.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
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

RUN_GOAL_MB = 250.0
PLAN_GOAL_MB, PLAN_GOAL_S = 300.0, 60.0
CENTURY = """\
version: 1
output: {{dir: {out}}}
exports:
  - name: century
    segment_ids: [{segments}]
    app_ids: [app-1, app-2, app-3]
    units: [day, hour]
    window: {{days: 36600}}
"""


def config(out: Path, segments: int, apps: int) -> str:
    return grid_config(out, segments, apps, "requests_per_hour: 100000000, concurrency: 64")


def one(segments: int, apps: int) -> dict[str, float]:
    """Plan, then run, ``segments x apps`` one-day series; one table row."""
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        cfg = write_config(work / "scale.yaml", config(work / "out", segments, apps))
        planned = measure(
            [sys.executable, "-m", "exporter", "plan", str(cfg), "--as-of", AS_OF], env=None
        )
        assert planned.returncode == 0, planned.stderr
        with sandbox("--limit", "0") as box:
            run = measure(
                [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF],
                env=exporter_env(box.url),
            )
            requests = box.stats()["requests"]
        assert run.returncode == 0, run.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
    series = segments * apps
    print(
        f"| {series:,} | {requests:,} | {planned.wall_s:.1f} | {planned.peak_rss_mb:.0f} | "
        f"{run.wall_s:.0f} | {requests / run.wall_s:,.0f} | {run.peak_rss_mb:.0f} |"
    )
    return {"series": series, "rss": run.peak_rss_mb}


def century() -> dict[str, float]:
    """`plan` and `plan --json` of the century config (6,000 series; 14,934,000 requests as
    of AS_OF, no date before 1970-01-01 being planned)."""
    work = Path(tempfile.mkdtemp(prefix="bench-century-"))
    try:
        segments = ", ".join(f"segment-{i:04d}" for i in range(1000))
        cfg = write_config(
            work / "century.yaml", CENTURY.format(out=work / "out", segments=segments)
        )
        argv = [sys.executable, "-m", "exporter", "plan", str(cfg), "--as-of", AS_OF]
        planned = measure(argv, env=None)
        assert planned.returncode == 0, planned.stderr
        as_json = measure([*argv, "--json"], env=None)
        assert as_json.returncode == 0, as_json.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
    requests = next(line for line in planned.stdout.splitlines() if line.startswith("requests:"))
    print(
        f"century plan (1,000 segments x 3 apps x day + hour, 36,600 days): {requests[10:]}; "
        f"{planned.wall_s:.1f} s wall, {planned.cpu_s:.1f} s CPU, "
        f"peak RSS {planned.peak_rss_mb:.0f} MB; with --json: {as_json.wall_s:.1f} s wall, "
        f"{as_json.cpu_s:.1f} s CPU, peak RSS {as_json.peak_rss_mb:.0f} MB, "
        f"{len(as_json.stdout):,} bytes"
    )
    worst = max((planned, as_json), key=lambda m: m.wall_s)
    return {"wall": worst.wall_s, "rss": max(planned.peak_rss_mb, as_json.peak_rss_mb)}


def first(seconds: float, segments: int = 1000, apps: int = 1000) -> None:
    """The first ``seconds`` of a run of ``segments x apps`` series: its peak RSS
    (``VmHWM``) and the requests answered, every 10 s; then two SIGINTs stop it."""
    work = Path(tempfile.mkdtemp(prefix="bench-scale-first-"))
    try:
        cfg = write_config(work / "scale.yaml", config(work / "out", segments, apps))
        with sandbox("--limit", "0") as box:
            argv = [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF]
            proc = subprocess.Popen(argv, env=exporter_env(box.url), stdout=subprocess.DEVNULL)
            started = time.monotonic()
            print(f"first {seconds:.0f} s of a run of {segments * apps:,} series")
            print("| s | peak RSS MB | requests answered |")
            print("|---|---|---|")
            while time.monotonic() - started < seconds and proc.poll() is None:
                time.sleep(10)
                status = Path(f"/proc/{proc.pid}/status").read_text()
                hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
                print(
                    f"| {time.monotonic() - started:.0f} | {int(hwm.split()[1]) / 1024:.0f} | "
                    f"{box.stats()['requests']:,} |",
                    flush=True,
                )
            # One SIGINT: the run finishes what is in flight, then writes its manifest and
            # summary, listing every series it did not finish.
            proc.send_signal(signal.SIGINT)
            _, ended, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(ended)
            print(
                f"stopped: exit {proc.returncode}, {time.monotonic() - started:.0f} s; peak RSS "
                f"of the whole run, its manifest and summary included: "
                f"{usage.ru_maxrss / 1024:.0f} MB"
            )
            print(
                verdict(
                    usage.ru_maxrss / 1024 <= RUN_GOAL_MB,
                    f"{usage.ru_maxrss / 1024:.0f} MB for an interrupted run of "
                    f"{segments * apps:,} series (goal <= {RUN_GOAL_MB:.0f})",
                )
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(quick: bool = False) -> None:
    print(f"scale: one day per series, sandbox unthrottled in its own process; {machine()}")
    print(
        "| series | requests | plan wall s | plan peak RSS MB | run wall s | requests/s | "
        "run peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = [one(100, 100), one(1000, 100)]
    if not quick:
        rows.append(one(1000, 1000))
    plan = century()
    largest = rows[-1]
    if quick:
        print("verdict: not measured: 1,000,000 series (--quick)")
    else:
        print(
            verdict(
                largest["rss"] <= RUN_GOAL_MB,
                f"{largest['rss']:.0f} MB at 1,000,000 series (goal <= {RUN_GOAL_MB:.0f})",
            )
        )
    print(
        verdict(
            plan["wall"] < PLAN_GOAL_S and plan["rss"] < PLAN_GOAL_MB,
            f"century plan {plan['wall']:.1f} s, {plan['rss']:.0f} MB (goal < "
            f"{PLAN_GOAL_S:.0f} s, < {PLAN_GOAL_MB:.0f} MB)",
        )
    )


def million() -> None:
    """The complete run of 1,000,000 series alone: its table row and verdict."""
    print(f"scale: one day per series, sandbox unthrottled in its own process; {machine()}")
    print(
        "| series | requests | plan wall s | plan peak RSS MB | run wall s | requests/s | "
        "run peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|")
    row = one(1000, 1000)
    print(
        verdict(
            row["rss"] <= RUN_GOAL_MB,
            f"{row['rss']:.0f} MB at 1,000,000 series (goal <= {RUN_GOAL_MB:.0f})",
        )
    )


if __name__ == "__main__":
    if "--century" in sys.argv[1:]:
        century()
    elif "--first" in sys.argv[1:]:
        first(float(sys.argv[sys.argv.index("--first") + 1]))
    elif "--million" in sys.argv[1:]:
        million()
    else:
        run(quick="--quick" in sys.argv[1:])
