"""Output on object storage (``s3://``, ``gs://``, ``az://``) through fsspec.

Layout under the prefix is the same as in a local directory (data under ``sessions/``,
manifests under ``_runs/``); the bookkeeping differs because objects have no rename, no
append and no flock:

    .braze-export/lock/{epoch}.json   the lock: created with a conditional create
                                      (S3 ``If-None-Match: *``, GCS ``ifGenerationMatch=0``,
                                      Azure ``If-None-Match``), renewed by its holder
    .braze-export/state*.sqlite       the resume state, checkpointed from the local work dir
    _runs/{run_id}.journal.jsonl      the files a run has recorded, uploaded with each
                                      checkpoint; removed once its manifest is written

A partition is replaced by one PUT of the whole object, which object stores apply
atomically: a reader sees the old or the new object, never part of one.

The lock: a holder creates ``lock/{n+1}.json`` where ``n`` is the highest epoch present, and
only if ``n`` is absent or expired. Of two runs racing for the same epoch, the conditional
create lets exactly one win. The holder rewrites its own object with a later expiry every
checkpoint; before that it checks that no higher epoch exists (somebody took over an expired
lock): then it has lost the prefix and stops. Clocks of the hosts involved must agree to
well within the lock's lifetime (5 minutes).

Every call is retried a few times by exporter.storecall, so a write may be sent again after
the store applied it and its answer was lost; each write is safe twice. Data, state, journal
and the renewal are whole-object PUTs (a renewal rewrites only the holder's own epoch); a
delete that finds nothing is done; a lock create refused (412) reads the object back, and
its own bytes (with the holder's random token) mean the lock is ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from exporter.errors import ConfigError, DirectoryBusy, Unreachable
from exporter.redact import redact_bytes
from exporter.state import State
from exporter.storage import JOURNAL_SUFFIX, RUNS_DIR, WORK_DIR, Holder, unwritable
from exporter.storecall import ATTEMPTS as STORE_ATTEMPTS
from exporter.storecall import AlreadyThere, NotThere, StorageError, call, reason

__all__ = [
    "CHECKPOINT_S",
    "LOCK_TTL_S",
    "STORE_ATTEMPTS",
    "Lease",
    "ObjectStore",
    "RemoteLock",
    "RemoteRun",
    "StorageError",
    "default_work_dir",
    "is_remote",
    "remote_holder",
    "remote_lease",
]

# scheme -> (fsspec protocol, the extra that installs its backend)
_BACKENDS = {
    "s3": ("s3", "s3"),
    "gs": ("gcs", "gcs"),
    "gcs": ("gcs", "gcs"),
    "az": ("az", "azure"),
    "abfs": ("abfs", "azure"),
    "abfss": ("abfs", "azure"),
}
# The store's answers are classified and retried by exporter.storecall alone: the backend's
# own retries (s3fs' loop around botocore's, 25 attempts and up to 43 s for one call to a
# store answering 503) are switched off where the backend lets us.
_NO_BACKEND_RETRIES: dict[str, dict[str, Any]] = {
    "s3": {"config_kwargs": {"retries": {"mode": "standard", "total_max_attempts": 1}}},
}
LOCK_TTL_S = 300.0
_UPLOAD_CHUNK = 1 << 20  # bytes read from a spooled file per write to the store
CHECKPOINT_S = 60.0
_LOCK_DIR = f"{WORK_DIR}/lock"
T = TypeVar("T")

log = logging.getLogger(__name__)


def is_remote(target: str | os.PathLike[str]) -> bool:
    """Whether ``target`` names object storage (``scheme://...``) rather than a directory."""
    return "://" in str(target)


def default_work_dir(url: str) -> Path:
    """Where the resume state lives while a run goes: per prefix, under $TMPDIR."""
    digest = hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "braze-export" / digest


class ObjectStore:
    """A prefix in a bucket; paths are relative to it and use ``/``.

    The fsspec calls are blocking; the writer's ``read``/``put`` run them in a small thread
    pool (fsspec multiplexes them onto its own event loop), so many partitions are in flight.
    Every call goes through exporter.storecall: transient failures are retried a few times
    with ``sleep`` between them, and what is left is a StorageError naming the object.
    """

    def __init__(
        self,
        url: str,
        fs: Any,
        *,
        threads: int = 16,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.url = url.rstrip("/")
        self.fs = fs
        self._root = self.url.split("://", 1)[1]
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="store")
        self._sleep = sleep

    @classmethod
    def open(cls, url: str, *, sleep: Callable[[float], None] = time.sleep) -> ObjectStore:
        """The store for ``url``, or ConfigError naming what to install or fix."""
        parts = urlsplit(url)
        backend = _BACKENDS.get(parts.scheme)
        if backend is None:
            raise ConfigError(
                f"output {url}: unknown storage scheme {parts.scheme!r}; use a directory, "
                "s3://, gs:// or az://"
            )
        if not parts.netloc:
            raise ConfigError(f"output {url}: no bucket (or container) named")
        segments = parts.path.strip("/").split("/") if parts.path.strip("/") else []
        if any(segment in ("", ".", "..") for segment in segments) or "//" in parts.path:
            # Legal keys on a store, but path traversal for whatever syncs the bucket to disk
            # (aws s3 sync, rclone), and another lock domain than the prefix a user means.
            raise ConfigError(
                f"output {url}: the prefix holds an empty, '.' or '..' segment; write it "
                "without them (s3://bucket/path/to/prefix)"
            )
        protocol, extra = backend
        try:
            import fsspec  # optional: only object storage needs it

            fs = fsspec.filesystem(
                protocol,
                use_listings_cache=False,
                skip_instance_cache=True,
                **_NO_BACKEND_RETRIES.get(protocol, {}),
            )
        except ImportError:
            raise ConfigError(
                f"output {url}: the {parts.scheme}:// backend is not installed; install it "
                f"with: pip install 'braze-export[{extra}]'"
            ) from None
        except Exception as exc:  # a backend's own set-up error (bad env config)
            raise ConfigError(f"output {url}: cannot set up storage ({reason(exc)})") from None
        if protocol == "s3":
            fs.retries = 1  # s3fs' own loop (a class attribute its maintainers say to change)
        return cls(url, fs, sleep=sleep)

    def full(self, relative: str) -> str:
        return f"{self._root}/{relative}"

    def display(self, relative: str) -> str:
        return f"{self.url}/{relative}"

    def _call(self, what: str, relative: str, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        return call(
            lambda: fn(self.full(relative), *args, **kw),
            what=f"{what} {self.display(relative)}",
            sleep=self._sleep,
        )

    def get(self, relative: str) -> bytes | None:
        try:
            data: bytes = self._call("read", relative, self.fs.cat_file)
        except NotThere:
            return None
        return data

    def put_sync(self, relative: str, data: bytes) -> str:
        """Replace the object whole; sent again if its answer is lost, which is harmless. The
        API key is redacted from ``data``, as from every object this store writes. Returns the
        object's ETag when the backend's answer gives it, else ""."""
        answer = self._call("write", relative, self.fs.pipe_file, redact_bytes(data))
        return _stamp(answer) if isinstance(answer, dict) else ""

    def put_stream(self, relative: str, chunks: Iterable[bytes]) -> None:
        """Replace the object whole with ``chunks`` (redacted as :meth:`put_sync`), holding
        none of them in memory: they are spooled to an unnamed local temp file (gone with the
        process, even after ``kill -9``), which is uploaded in parts and read again for a
        retry."""
        with tempfile.TemporaryFile() as spool:
            for chunk in chunks:
                spool.write(redact_bytes(chunk))

            def upload(path: str) -> None:
                spool.seek(0)
                with self.fs.open(path, "wb") as target:
                    shutil.copyfileobj(spool, target, _UPLOAD_CHUNK)

            self._call("write", relative, upload)

    def move(self, relative: str, to: str) -> None:
        """Move an object (a copy, then a delete: object stores have no rename)."""
        self._call("move", relative, self.fs.mv, self.full(to))

    def fingerprints(self, relative_dir: str) -> dict[str, tuple[int, str]]:
        """``{path: (size, stamp)}`` of every object under ``relative_dir``, from one listing
        (paged by the backend): the stamp is the object's ETag (or its modification time
        where the backend gives no ETag)."""
        try:
            found = self._call("list", relative_dir, self.fs.find, detail=True)
        except NotThere:
            return {}
        cut = len(self._root) + 1
        return {
            str(path)[cut:]: (int(info.get("size") or 0), _stamp(info))
            for path, info in found.items()
            if info.get("type") != "directory"
        }

    def create(self, relative: str, data: bytes) -> bool:
        """Write ``relative`` only if no object has that name. True if the object now holds
        ``data``: written by this call, or by an attempt of it whose answer was lost (the
        attempt sent again is then refused: 412). ``data`` must be unique to the caller (a
        lock carries its holder's random token), so that finding it means it is ours."""
        safe = redact_bytes(data)
        try:
            self._call("create", relative, self.fs.pipe_file, safe, mode="create")
        except AlreadyThere:
            return self.get(relative) == safe
        except StorageError as exc:
            if exc.kind != "fatal" or isinstance(exc.cause, PermissionError):
                raise
            raise StorageError(
                f"{exc}; the store must support conditional writes (S3 If-None-Match, GCS "
                "preconditions, Azure ETags)"
            ) from None
        return True

    def delete(self, relative: str) -> None:
        """Remove the object; one already gone (an earlier attempt's answer lost) is fine."""
        with contextlib.suppress(NotThere):
            self._call("delete", relative, self.fs.rm_file)

    def list(self, relative_dir: str) -> list[str]:
        """Every object under ``relative_dir``, as paths relative to the prefix, sorted."""
        try:
            found = self._call("list", relative_dir, self.fs.find)
        except NotThere:
            return []
        cut = len(self._root) + 1
        return sorted(str(path)[cut:] for path in found)

    async def read(self, relative: str) -> bytes | None:
        """The object's bytes, or None if there is none (the writer's merge source)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, self.get, relative)

    async def put(self, relative: str, data: bytes) -> str:
        """Replace the object whole (one PUT: readers see the old or the new object); its
        ETag, or "" when the backend does not say."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.put_sync, relative, data)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def _stamp(info: dict[str, Any]) -> str:
    """What changes when an object is replaced: its ETag (S3, GCS, Azure name it so), else
    its modification time; "" when neither is given."""
    for key in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated"):
        value = info.get(key)
        if value:
            return str(value)
    return ""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _epoch_of(relative: str) -> int | None:
    name = relative.rsplit("/", 1)[-1]
    stem = name.removesuffix(".json")
    return int(stem) if name.endswith(".json") and stem.isdigit() else None


def _top_lock(store: ObjectStore) -> tuple[int, dict[str, Any] | None]:
    """The highest lock epoch and its document (None: unreadable), or (0, None)."""
    epochs = [e for e in map(_epoch_of, store.list(_LOCK_DIR)) if e is not None]
    if not epochs:
        return 0, None
    top = max(epochs)
    data = store.get(f"{_LOCK_DIR}/{top:012d}.json")
    if data is None:  # released between the list and the read
        return top, {"expires_epoch": 0}
    try:
        doc: dict[str, Any] = json.loads(data)
        float(doc["expires_epoch"])
    except (ValueError, KeyError, TypeError):
        return top, None
    return top, doc


def _holder_of(doc: dict[str, Any]) -> Holder:
    fields = {k: doc[k] for k in Holder.__dataclass_fields__ if k in doc}
    shard = fields.pop("shard", None)
    try:
        return Holder(**fields, shard=None if shard is None else (int(shard[0]), int(shard[1])))
    except TypeError:
        return Holder("?", 0, "?", "?", "an unknown run", "?", None)


def _busy(store: ObjectStore, doc: dict[str, Any] | None, epoch: int) -> DirectoryBusy:
    if doc is None:
        return DirectoryBusy(
            f"{store.url} is locked by {store.display(f'{_LOCK_DIR}/{epoch:012d}.json')}, "
            "which this version cannot read; delete it if no run is writing there"
        )
    return DirectoryBusy(
        f"{store.url} is in use by another run ({_holder_of(doc).describe()}; its lock "
        f"expires {_iso(float(doc['expires_epoch']))} unless renewed); wait for it to end, "
        "or use another output prefix. On object storage, shards need a prefix each"
    )


@dataclass(frozen=True)
class Lease:
    """The lock a run holds on a prefix, as its lock object (``record``) says: the
    ``holder`` and when the lock expires unless renewed (``expires_at``, ISO 8601 UTC). An
    object this version cannot read (``readable`` False) holds the prefix until deleted."""

    holder: Holder
    expires_at: str | None
    record: str
    readable: bool = True


def remote_lease(store: ObjectStore, now: float | None = None) -> Lease | None:
    """The lock of the run holding the prefix now (unexpired), if any; read only."""
    epoch, doc = _top_lock(store)
    if epoch == 0:
        return None
    record = store.display(f"{_LOCK_DIR}/{epoch:012d}.json")
    if doc is None:
        return Lease(Holder("?", 0, "?", "?", "an unknown run", "?", None), None, record, False)
    expires = float(doc["expires_epoch"])
    if expires <= (time.time() if now is None else now):
        return None
    return Lease(_holder_of(doc), _iso(expires), record)


def remote_holder(store: ObjectStore, now: float | None = None) -> Holder | None:
    """The run holding the prefix now (its lock unexpired), if any."""
    lease = remote_lease(store, now)
    return None if lease is None else lease.holder


class RemoteLock:
    """A run's hold on a prefix: one lock object, created conditionally, renewed, released.

    Shards are refused like any second run: one lock object cannot register several holders
    atomically without read-modify-write conditions that not every store offers.
    """

    def __init__(self, store: ObjectStore, holder: Holder, epoch: int, ttl_s: float) -> None:
        self.store = store
        self.holder = holder
        self.epoch = epoch
        self.ttl_s = ttl_s
        self.expires_at = 0.0
        self.taken_over_from: str | None = None  # a crashed run whose expired lock we took
        self._held = True

    @property
    def token(self) -> str:
        return self.holder.token

    @property
    def name(self) -> str:
        return f"{_LOCK_DIR}/{self.epoch:012d}.json"

    @classmethod
    def acquire(
        cls,
        store: ObjectStore,
        *,
        layout: str,
        shard: tuple[int, int] | None,
        command: str,
        now: float | None = None,
        ttl_s: float = LOCK_TTL_S,
    ) -> RemoteLock:
        """Take the prefix, or raise DirectoryBusy naming its live holder."""
        now = time.time() if now is None else now
        top, doc = _top_lock(store)
        previous: Holder | None = None
        released = False
        if top:
            if doc is None or float(doc["expires_epoch"]) > now:
                raise _busy(store, doc, top)
            previous = _holder_of(doc) if doc.get("token") else None
            released = bool(doc.get("released"))
        last_sequence = previous.sequence if previous is not None else 0
        holder = Holder(
            token=secrets.token_hex(8),
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=_iso(now),
            command=command,
            layout=layout,
            shard=shard,
            sequence=max(last_sequence + 1, int(now * 1_000_000)),
        )
        lock = cls(store, holder, top + 1, ttl_s)
        lock.expires_at = now + ttl_s
        if not store.create(lock.name, lock._doc()):
            _, winner = _top_lock(store)
            raise _busy(store, winner, top + 1)
        if previous is not None and not released:
            lock.taken_over_from = previous.describe()
        for older in store.list(_LOCK_DIR):
            epoch = _epoch_of(older)
            if epoch is not None and epoch < lock.epoch:
                store.delete(older)
        return lock

    def _doc(self, released: bool = False) -> bytes:
        doc = {
            **asdict(self.holder),
            "expires_at": _iso(self.expires_at),
            "expires_epoch": self.expires_at,
            "released": released,
        }
        return json.dumps(doc, indent=1).encode()

    def renew(self, now: float | None = None) -> None:
        """Push the expiry on; DirectoryBusy if another run took the prefix meanwhile."""
        now = time.time() if now is None else now
        top, doc = _top_lock(self.store)
        if top != self.epoch:
            self._held = False
            who = _holder_of(doc).describe() if doc is not None else "another run"
            raise DirectoryBusy(
                f"{self.store.url}: this run's lock expired and {who} took the prefix over; "
                "stopping"
            )
        self.expires_at = now + self.ttl_s
        self.store.put_sync(self.name, self._doc())

    def release(self) -> None:
        """Mark the lock released, keeping its object: epochs only grow, so a holder that
        was stalled past its expiry can never find its old epoch number back on top (a
        deleted lock let the next run reuse it, and two runs wrote at once)."""
        if self._held:
            self._held = False
            self.expires_at = time.time()
            try:
                self.store.put_sync(self.name, self._doc(released=True))
            except StorageError as exc:
                log.warning("%s; it expires by itself", exc)


class RemoteRun:
    """What a run on object storage holds: the store, its lock, the local work dir with the
    resume state, and the checkpoints that copy that state (and the run's journal) up."""

    def __init__(
        self,
        url: str,
        work_dir: Path,
        *,
        layout: str,
        shard: tuple[int, int] | None,
        command: str,
        run_id: str,
        store: ObjectStore | None = None,
        checkpoint_s: float = CHECKPOINT_S,
    ) -> None:
        self.store = store or ObjectStore.open(url)
        try:
            self.lock = RemoteLock.acquire(self.store, layout=layout, shard=shard, command=command)
        except StorageError as exc:  # exit 4, as for a directory that cannot be written
            self.store.close()
            raise Unreachable(
                f"output {self.store.url}: the object store cannot be used: {exc}. Check the "
                "bucket, the credentials and the endpoint; rerun once it answers"
            ) from None
        if self.lock.taken_over_from:
            log.info("took over the expired lock of %s", self.lock.taken_over_from)
        self.work_dir = work_dir
        self.run_id = run_id
        self.checkpoint_s = checkpoint_s
        self.lost: DirectoryBusy | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._state: State | None = None
        self._on_lost: Callable[[], None] = lambda: None
        try:
            self._restore_state()
        except StorageError as exc:
            self.close()
            raise Unreachable(
                f"output {self.store.url}: cannot restore the resume state: {exc}"
            ) from None
        except OSError as exc:
            self.close()
            raise Unreachable(unwritable(work_dir, exc, "cannot keep the resume state")) from None

    @property
    def journal_name(self) -> str:
        return f"{RUNS_DIR}/{self.run_id}{JOURNAL_SUFFIX}"

    def _restore_state(self) -> None:
        """The checkpointed state files replace local ones: the prefix is the truth (a local
        copy may belong to a run on this disk that another host has since resumed)."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        restored: set[str] = set()
        for relative in self.store.list(WORK_DIR):
            name = relative.rsplit("/", 1)[-1]
            if relative.count("/") != 1 or not name.endswith(".sqlite"):
                continue
            data = self.store.get(relative)
            if data is None:
                continue
            target = self.work_dir / name
            for suffix in ("-wal", "-shm"):
                target.with_name(name + suffix).unlink(missing_ok=True)
            tmp = target.with_name(name + ".download")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, target)
            except BaseException:  # a full disk, or a signal: no half file left
                tmp.unlink(missing_ok=True)
                raise
            restored.add(name)
        # A local state the prefix has no checkpoint of is not this prefix's truth: another
        # prefix's (a reused --work-dir), or one whose prefix was emptied since. Trusting it
        # would skip periods whose objects are not there.
        for local in self.work_dir.glob("state*.sqlite"):
            if local.name not in restored:
                for stale in (local, *(local.with_name(local.name + x) for x in ("-wal", "-shm"))):
                    stale.unlink(missing_ok=True)

    def start(self, state: State, on_lost: Callable[[], None]) -> None:
        """Checkpoint ``state`` every ``checkpoint_s`` from now on, renewing the lock first;
        ``on_lost`` stops the run if another run took the prefix over."""
        self._state = state
        self._on_lost = on_lost
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.checkpoint_s)
            try:
                await loop.run_in_executor(None, self.lock.renew)
            except DirectoryBusy as exc:
                log.error("%s", exc)
                self.lost = exc
                self._on_lost()
                return
            except StorageError as exc:
                log.warning("cannot renew the lock: %s", exc)
            try:
                await self.checkpoint()
            except (StorageError, OSError, sqlite3.Error) as exc:
                log.warning("checkpoint failed, trying again in %.0fs: %s", self.checkpoint_s, exc)

    async def checkpoint(self) -> None:
        """Upload the journal of the files the state vouches for, then a consistent copy of
        the state. The copy is taken on the loop (SQLite connections stay in their thread)."""
        state = self._state
        assert state is not None, "checkpoint() before start()"
        copy = self.work_dir / f"checkpoint-{self.lock.token}.sqlite"
        copy.unlink(missing_ok=True)
        try:
            state.snapshot(copy)
            data = copy.read_bytes()
        finally:
            copy.unlink(missing_ok=True)
        head = {"run_id": self.run_id, "sequence": self.lock.holder.sequence}
        lines = [head] + [{"path": p, "rows": r, "sha256": s} for p, r, s in state.files()]
        journal = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in lines).encode()
        loop = asyncio.get_running_loop()
        # The journal first: killed between the two puts, the journal then vouches for files
        # the older state does not know yet (a rerun rewrites them), never the other way.
        await loop.run_in_executor(None, self.store.put_sync, self.journal_name, journal)
        await loop.run_in_executor(None, self.store.put_sync, f"{WORK_DIR}/{state.path.name}", data)

    async def finish(self, *, journal_done: bool) -> None:
        """Stop the checkpoints and take the last one; ``journal_done``: the manifest lists
        the run's files now, so its journal goes."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.wait([self._ticker])
            self._ticker = None
            loop = asyncio.get_running_loop()
            if self.lost is None:
                try:  # still ours? A run stalled past its expiry must not overwrite another's
                    await loop.run_in_executor(None, self.lock.renew)
                except DirectoryBusy as exc:
                    self.lost = exc
                except StorageError as exc:
                    log.warning("cannot renew the lock: %s", exc)
            if self.lost is not None:
                log.error("not checkpointing: another run holds %s now", self.store.url)
                return
            try:
                await self.checkpoint()
                if journal_done:
                    await asyncio.get_running_loop().run_in_executor(
                        None, self.store.delete, self.journal_name
                    )
            except (StorageError, OSError, sqlite3.Error) as exc:
                log.warning("final checkpoint failed: %s", exc)

    def close(self) -> None:
        if self._ticker is not None:  # a run that failed before finish()
            self._ticker.cancel()
            self._ticker = None
        self.lock.release()
        self.store.close()
