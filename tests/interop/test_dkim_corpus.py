"""DKIM on real-world mail, checked by three independent verifiers (``make interop``).

The corpus: fifteen messages built by Python's ``email`` package (tests/corpus/pymail.py)
and eight by nodemailer's MailComposer (tests/corpus/nodemailer/build.js, nodemailer pinned
in package-lock.json, ``npm ci`` on first use; one of them also signed by the application
with nodemailer's own DKIM signer, a signature that must survive the relay).  Each is
relayed through a running relaymail that signs with an RSA-2048 and an Ed25519 key for
example.com, and the copy an aiosmtpd upstream received is verified by:

- dkimpy: both signatures pass;
- Perl's Mail::DKIM (libmail-dkim-perl): the RSA signature passes; it has no Ed25519, and
  must say so ("invalid (unsupported algorithm ed25519-sha256)") rather than fail;
- OpenDKIM's filter in test mode (``opendkim -t``, Debian package ``opendkim``; the
  ``opendkim-testmsg`` of opendkim-tools reads keys from live DNS only): both pass when
  ``opendkim -V`` lists ed25519-sha256 (2.11 does), else the RSA one.

Negative controls, so that no verifier can pass vacuously: a copy with its Subject changed,
one with a body byte changed and one with a second From must fail with each verifier.

Why three: they do not parse alike.  The h= that relaymail's old folding broke
("content-tran" CRLF SP "sfer-encoding") failed with dkimpy and Mail::DKIM, which split h=
at colons only, but passed with OpenDKIM, whose tag parser deletes all white space in every
tag value (libopendkim dkim_process_set -> dkim_collapse) and so reads the intended name.

A verifier that is missing skips its test on a developer machine, naming the package; in
CI (which installs them) it fails, as for the other interop peers (tests/peers.py)."""

from __future__ import annotations

import sys

from twisted.trial.unittest import SkipTest

from tests.corpus.harness import (
    TAMPERINGS,
    Corpus,
    DkimCorpusCase,
    Relayed,
    dkimpy_verdicts,
    have_mail_dkim,
    mail_dkim_verdicts,
    nodemailer_corpus,
    opendkim_algorithms,
    opendkim_binary,
    opendkim_config,
    opendkim_verdicts,
    signatures,
)
from tests.corpus.pymail import python_corpus
from tests.peers import require

ED25519_UNSUPPORTED = "invalid (unsupported algorithm ed25519-sha256)"


def report(verifier: str, relayed: Relayed, checked: int) -> None:
    sys.stderr.write(f"\n{verifier}: {checked} signatures on {len(relayed.messages)} relayed "
                     f"messages ({relayed.seconds:.2f} s to relay)\n")


