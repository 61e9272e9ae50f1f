"""A corpus of broken configs: each gets its clear message, exit 2, nothing fetched or written.

Each file in bad_configs/ starts with ``# expect: <text the error must contain>``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.sandbox import SandboxOptions, sandbox_stats
from tests.conftest import KEY, ServerHandle, _ThreadedSandbox

CORPUS = sorted((Path(__file__).parent / "bad_configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with _ThreadedSandbox(SandboxOptions(api_key=KEY)) as handle:
        yield handle


def _expectation(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), path
    return first.removeprefix("# expect: ")


def test_the_corpus_is_large() -> None:
    """At least 30 broken configs are checked."""
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_broken_config_is_refused(
    path: Path,
    tmp_path: Path,
    server: ServerHandle,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """run exits 2 with the expected one-line message; no request, no file."""
    monkeypatch.setenv("BRAZE_API_KEY", KEY)
    monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
    monkeypatch.delenv("BRAZE_EXPORT_TEST_UNSET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    before = sandbox_stats(server.app).requests
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--as-of", "2024-07-01"]) == 2
    err = capsys.readouterr().err
    assert _expectation(path) in err
    assert err.startswith(f"error: {path}: ")
    assert sandbox_stats(server.app).requests == before
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
        (["run", "{tmp}"], ": is a directory, not a config file"),
        (["validate", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
        (["plan", "{tmp}/missing.yaml"], "missing.yaml: no such file"),
    ],
)
def test_missing_file_or_directory_as_config(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """CONFIG that is not a file is exit 2 with a clear message."""
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    assert expected in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_as_of_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed --as-of exits 2 through argparse."""
    with pytest.raises(SystemExit) as caught:
        main(["plan", "x.yaml", "--as-of", "2024-02-30"])
    assert caught.value.code == 2
    assert "must be a date YYYY-MM-DD" in capsys.readouterr().err
