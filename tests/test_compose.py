"""The ``POST /api/send`` composer without a server: the MIME tree the form makes (text,
html, alternative, related inline parts, attachments), headers and the envelope (Bcc only in
the envelope), non-ASCII and long lines, the headers a form may not set, errors that name the
field, raw messages, the size limit, and a DKIM signature dkimpy verifies."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from email.message import EmailMessage, MIMEPart
from typing import Any

import dkim
import pytest

from relaymail.policy.dkim import Signer
from relaymail.web.compose import SEND_SCHEMA, ComposeError, compose, sign_whole
from tests.test_dkim import records, rsa_key

NOW = 1_700_000_000.0
PDF = b"%PDF-1.4\x00\x01\xff\xfe binary \r\n bytes"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make(**form: Any) -> tuple[str, list[str], bytes]:
    """compose() of the form (``limit`` and ``max_size`` taken out), checked for the wire."""
    limit, max_size = form.pop("limit", 50), form.pop("max_size", 10 * 1024 * 1024)
    form.setdefault("from", "app@example.com")
    if not {"to", "cc", "bcc", "raw", "mime_email"} & set(form):
        form["to"] = "a@dest.test"
    sender, rcpts, data = compose(form, "relay.test", NOW, limit, max_size=max_size)
    assert_wire_safe(data)
    return sender, rcpts, data


def assert_wire_safe(data: bytes) -> None:
    assert re.search(rb"(?<!\r)\n", data) is None, "bare LF"
    assert re.search(rb"\r(?!\n)", data) is None, "bare CR"
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def content(part: MIMEPart | None) -> str | None:
    """A text part's content with the LF line ends Python gives it."""
    return None if part is None else part.get_content().replace("\r\n", "\n")


def tree(part: MIMEPart) -> Any:
    """The MIME structure: a content type, or (multipart type, [children])."""
    if part.is_multipart():
        return part.get_content_type(), [tree(p) for p in part.iter_parts()]
    return part.get_content_type()


def head(data: bytes) -> bytes:
    return data.partition(b"\r\n\r\n")[0]


FULL: dict[str, Any] = {
    "from": "Shop <shop@example.com>", "to": ["Ann <ann@x.test>", "bob@y.test"],
    "cc": "carl@z.test, ANN@X.TEST", "bcc": ["hidden@w.test", "bob@y.test"],
    "reply_to": "help@example.com", "subject": "Your order", "text": "plain text",
    "html": "<p>html <img src='cid:logo'></p>",
    "headers": {"X-Tag": "t1", "In-Reply-To": "<a@b.test>"},
    "custom_headers": [{"header": "References", "value": "<a@b.test> <c@d.test>"}],
    "attachments": [{"filename": "r.pdf", "content": b64(PDF)},
                    {"filename": "notes.bin", "fileblob": b64(b"raw"), "mimetype": "text/csv"}],
    "inline": [{"filename": "logo.png", "content": b64(PNG), "cid": "logo"}],
}


def test_full_form_makes_mixed_alternative_related_and_attachments() -> None:
    sender, rcpts, data = make(**FULL)
    assert sender == "shop@example.com"
    assert rcpts == ["ann@x.test", "bob@y.test", "carl@z.test", "hidden@w.test"]
    message = parse(data)
    assert tree(message) == ("multipart/mixed", [
        ("multipart/alternative", ["text/plain", ("multipart/related", ["text/html",
                                                                        "image/png"])]),
        "application/pdf", "text/csv"])
    assert message["From"].addresses[0].display_name == "Shop"
    assert str(message["To"]) == "Ann <ann@x.test>, bob@y.test"
    assert message["Reply-To"] == "help@example.com"
    assert (message["X-Tag"], message["In-Reply-To"]) == ("t1", "<a@b.test>")
    assert message["References"] == "<a@b.test> <c@d.test>"
    assert message["Bcc"] is None and b"hidden@w.test" not in data
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message["Message-ID"].endswith("@relay.test>")
    files = list(message.iter_attachments())
    assert [(f.get_filename(), f.get_payload(decode=True)) for f in files] == [
        ("r.pdf", PDF), ("notes.bin", b"raw")]
    outer: Any = message.get_payload()
    html, logo = outer[0].get_payload()[1].get_payload()
    assert "cid:logo" in html.get_content()
    assert (logo["Content-ID"], logo.get_content_disposition(), logo.get_filename(),
            logo.get_content()) == ("<logo>", "inline", "logo.png", PNG)


