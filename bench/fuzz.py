"""A long run of the SMTP session fuzzer (tests/test_fuzz_smtp.py), outside CI.

CI runs a few thousand inputs per change; this runs ``--inputs`` (default 1,000,000) of
the same kinds (random pieces, AUTH exchanges, mutations of a real transcript) with a
seeded generator, and reports inputs per second and every input that broke a rule (an
exception, a logged failure, a malformed reply, or no clean message queued afterwards).
Goal: 0.  ``python bench/fuzz.py --inputs 100000 --seed 7``
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_fuzz_smtp import VERBS, FuzzTests
from tests.test_fuzz_smtp import mutation as mutate

SPECIALS = [b"\r", b"\n", b"\r\n", b"\x00", b".", b"\r\n.\r\n", b"=", b"*", b"A" * 17000,
            b"Received: a\r\n" * 60, b"\r\nDATA\r\n", b"\xff" * 5]


def random_pieces(rng: random.Random) -> bytes:
    pieces = []
    for _ in range(rng.randint(1, 12)):
        kind = rng.random()
        if kind < 0.4:
            pieces.append(rng.choice(VERBS) + b" " + rng.randbytes(rng.randint(0, 80)))
        elif kind < 0.7:
            pieces.append(rng.randbytes(rng.randint(0, 200)))
        else:
            pieces.append(rng.choice(SPECIALS))
    return b"\r\n".join(pieces) + b"\r\n"


def auth_exchange(rng: random.Random) -> bytes:
    steps = []
    for _ in range(rng.randint(1, 8)):
        blob = rng.randbytes(rng.randint(0, 80))
        steps.append(rng.choice([b"AUTH PLAIN " + base64.b64encode(blob), b"AUTH LOGIN",
                                 base64.b64encode(blob), blob, b"*", b"AUTH PLAIN",
                                 b"AUTH PLAIN " + base64.b64encode(b"\0u\0" + blob)]))
    return b"EHLO c\r\nSTARTTLS\r\nEHLO c\r\n" + b"\r\n".join(steps) + b"\r\n"


def mutation(rng: random.Random) -> bytes:
    return mutate(rng, SPECIALS)


def empty_spool(spool: object) -> None:
    """The clean message each input ends with is queued: keep the disk from filling."""
    for state in ("queue", "data"):
        directory = spool.path(state)  # type: ignore[attr-defined]
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))


def chunked(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(len(data) + 1), min(3, len(data))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    return [c for c in chunks if c]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261201)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    case = FuzzTests("test_mutations_of_a_real_transcript")
    case.setUp()
    makers = (random_pieces, auth_exchange, mutation)
    crashes: list[tuple[int, bytes, str]] = []
    started = time.perf_counter()
    try:
        for n in range(args.inputs):
            data = makers[n % 3](rng)
            try:
                case.failures.clear()
                case.run_input(chunked(data, rng))
            except Exception as e:  # every failure is a finding to report
                crashes.append((n, data[:200], f"{type(e).__name__}: {e}"[:300]))
            if (n + 1) % 5_000 == 0:
                empty_spool(case.spool)
            if (n + 1) % 50_000 == 0:
                rate = (n + 1) / (time.perf_counter() - started)
                print(f"fuzz: {n + 1} inputs, {len(crashes)} broke a rule, {rate:.0f}/s",
                      flush=True)
    finally:
        empty_spool(case.spool)
    seconds = time.perf_counter() - started
    print(f"fuzz: {args.inputs} inputs in {seconds:.0f} s ({args.inputs / seconds:.0f}/s), "
          f"{len(crashes)} broke a rule (goal 0)")
    for n, data, error in crashes[:20]:
        print(f"  input {n}: {error}\n    {data!r}")
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
