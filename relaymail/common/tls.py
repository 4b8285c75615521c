"""The TLS profile every listener and the verified outbound client use: Mozilla's
"intermediate" (https://wiki.mozilla.org/Security/Server_Side_TLS): TLS 1.2 and 1.3 only; on
TLS 1.2 only forward-secret AEAD suites (ECDHE/DHE with AES-GCM or ChaCha20-Poly1305: no CBC,
no SHA-1 MAC, no static RSA, no NULL/EXPORT/RC4); TLS 1.3 suites are OpenSSL's defaults."""

from __future__ import annotations

from typing import Any

from twisted.internet.ssl import AcceptableCiphers, TLSVersion

MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2
INTERMEDIATE_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
))


def intermediate_profile() -> dict[str, Any]:
    """CertificateOptions keywords for Mozilla's intermediate profile (client and server)."""
    return {"raiseMinimumTo": MINIMUM_TLS_VERSION,
            "acceptableCiphers": AcceptableCiphers.fromOpenSSLCipherString(
                INTERMEDIATE_CIPHERS)}
