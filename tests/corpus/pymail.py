"""Real-world messages built by Python's ``email`` package (EmailMessage with policy SMTP,
SMTPUTF8 or default), the way applications build them: MIME structure, folding, RFC 2047
words, transfer encodings and line ends are all the library's, none is written by hand.

``python_corpus()`` returns {name: message bytes with CRLF line ends}; every name is a valid
local part, so the tests can use it as the envelope recipient to find the relayed copy."""

from __future__ import annotations

import datetime
import email.policy
import email.utils
from email.headerregistry import Address
from email.message import EmailMessage

FROM = Address("Café Ops", "ops", "example.com")
DATE = email.utils.format_datetime(
    datetime.datetime(2026, 3, 1, 9, 30, tzinfo=datetime.timezone(datetime.timedelta(hours=1))))
GREETING = "Grüße aus Köln, 中文 ✓ \u2013 naïve café\n"  # en dash
# PDF-ish bytes: a PDF header with its binary comment, every byte value, an EOF marker.
PDF = (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj << /Type /Catalog >> endobj\n"
       + bytes(range(256)) * 8 + b"\nstartxref\n0\n%%EOF\n")


def new(name: str, subject: str, policy: email.policy.Policy = email.policy.SMTP,
        to: str | Address = "Jürgen Müller <juergen@dest.test>") -> EmailMessage:
    """A message with the usual top headers, as an application sets them."""
    msg = EmailMessage(policy=policy)
    msg["From"] = FROM
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = DATE
    msg["Message-ID"] = f"<{name}@example.com>"
    return msg


def multipart_alternative() -> EmailMessage:
    """(a) text + HTML alternatives, both 8bit UTF-8."""
    msg = new("py-alternative", "Your weekly report")
    msg.set_content("Hello Jürgen,\n\n" + GREETING + "\n-- \nCafé Ops\n", cte="8bit")
    msg.add_alternative("<html><body><p>Hello <b>Jürgen</b>,</p><p>" + GREETING
                        + "</p></body></html>\n", subtype="html", cte="8bit")
    return msg


def plain_8bit() -> EmailMessage:
    """(b) the user's case: text/plain; charset=utf-8, Content-Transfer-Encoding: 8bit and
    MIME-Version, so h= lists content-transfer-encoding (which the old folding split)."""
    msg = new("py-plain-8bit", "Plain UTF-8 text")
    msg.set_content("Hallo,\n\n" + GREETING * 3, charset="utf-8", cte="8bit")
    return msg


def with_pdf_attachment() -> EmailMessage:
    """(c) a base64 PDF attachment, large enough (about 400 KiB) to spill to disk."""
    msg = new("py-attachment", "Invoice 2026-03 (PDF attached)")
    msg.set_content("Please find the invoice attached.\n\n" + GREETING)
    msg.add_attachment(PDF * 140, maintype="application", subtype="pdf",
                       filename="invoice-2026-03.pdf")
    return msg


def threaded_reply() -> EmailMessage:
    """(d) Cc, Reply-To, In-Reply-To and a References list long enough to fold."""
    msg = new("py-thread", "Re: Re: Re: planning the migration of the mail relay")
    msg["Cc"] = "Carol Danvers <carol@dest.test>, Dave <dave@dest.test>, ops-team@dest.test"
    msg["Reply-To"] = "Planning list <planning@example.com>"
    references = [f"<thread-{n}.{n * 7919}@mail.example.com>" for n in range(1, 16)]
    msg["In-Reply-To"] = references[-1]
    msg["References"] = " ".join(references)
    msg.set_content("> what about the relay?\n>> and the DKIM keys?\n\nBoth done.\n")
    return msg


def list_unsubscribe() -> EmailMessage:
    """(e) a bulk mail with List-Unsubscribe (RFC 2369) and List-Unsubscribe-Post (8058)."""
    msg = new("py-list", "Café newsletter #42", to="subscriber@dest.test")
    msg["List-Id"] = "Café news <news.example.com>"
    msg["List-Unsubscribe"] = ("<https://example.com/unsubscribe?u=c3Vic2NyaWJlckBkZXN0LnRlc3Q"
                               "&list=news&sig=0123456789abcdef>, "
                               "<mailto:unsubscribe@example.com?subject=unsubscribe>")
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content("This month: " + GREETING)
    msg.add_alternative("<p>This month: " + GREETING + "</p>", subtype="html")
    return msg


def long_encoded_subject() -> EmailMessage:
    """(f) a long UTF-8 Subject: several RFC 2047 encoded-words on folded lines."""
    subject = ("Ñandú newsletter — 新闻通讯 第 42 期: Überraschung für alle Abonnenten, "
               "très important, 重要なお知らせ, пожалуйста, прочитайте до конца")
    msg = new("py-subject", subject)
    msg.set_content("See the subject.\n")
    return msg


def many_recipients() -> EmailMessage:
    """(g) a To field of 36 addresses, folded over many lines."""
    to = ", ".join(f"Recipient Nummer {i} <recipient.{i}@dest{i % 3}.test>" for i in range(36))
    msg = new("py-many-to", "Meeting on Monday", to=to)
    msg.set_content("Agenda attached in the next mail.\n")
    return msg