@pytest.mark.parametrize(("form", "shape"), [
    ({"text": "only text"}, "text/plain"),
    ({"html": "<b>only html</b>"}, "text/html"),
    ({"text_body": "t", "html_body": "<b>h</b>"}, ("multipart/alternative",
                                                   ["text/plain", "text/html"])),
    ({"html": "<img src=cid:x>", "inlines": [{"filename": "x.png", "fileblob": b64(PNG),
                                               "content_id": "<x>"}]},
     ("multipart/related", ["text/html", "image/png"])),
    ({"text": "t", "attachments": [{"filename": "a.txt", "content": b64(b"hi")}]},
     ("multipart/mixed", ["text/plain", "text/plain"])),
])
def test_body_shapes_and_smtp2go_aliases(form: dict[str, Any], shape: Any) -> None:
    message = parse(make(**form)[2])
    assert tree(message) == shape
    for kind, given in (("plain", form.get("text") or form.get("text_body")),
                        ("html", form.get("html") or form.get("html_body"))):
        assert content(message.get_body((kind,))) == (given and given + "\n")


def test_guessed_and_given_content_types() -> None:
    parts = [{"filename": name, "content": b64(b"x"), **extra} for name, extra in (
        ("a.pdf", {}), ("b.unknownext", {}), ("c.eml", {}), ("d", {"content_type": "image/PNG"}))]
    message = parse(make(text="t", attachments=parts)[2])
    assert [p.get_content_type() for p in message.iter_attachments()] == [
        "application/pdf", "application/octet-stream", "application/octet-stream", "image/png"]


def test_non_ascii_subject_names_text_and_filename_round_trip() -> None:
    _, _, data = make(**{"from": "app@example.com", "from_name": "应用 App",
                         "to": "Zoë Ünïcode <z@x.test>", "subject": "测试 test ✓ " * 20,
                         "text": "你好, world\n第二行", "html": "<p>你好</p>",
                         "headers": {"X-Note": "wörld ✓"},
                         "attachments": [{"filename": "résumé 简历.pdf", "content": b64(PDF)}]})
    assert head(data).isascii()
    message = parse(data)
    assert message["Subject"] == "测试 test ✓ " * 20
    assert message["From"].addresses[0].display_name == "应用 App"
    assert message["To"].addresses[0].display_name == "Zoë Ünïcode"
    assert message["X-Note"] == "wörld ✓"
    assert content(message.get_body(("plain",))) == "你好, world\n第二行\n"
    assert content(message.get_body(("html",))) == "<p>你好</p>\n"
    attachment = next(message.iter_attachments())
    assert (attachment.get_filename(), attachment.get_content()) == ("résumé 简历.pdf", PDF)


def test_name_in_from_and_from_name_and_sender_alias() -> None:
    _, _, data = make(**{"from": "Old <a@example.com>", "from_name": "New"})
    assert str(parse(data)["From"]) == "New <a@example.com>"
    sender, _, data = compose({"sender": "Team <team@example.com>", "to": "x@y.test"},
                              "relay.test", NOW, 5)
    assert sender == "team@example.com"
    assert str(parse(data)["From"]) == "Team <team@example.com>"


@pytest.mark.parametrize("line", ["a" * 5000, "é" * 5000, "word " * 1000])
def test_a_5000_character_line_is_encoded_to_short_lines(line: str) -> None:
    _, _, data = make(text=line, html=f"<p>{line}</p>")
    assert max(len(x) for x in data.split(b"\r\n")) <= 998
    message = parse(data)
    assert content(message.get_body(("plain",))) == line + "\n"
    assert content(message.get_body(("html",))) == f"<p>{line}</p>\n"
    for part in message.walk():
        if not part.is_multipart():
            assert part["Content-Transfer-Encoding"] in ("quoted-printable", "base64")


