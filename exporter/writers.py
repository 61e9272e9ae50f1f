"""Series points -> partition files, merged by time and replaced atomically.

Layout: ``{dir}/sessions/{unit}/segment-{seg}/{app}/{period}.{fmt}`` where ``{app}`` is
``app-{id}``, or ``workspace`` for the series without an app id, and ``{period}`` is the month
(day series) or the UTC date (hour series) of the data's own time. Ids are percent-encoded.
No directory name holds ``=``: query engines that discover Hive partitions (DuckDB does by
default) find none, so they read the ids from the rows, never from a path (see docs/output.md). Each
name starts with a fixed word, so no id can name a hidden (``.x``, ``_x``) or parent directory.

A write reads the partition, lets new values replace old ones period by period (Braze restates
recent days), sorts, and swaps the file in with a durable temp file and a rename (batched: see
PartitionWriter), so a reader or a crash only ever sees the old or the new whole file. Files
hold data only: the same points give the same bytes (formats.py renders them).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import dataclasses
import functools
import hashlib
import itertools
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from exporter import formats
from exporter.child import ChildDied, ChildProcess, ChildUnavailable, Job, Outcome, run_all
from exporter.errors import ExporterError, WriteError
from exporter.plan import Series
from exporter.redact import redact_bytes
from exporter.series import encode_id
from exporter.storage import WORK_DIR, local_stamp, relative_path

if TYPE_CHECKING:  # not imported at run time: the encoder process imports this module
    from exporter.client import Point

__all__ = [
    "WORKSPACE",
    "WORK_DIR",
    "PartitionWriter",
    "WrittenFile",
    "atomic_write",
    "encode_id",
    "partition_path",
    "partition_span",
    "partitions",
    "start_encoder",
]

log = logging.getLogger(__name__)

_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_LOCK_STRIPES = 1024
_TEMP_NAMES = itertools.count()
WORKSPACE = "workspace"  # the directory of the series without an app id


class Store(Protocol):
    """Object storage as the writer sees it (exporter.remote.ObjectStore): whole objects by
    path relative to the output prefix."""

    async def read(self, relative: str) -> bytes | None: ...

    async def put(self, relative: str, data: bytes) -> str:
        """Replace the object whole; its stamp (ETag) if the store says it, else ""."""
        ...

    def display(self, relative: str) -> str: ...


class Ownership(Protocol):
    """Whether a partition file that is there is one a run wrote (exporter.presence's
    Ownership): a file that is not is moved aside before anything is merged into it."""

    def wrote(self, relative: str) -> bool: ...

    def vouches(self, relative: str, data: bytes) -> bool: ...

    def displaced(self, relative: str) -> str:
        """Where the file goes (relative to the output), the move being about to happen."""
        ...


@dataclass(frozen=True, slots=True)
class WrittenFile:
    path: Path
    rows: int
    sha256: str
    version: int  # order of the writes of one file: a later write has a higher version
    series: str = ""  # the key of the series whose partition this is ("": not known)
    lo: int = 0  # the partition's periods, lo..hi: what the file holds when complete
    hi: int = -1
    size: int = -1  # bytes, and what changes when the file is replaced: locally its
    stamp: str = ""  # local_stamp (only the mtime until it lands), the object's ETag on
    # object storage ("": not known yet)


def partition_of(series: Series, period: int) -> str:
    return _partition(series.unit, period)


@functools.lru_cache(maxsize=4096)
def _partition(unit: str, period: int) -> str:
    """The partition of a period: a run's points share a few hundred of them, so each is
    worked out once (strftime costs as much as the rest of a point's way to its file)."""
    if unit == "day":
        return date.fromordinal(period).strftime("%Y-%m")
    return datetime.fromtimestamp(period * 3600, UTC).strftime("%Y-%m-%d")


def partition_span(series: Series, partition: str) -> tuple[int, int]:
    """The periods ``lo..hi`` a partition of :func:`partition_of` holds (a month of local
    days, or a UTC date's hours)."""
    if series.unit == "day":
        first = date.fromisoformat(f"{partition}-01")
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
        return first.toordinal(), after.toordinal() - 1
    day = (date.fromisoformat(partition).toordinal() - _EPOCH_ORDINAL) * 24
    return day, day + 23


def partitions(series: Series, lo: int, hi: int) -> list[tuple[str, int, int]]:
    """The partitions that hold periods ``lo..hi``: ``(partition, first, last)`` each."""
    out: list[tuple[str, int, int]] = []
    period = lo
    while period <= hi:
        name = partition_of(series, period)
        first, last = partition_span(series, name)
        out.append((name, first, last))
        period = last + 1
    return out


def partition_path(root: Path, series: Series, partition: str, fmt: str) -> Path:
    """``root/{series}/{unit}/{one directory per dimension}/{partition}.{fmt}``."""
    # One string and one Path, not a Path per component: this runs once per file written.
    return Path(os.path.join(root, series.label, f"{partition}.{fmt}"))


def _stripe(path: Path) -> int:
    """Which of the writer's locks guards the file (by its str, which the Path keeps: cheaper
    to hash than the Path's parts)."""
    return hash(os.fspath(path)) % _LOCK_STRIPES


@dataclass
class _Staged:
    """A merged partition in its temp file, waiting for its batch to be made durable."""

    tmp: str
    fd: int
    item: WrittenFile
    done: asyncio.Future[None]
    error: OSError | None = None


class PartitionWriter:
    """Writes partitions with group commit.

    A write merges and renders its partition and writes its temp file, then joins the current
    batch. A batch is made durable together: one ``syncfs`` (or an fsync per file where the
    platform has no syncfs) makes the temp files' data durable, the renames follow, and a
    second sync makes the renames durable; only then do the writes of the batch return (and
    their requests get marked done).

    Work leaves the event loop a batch at a time, never a file at a time (a hand-off costs
    the loop about what a small file's encode does): the syncs and renames of a batch in one
    "syncer" thread, and for local Parquet the read, merge and encode of partitions in one
    encoder process (see _Stager and exporter.child; threads if it cannot run). Profiled
    with bench/throughput.py (docs/benchmarks.md).
    """

    def __init__(
        self,
        root: Path,
        fmt: str,
        *,
        durable: bool = True,
        token: str | None = None,
        on_written: Callable[[list[WrittenFile]], None] | None = None,
        on_staged: Callable[[list[WrittenFile]], None] | None = None,
        store: Store | None = None,
        tz: tzinfo = UTC,
        encoder: ChildProcess | None = None,
        ownership: Ownership | None = None,
    ) -> None:
        """``tz`` is the config's zone (for day labels that carry an offset, as
        :func:`exporter.plan.period_of` reads them); ``token`` names the temp files (the
        directory lock's holder token); ``on_written``
        hears of every batch of files once their renames are durable (the run's journal),
        ``on_staged`` of every batch just before its renames (or PUT) begin, so that a file
        that lands and is killed before ``on_written`` is still recognised as ours.
        With a ``store`` (object storage), ``root`` is ``Path(".")``: paths are relative to
        the store's prefix, and each partition is one GET and one whole-object PUT.
        ``ownership``: asked, the first time this writer meets a file that is there, whether
        a run wrote it; one no run wrote is moved aside and written anew, never merged into
        (None: every file is merged into, as in tests of the writer alone)."""
        self.root = root
        self.tz = tz
        self.store = store
        self.fmt = fmt
        self.durable = durable
        self.tmp_dir = root / WORK_DIR / "tmp"
        self.token = token or secrets.token_hex(8)
        self._on_written = on_written
        self._on_staged = on_staged
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self._versions = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncer")
        self._pending: list[_Staged] = []
        self._flusher: asyncio.Task[None] | None = None
        self._root_fd: int | None = None
        self._stager = _Stager(encoder) if fmt == "parquet" and store is None else None
        self._ownership = ownership
        self._screened: set[str] = set()  # files met once: ours, or moved aside

    async def aclose(self) -> None:
        """Finish the batch in progress (a cancelled write's batch still completes)."""
        if self._flusher is not None:
            await asyncio.wait([self._flusher])
        self._pool.shutdown(wait=True)
        if self._stager is not None:
            await self._stager.aclose()
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    async def write(self, series: Series, points: Iterable[Point]) -> list[WrittenFile]:
        """Merge points into their partitions. Two writers of one file take turns."""
        groups: dict[str, list[Point]] = {}
        for point in points:
            groups.setdefault(partition_of(series, point.period), []).append(point)
        written = []
        for partition, group in sorted(groups.items()):
            path = partition_path(self.root, series, partition, self.fmt)
            async with self._locks[_stripe(path)]:
                if self.store is not None:
                    written.append(await self._put(self.store, path, series, group))
                    continue
                try:
                    self._screen_local(path)
                    staged = await self._stage(path, series, group, next(self._versions))
                    await self._commit(staged)
                except OSError as exc:
                    # The pipeline puts the series' label in front.
                    raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
                written.append(staged.item)
        return written

    async def _put(
        self, store: Store, path: Path, series: Series, points: list[Point]
    ) -> WrittenFile:
        """Object storage: read the current object, merge, replace it whole."""
        relative = path.as_posix()
        try:
            current = await store.read(relative)
            owner = None if current is None else self._unscreened(relative)
            if current is not None and owner is not None and not owner.vouches(relative, current):
                await store.put(owner.displaced(relative), current)  # moved: copied, replaced
                current = None
            rows = (
                {}
                if current is None
                else _parse(self.fmt, self.tz, current, store.display(relative), series)
            )
            count, sha256, data = _merge(self.fmt, rows, series, _rows(points))
            item = _written(path, count, sha256, next(self._versions), series, len(data), "")
            if self._on_staged is not None:
                self._on_staged([item])  # its ETag is known only once it is there
            item = dataclasses.replace(item, stamp=await store.put(relative, data))
        except OSError as exc:
            raise WriteError(str(exc)) from None
        if self._on_written is not None:
            self._on_written([item])
        return item

    def _unscreened(self, relative: str) -> Ownership | None:
        """Whom to ask about the file, when it is met for the first time and the state has
        no fingerprint of it (None: it is ours, or was looked at already)."""
        owner = self._ownership
        if owner is None or relative in self._screened:
            return None
        self._screened.add(relative)
        return None if owner.wrote(relative) else owner

    def _screen_local(self, path: Path) -> None:
        """Move the file at ``path`` aside if no run wrote it (a link or directory there is
        no file of ours either). Reads it only when the state does not know it: rare."""
        relative = relative_path(path, self.root)
        owner = self._unscreened(relative)
        if owner is None:
            return
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return
        if stat.S_ISREG(mode) and owner.vouches(relative, path.read_bytes()):
            return
        target = self.root / owner.displaced(relative)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)

    async def _stage(
        self, path: Path, series: Series, points: list[Point], version: int
    ) -> _Staged:
        prepare = partial(_prepare, self.fmt, self.tz, str(path), series, _rows(points))
        if self._stager is None:
            rows, sha256, data = prepare()
        else:
            # Parquet's encode runs beside the event loop on the other core (jsonl and csv
            # stay inline: their encode costs less than a batch's share of a hand-off). The
            # temp file is written here, on the loop, so durability and ordering stay the
            # group commit's.
            rows, sha256, data = await self._stager.run(prepare)
        tmp, fd = _temp_file(self.tmp_dir, self.token)
        try:
            _write_all(fd, (data,))
            # The rename keeps the mtime: the file is recognised by it should the run be
            # killed between the rename and hearing of it (the whole stamp follows then).
            mtime_ns = os.fstat(fd).st_mtime_ns
        except BaseException:
            _discard(tmp, fd)
            raise
        item = _written(path, rows, sha256, version, series, len(data), str(mtime_ns))
        return _Staged(tmp, fd, item, asyncio.get_running_loop().create_future())

    async def _commit(self, staged: _Staged) -> None:
        self._pending.append(staged)
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush())
        await staged.done

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                await asyncio.sleep(0)  # let the writes staging right now join this batch
                batch, self._pending = self._pending, []
                if self._on_staged is not None:
                    self._on_staged([s.item for s in batch])
                await loop.run_in_executor(self._pool, self._land, batch)
                if self._on_written is not None:
                    self._on_written([s.item for s in batch if s.error is None])
                for staged in batch:
                    if staged.done.done():  # its writer was cancelled; the file is in place
                        continue
                    if staged.error is not None:
                        staged.done.set_exception(staged.error)
                    else:
                        staged.done.set_result(None)
        finally:
            self._flusher = None

    def _land(self, batch: list[_Staged]) -> None:
        """Sync the batch's data, rename its files into place, sync the renames: one hand-off
        to the syncer thread per batch. A failed sync fails every write it covers."""
        if self.durable:
            _sync(self._sync_data, batch)
        for staged in batch:
            _settle(staged)  # rename the synced, discard the failed
        renamed = [staged for staged in batch if staged.error is None]
        if self.durable and renamed:
            _sync(self._sync_names, renamed)

    def _sync_data(self, batch: list[_Staged]) -> None:
        if _syncfs is not None:
            _syncfs(self._root())
        else:
            for staged in batch:
                os.fsync(staged.fd)

    def _sync_names(self, batch: list[_Staged]) -> None:
        if _syncfs is not None:
            _syncfs(self._root())
        else:
            for directory in {staged.item.path.parent for staged in batch}:
                _fsync_dir(directory)

    def _root(self) -> int:
        if self._root_fd is None:
            self._root_fd = os.open(self.root, os.O_RDONLY)
        return self._root_fd


