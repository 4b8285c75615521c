#!/usr/bin/env node
// Builds messages with nodemailer's MailComposer (the MIME builder behind every nodemailer
// transport) and writes each one as NAME.eml into the directory named on the command line,
// with CRLF line ends as nodemailer's SMTP transport sends them (MailComposer itself keeps
// the text's own LF inside bodies); NAME-raw.eml is one message exactly as MailComposer
// built it, mixed line ends and all.  nm-presigned.eml is also signed by the application
// itself with nodemailer's DKIM signer (a fresh RSA key, selector "app"); the line for its
// public key goes to OUTDIR/keytable.txt ("app._domainkey.example.com v=DKIM1; ...").
// Usage: node build.js OUTDIR   (prints the names it wrote, one a line)
'use strict';

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');
const MailComposer = require('nodemailer/lib/mail-composer');
const LeWindows = require('nodemailer/lib/mime-node/le-windows');
const DKIM = require('nodemailer/lib/dkim');

const FROM = '"Café Ops" <ops@example.com>';
const DATE = new Date('2026-03-01T09:30:00Z');
// PDF-ish bytes: a header, binary junk and an EOF marker, so base64 has every byte value.
const PDF = Buffer.concat([
    Buffer.from('%PDF-1.4\n%\xe2\xe3\xcf\xd3\n', 'latin1'),
    Buffer.from(Array.from({ length: 6000 }, (_, i) => (i * 37 + 11) % 256)),
    Buffer.from('\n%%EOF\n', 'latin1')
]);
const LONG_TEXT = Array.from({ length: 40 }, (_, i) => `Zeile ${i}: Grüße aus Köln, 中文 ✓ ${'x'.repeat(i * 3)}`).join('\n');

const MESSAGES = {
    'nm-text-html': {
        from: FROM,
        to: 'Jürgen Müller <juergen@dest.test>',
        subject: 'Weekly report: ✓ all systems nominal',
        text: 'Hello Jürgen,\n\nall green this week.\n\n-- \nCafé Ops\n',
        html: '<p>Hello <b>Jürgen</b>,</p><p>all green this week. ✓</p>'
    },
    'nm-attachments': {
        from: FROM,
        to: ['alice@dest.test', 'Bob Builder <bob@dest.test>'],
        cc: 'Carol <carol@dest.test>, dave@dest.test',
        replyTo: 'Support 支持 <support@example.com>',
        subject: 'Invoice 2026-03 (PDF attached)',
        text: 'Please find the invoice attached.\n',
        html: '<p>Please find the invoice <i>attached</i>.</p><img src="cid:logo@example.com">',
        attachments: [
            { filename: 'invoice-2026-03.pdf', content: PDF, contentType: 'application/pdf' },
            { filename: 'notes.txt', content: 'line one\nline two\n.dot line\n' },
            {
                filename: 'logo.png',
                content: Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'),
                cid: 'logo@example.com'
            }
        ]
    },
    'nm-utf8-subject-list': {
        from: FROM,
        to: 'subscriber@dest.test',
        subject: 'Ñandú newsletter — 新闻通讯 第 42 期: the quick brown fox jumps over the lazy dog again and again',
        text: LONG_TEXT,
        headers: {
            'List-Id': 'Café news <news.example.com>',
            'List-Unsubscribe': '<https://example.com/unsubscribe?u=subscriber%40dest.test&l=news>, <mailto:unsubscribe@example.com?subject=unsubscribe>',
            'List-Unsubscribe-Post': 'List-Unsubscribe=One-Click'
        }
    },
    'nm-reply-thread': {
        from: FROM,
        to: 'list@dest.test',
        cc: Array.from({ length: 12 }, (_, i) => `Member ${i} <member${i}@dest.test>`),
        replyTo: 'list@dest.test',
        inReplyTo: '<thread-41@example.com>',
        references: Array.from({ length: 8 }, (_, i) => `<thread-${34 + i}@example.com>`),
        subject: 'Re: Re: planning',
        text: '> quoted line\n>> deeper quote\nmy answer   \n\twith a tab\n.\n..two dots\n\n\n'
    },
    'nm-qp-text': {
        from: FROM,
        to: 'qp@dest.test',
        subject: 'quoted-printable body',
        textEncoding: 'quoted-printable',
        text: 'Ünïcödé text that is long enough to need soft line breaks in quoted-printable ' +
            'encoding, with = signs and trailing space   \nand a second line.\n'
    },
    'nm-base64-html': {
        from: FROM,
        to: 'b64@dest.test',
        subject: 'base64 html',
        textEncoding: 'base64',
        html: '<html><body><h1>Überschrift</h1><p>' + '内容 '.repeat(200) + '</p></body></html>'
    },
    'nm-presigned': {
        from: FROM,
        to: 'signed@dest.test',
        subject: 'Signed by the application, then by the relay',
        text: 'The application signed this with its own key; the relay adds two more.\n',
        html: '<p>The application signed this with its own key.</p>'
    }
};

const RAW = ['nm-reply-thread'];

function toBuffer(stream) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        stream.on('error', reject);
        stream.on('data', chunk => chunks.push(chunk));
        stream.on('end', () => resolve(Buffer.concat(chunks)));
    });
}

function build(name, mail, crlf) {
    const message = Object.assign({ date: DATE, messageId: `<${name}@example.com>` }, mail);
    const stream = new MailComposer(message).compile().createReadStream();
    if (!crlf) {
        return toBuffer(stream);
    }
    stream.on('error', err => out.destroy(err));
    const out = stream.pipe(new LeWindows());
    return toBuffer(out);
}

async function presign(message, out) {
    const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const der = publicKey.export({ type: 'spki', format: 'der' }).toString('base64');
    fs.writeFileSync(path.join(out, 'keytable.txt'), `app._domainkey.example.com v=DKIM1; k=rsa; p=${der}\n`);
    const signer = new DKIM({
        domainName: 'example.com',
        keySelector: 'app',
        privateKey: privateKey.export({ type: 'pkcs8', format: 'pem' })
    });
    return toBuffer(signer.sign(message));
}

async function main() {
    const out = process.argv[2];
    if (!out) {
        process.stderr.write('usage: node build.js OUTDIR\n');
        process.exit(2);
    }
    fs.mkdirSync(out, { recursive: true });
    for (const [name, mail] of Object.entries(MESSAGES)) {
        let message = await build(name, mail, true);
        if (name === 'nm-presigned') {
            message = await presign(message, out);
        }
        fs.writeFileSync(path.join(out, `${name}.eml`), message);
        process.stdout.write(`${name}\n`);
        if (RAW.includes(name)) {
            fs.writeFileSync(path.join(out, `${name}-raw.eml`), await build(name, mail, false));
            process.stdout.write(`${name}-raw\n`);
        }
    }
}

main().catch(err => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
});
