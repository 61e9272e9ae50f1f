"""The API key never leaves the process: one registry of secrets, one ``redact`` every sink uses.

A server that echoes the key (a proxy, a WAF, a misconfigured gateway) puts it into error
bodies, and so into error messages. Rather than trust every message to be clean, the key is
registered once, when it is loaded, and the sinks replace it with ``***``:

* ``sys.stdout`` and ``sys.stderr`` are wrapped for the length of a command
  (:func:`redacted_streams`): every line printed, every log record, the progress line;
* the log formatters redact what they format (:mod:`exporter.logs`), whatever the stream;
* the storage primitives redact the bytes of every file they write (partition files, manifest,
  journal, lock records, object storage puts) and the state's text columns.

Besides the key as it is, these forms are redacted, the ways a server or a library may repeat
it: percent-encoded (``quote``, ``quote_plus``) once or twice (a URL inside a URL), escapes in
either case; backslash-escaped (JSON, JSON inside a JSON string, Python's repr, backslashes
doubled); base64 (standard and URL-safe). ``Bearer <key>`` holds the key as it is. Not
covered: the key split across lines or chunks, reversed, hex-encoded, in another case (except
within the percent-encoded forms), or a fragment of it (a prefix): a fragment authenticates
nothing, and masking fragments would garble unrelated text (any cut-off is arbitrary).
:func:`holds_secret`, which decides whether a listed id may be used, is broader: every form,
in any case.

Keys shorter than :data:`MIN_KEY_CHARS` are refused where the key is loaded
(:func:`exporter.config.resolve_api_key`): replacing a 1-character "key" everywhere would
garble every line. Braze's REST keys are 36-character UUIDs.

Cost: a few substring searches per text written (one per distinct form, and one per
percent-encoded form over its lowercase copy when the key has characters percent-encoding
changes); a regex runs only on a text that holds the key. Forms that coincide count once: a
Braze key (a UUID: hex digits and hyphens) has three (as is, and two base64). Never per row.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO, cast
from urllib.parse import quote, quote_plus

from exporter.errors import StreamUnwritable

__all__ = [
    "MASK",
    "MIN_KEY_CHARS",
    "forget_secrets",
    "holds_secret",
    "redact",
    "redact_bytes",
    "redacted_records",
    "redacted_streams",
    "register_secret",
]

MIN_KEY_CHARS = 16
MASK = "***"


@dataclass(frozen=True)
class _Registry:
    texts: tuple[str, ...] = ()  # exact forms, longest first
    data: tuple[bytes, ...] = ()
    folded: tuple[str, ...] = ()  # percent-encoded forms, lowercased: %2F and %2f alike
    folded_data: tuple[bytes, ...] = ()
    pattern: re.Pattern[str] | None = None  # the folded forms, matched ignoring case
    data_pattern: re.Pattern[bytes] | None = None
    lowered: tuple[str, ...] = ()  # every form, lowercased (holds_secret)


_registry = _Registry()


def _forms(secret: str) -> tuple[set[str], set[str]]:
    """The ways ``secret`` may be written back: (exact forms: as is, backslash-escaped,
    base64; percent-encoded forms, once or twice, whose escapes may come in either case)."""
    raw = secret.encode()
    escaped = json.dumps(secret)[1:-1]
    exact = {
        secret,
        escaped,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        json.dumps(escaped)[1:-1],  # an error body's JSON quoted in a JSON string
        repr(secret)[1:-1],  # an exception's args, a dict printed
        secret.replace("\\", "\\\\"),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    once = {quote(secret, safe=""), quote_plus(secret, safe="")}
    encoded = (once | {quote(form, safe="") for form in once}) - exact
    return exact, encoded


def register_secret(secret: str) -> None:
    """Redact ``secret`` (and its encoded forms) from every sink from now on. ``secret``
    must be at least MIN_KEY_CHARS long (ValueError): a short one would garble every text."""
    global _registry
    if len(secret) < MIN_KEY_CHARS:
        raise ValueError(f"a secret of fewer than {MIN_KEY_CHARS} characters cannot be redacted")
    exact, encoded = _forms(secret)
    texts = tuple(sorted({*_registry.texts, *exact}, key=len, reverse=True))
    folded = tuple(sorted({*_registry.folded, *(e.lower() for e in encoded)}, key=len)[::-1])
    either = "|".join(map(re.escape, folded))
    _registry = _Registry(
        texts,
        tuple(t.encode() for t in texts),
        folded,
        tuple(f.encode() for f in folded),
        re.compile(either, re.IGNORECASE) if folded else None,
        re.compile(either.encode(), re.IGNORECASE) if folded else None,
        tuple({*_registry.lowered, *(form.lower() for form in exact | encoded)}),
    )


def forget_secrets() -> None:
    """Empty the registry (a command is over; tests run several in one process)."""
    global _registry
    _registry = _Registry()


def holds_secret(text: str) -> bool:
    """Whether ``text`` holds a registered secret in any of its forms, in any case: broader
    than what :func:`redact` masks, for deciding whether a listed id may be used (an id
    holding the key upper-cased would be masked once percent-encoded into a path)."""
    found = _registry
    lowered = text.lower()
    return any(form in lowered for form in found.lowered)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    found = _registry
    for form in found.texts:
        if form in text:
            text = text.replace(form, MASK)
    if found.pattern is not None:
        lowered = text.lower()
        if any(form in lowered for form in found.folded):
            text = found.pattern.sub(MASK, text)
    return text


def redact_bytes(data: bytes) -> bytes:
    """:func:`redact` for UTF-8 bytes (a file's content)."""
    found = _registry
    for form in found.data:
        if form in data:
            data = data.replace(form, MASK.encode())
    if found.data_pattern is not None:
        lowered = data.lower()
        if any(form in lowered for form in found.folded_data):
            data = found.data_pattern.sub(MASK.encode(), data)
    return data


@contextmanager
def _unwritable() -> Iterator[None]:
    """A stream's write that fails is StreamUnwritable, told apart from any other OSError;
    a closed pipe stays BrokenPipeError (the reader went away)."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise StreamUnwritable(exc.errno, exc.strerror) from exc


class _RedactingStream(io.TextIOBase):
    """A text stream that redacts what is written, then hands it on (fileno, isatty, ...
    are the wrapped stream's)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream

    def write(self, text: str) -> int:
        with _unwritable():
            self._stream.write(redact(text))
        return len(text)

    def flush(self) -> None:
        with _unwritable():
            self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        """The wrapped stream stays open (and unflushed: a closed pipe is the CLI's to
        handle, not the garbage collector's)."""

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


class _RedactingFilter(logging.Filter):
    """Masks a record's message before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


@contextmanager
def redacted_records(name: str = "exporter") -> Iterator[None]:
    """Every record of the logger ``name`` and of the loggers under it is masked before any
    handler sees it, until the block ends: for a host's own logging (the Python API), whose
    handlers and formatters know nothing of the registry. A filter on a logger sees only the
    records logged on that logger, so it goes on each of them (all exist once the package is
    imported)."""
    loggers = [logging.getLogger(name)] + [
        logger
        for key, logger in logging.Logger.manager.loggerDict.items()
        if key.startswith(f"{name}.") and isinstance(logger, logging.Logger)
    ]
    masking = _RedactingFilter()
    for logger in loggers:
        logger.addFilter(masking)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(masking)


@contextmanager
def redacted_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr redact what is written to them, until the block ends; then
    the streams are put back and the registry is emptied."""
    saved = sys.stdout, sys.stderr
    sys.stdout = cast(TextIO, _RedactingStream(sys.stdout))
    sys.stderr = cast(TextIO, _RedactingStream(sys.stderr))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
        forget_secrets()
