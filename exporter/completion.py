"""Shell completion scripts for ``braze-export completion SHELL``, written by shtab from the
argument parser itself, so they complete every command and option the parser has (and
file or directory names where a command takes one) without a line kept by hand.

shtab writes static scripts: a tab press runs no Python (argcomplete, the alternative, would
start braze-export, with aiohttp and pydantic, on every tab).
"""

from __future__ import annotations

import argparse

import shtab

__all__ = ["SHELLS", "completion_script"]

SHELLS = ("bash", "zsh", "fish")
# Arguments that name a file or a directory (by dest), so the shells offer paths for them.
_FILES = {"config", "path"}
_DIRECTORIES = {"dir", "out", "work_dir"}


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`) of ``parser``'s program.
    Raises ValueError for another shell."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}; one of {', '.join(SHELLS)}")
    for action in _actions(parser):
        if action.dest in _FILES:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in _DIRECTORIES:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of ``parser`` and of its subcommands."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _actions(sub)
    return found
