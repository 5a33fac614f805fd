"""Templates, known spam and false locks through the API, with the shipped model.

A shop's own template sent to many customers is not a spam run; an established account that
changes what it sends is locked within a few messages; a near-copy of registered known spam is
held however it reads; an admin who calls a false lock clean (or unlocks with a reason) makes it
the last one; a new account needs behaviour besides its content to be locked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_raw
from tests.fingerprints.test_fingerprint import MINUTES
from tests.service.test_score_api import SPAM, SPRAYED
from tests.service.test_templates import DISTINCT_SPAM, order_confirmation
from training.mutations import mutate_text

pytestmark = pytest.mark.backends

ADMIN = {"actor": "abuse-desk", "reason": "checked with the customer: their own order mail"}
# Where a small shop's customers read their mail: a handful of providers.
PROVIDERS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "gmx.de", "web.de", "hotmail.com", "aol.com"]
# A B2B shop's customers: each at their own company's domain, enough to look like spraying.
COMPANIES = [f"buyer@company{n}.example" for n in range(60)]


def stamp(start: datetime, minutes: float) -> str:
    return (start + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def score(client: TestClient, account: str, message_id: str, raw: str, recipients: list[str], at: str) -> dict:
    body = {"message_id": message_id, "sasl_username": account, "recipients": recipients, "raw": raw, "timestamp": at}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def view(client: TestClient, account: str) -> dict:
    return client.get(f"/v1/accounts/default/{quote(account, safe='')}").json()


def test_a_shop_sending_its_template_40_times_3_minutes_apart_is_not_locked(client: TestClient) -> None:
    start = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    results = [
        score(
            client,
            "orders@brightwater",
            f"<order{n}@brightwater>",
            order_confirmation(n),
            [f"customer{n}@{PROVIDERS[n % len(PROVIDERS)]}"],
            stamp(start, 3 * n),
        )
        for n in range(40)
    ]
    # The shipped model calls the shop's order mail spam (each copy is held for a person) ...
    assert min(r["spam_probability"] for r in results) > 0.9
    # ... but the account is not a spam run: forty copies of one template are one piece of evidence.
    assert not any(r["lock_recommended"] or r["account_locked"] for r in results)
    assert max(r["account_risk"] for r in results) < 0.5  # not even rate-limited
    account = view(client, "orders@brightwater")
    assert account["status"] == "active"
    assert account["templates"]["remembered"] <= 2


def test_an_established_account_that_starts_sending_spam_to_its_contacts_is_locked(client: TestClient) -> None:
    start = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
    contacts = ["bob@example.org", "carol@example.com", "dave@example.net"]
    for n in range(12):  # two days of her own mail: the weekly minutes and notes to friends
        raw = make_raw(body=MINUTES) if n % 2 else make_raw(subject=f"Lunch on day {n}?")
        answer = score(client, "erin@example.net", f"<own{n}@x>", raw, [contacts[n % 3]], stamp(start, n * 240))
        assert not answer["lock_recommended"]
    hijack = start + timedelta(days=2)
    results = [
        score(client, "erin@example.net", f"<spam{n}@x>", SPAM, [contacts[n % 3]], stamp(hijack, n)) for n in range(6)
    ]
    locked_at = next(n for n, r in enumerate(results) if r["lock_recommended"])
    assert locked_at <= 3  # a change from her own baseline counts copy by copy: four messages at most
    assert results[locked_at + 1]["account_locked"]
    reason = next(h for h in view(client, "erin@example.net")["lock_history"] if h["action"] == "locked_temporary")
    assert "a template the account started sending within the last day" in reason["reason"]


def test_a_near_copy_of_registered_content_is_held_even_when_it_reads_as_ham(client: TestClient) -> None:
    at = "2026-11-02T10:00:00Z"
    before = score(client, "frank@example.net", "<before@x>", make_raw(body=MINUTES), ["a@example.org"], at)
    assert before["spam_probability"] < 0.5 and before["action"] == "accept"  # plain ham to the model
    added = client.post("/v1/signatures", json={"raw": make_raw(body=MINUTES), "actor": "abuse-desk"})
    assert added.status_code == 201, added.text
    copy = make_raw(body=mutate_text(MINUTES, np.random.default_rng(3)))
    held = score(client, "gina@example.net", "<copy@x>", copy, ["a@example.org"], "2026-11-02T10:05:00Z")
    assert held["spam_probability"] >= 0.99
    assert held["action"] == "hold"
    top = held["reasons"][0]
    assert top["name"] == "known_spam_signature" and top["value"] >= 0.6
    [signature_id] = added.json()["signature_ids"]
    assert f"known-spam signature {signature_id}" in top["description"] and "admin" in top["description"]


def test_known_spam_is_not_floored_for_an_account_that_has_it_as_known_good(client: TestClient) -> None:
    score(client, "hana@example.net", "<h1@x>", make_raw(body=MINUTES), ["a@example.org"], "2026-11-02T10:00:00Z")
    label = {"target": "account", "label": "clean", "relay": "default", "account": "hana@example.net", **ADMIN}
    assert client.post("/v1/labels", json=label).status_code == 201
    client.post("/v1/signatures", json={"raw": make_raw(body=MINUTES), "actor": "abuse-desk"})
    copy = make_raw(body=mutate_text(MINUTES, np.random.default_rng(4)))
    own = score(client, "hana@example.net", "<h2@x>", copy, ["a@example.org"], "2026-11-02T10:10:00Z")
    other = score(client, "ivan@example.net", "<i1@x>", copy, ["a@example.org"], "2026-11-02T10:10:00Z")
    # The model still sees the signature as a feature; only the floor is not applied to the account's own mail.
    assert own["spam_probability"] < 0.99 and own["action"] == "accept"
    assert all(r["name"] != "known_spam_signature" for r in own["reasons"])
    assert other["spam_probability"] >= 0.99 and other["action"] == "hold"


def _false_lock(client: TestClient, account: str) -> list[dict]:
    """A new B2B shop whose order mail the model calls spam, to buyers at many companies: locked."""
    start = datetime(2026, 11, 2, 20, 0, tzinfo=UTC)
    results = [
        score(client, account, f"<{account}-{n}@x>", order_confirmation(n), [COMPANIES[n]], stamp(start, 2 * n))
        for n in range(25)
    ]
    assert any(r["account_locked"] for r in results)
    assert client.get("/v1/signatures").json()["signatures"] == 1  # the lock taught its message as known spam
    return results


def _next_day(client: TestClient, account: str) -> list[dict]:
    start = datetime(2026, 11, 3, 9, 0, tzinfo=UTC)
    return [
        score(client, account, f"<{account}-next{n}@x>", order_confirmation(100 + n), [COMPANIES[n]], stamp(start, n))
        for n in range(25)
    ]


@pytest.mark.parametrize("admin", ["clean verdict", "unlock with a reason"])
def test_after_a_false_lock_the_admins_word_keeps_the_template_from_locking_again(
    client: TestClient, admin: str
) -> None:
    account = "orders@b2b-shop"
    _false_lock(client, account)
    if admin == "clean verdict":
        label = {"target": "account", "label": "clean", "relay": "default", "account": account, **ADMIN}
        response = client.post("/v1/labels", json=label)
        assert response.status_code == 201 and len(response.json()["signatures"]["removed"]) == 1
    else:
        response = client.post(f"/v1/accounts/default/{quote(account, safe='')}/unlock", json=ADMIN)
        assert response.status_code == 200
    # The lock's signature is gone, and the vouching is in the audit log with its template count.
    assert client.get("/v1/signatures").json()["signatures"] == 0
    account_view = view(client, account)
    [entry] = [h for h in account_view["lock_history"] if h["action"] == "unlocked"]
    assert entry["details"]["templates_known_good"] == account_view["templates"]["known_good"] >= 1
    assert len(entry["details"]["signatures_removed"]) == 1
    results = _next_day(client, account)
    assert not any(r["lock_recommended"] or r["account_locked"] for r in results)
    assert not any(r["reasons"] and r["reasons"][0]["name"] == "known_spam_signature" for r in results)
    assert view(client, account)["status"] == "active"


def test_the_admins_word_survives_a_restart(settings: Settings) -> None:
    account = "orders@b2b-shop"
    with TestClient(create_app(settings)) as client:
        _false_lock(client, account)
        label = {"target": "account", "label": "clean", "relay": "default", "account": account, **ADMIN}
        assert client.post("/v1/labels", json=label).status_code == 201
    with TestClient(create_app(settings)) as restarted:  # the known-good templates come back from the audit log
        assert view(restarted, account)["templates"]["known_good"] >= 1
        results = _next_day(restarted, account)
    assert not any(r["lock_recommended"] or r["account_locked"] for r in results)


def test_without_the_admins_word_the_same_mail_locks_it_again(client: TestClient) -> None:
    account = "orders@b2b-shop"
    _false_lock(client, account)
    results = _next_day(client, account)  # the temporary lock has expired; the lock's signature has not
    assert results[0]["reasons"][0]["name"] == "known_spam_signature"
    assert any(r["account_locked"] for r in results)


def test_a_new_account_sending_spam_like_mail_needs_corroboration_to_be_locked(client: TestClient) -> None:
    start = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

    def run(account: str, recipients: list[str], rounds: int = 2) -> list[dict]:
        return [
            score(client, account, f"<{account}-{n}@x>", raw, recipients, stamp(start, n))
            for n, raw in enumerate(DISTINCT_SPAM * rounds)
        ]

    # Five kinds of spam to one friend: the content alone says spam, nothing else does.
    quiet = run("quiet@example.net", ["friend@example.org"])
    assert not any(r["lock_recommended"] or r["account_locked"] for r in quiet)
    assert quiet[-1]["account_risk"] == 1.0  # the evidence is there and told, but not enough to lock a new account
    # The same mail to many domains: locked.
    sprayed = run("sprayer@example.net", SPRAYED)
    assert any(r["account_locked"] for r in sprayed)


def test_invalid_recipients_corroborate_a_new_accounts_spam(client: TestClient) -> None:
    recipients = [f"r{n}@list.example" for n in range(20)]
    first = score(client, "lister@example.net", "<l0@x>", SPAM, recipients, "2026-11-02T12:00:00Z")
    assert not first["lock_recommended"]
    bounces = [
        {"event_id": f"b{n}", "type": "bounce", "message_id": "<l0@x>", "recipient": r, "detail": {"status": "5.1.1"}}
        for n, r in enumerate(recipients[:6])
    ]
    assert client.post("/v1/feedback/batch", json={"events": bounces}).status_code == 200
    after = [
        score(client, "lister@example.net", f"<l{n}@x>", SPAM, recipients, f"2026-11-02T12:{n:02d}:00Z")
        for n in range(1, 5)
    ]
    assert any(r["lock_recommended"] for r in after)


def test_a_lock_on_mail_under_the_hold_threshold_teaches_no_known_spam(settings: Settings) -> None:
    """A lock is the model's belief, not a person's: content it would not even hold on its
    own must not become known spam that floors every other shop sending the same template."""
    unsure = settings.model_copy(update={"hold_threshold": 0.99999, "reject_threshold": 0.999999})
    with TestClient(create_app(unsure)) as client:
        start = datetime(2026, 11, 2, 20, 0, tzinfo=UTC)
        account = "orders@b2b-shop"
        results = [
            score(client, account, f"<{account}-{n}@x>", order_confirmation(n), [COMPANIES[n]], stamp(start, 2 * n))
            for n in range(25)
        ]
        locked_by = next(r for r in results if r["lock_recommended"])
        assert locked_by["spam_probability"] < unsure.hold_threshold
        assert any(r["account_locked"] for r in results)
        assert client.get("/v1/signatures").json()["signatures"] == 0