_Prepared = tuple[int, str, bytes]  # rows, sha256, the file's bytes: all the parent needs


def _written(
    path: Path, rows: int, sha256: str, version: int, series: Series, size: int, stamp: str
) -> WrittenFile:
    lo, hi = partition_span(series, path.stem)
    return WrittenFile(path, rows, sha256, version, series.key, lo, hi, size, stamp)


def _rows(points: Iterable[Point]) -> list[formats.Row]:
    """Points as plain tuples: cheaper to pickle to the encoder process than dataclasses."""
    return [(point.period, point.time, point.value) for point in points]


def _prepare(
    fmt: str, tz: tzinfo, path: str, series: Series, rows: Sequence[formats.Row]
) -> _Prepared:
    """Read, merge and encode the partition (on the loop, or in the encoder process). The
    path is a str: a Path costs more to pickle and to rebuild. WriteError when memory runs
    out: the file is fine, the process is short of memory."""
    try:
        try:
            with open(path, "rb") as file:
                data = file.read()
        except FileNotFoundError:
            current = {}
        else:
            current = _parse(fmt, tz, data, path, series)
        return _merge(fmt, current, series, rows)
    except MemoryError:
        raise WriteError(
            f"cannot write {path}: out of memory reading, merging or encoding it (the file is "
            "unchanged); give the run more memory and rerun"
        ) from None


