"""The benchmark server: one process serving documented-shape CVM bodies on 127.0.0.1.

Run as ``python -m benchmarks.server --cvms N [--impl pool|simulator] [options]``. Once listening
it prints one JSON line on stdout (``base_url``, ``api_key``, ``impl``, ``loop``, ``pid``) and
serves until its stdin closes, SIGTERM, or ``--max-seconds`` have passed (the last bounds a
forgotten server).

Two implementations serve the same bodies, those of :class:`phala_async.testing.PhalaSimulator`:

- ``pool`` (the default): a minimal HTTP/1.1 keep-alive server on a raw asyncio protocol. It
  serves ``GET /api/v1/cvms/{id}`` for integer ids and for the app ids of :func:`app_id` from a
  pool of simulator documents with the id put in, so 100,000 CVMs cost no more to serve than 100.
  Its CPU per request is a fraction of any client's, so the clients, not the server, are what a
  run measures. ``--bucket-rate`` puts a token bucket in front of it (:class:`TokenBucket`).
- ``simulator``: the simulator itself (aiohttp.web), with its latency, fault, rate-limit and
  capacity options, and with ``--control`` its counters at ``/_simulator/stats``. Faithful,
  but it costs about as much CPU per request as a client.

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
import time
from collections.abc import Callable
from typing import Any, cast

from phala_async.testing import PhalaSimulator

API_KEY = "phak_benchmark_key"
POOL_SIZE = 64
_PREFIX = b"/api/v1/cvms/"
_ID_HOLE = 987_654_321_987  # a marker id, replaced by the requested one in each body
# App ids are 40 hex digits; the benchmark's are an odd multiple of the CVM's integer id modulo
# 2**160, which looks random, is distinct for every id, and is undone by the inverse multiplier.
_APP_ID_SPACE = 1 << 160
_APP_ID_FACTOR = 0x9E3779B97F4A7C15F39CC0605CEDC8341082276B
_APP_ID_INVERSE = pow(_APP_ID_FACTOR, -1, _APP_ID_SPACE)


def app_id(cvm_id: int) -> str:
    """The path form ``app_<40 hex>`` the pool server answers for CVM ``cvm_id``: ids as a
    workspace listing (``phala-async sweep --all``) gives them."""
    return f"app_{cvm_id * _APP_ID_FACTOR % _APP_ID_SPACE:040x}"


def cvm_id_of(segment: bytes) -> int:
    """The integer id a path segment names on the pool server (an integer or an app id of
    :func:`app_id`); 0 for anything else."""
    if segment.isdigit() and len(segment) < 10:
        return int(segment)
    if len(segment) == 44 and segment.startswith(b"app_"):
        try:
            value = int(segment[4:], 16)
        except ValueError:
            return 0
        cvm_id = value * _APP_ID_INVERSE % _APP_ID_SPACE
        return cvm_id if cvm_id < 1 << 31 else 0
    return 0


class TokenBucket:
    """A token-bucket rate limit: ``rate`` tokens a second into a bucket of ``burst``, one per
    request let through; a request finding the bucket empty is answered 429.

    Unlike the simulator's fixed one-second window, a client that sends at the rate is never
    refused, and one that sends faster is refused as soon as the burst is spent.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self) -> bool:
        """Take a token if there is one; whether the request may go through."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


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
_RATE_LIMITED = (
    b'{"error_code":"ERR-05-002","message":"Rate limit exceeded","details":[],'
    b'"suggestions":["Wait for the Retry-After header\'s delay, then retry"],"links":[]}'
)
_RATE_LIMITED_ANSWER = (
    b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nRetry-After: 1\r\nX-Request-ID: req_bench\r\n\r\n%s"
    % (len(_RATE_LIMITED), _RATE_LIMITED)
)


class _PoolProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive, GET only, no request bodies: what every benchmarked client sends."""

    def __init__(
        self,
        cvms: int,
        bodies: list[tuple[bytes, bytes]],
        key_line: bytes,
        bucket: TokenBucket | None,
    ) -> None:
        self._cvms = cvms
        self._bodies = bodies
        self._key_line = key_line
        self._bucket = bucket
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
        if self._bucket is not None and not self._bucket.take():
            return _RATE_LIMITED_ANSWER
        path = parts[1] if len(parts) == 3 and parts[0] == b"GET" else b""
        segment = path[len(_PREFIX) :] if path.startswith(_PREFIX) else b""
        cvm_id = cvm_id_of(segment)
        if not 1 <= cvm_id <= self._cvms:
            return _head(b"404 Not Found", len(_NOT_FOUND)) + _NOT_FOUND
        before, after = self._bodies[cvm_id % len(self._bodies)]
        body = b"%s%d%s" % (before, cvm_id, after)
        return _head(b"200 OK", len(body)) + body


