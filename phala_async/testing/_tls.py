"""Certificates for ``phala_async.testing.PhalaSimulator(tls=True)``: a throwaway CA and the server
certificate it presents, good or deliberately bad.

Imported only when a simulator is asked for TLS, so trustme (and cryptography, which trustme
depends on) are needed only then: ``pip install 'phala-async[testing]'``.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

try:
    import trustme
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
except ImportError as exc:
    raise ImportError(
        "PhalaSimulator(tls=True) needs trustme: pip install 'phala-async[testing]'"
    ) from exc

__all__ = ["LOCAL_NAMES", "OTHER_HOST", "ServerCertificates"]

# The names a valid server certificate is issued for: every way a test reaches a local server.
LOCAL_NAMES = ("127.0.0.1", "localhost", "::1")
OTHER_HOST = "other.example"  # the only name of a "wrong_host" certificate


class ServerCertificates:
    """A fresh CA, and the certificate of kind ``kind`` that the server presents.

    Args:
        kind: ``"valid"`` (signed by the CA for ``LOCAL_NAMES``), ``"wrong_host"`` (signed by the CA
            for ``OTHER_HOST`` only) or ``"self_signed"`` (for ``LOCAL_NAMES``, signed by its own
            key).
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._ca = trustme.CA(organization_name="phala-async simulator")
        self.ca_pem = self._ca.cert_pem.bytes()

    def server_context(self, directory: Path) -> tuple[Path, ssl.SSLContext]:
        """Write the CA bundle into ``directory``; return its path and the server's SSL context."""
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(self.ca_pem)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if self._kind == "self_signed":
            leaf_file = directory / "self-signed.pem"
            leaf_file.write_bytes(_self_signed_pem(LOCAL_NAMES))
            context.load_cert_chain(leaf_file)
        else:
            names = LOCAL_NAMES if self._kind == "valid" else (OTHER_HOST,)
            self._ca.issue_cert(*names).configure_cert(context)
        return ca_file, context


def _self_signed_pem(names: tuple[str, ...]) -> bytes:
    """A private key and a certificate for ``names`` that the key signs itself, as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + certificate.public_bytes(serialization.Encoding.PEM)
