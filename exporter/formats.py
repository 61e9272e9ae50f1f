"""Rows <-> the bytes of one partition file, for each output format (jsonl, csv, parquet).

A partition's rows are ``(period, time, value)``, sorted by period; the ids and the unit
come from the series. The columns are the series kind's (:attr:`SeriesKind.columns`):
``time``, the value under Braze's own key (``sessions``, ``count``, ``revenue``...), each
dimension under Braze's parameter name (null when the series does not give it), ``unit``.
``encode`` is deterministic: the same rows give the same bytes (for Parquet: with the same
pyarrow version, which names itself in the file's ``created_by``).
``decode`` reads back what ``encode`` wrote, for the merge; anything else raises ValueError.

Parquet schema, version 1 (``PARQUET_SCHEMA_VERSION``; also in each file's key-value metadata
under ``braze_export.schema_version``), shown for sessions::

    time        string     required  exactly Braze's label
    sessions    int64      required  (the kind's value key; float64 for revenue)
    segment_id  string     required  (each of the kind's dimensions: required when the kind
    app_id      string     optional   requires it, else optional; null: not given, such as
                                      the whole workspace for app_id)
    unit        string     required  'day' | 'hour'
    day         date       optional  unit 'day': the day (in the config's time zone); else null
    hour        timestamp  optional  unit 'hour': the hour's start, UTC (microseconds,
                                     isAdjustedToUTC); else null

The message series (campaigns, canvas, sends: :attr:`SeriesKind.long`) are LONG: a
partition's row for a period holds all of that day's values, ``(breakdowns..., metric,
value)`` each (:data:`LongRow`), and a file has one line per value::

    time            string   required  Braze's day label
    campaign_id     string   required  (the kind's ids, under Braze's parameter names)
    channel ...     string   optional  (the kind's breakdowns; null where a row is a total;
    message_index   int64    optional   message_index is the entry's place in its channel)
    metric          string   required  Braze's key exactly (nested: ``a.b``)
    value           double   required

A new metric from Braze is a new ``metric`` value, never a new column. The merge unit is the
day: a day read again replaces all of its rows, whatever metrics it had before.

Later versions may only add optional columns at the end: no column is ever renamed, retyped,
removed or given another meaning. A file whose version is newer than this code's is never
merged into (rewriting it would drop the columns it does not know).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
from collections.abc import Sequence
from datetime import UTC, date, tzinfo
from typing import Any

from exporter.errors import ConfigError, ExporterError
from exporter.plan import Series, period_of
from exporter.series import SeriesKind

__all__ = [
    "FORMATS",
    "PARQUET_SCHEMA_VERSION",
    "SCHEMA_VERSION_KEY",
    "DayRows",
    "LongRow",
    "Row",
    "decode",
    "encode",
    "load_pyarrow",
    "parquet_schema",
]

FORMATS = ("jsonl", "csv", "parquet")
PARQUET_SCHEMA_VERSION = 1
SCHEMA_VERSION_KEY = "braze_export.schema_version"

# One value of a long series: its breakdown values (the kind's order), metric, value.
LongRow = tuple[str | int | float | None, ...]
DayRows = tuple[LongRow, ...]  # all values of one day of a long series
# float only for kinds whose values may be fractional (revenue); DayRows for long kinds
Value = int | float | DayRows
Row = tuple[int, str, Value]  # (period, Braze's time label, value)

_UNIX_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_US_PER_HOUR = 3_600_000_000


def encode(fmt: str, series: Series, rows: Sequence[Row]) -> bytes:
    if series.info.long:
        return _encode_long(fmt, series, rows)
    if fmt == "jsonl":
        return _encode_jsonl(series, rows)
    if fmt == "csv":
        return _encode_csv(series, rows)
    return _encode_parquet(series, rows)


def decode(fmt: str, series: Series, data: bytes, tz: tzinfo = UTC) -> dict[int, tuple[str, Value]]:
    """{period: (time, value)}; ValueError (or KeyError, TypeError) if ``data`` is not a
    file of ``fmt`` this tool wrote for a series of this kind."""
    if series.info.long:
        return _decode_long(fmt, series, data, tz)
    key = series.info.value_key
    pairs: list[tuple[Any, Any]]
    if fmt == "parquet":
        pairs = _decode_parquet(data, key)
    else:
        text = data.decode("utf-8")
        if fmt == "jsonl":
            # split("\n"), not splitlines(): U+2028, U+0085 and the like may sit inside an id.
            docs = (json.loads(line) for line in text.split("\n") if line)
            pairs = [(doc["time"], doc[key]) for doc in docs]
        else:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            pairs = [(rec["time"], rec[key]) for rec in reader]
    number = float if series.info.fractional else int
    return {period_of(series.unit, str(t), tz): (str(t), number(n)) for t, n in pairs}


def _encode_jsonl(series: Series, rows: Sequence[Row]) -> bytes:
    """Each row as ``json.dumps`` of its object (``ensure_ascii=False``) would write it,
    byte for byte; the keys and the columns every row shares are encoded once per file."""
    columns = series.info.columns
    ids = (*(value for _, value in series.dimensions()), series.unit)
    time_key, value_key = (_json_string(c) for c in columns[:2])
    shared = "".join(
        f", {_json_string(c)}: {'null' if v is None else _json_string(v)}"
        for c, v in zip(columns[2:], ids, strict=True)
    )
    return "".join(
        [
            f"{{{time_key}: {_json_string(t)}, {value_key}: {_json_number(n)}{shared}}}\n"
            for _, t, n in rows
        ]
    ).encode()


_json_string = json.encoder.encode_basestring  # json.dumps(s, ensure_ascii=False), in C


def _json_number(value: Value) -> str:
    """json.dumps(value): the repr of an int or of a finite float (NaN and infinities,
    which no partition holds, as json.dumps spells them)."""
    if type(value) is int or (type(value) is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value)


def _encode_csv(series: Series, rows: Sequence[Row]) -> bytes:
    buf = io.StringIO(newline="")
    out = csv.writer(buf, lineterminator="\n")
    # The csv module quotes a field holding "\n" but not one holding a lone "\r", which a
    # reader then takes for a line end: rows with one are written fully quoted.
    quoted = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
    out.writerow(series.info.columns)
    ids = (*("" if v is None else v for _, v in series.dimensions()), series.unit)
    tricky = any("\r" in field for field in ids)
    for _, t, n in rows:
        row = (t, n, *ids)
        (quoted if tricky or "\r" in t else out).writerow(row)
    return buf.getvalue().encode()


_arrow: tuple[Any, Any] | None = None
_schemas: dict[str, Any] = {}


def _pyarrow() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, imported on first use: jsonl and csv runs never pay for
    the import."""
    global _arrow
    if _arrow is None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except Exception as exc:  # not installed, or it fails to load (memory, a bad build)
            raise ConfigError(_unimportable(exc)) from None
        _arrow = (pa, pq)
    return _arrow


