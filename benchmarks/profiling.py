"""Where the CPU of one request goes: phala-async's sweep against the bare aiohttp loop.

``python -m benchmarks.profiling [--ids 10000] [--int-ids] [--tool cprofile|pyinstrument]``
starts the benchmark server, then runs each client's sweep (of app ids, as a file gives them, or
of ``range`` ints) in this process under the profiler and prints
its self time grouped by who owns the code (phala-async, aiohttp, asyncio, ...) and the top
functions, in microseconds per request. cProfile's own overhead inflates every call, small ones
the most, so read the shares and the differences, not the absolute figures; the unprofiled CPU
per request printed first is the real one.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import resource
from collections import Counter
from typing import Any

from benchmarks.harness import running_server
from benchmarks.peers import aiohttp_peer, phala_async_peer
from benchmarks.server import app_id

PEERS = {"phala-async": phala_async_peer, "aiohttp": aiohttp_peer}
# Owner of a function by a fragment of its file's path, first match wins.
OWNERS = (
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "yarl (aiohttp's URLs)"),
    ("/multidict/", "multidict (aiohttp's headers)"),
    ("/msgspec/", "msgspec"),
    ("/tenacity/", "tenacity"),
    ("/aiolimiter/", "aiolimiter"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/phala_async/", "phala-async"),
    ("/benchmarks/peers/", "benchmark peer code"),
)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sweep(
    client: str, base_url: str, api_key: str, ids: int, concurrency: int, int_ids: bool = False
) -> None:
    seen = bytearray(ids + 1)
    given = range(1, ids + 1) if int_ids else [app_id(n) for n in range(1, ids + 1)]
    errors = asyncio.run(PEERS[client].sweep(base_url, api_key, given, concurrency, seen))
    if errors or seen.count(0) != 1:
        raise RuntimeError(f"{client}: the sweep was incomplete ({dict(errors)})")


def owner(filename: str, function: str) -> str:
    """Who owns a profiled function: a library, the stdlib's asyncio, or C built-ins."""
    if filename == "~":
        return "C built-ins"
    for fragment, name in OWNERS:
        if fragment in filename:
            return name
    return "other Python"


def profile_cprofile(
    client: str, base_url: str, api_key: str, ids: int, concurrency: int, top: int, int_ids: bool
) -> dict[str, Any]:
    """Profile one sweep; return self time per owner and the top functions, in us per request."""
    profiler = cProfile.Profile()
    profiler.enable()
    _sweep(client, base_url, api_key, ids, concurrency, int_ids)
    profiler.disable()
    stats: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    by_owner: Counter[str] = Counter()
    functions = []
    for (filename, line, function), (_, calls, self_time, _cumulative, _) in stats.items():
        who = owner(filename, function)
        by_owner[who] += self_time
        functions.append((self_time, calls, who, f"{_short(filename)}:{line}({function})"))
    functions.sort(reverse=True)
    total = sum(by_owner.values())
    return {
        "total_us": total / ids * 1e6,
        "by_owner": {who: t / ids * 1e6 for who, t in by_owner.most_common()},
        "top": [
            {"us": t / ids * 1e6, "calls_per_request": c / ids, "owner": who, "function": name}
            for t, c, who, name in functions[:top]
        ],
    }


def _short(filename: str) -> str:
    for marker in ("site-packages/", "lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    for package in ("/phala_async/", "/benchmarks/"):  # this repository, wherever it is
        if package in filename:
            return package.lstrip("/") + filename.split(package, 1)[1]
    return filename


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profiling", description=__doc__)
    parser.add_argument("--ids", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--top", type=int, default=25, help="functions to list per client")
    parser.add_argument("--tool", choices=("cprofile", "pyinstrument"), default="cprofile")
    parser.add_argument("--clients", default="phala-async,aiohttp")
    parser.add_argument("--int-ids", action="store_true", help="range() ints, not app ids")
    args = parser.parse_args(argv)
    clients = [c.strip() for c in args.clients.split(",")]
    sweep_args = (args.concurrency, args.int_ids)
    with running_server(args.ids) as server:
        for client in clients:  # a warm-up sweep each, then the unprofiled CPU per request
            _sweep(client, server.base_url, server.api_key, min(args.ids, 1000), *sweep_args)
        for client in clients:
            start = _cpu()
            _sweep(client, server.base_url, server.api_key, args.ids, *sweep_args)
            print(
                f"{client}: {(_cpu() - start) / args.ids * 1e6:.0f} us CPU per request unprofiled"
            )
        for client in clients:
            print(f"\n== {client}: {args.tool}, {args.ids:,} ids, concurrency {args.concurrency}")
            if args.tool == "pyinstrument":
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0002)
                profiler.start()
                _sweep(client, server.base_url, server.api_key, args.ids, *sweep_args)
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False, show_all=False))
                continue
            found = profile_cprofile(
                client,
                server.base_url,
                server.api_key,
                args.ids,
                args.concurrency,
                args.top,
                args.int_ids,
            )
            print(f"self time under cProfile: {found['total_us']:.0f} us per request, by owner:")
            for who, us in found["by_owner"].items():
                print(f"  {us:8.1f} us  {who}")
            print("top functions by self time (us per request, calls per request):")
            for row in found["top"]:
                print(
                    f"  {row['us']:8.2f} us {row['calls_per_request']:6.2f}x  "
                    f"[{row['owner']}] {row['function']}"
                )


if __name__ == "__main__":
    main()
