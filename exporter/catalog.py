"""The series catalogue behind ``braze-export series``: every series, generated from
:data:`exporter.series.KINDS` (exported) and :data:`exporter.messaging.MESSAGING` (served by
the sandbox, not exported yet), so the listing cannot drift from the code that fetches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from exporter.messaging import MESSAGING
from exporter.series import DIMENSIONS, KINDS

__all__ = ["CatalogEntry", "catalog", "catalog_table"]


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One series as a user picks it.

    - ``series``: the config's ``series:`` value (for messaging series, their name in
      :data:`~exporter.messaging.MESSAGING`).
    - ``dimensions``: ``{param, config_key, required}`` each, in column order; messaging
      series take their ids, all required, and have no config key yet (None).
    - ``units``: ``day`` and/or ``hour``; ``value_columns``: the columns holding values
      (messaging rows are long: ``metric`` names the value in ``value``).
    - ``exported``: False for what only the sandbox serves; ``notes``: what to know before
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
    """Every series: the exported family first (in :data:`KINDS` order), then the messaging
    series the sandbox serves."""
    exported = tuple(
        CatalogEntry(
            series=kind.name,
            endpoint=kind.path,
            dimensions=tuple(
                {
                    "param": param,
                    "config_key": DIMENSIONS[param].config_key,
                    "required": param in kind.required,
                }
                for param in kind.dimensions
            ),
            units=kind.units,
            value_columns=(kind.value_key,),
            pool=kind.pool,
            permission=kind.permission,
            exported=True,
            notes=(
                *(["fractional (float64)"] if kind.fractional else []),
                *([] if kind.additive else ["a level: never sum across periods"]),
            ),
        )
        for kind in KINDS.values()
    )
    messaging = tuple(
        CatalogEntry(
            series=series.name,
            endpoint=series.path,
            dimensions=tuple(
                {"param": param, "config_key": None, "required": True} for param in series.ids
            ),
            units=("day",),
            value_columns=("metric", "value"),
            pool=series.pool,
            permission=series.permission,
            exported=False,
            notes=(
                "sandbox only: not exported yet",
                f"length at most {series.max_length}",
                *(
                    []
                    if series.retention_days is None
                    else [f"Braze keeps {series.retention_days} days"]
                ),
            ),
        )
        for series in MESSAGING.values()
    )
    return exported + messaging


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
