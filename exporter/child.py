"""One child process that runs batches of jobs beside the event loop, for work that holds the GIL.

A job is a picklable callable (a ``functools.partial`` of a module-level function): the parent
sends a batch of them over a socket, the child runs each and sends back every job's result or
exception, so one failing job fails only its own caller. Threads cannot do this for Parquet:
pyarrow's writer gives up and retakes the GIL about six times per file, and those hand-offs
with the event loop's thread, not the encode itself, were what limited a run.

The child is started with fork + exec of ``sys.executable`` (like multiprocessing's "spawn",
without re-importing the parent's ``__main__`` or starting a resource tracker): it inherits no
file descriptor but its socket (never the directory lock's), and the parent reaps it, so its
CPU and memory count in the parent's ``wait4`` figures. Life cycle, by design:

- Signals: SIGINT and SIGTERM are blocked across the exec and ignored in the child; the parent
  handles them and closes the child when the run is done, so a Ctrl-C (sent to the whole
  process group) never interrupts a batch or prints a traceback from the child.
- The parent dying (``kill -9`` included) kills the child: ``PR_SET_PDEATHSIG``, plus a check
  that the parent the child was started for is still its parent (it may have died before).
  The pid is compared, never assumed to be 1: the parent may be PID 1 in a pid namespace.
- The child dying (crash, OOM killer, ``kill -9``): the batch in flight fails with
  :class:`ChildDied` (one line, with the exit status), and the next batch starts a new child.
  A child that dies before it was ready raises :class:`ChildUnavailable`: the caller falls back.

Only one batch is in flight at a time, so the two ends never both block writing to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from exporter.errors import ExporterError, WriteError

__all__ = ["ChildDied", "ChildProcess", "ChildUnavailable", "run_all"]

_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_READY = "ready"
_CLOSE_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1

Job = Callable[[], Any]
Outcome = Any  # a job's result or the exception it raised


class ChildDied(WriteError):
    """The child process ended while it held a batch: the batch's jobs failed."""


class ChildUnavailable(ExporterError):
    """The child process cannot be started, or died before it was ready."""


def run_all(jobs: Sequence[Job]) -> list[Outcome]:
    """Every job's result or error: one failing job fails only its own caller."""
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            outcomes.append(job())
        except Exception as exc:  # handed to the job's own caller, which raises it
            outcomes.append(exc)
    return outcomes


class ChildProcess:
    """The parent's side: start the child, run batches on it, close it.

    ``warm_up`` (a picklable job) runs in the child before it reports ready, so its imports
    happen while the parent is still planning, not during the first batch."""

    def __init__(self, warm_up: Job | None = None, *, executable: str | None = None) -> None:
        self._warm_up = warm_up
        self._executable = executable or sys.executable
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready: asyncio.Future[None] | None = None
        self._reply: asyncio.Future[list[Outcome]] | None = None
        self._reading = False
        self.deaths = 0

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Start the child unless it runs; ChildUnavailable if it cannot be started."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair()
        # Blocked across fork + exec, so no signal reaches the child before it ignores them.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [
                    self._executable,
                    "-c",
                    _BOOT,
                    _PACKAGE_ROOT,
                    str(theirs.fileno()),
                    str(os.getpid()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        except OSError as exc:
            ours.close()
            raise ChildUnavailable(f"cannot start the encoder process: {exc}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
            theirs.close()
        self._conn = Connection(ours.detach())
        # A few bytes: the socket's buffer holds them. If the child is gone already, the
        # first run() hears of it (ChildUnavailable).
        with contextlib.suppress(OSError):
            self._conn.send(self._warm_up)

    async def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Each job's result or exception, in order. ChildDied if the child ended meanwhile."""
        assert self._reply is None, "one batch at a time"
        self.start()
        loop = asyncio.get_running_loop()
        conn = self._conn
        assert conn is not None
        if not self._reading:
            self._ready = loop.create_future()
            loop.add_reader(conn.fileno(), self._on_readable)
            self._reading = True
        assert self._ready is not None
        await asyncio.shield(self._ready)  # a cancelled caller leaves the child usable
        self._reply = reply = loop.create_future()
        try:
            conn.send(list(jobs))
        except OSError:  # the child is gone; its end of the socket is closed
            self._died()
        return await asyncio.shield(reply)

    def _on_readable(self) -> None:
        assert self._conn is not None
        try:
            message = self._conn.recv()
        except (EOFError, OSError):
            self._died()
            return
        if message == _READY:
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
        elif self._reply is not None:
            reply, self._reply = self._reply, None
            reply.set_result(message)

    def _died(self) -> None:
        """The child ended: reap it, fail what waited on it, start afresh next time."""
        status = self._reap(kill=True)
        was_ready = self._ready is not None and self._ready.done()
        if was_ready:
            self.deaths += 1
        error: ExporterError = (
            ChildDied(f"the encoder process died ({status}); the writes it held failed")
            if was_ready
            else ChildUnavailable(f"the encoder process did not start ({status})")
        )
        for future in (self._ready, self._reply):
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # retrieved: a waiter may have been cancelled meanwhile
        self._ready = self._reply = None

    def _reap(self, *, kill: bool) -> str:
        """Close the socket, wait for the child (killing it first if ``kill``); its status."""
        if self._conn is not None:
            if self._reading:
                with contextlib.suppress(RuntimeError):  # the loop is already closed
                    asyncio.get_running_loop().remove_reader(self._conn.fileno())
                self._reading = False
            self._conn.close()
            self._conn = None
        proc, self._proc = self._proc, None
        if proc is None:
            return "not running"
        if kill:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        try:
            code = proc.wait(_CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exit status {code}"

    async def aclose(self) -> None:
        """Let the batch in flight finish, then end the child and reap it. An idle child is
        asked to exit (it does as soon as it reads the request); one still starting is
        killed: it holds no work."""
        if self._reply is not None:
            await asyncio.wait([self._reply])
        ready = self._ready is not None and self._ready.done()
        if ready and self._conn is not None and self._proc is not None:
            try:
                self._conn.send(None)
                self._proc.wait(_CLOSE_TIMEOUT_S)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self._reap(kill=True)


_BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from exporter.child import main; main()"


def main() -> None:
    """The child: argv is the package root, the socket's fd and the parent's pid."""
    fd, parent = int(sys.argv[2]), int(sys.argv[3])
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    _die_with(parent)
    conn = Connection(fd)
    code = 0
    try:
        warm_up = conn.recv()
        if warm_up is not None:
            run_all([warm_up])
        conn.send(_READY)
        while (jobs := conn.recv()) is not None:
            conn.send(_picklable(run_all(jobs)))
    except (EOFError, OSError):  # the parent is gone
        pass
    except BaseException:  # no traceback on the user's terminal: the
        code = 70  # parent reports the exit status in one line
    os._exit(code)  # no interpreter tear-down: nothing to flush, and it costs time


def _die_with(parent: int) -> None:
    """Be killed when the parent dies (Linux); exit now if it already has."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _picklable(outcomes: list[Outcome]) -> list[Outcome]:
    """An exception that cannot be pickled travels as an ExporterError with its text."""
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, BaseException):
            try:
                pickle.dumps(outcome)
            except Exception:
                outcomes[i] = ExporterError(f"{type(outcome).__name__}: {outcome}")
    return outcomes
