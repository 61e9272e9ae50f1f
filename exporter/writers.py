"""Series points -> partition files, merged by time and replaced atomically.

Layout: ``{dir}/sessions/{unit}/segment-{seg}/{app}/{period}.{fmt}`` where ``{app}`` is
``app-{id}``, or ``workspace`` for the series without an app id, and ``{period}`` is the month
(day series) or the UTC date (hour series) of the data's own time. Ids are percent-encoded.
No directory name holds ``=``: query engines that discover Hive partitions (DuckDB does by
default) find none, so they read the ids from the rows, never from a path (see README). Each
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
import hashlib
import itertools
import os
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import partial
from pathlib import Path
from typing import Protocol
from urllib.parse import quote

from exporter import formats
from exporter.client import Point
from exporter.errors import ExporterError, WriteError
from exporter.plan import Series
from exporter.series import DIMENSIONS
from exporter.storage import WORK_DIR

__all__ = [
    "WORKSPACE",
    "WORK_DIR",
    "PartitionWriter",
    "WrittenFile",
    "atomic_write",
    "encode_id",
    "partition_path",
]

_LOCK_STRIPES = 1024
_TEMP_NAMES = itertools.count()
_MAX_COMPONENT = 200  # file systems allow 255 bytes per name; leave room for the prefix
WORKSPACE = "workspace"  # the directory of the series without an app id


class Store(Protocol):
    """Object storage as the writer sees it (exporter.remote.ObjectStore): whole objects by
    path relative to the output prefix."""

    async def read(self, relative: str) -> bytes | None: ...

    async def put(self, relative: str, data: bytes) -> None: ...

    def display(self, relative: str) -> str: ...


@dataclass(frozen=True, slots=True)
class WrittenFile:
    path: Path
    rows: int
    sha256: str
    version: int  # order of the writes of one file: a later write has a higher version


def encode_id(value: str) -> str:
    """An id as a path component: percent-encoded, so it cannot name another directory.
    Very long ids keep a readable prefix plus a hash."""
    encoded = quote(value, safe="")
    if len(encoded) > _MAX_COMPONENT:
        digest = hashlib.sha256(value.encode()).hexdigest()[:16]
        encoded = f"{encoded[:150]}~{digest}"
    return encoded


def partition_of(series: Series, period: int) -> str:
    if series.unit == "day":
        return date.fromordinal(period).strftime("%Y-%m")
    return datetime.fromtimestamp(period * 3600, UTC).strftime("%Y-%m-%d")


def partition_path(root: Path, series: Series, partition: str, fmt: str) -> Path:
    """``root/{series}/{unit}/{one directory per dimension}/{partition}.{fmt}``."""
    path = root / series.kind / series.unit
    for param, value in series.dimensions():
        dim = DIMENSIONS[param]
        path /= dim.absent if value is None else f"{dim.directory}-{encode_id(value)}"
    return path / f"{partition}.{fmt}"


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

    Threads take work off the event loop a batch at a time, never a file at a time (a hand-off
    costs the loop about what a small file's encode does): the syncs and renames of a batch in
    one "syncer" thread, and for Parquet the read, merge and encode of partitions in two
    "encoder" threads (see _Stager). Profiled with
    bench/throughput.py (README, Benchmarks).
    """

    def __init__(
        self,
        root: Path,
        fmt: str,
        *,
        durable: bool = True,
        token: str | None = None,
        on_written: Callable[[list[WrittenFile]], None] | None = None,
        store: Store | None = None,
        tz: tzinfo = UTC,
    ) -> None:
        """``tz`` is the config's zone (for day labels that carry an offset, as
        :func:`exporter.plan.period_of` reads them); ``token`` names the temp files (the
        directory lock's holder token); ``on_written``
        hears of every batch of files once their renames are durable (the run's journal).
        With a ``store`` (object storage), ``root`` is ``Path(".")``: paths are relative to
        the store's prefix, and each partition is one GET and one whole-object PUT."""
        self.root = root
        self.tz = tz
        self.store = store
        self.fmt = fmt
        self.durable = durable
        self.tmp_dir = root / WORK_DIR / "tmp"
        self.token = token or secrets.token_hex(8)
        self._on_written = on_written
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]
        self._versions = itertools.count(1)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncer")
        self._pending: list[_Staged] = []
        self._flusher: asyncio.Task[None] | None = None
        self._root_fd: int | None = None
        self._stager = _Stager(threads=2) if fmt == "parquet" else None

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
            async with self._locks[hash(path) % _LOCK_STRIPES]:
                if self.store is not None:
                    written.append(await self._put(self.store, path, series, group))
                    continue
                try:
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
            rows = {} if current is None else self._parse(current, store.display(relative), series)
            item, data = self._merge(rows, path, series, points, next(self._versions))
            await store.put(relative, data)
        except OSError as exc:
            raise WriteError(str(exc)) from None
        if self._on_written is not None:
            self._on_written([item])
        return item

    def _merge(
        self,
        rows: dict[int, tuple[str, formats.Value]],
        path: Path,
        series: Series,
        points: list[Point],
        version: int,
    ) -> tuple[WrittenFile, bytes]:
        for point in points:
            rows[point.period] = (point.time, point.value)
        data = formats.encode(self.fmt, series, [(p, *rows[p]) for p in sorted(rows)])
        return WrittenFile(path, len(rows), hashlib.sha256(data).hexdigest(), version), data

    async def _stage(
        self, path: Path, series: Series, points: list[Point], version: int
    ) -> _Staged:
        prepare = partial(self._prepare, path, series, points, version)
        if self._stager is None:
            item, data = prepare()
        else:
            # Parquet's encoder is C++ that releases the GIL: on a thread it runs beside the
            # event loop on the other core (jsonl and csv stay inline: their encode costs less
            # than a batch's share of a hand-off). The temp file is written here, on the loop:
            # on the encoder threads its syscalls cost more in GIL hand-offs than they save.
            item, data = await self._stager.run(prepare)
        tmp, fd = _temp_file(self.tmp_dir, self.token)
        try:
            _write_all(fd, (data,))
        except BaseException:
            _discard(tmp, fd)
            raise
        return _Staged(tmp, fd, item, asyncio.get_running_loop().create_future())

    def _prepare(self, path: Path, series: Series, points: list[Point], version: int) -> _Prepared:
        """Read, merge and encode the partition."""
        return self._merge(self._read(path, series), path, series, points, version)

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

    def _read(self, path: Path, series: Series) -> dict[int, tuple[str, formats.Value]]:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}
        return self._parse(data, str(path), series)

    def _parse(
        self, data: bytes, name: str, series: Series
    ) -> dict[int, tuple[str, formats.Value]]:
        """The rows of a partition file this tool wrote, by period."""
        try:
            return formats.decode(self.fmt, series, data, self.tz)
        except (ValueError, KeyError, TypeError) as exc:
            raise ExporterError(
                f"cannot merge into {name}: it is not a file this tool wrote "
                f"({type(exc).__name__}); move it away and rerun"
            ) from None
        except ExporterError as exc:
            raise ExporterError(f"cannot merge into {name}: {exc}") from None


