"""The run manifest: what a run did, in ``{dir}/_runs/{run_id}.json``; and checking it later.

``verify`` accounts for every data file under ``sessions/``: each is vouched for by the latest
record of it (manifests, and the journals of runs killed before their manifest), or reported
as unknown.

Data files stay data only: everything about the run (config hash, counts, budget, the files
it wrote with their row counts and sha256) lives here. It holds no secret: the config is
represented by its path and the hash of its resolved values, which name the key's variable,
never the key.
"""

from __future__ import annotations

import hashlib
import json
import re
import stat
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import UNITS, Config
from exporter.errors import ConfigError, DirectoryBusy, ExporterError, Unreachable
from exporter.pipeline import RunResult, Tally, account
from exporter.plan import Plan, Series, span_label
from exporter.ratelimit import Budget
from exporter.remote import ObjectStore, StorageError, is_remote, remote_holder
from exporter.series import KINDS
from exporter.storage import JOURNAL_SUFFIX, RUNS_DIR, WORK_DIR, DirLock, live_holders
from exporter.writers import atomic_write

__all__ = [
    "RUNS_DIR",
    "Verification",
    "build_manifest",
    "is_manifest",
    "recorded_files",
    "verify",
    "write_manifest",
]

DATA_DIRS = tuple(KINDS)  # each series' files are under {dir}/{series}/
# Shorter runs are mostly the token bucket's initial burst: a rate over them would overstate
# the pace (297,271/hour for a demo allowed 250,000), so the manifest gives none.
MIN_RATE_S = 60.0


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _series_doc(series: Series) -> dict[str, str | None]:
    """``{"segment_id", "app_id", "unit"}`` for sessions (as before the series family);
    ``{"series", <each dimension>, "unit"}`` for the others."""
    head = {} if series.kind == "sessions" else {"series": series.kind}
    return {**head, **dict(series.dimensions()), "unit": series.unit}


class _Listed:
    """A list of a manifest made entry by entry as it is written (:func:`write_manifest`):
    an interrupted run of a million series lists a million of them, never all in memory."""

    def __init__(self, entries: Callable[[], Iterable[Any]]) -> None:
        self.entries = entries


def _json_chunks(doc: Mapping[str, Any]) -> Iterator[bytes]:
    """``doc`` as indented JSON, its :class:`_Listed` lists streamed entry by entry."""
    listed: list[_Listed] = []

    def later(value: object) -> str:
        if not isinstance(value, _Listed):
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")
        listed.append(value)
        return f"\0listed {len(listed) - 1}"  # a mark no other text of a manifest holds

    text = json.dumps(doc, indent=1, ensure_ascii=False, default=later)
    parts = re.split(r'"\\u0000listed (\d+)"', text)
    yield parts[0].encode()
    for number, after in zip(parts[1::2], parts[2::2], strict=True):
        separator = "[\n  "
        for entry in listed[int(number)].entries():
            yield (separator + json.dumps(entry, ensure_ascii=False)).encode()
            separator = ",\n  "
        yield ("[]" if separator == "[\n  " else "\n ]").encode()
        yield after.encode()


