"""1. Throughput ceiling: the exporter vs a naive baseline, limiter lifted, 20,000 requests.

The sandbox runs in its own process without a rate limit; the exporter's budget is
10^8 requests/hour. Both write the same 20,000 files (200 segments x 100 apps, one day each).
The exporter runs twice, writing jsonl and then Parquet. Prints requests/s, CPU seconds per
1,000 requests and peak RSS for each (for the exporter: its process plus the Parquet encoder
process, which it reaps before it exits; the two also apart), and a verdict against the goal
of 1,500 requests/s (20x Braze's 69.4/s) for both formats.

Then the 7-row case (``week``): 10,000 series x 7 days of day data, 7 rows per request, the
sandbox answering each request after 10 ms (as a network would), jsonl, on tmpfs (/dev/shm)
and on the root disk (/var/tmp), 3 runs each. Prints the exporter process's own CPU ms per
request (user + sys; never the sandbox's) and requests/s, with medians, and a verdict
against 0.7 CPU ms per request on tmpfs.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import (
    AS_OF,
    ROOT,
    Measured,
    exporter_env,
    filesystem,
    grid_config,
    machine,
    measure,
    measure_exporter,
    sandbox,
    verdict,
    write_config,
)

GOAL = 1500.0
WEEK_GOAL_CPU_MS = 0.7  # the exporter's own CPU per 7-row request, on tmpfs
WEEK_ROOTS = {"tmpfs": Path("/dev/shm"), "root disk": Path("/var/tmp")}


def config(
    out: Path, segments: int, apps: int, concurrency: int, fmt: str = "jsonl", days: int = 1
) -> str:
    return grid_config(
        out, segments, apps, f"requests_per_hour: 100000000, concurrency: {concurrency}", fmt, days
    )


def row(name: str, requests: int, m: Measured) -> str:
    return (
        f"| {name} | {requests:,} | {m.wall_s:.1f} | {requests / m.wall_s:,.0f} | "
        f"{m.cpu_s / requests * 1000:.2f} | {m.peak_rss_mb:.0f} |"
    )


def split(name: str, requests: int, m: Measured) -> str:
    """The exporter's process and its encoder process apart (the row adds them up)."""
    assert m.own is not None
    assert m.children is not None
    return (
        f"{name}: exporter process {m.own.cpu_s / requests * 1000:.2f} CPU ms per request, "
        f"peak RSS {m.own.peak_rss_mb:.0f} MB; encoder process "
        f"{m.children.cpu_s / requests * 1000:.2f} CPU ms per request, "
        f"peak RSS {m.children.peak_rss_mb:.0f} MB (0: none)"
    )


