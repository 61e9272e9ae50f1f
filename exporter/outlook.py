"""What the next run will send: a plan held against the saved resume state, read only.

``plan`` reports from here. For each series, the periods still needed are its window less
what the state records as done (:meth:`exporter.state.Records.of`), exactly as a run's
coverage computes them; the requests are counted by the planner's own arithmetic
(:meth:`exporter.plan.Plan.count_requests`), never listed, so a plan of 100 years of hours
costs no more memory than a plan of one day.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.coverage import Span, subtract
from exporter.errors import Unreachable
from exporter.plan import Plan, Request
from exporter.presence import FileCheck, Files, LocalFiles, StoreFiles, would_take_back
from exporter.remote import ObjectStore, is_remote, remote_lease
from exporter.state import Records, state_path
from exporter.storage import WORK_DIR, Holder, live_holders, lock_record

__all__ = [
    "Figures",
    "InTheWay",
    "Outlook",
    "in_the_way",
    "needed",
    "next_requests",
    "outlook",
    "saved_records",
]


@dataclass
class Figures:
    """Counts for some series of a plan: ``requests`` to send for the ``to_fetch`` periods
    still needed, of ``periods`` in their windows; ``done`` periods recorded by earlier runs;
    ``reread`` periods recorded as provisional by an earlier as-of date, fetched again;
    ``by_kind`` the requests per series kind (each kind's pool paces its own)."""

    series: int = 0
    requests: int = 0
    periods: int = 0
    done: int = 0
    reread: int = 0
    to_fetch: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def add(self, other: Figures) -> None:
        for name, value in vars(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class Outlook:
    """The next run's figures: in all, per export (a series in two exports counts in the
    first that has it, as the run's manifest counts it: the exports add up to the total),
    requests per series kind; ``state`` says where the records came from (None: no
    state, every window is fetched whole)."""

    total: Figures
    exports: dict[str, Figures]
    by_kind: Counter[str] = field(default_factory=Counter)
    state: str | None = None


@dataclass(frozen=True)
class InTheWay:
    """A run holding the output now, so that the next run would stop at once (exit 5): its
    ``holder``, the lock ``record`` saying so, and on object storage when that lock expires
    unless its holder renews it (``expires_at``, ISO 8601 UTC; None: while the process lives,
    a directory's flock). A lock object this version cannot read (``readable`` False) holds
    the prefix until it is deleted."""

    holder: Holder
    record: str
    expires_at: str | None = None
    readable: bool = True


def in_the_way(target: str, *, layout: str, shard: tuple[int, int] | None) -> InTheWay | None:
    """The run the next run of ``layout`` (and ``shard``) would find holding ``target``, as
    its lock says, read only: the lock is neither taken nor broken. A directory is held
    while its holder's process lives (a ``kill -9`` frees it); a prefix until the holder's
    lock object expires (a ``kill -9`` leaves it held until then)."""
    if is_remote(target):
        try:
            with contextlib.closing(ObjectStore.open(target)) as store:
                lease = remote_lease(store)
        except OSError as exc:  # StorageError too: plan writes nothing, it reads the state
            raise _unreadable(target, exc) from None
        if lease is None:
            return None
        return InTheWay(lease.holder, lease.record, lease.expires_at, lease.readable)
    me = Holder("", 0, "", "", "", layout, shard)
    for holder in live_holders(Path(target)):
        if not me.may_share_with(holder):
            return InTheWay(holder, str(lock_record(Path(target), holder)))
    return None


def needed(plan: Plan, index: int, done: list[Span]) -> list[Span]:
    """The periods of series ``index`` a run must fetch: its window less ``done``. This is
    the seam where other reasons to fetch a period again plug in."""
    return subtract(list(plan.window(index)), done)


def outlook(plan: Plan, records: Records | None, state: str | None = None) -> Outlook:
    """Count, per series, what the next run sends, given the ``records`` of its state."""
    total = Figures()
    exports: dict[str, Figures] = {}
    counted = bytearray(len(plan.series))  # a series in two exports counts once
    for name, members in plan.series_by_export.items():
        figures = exports[name] = Figures()
        for index in members:
            if not counted[index]:
                counted[index] = 1
                one = _figures(plan, index, records)
                figures.add(one)
                total.add(one)
    return Outlook(total, exports, total.by_kind, state)


def next_requests(plan: Plan, records: Records | None) -> Iterator[Request]:
    """The requests the next run sends first, series by series, made as they are taken."""
    for index, s in enumerate(plan.series):
        done = records.of(s.key)[0] if records is not None else []
        yield from plan.requests_for(index, needed(plan, index, done))


def _figures(plan: Plan, index: int, records: Records | None) -> Figures:
    window = list(plan.window(index))
    done, stale = records.of(plan.series[index].key) if records is not None else ([], [])
    want = needed(plan, index, done)
    size, to_fetch = _size(window), _size(want)
    reread = to_fetch - _size(subtract(want, stale)) if stale else 0
    requests = plan.count_requests(index, want)
    kind = Counter({plan.series[index].kind: requests})
    return Figures(1, requests, size, size - to_fetch, reread, to_fetch, kind)


def _size(spans: list[Span]) -> int:
    return sum(hi - lo + 1 for lo, hi in spans)


@contextlib.contextmanager
def saved_records(
    target: str,
    *,
    scope: str,
    as_of: int,
    fmt: str,
    shard: tuple[int, int] | None = None,
) -> Iterator[tuple[Records, FileCheck] | None]:
    """The records of the state files under ``target`` (a directory or an object storage
    prefix, of the output format ``fmt``), read only: no lock, nothing written there. The
    periods of the files the run's file check would take back
    (:func:`exporter.presence.would_take_back`: gone or changed) count as not done; the
    check says how many. None when there are no state files."""
    with contextlib.ExitStack() as stack:
        try:
            found = _read_records(stack, target, scope=scope, as_of=as_of, fmt=fmt, shard=shard)
        except OSError as exc:  # StorageError too: plan writes nothing, it reads the state
            raise _unreadable(target, exc) from None
        yield found


def _unreadable(target: str, exc: OSError) -> Unreachable:
    """A state, lock or listing plan cannot read: exit 4, saying it only reads."""
    return Unreachable(
        f"cannot read the state at {target}: {exc.strerror or exc}; plan writes nothing, but "
        "it reads the resume state, the lock and the files"
    )


def _read_records(
    stack: contextlib.ExitStack,
    target: str,
    *,
    scope: str,
    as_of: int,
    fmt: str,
    shard: tuple[int, int] | None,
) -> tuple[Records, FileCheck] | None:
    """What :func:`saved_records` yields, its clean-up pushed onto ``stack``."""
    files: Files
    if is_remote(target):
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="braze-export-plan-"))
        store = ObjectStore.open(target)
        stack.callback(store.close)
        for relative in store.list(WORK_DIR):
            name = relative.rsplit("/", 1)[-1]
            if relative.count("/") == 1 and _is_state(name):
                data = store.get(relative)
                if data is not None:
                    (Path(tmp) / name).write_bytes(data)
        directory, files = Path(tmp), StoreFiles(store)
    else:
        directory, files = Path(target) / WORK_DIR, LocalFiles(Path(target))
    paths = sorted(p for p in directory.glob("state*.sqlite") if _is_state(p.name))
    if not paths:
        return None
    records = stack.enter_context(contextlib.closing(Records(paths, scope=scope, as_of=as_of)))
    # A state an older version wrote (no fingerprints): the run checks it by its done
    # periods first, and so does this.
    unchecked = (
        None
        if records.checked(state_path(directory, shard).name)
        else (records.periods(), records.has_fingerprint, fmt)
    )
    check = would_take_back(records.fingerprints(), files, records.pending(), shard, unchecked)
    check.periods_taken_back = records.withhold(check.taken_back)
    return records, check


def _is_state(name: str) -> bool:
    return name.startswith("state") and name.endswith(".sqlite")
