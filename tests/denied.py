"""A directory that a test's subprocess cannot write, as a bind mount owned by the host's
user is for a container's user."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Denied", "denied_dir"]


@dataclass(frozen=True)
class Denied:
    dir: Path  # the subprocess cannot write here
    prefix: list[str]  # to put in front of the subprocess' argv


@contextmanager
def denied_dir(parent: Path) -> Iterator[Denied]:
    """``parent/data``, owned by another uid (as root: the subprocess runs without the
    capabilities that let root ignore permission bits) or read-only (as anyone else)."""
    target = parent / "data"
    target.mkdir()
    try:
        if os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.skip("running as root without setpriv: nothing stops root writing")
            os.chown(target, 65534, 65534)
            drop = "-dac_override,-dac_read_search,-fowner"
            yield Denied(target, [setpriv, f"--bounding-set={drop}", "--"])
        else:
            target.chmod(0o555)
            yield Denied(target, [])
    finally:
        target.chmod(0o755)
