#!/usr/bin/env python3
"""Writes gomail's seed corpus, fuzz/corpus/<target>/, from the SMTP
dialogues of the session tests, real-looking messages, well-formed spool
segments and the example configs. Run from the repository root; the
files are committed, so this only needs running when the seeds change.
Input layouts are described in src/fuzzing/<target>.rs."""

import json
import os
import struct
import zlib

OUT = "fuzz/corpus"


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# --- command: one line without its CRLF ------------------------------------
for name, line in [
    ("ehlo", "EHLO client.example"),
    ("helo_literal", "HELO [192.0.2.1]"),
    ("mail_params", "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME"),
    ("mail_route_utf8", "MAIL FROM:<@r1.example,@r2.example:p\u00e9@b.example> SMTPUTF8 REQUIRETLS"),
    ("mail_null", "MAIL FROM:<>"),
    ("rcpt", "RCPT TO:<b@example.test>"),
    ("rcpt_quoted_v6", 'RCPT TO:<"quoted \\" local"@[IPv6:2001:db8::1]>'),
    ("rcpt_postmaster", "rcpt to:<Postmaster>"),
    ("bdat_last", "BDAT 5 LAST"),
    ("vrfy", "VRFY someone"),
    ("starttls", "STARTTLS"),
]:
    put("command", name, line)

# --- session: flags | gate | k | k control octets | plaintext [0xFE TLS] ---
STARTTLS, CHECK_SENDER, STRICT, GATE, SMALL, FEW_ERRORS, REFUSED, TLS = (
    1 << i for i in range(8)
)


def session(name, flags, script, control=b"\x00\x05\x10\x1f", gate=0):
    if isinstance(script, str):
        script = script.encode()
    put("session", name, bytes([flags, gate, len(control)]) + control + script)


E = "EHLO client.example\r\n"
T = "MAIL FROM:<a@sender.example>\r\nRCPT TO:<b@example.test>\r\n"
session("plain", STARTTLS, E + T + "DATA\r\nSubject: hi\r\n\r\nbody\r\n..dot\r\n.\r\nQUIT\r\n")
session(
    "pipelined",
    0,
    "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<x@example.test>\r\nRCPT TO:<y@nowhere.example>\r\nDATA\r\n..dot\r\n.\r\n"
    "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<Z@OTHER.TEST>\r\nDATA\r\nm2\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
)
session(
    "smuggling",
    0,
    E + T + "DATA\r\nhello\n.\nMAIL FROM:<evil@s.example>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nsmuggled\r\n.\r\nNOOP\r\n",
)
session("bdat", 0, E + T + "BDAT 5\r\nab\r\ncBDAT 3 LAST\r\n.\r\nQUIT\r\n")
session("bdat_no_transaction", 0, "EHLO c\r\nBDAT 25 LAST\r\nMAIL FROM:<e@v.example>\r\nNOOP\r\n")
session(
    "starttls_pipelined",
    STARTTLS,
    (E + "MAIL FROM:<a@b.example>\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@b.example>\r\n").encode()
    + b"\xfe"
    + (E + "MAIL FROM:<a@b.example> REQUIRETLS\r\nRCPT TO:<r@example.test>\r\nDATA\r\nx\r\n.\r\nSTARTTLS\r\n").encode(),
)
session(
    "starttls_then_mail_without_ehlo",
    STARTTLS,
    (E + "STARTTLS\r\n").encode()
    + b"\xfe"
    + (T + "DATA\r\nx\r\n.\r\n" + E + T + "DATA\r\ny\r\n.\r\n").encode(),
)
session(
    "checks_and_gate",
    CHECK_SENDER | GATE | STRICT,
    E + T + "DATA\r\nFrom: a@sender.example\r\nDate: Mon, 1 Dec 2025 08:00:00 +0000\r\n\r\nx\r\n.\r\n"
    + T + "DATA\r\nFrom: a\r\nFrom: b\r\n\r\nx\r\n.\r\n",
    control=b"\x00\x02\x05\x03\x01",
    gate=0b0100_1001,
)
session("refused", REFUSED, "EHLO c\r\nMAIL FROM:<a@b.example>\r\nHELP\r\nQUIT\r\n")
session(
    "implicit_tls",
    TLS | SMALL,
    "EHLO c\r\nSTARTTLS\r\nMAIL FROM:<a@b.example> REQUIRETLS SIZE=9999\r\nMAIL FROM:<a@b.example> REQUIRETLS\r\n"
    "RCPT TO:<postmaster>\r\nRCPT TO:<c@example.test>\r\nRCPT TO:<d@example.test>\r\nDATA\r\n"
    + "a" * 80 + "\r\n.\r\n",
)
session(
    "errors_and_long_lines",
    FEW_ERRORS | STARTTLS,
    "EHLO c\r\n" + "X" * 600 + "\r\nMAIL FROM:<a@localhost>\r\nBOGUS\r\nNOOP\rNOOP\r\nDATA\r\nBDAT x\r\n",
)
session(
    "utf8_and_hops",
    0,
    E + "MAIL FROM:<p\u00e9@b.example> SMTPUTF8\r\nRCPT TO:<p\u00e9@example.test>\r\nDATA\r\n"
    + "Received: from x\r\n" * 3 + "\r\nbody\r\n.\r\n",
)

