"""phala-async: one client, one streaming sweep (typed decode, the default retry policy on)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from phala_async import PhalaClient


async def sweep(
    base_url: str,
    api_key: str,
    ids: Sequence[str] | range,
    concurrency: int,
    seen: bytearray,
    **options: Any,
) -> Counter[str]:
    """Sweep ``ids``; ``options`` are extra PhalaClient arguments (the no-retry variant's)."""
    errors: Counter[str] = Counter()
    client = PhalaClient(api_key=api_key, base_url=base_url, concurrency=concurrency, **options)
    async with client, client.stream_cvms(ids) as results:
        async for result in results:
            if result.cvm is not None:
                seen[result.cvm.id] += 1
            else:
                errors[type(result.error).__name__] += 1
    return errors
