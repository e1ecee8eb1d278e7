"""Self-signed certificates: the TLS listener's when none is configured (SPEC §4), and the
ClearIP emulator's throw-away one. (The test lab's CA-signed pairs are in tests/sippy_runner.py:
they need a CA to verify against, which a self-signed certificate is not.)"""

from __future__ import annotations

import datetime
import ipaddress
import socket
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clearip.files import write_private

SELF_SIGNED = "tls/self-signed.pem"  # certificate and key in one file: replaced atomically


def self_signed(
    common_name: str, dns: Iterable[str] = (), ips: Iterable[str] = (), days: int = 3650
) -> tuple[bytes, bytes]:
    """(certificate PEM, PKCS#8 key PEM) of a new P-256 self-signed certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def ensure_self_signed(state_dir: str) -> str:
    """Path of a PEM holding a self-signed certificate and its key, made on first use."""
    path = Path(state_dir) / SELF_SIGNED
    if path.exists():
        return str(path)
    host = socket.gethostname() or "clearip"
    cert, key = self_signed(host, dns=[host])
    # Several workers may race here on a fresh state_dir: the first file made is the one every
    # worker uses, never replaced, so none can load the certificate of one version and the key
    # of another (load_cert_chain reads the file twice).
    write_private(path, cert + key, replace=False)
    return str(path)