def test_long_header_values_fold_without_breaking_words() -> None:
    url = "<https://example.com/unsubscribe/" + "x" * 300 + ">"
    refs = " ".join(f"<m{i}@example.com>" for i in range(50))
    _, _, data = make(text="t", headers={"List-Unsubscribe": url, "References": refs,
                                         "X-Long": "y" * 900})
    message = parse(data)
    assert message["List-Unsubscribe"] == url  # not turned into encoded words
    assert url.encode() in data
    assert message["References"] == refs and message["X-Long"] == "y" * 900
    assert max(len(x) for x in head(data).split(b"\r\n")) <= 998


OWNED = ["From", "Sender", "To", "Cc", "Bcc", "Reply-To", "Subject", "Date", "Message-ID",
         "MIME-Version", "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
         "Content-ID", "DKIM-Signature", "Received", "Return-Path"]


@pytest.mark.parametrize("name", OWNED + [n.lower() for n in OWNED] + ["bCC", "DKIM-signature"])
def test_headers_the_composer_owns_are_refused(name: str) -> None:
    with pytest.raises(ComposeError, match=rf"^headers\.{re.escape(name)}: {re.escape(name)} "
                                           "is set by"):
        make(text="t", headers={name: "x@evil.test"})
    with pytest.raises(ComposeError, match=rf"^custom_headers\[1\]: {re.escape(name)} is"):
        make(text="t", custom_headers=[{"header": "X-Ok", "value": "1"},
                                       {"header": name, "value": "x"}])


def test_allowed_headers_and_the_header_count_limit() -> None:
    allowed = {"X-Tag": "a", "List-Unsubscribe": "<mailto:u@example.com>",
               "In-Reply-To": "<p@x.test>", "References": "<p@x.test>", "X-Empty": ""}
    message = parse(make(text="t", headers=allowed)[2])
    assert {k: message[k] for k in allowed} == allowed
    make(text="t", headers={f"X-H{i}": "v" for i in range(100)})
    with pytest.raises(ComposeError, match=r"^headers: at most 100"):
        make(text="t", headers={f"X-H{i}": "v" for i in range(60)},
             custom_headers=[{"header": f"X-C{i}", "value": "v"} for i in range(41)])


ATTACH = {"filename": "a.pdf", "content": b64(PDF)}


