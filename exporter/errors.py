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

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from exporter.api import RunReport
    from exporter.plan import Series

__all__ = [
    "ApiError",
    "AuthError",
    "ConfigError",
    "DirectoryBusy",
    "DiscoveryError",
    "ExporterError",
    "IncompleteRun",
    "MalformedResponse",
    "RateLimited",
    "RetryableError",
    "SeriesError",
    "ServerError",
    "Terminated",
    "TransportError",
    "Unreachable",
    "WriteError",
]


class ExporterError(Exception):
    """Root of every error the exporter raises on purpose."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived while a command (or a run before its own handlers) was going. Not an
    ExporterError: like KeyboardInterrupt, nothing on the way out may take it for a failure
    and go on."""


class ConfigError(ExporterError):
    """The config file or the command line is invalid; nothing was fetched or written."""


class DirectoryBusy(ExporterError):
    """Another live run writes into the output directory, and the two could lose rows."""


class IncompleteRun(ExporterError):
    """Raised by :func:`exporter.run` where the CLI exits 1 (series failed or incomplete, or
    no manifest) or 130/143 (stopped by a signal); ``report`` says which series and periods
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
