"""Where a run's files live, and the lock that decides who may write into a directory.

Layout of an output directory's bookkeeping (data lives under ``sessions/``):

    _runs/{run_id}.json              a finished run's manifest
    _runs/{run_id}.journal.jsonl     the files a run wrote, appended as it goes; removed once
                                     its manifest is written, so only a killed run leaves one
    .braze-export/locks/registry     flock'd for a moment to check and register atomically
    .braze-export/locks/{token}.lock flock'd by its holder for the holder's whole life
    .braze-export/locks/{token}.json who holds it: pid, host, start time, command, layout
    .braze-export/tmp/{token}-{n}.part  temp files, named after their holder's token

Liveness never trusts a pid: in containers every exporter is PID 1, and hosts sharing a volume
have their own pids. A holder is alive while its flock is held; the kernel (or the NFS server)
drops the flock when the process dies, ``kill -9`` included. Anyone who can take the flock of a
holder file knows that holder is dead, and removes its record and its temp files.

Rule: runs that write disjoint files may share a directory (the shards K/N of one layout, with
one N and different K); every other pair is refused before anything is written.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from exporter.errors import DirectoryBusy, ExporterError, Unreachable
from exporter.redact import redact

__all__ = [
    "RUNS_DIR",
    "WORK_DIR",
    "DirLock",
    "Holder",
    "Journal",
    "journal_path",
    "live_holders",
    "local_stamp",
    "lock_record",
    "relative_path",
    "same_stamp",
    "unwritable",
    "write_denied",
    "write_failure",
]

WORK_DIR = ".braze-export"  # temp files and state: same file system as the data, not beside it
RUNS_DIR = "_runs"
JOURNAL_SUFFIX = ".journal.jsonl"
_LOCKS = "locks"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Holder:
    """A run that holds (or asks for) a directory."""

    token: str  # random: unique across hosts and pid namespaces
    pid: int
    host: str
    started_at: str
    command: str
    layout: str  # what decides the files a run writes: config fingerprint and source
    shard: tuple[int, int] | None
    sequence: int = 0  # grows with every holder of the directory: orders their writes

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started_at}: {self.command}"

    def may_share_with(self, other: Holder) -> bool:
        """Only shards of one layout write disjoint files; anything else could lose rows."""
        return (
            self.shard is not None
            and other.shard is not None
            and self.layout == other.layout
            and self.shard[1] == other.shard[1]
            and self.shard[0] != other.shard[0]
        )


class DirLock:
    """A run's hold on an output directory, from ``acquire`` to ``release``."""

    def __init__(self, root: Path, holder: Holder, fd: int, stale_temp_files: int) -> None:
        self.root = root
        self.holder = holder
        self.stale_temp_files = stale_temp_files  # removed while acquiring
        self._fd: int | None = fd

    @property
    def token(self) -> str:
        return self.holder.token

    @classmethod
    def acquire(
        cls,
        root: Path,
        *,
        layout: str,
        shard: tuple[int, int] | None,
        command: str,
        now: float | None = None,
    ) -> DirLock:
        """Register as a holder of ``root``, or raise DirectoryBusy naming the holder in the
        way. Removes the records and temp files of holders that died."""
        try:
            return cls._acquire(root, layout, shard, command, now)
        except OSError as exc:  # a full disk, a read-only mount: one line, not a traceback
            raise Unreachable(unwritable(root, exc, "cannot register this run")) from None

    @classmethod
    def _acquire(
        cls,
        root: Path,
        layout: str,
        shard: tuple[int, int] | None,
        command: str,
        now: float | None,
    ) -> DirLock:
        locks = root / WORK_DIR / _LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with _registry(locks):
            live = list(_live_holders(locks, prune=True))
            me = Holder(
                token=secrets.token_hex(8),
                pid=os.getpid(),
                host=socket.gethostname(),
                started_at=_iso(time.time() if now is None else now),
                command=command,
                layout=layout,
                shard=shard,
                sequence=_next_sequence(locks),
            )
            for other in live:
                if not me.may_share_with(other):
                    raise DirectoryBusy(
                        f"{root} is in use by another run ({other.describe()}); only the shards "
                        "K/N of one config may share a directory: wait for it to end, or use "
                        "another --out"
                    )
            fd = _hold(locks / f"{me.token}.lock")
            _write_json(locks / f"{me.token}.json", asdict(me))
            removed = _remove_stale_temp_files(root, {h.token for h in live} | {me.token})
        return cls(root, me, fd, removed)

    def release(self) -> None:
        if self._fd is None:
            return
        locks = self.root / WORK_DIR / _LOCKS
        with _registry(locks):
            for suffix in (".json", ".lock"):
                (locks / f"{self.token}{suffix}").unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def lock_record(root: Path, holder: Holder) -> Path:
    """The file that says who ``holder`` is (pid, host, start time, command, layout)."""
    return root / WORK_DIR / _LOCKS / f"{holder.token}.json"


