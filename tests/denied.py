"""A directory that a test's subprocess cannot write, as a bind mount owned by the host's
user is for a container's user."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

__all__ = ["Denied", "denied_dir", "mounted", "read_only_dir"]


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


@contextmanager
def mounted(target: Path, *options: str) -> Iterator[Path]:
    """``mount OPTIONS target`` for the test's duration, unmounted after; skips the test
    unless this process may mount (root with CAP_SYS_ADMIN and mount(8))."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        pytest.skip("mounting needs root and mount(8)")
    done = subprocess.run([mount, *options, str(target)], capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.decode().strip()}")
    try:
        yield target
    finally:
        subprocess.run([umount, "-l", str(target)], capture_output=True, check=False)


@contextmanager
def read_only_dir(parent: Path) -> Iterator[Path]:
    """``parent/ro``, a read-only bind mount of itself (EROFS, as a container's ``:ro``
    volume); skips the test where it cannot mount."""
    target = parent / "ro"
    target.mkdir()
    with mounted(target, "--bind", "-o", "ro", str(target)):
        yield target