def load_pyarrow() -> None:
    """Import pyarrow now (a run checks it before its first request). ConfigError, with the
    import's own error, if it is not installed or cannot be imported."""
    _pyarrow()


def _unimportable(exc: Exception) -> str:
    try:
        installed = importlib.util.find_spec("pyarrow") is not None
    except (ImportError, ValueError):
        installed = True
    if not installed:
        return "output.format parquet needs pyarrow: pip install 'braze-export[parquet]'"
    return (
        f"output.format parquet needs pyarrow, which is installed but cannot be imported "
        f"({type(exc).__name__}: {exc}); reinstall it (pip install --force-reinstall pyarrow), "
        "or give the run more memory"
    )


def parquet_schema(kind: SeriesKind) -> Any:
    """The pyarrow schema of a kind's Parquet files (see the module docstring)."""
    schema = _schemas.get(kind.name)
    if schema is None and kind.long:
        pa, _ = _pyarrow()
        schema = pa.schema(
            [
                pa.field("time", pa.string(), nullable=False),
                *(pa.field(p, pa.string(), nullable=False) for p in kind.dimensions),
                *(
                    pa.field(b, pa.int64() if b == "message_index" else pa.string())
                    for b in kind.breakdowns
                ),
                pa.field("metric", pa.string(), nullable=False),
                pa.field("value", pa.float64(), nullable=False),
            ],
            metadata={SCHEMA_VERSION_KEY: str(PARQUET_SCHEMA_VERSION)},
        )
        _schemas[kind.name] = schema
    elif schema is None:
        pa, _ = _pyarrow()
        schema = pa.schema(
            [
                pa.field("time", pa.string(), nullable=False),
                pa.field(kind.value_key, pa.float64() if kind.fractional else pa.int64(), False),
                *(
                    pa.field(p, pa.string(), nullable=p not in kind.required)
                    for p in kind.dimensions
                ),
                pa.field("unit", pa.string(), nullable=False),
                pa.field("day", pa.date32()),
                pa.field("hour", pa.timestamp("us", tz="UTC")),
            ],
            metadata={SCHEMA_VERSION_KEY: str(PARQUET_SCHEMA_VERSION)},
        )
        _schemas[kind.name] = schema
    return schema


