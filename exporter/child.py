"""One child process that runs batches of jobs beside the event loop, for work that holds the GIL.

A job is a picklable callable (a ``functools.partial`` of a module-level function): a batch of
them goes to the child in one hand-off, the child runs each and sends back every job's result
or exception, so one failing job fails only its own caller. Threads cannot do this for Parquet:
pyarrow's writer gives up and retakes the GIL about six times per file, and those hand-offs
with the event loop's thread, not the encode itself, were what limited a run.

The process is the standard library's: a one-worker :class:`ProcessPoolExecutor` with the
"spawn" start method (a fresh interpreter: it inherits no file descriptor of ours, never the
directory lock's, and no thread). What this module adds is its life cycle:

- Signals: SIGHUP, SIGINT and SIGTERM are blocked while the process starts and ignored in it
  (the pool's initializer); the parent handles them and closes the pool when the run is done,
  so a Ctrl-C or a hang-up (sent to the whole process group) never interrupts a batch or
  prints a traceback from it.
- The parent dying (``kill -9`` included) kills the child: ``PR_SET_PDEATHSIG``, plus a check
  that the parent it was started for is still its parent (it may have died before). The pid
  is compared, never assumed to be 1: the parent may be PID 1 in a pid namespace.
- The child dying (crash, OOM killer, ``kill -9``) breaks the pool: the batch in flight fails
  with :class:`ChildDied` (one line), and the next batch starts a new pool. A child that dies
  before its first job is done raises :class:`ChildUnavailable`: the caller falls back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import signal
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker, spawn
from typing import Any

from exporter.errors import ExporterError, WriteError

__all__ = ["ChildDied", "ChildProcess", "ChildUnavailable", "run_all"]

_SIGNALS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}
# A batch (some dozens of partitions of at most 31 rows) takes milliseconds: a child that has
# not answered in this long is stopped or stuck, and is killed (its batch is run again).
BATCH_TIMEOUT_S = 60.0
_CLOSE_TIMEOUT_S = 10.0
_PR_SET_PDEATHSIG = 1

Job = Callable[[], Any]
Outcome = Any  # a job's result or the exception it raised


class ChildDied(WriteError):
    """The child process ended while it held a batch: the batch's jobs failed."""


class ChildUnavailable(ExporterError):
    """The child process cannot be started, or died before it was ready."""


def run_all(jobs: Sequence[Job]) -> list[Outcome]:
    """Every job's result or error: one failing job fails only its own caller. An error
    that cannot be pickled travels as an ExporterError with its text."""
    outcomes: list[Outcome] = []
    for job in jobs:
        try:
            outcomes.append(job())
        except Exception as exc:  # handed to the job's own caller, which raises it
            try:
                pickle.dumps(exc)
            except Exception:
                exc = ExporterError(f"{type(exc).__name__}: {exc}")
            outcomes.append(exc)
    return outcomes