def _counts(
    indices: Sequence[int], plan: Plan, result: RunResult, counted: Sequence[int] | None = None
) -> dict[str, Any]:
    """Series outcomes over ``indices``; request and row counts over ``counted`` (default:
    the same series). Ranges and arrays, not lists: a list of a million ints is 36 MB."""
    chosen = indices
    counts = chosen if counted is None else counted
    total = result.by_series.sum(counts) if result.coverage is not None else Tally()
    report = account(result, plan, chosen)
    coverage = result.coverage
    return {
        "series": report.series,
        "series_complete": report.complete,
        "series_incomplete": report.series_incomplete,
        "series_failed": len(report.failed),
        "failures": _Listed(
            lambda: (
                {**_series_doc(plan.series[i]), "reason": result.failures[plan.series[i]]}
                for i in report.failed
            )
        ),
        "incomplete": _Listed(
            lambda: (
                {
                    **_series_doc(plan.series[i]),
                    "missing": [
                        span_label(plan.series[i].unit, lo, hi)
                        for lo, hi in (coverage.missing(i) if coverage is not None else [])
                    ],
                }
                for i in report.incomplete
            )
        ),
        "periods_planned": report.periods_planned,
        "periods_written": report.periods_written,
        "periods_already_done": report.periods_already_done,
        "periods_missing": report.periods_missing,
        "points_outside_window": report.outside_window,
        "requests_made": total.sent,
        "requests_done": total.done,
        "requests_skipped": total.skipped,
        "requests_gap_fill": total.gap,
        "requests_retried": total.retries,
        "rate_limited": total.rate_limited,
        "rows_written": total.rows,
        "values_not_numeric": total.not_numeric,
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
    source: dict[str, Any],
    sequence: int,
    pools: Mapping[str, Budget] | None = None,
    discovery: Sequence[Mapping[str, Any]] = (),
    file_check: Mapping[str, Any] | None = None,
    skipping: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``source``: where the rows came from (``sandbox``, ``endpoint_host``); ``sequence``:
    the run's place among the holders of the directory (orders the runs for verify);
    ``pools``: the budget of each rate-limit pool other than the workspace's (``budget``);
    ``discovery``: what each discovery found (its dimension, filters, ids and cost);
    ``file_check``: what the check of earlier runs' files found (exporter.presence);
    ``skipping``: campaign and Canvas details read and days skipped (exporter.refine)."""
    elapsed = max(finished_at - started_at, 1e-9)
    return {
        "run_id": run_id,
        "sequence": sequence,
        "tool": f"braze-export {__version__}",
        "config": {"path": str(config.source), "sha256": config.fingerprint},
        "source": source,
        "as_of": plan.as_of.isoformat(),
        "timezone": plan.timezone,
        "shard": None if plan.shard is None else f"{plan.shard[0]}/{plan.shard[1]}",
        "started_at": _iso(started_at),
        "finished_at": _iso(finished_at),
        "elapsed_s": round(elapsed, 3),
        "exit_code": exit_code,
        "interrupted": result.interrupted,
        "auth_error": None if result.auth_error is None else str(result.auth_error),
        "unreachable": None if result.unreachable is None else str(result.unreachable),
        "settle_days": config.settle_days,
        "calibration": {
            unit: {
                "offset": result.calibration.shift(unit),
                "measured": {
                    str(k): v for k, v in sorted(result.calibration.measured(unit).items())
                },
            }
            for unit in UNITS
        },
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
            "requests_paced": budget.acquired,
            "pauses": budget.pauses,
            "workspace_limit_seen": budget.last_seen.limit,
            "workspace_remaining_seen": budget.last_seen.remaining,
        },
        "pools": {
            name: {
                "allowed_per_hour": pool.allowed_per_hour,
                "requests_paced": pool.acquired,
                "pauses": pool.pauses,
                "limit_seen": pool.last_seen.limit,
                "remaining_seen": pool.last_seen.remaining,
            }
            for name, pool in (pools or {}).items()
        },
        "discovery": list(discovery),
        "file_check": dict(file_check or {}),
        "skipping": dict(skipping or {}),
    }


def _by_export(plan: Plan, result: RunResult) -> dict[str, dict[str, Any]]:
    """Each export's series outcomes; a series several exports list is fetched once, so its
    requests and rows count in the first of them (config order) and exports add up to the
    totals. ``series_shared`` says how many of an export's series were counted earlier."""
    seen = bytearray(len(plan.series))  # a byte per series: a million of them are 1 MB
    docs = {}
    for name, indices in plan.series_by_export.items():
        own = array("i", (i for i in indices if not seen[i]))
        for i in own:
            seen[i] = 1
        docs[name] = {
            **_counts(indices, plan, result, own),
            "series_shared": len(indices) - len(own),
        }
    return docs


def write_manifest(
    out_dir: Path,
    doc: dict[str, Any],
    files: Iterable[tuple[str, int, str | None]],
    token: str,
    *,
    store: ObjectStore | None = None,
) -> Path | str:
    """Write ``doc`` plus its ``files`` list atomically, streaming the lists (``files`` and
    the series failed or incomplete): a run of a million series must not hold a million
    entries in memory to describe itself. With a ``store``, the whole object under the
    prefix, spooled to a local temp file first (an object store has no append to stream to).
    A file whose sha256 is None was found gone or changed by the run and not written again:
    it is listed with ``"sha256": null``."""
    path = out_dir / RUNS_DIR / f"{doc['run_id']}.json"
    entries = ({"path": name, "rows": rows, "sha256": sha256} for name, rows, sha256 in files)
    chunks = _json_chunks({**doc, "files": _Listed(lambda: entries)})
    if store is not None:
        relative = f"{RUNS_DIR}/{doc['run_id']}.json"
        try:
            store.put_stream(relative, chunks)
        except StorageError as exc:
            raise ExporterError(str(exc)) from None
        return store.display(relative)
    atomic_write(path, chunks, out_dir / WORK_DIR / "tmp", token=token)
    return path


@dataclass
class Verification:
    manifests: int  # readable run manifests
    journals: int  # runs killed before their manifest: their journal vouches for their files
    ok: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # no run recorded it: junk, or lost
    unreadable: list[str] = field(default_factory=list)  # files under _runs/ that are no record


Progress = Callable[[int, int], None]  # (files checked so far, files to check)
_HASHERS = 8  # files read and hashed at once: object stores answer each GET in ~10-50 ms


def verify(target: str | Path, progress: Progress | None = None) -> Verification:
    """Check every data file against the sha256 of the latest run that recorded it, and name
    the data files no run recorded. ``target``: a directory or an object storage prefix;
    ``progress`` hears how far the check is, after each file. Unreachable (exit 4) when the
    output cannot be read (the store answers only errors, a permission denied)."""
    if is_remote(target):
        store = ObjectStore.open(str(target))
        try:
            return _verify_store(store, progress)
        except StorageError as exc:  # the store cannot be read: exit 4, not "files differ"
            raise Unreachable(f"the object store cannot be read: {exc}") from None
        finally:
            store.close()
    out_dir = Path(target)
    if not out_dir.is_dir():
        raise ConfigError(f"{out_dir}: no such directory")
    # Hold the directory while checking, so that no run starts writing into it meanwhile (it
    # is refused with exit 5). A read-only directory cannot be locked: then only make sure
    # that no run holds it now.
    lock: DirLock | None = None
    try:
        lock = DirLock.acquire(out_dir, layout="verify", shard=None, command="braze-export verify")
    except ExporterError as exc:
        holders = live_holders(out_dir)
        if holders or isinstance(exc, DirectoryBusy):
            who = holders[0].describe() if holders else "another run"
            raise DirectoryBusy(
                f"{out_dir} is being written by a run ({who}); verify it after the run ends"
            ) from None
    try:
        runs = out_dir / RUNS_DIR
        files, not_files = _entries(out_dir)
        return _check(
            str(out_dir),
            [str(p.relative_to(out_dir)) for p in sorted(runs.glob("*.json"))],
            [str(p.relative_to(out_dir)) for p in sorted(runs.glob(f"*{JOURNAL_SUFFIX}"))],
            files,
            lambda relative: (out_dir / relative).read_bytes(),
            progress,
            not_files,
        )
    except BrokenPipeError:
        raise
    except OSError as exc:  # a file or directory that cannot be read: exit 4, as for a store
        raise Unreachable(
            f"cannot read {exc.filename or out_dir}: {exc.strerror or exc}; fix its "
            "permissions (or the disk), then verify again"
        ) from None
    finally:
        if lock is not None:
            lock.release()


def _entries(out_dir: Path) -> tuple[set[str], set[str]]:
    """(everything but directories, what is no regular file: directories, links, pipes)
    under the data directories, relative to ``out_dir``. A link is never followed: it is no
    file a run wrote."""
    entries: set[str] = set()
    not_files: set[str] = set()
    for name in DATA_DIRS:
        for p in (out_dir / name).rglob("*"):
            mode = p.lstat().st_mode
            relative = str(p.relative_to(out_dir))
            if not stat.S_ISDIR(mode):
                entries.add(relative)
            if not stat.S_ISREG(mode):
                not_files.add(relative)
    return entries, not_files


def _verify_store(store: ObjectStore, progress: Progress | None) -> Verification:
    if holder := remote_holder(store):
        raise DirectoryBusy(
            f"{store.url} is being written by a run ({holder.describe()}); "
            "verify it after the run ends"
        )
    runs = store.list(RUNS_DIR)
    read = _reader(store)
    on_store = {
        key
        for name in DATA_DIRS
        for key in store.list(name)
        if not key.endswith("/")  # no folder markers
    }
    if not runs and not on_store:
        raise ConfigError(f"{store.url}: nothing under this prefix (does the bucket exist?)")
    return _check(
        store.url,
        [r for r in runs if r.endswith(".json")],
        [r for r in runs if r.endswith(JOURNAL_SUFFIX)],
        on_store,
        read,
        progress,
    )


def _reader(store: ObjectStore) -> Callable[[str], bytes]:
    """An object's bytes by its path relative to the prefix (FileNotFoundError: none)."""

    def read(relative: str) -> bytes:
        data = store.get(relative)
        if data is None:
            raise FileNotFoundError(relative)
        return data

    return read


def _check(
    name: str,
    manifests: list[str],
    journals: list[str],
    on_disk: set[str],
    read: Callable[[str], bytes],
    progress: Progress | None = None,
    not_files: Set[str] = frozenset(),
) -> Verification:
    """``manifests``, ``journals`` and ``on_disk`` (the data files): paths relative to the
    output; ``read`` gives a file's bytes by that path (called from several threads).
    ``not_files``: what is there but no regular file (a directory, a link): changed where a
    run recorded a file (even one it found gone), unknown if no run did (a directory no
    run recorded is just a directory)."""
    if not manifests and not journals and not on_disk:
        raise ExporterError(f"{name}: no run manifest under {RUNS_DIR}/ and no data")
    report = Verification(manifests=0, journals=0)
    expected = _latest_records(manifests, journals, read, report)
    wanted = {path: digest for path, digest in expected.items() if digest is not None}
    odd = {p for p in not_files if p in expected}
    paths = sorted(on_disk | wanted.keys() | odd)
    outcomes = _outcomes(paths, on_disk, wanted, read, odd)
    for done, (relative, outcome) in enumerate(outcomes, 1):
        if outcome == "ok":
            report.ok += 1
        else:
            getattr(report, outcome).append(relative)
        if progress is not None:
            progress(done, len(paths))
    return report


def _outcomes(
    paths: list[str],
    on_disk: set[str],
    wanted: Mapping[str, str],
    read: Callable[[str], bytes],
    odd: Set[str],
) -> Iterator[tuple[str, str]]:
    """``(path, "ok" | "changed" | "missing" | "unknown")`` in the order of ``paths``; the
    files are read and hashed ``_HASHERS`` at a time (reads and sha256 release the GIL), with
    a bounded window so that memory does not grow with the number of files."""

    def outcome(relative: str) -> str:
        if relative in odd:  # a directory or link where a run wrote a file: never read
            return "changed"
        digest = wanted.get(relative)
        if digest is None:
            return "unknown"
        if relative not in on_disk:
            return "missing"
        return "ok" if hashlib.sha256(read(relative)).hexdigest() == digest else "changed"

    with ThreadPoolExecutor(_HASHERS, thread_name_prefix="verify") as pool:
        window: deque[tuple[str, Future[str]]] = deque()
        for relative in paths:
            window.append((relative, pool.submit(outcome, relative)))
            if len(window) >= 4 * _HASHERS:
                first, future = window.popleft()
                yield first, future.result()
        while window:
            first, future = window.popleft()
            yield first, future.result()


# (order, {path: sha256, or None: the run found it gone or changed and did not rewrite it})
_Records = tuple[tuple[int, str], dict[str, str | None]]


def _latest_records(
    manifests: list[str],
    journals: list[str],
    read: Callable[[str], bytes],
    report: Verification,
) -> dict[str, str | None]:
    """What the latest run record of each data file says of it (``_Records``' dict);
    ``report`` counts the manifests and journals read and names the unreadable ones."""
    records = []
    for manifest in manifests:
        try:
            records.append(_manifest_records(manifest, read))
            report.manifests += 1
        except ExporterError:
            # Not ours, or damaged: say so and check the rest (its files may then show as
            # unknown), rather than refuse to check anything.
            report.unreadable.append(manifest)
    finished = {order for order, _ in records}
    for journal in journals:
        order, files = _journal_records(journal, read)
        # The journal of a run whose manifest is there adds only the writes that landed
        # after it (an interrupted run's): its files count, the run is not reported again.
        report.journals += order not in finished
        records.append((order, files))
    expected: dict[str, str | None] = {}
    for _, files in sorted(records, key=lambda r: r[0]):  # later runs win
        expected.update(files)
    return expected


def recorded_files(root: Path, store: ObjectStore | None = None) -> dict[str, str]:
    """The sha256 the latest run record under ``_runs/`` (a manifest, or the journal of a
    run killed before it) gives each data file: ``{path relative to the output: sha256}``,
    as verify reads them; unreadable records give nothing. ``store``: object storage (then
    ``root`` is unused). OSError (StorageError on object storage) when ``_runs/`` cannot be
    listed or a journal cannot be read."""
    read: Callable[[str], bytes]
    if store is None:
        names = [str(p.relative_to(root)) for p in sorted((root / RUNS_DIR).glob("*"))]
        read = lambda relative: (root / relative).read_bytes()  # noqa: E731
    else:
        names, read = store.list(RUNS_DIR), _reader(store)
    manifests = [n for n in names if n.endswith(".json")]
    journals = [n for n in names if n.endswith(JOURNAL_SUFFIX)]
    expected = _latest_records(manifests, journals, read, Verification(manifests=0, journals=0))
    return {path: digest for path, digest in expected.items() if digest is not None}


def _manifest_records(manifest: str, read: Callable[[str], bytes]) -> _Records:
    try:
        doc = json.loads(read(manifest).decode("utf-8"))
        files = {str(f["path"]): _digest(f["sha256"]) for f in doc["files"]}
        # Manifests of versions without a sequence are older than any with one.
        return (int(doc.get("sequence", 0)), str(doc["run_id"])), files
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
        raise ExporterError(f"{manifest}: not a readable run manifest ({exc})") from None


def is_manifest(data: bytes) -> bool:
    """Whether ``data`` is a run manifest verify can read (one that is not vouches for
    nothing: a run treats its files as it treats those whose manifest is gone)."""
    try:
        _manifest_records("", lambda _: data)
    except ExporterError:
        return False
    return True


def _journal_records(journal: str, read: Callable[[str], bytes]) -> _Records:
    try:
        lines = read(journal).decode("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ExporterError(f"{journal}: cannot read this run journal ({exc})") from None
    try:
        head = json.loads(lines[0])
        order = (int(head["sequence"]), str(head["run_id"]))
    except (ValueError, KeyError, TypeError, IndexError, OverflowError, RecursionError):
        # Empty or torn at its first line (a full disk, a kill as the run began): it vouches
        # for nothing, so a file only that run wrote is reported as unknown, never "ok".
        return (-1, journal), {}
    files: dict[str, str | None] = {}
    for line in lines[1:]:
        try:
            entry = json.loads(line)
            files[str(entry["path"])] = _digest(entry["sha256"])  # later lines win
        except (ValueError, KeyError, TypeError, RecursionError):
            continue  # a line torn by a power loss: its file is then reported as unknown
    return order, files


def _digest(value: object) -> str | None:
    return None if value is None else str(value)