@pytest.mark.parametrize(("change", "error"), [
    ({"from": None}, "from: expected an address"),
    ({"from": 5}, "from: expected an address"),
    ({"from": "not an address"}, "from: 'not an address' is not an address"),
    ({"from": "a@x.test, b@x.test"}, "from: expected one address, not 2"),
    ({"from": "a@x.test", "sender": "b@x.test"}, "from: give from or sender, not both"),
    ({"from": "josé@x.test"}, "from: 'josé@x.test' is not a plain ASCII address"),
    ({"to": "a@bücher.de"}, "to: 'a@bücher.de' is not a plain ASCII address (internation"),
    ({"to": 5}, "to: expected an address or a list of addresses"),
    ({"to": ["ok@y.test", 5]}, "to: expected an address"),
    ({"to": []}, "to: expected one or more addresses"),
    ({"to": "b@y.test\r\nRCPT TO:<c@z>"}, "to: must be a single line"),
    ({"to": "<a@b"}, "to: '<a@b' is not an address"),
    ({"cc": "Name <a@b.test> junk"}, "cc: "),
    ({"bcc": {"a": 1}}, "bcc: expected an address or a list"),
    ({"reply_to": "nope"}, "reply_to: 'nope' is not an address"),
    ({"to": [f"r{i}@x.test" for i in range(4)], "cc": "c@x.test"},
     "to+cc+bcc: between 1 and 4 addresses"),
    ({"subject": "hi\r\nBcc: c@z"}, "subject: must be a single line"),
    ({"subject": "x" * 999}, "subject: expected text (at most 998 characters)"),
    ({"subject": 5}, "subject: expected text"),
    ({"text": ["x"]}, "text: expected text"),
    ({"text_body": "a", "text": "b"}, "text: give text or text_body, not both"),
    ({"html_body": 1}, "html_body: expected text"),
    ({"text": "\ud800"}, "text: not valid Unicode text"),
    ({"headers": ["X-A: b"]}, "headers: expected an object"),
    ({"headers": {"X A": "b"}}, "headers.X A: 'X A' is not a header field name"),
    ({"headers": {"X:A": "b"}}, "headers.X:A: 'X:A' is not a header field name"),
    ({"headers": {"X-Ä": "b"}}, "headers.X-Ä: 'X-Ä' is not a header field name"),
    ({"headers": {"X-A": "b\nBcc: x@y"}}, "headers.X-A: must be a single line"),
    ({"headers": {"X-A": 5}}, "headers.X-A: expected text"),
    ({"headers": {"X-A": "v" * 999}}, "headers.X-A: expected text (at most 998"),
    ({"headers": {"X-Abc": "v" * 995}}, "headers.X-Abc: X-Abc has a word too long"),
    ({"custom_headers": {"header": "X"}}, "custom_headers: expected a list"),
    ({"custom_headers": [{"header": "X-A"}]}, "custom_headers[0]: expected text (the value"),
    ({"custom_headers": [{"name": "X-A", "value": "b"}]}, "custom_headers[0]: expected"),
    ({"custom_headers": ["X-A: b"]}, "custom_headers[0]: expected"),
    ({"attachments": "x"}, "attachments: expected a list of files"),
    ({"attachments": ["x"]}, "attachments[0]: expected an object"),
    ({"attachments": [ATTACH, {"content": b64(PDF)}]}, "attachments[1].filename: expected"),
    ({"attachments": [ATTACH, ATTACH, {"filename": "a", "content": "!!"}]},
     "attachments[2].content: not valid base64"),
    ({"attachments": [{"filename": "a", "content": "QUJD="}]},
     "attachments[0].content: not valid base64"),
    ({"attachments": [{"filename": "a", "fileblob": "%%"}]},
     "attachments[0].fileblob: not valid base64"),
    ({"attachments": [{"filename": "a"}]}, "attachments[0].content: expected the file's"),
    ({"attachments": [{"filename": "a", "content": "QQ==", "fileblob": "QQ=="}]},
     "attachments[0].content: give content or fileblob, not both"),
    ({"attachments": [{"filename": "a\nb", "content": "QQ=="}]},
     "attachments[0].filename: must be a single line"),
    ({"attachments": [{"filename": "a" * 256, "content": "QQ=="}]},
     "attachments[0].filename: expected text (at most 255"),
    ({"attachments": [{"filename": "a", "content": "QQ==", "content_type": "text"}]},
     "attachments[0].content_type: 'text' is not a type/subtype"),
    ({"attachments": [{"filename": "a", "content": "QQ==", "mimetype": "text/plain; x=1"}]},
     "attachments[0].mimetype: 'text/plain; x=1' is not a type/subtype"),
    ({"attachments": [{"filename": "a", "content": "QQ==", "content_type": "message/rfc822"}]},
     "attachments[0].content_type: message/rfc822 cannot be sent as a base64 file"),
    ({"attachments": [{"filename": "a", "content": "QQ==", "url": "http://x"}]},
     "attachments[0].url: unknown field"),
    ({"attachments": [ATTACH] * 101}, "attachments: at most 100 files"),
    ({"attachments": [ATTACH] * 60, "html": "h", "inline": [
        {**ATTACH, "cid": f"c{i}"} for i in range(41)]},
     "attachments: at most 100 with the inline parts"),
    ({"html": "h", "inline": [ATTACH]}, "inline[0].cid: expected a content ID"),
    ({"html": "h", "inlines": [{**ATTACH, "cid": "a b"}]}, "inlines[0].cid: expected a"),
    ({"html": "h", "inline": [{**ATTACH, "cid": "x"}, {**ATTACH, "cid": "<x>"}]},
     "inline[1].cid: 'x' is used twice"),
    ({"text": "t", "inline": [{**ATTACH, "cid": "x"}]}, "inline: inline parts are shown by "
                                                        "the html, and there is none"),
    ({"inline": [], "inlines": []}, "inline: give inline or inlines, not both"),
    ({"template_id": "x"}, "template_id: unknown field"),
    ({"raw_encoding": "base64"}, "raw_encoding: only with raw"),
])
def test_bad_fields_are_refused_naming_the_field(change: dict[str, Any], error: str) -> None:
    form = {"from": "app@example.com", "to": "a@dest.test"}
    if not {"text", "text_body"} & set(change):
        form["text"] = "t"
    form = {k: v for k, v in {**form, **change}.items() if v is not None}
    with pytest.raises(ComposeError) as caught:
        compose(form, "relay.test", NOW, 4)
    assert str(caught.value).startswith(error), str(caught.value)


