"""The bare aiohttp script the command line is measured against, run as a file of its own:

    python benchmarks/bare_sweep.py IDS_FILE OUT_JSONL [CONCURRENCY]

What a user would write instead of ``phala-async sweep --ids-file IDS_FILE -o OUT_JSONL``: the same
credential and base URL variables, the same ids file, one aiohttp session, a semaphore, and one
JSON line per id (``{"cvm_id": ..., "ok": true, "cvm": {...}}``, or ``"ok": false`` with the
status). No retries, no types, no id checks; concurrency 16, the command line's default.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, TextIO

import aiohttp


async def sweep(ids: list[str], out: TextIO, concurrency: int) -> int:
    """Fetch every id, write one record each to ``out``; return how many failed."""
    base_url = os.environ["PHALA_CLOUD_API_PREFIX"]
    headers = {"X-API-Key": os.environ["PHALA_CLOUD_API_KEY"], "X-Phala-Version": "2025-10-28"}
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    failed = 0
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def fetch(cvm_id: str) -> None:
            nonlocal failed
            record: dict[str, Any]
            async with semaphore:
                try:
                    async with session.get(f"{base_url}/cvms/{cvm_id}") as response:
                        body = await response.read()
                        status = response.status
                except (aiohttp.ClientError, OSError) as exc:
                    record = {"cvm_id": cvm_id, "ok": False, "error": {"type": repr(exc)}}
                else:
                    if status == 200:
                        record = {"cvm_id": cvm_id, "ok": True, "cvm": json.loads(body)}
                    else:
                        record = {"cvm_id": cvm_id, "ok": False, "error": {"status": status}}
            failed += not record["ok"]
            out.write(json.dumps(record) + "\n")

        await asyncio.gather(*(fetch(cvm_id) for cvm_id in ids))
    return failed


def main(ids_file: str, out_path: str, concurrency: int = 16) -> int:
    with open(ids_file, encoding="utf-8") as file:
        ids = [line.strip() for line in file if line.strip()]
    with open(out_path, "w", encoding="utf-8") as out:
        failed = asyncio.run(sweep(ids, out, concurrency))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:4])))
