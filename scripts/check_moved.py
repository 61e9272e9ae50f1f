"""Which parts of an old README are in none of today's pages (README.md and docs/)?

    python scripts/check_moved.py OLD_README.md   (e.g. from `git show main:README.md`)

Cuts the old README into headings, paragraphs, list items, table rows and code lines, and
prints each one that no page holds (whitespace, link targets and Markdown emphasis ignored),
with its line number. Exit 0 when every part is accounted for, 1 otherwise. For moving text
that other branches added to README.md into the docs site: run it on the README of the branch
before and after the move.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def normalise(text: str) -> str:
    """Text as compared: links as their words, no emphasis or heading marks, one space."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"^#+ ", "", text, flags=re.M)
    text = text.replace("**", "").replace("\\|", "|")
    return " ".join(text.split())


def parts(markdown: str) -> Iterator[tuple[int, str]]:
    """(line number, text) of each heading, paragraph, list item, table row and code line."""
    block: list[str] = []
    start = 0
    fence = False
    for number, line in enumerate(markdown.splitlines(), 1):
        if line.startswith("```"):
            fence = not fence
            continue
        if fence:
            if line.strip():
                yield number, line
            continue
        new_item = bool(re.match(r"\s*([-*]|\d+\.) ", line)) or line.startswith(("#", "|"))
        if not line.strip() or new_item:
            if block:
                yield start, "\n".join(block)
            block = []
        if line.startswith("|"):
            if not re.fullmatch(r"\|[-| :]*\|?", line.strip()):
                yield number, line
            continue
        if line.strip():
            if not block:
                start = number
            block.append(re.sub(r"^\s*([-*]|\d+\.) ", "", line))
    if block:
        yield start, "\n".join(block)


def pages() -> str:
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return "\n".join(normalise(p.read_text(encoding="utf-8")) for p in texts)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    everything = pages()
    missing = []
    for number, text in parts(Path(argv[0]).read_text(encoding="utf-8")):
        # A paragraph led by `**Lead.**` may have become a `## Lead` heading and its text.
        lead = re.match(r"\*\*([^*]+)\.\*\* ", text)
        pieces = [lead.group(1), text[lead.end() :]] if lead else [text]
        # A table row may have become a heading and a paragraph: each cell is then enough.
        if text.startswith("|"):
            pieces = [cell for cell in re.split(r"(?<!\\)\|", text) if cell.strip()]
        if any(normalise(piece) not in everything for piece in pieces):
            missing.append((number, text))
    for number, text in missing:
        print(f"{argv[0]}:{number}: {' '.join(text.split())[:160]}")
    print(f"{len(missing)} part(s) of {argv[0]} found in no page", file=sys.stderr)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