def _encode_parquet(series: Series, rows: Sequence[Row]) -> bytes:
    pa, _ = _pyarrow()
    kind = series.info
    schema = parquet_schema(kind)
    n = len(rows)
    periods = [p for p, _, _ in rows]
    if series.unit == "day":
        day = pa.array([p - _UNIX_EPOCH_ORDINAL for p in periods], pa.date32())
        hour = pa.nulls(n, schema.field("hour").type)
    else:
        day = pa.nulls(n, pa.date32())
        hour = pa.array([p * _US_PER_HOUR for p in periods], schema.field("hour").type)
    table = pa.Table.from_arrays(
        [
            pa.array([t for _, t, _ in rows], pa.string()),
            pa.array([v for _, _, v in rows], schema.field(1).type),
            *(pa.array([value] * n, pa.string()) for _, value in series.dimensions()),
            pa.array([series.unit] * n, pa.string()),
            day,
            hour,
        ],
        schema=schema,
    )
    return _parquet_bytes(table)


def _parquet_bytes(table: Any) -> bytes:
    pa, pq = _pyarrow()
    sink = pa.BufferOutputStream()
    # Every setting that shapes the bytes is spelled out, so a pyarrow default changing does
    # not change them. A partition holds at most 31 rows (long ones a few thousand): one row
    # group, one page per column; dictionaries cost more than they save at that size (and
    # ~1/3 of the encode time).
    pq.write_table(
        table,
        sink,
        row_group_size=1 << 20,
        version="2.6",
        data_page_version="1.0",
        compression="zstd",
        compression_level=3,
        use_dictionary=False,
        write_statistics=True,
        write_page_index=False,
        write_page_checksum=False,
        store_schema=True,  # also what carries the schema_version key
    )
    data: bytes = sink.getvalue().to_pybytes()
    return data


_MEMORY_WORDS = ("bad_alloc", "out of memory", "cannot allocate", "malloc", "memory limit")


def _short_of_memory(message: str) -> bool:
    """pyarrow reports some allocation failures as other errors (thrift's std::bad_alloc
    comes back as ArrowInvalid): their text says so."""
    lowered = message.lower()
    return any(word in lowered for word in _MEMORY_WORDS)


def _decode_parquet(data: bytes, key: str) -> list[tuple[Any, Any]]:
    table = _read_parquet(data, ["time", key])
    # column() by name: KeyError when the file lacks it (read() just leaves it out).
    times, values = table.column("time").to_pylist(), table.column(key).to_pylist()
    return list(zip(times, values, strict=True))