def live_holders(root: Path) -> list[Holder]:
    """The runs holding ``root`` now, read-only (works on a read-only mount)."""
    locks = root / WORK_DIR / _LOCKS
    if not locks.is_dir():
        return []
    return list(_live_holders(locks, prune=False))


_NOT_NORMAL = frozenset(("", ".", ".."))  # path components relpath would normalise away


def local_stamp(info: os.stat_result) -> str:
    """What changes when a local file is replaced or edited, for its fingerprint:
    ``"{st_mtime_ns}:{st_ino}:{st_ctime_ns}"``. The mtime alone can be set back (``touch -r``,
    ``cp -p``); an edit (``sed -i``, an editor's save, ``cp``, ``rsync``) gives a new inode
    or a new ctime, and no user call sets the ctime back. A chmod, a chown or a rename also
    sets the ctime: such a file reads as changed and its periods are fetched again."""
    return f"{info.st_mtime_ns}:{info.st_ino}:{info.st_ctime_ns}"


def same_stamp(now: str, recorded: str) -> bool:
    """Whether a stamp seen now is the ``recorded`` one. A recorded stamp of the mtime alone
    (written by an older version, or noted before a rename that changed the ctime) is
    compared on the mtime; object storage's ETags are compared whole."""
    if ":" in recorded or ":" not in now:
        return now == recorded
    return now.partition(":")[0] == recorded


