"""Output on object storage: runs, merges, kill -9 and resume, the lock and verify against a
real S3 server (moto's) on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from exporter.cli import main
from exporter.errors import DirectoryBusy
from exporter.remote import (
    LOCK_TTL_S,
    STORE_ATTEMPTS,
    ObjectStore,
    RemoteLock,
    StorageError,
    remote_holder,
)
from exporter.sandbox import sandbox_stats
from tests.conftest import KEY, Cli, ServerHandle, snapshot, wait_for
from tests.denied import denied_dir
from tests.s3faults import Fault, FaultyS3, is_lock_create

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


def _objects(url: str, under: str = "sessions") -> dict[str, bytes]:
    store = ObjectStore.open(url)
    try:
        return {name: store.get(name) or b"" for name in store.list(under)}
    finally:
        store.close()


def _run_in(cli: Cli, cfg: Path, work: Path) -> int:
    """A run of ``cfg`` as of AS_OF with its own local work directory: its exit status."""
    return cli("run", cfg, "--as-of", AS_OF, "--work-dir", work).code


def _local_then_remote(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli
) -> dict[str, bytes]:
    """One sandbox run into a local directory, one into ``bucket``: the local files."""
    with cli.sandbox(limit=0):
        local = tmp_path / "local"
        assert cli("run", write_config(_config(str(local)), "l.yaml"), "--as-of", AS_OF).code == 0
        assert _run_in(cli, write_config(_config(bucket), "r.yaml"), tmp_path / "w") == 0
    return snapshot(local)


@contextmanager
def _after_a_run(cli: Cli, cfg: Path, work: Path) -> Iterator[ServerHandle]:
    """A sandbox whose clock stands at 06:00 UTC on AS_OF, after one complete run of ``cfg``."""
    now = datetime(2024, 7, 1, 6, tzinfo=UTC).timestamp()
    with cli.sandbox(clock=lambda: now) as server:
        assert _run_in(cli, cfg, work) == 0
        yield server


def test_a_run_writes_the_same_objects_as_a_local_run(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A run into s3:// writes byte for byte the files a local run writes, and a manifest."""
    expected = _local_then_remote(tmp_path, bucket, write_config, cli)
    assert len(expected) > 20
    assert _objects(bucket) == expected
    runs = _objects(bucket, "_runs")
    assert [name.endswith(".json") for name in runs] == [True]  # manifest only, no journal
    manifest = json.loads(next(iter(runs.values())))
    assert {f["path"] for f in manifest["files"]} == set(expected)
    (lock,) = _objects(bucket, ".braze-export/lock").values()
    assert json.loads(lock)["released"] is True  # kept, so the next run's epoch is higher