def _merge(
    fmt: str,
    current: dict[int, tuple[str, formats.Value]],
    series: Series,
    rows: Sequence[formats.Row],
) -> _Prepared:
    for period, time, value in rows:
        current[period] = (time, value)  # a period read again replaces all it held
    data = formats.encode(fmt, series, [(p, *current[p]) for p in sorted(current)])
    count = len(current)
    if series.info.long:  # a file row per value of the day
        count = sum(len(day) for _, day in current.values() if isinstance(day, tuple))
    return count, hashlib.sha256(data).hexdigest(), data


def _parse(
    fmt: str, tz: tzinfo, data: bytes, name: str, series: Series
) -> dict[int, tuple[str, formats.Value]]:
    """The rows of a partition file this tool wrote, by period."""
    try:
        return formats.decode(fmt, series, data, tz)
    except (ValueError, KeyError, TypeError) as exc:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise ExporterError(
            f"cannot merge into {name}: it is not a file this tool wrote ({detail[:200]}); "
            "move it away and rerun"
        ) from None
    except ExporterError as exc:
        raise ExporterError(f"cannot merge into {name}: {exc}") from None


async def start_encoder(fmt: str, *, local: bool) -> ChildProcess | None:
    """Before a run touches its output: for local Parquet, the encoder process, started and
    warmed up (pyarrow imported in it), to hand to :class:`PartitionWriter`; for Parquet on
    object storage, pyarrow imported here; None for other formats. ConfigError if pyarrow
    cannot be imported. An encoder that cannot start is left for the writer to replace with
    threads (pyarrow is then imported here)."""
    if fmt != "parquet":
        return None
    if not local:
        formats.load_pyarrow()
        return None
    encoder = ChildProcess(warm_up=_warm_up)
    try:
        outcome = await encoder.warmed_up()
    except ChildUnavailable:
        formats.load_pyarrow()
        return encoder
    if isinstance(outcome, BaseException):
        await encoder.aclose()
        raise outcome
    return encoder