async def _serve_pool(
    cvms: int, pool_size: int, bucket: tuple[float, float] | None
) -> tuple[str, Any]:
    bodies = pool_bodies(min(pool_size, max(cvms, 1)))
    key_line = b"x-api-key: " + API_KEY.lower().encode()
    # One bucket for every connection: the limit is the account's, not a connection's.
    limit = TokenBucket(*bucket) if bucket is not None else None
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _PoolProtocol(cvms, bodies, key_line, limit), "127.0.0.1", 0, backlog=1024
    )
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v1", server


async def _serve_simulator(cvms: int, options: dict[str, Any]) -> tuple[str, Any]:
    sim = PhalaSimulator(cvms=cvms, api_key=API_KEY, port=0, **options)
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


async def serve(args: argparse.Namespace, loop_name: str) -> None:
    """Serve ``args.cvms`` CVMs until told to stop; print where on stdout first."""
    impl = args.impl
    if impl == "pool":
        bucket = (args.bucket_rate, args.bucket_burst) if args.bucket_rate else None
        base_url, handle = await _serve_pool(args.cvms, args.pool_size, bucket)
    else:
        base_url, handle = await _serve_simulator(args.cvms, simulator_options(args))
    ready = {"base_url": base_url, "api_key": API_KEY, "impl": impl, "loop": loop_name}
    print(json.dumps({**ready, "pid": os.getpid()}), flush=True)
    try:
        await _wait_for_stop(args.max_seconds)
    finally:
        if impl == "pool":
            handle.close()
            await handle.wait_closed()
        else:
            await handle.close()


def simulator_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``PhalaSimulator`` keyword arguments the command line gave."""
    return {
        "latency": args.latency,
        "fault_rate": args.fault_rate,
        "faults": args.faults.split(",") if args.faults else (),
        "rate_limit": args.rate_limit,
        "rate_limit_retry_after": 1,
        "capacity": args.capacity,
        "seed": args.seed,
        # The control API's counters (GET /_simulator/stats) are what a run reads of the server.
        "control": args.control,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.server", description=__doc__)
    parser.add_argument("--cvms", type=int, default=10_000, help="workspace CVMs (ids 1..N)")
    parser.add_argument("--impl", choices=("pool", "simulator"), default="pool")
    parser.add_argument("--pool-size", type=int, default=POOL_SIZE, help="distinct bodies (pool)")
    parser.add_argument(
        "--bucket-rate", type=float, help="pool: a token bucket of this many requests a second"
    )
    parser.add_argument(
        "--bucket-burst", type=float, default=1.0, help="pool: the bucket's size, in tokens"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="simulator: seconds per answer")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="simulator: fault share")
    parser.add_argument("--faults", default="", help="simulator: comma-separated fault kinds")
    parser.add_argument("--rate-limit", type=float, help="simulator: fixed-window limit per second")
    parser.add_argument(
        "--capacity", type=int, help="simulator: requests served at once; one more is a 503"
    )
    parser.add_argument(
        "--control", action="store_true", help="simulator: serve the control API's counters"
    )
    parser.add_argument("--seed", type=int, default=0, help="simulator: seed of data and faults")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop after this long")
    parser.add_argument("--no-uvloop", action="store_true", help="use the default event loop")
    args = parser.parse_args(argv)
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(args, "uvloop"))
            return
    asyncio.run(serve(args, "asyncio"))


if __name__ == "__main__":
    main()
