"""The clients the benchmark compares, each written as its users would write it.

Every module has ``async def sweep(base_url, api_key, ids, concurrency, seen)``: it fetches every
id in ``ids`` (strings read from a file, or a ``range`` of ints), marks ``seen[id] += 1`` for each
body it got and decoded (``id`` from the body), and returns the number of errors by kind.
``benchmarks.run_client`` runs one of them in its own process.
"""

from __future__ import annotations

# name: (module in this package, event loop, what it needs beyond phala-async's own dependencies)
CLIENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "phala-async": ("phala_async_peer", "asyncio", ()),
    "phala-async-uvloop": ("phala_async_peer", "uvloop", ("uvloop",)),
    "phala-async-noretry": ("phala_async_noretry_peer", "asyncio", ()),
    "aiohttp": ("aiohttp_peer", "asyncio", ()),
    "aiohttp-uvloop": ("aiohttp_peer", "uvloop", ("uvloop",)),
    "httpx": ("httpx_peer", "asyncio", ("httpx",)),
    "phala-cloud": ("phala_cloud_peer", "asyncio", ("phala_cloud", "httpx", "pydantic")),
}

#: The clients a run compares unless told otherwise, in the order each round runs them; the
#: bare loop on uvloop is there on request (``--clients``), as a reference.
DEFAULT_CLIENTS = tuple(name for name in CLIENTS if name != "aiohttp-uvloop")