_Prepared = tuple[WrittenFile, bytes]
_Job = tuple[Callable[[], _Prepared], "asyncio.Future[_Prepared]"]


class _Stager:
    """Prepares partitions (read, merge, encode) on a few threads, many per hand-off.

    A hand-off (submit, wake the thread, wake the loop with the result) costs the event loop
    about as much as a small file's encode: so a job waits until the end of the loop's
    iteration, or until a thread is free, and goes with every job waiting then. A thread that
    finishes takes all that queued up meanwhile: the busier the run, the bigger the batches.
    """

    def __init__(self, threads: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encoder")
        self._idle = threads
        self._waiting: list[_Job] = []
        self._running: set[asyncio.Future[list[_Prepared | BaseException]]] = set()
        self._dispatching = False

    async def run(self, job: Callable[[], _Prepared]) -> _Prepared:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_Prepared] = loop.create_future()
        self._waiting.append((job, future))
        if self._idle and not self._dispatching:
            self._dispatching = True
            loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        self._dispatching = False
        while self._idle and self._waiting:
            take = -(-len(self._waiting) // self._idle)  # shared out among the idle threads
            jobs, self._waiting = self._waiting[:take], self._waiting[take:]
            self._idle -= 1
            running = asyncio.wrap_future(self._pool.submit(_run_all, [job for job, _ in jobs]))
            self._running.add(running)
            running.add_done_callback(partial(self._finished, jobs))

    def _finished(
        self, jobs: list[_Job], running: asyncio.Future[list[_Prepared | BaseException]]
    ) -> None:
        self._running.discard(running)
        self._idle += 1
        outcomes = running.result()
        for (_, future), outcome in zip(jobs, outcomes, strict=True):
            if future.done():  # its writer was cancelled
                continue
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        self._dispatch()

    async def aclose(self) -> None:
        if self._running:
            await asyncio.wait(self._running)
        self._pool.shutdown(wait=True)


def _run_all(jobs: list[Callable[[], _Prepared]]) -> list[_Prepared | BaseException]:
    """Every job's result or error: one failing partition fails only its own write."""
    outcomes: list[_Prepared | BaseException] = []
    for job in jobs:
        try:
            outcomes.append(job())
        except Exception as exc:  # handed to the job's own writer, which raises it
            outcomes.append(exc)
    return outcomes


def atomic_write(
    path: Path,
    data: bytes | Iterable[bytes],
    tmp_dir: Path,
    *,
    durable: bool = True,
    token: str | None = None,
) -> None:
    """Replace ``path`` with ``data`` (bytes, or chunks of them) whole: temp file in
    ``tmp_dir`` (named after ``token``), fsync, rename, fsync of the directory."""
    tmp, fd = _temp_file(tmp_dir, token or secrets.token_hex(8))
    try:
        try:
            _write_all(fd, (data,) if isinstance(data, bytes) else data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        _rename(tmp, path)
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
    for chunk in chunks:
        view = memoryview(chunk)
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
