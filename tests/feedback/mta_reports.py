"""Bounces and complaints as real MTAs write them, 8-bit and internationalised, as literal texts.

Each is the shape its sender really emits, down to the quirks a parser trips on:
- Postfix with SMTPUTF8 (bounce_notify_util.c): `message/global-delivery-status`,
  `X-Postfix-Queue-ID`, `Final-Recipient: rfc822;` with the UTF-8 address as is, the
  client's ORCPT echoed as `Original-Recipient: utf-8;` in xtext form (RFC 6533 3), and
  `message/global-headers`;
- Exim (deliver.c, `print_topbitchars`): `Content-type:` in lower case, `Action` before
  `Final-Recipient`, `Status: 5.0.0`, the remote's UTF-8 reply copied into Diagnostic-Code;
  with SMTPUTF8, `message/global-delivery-status` and the whole original as `message/global`;
  its delay warning (`Action: delayed`, `Will-Retry-Until`);
- Microsoft 365: CRLF, `X-Display-Name`, a blank line too many after the last recipient
  block, a remote's localised German reply;
- Gmail: the human part in multipart/related with its icon, `X-Original-Message-ID` in the
  per-message fields, `Remote-MTA: dns; host. (ip, the server for the domain ...)`, a
  multi-line remote reply in UTF-8, and the whole original;
- an RFC 6533 DSN downgraded for a 7-bit path: the global parts in base64 or
  quoted-printable;
- a feedback-loop complaint (ARF) about an internationalised message.
"""

from __future__ import annotations

import base64
import quopri

ALICE = "alice@example.net"


def xtext(address: str) -> str:
    """RFC 6533 utf-8-addr-xtext: every non-ASCII character as `\\x{HEX}`."""
    return "".join(c if c.isascii() else f"\\x{{{ord(c):X}}}" for c in address)


