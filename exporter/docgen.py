"""The reference pages of the docs site, generated from the code that defines what they say.

``python -m exporter.docgen`` (``make docs``) writes ``docs/reference/``:

- ``series.md`` from :func:`exporter.catalog.catalog` (``series.py`` and ``messaging.py``);
- ``config.md`` from the pydantic models of :mod:`exporter.config`: every key, its type,
  default and bounds;
- ``cli.md`` from :func:`exporter.cli.build_parser`: every command and option;
- ``exit-codes.md`` from :data:`exporter.errors.EXIT_STATUSES`.

``--check`` writes nothing and exits 1 naming each page that differs from what is committed;
a test does the same, so a page cannot drift from the code.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from exporter.catalog import CatalogEntry, catalog
from exporter.config import _File as File  # the file's schema: the root of every key
from exporter.errors import EXIT_PRECEDENCE, EXIT_STATUSES

__all__ = ["REFERENCE", "REGENERATE", "main", "pages", "stale"]

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"
REGENERATE = "make docs (or: python -m exporter.docgen)"
_WIDTH = 100  # argparse usage lines wrap here, whatever the terminal is


def _header(title: str, source: str) -> str:
    return (
        f"# {title}\n\n"
        f"<!-- Generated from {source} by `python -m exporter.docgen`: edit the code, then run "
        "`make docs`. A test fails while this page is stale. -->\n\n"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# Series


def _series_rows(entries: Sequence[CatalogEntry]) -> list[list[str]]:
    def dimension(d: dict[str, str | bool | None]) -> str:
        key = f" (`{d['config_key']}`)" if d["config_key"] else ""
        return f"`{d['param']}`{key}{', required' if d['required'] else ''}"

    return [
        [
            f"`{e.series}`",
            e.endpoint,
            "; ".join(dimension(d) for d in e.dimensions) or "-",
            ", ".join(e.units),
            ", ".join(f"`{c}`" for c in e.value_columns),
            e.pool,
            e.permission,
            "; ".join(e.notes),
        ]
        for e in entries
    ]


def series_page() -> str:
    """Every series the exporter knows: those it exports, then (when there are any) those
    only the sandbox serves."""
    headers = ["`series`", "endpoint", "dimensions (config key)", "units", "value", "pool"]
    headers += ["permission", "notes"]
    entries = catalog()
    exported = [e for e in entries if e.exported]
    sandbox_only = [e for e in entries if not e.exported]
    return (
        _header("Series reference", "`exporter/series.py` and `exporter/messaging.py`")
        + "What `braze-export series` lists. An export names its `series:` and lists ids for "
        "each dimension under the config key; a required dimension must be listed (or "
        "discovered). See [Series](../series.md) for what the values mean.\n\n"
        "## Exported\n\n"
        "The campaign, Canvas and send series are written long: `metric` names the value in "
        "`value`.\n\n"
        + _table(headers, _series_rows(exported))
        + (
            "\n## Served by the sandbox only (not exported yet)\n\n"
            + _table(headers, _series_rows(sandbox_only))
            if sandbox_only
            else ""
        )
    )


# Config


def _mapping(model: type[BaseModel]) -> str:
    """A model as a reader writes it: ``{discover: ...}`` by its required keys."""
    required = [name for name, field in model.model_fields.items() if field.is_required()]
    return "{" + ", ".join(f"{name}: ..." for name in required) + "}" if required else "mapping"


def _type_name(annotation: Any) -> str:
    """A YAML reader's name for a type: ``list of text``, ``day | hour``, ``mapping``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(names) + (" or `null`" if type(None) in args else "")
    if origin is list:
        inner = _type_name(args[0])
        return f"list of ({inner})" if " or " in inner else f"list of {inner}"
    if origin is dict:
        return f"mapping of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _mapping(annotation)
    simple = {str: "text", int: "integer", float: "number", bool: "boolean"}
    return simple.get(annotation, "date" if annotation is datetime.date else str(annotation))


# Constraint attributes of annotated_types' Ge, ..., MaxLen and pydantic's StringConstraints.
_BOUNDS = (
    ("ge", ">="),
    ("gt", ">"),
    ("le", "<="),
    ("lt", "<"),
    ("min_length", "length >="),
    ("max_length", "length <="),
    ("pattern", "matches"),
)