def test_not_a_json_object() -> None:
    for form in ([1], "x", None):
        with pytest.raises(ComposeError, match="expected a JSON object"):
            compose(form, "relay.test", NOW, 5)


def test_recipients_are_counted_across_to_cc_and_bcc() -> None:
    _, rcpts, _ = make(limit=3, to="a@x.test", cc="b@x.test", bcc="c@x.test")
    assert rcpts == ["a@x.test", "b@x.test", "c@x.test"]
    with pytest.raises(ComposeError, match=r"between 1 and 3 addresses"):
        make(limit=3, to="a@x.test", cc="b@x.test", bcc="c@x.test, d@x.test")
    _, rcpts, data = make(bcc="only@x.test", text="t")  # no To at all
    assert rcpts == ["only@x.test"] and parse(data)["To"] is None
    assert b"only@x.test" not in data


def test_max_size() -> None:
    big = {"filename": "big.bin", "content": b64(b"\0" * 60_000)}
    _, _, data = make(text="t", attachments=[big], max_size=90_000)
    assert 80_000 < len(data) <= 90_000
    with pytest.raises(ComposeError, match=r"^message: \d+ bytes is over the limit of 81000$"):
        make(text="t", attachments=[big], max_size=81_000)
    with pytest.raises(ComposeError, match=r"^message: at least \d+ bytes is over the limit"):
        make(text="t", attachments=[big], max_size=50_000)
    with pytest.raises(ComposeError, match=r"^message: \d+ bytes is over the limit of 500$"):
        make(raw="From: a@x.test\r\nTo: b@y.test\r\n\r\n" + "x" * 600 + "\r\n", max_size=500)


RAW = ("From: App <app@example.com>\nTo: Ann <ann@x.test>, bob@y.test\nCc: carl@z.test\n"
       "Bcc: hidden@w.test,\n secret@w.test\nSubject: raw\n\nline one\nline two\n")


@pytest.mark.parametrize("form", [{"raw": RAW}, {"mime_email": RAW.replace("\n", "\r\n")},
                                  {"raw": b64(RAW.encode()), "raw_encoding": "base64"},
                                  {"raw": RAW.replace("\n", "\r")}])
def test_raw_envelope_from_headers_bcc_removed_date_and_id_added(form: dict[str, Any]) -> None:
    sender, rcpts, data = compose(form, "relay.test", NOW, 10)
    assert_wire_safe(data)
    assert sender == "app@example.com"
    assert rcpts == ["ann@x.test", "bob@y.test", "carl@z.test", "hidden@w.test",
                     "secret@w.test"]
    assert b"Bcc" not in data and b"hidden" not in data and b"secret" not in data
    message = parse(data)
    assert message["Date"] == "Tue, 14 Nov 2023 22:13:20 +0000"
    assert message["Message-ID"].endswith("@relay.test>")
    assert message["Subject"] == "raw"
    assert data.endswith(b"\r\n\r\nline one\r\nline two\r\n")


def test_raw_keeps_its_date_and_id_and_the_fields_give_the_envelope() -> None:
    raw = ("From: a@example.com\r\nTo: header@x.test\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000"
           "\r\nMessage-ID: <keep@x.test>\r\nBcc: b@x.test\r\n\r\nbody")
    sender, rcpts, data = compose({"raw": raw, "from": "bounce@example.com",
                                   "to": "other@y.test", "bcc": ["z@y.test"]},
                                  "relay.test", NOW, 10)
    assert (sender, rcpts) == ("bounce@example.com", ["other@y.test", "z@y.test"])
    assert data == (b"From: a@example.com\r\nTo: header@x.test\r\nDate: Mon, 1 Jan 2024 "
                    b"00:00:00 +0000\r\nMessage-ID: <keep@x.test>\r\n\r\nbody\r\n")
    _, rcpts, _ = compose({"raw": "From: a@x.test\nTo: undisclosed-recipients:;\nBcc: b@x.test"
                           "\n\nhi"}, "relay.test", NOW, 10)
    assert rcpts == ["b@x.test"]


