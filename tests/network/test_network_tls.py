"""HTTPS against the TLS simulator: trusting a private CA, and certificate failures that are
final, say why, and cost one connection however many ids were asked for."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from _proxy import clean_network_environment  # noqa: F401 - used by pytestmark

from phala_async import (
    APITLSError,
    AuthenticationError,
    ConfigurationError,
    CvmResult,
    PhalaClient,
)
from phala_async.testing import PhalaSimulator

TRUST_FIX = "pass ca_file="

pytestmark = pytest.mark.usefixtures("clean_network_environment")


async def sweep(client: PhalaClient, ids: range) -> list[CvmResult]:
    """Every result of a ``stream_cvms`` sweep over ``ids``, as it yields them."""
    async with client.stream_cvms(ids) as stream:
        return [result async for result in stream]


async def test_https_works_with_ca_file(client_for: Callable[..., PhalaClient]) -> None:
    """``ca_file=`` trusts the simulator's CA: a sweep over HTTPS gets every id."""
    async with PhalaSimulator(cvms=20, tls=True) as sim:
        assert sim.base_url.startswith("https://")
        async with asyncio.timeout(10), client_for(sim, ca_file=sim.ca_file) as client:
            results = await client.get_cvms(range(1, 21))
    assert [result.cvm.id for result in results if result.cvm] == list(range(1, 21))


async def test_https_works_with_an_ssl_context(client_for: Callable[..., PhalaClient]) -> None:
    """``ssl=`` takes an ``SSLContext`` that trusts the CA."""
    async with PhalaSimulator(cvms=3, tls=True) as sim:
        context = ssl.create_default_context(cadata=sim.ca_pem.decode())
        async with asyncio.timeout(10), client_for(sim, ssl=context) as client:
            cvm = await client.get_cvm(3)
    assert cvm.id == 3


async def test_https_works_with_ssl_cert_file_set_after_import(
    monkeypatch: pytest.MonkeyPatch, client_for: Callable[..., PhalaClient]
) -> None:
    """``SSL_CERT_FILE`` set long after aiohttp was imported is honoured by a new client."""
    async with PhalaSimulator(cvms=3, tls=True) as sim:
        monkeypatch.setenv("SSL_CERT_FILE", sim.ca_file)
        async with asyncio.timeout(10), client_for(sim) as client:
            cvm = await client.get_cvm(2)
    assert cvm.id == 2


async def test_ssl_cert_dir_is_honoured(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, client_for: Callable[..., PhalaClient]
) -> None:
    """``SSL_CERT_DIR`` (a directory of CA certificates named by subject hash) is honoured."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command names certificates by subject hash; it is not here")
    async with PhalaSimulator(cvms=3, tls=True) as sim:
        hashing = await asyncio.create_subprocess_exec(
            openssl, "x509", "-noout", "-subject_hash", "-in", sim.ca_file,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        subject_hash, _ = await hashing.communicate()
        assert hashing.returncode == 0
        (tmp_path / f"{subject_hash.decode().strip()}.0").write_bytes(sim.ca_pem)
        monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
        async with asyncio.timeout(10), client_for(sim) as client:
            cvm = await client.get_cvm(1)
    assert cvm.id == 1


@pytest.mark.parametrize(
    ("tls_cert", "trust", "reason"),
    [
        pytest.param("self_signed", True, "self-signed certificate", id="self-signed"),
        pytest.param("valid", False, "unable to get local issuer certificate", id="unknown-ca"),
        pytest.param("wrong_host", True, "mismatch", id="wrong-host"),
    ],
)
async def test_a_certificate_failure_is_final_and_says_why(
    tls_cert: str, trust: bool, reason: str, client_for: Callable[..., PhalaClient]
) -> None:
    """A certificate the client cannot accept raises ``APITLSError`` after one attempt, with
    OpenSSL's reason and the fix in the message."""
    async with PhalaSimulator(cvms=3, tls=True, tls_cert=tls_cert) as sim:  # type: ignore[arg-type]
        client = client_for(sim, ca_file=sim.ca_file if trust else None)
        async with asyncio.timeout(10), client:
            with pytest.raises(APITLSError) as caught:
                await client.get_cvm(1)
            stats = client.stats
        connections = sim.connections
    error = caught.value
    assert reason in str(error)
    assert "127.0.0.1:" in str(error)
    assert error.attempts == 1
    assert stats.requests == 1
    assert stats.retries == 0
    assert connections == 1
    assert isinstance(error.__cause__, ssl.SSLCertVerificationError)
    if tls_cert == "wrong_host":
        assert "check the host in base_url" in str(error)
    else:
        assert TRUST_FIX in str(error)
        assert "SSL_CERT_FILE" in str(error)


