"""DKIM signing (RFC 6376, RFC 8463) once, at acceptance, with relaxed/relaxed canonicalization.

The body hash is computed line by line while DATA streams to the spool, so a message of any
size is never held in memory to be signed.  dkimpy canonicalizes and hashes the header
fields (the subtle part) and verifies in the tests; the signature itself is made with the
``cryptography`` package, because dkimpy's pure-Python RSA takes 7 ms per message.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from relaymail.config import ConfigError

# RFC 6376 5.4.1's list, less the rarely present Resent-* fields; From is signed twice
# ("oversigned") so that no second From can be added without breaking the signature.
SIGNED_HEADERS = (
    b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
    b"mime-version", b"content-type", b"content-transfer-encoding", b"content-id",
    b"content-description", b"in-reply-to", b"references", b"list-id", b"list-help",
    b"list-unsubscribe", b"list-unsubscribe-post", b"list-subscribe", b"list-post",
    b"list-owner", b"list-archive",
)
OVERSIGNED = (b"from",)
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
_TAB_TO_SPACE = bytes.maketrans(b"\t", b" ")
_CANON = dkim.CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")


class SigningError(Exception):
    """The message could not be signed (unparsable header block)."""


@dataclass(frozen=True)
class DkimKey:
    """One signing key: who it signs for, and the loaded private key."""

    domain: str
    selector: str
    algorithm: str
    private_key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

    @property
    def label(self) -> str:
        return f"{self.domain}/{self.selector}"

    def public_key_b64(self) -> str:
        """The p= value of the DNS TXT record."""
        public = self.private_key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode()

    def dns_record(self) -> str:
        """The TXT record to publish at ``<selector>._domainkey.<domain>``."""
        kind = "ed25519" if self.algorithm == "ed25519-sha256" else "rsa"
        return f"v=DKIM1; k={kind}; p={self.public_key_b64()}"

    def sign_digest(self, digest: bytes) -> bytes:
        if isinstance(self.private_key, ed25519.Ed25519PrivateKey):
            return self.private_key.sign(digest)  # RFC 8463: Ed25519 over the SHA-256 hash
        return self.private_key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))


def load_key(entry: Mapping[str, Any], config_path: str, index: int) -> DkimKey:
    """Load one ``dkim[]`` entry; an unusable key stops startup with a ConfigError."""
    key_name = f"dkim[{index}].private_key"
    path = entry["private_key"]
    try:
        with open(path, "rb") as f:
            private = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise ConfigError(config_path, key_name, f"cannot read key: {e.strerror}", path) from None
    except (ValueError, TypeError) as e:
        raise ConfigError(config_path, key_name, f"not a PEM private key: {e}", path) from None
    wanted = ed25519.Ed25519PrivateKey if entry["algorithm"] == "ed25519-sha256" \
        else rsa.RSAPrivateKey
    if not isinstance(private, wanted):
        raise ConfigError(config_path, key_name,
                          f"key type does not match algorithm {entry['algorithm']}", path)
    if isinstance(private, rsa.RSAPrivateKey) and private.key_size < 1024:
        raise ConfigError(config_path, key_name, "RSA keys shorter than 1024 bits are refused "
                          "by verifiers (RFC 8301)", path)
    return DkimKey(entry["domain"], entry["selector"], entry["algorithm"], private)


class RelaxedBodyHash:
    """SHA-256 of the relaxed-canonicalized body (RFC 6376 3.4.4), fed one line at a time.

    Lines are canonicalized in blocks of about 64 KiB rather than one by one (a seventh of
    the cost); trailing empty lines are held back, as they are not hashed.
    """

    BLOCK = 64 * 1024

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._empty_lines = 0
        self._pending: list[bytes] = []
        self._pending_size = 0

    def line(self, line: bytes) -> None:
        """One body line without its CRLF (and with no CR or LF inside)."""
        self._pending.append(line)
        self._pending_size += len(line) + 2
        if self._pending_size >= self.BLOCK:
            self._flush()

    def block(self, block: bytes) -> None:
        """Complete body lines, each with its CRLF (no other CR or LF inside)."""
        self._pending.append(block[:-2])
        self._pending_size += len(block)
        if self._pending_size >= self.BLOCK:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        block = b"\r\n".join(self._pending) + b"\r\n"
        self._pending, self._pending_size = [], 0
        block = compress_whitespace(block)
        content = block.rstrip(b"\r\n")  # up to the last non-empty line
        if not content:
            self._empty_lines += len(block) // 2
            return
        self._hash.update(b"\r\n" * self._empty_lines + content + b"\r\n")
        self._empty_lines = (len(block) - len(content) - 2) // 2

    def digest_b64(self) -> bytes:
        self._flush()
        return base64.b64encode(self._hash.copy().digest())


def compress_whitespace(block: bytes) -> bytes:
    """Relaxed body rules on CRLF lines: WSP runs become one space, none before CRLF.
    (bytes.replace in a loop is three times faster than a regex here.)"""
    block = block.translate(_TAB_TO_SPACE)
    while b"  " in block:
        block = block.replace(b"  ", b" ")
    return block.replace(b" \r\n", b"\r\n")


def from_domain(header_fields: Sequence[tuple[bytes, bytes]]) -> str | None:
    """The domain of the (first) From header address, lower case; None without one."""
    for name, value in header_fields:
        if name.lower() == b"from":
            text = value.decode("utf-8", "replace")
            try:
                addresses = email.utils.getaddresses([text])
            except Exception:  # e.g. RecursionError on "((((...": no domain to sign for
                return None
            for _, address in addresses:
                if "@" in address:
                    return address.rpartition("@")[2].strip().rstrip(".").lower() or None
            return None
    return None


def parse_headers(header_block: bytes) -> list[tuple[bytes, bytes]]:
    """The header block (CRLF lines, no blank line) as dkimpy's (name, value) pairs."""
    try:
        fields, _ = dkim.rfc822_parse(header_block + b"\r\n")
    except dkim.MessageFormatError as e:
        raise SigningError(str(e)) from None
    return [(bytes(n), bytes(v)) for n, v in fields]


