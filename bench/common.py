"""Shared pieces of the benchmarks: the sandbox in its own process, measured subprocesses."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.sandbox import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
# One day every series covers; fixed so that runs are comparable.
AS_OF = "2024-07-01"


@dataclass
class Sandbox:
    url: str
    proc: subprocess.Popen[bytes]

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/_sandbox/stats", timeout=30) as resp:  # noqa: S310 - loopback
            doc: dict[str, Any] = json.load(resp)
            return doc


@contextmanager
def sandbox(*args: str) -> Iterator[Sandbox]:
    """``braze-export sandbox`` in a separate process on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "sandbox", "--port", str(port), "--api-key", KEY, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if "listening" not in line:
            raise RuntimeError(f"sandbox did not start: {line}")
        yield Sandbox(f"http://127.0.0.1:{port}", proc)
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    # The exporter's own process and its children (the Parquet encoder process), apart:
    # see exporter_argv. None for other commands.
    own: Usage | None = None
    children: Usage | None = None


@dataclass
class Usage:
    cpu_s: float
    peak_rss_mb: float


# ``python -m exporter ARGS``, plus a report on exit of the process's own and its reaped
# children's CPU and peak RSS (to the file named by BENCH_USAGE). wait4's figures for the
# whole command include a reaped child's CPU, but for memory give only the largest
# process's peak, not the sum of the exporter's and its encoder process's.
_LAUNCH = """\
import atexit, os, resource, sys
def report():
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.environ["BENCH_USAGE"], "w") as out:
        for u in (own, kids):
            print(u.ru_utime + u.ru_stime, u.ru_maxrss / 1024, file=out)
atexit.register(report)
sys.argv[0] = "braze-export"
from exporter.entry import main
sys.exit(main())
"""


def measure_exporter(args: list[str], env: dict[str, str]) -> Measured:
    """measure() of ``python -m exporter ARGS``, with its own and its children's usage apart;
    peak RSS is the sum of the exporter's and its children's peaks (an upper bound)."""
    usage_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.usage"
    result = measure(
        [sys.executable, "-c", _LAUNCH, *args], env={**env, "BENCH_USAGE": str(usage_path)}
    )
    if result.returncode == 0:
        own, children = (
            Usage(float(cpu), float(rss))
            for cpu, rss in (line.split() for line in usage_path.read_text().splitlines())
        )
        result.own, result.children = own, children
        result.peak_rss_mb = own.peak_rss_mb + children.peak_rss_mb
    usage_path.unlink(missing_ok=True)
    return result


def measure(argv: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT) -> Measured:
    """Run a command to completion; its wall time, CPU seconds (user + sys) and peak RSS."""
    out_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{os.getpid()}.out"
    err_path = out_path.with_suffix(".err")
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    result = Measured(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # Linux reports KiB
        returncode=proc.returncode,
        stdout=out_path.read_text(),
        stderr=err_path.read_text(),
    )
    out_path.unlink()
    err_path.unlink()
    return result


def exporter_env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update(BRAZE_API_KEY=KEY, BRAZE_REST_ENDPOINT=url, PYTHONPATH=str(ROOT))
    return env


def grid_config(
    out: Path, segments: int, apps: int, limits: str, fmt: str = "jsonl", days: int = 1
) -> str:
    """A config of ``segments x apps`` day series, ``days`` days each (at most 100: one
    request per series)."""
    return f"""\
version: 1
limits: {{{limits}}}
output: {{dir: {out}, format: {fmt}}}
exports:
  - name: bench
    segment_ids: [{", ".join(f"segment-{i:04d}" for i in range(segments))}]
    app_ids: [{", ".join(f"app-{i:03d}" for i in range(apps))}]
    window: {{days: {days}}}
"""


def write_config(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()}"
    )


def filesystem(path: Path) -> str:
    """The file system ``path`` is on (type, and for ext4 whether it has a journal), from
    /proc/self/mountinfo: the benches' output goes there, and it shapes their figures."""
    best, kind, device = "", "unknown", ""
    try:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            mount = fields[4]
            dash = fields.index("-")
            inside = str(path) == mount or str(path).startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind, device = mount, fields[dash + 1], fields[dash + 2]
    except (OSError, ValueError, IndexError):
        return "unknown file system"
    if kind != "ext4":
        return kind
    task = Path("/sys/fs/ext4") / Path(device).name / "journal_task"
    try:
        journal = task.read_text().strip() != "<none>"
    except OSError:
        return "ext4"
    if journal:
        return "ext4"
    # Without a journal, ext4 checks each free inode it hands out for a recent deletion
    # (recently_deleted(), 1-5 minutes): right after a bench deleted its 40,000 files, every
    # file and directory created costs up to ~0.75 ms of kernel CPU instead of ~15 us.
    return (
        "ext4 WITHOUT a journal: creating files within ~5 minutes of deleting many (an "
        "earlier bench's clean-up) is several times slower; let it rest or use a fresh "
        "file system"
    )


def verdict(ok: bool, text: str) -> str:
    return f"verdict: {'PASS' if ok else 'MISS'}: {text}"
