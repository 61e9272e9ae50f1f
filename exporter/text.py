"""Text from Braze made writable.

JSON may escape a lone UTF-16 surrogate (``"\\ud800"``); ``json.loads`` keeps it in a Python
string that no UTF-8 file, CSV or Parquet column can hold, so one such name would fail a
whole series or table at the write. Names and keys (a variation or step name, a channel, a
metric key, a list's field) are written with U+FFFD in its place, and the caller says how
many it replaced: never silently. Ids are not repaired: discovery skips an id that is no
valid text (:func:`exporter.discover._valid_id`), since a changed id would ask for another
series.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["REPLACEMENT", "writable", "writable_doc"]

REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def writable(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate replaced by U+FFFD, and how many were (0: the very
    same string). ASCII text, nearly all of it, costs one C-speed check."""
    if text.isascii():
        return text, 0
    return _SURROGATE.subn(REPLACEMENT, text)


def writable_doc(value: Any) -> tuple[Any, int]:
    """A decoded JSON value with :func:`writable` applied to every string in it, keys
    included, and how many surrogates were replaced in all."""
    if isinstance(value, str):
        return writable(value)
    if isinstance(value, list):
        items = [writable_doc(v) for v in value]
        return [v for v, _ in items], sum(n for _, n in items)
    if isinstance(value, dict):
        total, out = 0, {}
        for key, item in value.items():
            fixed_key, k = writable(key) if isinstance(key, str) else (key, 0)
            fixed, n = writable_doc(item)
            out[fixed_key] = fixed
            total += k + n
        return out, total
    return value, 0
