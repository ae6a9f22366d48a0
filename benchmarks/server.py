"""The benchmark server: one process serving documented-shape CVM bodies on 127.0.0.1.

Run as ``python -m benchmarks.server --cvms N [--impl pool|simulator]``. Once listening it prints
one JSON line on stdout (``base_url``, ``api_key``, ``impl``, ``loop``, ``pid``) and serves until
its stdin closes, SIGTERM, or ``--max-seconds`` have passed (the last bounds a forgotten server).

Two implementations serve the same bodies, those of :class:`phala_async.testing.PhalaSimulator`
with faults off:

- ``pool`` (the default): a minimal HTTP/1.1 keep-alive server on a raw asyncio protocol. It
  serves ``GET /api/v1/cvms/{int id}`` from a pool of simulator documents with the id put in, so
  100,000 CVMs cost no more to serve than 100. Its CPU per request is a fraction of any client's,
  so the clients, not the server, are what a run measures.
- ``simulator``: the simulator itself (aiohttp.web, request log, per-request ids). Faithful, but
  on this 2-core machine it costs about as much CPU per request as the clients, so it becomes
  the bottleneck; kept to compare against.

Both run on uvloop when it is installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from typing import Any, cast

from phala_async.testing import PhalaSimulator

API_KEY = "phak_benchmark_key"
POOL_SIZE = 64
_PREFIX = b"/api/v1/cvms/"
_ID_HOLE = 987_654_321_987  # a marker id, replaced by the requested one in each body


def pool_bodies(pool_size: int, seed: int = 0) -> list[tuple[bytes, bytes]]:
    """``(before, after)`` byte halves of ``pool_size`` simulator documents around their id."""
    sim = PhalaSimulator(cvms=pool_size, seed=seed)
    halves = []
    for cvm_id in sim.cvm_ids:
        document = sim.cvm(cvm_id)
        document["id"] = _ID_HOLE
        body = json.dumps(document, separators=(",", ":")).encode()
        before, hole, after = body.partition(b"%d" % _ID_HOLE)
        assert hole, "the id marker must appear in the encoded body"
        halves.append((before, after))
    return halves


def _head(status: bytes, length: int) -> bytes:
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nX-Request-ID: req_bench\r\n\r\n" % length
    )


_UNAUTHENTICATED = b'{"detail":"Authentication required"}'
_NOT_FOUND = (
    b'{"error_code":"ERR-03-001","message":"CVM not found","details":[],'
    b'"suggestions":["Check the CVM id"],"links":[]}'
)


class _PoolProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, no request bodies: what every benchmarked client sends."""

    def __init__(self, cvms: int, bodies: list[tuple[bytes, bytes]], key_line: bytes) -> None:
        self._cvms = cvms
        self._bodies = bodies
        self._key_line = key_line
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        out = []
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            head, buffer = buffer[:end], buffer[end + 4 :]
            out.append(self._answer(head))
        self._buffer = buffer
        if out and self._transport is not None:
            self._transport.write(b"".join(out))

    def _answer(self, head: bytes) -> bytes:
        line, _, headers = head.partition(b"\r\n")
        parts = line.split(b" ")
        if self._key_line not in headers.lower():
            return _head(b"401 Unauthorized", len(_UNAUTHENTICATED)) + _UNAUTHENTICATED
        path = parts[1] if len(parts) == 3 and parts[0] == b"GET" else b""
        segment = path[len(_PREFIX) :] if path.startswith(_PREFIX) else b""
        cvm_id = int(segment) if segment.isdigit() and len(segment) < 10 else 0
        if not 1 <= cvm_id <= self._cvms:
            return _head(b"404 Not Found", len(_NOT_FOUND)) + _NOT_FOUND
        before, after = self._bodies[cvm_id % len(self._bodies)]
        body = b"%s%d%s" % (before, cvm_id, after)
        return _head(b"200 OK", len(body)) + body


async def _serve_pool(cvms: int, pool_size: int) -> tuple[str, Any]:
    bodies = pool_bodies(min(pool_size, max(cvms, 1)))
    key_line = b"x-api-key: " + API_KEY.lower().encode()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _PoolProtocol(cvms, bodies, key_line), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1", server


async def _serve_simulator(cvms: int) -> tuple[str, Any]:
    sim = PhalaSimulator(cvms=cvms, api_key=API_KEY, fault_rate=0.0, port=0)
    await sim.start()
    return sim.base_url, sim


async def _wait_for_stop(max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # stdin closing (the parent exiting or closing the pipe) stops the server too.
    reader = asyncio.StreamReader()
    with contextlib.suppress(OSError, ValueError):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.ensure_future(reader.read())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({eof, stopped}, timeout=max_seconds, return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    stopped.cancel()


async def serve(cvms: int, impl: str, pool_size: int, max_seconds: float, loop_name: str) -> None:
    """Serve ``cvms`` CVMs until told to stop; print where on stdout first."""
    if impl == "pool":
        base_url, handle = await _serve_pool(cvms, pool_size)
    else:
        base_url, handle = await _serve_simulator(cvms)
    ready = {"base_url": base_url, "api_key": API_KEY, "impl": impl, "loop": loop_name}
    print(json.dumps({**ready, "pid": os.getpid()}), flush=True)
    try:
        await _wait_for_stop(max_seconds)
    finally:
        if impl == "pool":
            handle.close()
            await handle.wait_closed()
        else:
            await handle.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__)
    parser.add_argument("--cvms", type=int, default=10_000, help="workspace CVMs (ids 1..N)")
    parser.add_argument("--impl", choices=("pool", "simulator"), default="pool")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="distinct bodies (pool)")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    args = parser.parse_args(argv)
    coroutine = serve(args.cvms, args.impl, args.pool_size, args.max_seconds, "asyncio")
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            coroutine.close()
            coroutine = serve(args.cvms, args.impl, args.pool_size, args.max_seconds, "uvloop")
            uvloop.run(coroutine)
            return
    asyncio.run(coroutine)


if __name__ == "__main__":
    main()