def run(segments: int = 200, apps: int = 100, concurrency: int = 64) -> dict[str, float]:
    requests = segments * apps
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    try:
        with sandbox("--limit", "0") as box:
            env = exporter_env(box.url)
            cfg = write_config(
                work / "bench.yaml", config(work / "out", segments, apps, concurrency)
            )
            ours = measure_exporter(["run", str(cfg), "--as-of", AS_OF], env)
            assert ours.returncode == 0, ours.stderr
            base = measure(
                [
                    sys.executable,
                    str(ROOT / "bench" / "baseline.py"),
                    str(cfg),
                    str(work / "baseline"),
                    box.url,
                    AS_OF,
                ],
                env=env,
            )
            assert base.returncode == 0, base.stderr
            pq_cfg = write_config(
                work / "parquet.yaml",
                config(work / "parquet", segments, apps, concurrency, "parquet"),
            )
            parquet = measure_exporter(["run", str(pq_cfg), "--as-of", AS_OF], env)
            assert parquet.returncode == 0, parquet.stderr
            parquet_files = len(list((work / "parquet/sessions").rglob("*.parquet")))
        same = sorted(
            p.relative_to(work / "out") for p in (work / "out/sessions").rglob("*.jsonl")
        ) == sorted(
            p.relative_to(work / "baseline") for p in (work / "baseline/sessions").rglob("*.jsonl")
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"throughput: {requests:,} requests, sandbox unthrottled in its own process; {machine()}")
    print(f"output on: {filesystem(Path(tempfile.gettempdir()))}")
    print("| client | requests | wall s | requests/s | CPU s per 1,000 requests | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    print(row(f"braze-export jsonl (concurrency {concurrency})", requests, ours))
    print(row(f"braze-export parquet (concurrency {concurrency})", requests, parquet))
    print(row("naive baseline jsonl (sequential)", requests, base))
    rate = requests / ours.wall_s
    parquet_rate = requests / parquet.wall_s
    print(f"same files written by both: {same}; parquet files: {parquet_files:,}")
    for name, m in (("jsonl", ours), ("parquet", parquet)):
        print(split(name, requests, m))
    print(
        verdict(
            min(rate, parquet_rate) >= GOAL and same and parquet_files == requests,
            f"jsonl {rate:,.0f}, parquet {parquet_rate:,.0f} requests/s vs goal {GOAL:,.0f} "
            f"({min(rate, parquet_rate) / 69.44:.0f}x Braze's limit); jsonl "
            f"{rate / (requests / base.wall_s):.1f}x the baseline",
        )
    )
    return {"rate": rate, "parquet_rate": parquet_rate, "baseline_rate": requests / base.wall_s}


def week(
    base: Path,
    *,
    segments: int = 100,
    apps: int = 100,
    days: int = 7,
    latency_ms: int = 10,
    concurrency: int = 64,
    repeats: int = 3,
) -> list[Measured]:
    """``repeats`` runs of ``segments x apps`` series x ``days`` days (one request each),
    jsonl, into fresh directories under ``base``, against one sandbox answering after
    ``latency_ms``. The directories are removed only after the last run: on a journal-less
    ext4 each run would otherwise create its files among the inodes the last one freed."""
    runs: list[Measured] = []
    work = Path(tempfile.mkdtemp(prefix="bench-week-", dir=base))
    try:
        with sandbox("--limit", "0", "--latency-ms", str(latency_ms)) as box:
            env = {**exporter_env(box.url), "TMPDIR": str(work)}
            for n in range(repeats):
                cfg = write_config(
                    work / f"week-{n}.yaml",
                    config(work / f"out-{n}", segments, apps, concurrency, days=days),
                )
                m = measure_exporter(["run", str(cfg), "--as-of", AS_OF], env)
                assert m.returncode == 0, m.stderr
                runs.append(m)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return runs


def run_week(repeats: int = 3) -> dict[str, float]:
    """The 7-row case on tmpfs and on the root disk: medians of the exporter's own CPU."""
    requests = 100 * 100
    print(
        f"7-row case: {requests:,} series x 7 days (one request of 7 rows each), sandbox "
        f"answering after 10 ms in its own process, jsonl, concurrency 64; {machine()}"
    )
    print("| output on | runs: exporter CPU ms per request | median | requests/s (median) |")
    print("|---|---|---|---|")
    medians: dict[str, float] = {}
    notes = []
    for name, root in WEEK_ROOTS.items():
        runs = week(root, repeats=repeats)
        own = [m.own.cpu_s / requests * 1000 for m in runs if m.own is not None]
        rates = [requests / m.wall_s for m in runs]
        medians[name] = statistics.median(own)
        kind, _, note = filesystem(root).partition(": ")
        notes += [f"{root}: {kind}: {note}"] if note else []
        print(
            f"| {name} ({root}, {kind}) | {' / '.join(f'{c:.2f}' for c in own)} | "
            f"**{medians[name]:.2f}** | {statistics.median(rates):,.0f} |"
        )
    for note in notes:
        print(note)
    print(
        verdict(
            medians["tmpfs"] < WEEK_GOAL_CPU_MS,
            f"{medians['tmpfs']:.2f} CPU ms per 7-row request on tmpfs vs goal "
            f"< {WEEK_GOAL_CPU_MS} ({medians['root disk']:.2f} on the root disk)",
        )
    )
    return medians


if __name__ == "__main__":
    if sys.argv[1:] == ["week"]:
        run_week()
    else:
        run()
        run_week()
