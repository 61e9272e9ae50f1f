"""Config loading: defaults, and one clear line per invalid value."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import ApiKey, key_source, load_config, register_env_key, resolve_api_key
from exporter.errors import ConfigError

GOOD = """\
version: 1
exports:
  - name: nightly
    segment_ids: [seg-a]
    window: {days: 7}
"""


def _export(extra: str = "", window: str = "{days: 7}") -> str:
    return f"""\
version: 1
exports:
  - name: nightly
    segment_ids: [seg-a]
    window: {window}
{extra}"""


def test_defaults_are_resolved(write_config: Callable[..., Path]) -> None:
    """A minimal config gets the documented defaults."""
    config = load_config(write_config(GOOD), env={})
    assert config.braze.endpoint == "https://rest.iad-01.braze.com"
    assert config.braze.api_key_env == "BRAZE_API_KEY"
    assert config.braze.timeout_s == 30
    assert config.limits.requests_per_hour == 250_000
    assert config.limits.share == 1.0
    assert config.limits.reserve == 0.1
    assert config.limits.concurrency == 16
    assert config.limits.max_pause_s == 3900
    assert config.timezone == "UTC"
    assert (config.output.dir, config.output.format) == ("exports", "jsonl")
    export = config.exports[0]
    assert export.values("app_id") == [None]
    assert export.units == ["day"]


def test_full_example_config_is_valid() -> None:
    """The shipped configs load."""
    root = Path(__file__).parent.parent / "configs"
    for name in ("demo.yaml", "example.yaml"):
        assert load_config(root / name, env={}).exports


def test_dates_parse_from_bare_and_quoted_yaml(write_config: Callable[..., Path]) -> None:
    """start/end accept YAML dates, quoted or not."""
    path = write_config(_export(window="{start: 2024-01-01, end: '2024-06-30'}"))
    window = load_config(path, env={}).exports[0].window
    assert (window.start, window.end) == (date(2024, 1, 1), date(2024, 6, 30))


def test_endpoint_env_overrides_file(write_config: Callable[..., Path]) -> None:
    """BRAZE_REST_ENDPOINT wins over braze.endpoint."""
    config = load_config(
        write_config(GOOD), env={"BRAZE_REST_ENDPOINT": "https://rest.fra-01.braze.eu/"}
    )
    assert config.braze.endpoint == "https://rest.fra-01.braze.eu"


def test_endpoint_env_is_validated(write_config: Callable[..., Path]) -> None:
    """A plain-http endpoint from the environment is refused too."""
    with pytest.raises(ConfigError, match="BRAZE_REST_ENDPOINT: must use https://"):
        load_config(write_config(GOOD), env={"BRAZE_REST_ENDPOINT": "http://example.com"})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (_export(window="{days: 0}"), "exports[0].window.days: must be >= 1, got 0"),
        (_export(window="{days: '7'}"), "exports[0].window.days: must be an integer, got '7'"),
        (
            _export(window="{start: 2024-06-30, end: 2024-01-01}"),
            "exports[0].window: end 2024-01-01 is before start 2024-06-30",
        ),
        (_export(window="{start: 2024-01-01}"), "exports[0].window: needs days, or both"),
        (
            _export(window="{days: 3, start: 2024-01-01, end: 2024-01-02}"),
            "exports[0].window: give either days or start/end, not both",
        ),
        (
            _export(window="{start: 2024-13-01, end: 2024-12-31}"),
            "exports[0].window.start: must be a date YYYY-MM-DD, got '2024-13-01'",
        ),
        (
            _export("    units: [week]\n"),
            "exports[0].units[0]: must be 'day' or 'hour', got 'week'",
        ),
        (_export("    units: []\n"), "exports[0].units: must not be empty"),
        (_export("    app_ids: []\n"), "exports[0].app_ids: must not be empty"),
        (_export("    app_ids: ['']\n"), "exports[0].app_ids[0]: must not be empty"),
        (
            _export(f"    app_ids: [{'x' * 257}]\n"),
            "exports[0].app_ids[0]: is too long (at most 256 characters)",
        ),
        (
            _export("    windw: {days: 1}\n"),
            "exports[0].windw: unknown key (did you mean 'window'?)",
        ),
        (
            "version: 1\nexports: []\n",
            "exports: must not be empty",
        ),
        (
            GOOD + "  - name: nightly\n    segment_ids: [b]\n    window: {days: 1}\n",
            "exports[1].name: duplicate export name 'nightly' (also exports[0].name)",
        ),
        (GOOD + "timezone: Mars/Olympus\n", "timezone: unknown IANA time zone 'Mars/Olympus'"),
        (
            GOOD + "timezone: Europe/Berlinn\n",
            "(did you mean 'Europe/Berlin'?)",
        ),
        (GOOD + "limits: {share: 0}\n", "limits.share: must be > 0, got 0"),
        (GOOD + "limits: {share: 1.5}\n", "limits.share: must be <= 1, got 1.5"),
        (GOOD + "limits: {concurrency: 1001}\n", "limits.concurrency: must be <= 1000, got 1001"),
        (GOOD + "limits: {requests_per_hour: -5}\n", "limits.requests_per_hour: must be >= 1"),
        (GOOD + "limits: {reserve: 1}\n", "limits.reserve: must be < 1, got 1"),
        (GOOD + "limitz: {}\n", "limitz: unknown key (did you mean 'limits'?)"),
        (GOOD + "output: {format: orc}\n", "output.format: must be 'jsonl', 'csv' or 'parquet'"),
        (
            GOOD + "braze: {endpoint: 'http://rest.iad-01.braze.com'}\n",
            "braze.endpoint: must use https://",
        ),
        (GOOD + "braze: {endpoint: 'rest.iad-01.braze.com'}\n", "braze.endpoint: must be an"),
        (GOOD + "braze: {api_key_env: 'MY KEY'}\n", "braze.api_key_env: must be an environment"),
        (GOOD + "braze: {timeout_s: 0}\n", "braze.timeout_s: must be > 0, got 0"),
        (GOOD.replace("version: 1", "version: 2"), "version: must be 1, got 2"),
        (GOOD.replace("version: 1\n", ""), "version: required key is missing"),
        ("version: 1\n", "exports: required key is missing"),
        (_export().replace("    segment_ids: [seg-a]\n", ""), "exports[0].segment_ids: required"),
        (_export().replace("[seg-a]", "seg-a"), "exports[0].segment_ids: must be a list"),
        (_export().replace("[seg-a]", "[7]"), "exports[0].segment_ids[0]: must be a string, got 7"),
        ("- just\n- a list\n", "must be a mapping with version: 1 and exports, got list"),
        ("", "must be a mapping with version: 1 and exports, got an empty file"),
        ("version: 1\nexports: [\n", "line 3, column 1: YAML syntax error"),
    ],
)
def test_invalid_values_are_named_by_path(
    write_config: Callable[..., Path], text: str, expected: str
) -> None:
    """Each invalid value is reported with the file and its key path."""
    path = write_config(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert expected in message


def test_every_problem_is_listed(write_config: Callable[..., Path]) -> None:
    """Several bad values give one line each, not only the first."""
    path = write_config(GOOD + "limits: {share: 0, concurrency: 0}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert all(line.startswith(f"{path}: limits.") for line in lines)


EVERYTHING_WRONG = """\
version: 1
timezone: Mars/Olympus
timezone: UTC
limits: {share: 0}
exports:
  - name: nightly
    segment_ids: [seg-a]
    window: {days: 0}
  - name: nightly
    segment_ids: [seg-b]
    app_ids: ['None']
    window: {days: 7}
  - name: kpis
    series: dau
    segment_ids: [seg-a]
    units: [hour]
    window: {days: 7, start: 2024-01-01}
