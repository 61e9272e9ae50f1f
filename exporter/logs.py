"""Logging: plain text for people, JSON lines for machines; every record knows its run.

Log calls pass structured fields through ``extra={"event": ..., "series": ...}``. The JSON
formatter writes them as keys; the text formatter shows only the message. A redaction filter
replaces the API key with ``***`` in anything that reaches a handler: the code never logs the
key, and this makes sure a library does not either.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

__all__ = ["FIELDS", "logging_for_run", "new_run_id", "set_secret", "setup_logging"]

FIELDS = ("event", "series", "attempt", "wait_s", "status")


def new_run_id(now: float | None = None) -> str:
    """Sortable by start time, unique across shards started in the same second."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


class _Context(logging.Filter):
    def __init__(self, run_id: str, secret: str | None) -> None:
        super().__init__()
        self.run_id = run_id
        self.secret = secret

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        if self.secret:
            message = record.getMessage()
            if self.secret in message:
                record.msg, record.args = message.replace(self.secret, "***"), None
        return True


class _OwnChatterOnly(logging.Filter):
    """Below WARNING, only our own records: libraries' INFO lines (botocore's "Found
    credentials in environment variables" on every S3 run, s3fs's, aiobotocore's) say
    nothing a user acts on. ``--log-level DEBUG`` shows everything."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".", 1)[0] == "exporter"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "run_id": getattr(record, "run_id", None),
            "event": getattr(record, "event", record.name),
            "message": record.getMessage(),
        }
        for name in FIELDS[1:]:
            value = getattr(record, name, None)
            if value is not None:
                doc[name] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(
    level: str,
    fmt: str,
    *,
    run_id: str,
    secret: str | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every log record to ``stream`` (stderr) in the chosen format; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    context = _Context(run_id, secret)
    handler.addFilter(context)
    if logging.getLevelName(level) != logging.DEBUG:
        handler.addFilter(_OwnChatterOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access and server logs would repeat what our own errors already say.
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    return handler


def set_secret(handler: logging.Handler, secret: str) -> None:
    """Redact ``secret`` from records that reach ``handler`` from now on."""
    for flt in handler.filters:
        if isinstance(flt, _Context):
            flt.secret = secret


@contextmanager
def logging_for_run(level: str, fmt: str, *, run_id: str) -> Iterator[logging.Handler]:
    """setup_logging for the length of a command; the root logger is put back afterwards
    (``main()`` may run more than once in a process: tests, embedding)."""
    root = logging.getLogger()
    saved, saved_level = root.handlers[:], root.level
    try:
        yield setup_logging(level, fmt, run_id=run_id)
    finally:
        root.handlers[:] = saved
        root.setLevel(saved_level)
