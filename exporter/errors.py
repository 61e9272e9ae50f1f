"""The one exception tree of the exporter.

    ExporterError
    ├── ConfigError              the config or the command line is wrong (exit 2)
    ├── Unreachable              nothing can work: the endpoint is not reachable or not Braze,
    │                            redirects elsewhere, or the output cannot be written (exit 4)
    ├── WriteError               one partition could not be written (its series fails)
    ├── DirectoryBusy            another run holds the output directory (exit 5)
    ├── IncompleteRun            exporter.run(): the run ended with series failed or
    │                            incomplete (exit 1) or was stopped by a signal; has the report
    └── ApiError                 one Braze call went wrong; carries the series it belongs to
        │                        (or, for a list endpoint, a label such as "/events/list page 2")
        ├── RetryableError       worth another attempt
        │   ├── RateLimited      429: wait until the reset time the server named
        │   ├── ServerError      5xx
        │   ├── TransportError   timeout, reset connection, DNS, ...
        │   └── MalformedResponse  a 200 whose body is not a valid series (or list page)
        ├── SeriesError          400 / 404: this series cannot be fetched, the others can
        ├── DiscoveryError       a list endpoint cannot be read to the end: 4xx, or pages
        │                        that repeat or never end
        └── AuthError            401 / 403: no request of this run can succeed (exit 3)

    KeyboardInterrupt
    └── Terminated               SIGTERM outside a run's own handling (exit 143): raised like
                                 Ctrl-C's KeyboardInterrupt, so every ``with`` and ``finally``
                                 on the way out runs (temp files and directories go)

Messages never contain the API key, a header or a full URL: only the series, the status and
what Braze said (and what Braze said is redacted where it is printed or written:
:mod:`exporter.redact`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.api import RunReport
    from exporter.plan import Series

__all__ = [
    "EXIT_AUTH",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PRECEDENCE",
    "EXIT_SIGHUP",
    "EXIT_SIGINT",
    "EXIT_SIGTERM",
    "EXIT_STATUSES",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "ApiError",
    "AuthError",
    "ConfigError",
    "DirectoryBusy",
    "DiscoveryError",
    "ExitStatus",
    "ExporterError",
    "IncompleteRun",
    "MalformedResponse",
    "RateLimited",
    "RetentionError",
    "RetryableError",
    "SeriesError",
    "ServerError",
    "StreamUnwritable",
    "Terminated",
    "TransportError",
    "Unreachable",
    "WriteError",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_AUTH, EXIT_UNREACHABLE, EXIT_BUSY = 0, 1, 2, 3, 4, 5
EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM = 129, 130, 143  # 128 + the signal number


@dataclass(frozen=True, slots=True)
class ExitStatus:
    """One row of the exit-status table every command shares.

    ``codes``: the status (130 and 143 share a row); ``brief``: the line ``--help`` prints;
    ``detail``: the documentation's account, Markdown (links relative to ``docs/reference/``).
    """

    codes: tuple[int, ...]
    brief: str
    detail: str


# The one table of exit statuses: `--help` and docs/reference/exit-codes.md are made from it.
EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus(
        (EXIT_OK,),
        "every series complete",
        "every series complete: every planned period is in the files",
    ),
    ExitStatus(
        (EXIT_FAILED,),
        "some series failed, or the run is incomplete (a discovery failed, or its manifest "
        "could not be written); the summary says which and why",
        "some planned period is missing at the end: a series failed (listed with its reason) "
        "or is incomplete after gap-fill (its missing ranges listed); everything else was "
        "written; or a discovery failed (its exports got no series: `discovery: ... FAILED` in "
        "the summary); or a list for a dimension table could not be read to its end or the table "
        "not written (the last good table kept: `dimensions: ... FAILED`); or the run manifest "
        "could not be written (disk full: the summary says "
        "so)",
    ),
    ExitStatus(
        (EXIT_USAGE,),
        "invalid config or command line: nothing was fetched or written",
        "config or usage error: nothing was fetched or written (also: a key of fewer than 16 "
        "characters; `sandbox` cannot listen on its `--host`/`--port`; and a run into a "
        "directory that already holds rows of the same format from another source or time "
        "zone)",
    ),
    ExitStatus(
        (EXIT_AUTH,),
        "Braze refused the key (401/403): check the key, its permission and the host",
        "authentication or permission refused (401/403 on a series endpoint, 401 on a list): "
        "check the key, the series' permission (`sessions.data_series`, ...: see "
        "[Series](../series.md)) and the instance host",
    ),
    ExitStatus(
        (EXIT_UNREACHABLE,),
        "the endpoint is unreachable (fail-fast), not Braze, or redirects (3xx, never "
        "followed), or the output (directory, object store, --work-dir) cannot be written "
        "(plan, verify: read)",
        "nothing can work: the first connections all failed (refused, host name not resolved, "
        "TLS), or the endpoint answers 404 to the series endpoints (not a Braze REST host), or "
        "any Braze call is answered with a redirect (3xx: never followed, since it would resend "
        "the key; the message names only the `Location`'s scheme and host: set "
        "`braze.endpoint` to it if that is your instance's REST host); or later, after "
        "answers, every connection failed for 30 s (20 in a row: `lost HOST`), or every write "
        "failed for 30 s (10 in a row), or 200 writes in a row failed however fast (the disk "
        "is full or the object store is down); or the output directory cannot be written at "
        "all when the run starts, whether it exists (`cannot register this run`) or must be "
        "created (`--out: DIR: cannot create it`): the line says which of read-only file "
        "system, full file system or another uid's directory (naming it, its owner and the "
        "fix); or the object store cannot be used when the run starts (it answers only "
        "errors, or denies access: `the object store cannot be used`, naming the prefix and "
        "its last answer, within a few seconds), or the `--work-dir` cannot be written; or "
        "too little memory to start (`out of memory while starting`). The message names the "
        "host or the output, the cause and what to check; completed periods are saved. For "
        "`plan` and `verify`, which write nothing: the output or its resume state cannot be "
        "read (a permission denied, or an object store that answers only errors). Also: the "
        "resume state (`.braze-export/state.sqlite`) is damaged (delete it: the data stays, "
        "its periods are fetched again) or cannot be opened (something else in its place)",
    ),
    ExitStatus(
        (EXIT_BUSY,),
        "the output directory is held by another run",
        "the output directory (or object storage prefix) is held by another run that could "
        "lose rows alongside this one (see [Reliability](../reliability.md#one-directory-many-"
        "processes)); nothing was fetched or written. The message names the holder: pid, host, "
        "start time, command",
    ),
    ExitStatus(
        (EXIT_SIGHUP, EXIT_SIGINT, EXIT_SIGTERM),
        "interrupted by SIGHUP (terminal hung up) / SIGINT (Ctrl-C) / SIGTERM: completed "
        "requests are saved, rerun to resume; a second signal stops at once",
        "interrupted by SIGHUP (the terminal hung up) / SIGINT / SIGTERM: completed requests "
        "are saved; rerun to resume. Any other command (`plan`, `verify`, `init`, ...) stops "
        "where it is and removes what it had in the making (temp files, `braze-export-plan-*` "
        "directories under `$TMPDIR`); a second SIGHUP or SIGTERM stops at once. A signal "
        "the parent set to be ignored (`nohup`, a script's `cmd &` for SIGINT) stays ignored",
    ),
)

EXIT_PRECEDENCE = (
    "Where several apply, an interruption wins, then 3, then 4, then 5, then 1. When the "
    "reader of stdout goes away early (`plan --json | head`), the command stops writing "
    "quietly; when stdout cannot be written (`> /dev/full`), it says `error: cannot write to "
    "stdout: ...` once on stderr. Either way `run` keeps its run's status (its files and "
    "manifest are whole), the other commands exit 1 (their output is incomplete). No failure "
    "shows a traceback."
)


class ExporterError(Exception):
    """Root of every error the exporter raises on purpose."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (``signum``) arrived while a command (or a run before its own
    handlers) was going. Not an ExporterError: like KeyboardInterrupt, nothing on the way out
    may take it for a failure and go on."""

    def __init__(self, signum: int = 15) -> None:
        super().__init__(signum)
        self.signum = signum


class StreamUnwritable(OSError):
    """stdout (or stderr) could not be written (``> /dev/full``): raised by the redacting
    streams, so that the CLI tells it from any other OSError (a store, a file) and names
    stdout only when stdout it was. Not an ExporterError: it is the terminal's, not the run's.
    A closed pipe stays BrokenPipeError (the reader went away: quiet)."""


class ConfigError(ExporterError):
    """The config file or the command line is invalid; nothing was fetched or written."""


class RetentionError(ConfigError):
    """A window that ends before what Braze still keeps (sends: 14 days after the send):
    nothing in it can be had, on any day this config runs."""


class DirectoryBusy(ExporterError):
    """Another live run writes into the output directory, and the two could lose rows."""


class IncompleteRun(ExporterError):
    """Raised by :func:`exporter.run` where the CLI exits 1 (series failed or incomplete, or
    no manifest) or 129/130/143 (stopped by a signal); ``report`` says which series and periods
    are missing. Rerunning the same call resumes: completed periods are kept."""

    def __init__(self, message: str, report: RunReport) -> None:
        super().__init__(message)
        self.report = report


class ApiError(ExporterError):
    """One call to Braze failed. ``label`` names a call that is not a series' (a list page)."""

    def __init__(
        self,
        message: str,
        *,
        series: Series | None = None,
        status: int | None = None,
        label: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.series = series
        self.status = status
        self._label = label

    @property
    def label(self) -> str | None:
        """What the call was for: the series' label, or the list page's."""
        return self.series.label if self.series is not None else self._label

    @property
    def reason(self) -> str:
        """What went wrong, without the series: ``HTTP 400: Invalid segment_id``."""
        return self.message if self.status is None else f"HTTP {self.status}: {self.message}"

    def __str__(self) -> str:
        where = f"{self.label}: " if self.label is not None else ""
        return f"{where}{self.reason}"


class RetryableError(ApiError):
    """A transient failure: the same request may succeed later."""


class RateLimited(RetryableError):
    """429: the workspace budget is spent until ``reset_at`` (epoch seconds), if known."""

    def __init__(
        self,
        message: str,
        *,
        series: Series | None = None,
        status: int | None = 429,
        reset_at: float | None = None,
        label: str | None = None,
    ):
        super().__init__(message, series=series, status=status, label=label)
        self.reset_at = reset_at


class ServerError(RetryableError):
    """5xx from Braze or a proxy in front of it."""


class TransportError(RetryableError):
    """No usable HTTP response: timeout, reset connection, refused connection.

    ``cause`` is one of ``refused``, ``dns``, ``tls``, ``timeout``, ``reset``, ``other``;
    the first three happen before any HTTP exchange (``connect_failed``)."""

    def __init__(
        self,
        message: str,
        *,
        series: Series | None = None,
        cause: str = "other",
        detail: str = "",
        label: str | None = None,
    ):
        super().__init__(message, series=series, label=label)
        self.cause = cause
        self.detail = detail or message  # the cause in words, without the host

    @property
    def connect_failed(self) -> bool:
        return self.cause in ("refused", "dns", "tls")


class WriteError(ExporterError):
    """A partition file or object could not be written (disk full, store down, ...)."""


class Unreachable(ExporterError):
    """The run cannot succeed at all: every connection fails, the host is not Braze's or
    redirects (3xx) elsewhere, or the output cannot be written (exit 4)."""


class MalformedResponse(RetryableError):
    """HTTP 200 but the body is not a valid series; never written as data."""


class SeriesError(ApiError):
    """400 / 404: this series cannot be fetched; the run goes on with the others."""


class DiscoveryError(ApiError):
    """A list endpoint (``/segments/list``, ...) cannot be read to the end: it answered 400 /
    404, repeats a page, or has more pages than any workspace should; the ids are unknown."""


class AuthError(ApiError):
    """401 / 403: the key, its permission or the instance host is wrong; the run stops."""
