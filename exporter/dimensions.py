"""Dimension tables: the lists a run read, written whole, for analysts to join series on names.

A run that reads a list (for discovery, or because the config's ``dimensions:`` asks) writes
it as one table per list, ``{dir}/dimensions/{table}.{fmt}`` (:func:`table_path`), in the
output's format and place (local directory or object storage)::

    table      list endpoint             documented fields (Braze's "Export ... list" pages)
    segments   /segments/list            id, name, analytics_tracking_enabled, tags
    events     /events/list              name (the list holds plain names)
    products   /purchases/product_list   name (the list holds plain names)
    campaigns  /campaigns/list           id, last_edited, name, is_api_campaign, tags
    canvases   /canvas/list              id, last_edited, name, tags

Every field Braze gives becomes a column (:func:`build_table`): the documented ones first,
always present and always of one type (null where an item lacks one, or holds a value of
another type: counted and logged), then any field Braze adds, in the order first seen, a
nested object flattened to ``parent.child`` columns. ``tags`` is a list of strings. Last,
``listed_at``: the UTC moment the list was read to its end, the same on every row.

A table holds each listed item once (discovery drops an id listed again while the list
moved), in Braze's order, well-formed items only (an id of 1..256 characters that does not
hold the API key). It is replaced whole, through the one atomic write of a local file
(:func:`exporter.writers.atomic_write`) or one PUT of the whole object, both of which redact
the API key; a list that cannot be read to its end writes nothing, so the last good table
stays.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import logging
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from exporter.config import Config, TableName
from exporter.discover import DiscoverSpec
from exporter.errors import WriteError
from exporter.plan import discovery_needs
from exporter.redact import redact_bytes
from exporter.series import ListSource
from exporter.storage import WORK_DIR
from exporter.text import writable_doc
from exporter.writers import Store, atomic_write

__all__ = [
    "DIMENSIONS_DIR",
    "TABLES",
    "Column",
    "Table",
    "TableWriter",
    "TableWritten",
    "build_table",
    "encode_table",
    "listed_tables",
    "table_of",
    "table_path",
]

log = logging.getLogger(__name__)

DIMENSIONS_DIR = "dimensions"
TABLE_SCHEMA_VERSION = 1
_SCHEMA_VERSION_KEY = "braze_export.dimension_schema_version"

ColumnType = Literal["string", "bool", "int", "float", "list", "json"]

# Table name -> the list's dimension (the key of its ListSource) and its documented fields.
TABLES: dict[str, tuple[str, tuple[tuple[str, ColumnType], ...]]] = {
    "segments": (
        "segment_id",
        (("id", "string"), ("name", "string"), ("analytics_tracking_enabled", "bool"),
         ("tags", "list")),
    ),
    "events": ("event", (("name", "string"),)),
    "products": ("product", (("name", "string"),)),
    "campaigns": (
        "campaign_id",
        (("id", "string"), ("last_edited", "string"), ("name", "string"),
         ("is_api_campaign", "bool"), ("tags", "list")),
    ),
    "canvases": (
        "canvas_id",
        (("id", "string"), ("last_edited", "string"), ("name", "string"), ("tags", "list")),
    ),
}  # fmt: skip
assert set(typing.get_args(TableName)) == set(TABLES), "config.TableName != TABLES"
_BY_DIMENSION = {dimension: name for name, (dimension, _) in TABLES.items()}


def table_of(dimension: str) -> str:
    """The table of a list's dimension (``segment_id`` -> ``segments``); KeyError if none."""
    return _BY_DIMENSION[dimension]


def listed_tables(config: Config) -> dict[str, tuple[ListSource, bool]]:
    """The tables a run of ``config`` writes, in :data:`TABLES` order: each one's list and
    whether discovery reads that list anyway (else ``dimensions:`` alone asks for it)."""
    # A read with edited_since (Braze's last_edit.time[gt]) lists a part: it writes no table.
    discovered = {param for param, key in discovery_needs(config) if key[4] is None}
    out = {}
    for name, (dimension, _) in TABLES.items():
        if dimension in discovered or name in config.dimensions:
            out[name] = (DiscoverSpec(dimension).source, dimension in discovered)
    return out


def table_path(name: str, fmt: str) -> str:
    """Where a table lives, relative to the output: ``dimensions/{name}.{fmt}``."""
    return f"{DIMENSIONS_DIR}/{name}.{fmt}"


