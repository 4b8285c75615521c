"""``relaymail dkim keygen``: write a signing key (0600) and print the DNS record to publish."""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from relaymail.cli.queue import CommandError
from relaymail.policy.dkim import DkimKey
from relaymail.spool.safeio import open_private


def add_parser(sub: Any) -> None:
    dkim = sub.add_parser("dkim", help="DKIM signing keys")
    dsub = dkim.add_subparsers(title="dkim commands")
    keygen = dsub.add_parser("keygen", help="write a new key and print its DNS TXT record")
    keygen.add_argument("--domain", required=True)
    keygen.add_argument("--selector", required=True)
    keygen.add_argument("--algorithm", choices=("rsa", "ed25519"), default="rsa")
    keygen.add_argument("--bits", type=int, default=2048, help="RSA key size (default 2048)")
    keygen.add_argument("--output", help="key file (default: dkim/<domain>.<selector>.key)")
    keygen.add_argument("--force", action="store_true", help="overwrite an existing key file")
    keygen.set_defaults(run=cmd_keygen)


def generate(algorithm: str, bits: int) -> rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if bits < 1024 or bits > 8192:
        raise CommandError(f"--bits must be between 1024 and 8192 (got {bits})")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_private_key(path: str, key: Any, force: bool) -> None:
    """PKCS#8 PEM, created with mode 0600 (never readable by others, even for a moment)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    os.makedirs(os.path.dirname(os.path.abspath(path)), mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = open_private(path, flags)
    except FileExistsError:
        raise CommandError(f"{path} exists; use --force to replace it") from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)


def zone_text(name: str, record: str) -> str:
    """A TXT record in zone-file syntax; long values are split into 255-byte strings."""
    parts = [record[i:i + 255] for i in range(0, len(record), 255)]
    return f'{name}. IN TXT ( ' + " ".join(f'"{p}"' for p in parts) + " )"


LABELS = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def cmd_keygen(args: argparse.Namespace) -> int:
    domain = args.domain.lower().rstrip(".")
    for what, value in (("--domain", domain), ("--selector", args.selector.lower())):
        if not LABELS.fullmatch(value):
            raise CommandError(f"{what} must be DNS labels like example.com (got {value!r})")
    algorithm = "ed25519-sha256" if args.algorithm == "ed25519" else "rsa-sha256"
    key = DkimKey(domain, args.selector, algorithm, generate(args.algorithm, args.bits))
    path = args.output or os.path.join("dkim", f"{domain}.{args.selector}.key")
    write_private_key(path, key.private_key, args.force)
    name = f"{args.selector}._domainkey.{domain}"
    print(f"wrote {path} (mode 0600)\n")
    print(f"Publish this DNS TXT record:\n{zone_text(name, key.dns_record())}\n")
    print("Add to the \"dkim\" list of the config:")
    print(f'  {{"domain": "{domain}", "selector": "{args.selector}", '
          f'"private_key": "{os.path.abspath(path)}", "algorithm": "{algorithm}"}}')
    return 0