def _warm_up() -> None:
    """Run in the encoder process before its first batch: pyarrow's import and first encode
    (~0.3 s) happen while the run starts."""
    formats.encode("parquet", Series("segment", None, "day"), [(738_000, "2021-07-22", 1)])


_MAX_DEATHS = 3  # encoder processes lost in one run before partitions go to threads


class _Stager:
    """Prepares partitions (read, merge, encode) in the encoder process, many per hand-off.

    A hand-off (send a batch, wake the loop with the results) costs the event loop about as
    much as a small file's encode: so a job waits until the end of the loop's iteration, or
    until the process is free, and goes with every job waiting then. The process takes all
    that queued up while it worked: the busier the run, the bigger the batches.

    A process, not threads: pyarrow's writer releases the GIL around its C++ calls, but the
    Python half of each encode holds it, and the hand-offs between the encoder threads and the
    loop's thread (about six per file) were what limited Parquet (docs/benchmarks.md). If the
    process cannot start, or dies _MAX_DEATHS times, partitions go to two threads instead:
    slower, the same bytes.
    """

    def __init__(self, child: ChildProcess | None = None) -> None:
        self._child: ChildProcess | None = child or ChildProcess(warm_up=_warm_up)
        self._pool: ThreadPoolExecutor | None = None
        self._idle = 1
        self._waiting: list[tuple[Job, asyncio.Future[_Prepared]]] = []
        self._running: set[asyncio.Future[list[Outcome]]] = set()
        self._closing = False
        self._dispatching = False
        try:
            self._child.start()  # now: its imports overlap the run's start
        except ChildUnavailable as exc:
            self._fall_back(exc)

    async def run(self, job: Job) -> _Prepared:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Prepared] = loop.create_future()
        self._waiting.append((job, future))
        if self._idle and not self._dispatching:
            self._dispatching = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._dispatching = False
        loop = asyncio.get_running_loop()
        while self._idle and self._waiting:
            take = -(-len(self._waiting) // self._idle)  # shared out among the idle lanes
            jobs, self._waiting = self._waiting[:take], self._waiting[take:]
            self._idle -= 1
            # Kept in self._running until done (RUF006 does not see the set).
            running = loop.create_task(self._encode([j for j, _ in jobs]))  # noqa: RUF006
            self._running.add(running)
            running.add_done_callback(partial(self._finished, jobs))

    async def _encode(self, jobs: list[Job]) -> list[Outcome]:
        """The batch's outcomes. A job only reads, merges and encodes (the parent writes the
        file), so a batch whose process died is simply run again: on a new process, or on
        threads after _MAX_DEATHS deaths."""
        while (child := self._child) is not None:
            try:
                return await child.run(jobs)
            except ChildUnavailable as exc:
                self._fall_back(exc)
            except ChildDied as exc:
                if self._closing:  # the close killed a stuck child: no new one now
                    raise
                if child.deaths >= _MAX_DEATHS:
                    self._fall_back(exc)
                else:
                    log.warning(
                        "%s; its %d partition(s) are encoded again by a new one",
                        exc,
                        len(jobs),
                        extra={"event": "encoder_died"},
                    )
        assert self._pool is not None
        return await asyncio.wrap_future(self._pool.submit(run_all, jobs))

    def _fall_back(self, exc: ExporterError) -> None:
        log.warning("%s: Parquet is encoded on threads from now on (slower)", exc)
        self._child = None
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="encoder")
        self._idle += 1  # two threads: one more lane than the process

    def _finished(
        self,
        jobs: list[tuple[Job, asyncio.Future[_Prepared]]],
        running: asyncio.Future[list[Outcome]],
    ) -> None:
        self._running.discard(running)
        self._idle += 1
        if running.cancelled():  # the run is being torn down (a second signal)
            for _, future in jobs:
                if not future.done():
                    future.set_exception(WriteError("the write was cancelled"))
            return
        try:
            outcomes = running.result()
        except ExporterError as exc:  # the process died: each write fails, with its own error
            outcomes = [type(exc)(str(exc)) for _ in jobs]
        except Exception as exc:  # a bug: fail the writes rather than leave them waiting
            outcomes = [WriteError(f"encoding failed: {type(exc).__name__}: {exc}") for _ in jobs]
        for (_, future), outcome in zip(jobs, outcomes, strict=True):
            if future.done():  # its writer was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._dispatch()

    async def aclose(self) -> None:
        """Let the batches in flight finish: the child's close waits for them up to its
        timeout, then kills a stopped or stuck child, and what it held fails."""
        self._closing = True
        if self._child is not None:
            await self._child.aclose()
        if self._running:
            await asyncio.wait(self._running)
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes],
    tmp_dir: Path,
    *,
    durable: bool = True,
    token: str | None = None,
    replace: bool = True,
    check: Callable[[Path], None] | None = None,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or chunks of them) whole: temp file in
    ``tmp_dir`` (named after ``token``), fsync, rename, fsync of the directory. The one way a
    local file is written: the API key is redacted from what lands. ``replace`` False: never
    over a file that exists, even one created meanwhile (FileExistsError). ``check`` is called
    with the temp file before it lands; what it raises stops the write."""
    tmp, fd = _temp_file(tmp_dir, token or secrets.token_hex(8))
    try:
        try:
            _write_all(fd, (data,) if isinstance(data, bytes) else data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(Path(tmp))
        if replace:
            _rename(tmp, path)
        else:
            os.link(tmp, path)  # fails, where a rename would not, if path exists
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _temp_file(tmp_dir: Path, token: str) -> tuple[str, int]:
    """A new temp file and its fd. Named after the writer's lock token (random, so unique
    across hosts and pid namespaces; the lock knows which tokens are dead); a name that
    exists anyway is skipped, never an error."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    while True:
        tmp = os.path.join(tmp_dir, f"{token}-{next(_TEMP_NAMES)}.part")
        try:
            return tmp, os.open(tmp, flags, 0o644)
        except FileExistsError:
            continue
        except FileNotFoundError:
            os.makedirs(tmp_dir, exist_ok=True)