async def test_a_certificate_failure_ends_a_sweep_at_once(
    client_for: Callable[..., PhalaClient],
) -> None:
    """A 100-id sweep against an untrusted certificate makes one connection, then raises."""
    async with PhalaSimulator(cvms=100, tls=True) as sim:
        client = client_for(sim, concurrency=16)
        async with asyncio.timeout(10), client:
            with pytest.raises(APITLSError, match="not trusted"):
                await sweep(client, range(1, 101))
            stats = client.stats
        connections = sim.connections
        total = sim.total_requests
    assert connections == 1
    assert total == 0  # the handshake failed: no request was ever read
    assert stats.requests == 1


async def test_a_refused_credential_over_https_ends_a_500_id_sweep_after_one_request(
    client_for: Callable[..., PhalaClient],
) -> None:
    """Over HTTPS too, a wrong key sends exactly one request for a 500-id sweep."""
    async with PhalaSimulator(cvms=500, tls=True) as sim:
        client = client_for(sim, api_key="phak_wrong_key_for_this_test", ca_file=sim.ca_file)
        async with asyncio.timeout(10), client:
            with pytest.raises(AuthenticationError) as caught:
                await sweep(client, range(1, 501))
        total = sim.total_requests
    assert total == 1
    assert caught.value.status_code == 401


async def test_a_handshake_failure_is_final(client_for: Callable[..., PhalaClient]) -> None:
    """https to a port that speaks plain HTTP fails the handshake: final, with the reason."""
    async with PhalaSimulator(cvms=1) as sim:
        base_url = sim.base_url.replace("http://", "https://")
        client = client_for(sim, base_url=base_url)
        async with asyncio.timeout(10), client:
            with pytest.raises(APITLSError) as caught:
                await client.get_cvm(1)
            stats = client.stats
    assert "TLS handshake with 127.0.0.1:" in str(caught.value)
    assert "wrong version number" in str(caught.value)
    assert stats.requests == 1
    assert isinstance(caught.value.__cause__, ssl.SSLError)


def test_ssl_and_ca_file_together_are_refused() -> None:
    """``ssl`` and ``ca_file`` together fail at construction, saying what to pass."""
    with pytest.raises(ConfigurationError, match=r"load_verify_locations\(ca_file\)"):
        PhalaClient(api_key="phak_x", ssl=ssl.create_default_context(), ca_file="ca.pem")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"ssl": True}, "ssl must be an ssl.SSLContext", id="ssl-not-a-context"),
        pytest.param({"ca_file": 42}, "ca_file must be the path", id="ca-file-not-a-path"),
        pytest.param({"ca_file": "/no/such/ca.pem"}, "cannot be read", id="ca-file-missing"),
    ],
)
def test_a_bad_trust_argument_fails_at_construction(options: dict[str, Any], message: str) -> None:
    """A wrong ``ssl`` or ``ca_file`` fails when the client is made, naming what to pass."""
    with pytest.raises(ConfigurationError, match=message):
        PhalaClient(api_key="phak_x", **options)


def test_a_ca_file_that_is_not_pem_fails_at_construction(tmp_path: Path) -> None:
    """A file that holds no PEM certificate is refused as a CA bundle."""
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="cannot be read as a PEM CA bundle"):
        PhalaClient(api_key="phak_x", ca_file=bogus)


async def test_the_os_trust_store_through_truststore_refuses_an_unknown_ca(
    client_for: Callable[..., PhalaClient],
) -> None:
    """An ``ssl=truststore.SSLContext(...)`` (the OS trust store) is used: a private CA the OS
    does not know fails final, with the reason."""
    truststore = pytest.importorskip("truststore")
    async with PhalaSimulator(cvms=1, tls=True) as sim:
        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        async with asyncio.timeout(10), client_for(sim, ssl=context) as client:
            with pytest.raises(APITLSError, match="not trusted") as caught:
                await client.get_cvm(1)
            stats = client.stats
    assert stats.requests == 1
    assert TRUST_FIX in str(caught.value)
