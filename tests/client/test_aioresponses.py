"""Tests that fake aiohttp with aioresponses, for users who test their code that way.

aioresponses 0.7.9 cannot build a response on aiohttp 3.14 (aioresponses#289). Whether it works
is found out by trying it once, not from version numbers: where it fails these tests skip with
the reason, unless ``PHALA_ASYNC_REQUIRE_AIORESPONSES=1`` (the aiohttp 3.13 environment of
``make test``) demands that they run, and then they fail.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aioresponses import aioresponses
from yarl import URL

from phala_async import NotFoundError, PhalaClient

BASE_URL = "https://cloud-api.example.test/api/v1"
PROBE_URL = "https://aioresponses-probe.example.test/probe"
CVM_BODY: dict[str, Any] = {
    "id": 7,
    "name": "web-00007",
    "status": "running",
    "app_id": "8d1f0c9e2b7a4f6d1e3c5b7a9f0e2d4c6b8a0f1e",
    "vcpu": 2,
    "memory": 4096,
    "disk_size": 40,
    "teepod": {"id": 3, "name": "prod5", "region_identifier": "us-west"},
    "scheduled_delete_at": None,
    "machine_info": {"gpu_count": 0},
}

_probe_outcome: list[str | None] = []  # filled once: None when aioresponses works, else why


async def _why_aioresponses_fails() -> str | None:
    """Build one response with aioresponses; return why that failed, or None if it worked."""
    try:
        with aioresponses() as mocked:
            mocked.get(PROBE_URL, payload={"ok": True})
            async with aiohttp.ClientSession() as session, session.get(PROBE_URL) as response:
                await response.read()
    except Exception as exc:  # noqa: BLE001 - any failure means aioresponses cannot be used here
        return (
            f"aioresponses cannot build a response on aiohttp {aiohttp.__version__} "
            f"(aioresponses#289): {type(exc).__name__}: {exc}"
        )
    return None


@pytest.fixture
async def mocked() -> AsyncIterator[aioresponses]:
    """An active aioresponses, or a skip (a failure where required) if it cannot work here."""
    if not _probe_outcome:
        _probe_outcome.append(await _why_aioresponses_fails())
    reason = _probe_outcome[0]
    if reason is not None:
        if os.environ.get("PHALA_ASYNC_REQUIRE_AIORESPONSES") == "1":
            pytest.fail(f"PHALA_ASYNC_REQUIRE_AIORESPONSES=1 but {reason}")
        pytest.skip(reason)
    with aioresponses() as active:
        yield active


@pytest.fixture
def fast_client() -> PhalaClient:
    """A client for the fake base URL, with fast retries (each test closes it)."""
    return PhalaClient(
        api_key="phak_aioresponses_test",
        base_url=BASE_URL,
        backoff_initial=0.001,
        backoff_max=0.01,
    )


def calls(mocked: aioresponses, url: str) -> int:
    """How many GETs aioresponses saw for ``url``."""
    return len(mocked.requests.get(("GET", URL(url)), []))


@pytest.mark.aioresponses
async def test_ok_body_is_decoded(mocked: aioresponses, fast_client: PhalaClient) -> None:
    """A faked 200 body is decoded into a CvmDetail."""
    mocked.get(f"{BASE_URL}/cvms/7", payload=CVM_BODY)
    async with asyncio.timeout(10), fast_client as client:
        cvm = await client.get_cvm(7)
    assert (cvm.id, cvm.name, cvm.vcpu) == (7, "web-00007", 2)
    assert cvm.teepod is not None
    assert cvm.teepod.name == "prod5"


@pytest.mark.aioresponses
async def test_not_found_is_mapped(mocked: aioresponses, fast_client: PhalaClient) -> None:
    """A faked 404 raises NotFoundError with the server's detail, after one request."""
    url = f"{BASE_URL}/cvms/999"
    mocked.get(
        url,
        status=404,
        payload={"error_code": "ERR-03-001", "message": "CVM not found"},
        headers={"X-Request-ID": "req_0123456789abcdef"},
    )
    with pytest.raises(NotFoundError) as caught:
        async with asyncio.timeout(10), fast_client as client:
            await client.get_cvm(999)
    assert (caught.value.cvm_id, caught.value.detail) == (999, "CVM not found")
    assert caught.value.request_id == "req_0123456789abcdef"
    assert calls(mocked, url) == 1


@pytest.mark.aioresponses
async def test_503_then_200_is_retried(mocked: aioresponses, fast_client: PhalaClient) -> None:
    """A faked 503 followed by a 200 is retried once and returns the CVM."""
    url = f"{BASE_URL}/cvms/7"
    mocked.get(url, status=503, payload={"detail": "Service Unavailable"})
    mocked.get(url, payload=CVM_BODY)
    async with asyncio.timeout(10), fast_client as client:
        cvm = await client.get_cvm(7)
    assert cvm.id == 7
    assert calls(mocked, url) == 2
    assert client.stats.retries == 1