def _fill(template: str, crlf: bool = False, **values: str) -> bytes:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    text = template.lstrip("\n")
    return (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")


_POSTFIX_SMTPUTF8 = """
Return-Path: <>
Received: by mx1.example.net (Postfix)
\tid 4XyzQ1Hq2Kz9sT; Mon, 23 Nov 2026 10:05:00 +0100 (CET)
Date: Mon, 23 Nov 2026 10:05:00 +0100 (CET)
From: MAILER-DAEMON@mx1.example.net (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: alice@example.net
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="4XyzQ1Hq2Kz9sT.1795424700/mx1.example.net"
Content-Transfer-Encoding: 8bit
Message-Id: <20261123090500.5A1B2C3D4E@mx1.example.net>

This is a MIME-encapsulated message.

--4XyzQ1Hq2Kz9sT.1795424700/mx1.example.net
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx1.example.net.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to <postmaster>

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<{recipient}>: host mx.bücher.example[192.0.2.25] said: 550 5.1.1
    <{recipient}>: Recipient address rejected: Empfänger unbekannt (in reply
    to RCPT TO command)

--4XyzQ1Hq2Kz9sT.1795424700/mx1.example.net
Content-Description: Delivery report
Content-Type: message/global-delivery-status
Content-Transfer-Encoding: 8bit

Reporting-MTA: dns; mx1.example.net
X-Postfix-Queue-ID: 4XyzQ1Hq2Kz9sT
X-Postfix-Sender: rfc822; alice@example.net
Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0100 (CET)

Final-Recipient: rfc822; {recipient}
Original-Recipient: utf-8; {orcpt}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.bücher.example
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected:
    Empfänger unbekannt

--4XyzQ1Hq2Kz9sT.1795424700/mx1.example.net
Content-Description: Undelivered Message Headers
Content-Type: message/global-headers
Content-Transfer-Encoding: 8bit

Return-Path: <alice@example.net>
Received: from [192.0.2.10] (unknown [192.0.2.10])
\tby mx1.example.net (Postfix) with UTF8SMTPSA id 4XyzQ1Hq2Kz9sT
\tfor <{recipient}>; Mon, 23 Nov 2026 10:00:00 +0100 (CET)
From: Alice <alice@example.net>
To: Jürgen <{recipient}>
Subject: Angebot für Ihre Bücher
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 10:00:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

--4XyzQ1Hq2Kz9sT.1795424700/mx1.example.net--
"""


def postfix_smtputf8(message_id: str, recipient: str = "jürgen@bücher.example") -> bytes:
    """Postfix bouncing an SMTPUTF8 message: a global DSN, the ORCPT in xtext form."""
    return _fill(_POSTFIX_SMTPUTF8, message_id=message_id, recipient=recipient, orcpt=xtext(recipient))


_EXIM_UTF8_DIAGNOSTIC = """
Return-path: <>
Envelope-to: alice@example.net
Delivery-date: Mon, 23 Nov 2026 11:15:09 +0200
Received: from Debian-exim by relay.example.net with local (Exim 4.97)
\tid 1tEd0n-00006Z-3S
\tfor alice@example.net; Mon, 23 Nov 2026 11:15:09 +0200
X-Failed-Recipients: {recipient}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@relay.example.net>
To: alice@example.net
Content-Type: multipart/report; report-type=delivery-status; boundary=1795425309-eximdsn-982303089
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tEd0n-00006Z-3S@relay.example.net>
Date: Mon, 23 Nov 2026 11:15:09 +0200

--1795425309-eximdsn-982303089
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    host mx.pochta.example [203.0.113.25]
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    550 5.1.1 Пользователь не найден / mailbox unavailable

--1795425309-eximdsn-982303089
Content-type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Action: failed
Final-Recipient: rfc822;{recipient}
Status: 5.0.0
Remote-MTA: dns; mx.pochta.example
Diagnostic-Code: smtp; 550 5.1.1 Пользователь не найден / mailbox unavailable

--1795425309-eximdsn-982303089
Content-type: message/rfc822

Return-path: <alice@example.net>
Received: from [192.0.2.10] (helo=[192.0.2.10])
\tby relay.example.net with esmtpsa (TLS1.3) tls TLS_AES_256_GCM_SHA384
\t(Exim 4.97)
\t(envelope-from <alice@example.net>)
\tid 1tEd0m-00006X-2K
\tfor {recipient}; Mon, 23 Nov 2026 11:15:08 +0200
From: Alice <alice@example.net>
To: {recipient}
Subject: Quarterly figures
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 11:15:00 +0200
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Please find the figures below.

--1795425309-eximdsn-982303089--
"""


def exim_utf8_diagnostic(message_id: str, recipient: str = "ivan@pochta.example") -> bytes:
    """Exim (print_topbitchars) bouncing with the remote's Russian reply, 8-bit, in a plain DSN."""
    return _fill(_EXIM_UTF8_DIAGNOSTIC, message_id=message_id, recipient=recipient)


_EXIM_SMTPUTF8 = """
Return-path: <>
X-Failed-Recipients: {recipient}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@relay.example.net>
To: alice@example.net
Content-Type: multipart/report; report-type=delivery-status; boundary=1795425309-eximdsn-1802932107
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1tEd1q-00007B-4T@relay.example.net>
Date: Mon, 23 Nov 2026 11:16:10 +0200

--1795425309-eximdsn-1802932107
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    host mx.παράδειγμα.example [203.0.113.30]
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    550 5.1.1 Ο παραλήπτης δεν υπάρχει

--1795425309-eximdsn-1802932107
Content-type: message/global-delivery-status

Reporting-MTA: dns; relay.example.net

Action: failed
Final-Recipient: rfc822;{recipient}
Status: 5.0.0
Remote-MTA: dns; mx.παράδειγμα.example
Diagnostic-Code: smtp; 550 5.1.1 Ο παραλήπτης δεν υπάρχει

--1795425309-eximdsn-1802932107
Content-type: message/global

Return-path: <alice@example.net>
From: Alice <alice@example.net>
To: {recipient}
Subject: Προσφορά
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 11:16:00 +0200
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Καλημέρα!

--1795425309-eximdsn-1802932107--
"""


def exim_smtputf8(message_id: str, recipient: str = "δοκιμή@παράδειγμα.example") -> bytes:
    """Exim bouncing an SMTPUTF8 message: global DSN, the whole original as message/global."""
    return _fill(_EXIM_SMTPUTF8, message_id=message_id, recipient=recipient)


_EXIM_DELAYED = """
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@relay.example.net>
To: alice@example.net
Content-Type: multipart/report; report-type=delivery-status; boundary=1795432509-eximdsn-1142356718
MIME-Version: 1.0
Subject: Warning: message 1tEd0m-00006X-2K delayed 2 hours
Message-Id: <E1tEf2r-0000Aa-9Q@relay.example.net>
Date: Mon, 23 Nov 2026 13:15:09 +0200

--1795432509-eximdsn-1142356718
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.
A message that you sent has not yet been delivered to one or more of its
recipients after more than 2 hours on the queue on relay.example.net.

The message identifier is:     1tEd0m-00006X-2K

The address to which the message has not yet been delivered is:

  {recipient}
    host mx.kunde.example [198.51.100.7]
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    451 4.2.2 Postfach voll, bitte später erneut versuchen

No action is required on your part. Delivery attempts will continue for
some time, and this warning may be repeated at intervals if the message
remains undelivered. Eventually the mail delivery software will give up,
and when that happens, the message will be returned to you.

--1795432509-eximdsn-1142356718
Content-type: message/delivery-status

Reporting-MTA: dns; relay.example.net

Action: delayed
Final-Recipient: rfc822;{recipient}
Status: 4.0.0
Remote-MTA: dns; mx.kunde.example
Diagnostic-Code: smtp; 451 4.2.2 Postfach voll, bitte später erneut versuchen
Will-Retry-Until: Thu, 26 Nov 2026 11:15:08 +0200

--1795432509-eximdsn-1142356718
Content-type: text/rfc822-headers

Return-path: <alice@example.net>
From: Alice <alice@example.net>
To: {recipient}
Subject: Quarterly figures
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 11:15:00 +0200

--1795432509-eximdsn-1142356718--
"""


def exim_delayed(message_id: str, recipient: str = "grete@kunde.example") -> bytes:
    """Exim's delay warning, the remote's German 451 in 8-bit."""
    return _fill(_EXIM_DELAYED, message_id=message_id, recipient=recipient)


_MICROSOFT_365 = """
Received: from AM9PR01MB1234.eurprd01.prod.outlook.com (2603:10a6:20b:4::12) by
 DB9PR01MB5678.eurprd01.prod.outlook.com with HTTPS; Mon, 23 Nov 2026 09:05:12
 +0000
From: Microsoft Outlook <postmaster@contoso.example>
To: <alice@example.net>
Date: Mon, 23 Nov 2026 09:05:11 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="a0e06538-c0ba-473f-96b1-9889575257a2"
X-MS-Exchange-Message-Is-Ndr:
Content-Language: de-DE
Message-ID: <a4037638-4548-475c-bfed-f01b2a639800@AM9PR01MB1234.eurprd01.prod.outlook.com>
In-Reply-To: {message_id}
References: {message_id}
Thread-Topic: Quarterly figures
Subject: Unzustellbar: Quarterly figures
Auto-Submitted: auto-replied
X-MS-PublicTrafficType: Email
Return-Path: <>
MIME-Version: 1.0

--a0e06538-c0ba-473f-96b1-9889575257a2
Content-Type: multipart/alternative; differences=Content-Type;
\tboundary="1eebb6f1-0990-4775-a95e-f383514cf5ce"

--1eebb6f1-0990-4775-a95e-f383514cf5ce
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

Ihre Nachricht an {recipient} konnte nicht zugestellt werden.

Diagnoseinformationen f=C3=BCr Administratoren:

Generierender Server: AM9PR01MB1234.eurprd01.prod.outlook.com

--1eebb6f1-0990-4775-a95e-f383514cf5ce
Content-Type: text/html; charset="utf-8"
Content-Transfer-Encoding: quoted-printable

<html><body><p>Ihre Nachricht konnte nicht zugestellt werden.</p></body></html>

--1eebb6f1-0990-4775-a95e-f383514cf5ce--

--a0e06538-c0ba-473f-96b1-9889575257a2
Content-Type: message/delivery-status

Reporting-MTA: dns;AM9PR01MB1234.eurprd01.prod.outlook.com
Received-From-MTA: dns;DB9PR01MB5678.eurprd01.prod.outlook.com
Arrival-Date: Mon, 23 Nov 2026 09:05:09 +0000

Final-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp;550 5.1.1 <{recipient}>: Empfängeradresse abgelehnt: Postfach nicht verfügbar
Remote-MTA: dns;mail.kunde.example
X-Display-Name: Grete Müller


--a0e06538-c0ba-473f-96b1-9889575257a2
Content-Type: message/rfc822

From: Alice <alice@example.net>
To: Grete Müller <{recipient}>
Subject: Quarterly figures
Date: Mon, 23 Nov 2026 09:05:00 +0000
Message-ID: {message_id}
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 8bit
MIME-Version: 1.0

Guten Tag, anbei die Zahlen.

--a0e06538-c0ba-473f-96b1-9889575257a2--
"""


def microsoft_365(message_id: str, recipient: str = "grete.müller@kunde.example") -> bytes:
    """Microsoft 365's NDR (CRLF) for an EAI recipient, the remote's German reply, a blank line too many."""
    return _fill(_MICROSOFT_365, crlf=True, message_id=message_id, recipient=recipient)


_GMAIL = """
Return-Path: <>
Received: by 2002:a05:6520:5c8:b0:2cb:4b14:9c99 with SMTP id r8csp263947lkr;
        Mon, 23 Nov 2026 02:05:05 -0800 (PST)
Content-Type: multipart/report; boundary="00000000000032ff9a063a99824d"; report-type=delivery-status
To: alice@example.net
Auto-Submitted: auto-replied
Message-ID: <6880f151.050a0220.3414c9.27f3.GMR@mx.google.example>
Date: Mon, 23 Nov 2026 02:05:05 -0800 (PST)
From: Mail Delivery Subsystem <mailer-daemon@googlemail.example>
Subject: Delivery Status Notification (Failure)
References: {message_id}
In-Reply-To: {message_id}
X-Failed-Recipients: {recipient}

--00000000000032ff9a063a99824d
Content-Type: multipart/related; boundary="00000000000033222b063a998286"

--00000000000033222b063a998286
Content-Type: multipart/alternative; boundary="000000000000332237063a998287"

--000000000000332237063a998287
Content-Type: text/plain; charset="UTF-8"


** Adresse introuvable **

Votre message n'a pas été distribué à {recipient}, car l'adresse est introuvable ou ne peut pas recevoir de messages.

Voici la réponse du serveur distant :
550 5.1.1 <{recipient}>: adresse de destinataire refusée : utilisateur inconnu dans la table des boîtes aux lettres

--000000000000332237063a998287
Content-Type: text/html; charset="UTF-8"

<html><body><h1>Adresse introuvable</h1></body></html>

--000000000000332237063a998287--
--00000000000033222b063a998286
Content-Type: image/png; name="icon.png"
Content-Disposition: attachment; filename="icon.png"
Content-Transfer-Encoding: base64
Content-ID: <icon.png>

iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==
--00000000000033222b063a998286--
--00000000000032ff9a063a99824d
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.example
Received-From-MTA: dns; alice@example.net
Arrival-Date: Mon, 23 Nov 2026 02:05:03 -0800 (PST)
X-Original-Message-ID: {message_id}

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mx.exemple.example. (192.0.2.44, the server for the domain exemple.example.)
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: adresse de destinataire refusée :
 utilisateur inconnu dans la table des boîtes aux lettres
Last-Attempt-Date: Mon, 23 Nov 2026 02:05:04 -0800 (PST)

--00000000000032ff9a063a99824d
Content-Type: message/rfc822

From: Alice <alice@example.net>
To: {recipient}
Subject: Quarterly figures
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 11:05:00 +0100
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"

Please find the figures below.

--00000000000032ff9a063a99824d--
"""


def gmail(message_id: str, recipient: str = "hélène@exemple.example") -> bytes:
    """Gmail relaying a French server's refusal: a multi-line UTF-8 Diagnostic-Code in a plain DSN."""
    return _fill(_GMAIL, message_id=message_id, recipient=recipient)


_GLOBAL_7BIT = """
From: Mail Delivery System <MAILER-DAEMON@mx2.example.net>
To: alice@example.net
Subject: Delivery Status Notification (Failure)
Date: Mon, 23 Nov 2026 10:20:00 +0000
Message-ID: <dsn-7bit-{tag}@mx2.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="=_7bit_global"

--=_7bit_global
Content-Type: text/plain; charset=us-ascii

Delivery to the following recipient failed permanently.

--=_7bit_global
Content-Type: message/global-delivery-status
Content-Transfer-Encoding: {encoding}

{status}
--=_7bit_global
Content-Type: message/global-headers
Content-Transfer-Encoding: {encoding}

{headers}
--=_7bit_global--
"""

_GLOBAL_STATUS = """Reporting-MTA: dns; mx2.example.net
Arrival-Date: Mon, 23 Nov 2026 10:19:58 +0000

Original-Recipient: utf-8; {orcpt}
Final-Recipient: utf-8; {recipient}
Action: failed
Status: 5.2.1
Diagnostic-Code: smtp; 550 5.2.1 <{recipient}>: メールボックスは無効です (mailbox disabled)

"""

_GLOBAL_HEADERS = """From: Alice <alice@example.net>
To: {recipient}
Subject: 見積もりのご案内
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 10:19:50 +0000
"""


def _encode(text: str, encoding: str) -> str:
    data = text.encode("utf-8")
    if encoding == "base64":
        return base64.encodebytes(data).decode("ascii")
    return quopri.encodestring(data).decode("ascii")


def global_dsn_7bit(message_id: str, encoding: str, recipient: str = "田中@例え.example") -> bytes:
    """An RFC 6533 DSN downgraded for a 7-bit path: the global parts in base64 or quoted-printable."""
    values = {"message_id": message_id, "recipient": recipient, "orcpt": xtext(recipient)}
    status, headers = _GLOBAL_STATUS, _GLOBAL_HEADERS
    for name, value in values.items():
        status, headers = status.replace("{" + name + "}", value), headers.replace("{" + name + "}", value)
    return _fill(
        _GLOBAL_7BIT,
        tag=encoding,
        encoding=encoding,
        status=_encode(status, encoding),
        headers=_encode(headers, encoding),
    )


_ARF_INTERNATIONAL = """
From: FBL <fbl@feedback.mail.example>
To: abuse@example.net
Subject: =?UTF-8?B?0JbQsNC70L7QsdCwOiDQodC/0LXRhtC/0YDQtdC00LvQvtC20LXQvdC40LU=?=
Date: Mon, 23 Nov 2026 12:00:00 +0300
Message-ID: <fbl-2026112312-77@feedback.mail.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="fbl_boundary_77"

--fbl_boundary_77
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Жалоба пользователя на письмо, полученное с IP 203.0.113.7.

--fbl_boundary_77
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: Почта-FBL/1.0
Version: 1
Original-Mail-From: <alice@example.net>
Original-Rcpt-To: <{recipient}>
Arrival-Date: Mon, 23 Nov 2026 10:00:00 +0300
Source-IP: 203.0.113.7
Reported-Domain: example.net

--fbl_boundary_77
Content-Type: message/global

Return-Path: <alice@example.net>
From: Alice <alice@example.net>
To: {recipient}
Subject: Специальное предложение
Message-ID: {message_id}
Date: Mon, 23 Nov 2026 09:59:00 +0300
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8

Только сегодня!

--fbl_boundary_77--
"""


def arf_international(message_id: str, recipient: str = "пётр@почта.example") -> bytes:
    """A feedback loop's complaint about an SMTPUTF8 message: 8-bit fields, the original as message/global."""
    return _fill(_ARF_INTERNATIONAL, message_id=message_id, recipient=recipient)


def replace(report: bytes, old: str, new: str) -> bytes:
    """The report with `old` (which must be there) replaced by `new`."""
    assert old.encode() in report, old
    return report.replace(old.encode(), new.encode())
