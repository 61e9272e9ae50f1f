"""6. Object storage: the throughput bench's grid written to s3:// on moto's S3 server.

moto's server runs in its own process on loopback; the sandbox too, unthrottled. The same
grid goes once to a local directory and once to S3, so the table shows what the object store
path costs: one GET (the merge source) and one PUT per partition, no fsync. moto is a Flask
app in one process and is the bottleneck here; a real bucket answers in parallel.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench.common import AS_OF, exporter_env, machine, measure, sandbox, write_config
from bench.throughput import config, row
from exporter.sandbox import free_port


@contextmanager
def moto_server() -> Iterator[dict[str, str]]:
    """moto's S3 server in its own process; the environment that points the AWS chain at it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()  # noqa: S310 - loopback
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        home = Path(tempfile.mkdtemp(prefix="bench-aws-"))
        yield {
            "AWS_ENDPOINT_URL": url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    finally:
        proc.terminate()
        proc.wait(10)


def run(segments: int = 50, apps: int = 40, concurrency: int = 64) -> dict[str, float]:
    requests = segments * apps
    work = Path(tempfile.mkdtemp(prefix="bench-objectstore-"))
    bucket = f"bench-{secrets.token_hex(4)}"
    try:
        with sandbox("--limit", "0") as box, moto_server() as aws:
            env = {**exporter_env(box.url), **aws}
            os.environ.update(aws)  # for the bucket below, in this process
            from exporter.remote import ObjectStore

            store = ObjectStore.open(f"s3://{bucket}")
            store.fs.mkdir(bucket)
            store.close()
            results = {}
            for name, out in (("local jsonl", str(work / "out")), ("s3 jsonl", f"s3://{bucket}/x")):
                cfg = write_config(
                    work / f"{name[:2]}.yaml", config(Path("OUT"), segments, apps, concurrency)
                )
                cfg.write_text(cfg.read_text().replace("dir: OUT", f'dir: "{out}"'))
                argv = [sys.executable, "-m", "exporter", "run", str(cfg), "--as-of", AS_OF]
                argv += ["--work-dir", str(work / "state")]
                results[name] = measure(argv, env=env)
                assert results[name].returncode == 0, results[name].stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"object storage: {requests:,} requests, sandbox and moto's S3 server each in their own "
        f"process on loopback; {machine()}"
    )
    print("| output | requests | wall s | requests/s | CPU ms per request | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, m in results.items():
        print(row(f"{name} (concurrency {concurrency})", requests, m))
    return {name: requests / m.wall_s for name, m in results.items()}


if __name__ == "__main__":
    run()
