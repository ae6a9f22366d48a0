"""phala-async with the retry machinery off: one attempt, no adaptive pacing, no retry budget.

Not a peer users would pick: it is here to measure what the retry machinery costs on the happy
path, as the CPU difference between this and the default client.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from benchmarks.peers import phala_async_peer


async def sweep(
    base_url: str, api_key: str, ids: Sequence[str] | range, concurrency: int, seen: bytearray
) -> Counter[str]:
    return await phala_async_peer.sweep(
        base_url,
        api_key,
        ids,
        concurrency,
        seen,
        max_attempts=1,
        adaptive=False,
        retry_budget=False,
    )
