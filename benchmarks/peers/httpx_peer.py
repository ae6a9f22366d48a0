"""Plain httpx: one ``AsyncClient``, a semaphore, ``json.loads`` of each body, no retries."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence

import httpx


async def sweep(
    base_url: str, api_key: str, ids: Sequence[str] | range, concurrency: int, seen: bytearray
) -> Counter[str]:
    errors: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"X-API-Key": api_key, "X-Phala-Version": "2025-10-28"}

    async with httpx.AsyncClient(base_url=base_url, headers=headers, limits=limits) as client:

        async def fetch(cvm_id: str | int) -> None:
            async with semaphore:
                try:
                    response = await client.get(f"/cvms/{cvm_id}")
                    if response.status_code != 200:
                        errors[f"HTTP {response.status_code}"] += 1
                        return
                    seen[json.loads(response.content)["id"]] += 1
                except (httpx.HTTPError, ValueError) as exc:
                    errors[type(exc).__name__] += 1

        await asyncio.gather(*(fetch(cvm_id) for cvm_id in ids))
    return errors