# --- data: limit | k | k split octets | octets after 354 --------------------
def data(name, limit, body, splits=b"\x03\x07\x01"):
    if isinstance(body, str):
        body = body.encode()
    put("data", name, bytes([limit, len(splits)]) + splits + body)


data("message", 3, "Subject: hi\r\n\r\nbody\r\n..leading dot\r\n.\r\nQUIT\r\n")
data("bare_newlines", 2, "hello\n.\nMAIL FROM:<e@v>\r\n\r.\r\r\n.\n\r\n.\r\n")
data("long_line", 2, "x" * 1200 + "\r\n.\r\n")
data("empty", 1, ".\r\n")
data("unfinished", 1, "abc\r\n..\r")

# --- spool: cut | segment octets --------------------------------------------
def record(kind, payload):
    return b"GMS1" + bytes([kind, 0, 0, 0]) + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def message_record(qid, body, **extra):
    env = {
        "id": qid,
        "received_at_ms": 1764489600123,
        "mail_from": "a@b.example",
        "recipients": ["r@example.test"],
        "helo": "c.example",
        "client_ip": "127.0.0.1",
        "esmtp": True,
        "eight_bit": False,
        "smtputf8": False,
        "chunked": False,
        "shard": 0,
    }
    env.update(extra)
    meta = json.dumps(env, separators=(",", ":")).encode()
    return record(1, struct.pack("<I", len(meta)) + meta + body)


def done(qid):
    return record(2, qid.encode())


A = message_record("A", b"Received: x\r\n\r\nbody\r\n")
B = message_record(
    "B",
    b"two",
    tls_version="TLSv1.3",
    authentication={"spf": {"result": "pass"}},
    spool_us=12,
)
put("spool", "message_done", b"\x80" + A + done("A") + B)
put("spool", "two_segments", b"\x40" + A + B + done("B") + A)
put("spool", "torn_tail", b"\xff" + A + B[: len(B) // 2])
put("spool", "zero_padding", b"\xff" + A + bytes(64))
flipped = bytearray(A + done("A") + B)
flipped[30] ^= 1
put("spool", "flipped_byte", b"\x10" + bytes(flipped))

# --- message: the message as the session hands it over ---------------------
put(
    "message",
    "simple",
    "From: Sender <sender@example.org>\r\nTo: rcpt@example.test\r\nSubject: hello\r\n"
    "Date: Mon, 1 Dec 2025 08:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nbody line\r\n",
)
put(
    "message",
    "two_from",
    "From: a@good.example\r\nFrom: b@evil.example\r\nDate: Mon, 1 Dec 2025 08:00:00 +0000\r\n\r\nx\r\n",
)
put(
    "message",
    "forged_results",
    "Authentication-Results: mx.example.test; dmarc=pass header.from=bank.example\r\n"
    "Authentication-Results: other.example; spf=pass\r\nX-Gomail-Quarantine: no\r\n"
    "X-Gomail-SPF-Failed: no\r\nFrom: a@bank.example\r\n\r\nAuthentication-Results: mx.example.test; body\r\n",
)
sig = (
    "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n"
    "\th=from:to:subject; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n"
    "\tb=dGVzdA==\r\n"
)
put(
    "message",
    "many_signatures",
    sig * 7
    + "ARC-Seal: i=1; a=rsa-sha256; cv=none; d=example.org; s=sel; b=dGVzdA==\r\n"
    + "From: a@example.org\r\nSubject: signed\r\n\r\nbody\r\n",
)
put(
    "message",
    "mime_attachment",
    "From: =?UTF-8?B?w4lsaXNl?= <elise@example.org>\r\nTo: r@example.test\r\n"
    "Subject: =?UTF-8?Q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\n"
    'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nhi\r\n'
    '--b1\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="a.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n\r\nAAECAw==\r\n--b1--\r\n",
)
put("message", "eight_bit", b"From: a@b.example\r\nSubject: \xe9t\xe9\r\n\r\n\xff\xfe body\r\n")
# A forged field of 998 octets: renamed, it is folded to stay within them.
put(
    "message",
    "forged_results_998",
    "Authentication-Results:mx.example.test; spf=pass "
    + "x" * (998 - 49)
    + "\r\nX-Gomail-Quarantine: "
    + "q" * (998 - 21)
    + "\r\nFrom: a@b.example\r\n\r\nbody\r\n",
)
put("message", "folded_continuation_first", " folded\r\nFrom: a@b.example\r\nbad line\r\n\r\n")

# --- config: YAML text -------------------------------------------------------
for f in ["gomail.yaml", "gomail-security.yaml"]:
    with open(os.path.join("deploy", f), "rb") as src:
        put("config", f.replace(".yaml", ""), src.read())
put(
    "config",
    "nested_and_durations",
    "primary_domain: example.test\nvalidation:\n  strict_headers: yes\n  reject_invalid_domains: on\n"
    "webhook_timeout: 1h30m\nsmtp_rate_window: 1.5h\nmax_message_size: 25MB\ndnsbl:\n  - zen.example=2\n"
    "api_endpoint: https://hooks.example/inbound\n",
)
put("config", "duplicate_key", "shards: 2\nshards: 3\n")
put("config", "wrong_types", "max_recipients: [1, 2]\nspf_enabled: maybe\nwebhook_timeout: 10000000000000000000\n")
