"""DKIM on real-world mail, the fast half (``make test``, no Debian packages): fifteen
messages built by Python's ``email`` package (MIME alternatives, 8bit UTF-8, a 400 KiB
base64 PDF, folded To/References/Subject, RFC 2047 words, quoted-printable, dots and
trailing whitespace, Content-ID/Description, raw UTF-8 headers, policy default, lines over
998 octets, no body) are relayed through a running relaymail holding an RSA-2048 and an
Ed25519 key, and every signature of every relayed copy must verify with dkimpy; tampered
copies (Subject changed, a body byte changed, a second From) must not.

tests/interop/test_dkim_corpus.py adds nodemailer's messages and two more verifiers
(Mail::DKIM and OpenDKIM).  The plain 8bit message is the one a user reported: relaymail
used to fold h= inside "content-transfer-encoding", which dkimpy and Mail::DKIM reject
(OpenDKIM, which deletes white space inside tag values, let it pass)."""

from __future__ import annotations

from tests.corpus.harness import TAMPERINGS, DkimCorpusCase, dkimpy_verdicts, signatures
from tests.corpus.pymail import python_corpus


class PythonEmailCorpusTests(DkimCorpusCase):
    async def test_every_signature_verifies_with_dkimpy(self) -> None:
        corpus = python_corpus()
        self.assertGreaterEqual(len(corpus), 10)
        relayed = await self.relay_corpus(corpus)
        self.assert_signed_twice(relayed)
        # The user's case is in the corpus, with the header name the old folding split.
        for sig in signatures(relayed.messages["py-plain-8bit"]):
            self.assertIn("content-transfer-encoding", sig.headers)
            self.assertIn("mime-version", sig.headers)
        verdicts = await self.verdicts(dkimpy_verdicts, relayed, relayed.dnsfunc)
        checked = self.assert_all(verdicts, lambda algorithm: "pass", relayed, "dkimpy")
        self.assertEqual(checked, 2 * len(corpus))  # every message had both

    async def test_tampered_copies_fail_with_dkimpy(self) -> None:
        relayed = await self.relay_corpus({"py-plain-8bit": python_corpus()["py-plain-8bit"]})
        original = relayed.messages["py-plain-8bit"]
        self.assertEqual([v.result for v in await self.in_thread(
            dkimpy_verdicts, original, relayed.dnsfunc)], ["pass", "pass"])
        for what, tamper in TAMPERINGS.items():
            got = await self.in_thread(dkimpy_verdicts, tamper(original), relayed.dnsfunc)
            self.assertEqual([v.result for v in got], ["fail", "fail"], what)