@pytest.mark.parametrize(("form", "error"), [
    ({"raw": "From: a@x.test\nTo: b@y.test\n\n" + "x" * 999 + "\n"},
     "raw: line 4 is 999 octets, over the limit of 998"),
    ({"raw": "To: b@y.test\n\nhi"}, "raw: expected one From header, not 0"),
    ({"raw": "\nFrom: a@x.test\n"}, "raw: expected one From header, not 0"),
    ({"raw": "From: a@x.test\nFrom: c@x.test\nTo: b@y.test\n\nhi"},
     "raw: expected one From header, not 2"),
    ({"raw": "From: a@x.test, c@x.test\nTo: b@y.test\n\nhi"},
     "raw: From header: expected one address, not 2"),
    ({"raw": "From: a@x.test\nnot a header\nTo: b@y.test\n\nhi"},
     "raw: the header section does not parse (line 2)"),
    ({"raw": " folded: first\nFrom: a@x.test\nTo: b@y.test\n\nhi"},
     "raw: the header section does not parse (line 1)"),
    ({"raw": "From a@x.test Mon Jan  1 00:00:00 2024\nFrom: a@x.test\n\nhi"},
     "raw: the header section does not parse (line 1)"),
    ({"raw": "From: Zoë <a@x.test>\nTo: b@y.test\n\nhi"}, "raw: the header section is not"),
    ({"raw": "From: a@x.test\nSubject: hi\n\nhi"},
     "raw: To, Cc and Bcc headers: expected one or more addresses"),
    ({"raw": "From: a@x.test\nTo: nope\n\nhi"}, "raw: To header: ' nope' is not an address"),
    ({"raw": "From: a@x.test\nTo: b@y.test\n\nhi", "text": "t"},
     "raw: cannot go with text"),
    ({"mime_email": "From: a@x.test\nTo: b@y.test\n\nhi", "attachments": [ATTACH]},
     "mime_email: cannot go with attachments"),
    ({"raw": "From: a@x.test\nTo: b@y.test\n\nhi", "html_body": "h"},
     "raw: cannot go with html_body"),
    ({"raw": "From: a@x.test\nTo: b@y.test\n\nhi", "subject": "s"}, "raw: cannot go with"),
    ({"raw": "!!", "raw_encoding": "base64"}, "raw: not valid base64"),
    ({"raw": "x", "raw_encoding": "gzip"}, 'raw_encoding: expected "base64"'),
    ({"raw": 5}, "raw: expected the message as a string"),
    ({"raw": "x", "mime_email": "y"}, "raw: give raw or mime_email, not both"),
])
def test_bad_raw_messages_are_refused(form: dict[str, Any], error: str) -> None:
    with pytest.raises(ComposeError) as caught:
        compose(form, "relay.test", NOW, 10)
    assert str(caught.value).startswith(error), str(caught.value)


def test_dkim_signature_of_a_multipart_message_with_attachments_verifies() -> None:
    key = rsa_key("example.com")
    signer = Signer([key], clock=lambda: NOW)
    _, _, data = make(**FULL)
    signed = sign_whole(signer, data)
    assert signed.startswith(b"DKIM-Signature:") and signed.endswith(data)
    dns = records(key)
    lookup = lambda name, timeout=5: dns.get(name)  # noqa: E731
    assert dkim.verify(signed, dnsfunc=lookup)
    assert not dkim.verify(signed.replace(b"r.pdf", b"x.pdf"), dnsfunc=lookup)
    assert sign_whole(None, data) == data


def test_schema_names_every_field_the_composer_reads() -> None:
    fields = set(SEND_SCHEMA["properties"])
    assert fields >= {"from", "sender", "from_name", "to", "cc", "bcc", "reply_to", "subject",
                      "text", "text_body", "html", "html_body", "headers", "custom_headers",
                      "attachments", "inline", "inlines", "raw", "mime_email", "raw_encoding"}
    assert all("description" in v or "oneOf" in v or "items" in v
               for v in SEND_SCHEMA["properties"].values())
