"""The bare aiohttp loop: one session, a semaphore, ``json.loads`` of each body, no retries.

The floor of what aiohttp itself costs: no typing, no error translation, no retry bookkeeping.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence

import aiohttp


async def sweep(
    base_url: str, api_key: str, ids: Sequence[str] | range, concurrency: int, seen: bytearray
) -> Counter[str]:
    errors: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    headers = {"X-API-Key": api_key, "X-Phala-Version": "2025-10-28"}

    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def fetch(cvm_id: str | int) -> None:
            async with semaphore:
                try:
                    async with session.get(f"{base_url}/cvms/{cvm_id}") as response:
                        body = await response.read()
                        if response.status != 200:
                            errors[f"HTTP {response.status}"] += 1
                            return
                    seen[json.loads(body)["id"]] += 1
                except (aiohttp.ClientError, OSError, ValueError) as exc:
                    errors[type(exc).__name__] += 1

        await asyncio.gather(*(fetch(cvm_id) for cvm_id in ids))
    return errors