def _read_parquet(data: bytes, columns: list[str]) -> Any:
    """The table of ``columns`` of a Parquet file this tool wrote (ValueError if not one;
    ExporterError if a newer version wrote it; MemoryError when memory runs out)."""
    pa, pq = _pyarrow()
    try:
        reader = pq.ParquetFile(pa.BufferReader(data))
        meta = reader.schema_arrow.metadata or {}
        version = int(meta.get(SCHEMA_VERSION_KEY.encode(), b"0"))
        if version > PARQUET_SCHEMA_VERSION:
            raise ExporterError(
                f"written with Parquet schema version {version}, newer than this version's "
                f"{PARQUET_SCHEMA_VERSION}: upgrade braze-export to merge into it"
            )
        table = reader.read(columns=columns)
    except MemoryError:  # pyarrow's ArrowMemoryError too: the file may be fine
        raise
    except pa.ArrowException as exc:
        if _short_of_memory(str(exc)):  # e.g. ArrowInvalid "... std::bad_alloc"
            raise MemoryError(str(exc)) from None
        raise ValueError(str(exc)) from None
    return table


# --- long files (the message series) ------------------------------------------------------


def long_lines(series: Series, rows: Sequence[Row]) -> list[tuple[Any, ...]]:
    """One tuple per value in column order: (time, ids..., breakdowns..., metric, value)."""
    ids = tuple(value for _, value in series.dimensions())
    out: list[tuple[Any, ...]] = []
    for _, time, day in rows:
        assert isinstance(day, tuple), "a long series' period holds its rows"
        out += [(time, *ids, *row) for row in day]
    return out


def _encode_long(fmt: str, series: Series, rows: Sequence[Row]) -> bytes:
    kind = series.info
    lines = long_lines(series, rows)
    columns = kind.columns
    if fmt == "jsonl":
        return "".join(
            json.dumps(dict(zip(columns, line, strict=True)), ensure_ascii=False) + "\n"
            for line in lines
        ).encode()
    if fmt == "csv":
        buf = io.StringIO(newline="")
        # Every field quoted: an id or a metric with a lone "\r" stays one field.
        out = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_ALL)
        out.writerow(columns)
        out.writerows(tuple("" if v is None else v for v in line) for line in lines)
        return buf.getvalue().encode()
    pa, _ = _pyarrow()
    schema = parquet_schema(kind)
    table = pa.Table.from_arrays(
        [pa.array([line[i] for line in lines], schema.field(i).type) for i in range(len(columns))],
        schema=schema,
    )
    return _parquet_bytes(table)


def _decode_long(fmt: str, series: Series, data: bytes, tz: tzinfo) -> dict[int, tuple[str, Value]]:
    """{period: (time, DayRows)} of a long file this tool wrote for the series' kind."""
    kind = series.info
    columns = kind.columns
    width = len(kind.dimensions)
    records: list[tuple[Any, ...]]
    if fmt == "parquet":
        table = _read_parquet(data, list(columns))
        records = list(zip(*(table.column(c).to_pylist() for c in columns), strict=True))
    elif fmt == "jsonl":
        docs = (json.loads(line) for line in data.decode("utf-8").split("\n") if line)
        records = [tuple(doc[c] for c in columns) for doc in docs]
    else:
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        if tuple(next(reader)) != columns:
            raise ValueError("the header is not this series' columns")
        records = [_csv_record(kind.breakdowns, tuple(rec)) for rec in reader]
    days: dict[int, tuple[str, list[LongRow]]] = {}
    for record in records:
        time, values = str(record[0]), record[1 + width :]
        day = days.setdefault(period_of(series.unit, time, tz), (time, []))
        day[1].append((*values[:-1], float(values[-1])))
    return {p: (t, tuple(rows)) for p, (t, rows) in days.items()}


def _csv_record(breakdowns: Sequence[str], rec: tuple[str, ...]) -> tuple[Any, ...]:
    """A csv line's fields typed back: empty breakdowns are null, message_index an int."""
    width = len(rec) - len(breakdowns) - 2
    typed: list[Any] = list(rec[:width])
    for name, text in zip(breakdowns, rec[width:-2], strict=True):
        typed.append(None if text == "" else int(text) if name == "message_index" else text)
    return (*typed, rec[-2], rec[-1])