def relative_path(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> str:
    """``os.path.relpath(path, root)``; a cut of the string when ``path`` is spelled under
    ``root`` in normal form (every path the writer makes), which costs a tenth as much."""
    text, prefix = os.fspath(path), os.path.join(os.fspath(root), "")
    if prefix != "./" and text.startswith(prefix):
        rest = text[len(prefix) :]
        if not _NOT_NORMAL.intersection(rest.split("/")):
            return rest
    return os.path.relpath(text, root)


def journal_path(root: Path, run_id: str) -> Path:
    return root / RUNS_DIR / f"{run_id}{JOURNAL_SUFFIX}"


class Journal:
    """The files a run wrote, appended as their renames become durable.

    A killed run never writes its manifest; its journal is what vouches for the files it
    wrote. The first line names the run and its holder sequence; then one line per file.
    """

    def __init__(self, root: Path, run_id: str, sequence: int) -> None:
        self.root = root
        self.path = journal_path(root, run_id)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise write_failure(self.path, exc, "cannot start the run's journal") from None
        self._append([{"run_id": run_id, "sequence": sequence}])

    def record(self, files: Iterable[tuple[Path, int, str | None]]) -> None:
        """(path, rows, sha256) of files now in place; later lines win. sha256 None: the
        run found the file gone or changed (and moved it aside)."""
        self._append(
            {"path": relative_path(path, self.root), "rows": rows, "sha256": sha256}
            for path, rows, sha256 in files
        )

    def _append(self, docs: Iterable[dict[str, Any]]) -> None:
        text = "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in docs)
        data = redact(text).encode()
        if not data or self._fd is None:
            return
        try:
            os.write(self._fd, data)  # one append per batch: a kill never splits a line
        except OSError as exc:
            # The files are in place and the manifest will list them; only a kill before
            # the manifest would leave them unvouched, so this is no reason to fail writes.
            log.warning("%s: cannot append to the run's journal (%s)", self.path, exc.strerror)
            os.close(self._fd)
            self._fd = None

    def close(self, *, remove: bool) -> None:
        """``remove``: the manifest now lists the run's files."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if remove:
            self.path.unlink(missing_ok=True)


def unwritable(path: Path, exc: OSError, doing: str) -> str:
    """One line for an OSError on an output or work directory: ``{path}: {doing} ({cause})``
    and, by errno, what to do: a read-only file system (EROFS) wants a read-write mount or
    another --out; a full one (ENOSPC, EDQUOT) space; a permission error (EACCES, EPERM)
    names which directory denied whom and the fix. In a container that is mostly a bind
    mount owned by another uid than the image's user: ``--user``. Every place that cannot
    write the output says it through here, so the cause reads the same wherever it struck."""
    text = f"{path}: {doing} ({exc.strerror or exc})"
    other = "choose another --out"
    if exc.errno == errno.EROFS:
        return f"{text}: it is on a read-only file system; mount it read-write or {other}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{text}: the file system is full (or the quota reached); free space or {other}"
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return text
    denied = Path(exc.filename) if exc.filename else path
    while not denied.exists() and denied != denied.parent:  # what to create: its parent denied
        denied = denied.parent
    try:
        owner = f" (owned by uid {denied.stat().st_uid})"
    except OSError:
        owner = ""
    uid = os.geteuid()
    fix = f"give uid {uid} the directory (chown) or use another one"
    if _in_container():
        user = '--user "$(id -u):$(id -g)"'
        fix = f"run the container as the directory's owner (docker run {user}), or {fix}"
    return f"{text}: {denied}{owner} is not writable by uid {uid}; {fix}"


# errnos that say the file system refuses this process any write: the output cannot be written
_REFUSED = frozenset({errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM})


def write_failure(path: Path, exc: OSError, doing: str) -> ExporterError:
    """:func:`unwritable`'s line as an error: Unreachable (exit 4) when the file system
    refuses any write (read-only, full, permission), else ExporterError (exit 1: something
    in the way, such as a file where a directory should be)."""
    error = Unreachable if exc.errno in _REFUSED else ExporterError
    return error(unwritable(path, exc, doing))


def write_denied(directory: Path) -> OSError | None:
    """Why this process cannot create entries in the existing ``directory``, as the OSError
    creating one would raise (EROFS for a read-only mount, else EACCES), or None if it can."""
    if os.access(directory, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    return OSError(code, os.strerror(code), str(directory))


def _in_container() -> bool:
    """Docker, Podman, systemd-nspawn, or a Kubernetes pod: their conventional markers."""
    return (
        Path("/.dockerenv").exists()
        or Path("/run/.containerenv").exists()
        or "container" in os.environ
        or "KUBERNETES_SERVICE_HOST" in os.environ
    )


@contextmanager
def _registry(locks: Path) -> Iterator[None]:
    """The short exclusive lock that makes check-and-register one step."""
    fd = os.open(locks / "registry", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise ExporterError(
                f"{locks.parent.parent}: cannot lock the directory ({exc.strerror}); it must be "
                "on a file system with file locks (local disk, NFSv4, CephFS, EFS)"
            ) from None
        yield
    finally:
        os.close(fd)


def _hold(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # new file: nobody else can hold it
    return fd


def _is_held(lock_file: Path, *, prune: bool) -> bool:
    """Whether a live process holds ``lock_file``'s flock. With ``prune``, a dead holder's
    lock file is removed while we hold its flock (no one can take it over meanwhile)."""
    try:
        fd = os.open(lock_file, (os.O_RDWR if prune else os.O_RDONLY) | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if prune else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            os.close(fd)
            return True
        os.close(fd)
        raise
    if prune:
        lock_file.unlink(missing_ok=True)
    os.close(fd)
    return False


def _live_holders(locks: Path, *, prune: bool) -> Iterator[Holder]:
    for info in sorted(locks.glob("*.json")):
        if _is_held(info.with_suffix(".lock"), prune=prune):
            holder = _read_holder(info)
            if holder is not None:
                yield holder
        elif prune:
            info.unlink(missing_ok=True)
    if prune:  # a holder killed between taking its flock and writing its record
        for lock_file in locks.glob("*.lock"):
            if not lock_file.with_suffix(".json").exists():
                _is_held(lock_file, prune=True)


def _read_holder(info: Path) -> Holder | None:
    try:
        doc = json.loads(info.read_text(encoding="utf-8"))
        shard = doc.pop("shard")
        return Holder(**doc, shard=None if shard is None else (int(shard[0]), int(shard[1])))
    except (OSError, ValueError, TypeError, KeyError):
        # Alive but unreadable (written by another version?): treat as a holder of unknown
        # layout, which shares with nobody.
        token = info.stem
        return Holder(token, 0, "unknown host", "unknown time", "unknown command", "?", None)


def _next_sequence(locks: Path) -> int:
    """Larger than every earlier holder's, also across hosts with skewed clocks."""
    path = locks / "sequence"
    try:
        last = int(path.read_text(encoding="ascii"))
    except (OSError, ValueError):
        last = 0
    sequence = max(last + 1, time.time_ns() // 1000)
    _write_json(path, sequence)
    return sequence


def _write_json(path: Path, doc: object) -> None:
    """Replace a small file whole (callers hold the registry lock: the temp name is free)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(redact(json.dumps(doc)), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:  # a full disk, or a signal: no half file left
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_temp_files(root: Path, live_tokens: set[str]) -> int:
    """Temp files of no live holder: left by a killed run (or by an older version that named
    them after its pid)."""
    removed = 0
    tmp_dir = root / WORK_DIR / "tmp"
    if not tmp_dir.is_dir():
        return 0
    for tmp in tmp_dir.glob("*.part"):
        if tmp.name.split("-", 1)[0] not in live_tokens:
            with suppress(FileNotFoundError):
                tmp.unlink()
                removed += 1
    return removed


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
