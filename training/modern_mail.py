"""A check set beyond the corpora: hand-written, present-day outbound messages.

The corpora are inbound mail from 2002-2007; these check that the shipped model
generalises to what a relay sends today: modern clients (multipart HTML), personal
notes, notifications, receipts, newsletters; and today's spam: phishing, advance
fee, crypto, malware invoices. Written for this project, not drawn from any corpus.
"""

from __future__ import annotations

import hashlib
from email.message import EmailMessage


def _message(sender: str, to: str, subject: str, text: str, html: str | None = None, **headers: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = "Mon, 23 Nov 2026 09:41:07 +0100"
    # Deterministic, client-shaped Message-IDs: the check set must score the same every run.
    local = hashlib.sha1(subject.encode()).hexdigest()[:20]
    msg["Message-ID"] = f"<{local}@{sender.rsplit('@', 1)[1].strip('>')}>"
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    msg.set_content(text)
    if html:
        msg.add_alternative(html, subtype="html")
    return msg


def _html(paragraphs: list[str]) -> str:
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f'<html><head><meta charset="utf-8"></head><body><div dir="ltr">{body}</div></body></html>'


def ham_messages() -> dict[str, EmailMessage]:
    lunch = "Hi Bob,\n\nAre we still on for lunch tomorrow at one?\n\nCheers,\nAlice"
    reschedule = [
        "Hi team,",
        "I need to move Thursday's planning meeting to Friday 10:00 because of a customer call. "
        "Same room, same agenda. Let me know if that clashes with anything.",
        "Thanks,<br>Maria",
    ]
    reply = (
        "Sounds good, I'll bring the printed contract and the signed NDA.\n\n"
        "On Sun, 22 Nov 2026 at 18:02, Tom Becker <tom@becker-law.example> wrote:\n"
        "> Could we meet at the office on Tuesday to go through the contract?\n"
        "> I have a slot at 14:00.\n"
    )
    shipped = [
        "Hi Carol,",
        "Good news: your order #58213 has shipped and should arrive on Thursday, 26 November.",
        'You can follow the parcel at <a href="https://shop.example/orders/58213">shop.example/orders/58213</a>.',
        "Thank you for shopping with Green Leaf Tea.",
    ]
    newsletter = [
        "Hello neighbours,",
        "The November newsletter of the Elm Street community garden: the winter compost day is on Saturday "
        "at 10am, the tool shed gets a new lock (ask Peter for a key), and we are collecting seed orders "
        "for spring until 15 December.",
        'Photos from the harvest party are <a href="https://elmstreetgarden.example/photos">on our website</a>.',
        'You receive this because you joined the garden. <a href="https://elmstreetgarden.example/unsubscribe">'
        "Unsubscribe</a>.",
    ]
    reset = [
        "Hi dana,",
        "We received a request to reset the password for your account on the Riverside Library portal. "
        "If you made this request, use the link below within 30 minutes:",
        '<a href="https://library.riverside.example/reset?token=8f2c1e">https://library.riverside.example/reset</a>',
        "If you did not ask for this, you can ignore this email; your password stays the same.",
    ]
    return {
        "personal_lunch": _message("Alice Example <alice@example.net>", "bob@example.org", "Lunch tomorrow?", lunch),
        "meeting_reschedule_html": _message(
            "Maria Lopez <maria.lopez@acme-engineering.example>",
            "team@acme-engineering.example",
            "Planning meeting moved to Friday",
            "Hi team,\n\nI need to move Thursday's planning meeting to Friday 10:00 because of a customer call. "
            "Same room, same agenda. Let me know if that clashes with anything.\n\nThanks,\nMaria",
            _html(reschedule),
            User_Agent="Mozilla Thunderbird 128.4",
        ),
        "thread_reply": _message(
            "Jan Novak <jan@novak-consulting.example>",
            "Tom Becker <tom@becker-law.example>",
            "Re: contract review",
            reply,
            In_Reply_To="<CAF1234@becker-law.example>",
            References="<CAF1234@becker-law.example>",
        ),
        "order_shipped": _message(
            "Green Leaf Tea <orders@greenleaftea.example>",
            "carol@example.org",
            "Your order #58213 has shipped",
            "Hi Carol,\n\nYour order #58213 has shipped and should arrive on Thursday, 26 November.\n"
            "Track it at https://shop.example/orders/58213\n\nThank you for shopping with Green Leaf Tea.",
            _html(shipped),
        ),
        "community_newsletter": _message(
            "Elm Street Garden <news@elmstreetgarden.example>",
            "members@elmstreetgarden.example",
            "Garden news for November",
            "Hello neighbours,\n\nThe winter compost day is on Saturday at 10am, the tool shed gets a new lock, "
            "and we are collecting seed orders for spring until 15 December.\n\n"
            "Photos: https://elmstreetgarden.example/photos\nUnsubscribe: https://elmstreetgarden.example/unsubscribe",
            _html(newsletter),
        ),
        "password_reset": _message(
            "Riverside Library <no-reply@library.riverside.example>",
            "dana@example.com",
            "Reset your library password",
            "Hi dana,\n\nWe received a request to reset your password. Use this link within 30 minutes:\n"
            "https://library.riverside.example/reset?token=8f2c1e\n\nIf you did not ask for this, ignore this email.",
            _html(reset),
        ),
    }


def spam_messages() -> dict[str, EmailMessage]:
    phishing_html = [
        "Dear Customer,",
        "We detected unusual activity and your account has been <b>temporarily suspended</b>. "
        "To restore access you must verify your identity within 24 hours or your account will be permanently closed.",
        '<a href="http://secure-verify-login.example.ru/pp/index.php">https://www.paypal.com/verify</a>',
        "Thank you,<br>PayPal Security Team",
    ]
    crypto = [
        "<b>TURN $250 INTO $12,000 IN 7 DAYS!!!</b>",
        "Our AI trading robot made early investors MILLIONAIRES. Guaranteed profit, zero risk, "
        "withdraw any time. Only 20 spots left for today!!!",
        '<a href="http://bit.ly/ai-profit-now">CLAIM YOUR SPOT NOW</a>',
        '<div style="display:none">weather garden recipe football</div>',
    ]
    malware = _message(
        "Accounts Department <accounts@invoices-dept.example>",
        "undisclosed-recipients:;",
        "Overdue invoice INV-20931 - final notice",
        "Dear Sir/Madam,\n\nPlease find attached the overdue invoice. "
        "Payment must be made today to avoid legal action.\n"
        "Open the attached document to view the amount due.\n\nRegards,\nAccounts",
    )
    malware.add_attachment(b"MZ\x90\x00fake", maintype="application", subtype="zip", filename="INV-20931.pdf.zip")
    return {
        "paypal_phishing": _message(
            "PayPal Service <service@account-security-alerts.example>",
            "customer@example.org",
            "Your account has been suspended - action required",
            "Dear Customer, your account has been suspended. Verify your identity within 24 hours: "
            "http://secure-verify-login.example.ru/pp/index.php",
            _html(phishing_html),
            Reply_To="support-team@free-mailbox.example",
        ),
        "advance_fee": _message(
            "Barrister James Okoro <j.okoro@law-chambers.example>",
            "undisclosed-recipients:;",
            "URGENT BUSINESS PROPOSAL - CONFIDENTIAL",
            "Dear Friend,\n\nI am Barrister James Okoro, personal attorney to the late Mr. Robert Williams who died "
            "with his family in a car accident. He left the sum of US$10,500,000.00 (Ten Million Five Hundred "
            "Thousand Dollars) in a bank here with no next of kin. I want to present you as the beneficiary so the "
            "funds can be released to you. We share 60/40. Reply with your full name, phone number and bank details "
            "to proceed immediately.\n\nRegards,\nBarrister James Okoro",
        ),
        "crypto_investment": _message(
            "AI Profit System <promo@ai-profit-system.example>",
            "undisclosed-recipients:;",
            "TURN $250 INTO $12,000 - AI TRADING ROBOT!!!",
            "TURN $250 INTO $12,000 IN 7 DAYS!!! Guaranteed profit, zero risk. http://bit.ly/ai-profit-now",
            _html(crypto),
        ),
        "malware_invoice": malware,
        "pharma": _message(
            "Pharmacy Online <sales@cheap-meds-24.example>",
            "undisclosed-recipients:;",
            "Viagra Cialis 80% OFF - no prescription needed",
            "Best prices on Viagra, Cialis, Levitra. No prescription needed! Discreet shipping worldwide. "
            "80% OFF today only! Order now: http://cheap-meds-24.example/shop?id=3312",
        ),
    }
