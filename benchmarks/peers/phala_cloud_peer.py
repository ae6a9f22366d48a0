"""The official SDK, ``phala-cloud`` 0.2.0: ``AsyncPhalaCloud.get_cvm_info`` under a semaphore.

``version="2026-01-21"`` is pinned: it is the version whose response model accepts the integer
``id`` of the documented body (the SDK's default, 2026-06-23, validates it as a string and fails).
The SDK's ids are strings (``CvmIdRequest.id: str``). It has no retries and no bulk helper.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

from phala_cloud import AsyncPhalaCloud, PhalaCloudError
from pydantic import ValidationError


async def sweep(
    base_url: str, api_key: str, ids: Sequence[str] | range, concurrency: int, seen: bytearray
) -> Counter[str]:
    errors: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(concurrency)

    async with AsyncPhalaCloud(api_key=api_key, base_url=base_url, version="2026-01-21") as client:

        async def fetch(cvm_id: str | int) -> None:
            async with semaphore:
                try:
                    cvm = await client.get_cvm_info({"id": str(cvm_id)})
                except (PhalaCloudError, ValidationError) as exc:
                    errors[type(exc).__name__] += 1
                    return
                seen[cvm.id] += 1

        await asyncio.gather(*(fetch(cvm_id) for cvm_id in ids))
    return errors