class ChildProcess:
    """The parent's side: start the child, run batches on it, close it.

    ``warm_up`` (a picklable job) runs in the child first, so its imports happen while the
    parent is still planning, not during the first batch. ``executable`` is the Python to
    start (tests)."""

    def __init__(
        self,
        warm_up: Job | None = None,
        *,
        executable: str | None = None,
        timeout_s: float = BATCH_TIMEOUT_S,
    ) -> None:
        self._warm_up = warm_up
        self.timeout_s = timeout_s
        self._executable = executable
        self._pool: ProcessPoolExecutor | None = None
        self._ready: Future[list[Outcome]] | None = None  # the warm-up batch: [pid, outcome]
        self._started = False  # the current pool's warm-up came back
        self.pid: int | None = None
        self.deaths = 0

    def start(self) -> None:
        """Start the child unless it runs; ChildUnavailable if it cannot be started."""
        if self._pool is not None:
            return
        context = multiprocessing.get_context("spawn")
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        python = spawn.get_executable()
        if self._executable is not None:
            spawn.set_executable(self._executable)
        try:
            _start_tracker_quietly()
            # The worker is spawned inside submit(), on this thread: with the signals blocked,
            # so none reaches it before its initializer ignores them.
            pool = ProcessPoolExecutor(
                1, mp_context=context, initializer=_initialize, initargs=(os.getpid(),)
            )
            self._ready = pool.submit(
                run_all, [os.getpid, *([self._warm_up] if self._warm_up else [])]
            )
        except (OSError, BrokenProcessPool) as exc:
            raise ChildUnavailable(f"cannot start the encoder process: {exc}") from None
        finally:
            spawn.set_executable(python)
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        self._pool, self._started = pool, False

    async def warmed_up(self) -> Outcome:
        """Start the child if needed and wait until it is ready: the warm-up job's result or
        the exception it raised (None without one). ChildUnavailable if it cannot start."""
        self.start()
        ready = self._ready
        assert ready is not None
        pool = self._pool
        assert pool is not None
        try:
            outcomes = await asyncio.shield(asyncio.wrap_future(ready))
        except BrokenProcessPool:
            self._lost(pool)
            raise ChildUnavailable("the encoder process did not start") from None
        self.pid, self._started = outcomes[0], True
        return outcomes[1] if len(outcomes) > 1 else None

    async def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        """Each job's result or exception, in order. ChildDied if the child ended meanwhile,
        or did not answer within ``timeout_s`` (stopped, stuck): then it is killed."""
        if not self._started:
            await self.warmed_up()  # shielded: a cancelled caller leaves the child starting
        pool = self._pool
        assert pool is not None
        try:
            answer = asyncio.wrap_future(pool.submit(run_all, list(jobs)))
            return await asyncio.wait_for(asyncio.shield(answer), self.timeout_s)
        except TimeoutError:
            self._kill()
            self._lost(pool)
            self.deaths += 1
            raise ChildDied(
                f"the encoder process (pid {self.pid}) did not answer within "
                f"{self.timeout_s:.0f}s and was killed"
            ) from None
        except (BrokenProcessPool, RuntimeError):  # RuntimeError: submit() after the break
            self._lost(pool)
            self.deaths += 1
            raise ChildDied(f"the encoder process (pid {self.pid}) ended abruptly") from None

    def _kill(self) -> None:
        """SIGKILL the child (it works on a stopped process too); the pool then breaks."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(self.pid, signal.SIGKILL)

    def _lost(self, pool: ProcessPoolExecutor) -> None:
        """The pool is broken: drop it (the next batch starts a new one)."""
        if self._pool is pool:
            self._pool = self._ready = None
            self._started = False
        pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self, timeout_s: float = _CLOSE_TIMEOUT_S) -> None:
        """Let the batch in flight finish, then end the child and wait for it (off the
        loop's thread). A child that has not ended after ``timeout_s`` is killed."""
        pool, self._pool, self._ready = self._pool, None, None
        if pool is None:
            return
        closing = asyncio.get_running_loop().run_in_executor(None, pool.shutdown)
        _, pending = await asyncio.wait([closing], timeout=timeout_s)
        if pending:
            self._kill()
            await closing


_QUIET_TRACKER = "ignore::UserWarning:multiprocessing.resource_tracker"


def _start_tracker_quietly() -> None:
    """Start multiprocessing's resource tracker (a helper process the pool's queues need)
    with its warnings ignored, in it and here: after a ``kill -9`` of the exporter it cleans
    up the queues' semaphores and would print two lines of UserWarning about them, and if
    it is killed itself, this process relaunches it with a UserWarning of its own. (The
    relaunched tracker still prints a KeyError traceback per semaphore it never saw, when
    the pool closes: left alone, see docs/output.md, Parquet.)"""
    if _QUIET_TRACKER not in sys.warnoptions:  # also read when it is relaunched
        sys.warnoptions.append(_QUIET_TRACKER)
        warnings.filterwarnings(
            "ignore", category=UserWarning, module="multiprocessing.resource_tracker"
        )
    resource_tracker.ensure_running()


def _initialize(parent: int) -> None:
    """The child's first act: ignore the terminal's signals, die with the parent."""
    for signum in _SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)
