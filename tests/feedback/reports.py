"""Real-shaped delivery status notifications and ARF reports, built with the email package.

Shapes follow what the big senders of them emit: Postfix (text/rfc822-headers and
X-Postfix-Queue-ID), Gmail (the whole original as message/rfc822, a multi-line 550-5.1.1
diagnostic), Microsoft 365 (5.1.10, 'Recipient not found by SMTP address lookup'),
Exim (a delayed notice), Yahoo's and AOL's feedback loops (ARF, one redacting the
recipient).
"""

from __future__ import annotations

from email.message import EmailMessage, Message
from email.mime.base import MIMEBase
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText


def original(message_id: str, to: str = "nobody@example.org", sender: str = "alice@example.net") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = "Quarterly figures"
    msg["Message-ID"] = message_id
    msg.set_content("Please find the figures below.")
    return msg


def _fields(fields: dict[str, str]) -> Message:
    block = Message()
    for name, value in fields.items():
        block[name] = value
    return block


def _status_part(per_message: dict[str, str], recipients: list[dict[str, str]]) -> MIMEBase:
    part = MIMEBase("message", "delivery-status")
    part.set_payload([_fields(fields) for fields in [per_message, *recipients]])
    return part


def _headers_part(message: Message) -> MIMEText:
    headers = "".join(f"{k}: {v}\n" for k, v in message.items())
    part = MIMEText(headers, "rfc822-headers")
    return part


def dsn(
    message_id: str | None,
    recipients: list[dict[str, str]],
    *,
    queue_id: str | None = None,
    style: str = "postfix",
    report_message_id: str = "<dsn-1@mx.example.net>",
) -> bytes:
    report = MIMEMultipart("report", report_type="delivery-status")
    report["From"] = "MAILER-DAEMON@mx.example.net (Mail Delivery System)"
    report["To"] = "alice@example.net"
    report["Subject"] = "Undelivered Mail Returned to Sender"
    report["Date"] = "Mon, 23 Nov 2026 10:05:00 +0000"
    report["Message-ID"] = report_message_id
    report.attach(MIMEText("This is the mail system at host mx.example.net.\n\nI'm sorry to have to inform you..."))
    per_message = {"Reporting-MTA": "dns; mx.example.net", "Arrival-Date": "Mon, 23 Nov 2026 10:00:00 +0000"}
    if queue_id:
        per_message["X-Postfix-Queue-ID"] = queue_id
    report.attach(_status_part(per_message, recipients))
    if message_id is not None:
        sent = original(message_id)
        report.attach(MIMEMessage(sent) if style == "full" else _headers_part(sent))
    return report.as_bytes()


def postfix_user_unknown(message_id: str | None, queue_id: str | None = None) -> bytes:
    return dsn(
        message_id,
        [
            {
                "Final-Recipient": "rfc822; nobody@example.org",
                "Original-Recipient": "rfc822;nobody@example.org",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; mx.example.org",
                "Diagnostic-Code": "smtp; 550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown",
            }
        ],
        queue_id=queue_id,
    )


def gmail_no_such_user(message_id: str) -> bytes:
    return dsn(
        message_id,
        [
            {
                "Final-Recipient": "rfc822; ghost@gmail.example",
                "Action": "failed",
                "Status": "5.1.1",
                "Remote-MTA": "dns; gmail-smtp-in.l.google.example. (2607:f8b0::1b)",
                "Diagnostic-Code": "smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
                "Please try double-checking the recipient's email address for typos or unnecessary spaces.",
                "Last-Attempt-Date": "Mon, 23 Nov 2026 02:05:04 -0800 (PST)",
            }
        ],
        style="full",
        report_message_id="<gmail-dsn-77@mail.gmail.example>",
    )


def microsoft_not_found(message_id: str) -> bytes:
    return dsn(
        message_id,
        [
            {
                "Final-Recipient": "rfc822;someone@contoso.example",
                "Action": "failed",
                "Status": "5.1.10",
                "Remote-MTA": "dns;AM0PR01MB1234.eurprd01.prod.exchangelabs.example",
                "Diagnostic-Code": "smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
                "address lookup",
            }
        ],
        style="full",
        report_message_id="<ms-ndr-1@outlook.example>",
    )


def mixed_outcomes(message_id: str) -> bytes:
    """One message, three recipients: delivered, mailbox full (soft), and delayed (Exim-style)."""
    return dsn(
        message_id,
        [
            {"Final-Recipient": "rfc822; ok@example.com", "Action": "delivered", "Status": "2.0.0"},
            {
                "Final-Recipient": "rfc822; full@example.com",
                "Action": "failed",
                "Status": "4.2.2",
                "Diagnostic-Code": "smtp; 452 4.2.2 Mailbox full",
            },
            {
                "Final-Recipient": "rfc822; later@example.net",
                "Action": "delayed",
                "Status": "4.4.7",
                "Diagnostic-Code": "X-Exim; retry timeout exceeded",
            },
        ],
        report_message_id="<mixed-1@mx.example.net>",
    )


def arf(
    message_id: str | None,
    *,
    feedback_type: str = "abuse",
    user_agent: str = "Yahoo!-Mail-Feedback/2.0",
    rcpt_to: str | None = "victim@yahoo.example",
    to_header: str = "victim@yahoo.example",
    report_message_id: str = "<arf-1@fbl.yahoo.example>",
) -> bytes:
    report = MIMEMultipart("report", report_type="feedback-report")
    report["From"] = "feedback@arf.mail.yahoo.example"
    report["To"] = "abuse@example.net"
    report["Subject"] = "FW: Quarterly figures"
    report["Date"] = "Mon, 23 Nov 2026 11:00:00 +0000"
    report["Message-ID"] = report_message_id
    report.attach(MIMEText("This is an email abuse report for an email message received from IP 203.0.113.7"))
    fields = {
        "Feedback-Type": feedback_type,
        "User-Agent": user_agent,
        "Version": "1",
        "Original-Mail-From": "<alice@example.net>",
        "Arrival-Date": "Mon, 23 Nov 2026 10:00:00 +0000",
        "Source-IP": "203.0.113.7",
        "Reported-Domain": "example.net",
    }
    if rcpt_to:
        fields["Original-Rcpt-To"] = f"<{rcpt_to}>"
    part = MIMEBase("message", "feedback-report")
    part.set_payload([_fields(fields)])
    report.attach(part)
    if message_id is not None:
        report.attach(MIMEMessage(original(message_id, to=to_header)))
    return report.as_bytes()