def quoted_printable() -> EmailMessage:
    """(h) a quoted-printable part: soft line breaks, =XX escapes, '=' itself."""
    msg = new("py-qp", "quoted-printable")
    msg.set_content("Ünïcödé text long enough to need soft line breaks in quoted-printable, "
                    "with = signs, a = at the end =\nand trailing spaces   \n" + GREETING * 4,
                    cte="quoted-printable")
    return msg


def whitespace_and_dots() -> EmailMessage:
    """(i) trailing whitespace, tabs, lines of and starting with '.', blank lines at the end:
    every rule of relaxed body canonicalization and of SMTP dot-stuffing at once."""
    msg = new("py-dots", "whitespace, tabs and dots")
    msg.set_content(".\n..\n.leading dot\n...three\ntrailing space   \ntrailing tab\t\n"
                    "\tleading tab\nin  between \t spaces\n \t \n\n.\n\n\n\n", cte="8bit")
    return msg


def content_id_description() -> EmailMessage:
    """(j) Content-Description and Content-ID on the top level (so they are in h=) and on a
    related inline image."""
    msg = new("py-content-id", "Calendar invitation")
    msg.set_content("BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:-//relaymail//corpus//EN\n"
                    "BEGIN:VEVENT\nSUMMARY:Café\nDTSTART:20260302T100000Z\nEND:VEVENT\n"
                    "END:VCALENDAR\n", subtype="calendar", params={"method": "REQUEST"},
                    cte="8bit")
    msg["Content-Description"] = "Einladung: Café um 10 Uhr"
    msg["Content-ID"] = "<invite-2026-03-02@example.com>"
    return msg


def related_inline_image() -> EmailMessage:
    """(j, nested) HTML with a cid: image in multipart/related; the image part has its own
    Content-ID and Content-Description."""
    msg = new("py-related", "Logo inline")
    msg.set_content("<html><body><img src=\"cid:logo@example.com\"> " + GREETING
                    + "</body></html>\n", subtype="html")
    msg.add_related(b"\x89PNG\r\n\x1a\n" + bytes(range(256)), maintype="image",
                    subtype="png", cid="<logo@example.com>", filename="logo.png")
    msg.get_payload()[1]["Content-Description"] = "Company logo"
    return msg


def raw_utf8_headers() -> EmailMessage:
    """Policy SMTPUTF8: UTF-8 headers as raw 8-bit bytes (many applications send these)."""
    msg = new("py-utf8-headers", "Grüße \u2013 中文 subject in raw UTF-8",
              policy=email.policy.SMTPUTF8)
    msg.set_content(GREETING, cte="8bit")
    return msg


def default_policy_subdomain() -> EmailMessage:
    """Policy default (LF line ends, converted to CRLF for SMTP as smtplib's send_message
    does) from a subdomain: the key of the parent domain signs it (d=example.com)."""
    msg = new("py-default-policy", "Policy default, From a subdomain",
              policy=email.policy.default)
    del msg["From"]
    msg["From"] = Address("Alerts", "alerts", "mail.example.com")
    msg["Sender"] = "bounces@mail.example.com"
    msg.set_content(GREETING * 2)
    msg.add_attachment("a,b,c\n1,2,3\n", subtype="csv", filename="data.csv")
    return msg


def unwrapped_lines() -> EmailMessage:
    """Policy SMTP without line wrapping (``max_line_length=None``, as some applications set
    it): a 1,674-octet To line and a 9 KB line of minified HTML, over SMTP's 998, which
    relaymail folds before it signs."""
    policy = email.policy.SMTP.clone(max_line_length=None)
    to = ", ".join(f"Recipient Nummer {i} <recipient.{i}@dest{i % 3}.test>" for i in range(36))
    msg = new("py-unwrapped", "Minified HTML, unwrapped headers", policy=policy, to=to)
    msg.set_content("<html><body>" + "".join(f'<p class="c{i}">Grüße {i}</p>'
                                             for i in range(300)) + "</body></html>\n",
                    subtype="html", cte="8bit")
    return msg


def headers_only() -> EmailMessage:
    """No content set at all (a subject-only notification): headers, the blank line, no
    body; the body hash is that of the empty body."""
    return new("py-no-body", "Disk usage above 90% on mail.example.com")


BUILDERS = (multipart_alternative, plain_8bit, with_pdf_attachment, threaded_reply,
            list_unsubscribe, long_encoded_subject, many_recipients, quoted_printable,
            whitespace_and_dots, content_id_description, related_inline_image,
            raw_utf8_headers, default_policy_subdomain, unwrapped_lines, headers_only)


def to_bytes(msg: EmailMessage) -> bytes:
    data = msg.as_bytes()
    if msg.policy.linesep == "\n":
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data


def python_corpus() -> dict[str, bytes]:
    corpus = {}
    for build in BUILDERS:
        msg = build()
        name = str(msg["Message-ID"]).strip("<>").partition("@")[0]
        corpus[name] = to_bytes(msg)
    return corpus
