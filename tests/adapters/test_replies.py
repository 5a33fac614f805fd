"""The SMTP reply text: one place (`service.adapters.replies`), in the JSON answer as `smtp_reply`."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.adapters.replies import LockInfo, locked_reply, virus_reply
from service.app import create_app
from service.settings import RelayPolicy, Settings
from tests.conftest import make_raw
from tests.service.test_score_api import SPAM, SPRAYED

# A score in a reply: 0.998, 0.91. The incident reference is hex without a point.
NUMBER = re.compile(r"\d\.\d")


def score(client: TestClient, **fields: object) -> dict:
    response = client.post("/v1/score", json={"message_id": "<r1@example.net>", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def lock(client: TestClient, account: str, reason: str, relay: str = "default") -> None:
    response = client.post(
        f"/v1/accounts/{relay}/{quote(account, safe='')}/lock",
        json={"actor": "ops@example.net", "reason": reason, "force": True},
    )
    assert response.status_code == 200, response.text


def test_accepted_mail_has_no_reply(client: TestClient) -> None:
    result = score(client, sasl_username="alice@example.net", recipients=["bob@example.org"], raw=make_raw())
    assert (result["action"], result["smtp_reply"]) == ("accept", None)


def test_an_admins_lock_is_refused_with_the_account_named_but_not_the_admins_note(client: TestClient) -> None:
    lock(client, "alice@example.net", "ticket 4711: card chargeback")
    result = score(client, sasl_username="alice@example.net", recipients=["bob@example.org"], raw=make_raw())
    assert (result["action"], result["account_locked"]) == ("reject", True)
    reply = result["smtp_reply"]
    assert re.fullmatch(
        r"550 5\.7\.1 Account alice@example\.net is locked: locked by an administrator "
        r"\(incident [0-9a-f]{8}\)\. Contact support\.",
        reply,
    ), reply
    assert "4711" not in reply  # the note is for the relay's eyes
    [why] = result["reasons"]
    assert why["name"] == "account_locked"
    assert "by an administrator: ticket 4711: card chargeback" in why["description"]
    incident = reply.split("(incident ")[1][:8]
    assert f"(incident {incident})" in why["description"]  # the relay's log and the sender's bounce agree
    # The same lock, the same reference, message after message.
    again = score(client, message_id="<r2@example.net>", sasl_username="alice@example.net", raw=make_raw())
    assert again["smtp_reply"] == reply


def test_a_spam_run_locks_and_the_reply_says_suspected_compromise_without_scores(client: TestClient) -> None:
    results = [
        score(client, message_id=f"<s{i}@x>", sasl_username="hijacked@example.net", recipients=SPRAYED, raw=SPAM)
        for i in range(6)
    ]
    held = results[0]
    assert held["action"] == "hold"
    assert held["smtp_reply"] == "451 4.7.1 Message held for review, try again later."
    refused = results[-1]
    assert (refused["action"], refused["account_locked"]) == ("reject", True)
    assert refused["smtp_reply"].startswith(
        "550 5.7.1 Account hijacked@example.net is locked: suspected compromise (incident "
    )
    for result in results:
        assert not NUMBER.search((result["smtp_reply"] or "")[10:]), result["smtp_reply"]  # after "550 5.7.1 "
    [why] = refused["reasons"]
    assert "automatically by outguard: enough evidence of spam to lock" in why["description"]
    assert "until " in why["description"]  # the first automatic lock is temporary


@pytest.fixture
def tuned_client(settings: Settings) -> Iterator[TestClient]:
    """Relay `trusted` asks for scores and words its own replies; relay `strict` rate-limits at once."""
    policies = {
        "trusted": {
            "reply_reveal_scores": True,
            "reply_hold": "Held by outguard ({reasons})",
            "reply_locked": "{account} locked: {lock_reason}",
        },
        "strict": {"rate_limit_risk": 0.01, "rate_limit_burst": 1, "rate_limit_per_minute": 0.1},
    }
    tuned = settings.model_copy(update={"relay_policies": policies})
    with TestClient(create_app(tuned)) as client:
        yield client


def test_a_relay_that_asks_for_scores_gets_them(tuned_client: TestClient) -> None:
    held = score(tuned_client, relay="trusted", sasl_username="mallory", recipients=["v@example.org"], raw=SPAM)
    assert held["action"] == "hold"
    assert held["smtp_reply"].startswith("451 4.7.1 Held by outguard (text_model_score")
    plain = score(tuned_client, relay="default", sasl_username="mallory", recipients=["v@example.org"], raw=SPAM)
    assert plain["smtp_reply"] == "451 4.7.1 Message held for review, try again later."
    lock(tuned_client, "carol", "phished on Monday", relay="trusted")
    locked = score(tuned_client, relay="trusted", sasl_username="carol", raw=make_raw())
    assert locked["smtp_reply"] == "550 5.7.1 carol locked: phished on Monday"


def test_an_account_over_its_allowance_is_told_to_slow_down(tuned_client: TestClient) -> None:
    first = score(tuned_client, message_id="<l0@x>", relay="strict", sasl_username="bulk@example.net", raw=SPAM)
    assert first["action"] == "hold"  # and the account is rate-limited from now on: one token, refilled slowly
    answers = [
        score(tuned_client, message_id=f"<l{i}@x>", relay="strict", sasl_username="bulk@example.net", raw=make_raw())
        for i in range(1, 4)
    ]
    deferred = [a for a in answers if a["action"] == "defer"]
    assert deferred, [a["action"] for a in answers]
    assert deferred[0]["smtp_reply"] == "451 4.7.1 Too many messages from bulk@example.net, try again later."


def test_templates_that_would_leak_scores_or_do_not_parse_are_refused() -> None:
    with pytest.raises(ValueError, match="reveals scores"):
        RelayPolicy(reply_reject="Refused (score {spam_probability})")
    with pytest.raises(ValueError, match="unknown placeholder"):
        RelayPolicy(reply_reject="Refused {message_id}")
    with pytest.raises(ValueError, match="unknown placeholder"):
        RelayPolicy(reply_reject="Refused {account!r}")
    with pytest.raises(ValueError, match="printable ASCII"):
        RelayPolicy(reply_defer="later\r\n250 OK")
    with pytest.raises(ValueError, match="relay_policies"):
        Settings(relay_policies={"r": {"reply_locked": "{lock_reason}"}})


def test_a_sender_controlled_name_cannot_break_the_reply_line() -> None:
    info = LockInfo("locked", "x", None, True, "0123abcd")
    reply = locked_reply("evil\r\n250 2.0.0 Ok\u00e9" + "a" * 500, info)
    assert "\r" not in reply.line and "\n" not in reply.line
    assert reply.line.isascii() and reply.line.isprintable()
    assert reply.line.startswith("550 5.7.1 Account evil??250 2.0.0 Ok?aaa")
    assert len(reply.text) <= 400
    assert virus_reply("Eicar-Signature").line == "550 5.7.1 Virus found: Eicar-Signature"