@dataclass(frozen=True, slots=True)
class Column:
    """A column: its name (a field, ``parent.child`` for a nested one) and type. ``json``
    holds each value as JSON text (a field whose values mix types, or lists of non-strings)."""

    name: str
    type: ColumnType


@dataclass(frozen=True)
class Table:
    """A list as rows: ``rows[i][j]`` is column ``j`` of item ``i`` (None: null);
    ``listed_at`` the same moment for every row (UTC, whole seconds)."""

    name: str
    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]
    listed_at: datetime
    misfits: int = 0  # documented fields whose value was of another type: written as null


def build_table(name: str, entries: Sequence[Any], listed_at: datetime) -> Table:
    """The table of list ``name`` (a key of :data:`TABLES`) from its raw entries (objects, or
    plain names for events and products), read at ``listed_at`` (made UTC, whole seconds)."""
    documented = dict(TABLES[name][1])
    cleaned, replaced = writable_doc(list(entries))
    if replaced:
        log.warning(
            "%s: %d lone surrogate(s) (invalid Unicode) in names or fields; written as U+FFFD",
            name,
            replaced,
            extra={"event": "invalid_unicode"},
        )
    flat = [_flatten(entry) for entry in cleaned]
    names = list(documented)
    seen = set(names)
    for fields in flat:
        for field in fields:
            if field not in seen and field != "listed_at":  # our column wins a clash
                seen.add(field)
                names.append(field)
    columns = tuple(Column(n, documented.get(n) or _infer([f.get(n) for f in flat])) for n in names)
    misfits = 0
    rows = []
    for fields in flat:
        row = []
        for column in columns:
            value = _fit(column.type, fields.get(column.name))
            if value is _MISFIT:
                misfits += 1
                value = None
            row.append(value)
        rows.append(tuple(row))
    if misfits:
        log.warning(
            "%s: %d documented field(s) held a value of another type; written as null",
            name,
            misfits,
            extra={"event": "dimension_misfit"},
        )
    moment = listed_at.astimezone(UTC).replace(microsecond=0)
    return Table(name, columns, tuple(rows), moment, misfits)


def _flatten(entry: Any) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        return {"name": entry}
    out: dict[str, Any] = {}

    def walk(prefix: str, obj: Mapping[str, Any]) -> None:
        for key, value in obj.items():  # a nested object's fields where the object was
            if isinstance(value, Mapping) and value:
                walk(f"{prefix}{key}.", value)
            else:
                out[f"{prefix}{key}"] = value

    walk("", entry)
    return out


def _is_int(value: Any) -> bool:
    return type(value) is int and -(2**63) <= value < 2**63


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _infer(values: list[Any]) -> ColumnType:
    """The narrowest type every non-null value fits: bool, int (int64), float, string, a
    list of strings; else JSON text."""
    present = [v for v in values if v is not None]
    if all(type(v) is bool for v in present):
        return "bool" if present else "string"
    if all(_is_int(v) for v in present):
        return "int"
    if all(_is_int(v) or type(v) is float for v in present):
        return "float"
    if all(isinstance(v, str) for v in present):
        return "string"
    if all(_is_strings(v) for v in present):
        return "list"
    return "json"


_MISFIT = object()


def _fit(kind: ColumnType, value: Any) -> Any:
    """``value`` as column type ``kind`` (None stays None); _MISFIT when it is not one."""
    if value is None:
        return None
    if kind == "json":
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if kind == "float" and _is_int(value):
        return float(value)
    if kind == "list":
        # Tags: a list of strings; an element of another type is kept as its JSON text (3 ->
        # "3"), never dropped (the discovery filters match the strings only).
        if not isinstance(value, list):
            return _MISFIT
        return [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in value]
    fits = {
        "string": isinstance(value, str),
        "bool": type(value) is bool,
        "int": _is_int(value),
        "float": type(value) is float,
    }[kind]
    return value if fits else _MISFIT


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def encode_table(fmt: str, table: Table) -> bytes:
    """The table as the bytes of one file of ``fmt`` (jsonl, csv or parquet).

    - jsonl: one object per row, keys in column order; ``tags`` a JSON array, ``listed_at``
      ISO 8601 with ``Z`` (``2026-12-03T11:22:47Z``).
    - csv: a header, then one line per row; null is empty, booleans ``true``/``false``, a
      list as its JSON array text (``["paid","test"]``).
    - parquet: typed columns (string, bool, int64, float64, list<string>; JSON text as
      string), ``listed_at`` a timestamp (microseconds, UTC); the schema version in the key-
      value metadata under ``braze_export.dimension_schema_version``."""
    if fmt == "jsonl":
        names = [c.name for c in table.columns] + ["listed_at"]
        stamp = _iso(table.listed_at)
        lines = (
            json.dumps(dict(zip(names, (*row, stamp), strict=True)), ensure_ascii=False) + "\n"
            for row in table.rows
        )
        return "".join(lines).encode()
    if fmt == "csv":
        return _encode_csv(table)
    return _encode_parquet(table)


