"""The console entry point. A Ctrl-C while Python is still importing the exporter's libraries
(the first half second of every command) ends as one line and exit 130, not a traceback."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    try:
        from exporter.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return cli_main()
