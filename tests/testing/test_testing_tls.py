"""The simulator over HTTPS: a CA to trust, and certificates that fail as real ones do."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from phala_async.testing import PhalaSimulator


def has_ipv6_loopback() -> bool:
    """Whether ::1 can be bound here."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


async def get(
    sim: PhalaSimulator, path: str, context: ssl.SSLContext, *, url: str | None = None, **kw: Any
) -> tuple[int, Any]:
    """GET `path` under `url` (the base URL by default) over TLS with `context`."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url or sim.base_url}/{path}",
            headers={"X-API-Key": sim.api_key},
            ssl=context,
            **kw,
        ) as response,
    ):
        return response.status, json.loads(await response.read())


@pytest.mark.parametrize(
    ("host", "url_host"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.0.0.1", "localhost"),
        pytest.param(
            "::1",
            "[::1]",
            marks=pytest.mark.skipif(not has_ipv6_loopback(), reason="no IPv6 loopback here"),
        ),
    ],
    ids=["ipv4-address", "localhost-name", "ipv6-address"],
)
async def test_a_client_trusting_ca_file_gets_answers(host: str, url_host: str) -> None:
    """Over 127.0.0.1, localhost and ::1 the valid certificate verifies against ca_file."""
    async with PhalaSimulator(cvms=2, tls=True, host=host) as sim:
        context = ssl.create_default_context(cafile=sim.ca_file)
        port = sim.base_url.rsplit(":", 1)[1].split("/")[0]
        status, cvm = await get(sim, "cvms/2", context, url=f"https://{url_host}:{port}/api/v1")
    assert (status, cvm) == (200, sim.cvm(2))


async def test_base_url_says_https() -> None:
    """With tls the base URL is https on 127.0.0.1 and the bound port."""
    async with PhalaSimulator(tls=True) as sim:
        assert re.fullmatch(r"https://127\.0\.0\.1:\d+/api/v1", sim.base_url)


async def test_ca_pem_is_the_content_of_ca_file() -> None:
    """ca_pem is one PEM certificate, byte for byte what ca_file holds."""
    async with PhalaSimulator(tls=True) as sim:
        written = await asyncio.to_thread(Path(sim.ca_file).read_bytes)
    assert written == sim.ca_pem
    assert sim.ca_pem.count(b"-----BEGIN CERTIFICATE-----") == 1


async def test_ca_file_is_removed_on_close() -> None:
    """close() removes ca_file and its directory; ca_file is then unavailable."""
    sim = PhalaSimulator(tls=True)
    async with sim:
        ca_file = Path(sim.ca_file)
        assert await asyncio.to_thread(ca_file.is_file)
    assert not await asyncio.to_thread(ca_file.parent.exists)
    with pytest.raises(RuntimeError, match="not running"):
        _ = sim.ca_file


@pytest.mark.parametrize(
    ("tls_cert", "trust_ca", "reason"),
    [
        ("wrong_host", True, "mismatch, certificate is not valid for '127.0.0.1'"),
        ("self_signed", True, "self-signed certificate"),
        ("valid", False, "unable to get local issuer certificate"),
    ],
    ids=["wrong-host", "self-signed", "unknown-ca"],
)
async def test_bad_certificates_fail_verification(
    tls_cert: Any, trust_ca: bool, reason: str
) -> None:
    """Each bad certificate fails the client's verification for its own reason, before a request."""
    async with PhalaSimulator(tls=True, tls_cert=tls_cert) as sim:
        context = ssl.create_default_context(cafile=sim.ca_file if trust_ca else None)
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await get(sim, "cvms/1", context)
    error = caught.value.certificate_error
    assert isinstance(error, ssl.SSLCertVerificationError)
    assert reason in error.verify_message
    assert (sim.connections, sim.total_requests) == (1, 0)


async def test_wrong_host_certificate_is_the_cas_for_another_name() -> None:
    """The wrong_host certificate verifies against ca_file for other.example, its only name."""
    async with PhalaSimulator(cvms=1, tls=True, tls_cert="wrong_host") as sim:
        context = ssl.create_default_context(cafile=sim.ca_file)
        status, cvm = await get(sim, "cvms/1", context, server_hostname="other.example")
    assert (status, cvm["id"]) == (200, 1)


async def test_each_simulator_has_its_own_ca() -> None:
    """A client trusting one simulator's CA does not trust another's."""
    async with PhalaSimulator(tls=True) as first, PhalaSimulator(tls=True) as second:
        context = ssl.create_default_context(cafile=first.ca_file)
        status, _ = await get(first, "cvms/1", context)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(second, "cvms/1", context)
    assert first.ca_pem != second.ca_pem
    assert status == 200


@pytest.mark.parametrize("attribute", ["ca_file", "ca_pem"])
async def test_plain_http_has_no_ca(attribute: str) -> None:
    """Without tls, ca_file and ca_pem raise RuntimeError naming tls=True."""
    async with PhalaSimulator() as sim:
        assert sim.base_url.startswith("http://")
        with pytest.raises(RuntimeError, match="tls=True"):
            getattr(sim, attribute)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"tls": True, "tls_cert": "unknown_ca"}, "do not trust ca_file"),
        ({"tls": True, "tls_cert": "expired"}, "tls_cert must be one of"),
        ({"tls_cert": "self_signed"}, r"needs tls=True"),
    ],
    ids=["unknown-ca", "unknown-kind", "without-tls"],
)
def test_bad_tls_configuration_fails_at_construction(config: dict[str, Any], message: str) -> None:
    """An unknown tls_cert, or one without tls, raises ValueError saying what to pass."""
    with pytest.raises(ValueError, match=message):
        PhalaSimulator(**config)


def test_missing_trustme_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without trustme installed, tls=True raises ImportError naming the extra to install."""
    monkeypatch.setitem(sys.modules, "trustme", None)  # makes `import trustme` fail
    monkeypatch.delitem(sys.modules, "phala_async.testing._tls", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'phala-async\[testing\]'"):
        PhalaSimulator(tls=True)
    assert PhalaSimulator().cvm_ids  # plain HTTP needs no trustme


async def test_stale_connections_are_dropped_over_tls_too() -> None:
    """With drop_after=1 over TLS, the second request on a connection is dropped, then answered."""
    async with PhalaSimulator(cvms=2, tls=True, drop_after=1) as sim:
        context = ssl.create_default_context(cafile=sim.ca_file)
        connector = aiohttp.TCPConnector(limit=1, ssl=context)
        statuses = []
        async with aiohttp.ClientSession(connector=connector) as session:
            for cvm_id in sim.cvm_ids:
                for _ in range(2):  # aiohttp may or may not resend on a new connection itself
                    try:
                        async with session.get(
                            f"{sim.base_url}/cvms/{cvm_id}", headers={"X-API-Key": sim.api_key}
                        ) as response:
                            statuses.append(response.status)
                            break
                    except aiohttp.ServerDisconnectedError:
                        continue
    assert statuses == [200, 200]
    assert (sim.connections, sim.status_counts["dropped"]) == (2, 1)
