"""phala-async with the retry machinery off: one attempt, no adaptive pacing, no retry budget.

Not a peer users would pick: it is here to measure what the retry machinery costs on the happy
path, as the CPU difference between this and the default client.
"""

from __future__ import annotations

from collections import Counter

from phala_async import PhalaClient


async def sweep(
    base_url: str, api_key: str, ids: range, concurrency: int, seen: bytearray
) -> Counter[str]:
    errors: Counter[str] = Counter()
    client = PhalaClient(
        api_key=api_key,
        base_url=base_url,
        concurrency=concurrency,
        max_attempts=1,
        adaptive=False,
        retry_budget=False,
    )
    async with client, client.stream_cvms(ids) as results:
        async for result in results:
            if result.cvm is not None:
                seen[result.cvm.id] += 1
            else:
                errors[type(result.error).__name__] += 1
    return errors