def _bounds_of(metadata: Sequence[Any]) -> list[str]:
    """The bounds a field's (or an ``Annotated``'s) metadata sets, a ``Field()``'s included."""
    metadata = [
        inner
        for item in metadata
        for inner in (item.metadata if isinstance(item, FieldInfo) else [item])
    ]
    return [
        f"{word} `{value}`" if name == "pattern" else f"{word} {_value(value)}"
        for item in metadata
        for name, word in _BOUNDS
        if (value := getattr(item, name, None)) is not None
    ]


def _walk_bounds(annotation: Any, own: list[str], each: list[str]) -> None:
    """Collect bounds through unions: on the key's value into ``own``, on a list's items
    (``Id``: a length of 1..256) into ``each``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        own.extend(_bounds_of(args[1:]))
        _walk_bounds(args[0], own, each)
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            _walk_bounds(arg, own, each)
    elif origin is list:
        _walk_bounds(args[0], each, each)


def _bounds(field: FieldInfo) -> str:
    """The value's bounds (``>= 1, <= 1000``; a list's ``length >= 1``), then its items'
    (``each: length >= 1, length <= 256``)."""
    own, each = _bounds_of(field.metadata), list[str]()
    _walk_bounds(field.annotation, own, each)
    own, each = list(dict.fromkeys(own)), list(dict.fromkeys(each))
    return ", ".join(own + ([f"each: {', '.join(each)}"] if each else []))


def _value(value: Any) -> str:
    """A default as it would be written in the YAML file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and value >= 10_000:
        return f"{value:_}"
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models a key may hold, directly, as list items or in a union."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _keys(
    model: type[BaseModel], prefix: str, alternatives: dict[type[BaseModel], None]
) -> Iterator[list[str]]:
    """A row per key under ``model``, nested keys after their parent; a model that is one
    form among others (``{discover: ...}`` or a list of ids) goes to ``alternatives``."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if field.is_required():
            default = "required"
        else:
            default = f"`{_value(field.get_default(call_default_factory=True))}`"
        models = _models_in(field.annotation)
        origin = typing.get_origin(field.annotation)
        alone = len(models) == 1 and origin not in (typing.Union, types.UnionType)
        if alone and "list" not in _type_name(field.annotation).split(" or ")[0]:
            default = "see below" if default != "required" else default
        meaning = " ".join((field.description or "").split())
        yield [f"`{path}`", _type_name(field.annotation), default, _bounds(field), meaning]
        if alone:
            many = _type_name(field.annotation).startswith("list of")
            yield from _keys(models[0], f"{path}{'[]' if many else ''}.", alternatives)
        else:
            alternatives.update(dict.fromkeys(models))


def config_page() -> str:
    """Every key of the config file: its path, type, default, bounds and, where its field
    has a description, what it means."""
    alternatives: dict[type[BaseModel], None] = {}
    headers = ("key", "type", "default", "bounds", "meaning")
    rows = list(_keys(File, "", alternatives))
    page = (
        _header("Config keys", "the pydantic models in `exporter/config.py`")
        + "Every key of a config file, as the schema checks it; `exports[].` keys belong to "
        "each export. A key not listed here is an error (with a did-you-mean). What each key "
        "does: [Configuration](../configuration.md).\n\n" + _table(headers, rows)
    )
    for model in alternatives:
        page += f"\n## `{_mapping(model)}`\n\n"
        page += " ".join((model.__doc__ or "").split()) + "\n\n"
        page += _table(headers, list(_keys(model, "", {})))
    return page


# CLI


def _forms(action: argparse.Action) -> list[str]:
    """How an argument is written: ``CONFIG``, ``--as-of YYYY-MM-DD``, ``--json``."""
    if not action.option_strings:
        return [str(action.metavar or action.dest.upper())]
    if action.nargs == 0:
        return list(action.option_strings)
    if action.metavar is not None:
        value = str(action.metavar)
    elif action.choices is not None:
        value = "{" + ",".join(str(c) for c in action.choices) + "}"
    else:
        value = action.dest.upper()
    return [f"{option} {value}" for option in action.option_strings]


def _commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


def _documented(
    parser: argparse.ArgumentParser, skip: frozenset[str] = frozenset()
) -> list[argparse.Action]:
    """The parser's arguments but help, the command list and ``skip`` (the global options a
    command repeats)."""
    return [
        action
        for action in parser._actions
        if action.help is not argparse.SUPPRESS
        and not isinstance(action, argparse._HelpAction | argparse._SubParsersAction)
        and not skip.intersection(action.option_strings)
    ]


def _options(parser: argparse.ArgumentParser, actions: Sequence[argparse.Action]) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=_WIDTH)
    rows = [[", ".join(f"`{f}`" for f in _forms(a)), formatter._expand_help(a)] for a in actions]
    return _table(("option", "meaning"), rows)


def _synopsis(prog: str, actions: Sequence[argparse.Action]) -> str:
    """``prog CONFIG [--as-of YYYY-MM-DD] ...``: made here rather than by argparse, whose
    usage lines differ between Python versions."""
    # No break inside an argument: `[--as-of YYYY-MM-DD]` stays whole.
    words = [_forms(a)[0] if not a.option_strings else f"[{_forms(a)[0]}]" for a in actions]
    words = sorted(words, key=lambda w: w.startswith("["))  # positionals first
    words = [w.replace(" ", "\N{NO-BREAK SPACE}") for w in words]
    lines = textwrap.wrap(
        " ".join([prog, *words]),
        width=_WIDTH,
        subsequent_indent=" " * (len(prog) + 1),
        break_on_hyphens=False,
    )
    return "```\n" + "\n".join(lines).replace("\N{NO-BREAK SPACE}", " ") + "\n```\n"


def cli_page() -> str:
    """Every command with its synopsis and each option's help, as ``--help`` gives them."""
    from exporter.cli import build_parser  # the CLI imports the whole exporter

    parser = build_parser()
    top = _documented(parser)
    shared = frozenset(o for a in top for o in a.option_strings)
    parts = [
        _header("Command-line options", "the argument parser in `exporter/cli.py`"),
        "Every command and option, with its default, as `braze-export COMMAND --help` prints "
        "them. What each command does: [Commands](../cli.md).\n\n",
        "## braze-export\n\n",
        _synopsis("braze-export", [a for a in top if a.option_strings]) + "\n",
        "Then a command. The options below but `--version` may also follow the command.\n\n",
        _options(parser, top),
    ]
    for name, command in _commands(parser):
        actions = _documented(command, shared)
        parts += [f"\n## {name}\n\n", f"{command.description}\n\n"]
        parts += [_synopsis(f"braze-export {name}", actions), "\n", _options(command, actions)]
    return "".join(parts)