class DkimCorpusInteropTests(DkimCorpusCase):
    async def relay_everything(self) -> tuple[Relayed, int]:
        """Both corpora relayed; and how many signatures the copies carry in all (relaymail's
        two on each, and nm-presigned's own, made by nodemailer's DKIM signer).  Without
        node on a developer machine, the Python corpus alone (the nodemailer test says why);
        in CI a missing node fails."""
        try:
            nodemailer = nodemailer_corpus()
        except SkipTest as e:
            sys.stderr.write(f"\nnodemailer corpus left out: {e}\n")
            nodemailer = Corpus({})
        corpus = {**python_corpus(), **nodemailer.messages}
        relayed = await self.relay_corpus(corpus, nodemailer.keys)
        self.assert_signed_twice(relayed)
        own = sum(len(signatures(m)) for m in corpus.values())
        self.assertEqual(own, len(nodemailer.keys))
        return relayed, 2 * len(corpus) + own

    def tampered(self, relayed: Relayed) -> Relayed:
        """Each tampering applied to three relayed messages (the user's plain 8bit one, the
        Python and nodemailer ones with attachments), as a corpus of its own."""
        messages = {}
        for name in ("py-plain-8bit", "py-attachment", "nm-attachments"):
            if name not in relayed.messages:
                continue  # no nodemailer corpus on this machine
            for what, tamper in TAMPERINGS.items():
                messages[f"{name} ({what})"] = tamper(relayed.messages[name])
        return Relayed(messages, messages, relayed.dnsfunc, relayed.keytable, relayed.seconds)

    async def test_nodemailer_corpus_is_built_by_nodemailer(self) -> None:
        corpus = nodemailer_corpus().messages
        self.assertGreaterEqual(len(corpus), 6)
        for name, message in corpus.items():
            self.assertIn(b"\r\nMIME-Version: 1.0\r\n", message, name)
            self.assertIn(f"Message-ID: <{name.removesuffix('-raw')}@example.com>".encode(),
                          message, name)
        self.assertIn(b"Content-Type: application/pdf", corpus["nm-attachments"])
        self.assertIn(b"Subject: =?UTF-8?", corpus["nm-utf8-subject-list"])
        self.assertIn(b"\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n",
                      corpus["nm-utf8-subject-list"])
        self.assertIn(b"with a tab\n", corpus["nm-reply-thread-raw"])  # MailComposer's own LF
        [own] = signatures(corpus["nm-presigned"])
        self.assertEqual((own.domain, own.selector, own.algorithm),
                         ("example.com", "app", "rsa-sha256"))

    async def test_dkimpy_passes_every_signature(self) -> None:
        relayed, total = await self.relay_everything()
        verdicts = await self.verdicts(dkimpy_verdicts, relayed, relayed.dnsfunc)
        checked = self.assert_all(verdicts, lambda a: "pass", relayed, "dkimpy")
        self.assertEqual(checked, total)
        bad = self.tampered(relayed)
        self.assert_all(await self.verdicts(dkimpy_verdicts, bad, bad.dnsfunc),
                        lambda a: "fail", bad, "dkimpy")
        report("dkimpy", relayed, checked)

    async def test_mail_dkim_passes_every_rsa_signature(self) -> None:
        require(have_mail_dkim(), "Perl's Mail::DKIM (Debian package libmail-dkim-perl)")
        relayed, total = await self.relay_everything()
        verdicts = await self.verdicts(mail_dkim_verdicts, relayed, relayed.keytable)
        for got in verdicts.values():
            for verdict in got:
                if verdict.algorithm == "ed25519-sha256":
                    self.assertEqual(verdict.detail, ED25519_UNSUPPORTED)
        checked = self.assert_all(
            verdicts, lambda a: "pass" if a == "rsa-sha256" else "invalid", relayed,
            "Mail::DKIM")
        self.assertEqual(checked, total)
        bad = self.tampered(relayed)
        self.assert_all(await self.verdicts(mail_dkim_verdicts, bad, bad.keytable),
                        lambda a: "fail" if a == "rsa-sha256" else "invalid", bad,
                        "Mail::DKIM")
        report("Mail::DKIM (RSA passes, Ed25519 unsupported)", relayed, checked)

    async def test_opendkim_passes_every_signature(self) -> None:
        binary = opendkim_binary()
        require(binary is not None, "OpenDKIM's opendkim (Debian package opendkim)")
        assert binary is not None
        algorithms = opendkim_algorithms(binary)
        self.assertIn("rsa-sha256", algorithms)
        relayed, total = await self.relay_everything()
        if "ed25519-sha256" not in algorithms:  # before 2.11: check RSA only
            relayed.messages = {n: drop_ed25519(m) for n, m in relayed.messages.items()}
            total -= len(relayed.messages)
        config = opendkim_config(self.dir, relayed.keytable)
        verdicts = await self.verdicts(opendkim_verdicts, relayed, binary, config, self.dir)
        checked = self.assert_all(verdicts, lambda a: "pass", relayed, "OpenDKIM")
        self.assertEqual(checked, total)
        bad = self.tampered(relayed)
        self.assert_all(await self.verdicts(opendkim_verdicts, bad, binary, config, self.dir),
                        lambda a: "fail", bad, "OpenDKIM")
        report(f"OpenDKIM ({', '.join(sorted(algorithms))})", relayed, checked)


def drop_ed25519(message: bytes) -> bytes:
    """The message without its Ed25519 DKIM-Signature field (for an OpenDKIM without it)."""
    lines = message.split(b"\r\n")
    out, skipping = [], False
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if not skipping:
                out.append(line)
            continue
        skipping = line.lower().startswith(b"dkim-signature:") and b"a=ed25519" in line
        if not skipping:
            out.append(line)
    return b"\r\n".join(out)
