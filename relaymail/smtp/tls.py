"""Listener TLS material: load a PEM certificate chain and key, or make a self-signed pair;
and the TLS profile every listener and the verified outbound client use.

Contexts are built from ``cryptography`` objects; the pyOpenSSL object path is deprecated.

The profile is Mozilla's "intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS):
TLS 1.2 and 1.3 only; on TLS 1.2 only forward-secret AEAD suites (ECDHE/DHE with AES-GCM or
ChaCha20-Poly1305: no CBC, no SHA-1 MAC, no static RSA, no NULL/EXPORT/RC4); TLS 1.3 suites
are OpenSSL's defaults (all AEAD).  DHE uses the RFC 7919 ffdhe2048 group (ffdhe2048.pem,
checked against the RFC's formula in tests/test_tls_profile.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.ssl import (
    CertificateOptions,
    DiffieHellmanParameters,
)
from twisted.python.filepath import FilePath

from relaymail.common.tls import intermediate_profile
from relaymail.config import ConfigError, TLSConfig

FFDHE2048 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ffdhe2048.pem")


def server_tls_options(tls: TLSConfig, source: str) -> CertificateOptions | None:
    """CertificateOptions for the listeners, or None when no certificate is configured."""
    if tls.certificate is None or tls.private_key is None:
        return None
    chain = load_chain(tls.certificate, source)
    key = load_key(tls.private_key, source)
    return CertificateOptions(
        # Twisted takes cryptography objects here since 24.7; its annotation still says X509
        privateKey=key, certificate=chain[0],  # type: ignore[arg-type]
        extraCertChain=chain[1:],  # type: ignore[arg-type]
        dhParameters=DiffieHellmanParameters.fromFile(FilePath(FFDHE2048)),
        **intermediate_profile(),
    )


def load_chain(path: str, source: str) -> list[x509.Certificate]:
    try:
        with open(path, "rb") as f:
            chain = x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError) as e:
        raise ConfigError(source, "smtp.tls.certificate", f"cannot load certificate: {e}",
                          path) from None
    return chain


def load_key(path: str, source: str):  # type: ignore[no-untyped-def]
    try:
        with open(path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(source, "smtp.tls.private_key", f"cannot load private key: {e}",
                          path) from None


def ensure_self_signed(tls: TLSConfig, hostname: str) -> bool:
    """With ``self_signed: true`` and no files yet, write a fresh pair; True if one was made."""
    if not tls.self_signed or tls.certificate is None or tls.private_key is None:
        return False
    if os.path.exists(tls.certificate) and os.path.exists(tls.private_key):
        return False
    cert_pem, key_pem = make_self_signed(hostname)
    for path, data, mode in ((tls.private_key, key_pem, 0o600), (tls.certificate, cert_pem, 0o644)):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        # never through a symlink someone planted there; the key 0600, the certificate 0644
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode)
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    return True


def self_signed_names(hostname: str) -> list[x509.GeneralName]:
    """The host name, and the loopback addresses the sample config listens on (clients
    told to use 127.0.0.1 check the certificate against the address)."""
    names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
              x509.IPAddress(ipaddress.ip_address("::1"))]
    return names


def make_self_signed(hostname: str, days: int = 3650) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(self_signed_names(hostname)),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM), key_pem
