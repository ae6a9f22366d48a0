"""One phala-async sweep in its own process, timed id by id (``python -m
benchmarks.scenario_client``).

Used where what matters is how a sweep gets through a hostile server (faults, a rate limit), not
its CPU: it sweeps the ids of ``--ids-file`` with ``stream_cvms``, as ``phala-async sweep
--ids-file`` would, with ``PhalaClient`` options given as JSON (``--options '{"adaptive":
false}'``), notes when each result arrived, and prints one JSON object: the wall time, when 50%,
95% and 100% of the ids were done (and the epoch seconds it started and finished), results ok
and errors by type, and the client's own counters.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import resource
import time
from collections import Counter
from typing import Any

from benchmarks.run_client import read_ids
from phala_async import PhalaClient

#: The shares of the ids whose completion time is reported.
SHARES = (0.5, 0.95, 1.0)


def time_to(share: float, done_at: list[float]) -> float | None:
    """Seconds from the start until ``share`` of the ids were done (``done_at`` sorted)."""
    if not done_at:
        return None
    index = max(1, math.ceil(share * len(done_at))) - 1
    return done_at[index]


async def sweep(
    base_url: str, api_key: str, ids: list[str], concurrency: int, options: dict[str, Any]
) -> dict[str, Any]:
    """Sweep ``ids``; return what happened and when."""
    done_at: list[float] = []
    errors: Counter[str] = Counter()
    ok = 0
    client = PhalaClient(api_key=api_key, base_url=base_url, concurrency=concurrency, **options)
    clock = time.perf_counter
    async with client:
        # Epoch seconds too: processes sweeping together are timed from the first start to the
        # last finish, on the clock they share.
        started_at = time.time()
        started = clock()
        async with client.stream_cvms(ids) as results:
            async for result in results:
                done_at.append(clock() - started)
                if result.ok:
                    ok += 1
                else:
                    errors[type(result.error).__name__] += 1
        wall = clock() - started
        finished_at = time.time()
        stats = client.stats
    return {
        "ids": len(ids),
        "concurrency": concurrency,
        "options": options,
        "wall_s": wall,
        "started_at": started_at,
        "finished_at": finished_at,
        "time_to": {f"{share:.0%}": time_to(share, done_at) for share in SHARES},
        "results": len(done_at),
        "ok": ok,
        "errors": dict(errors),
        "requests": stats.requests,
        "retries": stats.retries,
        "rate_limited": stats.rate_limited,
        "throttled": stats.throttled,
        "overloaded": stats.overloaded,
        "retries_denied": stats.retries_denied,
        "send_rate": stats.send_rate,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scenario_client")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ids-file", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--options", default="{}", help="PhalaClient options, as a JSON object")
    args = parser.parse_args(argv)
    ids = read_ids(args.ids_file)
    options = json.loads(args.options)
    before = resource.getrusage(resource.RUSAGE_SELF)
    report = asyncio.run(sweep(args.base_url, args.api_key, ids, args.concurrency, options))
    after = resource.getrusage(resource.RUSAGE_SELF)
    report["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
