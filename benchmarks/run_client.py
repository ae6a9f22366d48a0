"""One benchmarked client in its own process: ``python -m benchmarks.run_client --client NAME``.

It sweeps the ids of ``--ids-file`` (strings, one a line, read as ``phala-async sweep --ids-file``
reads them), or else ids ``1..--ids`` as a ``range`` of ints, against ``--base-url`` at
``--concurrency``, and prints one JSON object on stdout: wall and CPU seconds of the sweep,
requests, bodies received, ids missing or repeated,
errors by kind, and peak RSS. Imports happen before the clock starts; CPU time is this process's
own (``getrusage(RUSAGE_SELF)``, user + system), so it includes the event loop, the GC and the
kernel's work on its sockets; minor page faults are counted beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import resource
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from benchmarks.peers import CLIENTS


def _usage() -> tuple[float, float, int]:
    """User CPU seconds, system CPU seconds and minor page faults of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime, usage.ru_minflt


def peak_rss_bytes() -> int:
    """This process's peak resident set size.

    On Linux, ``/proc/self/status``'s ``VmHWM``: ``ru_maxrss`` would not do, since Linux carries
    the parent's resident size at the fork over the exec, so a client started by a harness that
    had grown to 150 MB would report 150 MB whatever it used. Elsewhere ``ru_maxrss`` (KiB, or
    bytes on macOS).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def settle_malloc() -> None:
    """Put glibc's malloc in the state a warm process has, the same for every client.

    On the default event loop asyncio reads each response into a fresh 256 KiB buffer. glibc
    serves that from a fresh mapping (mmap, then mremap and munmap: two page faults a read)
    until the process has freed one block larger than its mmap threshold, which raises the
    threshold. When that first happens depends on a client's allocation history, not on its
    per-request work, and it moved CPU per request by up to 20 us between otherwise identical
    runs; freeing one 1 MiB block here raises the threshold before any client starts.
    """
    bytearray(1 << 20)


def read_ids(path: str) -> list[str]:
    """The non-blank lines of ``path``, stripped: what ``phala-async sweep --ids-file`` sends."""
    with open(path, encoding="utf-8") as file:
        return [line.strip() for line in file.read().splitlines() if line.strip()]


def run(
    client: str,
    base_url: str,
    api_key: str,
    ids: int,
    concurrency: int,
    ids_file: str | None = None,
) -> dict[str, Any]:
    """Run one sweep of ``client`` and return its measurements."""
    module_name, loop_name, _ = CLIENTS[client]
    given: Sequence[str] | range = range(1, ids + 1) if ids_file is None else read_ids(ids_file)
    module = importlib.import_module(f"benchmarks.peers.{module_name}")
    runner: Any = asyncio.run
    if loop_name == "uvloop":
        import uvloop

        runner = uvloop.run
    seen = bytearray(ids + 1)  # seen[id] counts the bodies decoded for id: 1 each, index 0 unused
    errors: Counter[str] = Counter()
    rss_before = peak_rss_bytes()

    async def main() -> None:
        errors.update(await module.sweep(base_url, api_key, given, concurrency, seen))

    before, wall_start = _usage(), time.perf_counter()
    runner(main())
    wall = time.perf_counter() - wall_start
    user, system, faults = (end - start for end, start in zip(_usage(), before, strict=True))

    received = sum(seen)
    missing = seen.count(0) - 1
    repeated = sum(1 for count in seen if count > 1)
    return {
        "client": client,
        "loop": loop_name,
        "id_kind": "int" if ids_file is None else "str",
        "ids": ids,
        "concurrency": concurrency,
        "wall_s": wall,
        "cpu_s": user + system,
        "user_s": user,
        "sys_s": system,
        "minor_faults": faults,
        "requests": received + sum(errors.values()),
        "received": received,
        "missing": missing,
        "repeated": repeated,
        "errors": dict(errors),
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_before_sweep_bytes": rss_before,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run_client")
    parser.add_argument("--client", choices=sorted(CLIENTS), required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--ids", type=int, required=True, help="ids 1..N (those of the file)")
    parser.add_argument("--ids-file", help="sweep the strings of this file instead of ints")
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument(
        "--cold-malloc", action="store_true", help="skip settle_malloc(): a cold process's luck"
    )
    args = parser.parse_args(argv)
    if not args.cold_malloc:
        settle_malloc()
    result = run(
        args.client, args.base_url, args.api_key, args.ids, args.concurrency, args.ids_file
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
