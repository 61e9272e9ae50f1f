"""The key never leaves the process: a server that echoes it back, in every answer it can give,
gets it into no byte of stdout, stderr or any file, for run, doctor and verify, in both log
formats. The real CLI runs in a subprocess against a loopback server."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from aiohttp import web

from exporter.cli import main
from exporter.client import Response
from exporter.discover import interpret_list
from exporter.ratelimit import RateHeaders
from exporter.redact import (
    forget_secrets,
    holds_secret,
    redact,
    redact_bytes,
    register_secret,
)
from exporter.series import LISTS
from tests.conftest import NotBraze, serving

ROOT = Path(__file__).resolve().parent.parent
# Characters that percent-encoding changes, so that every form of the key differs.
KEY = "t3st/K3y+with=special&chars~0123456789-abcdef"
FORMS = {
    "raw": KEY,
    "bearer": f"Bearer {KEY}",
    "quote": quote(KEY, safe=""),
    "quote_plus": quote_plus(KEY, safe=""),
    "quote lowercase": quote(KEY, safe="").replace("%2F", "%2f").replace("%2B", "%2b"),
    "base64": base64.b64encode(KEY.encode()).decode().rstrip("="),
}
REDIRECT_HOST = "http://127.0.0.2:9"  # loopback, and no one listens there


class EchoServer(NotBraze):
    """Answers every Braze call with an error that repeats the Authorization header: in the
    body (as is, percent-encoded, base64), in headers, and in a redirect's Location. The
    status comes from the segment id (``s400``, ``s429``, ...; ``redirect``); ``ok`` gets a
    real day series; ``answer`` (when set) answers everything. A 429 or 5xx is answered once
    per request, its retry gets a 400 (so runs end quickly)."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: str | None = None
        self.seen: set[str] = set()

    def _echo(self, status: int, auth: str) -> web.Response:
        key = auth.removeprefix("Bearer ")
        body = {
            "message": f"invalid key: {auth}",
            "errors": [
                f"api_key={quote(key, safe='')}",
                f"api_key={quote_plus(key)}",
                f"basic {base64.b64encode(key.encode()).decode()}",
            ],
        }
        headers = {
            "X-Echo-Authorization": auth,
            "WWW-Authenticate": f'Bearer error="invalid_token", token="{key}"',
            "Retry-After": "0",
        }
        if status == 302:
            headers["Location"] = (
                f"http://u:{quote(key, safe='')}@127.0.0.2:9/moved?api_key={quote(key)}&k={key}"
            )
        return web.json_response(body, status=status, headers=headers)

    async def _handle(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if request.path == "/events/list" and self.answer != "redirect":
            key = auth.removeprefix("Bearer ")
            # Ids that hold the key are no ids to export: only "purchase" is.
            return web.json_response(
                {"message": "success", "events": ["purchase", key, f"x-{key}-y"]}
            )
        segment = request.query.get("segment_id", "")
        want = self.answer or ("redirect" if segment == "redirect" else segment[1:] or "400")
        if want == "k" and request.path == "/sessions/data_series":  # segment "ok"
            end = date.fromisoformat(request.query["ending_at"][:10])
            days = int(request.query["length"])
            data = [
                {"time": (end - timedelta(days=i)).isoformat(), "sessions": 7} for i in range(days)
            ]
            return web.json_response({"message": "success", "data": data})
        status = 302 if want == "redirect" else int(want)
        once = f"{request.path}?{request.query_string}"
        if status in (429, 500, 502, 503) and once in self.seen:
            status = 400
        self.seen.add(once)
        return self._echo(status, auth)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    with serving(EchoServer()) as server:
        yield server


CONFIG = """\
version: 1
timezone: UTC
limits: {{concurrency: 2}}
output: {{dir: out, format: parquet}}
exports:
  - name: sessions
    segment_ids: [{segments}]
    window: {{days: 3}}
  - name: events
    series: events
    events: {{discover: all}}
    window: {{days: 2}}
"""
# One run meets every status a series survives; 401, 403 and a redirect each stop a run.
RUNS = {
    "400 404 429 5xx": "ok, s400, s404, s429, s500, s502, s503",
    "401": "s401",
    "403": "s403",
    "redirect": "redirect",
}


def _cli(tmp_path: Path, url: str, *args: str) -> tuple[int, bytes, bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update(BRAZE_API_KEY=KEY, BRAZE_REST_ENDPOINT=url, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def _leaks(name: str, data: bytes) -> list[str]:
    return [f"{form} in {name}" for form, text in FORMS.items() if text.encode() in data]


def _assert_no_key(tmp_path: Path, *outputs: bytes) -> None:
    """No form of the key in the outputs, nor in any file under ``tmp_path`` (the output
    directory, its state, manifests, journals, Parquet files: every byte)."""
    leaks = [leak for n, data in enumerate(outputs) for leak in _leaks(f"output {n}", data)]
    for path in (p for p in tmp_path.rglob("*") if p.is_file()):
        leaks += _leaks(str(path.relative_to(tmp_path)), path.read_bytes())
    assert not leaks


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("scenario", list(RUNS))
def test_an_echoed_key_reaches_no_output_of_run_and_verify(
    tmp_path: Path, echo: EchoServer, scenario: str, fmt: str
) -> None:
    """Errors that repeat the key in every form (bodies, headers, a redirect): run and
    verify say what went wrong, with *** where the key was."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(segments=RUNS[scenario]), encoding="utf-8")
    logs = ["--log-format", fmt]
    code, out, err = _cli(tmp_path, echo.url, *logs, "run", "config.yaml", "--as-of", "2024-07-01")
    expected = {"400 404 429 5xx": 1, "401": 3, "403": 3, "redirect": 4}[scenario]
    assert code == expected, err.decode()
    if scenario != "redirect":
        assert b"invalid key: Bearer ***" in out + err  # the echo is there, the key is not
    if fmt == "json":
        assert all(json.loads(line) for line in err.decode().splitlines())
    v_code, v_out, v_err = _cli(tmp_path, echo.url, *logs, "verify", "out")
    assert v_code == 0, v_out + v_err
    assert list(tmp_path.glob("out/.braze-export/state*.sqlite"))  # walked below, byte by byte
    if scenario == "400 404 429 5xx":
        assert list(tmp_path.glob("out/**/*.parquet"))  # segment "ok"'s rows
    _assert_no_key(tmp_path, out, err, v_out, v_err)


@pytest.mark.parametrize(
    ("status", "fmt"),
    [
        ("400", "text"),
        ("401", "json"),
        ("403", "text"),
        ("404", "json"),
        ("429", "text"),
        ("500", "json"),
        ("503", "text"),
        ("redirect", "json"),
    ],
)
def test_an_echoed_key_reaches_no_output_of_doctor(
    tmp_path: Path, echo: EchoServer, status: str, fmt: str
) -> None:
    """doctor's lines and verdict name what the server said, never the key."""
    echo.answer = status
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(segments="s1").replace("parquet", "jsonl"), "utf-8")
    code, out, err = _cli(tmp_path, echo.url, "--log-format", fmt, "doctor", "config.yaml")
    assert code == {"401": 3, "403": 3, "404": 4, "redirect": 4}.get(status, 1), out + err
    if status in ("401", "403"):
        assert b"invalid key: Bearer ***" in out
    assert [p.name for p in tmp_path.rglob("*")] == ["config.yaml"]  # doctor writes nothing
    _assert_no_key(tmp_path, out, err)


def test_a_redirect_is_refused_naming_only_its_host(tmp_path: Path, echo: EchoServer) -> None:
    """A 3xx is never followed, from a list endpoint either (discovery comes first): exit 4,
    one line naming the Location's scheme and host (to set braze.endpoint to), never its
    user, path or query."""
    echo.answer = "redirect"
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(segments="s1").replace("parquet", "jsonl"), "utf-8")
    code, _, err = _cli(tmp_path, echo.url, "run", "config.yaml", "--as-of", "2024-07-01")
    assert code == 4
    errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert f"set braze.endpoint to {REDIRECT_HOST}" in errors[0]
    for part in ("u:", "/moved", "api_key"):  # user, path, query
        assert part not in errors[0]


def test_a_key_too_short_to_redact_is_exit_2(tmp_path: Path, echo: EchoServer) -> None:
    """A 1-character key is refused with one line, before any request."""
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(segments="ok"), "utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env.update(BRAZE_API_KEY="x", BRAZE_REST_ENDPOINT=echo.url, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "run", "config.yaml"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1
    assert "fewer than 16" in done.stderr.decode()
    assert not echo.seen


@pytest.fixture
def registered() -> Iterator[str]:
    register_secret(KEY)
    yield KEY
    forget_secrets()


def test_every_form_of_the_key_is_redacted(registered: str) -> None:
    """As is, in a Bearer header, percent-encoded (either case), JSON-escaped, base64."""
    for form in FORMS.values():
        text = f"before {form} after"
        assert redact(text) == text.replace(form.removeprefix("Bearer "), "***")
        assert not holds_secret(redact(text))
        assert redact_bytes(text.encode()) == redact(text).encode()
    assert redact("nothing to hide") == "nothing to hide"


def test_a_short_secret_is_never_registered() -> None:
    """Redacting a 1-character secret would garble every line: refused."""
    with pytest.raises(ValueError, match="fewer than 16"):
        register_secret("x")
    assert redact("x marks the spot") == "x marks the spot"


def test_a_listed_id_holding_the_key_is_skipped(registered: str) -> None:
    """An id that holds the key (a server echoing it into a list) is skipped as malformed:
    ids become paths, rows and state keys, which are then key-free by construction."""
    body = json.dumps({"events": ["purchase", registered, quote(registered, safe="")]})
    page = interpret_list(LISTS["event"], Response(200, RateHeaders(), body.encode()))
    assert [item.id for item in page.items] == ["purchase"]
    assert page.malformed == 2


@pytest.mark.parametrize("argv", [["validate", "nope.yaml"], ["run", "--bogus"]])
def test_json_logs_make_every_stderr_line_json(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--log-format json: the error lines a command ends with (a config error, a usage
    error found before the option itself is parsed) are JSON records too."""
    try:
        code = main(["--log-format", "json", *argv])
    except SystemExit as exc:  # argparse's way out
        code = int(exc.code or 0)
    assert code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines
    for line in lines:
        record = json.loads(line)
        assert (record["level"], record["event"]) == ("error", "error")
        assert record["message"].startswith("error: ")


def test_json_logs_on_a_terminal_draw_no_progress_line(tmp_path: Path) -> None:
    """On a terminal, --log-format json still writes progress as records, never the
    redrawn line of text mode."""
    parent, child = os.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRAZE_")}
    env["PYTHONPATH"] = str(ROOT)
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.format(segments="a, b").replace("parquet", "jsonl"), "utf-8")
    args = ["--log-format", "json", "run", "config.yaml", "--sandbox", "--as-of", "2024-07-01"]
    with subprocess.Popen(
        [sys.executable, "-m", "exporter", *args, "--progress-interval", "0.01"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=child,
    ) as proc:
        os.close(child)
        err = b""
        with contextlib.suppress(OSError):  # EIO once the child has closed its end
            while chunk := os.read(parent, 65536):
                err += chunk
        assert proc.wait(60) == 0
    os.close(parent)
    lines = err.decode().splitlines()
    assert any(json.loads(line)["event"] == "progress" for line in lines)
    assert b"\x1b[2K" not in err


# A key with a backslash and both quotes: escaping changes it in every language.
ODD_KEY = "Zk3y+/ab=c%20\"d\\e'-0123456789abcdef"


@pytest.mark.parametrize(
    "form",
    [
        quote(quote(ODD_KEY, safe=""), safe=""),
        quote(quote(ODD_KEY, safe=""), safe="").lower(),
        quote(quote_plus(ODD_KEY, safe=""), safe=""),
        repr(ODD_KEY)[1:-1],
        ODD_KEY.replace("\\", "\\\\"),
        json.dumps(json.dumps(ODD_KEY))[3:-3],
    ],
    ids=["double quote", "double quote lowercase", "quote of quote_plus", "repr", "\\\\", "json"],
)
def test_doubly_encoded_and_escaped_forms_are_redacted(form: str) -> None:
    """A URL inside a URL, Python's repr, backslashes doubled, JSON inside a JSON string: the
    key in none of them gets past the mask, in text or bytes."""
    register_secret(ODD_KEY)
    try:
        text = f"echo: {form}!"
        assert redact(text) == "echo: ***!"
        assert redact_bytes(text.encode()) == b"echo: ***!"
    finally:
        forget_secrets()


def test_a_listed_id_holding_the_key_in_any_form_or_case_is_skipped(registered: str) -> None:
    """An id holding the key upper-cased (which percent-encoding into a path would mask), or
    in any other registered form, is skipped like one holding it as it is."""
    held = [
        f"evt {registered.upper()}",
        quote(registered, safe="").upper(),
        "p-" + base64.b64encode(registered.encode()).decode(),
        quote(quote(registered, safe=""), safe=""),
    ]
    body = json.dumps({"events": ["purchase", *held]})
    page = interpret_list(LISTS["event"], Response(200, RateHeaders(), body.encode()))
    assert [item.id for item in page.items] == ["purchase"]
    assert page.malformed == len(held)


ENDPOINT_KEY = "abcd1234efgh5678ijkl9012"


@pytest.mark.parametrize("command", ["run", "validate", "plan", "doctor"])
@pytest.mark.parametrize("where", ["env", "config"])
def test_a_key_in_a_refused_endpoint_is_masked_in_the_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    where: str,
) -> None:
    """The key pasted as the endpoint's path ($BRAZE_REST_ENDPOINT, or braze.endpoint with
    the variable the file names): exit 2, the error says why, with *** for the key."""
    for name in [n for n in os.environ if n.startswith("BRAZE_")]:
        monkeypatch.delenv(name)
    endpoint = f"https://rest.iad-01.braze.com/{ENDPOINT_KEY}"
    config = tmp_path / "config.yaml"
    text = CONFIG.format(segments="s1")
    if where == "env":
        monkeypatch.setenv("BRAZE_API_KEY", ENDPOINT_KEY)
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", endpoint)
    else:
        monkeypatch.setenv("MY_KEY", ENDPOINT_KEY)
        text += f"braze: {{endpoint: '{endpoint}', api_key_env: MY_KEY}}\n"
    config.write_text(text, encoding="utf-8")
    assert main([command, str(config)]) == 2
    out, err = capsys.readouterr()
    assert "without a path (got path '/***')" in err
    assert ENDPOINT_KEY not in out + err


def test_a_config_id_or_output_holding_the_key_is_refused(
    tmp_path: Path, env_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An id or output.dir holding the key (it would name directories and go into the
    state, masked in the rows and manifest) is refused by validate and run, exit 2, one line
    each and nothing written; so is --out or --work-dir holding it."""
    config = tmp_path / "c.yaml"
    out = tmp_path / f"out-{env_key}"
    config.write_text(
        f"version: 1\noutput: {{dir: '{out}'}}\nexports:\n  - name: n\n"
        f"    segment_ids: [ok, 'x-{env_key}']\n    window: {{days: 2}}\n"
    )
    for command in (["validate"], ["run", "--sandbox"]):
        assert main([*command, str(config)]) == 2
        err = capsys.readouterr().err
        assert "exports[0].segment_ids[1]: holds the API key" in err
        assert "output.dir: holds the API key" in err
        assert env_key not in err
    assert not out.exists()
    config.write_text(
        "version: 1\nexports:\n  - name: n\n    segment_ids: [ok]\n    window: {days: 2}\n"
    )
    for option in ("--out", "--work-dir"):
        assert main(["run", str(config), "--sandbox", option, str(out)]) == 2
        assert f"{option}: holds the API key" in capsys.readouterr().err
    assert not out.exists()