"""


def test_validate_reports_every_problem_in_one_pass(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """days: 0, a duplicate name, a 'None' id, a duplicate key and the series checks: one
    run of validate names them all, one line each with its key path, exit 2."""
    path = write_config(EVERYTHING_WRONG)
    assert main(["validate", str(path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    problems = {line.removeprefix(f"error: {path}: ").split(":")[0] for line in lines}
    assert problems == {
        "timezone",  # given twice
        "limits.share",
        "exports[0].window.days",
        "exports[1].name",  # duplicate export name
        "exports[1].app_ids[0]",  # 'None' reads like null
        "exports[2].window",  # days and start both given
        "exports[2].segment_ids",  # dau takes no segment_ids
        "exports[2].units[0]",  # dau has no hours
    }
    assert all(line.startswith(f"error: {path}: ") for line in lines)
    assert len(lines) == len(problems)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    """A missing file or a directory as CONFIG is a clear error."""
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path, env={})


def test_api_key_from_env_and_file(write_config: Callable[..., Path], tmp_path: Path) -> None:
    """The key comes from $BRAZE_API_KEY, or from the file $BRAZE_API_KEY_FILE names."""
    config = load_config(write_config(GOOD), env={})
    key = "k-0123456789-abcdef"
    assert resolve_api_key(config, {"BRAZE_API_KEY": key}).reveal() == key
    key_file = tmp_path / "key"
    key_file.write_text(f"{key}-file\n")
    assert resolve_api_key(config, {"BRAZE_API_KEY_FILE": str(key_file)}).reveal() == f"{key}-file"


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("device", "not a regular file"),
        ("fifo", "not a regular file"),
        ("oversized", "it holds more than 4096 bytes"),
        ("directory", "Is a directory"),
    ],
)
def test_a_key_file_is_read_bounded_and_never_blocks(
    write_config: Callable[..., Path], tmp_path: Path, kind: str, says: str
) -> None:
    """A key file that is a device (/dev/zero never ends), a FIFO (would block for a
    writer), a directory or longer than 4 KiB is refused with one line naming the file."""
    config = load_config(write_config(GOOD), env={})
    path = {"device": Path("/dev/zero"), "directory": tmp_path}.get(kind, tmp_path / "key")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "oversized":
        path.write_text("k" * 5000)
    env = {"BRAZE_API_KEY": "", "BRAZE_API_KEY_FILE": str(path)}
    with pytest.raises(ConfigError, match=f"BRAZE_API_KEY_FILE: cannot read {path}: {says}"):
        resolve_api_key(config, env)
    register_env_key("BRAZE_API_KEY", env)  # never raises, never blocks


def test_messages_name_the_key_file_the_key_came_from(
    write_config: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A key read from $BRAZE_API_KEY_FILE is named by that variable and the file, not by
    $BRAZE_API_KEY (which is empty)."""
    config = load_config(write_config(GOOD), env={})
    key_file = tmp_path / "k4"
    key_file.write_text("short\n")
    env = {"BRAZE_API_KEY": "", "BRAZE_API_KEY_FILE": str(key_file)}
    with pytest.raises(ConfigError, match=rf"BRAZE_API_KEY_FILE \({key_file}\) holds 5 char"):
        resolve_api_key(config, env)
    key_file.write_text("two words-0123456789\nline\n")
    with pytest.raises(ConfigError, match=rf"BRAZE_API_KEY_FILE \({key_file}\) holds quotes"):
        resolve_api_key(config, env)
    assert key_source("BRAZE_API_KEY", env) == f"$BRAZE_API_KEY_FILE ({key_file})"
    assert key_source("BRAZE_API_KEY", {"BRAZE_API_KEY": "x"}) == "$BRAZE_API_KEY"
    key_file.write_text("d3b07384-d9a0-4c2b-9f1e-7a1b2c3d4e5f\n")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["validate", str(write_config(GOOD))]) == 0
    assert f"key from $BRAZE_API_KEY_FILE ({key_file}) (set)" in capsys.readouterr().out