def _write_all(fd: int, chunks: Iterable[bytes]) -> None:
    """Every local file's bytes pass here: the API key is redacted from each chunk."""
    for chunk in chunks:
        view = memoryview(redact_bytes(chunk))
        while view:
            view = view[os.write(fd, view) :]


def _rename(tmp: str, path: Path) -> None:
    """Rename into place, creating the directories only when missing (a syscall saved)."""
    try:
        os.replace(tmp, path)
    except FileNotFoundError:
        os.makedirs(path.parent, exist_ok=True)
        os.replace(tmp, path)


def _sync(sync: Callable[[list[_Staged]], None], batch: list[_Staged]) -> None:
    """Run a sync; if it fails, every write of the batch fails with it."""
    try:
        sync(batch)
    except OSError as exc:
        for staged in batch:
            staged.error = staged.error or exc


def _discard(tmp: str, fd: int) -> None:
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)


def _settle(staged: _Staged) -> None:
    """Close the temp file, then rename it into place, or remove it if its batch failed."""
    try:
        os.close(staged.fd)
        if staged.error is None:
            _rename(staged.tmp, staged.item.path)
            # The rename set the file's ctime: its whole stamp is read once it is in place.
            stamp = local_stamp(os.lstat(staged.item.path))
            staged.item = dataclasses.replace(staged.item, stamp=stamp)
            return
    except OSError as exc:
        staged.error = exc
    Path(staged.tmp).unlink(missing_ok=True)


def _load_syncfs() -> Callable[[int], None] | None:
    """Linux's syncfs(2): one call makes every file of the file system durable."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None

    def syncfs(fd: int) -> None:
        if function(fd) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, os.strerror(errno))

    return syncfs


_syncfs = _load_syncfs()


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