class Signer:
    """Chooses keys by the From domain (or a parent domain) and makes DKIM-Signature fields."""

    def __init__(self, keys: Iterable[DkimKey], clock: Callable[[], float]) -> None:
        self.by_domain: dict[str, list[DkimKey]] = {}
        for key in keys:
            self.by_domain.setdefault(key.domain, []).append(key)
        self.clock = clock

    def keys_for(self, domain: str | None) -> list[DkimKey]:
        """Exact domain first, then parents: a key for example.com signs mail.example.com
        mail and still aligns for DMARC (relaxed alignment)."""
        labels = (domain or "").split(".")
        for i in range(len(labels) - 1):
            found = self.by_domain.get(".".join(labels[i:]))
            if found:
                return found
        return []

    def sign(self, fields: list[tuple[bytes, bytes]], body_hash: bytes,
             keys: Sequence[DkimKey]) -> bytes:
        """DKIM-Signature fields (CRLF-terminated) to put on top of the message."""
        present = {n.lower() for n, _ in fields}
        include = [h for h in SIGNED_HEADERS if h in present] + list(OVERSIGNED)
        return b"".join(self._one(fields, include, body_hash, key) for key in reversed(keys))

    def _one(self, fields: list[tuple[bytes, bytes]], include: list[bytes], body_hash: bytes,
             key: DkimKey) -> bytes:
        tags = [
            (b"v", b"1"), (b"a", key.algorithm.encode()), (b"c", b"relaxed/relaxed"),
            (b"d", key.domain.encode()), (b"s", key.selector.encode()),
            (b"t", str(int(self.clock())).encode()), (b"h", b":".join(include)),
            (b"bh", body_hash),
        ]
        name = b"DKIM-Signature"
        unsigned = fold_signature(name, [*tags, (b"b", b"")])
        hasher = dkim.HashThrough(hashlib.sha256())
        dkim.hash_headers(hasher, _CANON, _CANON.canonicalize_headers(fields), include,
                          (name, unsigned[len(name) + 1:]), {})
        signature = base64.b64encode(key.sign_digest(hasher.digest()))
        return fold_signature(name, [*tags, (b"b", signature)]) + b"\r\n"


FOLD_WIDTH = 76


def fold_signature(name: bytes, tags: Sequence[tuple[bytes, bytes]]) -> bytes:
    """``name: t=v; t=v; ...`` folded to FOLD_WIDTH, breaking only where RFC 6376 3.2 and 3.5
    allow FWS: between tags, after a colon of ``h=``, and anywhere inside the base64 of
    ``b=`` and ``bh=``.  Never inside a header name or a domain (dkimpy's own ``fold``
    breaks at column 72 wherever it is, which split ``content-transfer-encoding``)."""
    lines = [name + b":"]
    for i, (tag, value) in enumerate(tags):
        end = b"" if i == len(tags) - 1 else b";"
        if tag in (b"b", b"bh"):
            _put(lines, tag + b"=", b" ")
            _put_breakable(lines, value + end)
        elif tag == b"h":
            names = value.split(b":")
            for j, header in enumerate(names):
                last = j == len(names) - 1
                _put(lines, (b"h=" if j == 0 else b"") + header + (end if last else b":"),
                     b" " if j == 0 else b"")
        else:
            _put(lines, tag + b"=" + value + end, b" ")
    return b"\r\n".join(lines)


def _put(lines: list[bytes], atom: bytes, separator: bytes) -> None:
    """Append an unbreakable atom, on a new (FWS-started) line when it does not fit."""
    if len(lines[-1]) + len(separator) + len(atom) > FOLD_WIDTH and lines[-1].strip():
        lines.append(b" " + atom)
    else:
        lines[-1] += separator + atom


def _put_breakable(lines: list[bytes], text: bytes) -> None:
    """Append base64 text, filling each line and continuing on FWS-started lines."""
    while text:
        room = FOLD_WIDTH - len(lines[-1])
        if room < 8:
            lines.append(b" ")
            room = FOLD_WIDTH - 1
        lines[-1] += text[:room]
        text = text[room:]


def build_signer(entries: Sequence[Mapping[str, Any]], config_path: str,
                 clock: Callable[[], float]) -> Signer | None:
    """The signer for the ``dkim`` config list; None when no key is configured."""
    if not entries:
        return None
    return Signer([load_key(e, config_path, i) for i, e in enumerate(entries)], clock)
