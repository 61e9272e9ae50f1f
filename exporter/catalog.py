"""The series catalogue behind ``braze-export series``: every series, generated from
:data:`exporter.series.KINDS`, so the listing cannot drift from the code that fetches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from exporter.series import KINDS

__all__ = ["CatalogEntry", "catalog", "catalog_table"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One series as a user picks it.

    - ``series``: the config's ``series:`` value.
    - ``dimensions``: ``{param, config_key, required}`` each, in column order.
    - ``units``: ``day`` and/or ``hour``; ``value_columns``: the columns holding values
      (messaging rows are long: ``metric`` names the value in ``value``).
    - ``exported``: always True now; ``notes``: what to know before
      summing or reading (fractional values, levels that must not be summed, limits)."""

    series: str
    endpoint: str
    dimensions: tuple[dict[str, str | bool | None], ...]
    units: tuple[str, ...]
    value_columns: tuple[str, ...]
    pool: str
    permission: str
    exported: bool
    notes: tuple[str, ...]

    def as_json(self) -> dict[str, object]:
        doc = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}


def catalog() -> tuple[CatalogEntry, ...]:
    """Every series, in :data:`KINDS` order."""
    return tuple(
        CatalogEntry(
            series=kind.name,
            endpoint=kind.path,
            dimensions=tuple(
                {
                    "param": param,
                    "config_key": kind.config_key(param),
                    "required": param in kind.required,
                }
                for param in kind.dimensions
            ),
            units=kind.units,
            value_columns=("metric", "value") if kind.long else (kind.value_key,),
            pool=kind.pool,
            permission=kind.permission,
            exported=True,
            notes=(
                *(["long: one row per day, id, breakdown and metric"] if kind.long else []),
                *(["fractional (float64)"] if kind.fractional and not kind.long else []),
                *([] if kind.additive else ["a level: never sum across periods"]),
                *([f"length at most {kind.max_length}"] if kind.max_length != 100 else []),
                *(
                    []
                    if kind.retention_days is None
                    else [f"Braze keeps it {kind.retention_days} days after the send"]
                ),
            ),
        )
        for kind in KINDS.values()
    )


_HEADERS = ("series", "endpoint", "dimensions (config key)", "units", "value", "pool", "permission")


def catalog_table(entries: Sequence[CatalogEntry]) -> str:
    """A plain-text table, one line per series; required dimensions end in ``*``, notes
    follow the table, one line per series that has any."""
    rows = [
        (
            e.series,
            e.endpoint,
            ", ".join(
                f"{d['param']}{'*' if d['required'] else ''}"
                + (f" ({d['config_key']})" if d["config_key"] else "")
                for d in e.dimensions
            )
            or "-",
            ",".join(e.units),
            ",".join(e.value_columns),
            e.pool,
            e.permission,
        )
        for e in entries
    ]
    widths = [max(len(r[i]) for r in (_HEADERS, *rows)) for i in range(len(_HEADERS))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in (_HEADERS, *rows)
    ]
    lines.append("* required (an export must list ids for it)")
    lines += [f"{e.series}: {'; '.join(e.notes)}" for e in entries if e.notes]
    return "\n".join(lines)
