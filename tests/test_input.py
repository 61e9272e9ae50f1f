"""Invalid input is refused before anything happens: exit 2, one line naming the file and key.

The config corpus in bad_configs/ covers what a config file alone can get wrong (duplicate keys,
machine-dependent zones, null-like ids, out-of-range dates); these are the cases that need
something around the file: the command line, the environment, the file system.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from exporter.cli import build_parser, main
from exporter.config import load_config, resolve_api_key
from exporter.errors import ConfigError
from exporter.plan import build_plan, count_series
from tests.conftest import Cli

GOOD = """\
version: 1
output: {{dir: {out}}}
exports:
  - name: nightly
    segment_ids: [seg-a]
    window: {{days: 2}}
"""


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run argv, expect exit 2 from the parser, return its one line."""
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("value", ["-1", "0", "nan", "inf", "0.001", "soon"])
def test_progress_interval_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    """--progress-interval below 0.01 s (a busy loop) or not a number is a usage error."""
    err = _usage_error(["run", "x.yaml", "--progress-interval", value], capsys)
    assert err.startswith("error: braze-export run: argument --progress-interval: ")
    assert "at least 0.01" in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--window", "0"], "argument --window: must be at least 0.01 seconds"),
        (["--window", "-3"], "argument --window: must be at least 0.01 seconds"),
        (["--window", "nan"], "argument --window: must be at least 0.01 seconds"),
        (["--limit", "-1"], "argument --limit: must be an integer >= 0"),
        (["--fault-rate", "1.5"], "argument --fault-rate: must be between 0 and 1"),
        (["--fault-rate", "-0.1"], "argument --fault-rate: must be between 0 and 1"),
        (["--slow-s", "-1"], "argument --slow-s: must be >= 0"),
        (["--port", "70000"], "argument --port: must be a port 0..65535"),
        (["--port", "-1"], "argument --port: must be a port 0..65535"),
    ],
)
def test_sandbox_numbers_are_checked(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nonsense sandbox numbers are refused up front instead of answering 500 to everything."""
    assert expected in _usage_error(["sandbox", *args], capsys)


def test_as_of_must_be_in_range(capsys: pytest.CaptureFixture[str]) -> None:
    """--as-of before 1970 or after 2999 is refused (date arithmetic overflowed: a traceback)."""
    err = _usage_error(["plan", "x.yaml", "--as-of", "0001-01-02"], capsys)
    assert "must be a date from 1970-01-01 to 2999-12-31" in err


def test_global_options_work_after_the_command() -> None:
    """--log-format and --log-level parse after the command too (the usual order in CI)."""
    parser = build_parser()
    after = parser.parse_args(["run", "x.yaml", "--log-format", "json", "--log-level", "debug"])
    assert (after.log_format, after.log_level) == ("json", "DEBUG")
    before = parser.parse_args(["--log-format", "json", "run", "x.yaml"])
    assert (before.log_format, before.log_level) == ("json", "INFO")
    neither = parser.parse_args(["validate", "x.yaml"])
    assert (neither.log_format, neither.log_level) == ("text", "INFO")


def test_log_format_after_the_command_takes_effect(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """run x.yaml --log-format json writes JSON log lines."""
    path = write_config(GOOD.format(out=tmp_path / "out"))
    code = main(["run", str(path), "--sandbox", "--as-of", "2024-07-01", "--log-format", "json"])
    assert code == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    assert lines
    assert all(json.loads(line)["run_id"] for line in lines)


def test_tilde_in_output_dir_is_expanded(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    cli: Cli,
    env_key: str,
) -> None:
    """dir: ~/braze means the home directory's braze/, never a literal ./~."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    config = load_config(write_config(GOOD.format(out="~/braze")), env={})
    assert config.output.dir == str(tmp_path / "home" / "braze")
    with cli.sandbox():
        assert main(["run", str(config.source), "--as-of", "2024-07-01"]) == 0
    assert (tmp_path / "home" / "braze" / "_runs").is_dir()
    assert not (tmp_path / "~").exists()


def test_tilde_in_out_option_is_expanded(
    tmp_path: Path,
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--out '~/x' (quoted, so no shell expanded it) is the home directory's x/ too."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    path = write_config(GOOD.format(out="elsewhere"))
    assert main(["run", str(path), "--sandbox", "--as-of", "2024-07-01", "--out", "~/x"]) == 0
    assert (tmp_path / "home" / "x" / "_runs").is_dir()
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_output_dir_that_is_a_file_is_refused(
    command: str,
    tmp_path: Path,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
    env_key: str,
) -> None:
    """validate and run both refuse an output.dir that exists as a file, naming file and key."""
    out = tmp_path / "exports"
    out.write_text("not a directory")
    path = write_config(GOOD.format(out=out))
    extra = ["--as-of", "2024-07-01"] if command == "run" else []
    assert main([command, str(path), *extra]) == 2  # run: before any request is sent
    err = capsys.readouterr().err
    assert err == f"error: {path}: output.dir: {out} is a file, not a directory\n"
    assert out.read_text() == "not a directory"


def test_out_option_that_is_a_file_names_the_option(
    tmp_path: Path, write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """With --out the message names --out, not the config's key."""
    out = tmp_path / "file"
    out.write_text("")
    path = write_config(GOOD.format(out="x"))
    assert main(["run", str(path), "--sandbox", "--out", str(out)]) == 2
    assert capsys.readouterr().err == f"error: --out: {out} is a file, not a directory\n"


def test_null_like_ids_can_be_allowed(write_config: Callable[..., Path]) -> None:
    """exports[].allow_null_like_ids: true is the documented opt-in for an id such as 'None'."""
    text = GOOD.format(out="x") + "    app_ids: [null, 'None']\n    allow_null_like_ids: true\n"
    export = load_config(write_config(text), env={}).exports[0]
    assert export.app_ids == [None, "None"]


def test_real_null_is_still_the_workspace(write_config: Callable[..., Path]) -> None:
    """An unquoted null (or ~) keeps meaning the whole workspace, with no opt-in."""
    text = GOOD.format(out="x") + "    app_ids: [null, ~, app-1]\n"
    assert load_config(write_config(text), env={}).exports[0].app_ids == [None, None, "app-1"]


def test_empty_key_variable_falls_back_to_the_key_file(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    """BRAZE_API_KEY="" with BRAZE_API_KEY_FILE set reads the file (empty means unset)."""
    config = load_config(write_config(GOOD.format(out="x")), env={})
    key_file = tmp_path / "kf"
    key_file.write_text("k-7890123456789abc\n")
    env = {"BRAZE_API_KEY": "", "BRAZE_API_KEY_FILE": str(key_file)}
    assert resolve_api_key(config, env).reveal() == "k-7890123456789abc"


def test_empty_key_file_is_named(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """An empty key file is reported as the file being empty."""
    config = load_config(write_config(GOOD.format(out="x")), env={})
    key_file = tmp_path / "kf"
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match=f"BRAZE_API_KEY_FILE: {key_file} is empty"):
        resolve_api_key(config, {"BRAZE_API_KEY_FILE": str(key_file)})


def test_series_are_counted_as_the_planner_counts(write_config: Callable[..., Path]) -> None:
    """count_series equals the plan's series, across overlapping exports and shards."""
    text = """\
version: 1
exports:
  - name: a
    segment_ids: [s1, s2, s3, s2]
    app_ids: [null, app-1]
    units: [day, hour]
    window: {days: 3}
  - name: b
    segment_ids: [s3, s4]
    app_ids: [app-1]
    window: {start: 2024-01-01, end: 2024-01-02}
"""
    config = load_config(write_config(text), env={})
    as_of = date(2024, 7, 1)
    assert count_series(config) == len(build_plan(config, as_of).series) == 13
    for k in (1, 2, 3):
        assert count_series(config, (k, 3)) == len(build_plan(config, as_of, (k, 3)).series)


def test_validate_counts_series_without_planning_requests(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """validate on a 100-year hourly window stays small: no request is built to count series."""
    import tracemalloc

    segments = ", ".join(f"s{i}" for i in range(10))
    text = f"""\
version: 1
exports:
  - name: century
    segment_ids: [{segments}]
    units: [day, hour]
    window: {{days: 36600}}
"""
    path = write_config(text)
    tracemalloc.start()
    try:
        assert main(["validate", str(path)]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "covering 20 series" in capsys.readouterr().out
    assert peak < 8 * 2**20
