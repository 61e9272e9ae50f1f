"""One object store call: what its failure means, and the bounded retries of the ones worth
another attempt.

Every call of :class:`exporter.remote.ObjectStore` goes through :func:`call`, which decides
in one place (the backends' own retries are switched off where they can be: s3fs, botocore):

    missing   404, FileNotFoundError                 no such object; a delete is done
    exists    412, FileExistsError                   a conditional create found an object
    retry     409 ConditionalRequestConflict, 408,   the same call may succeed: backoff, then
              429, 5xx, SlowDown, resets, timeouts   again, ATTEMPTS calls at most
    fatal     anything else (403, no bucket, 400)    trying again cannot help

A 409 is retried because S3 answers it when a conditional create races another write or a
delete of the key, and says to retry (Amazon S3 API reference, PutObject, If-None-Match). A
retried write may have been applied before its answer was lost: callers make every write
safe to send twice (whole-object PUTs; a create compares what it finds with what it sent).

    StorageError (OSError)     the message names the object, the answer, the attempts
    ├── NotThere               missing
    └── AlreadyThere           exists
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

__all__ = [
    "ATTEMPTS",
    "AlreadyThere",
    "NotThere",
    "StorageError",
    "call",
    "classify",
    "reason",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

# Per call: backoff of 0.2, 0.4, 0.8, 1.6 s at most (full jitter), 3 s in all: a store that
# answers nothing but errors stops the run within seconds, and a lost answer or a short
# throttle is ridden out.
ATTEMPTS = 5
_BACKOFF_FIRST_S = 0.2
_BACKOFF_MAX_S = 1.6

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_RETRY_CODES = frozenset(
    {
        "ConditionalRequestConflict",  # S3: a conditional write raced another
        "OperationAborted",  # S3 (and compatibles): a conflicting operation in progress
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)
_EXISTS_CODES = frozenset({"PreconditionFailed", "BlobAlreadyExists"})  # S3 / GCS, Azure
_MISSING_CODES = frozenset({"NoSuchKey", "BlobNotFound"})
# No answer at all, by class name in the exception's MRO: botocore's, aiohttp's (gcsfs) and
# azure-core's (adlfs) exceptions are matched without importing any of them.
_TRANSIENT_CLASSES = frozenset(
    {
        "ConnectionError",  # builtin (resets, refused) and botocore's
        "TimeoutError",  # builtin, also asyncio's and socket's
        "HTTPClientError",
        "ClientConnectionError",
        "ClientPayloadError",
        "IncompleteRead",
        "ResponseParserError",
        "FSTimeoutError",
        "ServiceRequestError",
        "ServiceResponseError",
    }
)


class StorageError(OSError):
    """An object store call failed; the message names the object and the cause."""

    def __init__(
        self, message: str, *, kind: str = "fatal", cause: BaseException | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind  # what classify() said of the last failure
        self.cause = cause  # the backend's exception (kept off the traceback: one line)

    def __str__(self) -> str:
        return str(self.args[0])


class NotThere(StorageError):
    """There is no such object."""


class AlreadyThere(StorageError):
    """A conditional create found an object of that name."""


def _answer(exc: BaseException) -> tuple[int | None, str | None, str | None]:
    """(HTTP status, error code, message) of the store's answer behind ``exc``, if any: the
    backends wrap it (s3fs raises an OSError whose cause is botocore's ClientError)."""
    seen: BaseException | None = exc
    for _ in range(4):
        if seen is None:
            break
        response: Any = getattr(seen, "response", None)
        if isinstance(response, dict) and "Error" in response:  # botocore's ClientError
            error = response.get("Error") or {}
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return status, error.get("Code"), error.get("Message")
        for attr in ("status_code", "status", "code"):  # azure-core, aiohttp, gcsfs
            status = getattr(seen, attr, None)
            if isinstance(status, int) and 100 <= status <= 599:
                return status, getattr(seen, "error_code", None), None
        seen = seen.__cause__ or seen.__context__
    return None, None, None


def classify(exc: BaseException) -> str:
    """``missing``, ``exists``, ``retry`` or ``fatal``: see the module docstring."""
    status, code, _ = _answer(exc)
    if isinstance(exc, FileExistsError) or status == 412 or code in _EXISTS_CODES:
        return "exists"
    if isinstance(exc, FileNotFoundError) or code in _MISSING_CODES:
        return "missing"
    if status in _RETRY_STATUS or code in _RETRY_CODES:
        return "retry"
    if status is None and any(c.__name__ in _TRANSIENT_CLASSES for c in type(exc).__mro__):
        return "retry"
    return "fatal"


def reason(exc: BaseException) -> str:
    """The failure in one line: the store's answer (``HTTP 503 SlowDown: ...``), else the
    exception's class and first line. Endpoint URLs are cut to their host: a path or query
    may carry a signature."""
    status, code, message = _answer(exc)
    if status is not None:
        named = f" {code}" if code and code != str(status) else ""  # a HEAD's has no body
        text = f"HTTP {status}{named}" + (f": {message}" if message else "")
    else:
        lines = str(exc).strip().splitlines()
        text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return re.sub(r"(https?://[^/\s\"']+)[^\s\"']*", r"\1", text)


def call(fn: Callable[[], T], *, what: str, sleep: Callable[[float], None] = time.sleep) -> T:
    """``fn()``, again after a backoff while it fails with a ``retry`` failure, ATTEMPTS
    times at most. ``what`` (``read s3://b/p/x``) names the call in the retry log lines and
    in the StorageError (NotThere, AlreadyThere) it raises when it gives up."""

    def log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning(
            "cannot %s (%s): trying again in %.1fs, attempt %d of %d",
            what,
            reason(exc) if exc is not None else "?",
            wait,
            state.attempt_number + 1,
            ATTEMPTS,
            extra={"event": "store_retry", "attempt": state.attempt_number, "wait_s": wait},
        )

    retrying = Retrying(
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_random_exponential(multiplier=_BACKOFF_FIRST_S, max=_BACKOFF_MAX_S),
        retry=retry_if_exception(lambda exc: classify(exc) == "retry"),
        before_sleep=log_retry,
        sleep=sleep,
        reraise=True,
    )
    try:
        return retrying(fn)
    except Exception as exc:
        kind = classify(exc)
        attempts = retrying.statistics.get("attempt_number", 1)
        tried = f" ({attempts} attempts)" if attempts > 1 else ""
        error = {"missing": NotThere, "exists": AlreadyThere}.get(kind, StorageError)
        raise error(f"cannot {what}: {reason(exc)}{tried}", kind=kind, cause=exc) from None
