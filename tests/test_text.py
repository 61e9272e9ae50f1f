"""Text from Braze made writable: lone surrogates become U+FFFD, counted."""

from __future__ import annotations

import json

from exporter.text import REPLACEMENT, writable, writable_doc


def test_valid_text_is_returned_as_it_is() -> None:
    """ASCII, accents and a surrogate pair JSON decoded into one emoji: untouched, 0."""
    for text in ("plain", "Café ✓", json.loads('"\\ud83d\\ude00"')):
        fixed, count = writable(text)
        assert (fixed, count) == (text, 0)
        assert fixed is text


def test_each_lone_surrogate_is_replaced_and_counted() -> None:
    """A high or low surrogate alone, anywhere in the text."""
    text = json.loads('"a\\ud800b\\udfffc\\udc00"')
    assert writable(text) == (f"a{REPLACEMENT}b{REPLACEMENT}c{REPLACEMENT}", 3)
    writable(text)[0].encode("utf-8")  # now a UTF-8 file can hold it


def test_a_document_is_cleaned_in_keys_values_and_lists() -> None:
    """Every string of a decoded JSON value, keys included; numbers and nulls as they are."""
    doc = json.loads('{"k\\ud800": ["v\\udc00", 1, null, {"n": "\\udfff"}], "ok": true}')
    fixed, count = writable_doc(doc)
    assert fixed == {
        f"k{REPLACEMENT}": [f"v{REPLACEMENT}", 1, None, {"n": REPLACEMENT}],
        "ok": True,
    }
    assert count == 3
