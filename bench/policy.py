"""Per-message cost of the acceptance policy, on this machine: DKIM body hash and signature
(RSA 2048, Ed25519), one rate-limit reservation in memory and in a local redis-server, and
a login's lookup at MAIL (the credentials file's, an account's from the accounts view with
10,000 users) and a bearer token's.  Printed as a table; no targets (issue 5 sets none),
so the figures are for the notes."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.internet.task import Clock

from relaymail.policy.counters import Bucket, MemoryCounters
from relaymail.policy.dkim import DkimKey, RelaxedBodyHash, Signer, parse_headers

HEADERS = (b"From: app@example.com\r\nTo: user@example.org\r\nSubject: bench\r\n"
           b"Date: Mon, 1 Jan 2024 00:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n")
BODY = [b"A line of ordinary text, %d, with  a double space and a tab\tin it." % i
        for i in range(64)]  # about 4 KiB


def per_call(f: Callable[[], object], seconds: float = 1.0) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        f()
        count += 1
    return (time.perf_counter() - start) / count


def body_hash() -> None:
    h = RelaxedBodyHash()
    for line in BODY:
        h.line(line)
    h.digest_b64()


def redis_reserve() -> float | None:
    if shutil.which("redis-server") is None:
        return None
    import redis

    from relaymail.policy.redis_counters import RESERVE
    directory = tempfile.mkdtemp()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket",
                             f"{directory}/r.sock", "--save", ""], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(unix_socket_path=f"{directory}/r.sock")
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        script = client.register_script(RESERVE)
        return per_call(lambda: script(keys=["a", "b", "c"], args=[1, 10**9, 3600, 10**9,
                                                                  3600, 10**9, 3600]))
    finally:
        proc.terminate()
        proc.wait()


def account_lookups() -> list[tuple[str, float]]:
    """What MAIL and every API request pay for accounts: dictionary lookups in the view."""
    from twisted.internet import reactor

    from relaymail.accounts import store
    from relaymail.accounts.database import Database
    from relaymail.accounts.model import SmtpLogin
    from relaymail.accounts.secrets import digest, new_token
    from relaymail.accounts.view import AccountsView, CombinedCredentials
    from relaymail.credentials import CredentialStore

    directory = tempfile.mkdtemp()
    db = Database(f"{directory}/accounts.db", reactor)
    db.open_now()
    token = new_token()

    def fill(conn: object) -> None:
        for i in range(10_000):
            user = store.create_user(conn, f"user{i}", f"u{i}@example.com", "h", "user", 1.0)
            store.add_login(conn, SmtpLogin(f"relay_{i:08x}_0000", user.id, "app", "h", True,
                                            None, None, [], False, 1.0))
        store.add_token(conn, digest(token), 1, 1.0, 1e12)

    db.transaction(fill)
    view = AccountsView(db, time.time, reactor)
    view.load_now()
    files = CredentialStore(f"{directory}/credentials.json")
    files.add("app1", "secret-password")
    combined = CombinedCredentials(files, view)
    rows = [("login lookup at MAIL: the credentials file's", per_call(
                lambda: combined.get("app1"))),
            ("login lookup at MAIL: an account's (10,000 users)", per_call(
                lambda: combined.get("relay_00001234_0000"))),
            ("bearer token lookup (10,000 users)", per_call(lambda: view.by_token(token)))]
    started = time.perf_counter()
    view.load_now()
    rows.append(("accounts view reload, 10,000 users and logins", time.perf_counter() - started))
    db.stop()
    return rows


def main() -> None:
    fields = parse_headers(HEADERS)
    rows = [("DKIM relaxed body hash, 4 KiB", per_call(body_hash))]
    for label, key in (("rsa-sha256", rsa.generate_private_key(public_exponent=65537,
                                                              key_size=2048)),
                       ("ed25519-sha256", ed25519.Ed25519PrivateKey.generate())):
        signer = Signer([DkimKey("example.com", "s", label, key)], time.time)
        keys = signer.keys_for("example.com")
        rows.append((f"DKIM signature {label}", per_call(
            lambda s=signer, k=keys: s.sign(fields, b"x" * 44, k))))
    counters = MemoryCounters(Clock().seconds)
    buckets = [Bucket(f"k{i}", 10**9, 3600) for i in range(3)]
    rows.append(("rate limit reserve, 3 limits, memory", per_call(
        lambda: counters.reserve(buckets, 1))))
    redis_cost = redis_reserve()
    if redis_cost is not None:
        rows.append(("rate limit reserve, 3 limits, redis (unix socket, 1 client)", redis_cost))
    rows += account_lookups()
    print(f"{'measure':<62} {'per message':>12}")
    for label, seconds in rows:
        print(f"{label:<62} {seconds * 1e6:>9.1f} us")


if __name__ == "__main__":
    main()
