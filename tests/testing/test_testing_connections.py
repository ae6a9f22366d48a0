"""Connections to the simulator: counted as accepted, and stale keep-alive ones dropped."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from phala_async.testing import Fault, PhalaSimulator


@pytest.fixture
async def one_connection() -> AsyncIterator[aiohttp.ClientSession]:
    """An aiohttp session that keeps at most one connection open."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as client_session:
        yield client_session


async def fetch_status(session: aiohttp.ClientSession, sim: PhalaSimulator, path: str) -> int:
    """GET `path` with the API key, trying again (at most twice more) on a dropped connection."""
    for _ in range(3):
        try:
            async with session.get(
                f"{sim.base_url}/{path}", headers={"X-API-Key": sim.api_key}
            ) as response:
                await response.read()
                return response.status
        except aiohttp.ServerDisconnectedError:
            continue  # aiohttp releases may or may not resend on a fresh connection themselves
    raise AssertionError(f"{path} was dropped three times in a row")


async def on_one_connection(sim: PhalaSimulator, paths: list[str]) -> list[bytes]:
    """Send GETs one after another on one raw connection; each status line, b"" once it closed."""
    address = urlsplit(sim.base_url)
    lines: list[bytes] = []
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        try:
            for path in paths:
                writer.write(
                    f"GET {address.path}/{path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
                    f"X-API-Key: {sim.api_key}\r\n\r\n".encode()
                )
                status_line = await reader.readline()
                lines.append(status_line.rstrip())
                if not status_line:
                    break
                length = 0
                while (header := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
    return lines


async def wait_for_connections(sim: PhalaSimulator, count: int) -> int:
    """`sim.connections` once it reaches `count`, or after about a second."""
    for _ in range(100):
        if sim.connections >= count:
            break
        await asyncio.sleep(0.01)
    return sim.connections


async def test_request_past_drop_after_is_dropped_before_any_byte() -> None:
    """With drop_after=2, a third request on one connection gets no answer and the socket closes."""
    async with PhalaSimulator(cvms=5, drop_after=2) as sim:
        lines = await on_one_connection(sim, ["cvms/1", "cvms/2", "cvms/3", "cvms/4"])
    assert lines == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b""]
    assert [record.status for record in sim.request_log] == [200, 200, "dropped"]
    assert (sim.requests["3"], sim.total_requests, sim.status_counts["dropped"]) == (1, 3, 1)


async def test_a_sweep_over_stale_connections_reconnects(
    one_connection: aiohttp.ClientSession,
) -> None:
    """Five ids over one pooled connection with drop_after=2: 3 connections, 7 requests, 2 drops."""
    async with PhalaSimulator(cvms=5, drop_after=2) as sim:
        statuses = [await fetch_status(one_connection, sim, f"cvms/{i}") for i in sim.cvm_ids]
    assert statuses == [200] * 5
    assert (sim.connections, sim.total_requests) == (3, 5 + 2)
    assert sim.status_counts == Counter({200: 5, "dropped": 2})
    assert sim.requests == Counter({"1": 1, "2": 1, "3": 2, "4": 1, "5": 2})
    assert [record.status for record in sim.request_log] == [200, 200, "dropped"] * 2 + [200]


async def test_by_default_connections_are_kept(one_connection: aiohttp.ClientSession) -> None:
    """Without drop_after, 20 requests share one connection and none is dropped."""
    async with PhalaSimulator(cvms=5) as sim:
        statuses = [await fetch_status(one_connection, sim, "cvms/1") for _ in range(20)]
    assert (statuses, sim.connections) == ([200] * 20, 1)
    assert "dropped" not in sim.status_counts


async def test_requests_to_unknown_routes_are_dropped_too() -> None:
    """A request to no endpoint on a stale connection is dropped and logged without a CVM key."""
    async with PhalaSimulator(cvms=1, drop_after=1) as sim:
        lines = await on_one_connection(sim, ["cvms/1", "nowhere"])
    assert lines == [b"HTTP/1.1 200 OK", b""]
    dropped = sim.request_log[-1]
    assert (dropped.path, dropped.cvm_key, dropped.status) == ("/api/v1/nowhere", None, "dropped")
    assert sim.total_requests == 2


async def test_a_dropped_request_uses_no_scripted_answer() -> None:
    """The script of a segment is kept for the next request that is actually answered."""
    async with PhalaSimulator(cvms=2, drop_after=1) as sim:
        sim.script(1, Fault.HTTP_503)
        first = await on_one_connection(sim, ["cvms/2", "cvms/1"])
        second = await on_one_connection(sim, ["cvms/1"])
    assert first == [b"HTTP/1.1 200 OK", b""]
    assert second == [b"HTTP/1.1 503 Service Unavailable"]


async def test_connections_count_accepted_sockets_until_reset() -> None:
    """Three idle sockets count as three connections; reset_counters starts again from zero."""
    async with PhalaSimulator(cvms=1) as sim:
        address = urlsplit(sim.base_url)
        writers = []
        for _ in range(3):
            _, writer = await asyncio.open_connection(address.hostname, address.port)
            writers.append(writer)
        counted = await wait_for_connections(sim, 3)
        sim.reset_counters()
        after_reset = sim.connections
        for writer in writers:
            writer.close()
            await writer.wait_closed()
    assert (counted, after_reset, sim.total_requests) == (3, 0, 0)


@pytest.mark.parametrize(
    "drop_after", [0, -1, True, 1.5], ids=["zero", "negative", "bool", "float"]
)
def test_bad_drop_after_fails_at_construction(drop_after: Any) -> None:
    """drop_after other than None or an int >= 1 raises ValueError saying what to pass."""
    with pytest.raises(ValueError, match=r"drop_after must be an int >= 1"):
        PhalaSimulator(drop_after=drop_after)
