"""The console entry point. A Ctrl-C while Python is still importing the exporter's libraries
(the first half second of every command) ends as one line and exit 130, not a traceback; so
does too little memory to import them (exit 4: nothing can work)."""

from __future__ import annotations

import sys

# Imports only the standard library: the CLI's libraries are what may be cut short.
from exporter.errors import EXIT_SIGINT, EXIT_UNREACHABLE

__all__ = ["main"]


def main() -> int:
    try:
        from exporter.cli import main as cli_main
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except MemoryError:
        print("error: out of memory while starting: give braze-export more memory", file=sys.stderr)
        return EXIT_UNREACHABLE
    return cli_main()
