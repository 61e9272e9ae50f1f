"""The run manifest: what a run did, in ``{dir}/_runs/{run_id}.json``; and checking it later.

Data files stay data only: everything about the run (config hash, counts, budget, the files
it wrote with their row counts and sha256) lives here. It holds no secret: the config is
represented by its path and the hash of its resolved values, which name the key's variable,
never the key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import Config
from exporter.errors import ExporterError
from exporter.pipeline import RunResult
from exporter.plan import Plan, Series
from exporter.ratelimit import Budget
from exporter.writers import WORK_DIR, atomic_write

__all__ = ["RUNS_DIR", "Verification", "build_manifest", "verify", "write_manifest"]

RUNS_DIR = "_runs"
# Shorter runs are mostly the token bucket's initial burst: a rate over them would overstate
# the pace (297,271/hour for a demo allowed 250,000), so the manifest gives none.
MIN_RATE_S = 60.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _series_doc(series: Series) -> dict[str, str | None]:
    return {"segment_id": series.segment_id, "app_id": series.app_id, "unit": series.unit}


def _counts(
    indices: Iterable[int], plan: Plan, result: RunResult, counted: Iterable[int] | None = None
) -> dict[str, Any]:
    """Series outcomes over ``indices``; request and row counts over ``counted`` (default:
    the same series)."""
    chosen = list(indices)
    total = result.by_series.sum(chosen if counted is None else list(counted))
    failed = [plan.series[i] for i in chosen if plan.series[i] in result.failures]
    return {
        "series": len(chosen),
        "series_ok": len(chosen) - len(failed),
        "series_failed": len(failed),
        "failures": [
            {**_series_doc(s), "reason": result.failures[s]}
            for s in sorted(failed, key=Series.sort_key)
        ],
        "requests_made": total.sent,
        "requests_done": total.done,
        "requests_skipped": total.skipped,
        "requests_retried": total.retries,
        "rate_limited": total.rate_limited,
        "rows_written": total.rows,
    }


def build_manifest(
    *,
    run_id: str,
    config: Config,
    plan: Plan,
    result: RunResult,
    budget: Budget,
    started_at: float,
    finished_at: float,
    exit_code: int,
) -> dict[str, Any]:
    elapsed = max(finished_at - started_at, 1e-9)
    return {
        "run_id": run_id,
        "tool": f"braze-export {__version__}",
        "config": {"path": str(config.source), "sha256": config.fingerprint},
        "as_of": plan.as_of.isoformat(),
        "timezone": plan.timezone,
        "shard": None if plan.shard is None else f"{plan.shard[0]}/{plan.shard[1]}",
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "elapsed_s": round(elapsed, 3),
        "exit_code": exit_code,
        "interrupted": result.interrupted,
        "auth_error": None if result.auth_error is None else str(result.auth_error),
        "totals": {
            "requests_planned": result.requests_planned,
            **_counts(range(len(plan.series)), plan, result),
        },
        "exports": _by_export(plan, result),
        "budget": {
            "allowed_per_hour": budget.allowed_per_hour,
            "requests_sent": result.totals.sent,
            "effective_rate_per_s": (
                round(result.totals.sent / elapsed, 3) if elapsed >= MIN_RATE_S else None
            ),
            "effective_rate_per_hour": (
                round(result.totals.sent / elapsed * 3600) if elapsed >= MIN_RATE_S else None
            ),
            "pauses": budget.pauses,
            "workspace_limit_seen": budget.last_seen.limit,
            "workspace_remaining_seen": budget.last_seen.remaining,
        },
    }


def _by_export(plan: Plan, result: RunResult) -> dict[str, dict[str, Any]]:
    """Each export's series outcomes; a series several exports list is fetched once, so its
    requests and rows count in the first of them (config order) and exports add up to the
    totals. ``series_shared`` says how many of an export's series were counted earlier."""
    seen: set[int] = set()
    docs = {}
    for name, indices in plan.series_by_export.items():
        own = [i for i in indices if i not in seen]
        seen.update(own)
        docs[name] = {
            **_counts(indices, plan, result, own),
            "series_shared": len(indices) - len(own),
        }
    return docs


def write_manifest(
    out_dir: Path, doc: dict[str, Any], files: Iterable[tuple[str, int, str]]
) -> Path:
    """Write ``doc`` plus its ``files`` list atomically, streaming the list: a run of 100,000
    series must not hold 100,000 entries in memory to describe itself."""
    path = out_dir / RUNS_DIR / f"{doc['run_id']}.json"
    head = json.dumps(doc, indent=1, ensure_ascii=False)
    assert head.endswith("\n}")

    def chunks() -> Iterator[bytes]:
        yield (head[:-2] + ',\n "files": [').encode()
        separator = "\n  "
        for relative, rows, sha256 in files:
            entry = json.dumps(
                {"path": relative, "rows": rows, "sha256": sha256}, ensure_ascii=False
            )
            yield (separator + entry).encode()
            separator = ",\n  "
        yield b"\n ]\n}\n"

    atomic_write(path, chunks(), out_dir / WORK_DIR / "tmp")
    return path


@dataclass
class Verification:
    latest: Path
    manifests: int
    ok: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def verify(out_dir: Path) -> Verification:
    """Recheck every file the manifests list against the sha256 its latest manifest recorded
    (runs that skipped work by resuming list only what they wrote, so all are read)."""
    runs = sorted((out_dir / RUNS_DIR).glob("*.json"))
    if not runs:
        raise ExporterError(f"{out_dir}: no run manifest under {RUNS_DIR}/")
    expected: dict[str, str] = {}
    for manifest in runs:  # run ids sort by start time: later entries win
        try:
            doc = json.loads(manifest.read_text(encoding="utf-8"))
            expected.update((str(f["path"]), str(f["sha256"])) for f in doc["files"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExporterError(f"{manifest}: not a readable run manifest ({exc})") from None
    report = Verification(runs[-1], manifests=len(runs))
    for relative, digest in sorted(expected.items()):
        try:
            actual = hashlib.sha256((out_dir / relative).read_bytes()).hexdigest()
        except FileNotFoundError:
            report.missing.append(relative)
            continue
        if actual == digest:
            report.ok += 1
        else:
            report.changed.append(relative)
    return report
