"""phala-async's own CPU per request, with the network taken out: ``python -m benchmarks.overhead``.

A diagnostic, not a benchmark of what users run: ``stream_cvms`` sweeps ids in this process while
the one method that talks to aiohttp (``Exchange.get``) is replaced by one that yields to the
event loop once and returns a canned 200 answer with a documented-shape body. What remains is the
library's own work per request (ids, sweep, governor, retry bookkeeping, judging and decoding the
answer) without aiohttp's 90-odd microseconds, so a change of one microsecond shows above the
noise of a shared machine. It reaches into a private method, so it follows ``_http`` as it changes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from benchmarks.decode import representative_body
from benchmarks.server import app_id
from phala_async import PhalaClient
from phala_async import _http as http


def canned_get(body: bytes) -> Any:
    """A stand-in for ``Exchange.get`` that answers 200 with ``body`` after one loop turn."""
    headers = CIMultiDictProxy(CIMultiDict({"Content-Type": "application/json"}))
    answer = http.Answer(200, headers, body)

    async def get(*_args: object) -> http.Answer:
        await asyncio.sleep(0)
        return answer

    return get


async def sweep(ids: Sequence[str] | range, concurrency: int) -> None:
    """Sweep ``ids`` and check that every one came back ok."""
    client = PhalaClient(
        api_key="phak_overhead", base_url="http://127.0.0.1:9/api/v1", concurrency=concurrency
    )
    done = 0
    async with client, client.stream_cvms(ids) as results:
        async for result in results:
            if not result.ok:
                raise RuntimeError(f"{result.cvm_id}: {result.error!r}")
            done += 1
    if done != len(ids):
        raise RuntimeError(f"{done} results for {len(ids)} ids")


def measure(ids: Sequence[str] | range, concurrency: int, repeat: int) -> float:
    """The least CPU per id, in microseconds, over ``repeat`` sweeps (after one warm-up)."""
    asyncio.run(sweep(ids[: min(len(ids), 1000)], concurrency))
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        asyncio.run(sweep(ids, concurrency))
        best = min(best, (time.process_time() - started) / len(ids) * 1e6)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__)
    parser.add_argument("--ids", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=5, help="sweeps; the least CPU is shown")
    args = parser.parse_args(argv)
    http.Exchange.get = canned_get(representative_body())  # type: ignore[method-assign]
    app_ids = [app_id(n) for n in range(1, args.ids + 1)]
    for kind, ids in (("app ids", app_ids), ("int ids", range(1, args.ids + 1))):
        per_id = measure(ids, args.concurrency, args.repeat)
        print(f"{kind}: {per_id:.2f} us CPU per request, network faked")


if __name__ == "__main__":
    main()
