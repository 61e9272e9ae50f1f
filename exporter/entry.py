"""The console entry point. A Ctrl-C while Python is still importing the exporter's libraries
(the first half second of every command) ends as one line and exit 130, not a traceback; so
does too little memory to import them (exit 4: nothing can work)."""

from __future__ import annotations

import sys

__all__ = ["main"]


def main() -> int:
    try:
        from exporter.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory while starting: give braze-export more memory", file=sys.stderr)
        return 4
    return cli_main()