# Exit codes


def exit_codes_page() -> str:
    """The exit statuses every command shares, from their one table."""
    from exporter.cli import ENVIRONMENT

    rows = [[" / ".join(str(c) for c in status.codes), status.detail] for status in EXIT_STATUSES]
    return (
        _header("Exit codes", "`EXIT_STATUSES` in `exporter/errors.py`")
        + _table(("code", "meaning"), rows)
        + f"\n{EXIT_PRECEDENCE}\n\n"
        + "`braze-export --help` lists these codes and the environment variables read:\n\n"
        + f"```\n{ENVIRONMENT.rstrip()}\n```\n"
    )


PAGES: dict[str, Callable[[], str]] = {
    "series.md": series_page,
    "config.md": config_page,
    "cli.md": cli_page,
    "exit-codes.md": exit_codes_page,
}


def pages() -> dict[str, str]:
    """Every generated page by its file name under ``docs/reference/``."""
    return {name: make() for name, make in PAGES.items()}


def stale(directory: Path = REFERENCE) -> list[str]:
    """The pages under ``directory`` that differ from what the code generates (or are
    missing)."""
    return [
        name
        for name, text in pages().items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m exporter.docgen", description="write the docs' generated reference pages"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a page is stale"
    )
    parser.add_argument(
        "--out", type=Path, default=REFERENCE, help="directory (default: docs/reference)"
    )
    args = parser.parse_args(argv)
    if args.check:
        behind = stale(args.out)
        for name in behind:
            print(f"stale: {args.out / name}: regenerate with {REGENERATE}", file=sys.stderr)
        return 1 if behind else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in pages().items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
