"""The docs: reference pages generated from the code and kept current, links that resolve."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
from pydantic import BaseModel

from exporter import config, docgen
from exporter.cli import build_parser, main
from exporter.errors import EXIT_STATUSES
from exporter.messaging import MESSAGING
from exporter.series import KINDS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_committed_reference_pages_are_what_the_code_generates() -> None:
    """Every page under docs/reference/ is exactly what docgen makes from today's code."""
    stale = docgen.stale()
    assert not stale, f"stale: docs/reference/{', '.join(stale)}; regenerate: {docgen.REGENERATE}"


def test_check_names_a_stale_page_and_how_to_regenerate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`docgen --check` exits 1 naming the page that differs and the command that fixes it."""
    assert docgen.main(["--out", str(tmp_path)]) == 0
    assert docgen.main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "config.md").write_text("an old page\n")
    capsys.readouterr()
    assert docgen.main(["--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "config.md" in err
    assert "make docs" in err
    assert "series.md" not in err


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        for inner in docgen._models_in(field.annotation):
            found += _models(inner)
    return found


def test_config_page_has_every_key_of_every_model() -> None:
    """Each field of every model the config file reaches (export, window, discover, ...) has
    a row, so a key added to the models shows up without touching the generator."""
    page = docgen.config_page()
    for model in _models(config._File):
        for name in model.model_fields:
            assert re.search(rf"^\| `([\w\[\].]*\.)?{name}` \|", page, re.M), (model, name)


def test_config_page_gives_defaults_and_bounds() -> None:
    """A key's row gives its type, its default as YAML and its bounds."""
    page = docgen.config_page()
    assert "| `settle_days` | integer | `3` | >= 0, <= 100 |" in page
    assert "| `limits.requests_per_hour` | integer | `250_000` | >= 1, <= 1_000_000_000 |" in page
    assert "| `exports[].units` | list of `day` \\| `hour` | `[day]` | length >= 1 |" in page
    assert "| `exports[].window` | mapping | required |  |" in page


def test_series_page_has_a_row_per_series() -> None:
    """Every exported kind and every sandbox-only messaging series has a row."""
    page = docgen.series_page()
    for name in [*KINDS, *MESSAGING]:
        assert f"\n| `{name}` |" in page, name


def test_no_generated_page_has_a_heading_over_an_empty_table() -> None:
    """A section of a generated page is a table with at least one row (no 'sandbox only'
    heading over nothing once every series is exported)."""
    pages = [docgen.series_page(), docgen.config_page(), docgen.cli_page()]
    for page in pages:
        for section in page.split("\n## ")[1:]:
            rows = [line for line in section.splitlines() if line.startswith("| ")]
            assert len(rows) >= 2 or "|" not in section, section.splitlines()[0]  # header + a row


def test_cli_page_has_every_option_of_every_command() -> None:
    """Every option string of every command appears in the command-line reference."""
    page = docgen.cli_page()
    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in commands.choices.items():
        section = page[page.index(f"\n## {name}\n") :]
        for action in command._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert f"`{option}" in page, (name, option)
        assert f"braze-export {name}" in section


def test_help_and_exit_code_page_come_from_one_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--help and the exit-code page list the same statuses, those of EXIT_STATUSES."""
    with pytest.raises(SystemExit):
        main(["--help"])
    epilog = capsys.readouterr().out.split("exit status:", 1)[1]
    page = docgen.exit_codes_page()
    for status in EXIT_STATUSES:
        codes = [str(code) for code in status.codes]
        assert re.search(rf"^  {'/'.join(codes)}\s", epilog, re.M), codes
        assert f"| {' / '.join(codes)} | {status.detail}" in page.replace("\\|", "|")


def _links(text: str) -> list[str]:
    return re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)


def test_readme_links_resolve() -> None:
    """Every relative link of the README names a file of the repository (MkDocs checks the
    docs' own links when it builds them strictly)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    relative = [link for link in _links(readme) if "://" not in link]
    assert relative
    for link in relative:
        assert (ROOT / link).is_file(), link


def test_every_docs_page_is_in_the_site_navigation() -> None:
    """No page under docs/ is left out of mkdocs.yml's nav, where no reader would find it."""
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for page in DOCS.rglob("*.md"):
        assert f": {page.relative_to(DOCS).as_posix()}\n" in nav, page


def _documented_commands() -> list[tuple[str, str]]:
    """(page, command line) of every `braze-export ...` in a shell block of the README and
    the docs, up to a redirection, pipe or comment."""
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                match = re.search(r"(?:^|[\s/])braze-export( -*[a-z][^#|>;&]*)", line)
                if match:
                    found.append((page.name, match.group(1).strip()))
    return found


def test_documented_command_lines_parse_with_the_real_cli() -> None:
    """Every braze-export command line the README and the docs show parses: no command or
    option that does not exist."""
    commands = _documented_commands()
    assert len(commands) > 20
    parser = build_parser()
    for page, line in commands:
        words = shlex.split(line.replace("...", "x"))
        if words == ["--version"]:  # prints and exits 0, as it should
            continue
        try:
            parser.parse_args(words)
        except SystemExit:
            pytest.fail(f"{page}: braze-export {line}")