def _csv_field(value: Any) -> str:
    if value is None:
        return ""
    if type(value) is bool:
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _encode_csv(table: Table) -> bytes:
    buf = io.StringIO(newline="")
    out = csv.writer(buf, lineterminator="\n")
    # The csv module quotes a field holding "\n" but not one holding a lone "\r", which a
    # reader takes for a line end: such rows are written fully quoted.
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    out.writerow([c.name for c in table.columns] + ["listed_at"])
    stamp = _iso(table.listed_at)
    for row in table.rows:
        fields = [*map(_csv_field, row), stamp]
        (quoted if any("\r" in f for f in fields) else out).writerow(fields)
    return buf.getvalue().encode()


def _encode_parquet(table: Table) -> bytes:
    import pyarrow as pa  # a run with Parquet output has checked it imports
    import pyarrow.parquet as pq

    types = {
        "string": pa.string(),
        "json": pa.string(),
        "bool": pa.bool_(),
        "int": pa.int64(),
        "float": pa.float64(),
        "list": pa.list_(pa.string()),
    }
    stamp_type = pa.timestamp("us", tz="UTC")
    schema = pa.schema(
        [pa.field(c.name, types[c.type]) for c in table.columns]
        + [pa.field("listed_at", stamp_type, nullable=False)],
        metadata={_SCHEMA_VERSION_KEY: str(TABLE_SCHEMA_VERSION)},
    )
    arrays = [
        pa.array([row[i] for row in table.rows], types[c.type]) for i, c in enumerate(table.columns)
    ]
    arrays.append(pa.array([table.listed_at] * len(table.rows), stamp_type))
    sink = pa.BufferOutputStream()
    pq.write_table(
        pa.Table.from_arrays(arrays, schema=schema),
        sink,
        version="2.6",
        compression="zstd",
        compression_level=3,
        store_schema=True,
    )
    data: bytes = sink.getvalue().to_pybytes()
    return data


@dataclass(frozen=True)
class TableWritten:
    """A table in place: its path relative to the output, rows and the sha256 of its bytes."""

    name: str
    path: str
    rows: int
    sha256: str
    listed_at: str


class TableWriter:
    """Replaces dimension tables whole in a run's output: under ``root`` through the atomic
    write (temp file named after ``token``), or, with a ``store``, one PUT per table."""

    def __init__(self, root: Path, fmt: str, *, token: str, store: Store | None = None) -> None:
        self.root = root
        self.fmt = fmt
        self.token = token
        self.store = store

    async def replace(self, name: str, entries: Sequence[Any], listed_at: datetime) -> TableWritten:
        """Write list ``name``'s ``entries`` as its table; WriteError (naming the path) when
        it cannot be written, the previous table left as it was."""
        relative = table_path(name, self.fmt)
        table = build_table(name, entries, listed_at)
        # Parquet's encode (and pyarrow's first import) stays off the event loop.
        data = redact_bytes(await asyncio.to_thread(encode_table, self.fmt, table))
        try:
            if self.store is not None:
                await self.store.put(relative, data)
            else:
                tmp = self.root / WORK_DIR / "tmp"
                path = self.root / relative
                await asyncio.to_thread(atomic_write, path, data, tmp, token=self.token)
        except OSError as exc:  # a StorageError names the object and the cause itself
            if self.store is not None:
                raise WriteError(str(exc)) from None
            raise WriteError(f"cannot write {path}: {exc.strerror or exc}") from None
        if not table.rows:  # Braze's truth, or a glitch that emptied a listing: say so
            log.warning(
                "%s: the list was read to its end and held no item: %s now holds no row",
                name,
                relative,
                extra={"event": "dimension_empty"},
            )
        sha256 = hashlib.sha256(data).hexdigest()
        return TableWritten(name, relative, len(table.rows), sha256, _iso(table.listed_at))