def test_restatements_merge_into_the_current_objects(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A rerun over restated days reads each object, replaces those rows, adds none, and the
    objects equal what the same two runs leave in a local directory."""
    now = datetime(2024, 7, 1, 6, tzinfo=UTC).timestamp()
    local = tmp_path / "local"
    configs = [
        write_config(_config(str(local)), "l.yaml"),
        write_config(_config(bucket), "r.yaml"),
    ]
    with cli.sandbox(clock=lambda: now):
        for cfg in configs:
            assert cli("run", cfg, "--as-of", AS_OF).code == 0
    before = _objects(bucket)
    with cli.sandbox(clock=lambda: now, restate=7):
        for cfg in configs:
            assert cli("run", cfg, "--as-of", AS_OF, "--fresh").code == 0
    after = _objects(bucket)
    assert after == snapshot(local)
    name = "sessions/day/segment-seg-0/workspace/2024-06.jsonl"
    old = [json.loads(line) for line in before[name].splitlines()]
    new = [json.loads(line) for line in after[name].splitlines()]
    assert [r["time"] for r in new] == [r["time"] for r in old]  # no row added
    changed = [b["time"] for b, a in zip(old, new, strict=True) if b != a]
    assert changed == ["2024-06-28", "2024-06-29", "2024-06-30"]


def test_a_rerun_on_an_empty_local_disk_resumes_from_the_checkpoint(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """The final checkpoint puts the resume state in the prefix: a rerun with a new work dir
    fetches nothing again."""
    cfg = write_config(_config(bucket))
    with cli.sandbox(limit=0) as server:
        assert _run_in(cli, cfg, tmp_path / "a") == 0
        first = sandbox_stats(server.app).requests
        assert _run_in(cli, cfg, tmp_path / "b") == 0
        assert sandbox_stats(server.app).requests == first
    assert ".braze-export/state.sqlite" in _objects(bucket, ".braze-export")


def test_plan_reads_the_checkpointed_state_in_the_prefix(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """plan of an object storage output reads the state checkpointed there and changes no
    object: after a complete run, the next run of the same day sends nothing."""
    cfg = write_config(_config(bucket))
    with cli.sandbox(limit=0):
        assert _run_in(cli, cfg, tmp_path / "a") == 0
    before = {**_objects(bucket), **_objects(bucket, ".braze-export")}
    planned = cli("plan", cfg, "--as-of", AS_OF)
    assert planned.code == 0
    text = planned.out
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
    """kill -9 mid-run after a checkpoint, rerun with a new, empty work dir: the objects equal
    a clean run's, and the rerun resumes from the checkpoint instead of fetching it all."""
    clean = bucket.replace("/exports", "/clean")
    with sandbox_server(limit=0) as server:
        cfg = write_config(_config(clean, segments=10), "clean.yaml")
        assert _run(cfg, _env(s3_env, server.url), tmp_path / "clean").wait(180) == 0
        planned = sandbox_stats(server.app).requests
    expected = _objects(clean)
    cfg = write_config(_config(bucket, segments=10), "killed.yaml")
    answered = 40  # of 88; then the run waits mid-way, checkpointing every 0.5 s
    with sandbox_server(limit=0, gate=asyncio.Event(), gate_after=answered) as server:
        env = _env(s3_env, server.url)
        killed = _run(cfg, env, tmp_path / "disk-1", "--checkpoint-interval", "0.5")
        wait_for(lambda: _checkpointed_periods(bucket) > 0, "a checkpoint with periods in it")
        killed.send_signal(signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
        assert _objects(bucket) != expected
        assert _objects(bucket, ".braze-export/lock"), "a killed run leaves its lock"
        fetched = sandbox_stats(server.app).requests
        # The dead run's lock blocks a rerun until it expires; expire it, as time would.
        _expire_lock(bucket)
        server.open_gate()
        rerun = _run(cfg, env, tmp_path / "disk-2")
        code = rerun.wait(180)
        err = (tmp_path / "disk-2.stderr").read_text()
        assert code == 0, err
        stats = sandbox_stats(server.app)
    assert _objects(bucket) == expected
    assert stats.requests - fetched < planned  # resumed from the checkpoint
    # Only answered requests can be fetched twice, and one at least was checkpointed.
    assert stats.repeated < answered
    assert "took over the expired lock" in err


def _checkpointed_periods(url: str) -> int:
    """How many periods the prefix's checkpointed state records (0 before a checkpoint)."""
    data = _objects(url, ".braze-export").get(".braze-export/state.sqlite")
    if not data:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "state.sqlite")
        path.write_bytes(data)
        db = sqlite3.connect(path)
        try:
            (count,) = db.execute("SELECT coalesce(sum(hi - lo + 1), 0) FROM periods").fetchone()
        finally:
            db.close()
    return int(count)


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
        assert store.create(".braze-export/lock/000000000001.json", b'{"token": "a"}')
        assert not store.create(".braze-export/lock/000000000001.json", b'{"token": "b"}')
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
    store = ObjectStore.open(f"{bucket}/aba")
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


@pytest.fixture
def faulty_s3(
    s3_env: dict[str, str], bucket: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultyS3]:
    """A fault-injecting proxy in front of moto (the bucket exists), and the environment
    pointed at the proxy."""
    with FaultyS3(s3_env["AWS_ENDPOINT_URL"]) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


def _lock_put(request: Any) -> bool:  # a renewal or the release: no condition
    return (
        request.method == "PUT"
        and "/.braze-export/lock/" in request.path
        and not (is_lock_create(request))
    )


_ONE_FAULT = {
    "lock create answer lost": Fault(is_lock_create, ("lost",)),
    "lock create 409": Fault(is_lock_create, ("409",)),
    "lock renewal answer lost": Fault(_lock_put, ("lost",)),
    "checkpoint answer lost": Fault(
        lambda r: r.method == "PUT" and r.path.endswith("/.braze-export/state.sqlite"), ("lost",)
    ),
    "journal removal answer lost": Fault(
        lambda r: r.method == "DELETE" and r.path.endswith(".journal.jsonl"), ("lost",)
    ),
}


@pytest.fixture
def small_run(
    bucket: str,
    write_config: Callable[..., Path],
    env_key: str,
    capsys: pytest.CaptureFixture[str],
) -> Callable[[], tuple[int, str]]:
    """A small sandbox run into ``bucket``, in-process: its exit status and stderr."""

    def run() -> tuple[int, str]:
        cfg = write_config(_config(bucket, segments=1, days=2))
        code = main(["run", str(cfg), "--sandbox", "--out", bucket])
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize("fault", list(_ONE_FAULT))
def test_a_write_that_fails_once_does_not_fail_the_run(
    fault: str, bucket: str, faulty_s3: FaultyS3, small_run: Callable[[], tuple[int, str]]
) -> None:
    """One lost answer or 409 on a bookkeeping write: the write is sent again, and a create
    that then finds its lock recognises it as its own (its token): exit 0, no warning but
    the retry's."""
    faulty_s3.faults.append(_ONE_FAULT[fault])
    code, err = small_run()
    assert code == 0, err
    assert faulty_s3.faults[0].hits == 1, "the fault never applied: the test tests nothing"
    noted = [line for line in err.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert all("trying again in" in line for line in noted), err  # only the retry, said once
    assert "in use by another run" not in err
    faulty_s3.faults.clear()
    assert [n.endswith(".json") for n in _objects(bucket, "_runs")] == [True]  # journal gone
    (lock,) = _objects(bucket, ".braze-export/lock").values()
    assert json.loads(lock)["released"] is True


def test_a_409_on_the_lock_create_is_retried_after_a_backoff(
    bucket: str, faulty_s3: FaultyS3
) -> None:
    """S3 answers 409 ConditionalRequestConflict when a conditional create races a delete, and
    AWS says to retry: one backoff (on the injected sleep), then the lock is ours."""
    faulty_s3.faults.append(Fault(is_lock_create, ("409",)))
    sleeps: list[float] = []
    store = ObjectStore.open(bucket, sleep=sleeps.append)
    try:
        lock = RemoteLock.acquire(store, layout="x", shard=None, command="braze-export run")
        holder = remote_holder(store)
        assert holder is not None
        assert holder.token == lock.token
        assert len(sleeps) == 1
        assert faulty_s3.count(lambda seen: seen.conditional) == 2
        lock.release()
    finally:
        store.close()


def test_a_store_that_answers_only_errors_gives_up_after_a_bounded_number_of_attempts(
    bucket: str, faulty_s3: FaultyS3
) -> None:
    """Every store call is tried STORE_ATTEMPTS times at most, with a few seconds of backoff
    in all, and the error names the object and the last answer."""
    faulty_s3.faults.append(Fault(lambda _: True, ("503",), times=None))
    sleeps: list[float] = []
    store = ObjectStore.open(bucket, sleep=sleeps.append)
    try:
        with pytest.raises(StorageError, match=f"cannot list {bucket}/x: HTTP 503 SlowDown"):
            store.list("x")
    finally:
        store.close()
    assert faulty_s3.count() == STORE_ATTEMPTS
    assert len(sleeps) == STORE_ATTEMPTS - 1
    assert sum(sleeps) <= 3.0


def test_a_store_down_from_the_start_is_exit_4_naming_it(
    bucket: str, faulty_s3: FaultyS3, small_run: Callable[[], tuple[int, str]]
) -> None:
    """500s, 503 SlowDown and resets from the first request: exit 4 (the output cannot be
    written, not a config error), one line naming the prefix and the last error, no
    credentials, after STORE_ATTEMPTS requests."""
    faulty_s3.faults.append(Fault(lambda _: True, ("500", "reset", "503"), times=None))
    code, err = small_run()
    assert code == 4, err
    (line,) = [line for line in err.splitlines() if line.startswith("error")]
    assert bucket in line
    last = faulty_s3.seen[-1].action
    assert {"500": "HTTP 500", "503": "HTTP 503", "reset": "onnection"}[last] in line
    assert "testing" not in err  # the access key id and secret of the test environment
    # aiohttp sends an idempotent request once more when a reused connection was reset
    assert STORE_ATTEMPTS <= faulty_s3.count() <= 2 * STORE_ATTEMPTS


def test_a_work_dir_the_user_cannot_write_is_exit_4_naming_it(
    tmp_path: Path, bucket: str, s3_env: dict[str, str], write_config: Callable[..., Path]
) -> None:
    """A --work-dir owned by another uid (a volume mounted for someone else): exit 4, one
    line naming the directory and the fix, and the prefix is not left locked."""
    cfg = write_config(_config(bucket, segments=1, days=2))
    with denied_dir(tmp_path) as denied:
        work = denied.dir / "w"
        argv = [sys.executable, "-m", "exporter", "run", str(cfg), "--sandbox", "--out", bucket]
        done = subprocess.run(
            [*denied.prefix, *argv, "--work-dir", str(work)],
            env=_env(s3_env, "http://127.0.0.1:9"),
            capture_output=True,
            timeout=60,
            check=False,
        )
    err = done.stderr.decode()
    assert done.returncode == 4, err
    assert err.splitlines()[-1].startswith(
        f"error: {work}: cannot keep the resume state (Permission denied): {denied.dir} (owned"
    )
    store = ObjectStore.open(bucket)
    try:
        assert remote_holder(store) is None
    finally:
        store.close()


def _damage(store: ObjectStore, name: str, how: str) -> None:
    data = store.get(name) or b""
    if how == "deleted":
        store.delete(name)
    elif how == "truncated":
        store.put_sync(name, data[: len(data) // 2])
    else:  # replaced by another partition's object, whole and valid
        store.put_sync(name, store.get(name.replace("seg-0", "seg-1")) or b"")


@pytest.mark.parametrize("how", ["deleted", "truncated", "replaced"])
def test_a_damaged_object_is_fetched_again_and_verify_passes(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str, how: str
) -> None:
    """An object deleted, truncated or replaced under the prefix: plan says so and the one
    request (changing no object); the rerun's one listing finds it, one request fetches its
    10 periods again, exit 0, and verify passes. The warning of a changed object says that a
    run killed after its last checkpoint leaves such objects too."""
    cfg = write_config(_config(bucket))
    name = "sessions/day/segment-seg-0/workspace/2024-06.jsonl"
    with _after_a_run(cli, cfg, tmp_path / "a") as server:
        before = _objects(bucket)
        sent = sandbox_stats(server.app).requests
        store = ObjectStore.open(bucket)
        _damage(store, name, how)
        store.close()
        damaged = {**_objects(bucket), **_objects(bucket, ".braze-export")}
        plan = cli("plan", cfg, "--as-of", AS_OF, "--json")
        assert plan.code == 0
        planned = json.loads(plan.out)
        assert {**_objects(bucket), **_objects(bucket, ".braze-export")} == damaged
        assert planned["totals"]["requests"] == 1
        assert planned["file_check"]["periods_taken_back"] == 10
        assert planned["file_check"][f"files_{'missing' if how == 'deleted' else 'changed'}"] == 1
        rerun = cli("run", cfg, "--as-of", AS_OF, "--work-dir", tmp_path / "b")
        assert rerun.code == 0
        assert sandbox_stats(server.app).requests == sent + 1
    # The warning names the innocent cause too: a run killed after its last checkpoint.
    killed = "a run killed after its last checkpoint leaves such objects"
    assert (killed in rerun.err) == (how != "deleted")
    assert _objects(bucket) == before
    docs = [json.loads(data) for n, data in _objects(bucket, "_runs").items() if n.endswith("n")]
    check = max(docs, key=lambda doc: doc["sequence"])["file_check"]
    assert check[f"files_{'missing' if how == 'deleted' else 'changed'}"] == 1
    assert (check["periods_taken_back"], check["periods_refetched"]) == (10, 10)
    assert main(["verify", bucket]) == 0


def test_a_rerun_after_the_run_records_are_deleted_leaves_a_verify_that_passes(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """Every object under _runs/ deleted: the rerun, with nothing to fetch, vouches for the
    objects as they are in its manifest, and verify passes."""
    cfg = write_config(_config(bucket))
    with _after_a_run(cli, cfg, tmp_path / "a") as server:
        store = ObjectStore.open(bucket)
        for record in store.list("_runs"):
            store.delete(record)
        store.close()
        sent = sandbox_stats(server.app).requests
        assert _run_in(cli, cfg, tmp_path / "b") == 0
        assert sandbox_stats(server.app).requests == sent
    assert main(["verify", bucket]) == 0


def test_an_object_no_run_wrote_is_moved_aside_never_merged_into(
    tmp_path: Path, bucket: str, write_config: Callable[..., Path], cli: Cli, env_key: str
) -> None:
    """A parseable object no run wrote, where a run writes: copied to displaced/ and
    replaced by Braze's rows alone, as a local run does; verify passes."""
    name = "sessions/day/segment-seg-0/workspace/2024-06.jsonl"
    planted = b'{"time": "2024-06-28", "sessions": 666, "segment_id": "EVIL", "unit": "day"}\n'
    store = ObjectStore.open(bucket)
    store.put_sync(name, planted)
    store.close()
    expected = _local_then_remote(tmp_path, bucket, write_config, cli)
    assert _objects(bucket) == expected
    (aside,) = _objects(bucket, ".braze-export/displaced").values()
    assert aside == planted
    assert main(["verify", bucket]) == 0


def test_plan_and_verify_against_a_store_that_answers_only_errors_exit_4(
    bucket: str,
    faulty_s3: FaultyS3,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """plan writes nothing: a store it cannot read is "cannot read the state" (not "cannot
    write the output"); verify of such a store is exit 4, never 1 (files differ)."""
    faulty_s3.faults.append(Fault(lambda _: True, ("503",), times=None))
    cfg = write_config(_config(bucket, segments=1, days=2))
    assert main(["plan", str(cfg), "--as-of", AS_OF]) == 4
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert line.startswith(f"error: cannot read the state at {bucket}: ")
    assert "HTTP 503" in line
    assert main(["verify", bucket]) == 4
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error")]
    assert line.startswith("error: the object store cannot be read: ")


@pytest.mark.parametrize("prefix", ["s3://b18/../x", "s3://b18/./y", "s3://b18//z", "s3://b/a//b"])
def test_a_prefix_with_an_empty_dot_or_dot_dot_segment_is_refused(
    write_config: Callable[..., Path], prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Such keys are path traversal for whatever syncs the bucket to disk, and another lock
    domain than the prefix meant: exit 2, one line, nothing sent."""
    cfg = write_config(_config("out"))
    assert main(["run", str(cfg), "--sandbox", "--out", prefix]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "the prefix holds an empty, '.' or '..' segment" in line


def test_plan_says_a_prefix_is_locked_by_a_killed_run_until_its_lock_expires(
    bucket: str,
    write_config: Callable[..., Path],
    env_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A run killed with its lock unexpired (kill -9: nothing released): plan names the
    holder, the lock's expiry and object, and that a run exits 5, reading only; the run
    then exits 5 indeed."""
    cfg = write_config(_config(bucket))
    store = ObjectStore.open(bucket)
    killed = RemoteLock.acquire(store, layout="x", shard=None, command="braze-export run killed")
    expires = datetime.fromtimestamp(killed.expires_at, UTC).isoformat(timespec="seconds")
    try:
        before = _objects(bucket, ".braze-export")
        capsys.readouterr()
        assert main(["plan", str(cfg), "--as-of", AS_OF]) == 0
        text = capsys.readouterr().out
        assert (
            f"lock:     held by a run (pid {os.getpid()} on {killed.holder.host}, started "
            f"{killed.holder.started_at}: braze-export run killed) until "
            f"{expires.replace('+00:00', 'Z')} unless it renews it "
            f"({bucket}/.braze-export/lock/000000000001.json): a run now exits 5"
        ) in text
        assert main(["plan", str(cfg), "--as-of", AS_OF, "--json"]) == 0
        lock = json.loads(capsys.readouterr().out)["lock"]
        assert (lock["command"], lock["run_exits"]) == ("braze-export run killed", 5)
        assert lock["expires_at"] == expires.replace("+00:00", "Z")
        assert _objects(bucket, ".braze-export") == before  # not taken, not broken
        assert main(["run", str(cfg), "--as-of", AS_OF]) == 5
    finally:
        killed.release()
        store.close()
    assert main(["plan", str(cfg), "--as-of", AS_OF, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["lock"] is None
