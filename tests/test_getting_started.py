"""The commands people expect: series, completion, --version."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import exporter
from exporter.cli import build_parser, main
from exporter.completion import SHELLS
from exporter.messaging import MESSAGING
from exporter.series import DIMENSIONS, KINDS


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args], capture_output=True, text=True, check=False
    )


def _commands() -> list[str]:
    (sub,) = [a for a in build_parser()._actions if a.dest == "command"]
    return list(sub.choices)  # type: ignore[arg-type]


def test_series_json_lists_every_series_from_series_py(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """series --json has each kind with its dimensions, units, value columns, pool and
    permission; the message series are long (metric, value) and sends take one campaign_id."""
    assert main(["series", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    by_name = {e["series"]: e for e in doc}
    assert list(by_name) == list(KINDS)
    for name, kind in KINDS.items():
        entry = by_name[name]
        assert entry["exported"] is True
        assert entry["endpoint"] == kind.path
        assert [d["param"] for d in entry["dimensions"]] == list(kind.dimensions)
        assert [d["config_key"] for d in entry["dimensions"]] == [
            p if p in kind.single else DIMENSIONS[p].config_key for p in kind.dimensions
        ]
        assert [d["param"] for d in entry["dimensions"] if d["required"]] == list(kind.required)
        assert entry["units"] == list(kind.units)
        long = name in MESSAGING
        assert entry["value_columns"] == (["metric", "value"] if long else [kind.value_key])
        assert (entry["pool"], entry["permission"]) == (kind.pool, kind.permission)
    assert [d["config_key"] for d in by_name["sends"]["dimensions"]] == ["campaign_id", "send_ids"]


def test_series_table_has_a_line_per_series(capsys: pytest.CaptureFixture[str]) -> None:
    """series prints one table line per series, with its endpoint and permission."""
    assert main(["series"]) == 0
    lines = capsys.readouterr().out.splitlines()
    every = [(k.name, k.path, k.permission) for k in KINDS.values()]
    for name, path, permission in every:
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert path in line
        assert permission in line
    assert "mau: a level: never sum across periods" in lines


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_script_names_every_command(shell: str) -> None:
    """completion SHELL prints a script that knows every subcommand."""
    done = _cli("completion", shell)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    for command in _commands():
        assert command in done.stdout, command


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_registers_and_completes_subcommands(tmp_path: Path) -> None:
    """Sourced in bash, the script registers braze-export and completes `ser` to series."""
    script = tmp_path / "braze-export.bash"
    script.write_text(_cli("completion", "bash").stdout)
    probe = f"""
source {script}
complete -p braze-export
func=$(complete -p braze-export | sed -E 's/.*-F ([^ ]+).*/\\1/')
COMP_WORDS=(braze-export ser); COMP_CWORD=1; COMP_LINE="braze-export ser"; COMP_POINT=16
$func braze-export ser braze-export
echo "completions: ${{COMPREPLY[*]}}"
"""
    done = subprocess.run(
        [shutil.which("bash") or "bash", "--norc", "--noprofile", "-c", probe],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "braze-export" in done.stdout.splitlines()[0]
    assert done.stdout.splitlines()[-1].split()[1:] == ["series"]


def test_version_is_the_installed_distribution_version() -> None:
    """--version prints the package metadata's version and exits 0."""
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"braze-export {importlib.metadata.version('braze-export')}\n"


def test_version_comes_from_package_metadata(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The version is read from the metadata, not from a second copy in the code."""
    monkeypatch.setattr(exporter, "version", lambda name: "9.8.7")
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out == "braze-export 9.8.7\n"


def test_readme_cli_reference_has_a_row_and_a_usage_line_per_command() -> None:
    """Every command has a usage line and a row in the README's CLI reference."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    reference = readme[readme.index("## CLI reference") : readme.index("### Exit codes")]
    for command in _commands():
        assert f"\nbraze-export {command}" in reference, command
        assert f"\n| `{command}` |" in reference, command
