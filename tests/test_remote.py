"""Output on object storage: runs, merges, kill -9 and resume, the lock and verify against a
real S3 server (moto's) on loopback."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.errors import DirectoryBusy
from exporter.remote import LOCK_TTL_S, ObjectStore, RemoteLock, remote_holder
from exporter.sandbox import free_port, sandbox_stats
from tests.conftest import KEY, snapshot

moto_server = pytest.importorskip("moto.server")

AS_OF = "2024-07-01"
ROOT = Path(__file__).parent.parent


def _config(out: str, *, rate: int = 10**8, segments: int = 3, days: int = 10) -> str:
    ids = ", ".join(f"seg-{i}" for i in range(segments))
    return f"""\
version: 1
timezone: Europe/Berlin
limits: {{requests_per_hour: {rate}, concurrency: 4}}
output: {{dir: "{out}"}}
exports:
  - name: all
    segment_ids: [{ids}, "odd/seg id"]
    app_ids: [null, app-1]
    units: [day, hour]
    window: {{days: {days}}}
"""


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """moto's S3 server on 127.0.0.1 and a free port; the environment that points the AWS
    credential chain and endpoint at it (and at nothing else)."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    home = tmp_path_factory.mktemp("aws")
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    yield env
    server.stop()


@pytest.fixture
def bucket(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """A new, empty bucket; its ``s3://`` URL with a prefix."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    name = f"test-{secrets.token_hex(6)}"
    store = ObjectStore.open(f"s3://{name}")
    store.fs.mkdir(name)
    store.close()
    return f"s3://{name}/exports"


def _objects(url: str, under: str = "sessions") -> dict[str, bytes]:
    store = ObjectStore.open(url)
    try:
        return {name: store.get(name) or b"" for name in store.list(under)}
    finally:
        store.close()


def test_a_run_writes_the_same_objects_as_a_local_run(
    tmp_path: Path,
    bucket: str,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A run into s3:// writes byte for byte the files a local run writes, and a manifest."""
    with sandbox_server(limit=0) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        local = tmp_path / "local"
        assert (
            main(["run", str(write_config(_config(str(local)), "l.yaml")), "--as-of", AS_OF]) == 0
        )
        cfg = write_config(_config(bucket), "r.yaml")
        assert main(["run", str(cfg), "--as-of", AS_OF, "--work-dir", str(tmp_path / "w")]) == 0
    expected = snapshot(local)
    assert len(expected) > 20
    assert _objects(bucket) == expected
    runs = _objects(bucket, "_runs")
    assert [name.endswith(".json") for name in runs] == [True]  # manifest only, no journal
    manifest = json.loads(next(iter(runs.values())))
    assert {f["path"] for f in manifest["files"]} == set(expected)
    (lock,) = _objects(bucket, ".braze-export/lock").values()
    assert json.loads(lock)["released"] is True  # kept, so the next run's epoch is higher


def test_restatements_merge_into_the_current_objects(
    tmp_path: Path,
    bucket: str,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rerun over restated days reads each object, replaces those rows, adds none, and the
    objects equal what the same two runs leave in a local directory."""
    now = datetime(2024, 7, 1, 6, tzinfo=UTC).timestamp()
    local = tmp_path / "local"
    configs = [
        write_config(_config(str(local)), "l.yaml"),
        write_config(_config(bucket), "r.yaml"),
    ]
    with sandbox_server(clock=lambda: now) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        for cfg in configs:
            assert main(["run", str(cfg), "--as-of", AS_OF]) == 0
    before = _objects(bucket)
    with sandbox_server(clock=lambda: now, restate=7) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        for cfg in configs:
            assert main(["run", str(cfg), "--as-of", AS_OF, "--fresh"]) == 0
    after = _objects(bucket)
    assert after == snapshot(local)
    name = "sessions/day/segment-seg-0/workspace/2024-06.jsonl"
    old = [json.loads(line) for line in before[name].splitlines()]
    new = [json.loads(line) for line in after[name].splitlines()]
    assert [r["time"] for r in new] == [r["time"] for r in old]  # no row added
    changed = [b["time"] for b, a in zip(old, new, strict=True) if b != a]
    assert changed == ["2024-06-28", "2024-06-29", "2024-06-30"]


def test_a_rerun_on_an_empty_local_disk_resumes_from_the_checkpoint(
    tmp_path: Path,
    bucket: str,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The final checkpoint puts the resume state in the prefix: a rerun with a new work dir
    fetches nothing again."""
    cfg = write_config(_config(bucket))
    with sandbox_server(limit=0) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        assert main(["run", str(cfg), "--as-of", AS_OF, "--work-dir", str(tmp_path / "a")]) == 0
        first = sandbox_stats(server.app).requests
        assert main(["run", str(cfg), "--as-of", AS_OF, "--work-dir", str(tmp_path / "b")]) == 0
        assert sandbox_stats(server.app).requests == first
    assert ".braze-export/state.sqlite" in _objects(bucket, ".braze-export")


def test_plan_reads_the_checkpointed_state_in_the_prefix(
    tmp_path: Path,
    bucket: str,
    write_config: Callable[..., Path],
    sandbox_server: Any,
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan of an object storage output reads the state checkpointed there and changes no
    object: after a complete run, the next run of the same day sends nothing."""
    cfg = write_config(_config(bucket))
    with sandbox_server(limit=0) as server:
        monkeypatch.setenv("BRAZE_REST_ENDPOINT", server.url)
        assert main(["run", str(cfg), "--as-of", AS_OF, "--work-dir", str(tmp_path / "a")]) == 0
    before = {**_objects(bucket), **_objects(bucket, ".braze-export")}
    capsys.readouterr()
    assert main(["plan", str(cfg), "--as-of", AS_OF]) == 0
    text = capsys.readouterr().out
    assert f"state:    {bucket}: " in text
    assert "requests: 0 (for 0 periods" in text
    assert {**_objects(bucket), **_objects(bucket, ".braze-export")} == before


def _env(s3: dict[str, str], url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRAZE_", "AWS_"))}
    env.update(s3, BRAZE_API_KEY=KEY, BRAZE_REST_ENDPOINT=url, PYTHONPATH=str(ROOT))
    return env


def _run(cfg: Path, env: dict[str, str], work: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``braze-export run`` in a subprocess; stderr goes to ``{work}.stderr``."""
    argv = [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF]
    argv += ["--work-dir", str(work), *extra]
    with work.with_suffix(".stderr").open("wb") as err:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)


@pytest.mark.slow
def test_kill_9_then_rerun_on_an_empty_disk_gives_the_clean_runs_objects(
    tmp_path: Path,
    bucket: str,
    s3_env: dict[str, str],
    write_config: Callable[..., Path],
    sandbox_server: Any,
) -> None:
    """kill -9 mid-run, rerun with a new, empty work dir: the objects equal a clean run's,
    and only the requests after the last checkpoint are fetched again."""
    clean = bucket.replace("/exports", "/clean")
    with sandbox_server(limit=0) as server:
        cfg = write_config(_config(clean, segments=10), "clean.yaml")
        assert _run(cfg, _env(s3_env, server.url), tmp_path / "clean").wait(60) == 0
        planned = sandbox_stats(server.app).requests
    expected = _objects(clean)
    # 88 requests paced at 50/s: ~1.8 s of requests; checkpoints every 0.5 s.
    cfg = write_config(_config(bucket, rate=180_000, segments=10), "killed.yaml")
    with sandbox_server(limit=0) as server:
        env = _env(s3_env, server.url)
        killed = _run(cfg, env, tmp_path / "disk-1", "--checkpoint-interval", "0.5")
        deadline = time.monotonic() + 30
        while ".braze-export/state.sqlite" not in _objects(bucket, ".braze-export"):
            assert time.monotonic() < deadline, "no checkpoint within 30 s"
            time.sleep(0.05)
        time.sleep(0.3)  # past the checkpoint, before the next one
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(10) == -signal.SIGKILL
        assert _objects(bucket) != expected, "the kill came too late to test anything"
        assert _objects(bucket, ".braze-export/lock"), "a killed run leaves its lock"
        fetched = sandbox_stats(server.app).requests
        # The dead run's lock blocks a rerun until it expires; expire it, as time would.
        _expire_lock(bucket)
        rerun = _run(cfg, env, tmp_path / "disk-2")
        code = rerun.wait(60)
        err = (tmp_path / "disk-2.stderr").read_text()
        assert code == 0, err
        stats = sandbox_stats(server.app)
    assert _objects(bucket) == expected
    assert stats.requests - fetched < planned  # resumed from the checkpoint
    # One checkpoint interval, in flight (concurrency 4) and waiting for their writes (4
    # more), slack.
    assert stats.repeated <= 0.5 * 50 + 2 * 4 + 5
    assert "took over the expired lock" in err


def _expire_lock(url: str) -> None:
    store = ObjectStore.open(url)
    try:
        for name in store.list(".braze-export/lock"):
            doc = json.loads(store.get(name) or b"{}")
            doc["expires_epoch"] = time.time() - 1
            store.put_sync(name, json.dumps(doc).encode())
    finally:
        store.close()


def test_a_second_run_on_a_held_prefix_exits_5_naming_the_holder(
    bucket: str,
    write_config: Callable[..., Path],
    env_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """While a live run holds the prefix, another run is refused up front with exit 5."""
    store = ObjectStore.open(bucket)
    holder = RemoteLock.acquire(store, layout="x", shard=None, command="braze-export run other")
    try:
        code = main(["run", str(write_config(_config(bucket))), "--sandbox", "--out", bucket])
        assert code == 5
        err = capsys.readouterr().err
        assert "braze-export run other" in err
        assert f"pid {os.getpid()}" in err
        assert _objects(bucket) == {}
    finally:
        holder.release()
        store.close()


def test_an_expired_lock_is_taken_over_and_its_holder_learns_it(bucket: str) -> None:
    """A crashed holder's lock expires: the next run takes the prefix, and the old holder, if
    it was only stalled, finds out at its next renewal."""
    store = ObjectStore.open(bucket)
    try:
        old = RemoteLock.acquire(
            store, layout="x", shard=None, command="old", now=time.time() - 2 * LOCK_TTL_S
        )
        new = RemoteLock.acquire(store, layout="x", shard=None, command="new")
        assert new.epoch == old.epoch + 1
        assert new.holder.sequence > old.holder.sequence
        assert store.list(".braze-export/lock") == [new.name]
        with pytest.raises(DirectoryBusy, match="took the prefix over"):
            old.renew()
        new.renew()
        holder = remote_holder(store)
        assert holder is not None
        assert holder.command == "new"
        new.release()
        assert remote_holder(store) is None
    finally:
        store.close()


def test_the_lock_is_a_conditional_create(bucket: str) -> None:
    """Of two runs that race for one lock epoch, the store lets exactly one create it."""
    store = ObjectStore.open(bucket)
    try:
        assert store.create(".braze-export/lock/000000000001.json", b"{}")
        assert not store.create(".braze-export/lock/000000000001.json", b"{}")
    finally:
        store.close()


def test_verify_checks_every_object_of_a_prefix(
    bucket: str,
    write_config: Callable[..., Path],
    env_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """verify on s3:// passes after a run, and names changed and unknown objects."""
    cfg = write_config(_config(bucket))
    assert main(["run", str(cfg), "--sandbox", "--out", bucket]) == 0
    assert main(["verify", bucket]) == 0
    assert "0 changed, 0 missing, 0 unknown (1 manifest(s))" in capsys.readouterr().out
    store = ObjectStore.open(bucket)
    name = store.list("sessions")[0]
    store.put_sync(name, (store.get(name) or b"") + b"{}\n")
    store.put_sync("sessions/stray.jsonl", b"")
    store.close()
    assert main(["verify", bucket]) == 1
    out = capsys.readouterr().out
    assert f"changed: {name}" in out
    assert "unknown: sessions/stray.jsonl" in out


def test_a_missing_backend_is_a_config_error_naming_the_extra(
    write_config: Callable[..., Path],
    env_key: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """gs:// without gcsfs installed: exit 2 and the pip command that installs it."""
    monkeypatch.setitem(sys.modules, "gcsfs", None)  # makes `import gcsfs` fail
    cfg = write_config(_config("gs://bucket/prefix"))
    assert main(["run", str(cfg), "--sandbox", "--out", "gs://bucket/prefix"]) == 2
    assert "pip install 'braze-export[gcs]'" in capsys.readouterr().err


def test_a_stalled_holder_never_finds_its_epoch_again(bucket: str) -> None:
    """A holds epoch 1 and stalls past its expiry; B takes over and releases; C starts. A's
    renewal must see that it lost the prefix (epochs only grow: released locks are kept)."""
    store = ObjectStore.open(f"s3://{bucket}/aba")
    try:

        def take(now: float | None, ttl_s: float) -> RemoteLock:
            return RemoteLock.acquire(
                store, layout="L", shard=None, command="braze-export run x", now=now, ttl_s=ttl_s
            )

        a = take(1000.0, 10)
        b = take(2000.0, 10)  # A expired: taken over
        b.release()
        c = take(None, 300)
        assert (a.epoch, b.epoch, c.epoch) == (1, 2, 3)
        with pytest.raises(DirectoryBusy, match="took the prefix over"):
            a.renew()
        c.renew()
        c.release()
    finally:
        store.close()
