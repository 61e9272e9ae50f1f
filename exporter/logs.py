"""Logging: plain text for people, JSON lines for machines; every record knows its run.

Log calls pass structured fields through ``extra={"event": ..., "series": ...}``. The JSON
formatter writes them as keys (``series`` given as a mapping, such as
:meth:`exporter.plan.Series.log_fields`, becomes one key per dimension); the text formatter
shows only the message. Both formatters redact what they format (:mod:`exporter.redact`):
the code never logs the key, and this makes sure a library or an echoing server does not
either.

:func:`console` is for the lines a command says to its user on stderr (``error: ...``,
``interrupted ...``): as they are in text format, one JSON object each in JSON format, so
that in that mode every line on stderr is JSON.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TextIO

from exporter.redact import redact

__all__ = ["FIELDS", "console", "logging_for_run", "new_run_id", "setup_logging"]

FIELDS = ("event", "series", "attempt", "wait_s", "status")
_CONSOLE = logging.getLogger("exporter.console")


def new_run_id(now: float | None = None) -> str:
    """Sortable by start time to the millisecond (a rerun started in the same second as the
    run before it sorts after it: manifests are read in this order, later runs winning), and
    unique across shards started at the same moment: ``20231114T221320.250Z-1a2b3c``."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"{stamp:%Y%m%dT%H%M%S}.{stamp.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


class _Context(logging.Filter):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        return True


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(levelname)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, "console", False):
            return redact(record.getMessage())
        return redact(super().format(record))


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
            if isinstance(value, Mapping):
                doc.update(value)  # a series' kind, dimensions and unit, one key each
            elif value is not None:
                doc[name] = value
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return redact(json.dumps(doc, ensure_ascii=False))


def setup_logging(
    level: str,
    fmt: str,
    *,
    run_id: str,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Route every log record to ``stream`` (stderr) in the chosen format; returns the handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_Context(run_id))
    if logging.getLevelName(level) != logging.DEBUG:
        handler.addFilter(_OwnChatterOnly())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access and server logs would repeat what our own errors already say.
    logging.getLogger("aiohttp").setLevel(logging.ERROR)
    return handler


def console(line: str, *, event: str = "error", level: int = logging.ERROR) -> None:
    """Say ``line`` to the user on stderr, whatever --log-level is: as it is in text format,
    as a JSON record with ``event`` in JSON format."""
    record = _CONSOLE.makeRecord(
        _CONSOLE.name, level, "", 0, line, (), None, extra={"event": event, "console": True}
    )
    if logging.getLogger().handlers:
        _CONSOLE.handle(record)  # not filtered by level: these lines are the command's answer
    else:  # logging not set up (yet): as it is
        print(redact(line), file=sys.stderr)


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
