"""The naive baseline: one request at a time with aiohttp, writing the same files.

Same plan, same HTTP library, same file layout and row format as the exporter; no concurrency,
no merge, no fsync. Run as ``python bench/baseline.py CONFIG OUT_DIR URL AS_OF``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import date
from pathlib import Path

import aiohttp

from exporter.config import load_config
from exporter.plan import build_plan
from exporter.writers import partition_of, partition_path


async def main(config_path: str, out_dir: str, url: str, as_of: str) -> None:
    config = load_config(config_path)
    plan = build_plan(config, date.fromisoformat(as_of))
    headers = {"Authorization": f"Bearer {os.environ['BRAZE_API_KEY']}"}
    async with aiohttp.ClientSession() as session:
        for request in plan.requests:
            async with session.get(
                f"{url}/sessions/data_series", params=request.params(), headers=headers
            ) as resp:
                doc = await resp.json()
            series = request.series
            rows = [
                json.dumps(
                    {
                        "time": p["time"],
                        "sessions": p["sessions"],
                        "segment_id": series.segment_id,
                        "app_id": series.app_id,
                        "unit": series.unit,
                    },
                    ensure_ascii=False,
                )
                for p in doc["data"]
            ]
            first = request.first
            path = partition_path(Path(out_dir), series, partition_of(series, first), "jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