def test_api_key_problems(write_config: Callable[..., Path]) -> None:
    """Unset, empty and quoted keys are refused before any request."""
    config = load_config(write_config(GOOD), env={})
    with pytest.raises(ConfigError, match="environment variable BRAZE_API_KEY is not set"):
        resolve_api_key(config, {})
    with pytest.raises(ConfigError, match="BRAZE_API_KEY is empty"):
        resolve_api_key(config, {"BRAZE_API_KEY": "  "})
    with pytest.raises(ConfigError, match="holds quotes or spaces"):
        resolve_api_key(config, {"BRAZE_API_KEY": '"abc"'})


def test_a_key_too_short_to_redact_is_refused(write_config: Callable[..., Path]) -> None:
    """A key under 16 characters is no Braze key (those are 36-character UUIDs), and could
    not be redacted from the output without garbling it: refused, naming the minimum."""
    config = load_config(write_config(GOOD), env={})
    with pytest.raises(ConfigError, match=r"holds 15 character.*fewer than 16"):
        resolve_api_key(config, {"BRAZE_API_KEY": "k" * 15})
    assert resolve_api_key(config, {"BRAZE_API_KEY": "k" * 16}).reveal() == "k" * 16


def test_api_key_repr_hides_the_secret() -> None:
    """Neither repr nor str of the key shows it."""
    key = ApiKey("super-secret-value")
    assert "super-secret-value" not in repr(key)
    assert "super-secret-value" not in str(key)
    assert "super-secret-value" not in f"{key!r} {key}"


def test_fingerprint_tracks_the_resolved_config(write_config: Callable[..., Path]) -> None:
    """Equal configs hash equal; a changed value changes the hash."""
    one = load_config(write_config(GOOD, "a.yaml"), env={})
    two = load_config(write_config(GOOD, "b.yaml"), env={})
    three = load_config(write_config(GOOD + "timezone: Europe/Berlin\n", "c.yaml"), env={})
    assert one.fingerprint == two.fingerprint != three.fingerprint


@pytest.mark.parametrize(
    ("env", "code", "says"),
    [
        ({"BRAZE_API_KEY": "a"}, 2, "holds 1 character(s), fewer than 16"),
        ({"BRAZE_API_KEY": "'quoted-key-0123456789'"}, 2, "holds quotes or spaces"),
        ({"BRAZE_API_KEY": "", "BRAZE_API_KEY_FILE": "/nonexistent/key"}, 2, "cannot read"),
        ({"BRAZE_API_KEY": "a-key-of-36-characters-0123456789abc"}, 0, "BRAZE_API_KEY (set)"),
        ({}, 0, "BRAZE_API_KEY (NOT set: run will refuse"),
    ],
    ids=["short", "quoted", "unreadable file", "good", "unset"],
)
def test_validate_checks_the_key_as_run_does(
    write_config: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    code: int,
    says: str,
) -> None:
    """A key run would refuse is refused by validate (exit 2, run's one line); an unset one
    is reported NOT set, and the config is still valid."""
    monkeypatch.delenv("BRAZE_API_KEY", raising=False)
    monkeypatch.delenv("BRAZE_API_KEY_FILE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["validate", str(write_config(GOOD))]) == code
    out, err = capsys.readouterr()
    assert says in (out if code == 0 else err)
    if code:
        assert err.count("\n") == 1
