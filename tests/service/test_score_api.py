"""POST /v1/score and /v1/score/batch, as a relay uses them."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from features.spec import FEATURE_INDEX, FEATURE_NAMES
from service.stores.events import read_scored
from tests.conftest import make_raw, run_sql

pytestmark = pytest.mark.backends

SPAM = make_raw(
    subject="URGENT: Claim your $5,000,000 prize NOW!!!",
    body=(
        "Dear Winner,\n\nCONGRATULATIONS!!! You have WON $5,000,000 in our international lottery. "
        "To claim your prize send your bank details and a processing fee of $450 to our agent today. "
        "Click here http://192.0.2.44/claim?id=1 or http://bit.ly/claim-now to get your money. "
        "100% guaranteed, risk free, act now, limited time offer!!!\n\nMr. James Williams\nClaims Department\n"
    ),
    sender="Lottery Board <winner-notification@lotto-intl.example>",
    to="undisclosed-recipients:;",
)


def score(client: TestClient, **fields: object) -> dict:
    response = client.post("/v1/score", json={"message_id": "<m1@example.net>", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def test_a_personal_message_is_accepted(client: TestClient) -> None:
    result = score(client, sasl_username="alice@example.net", recipients=["bob@example.org"], raw=make_raw())
    assert result["action"] == "accept"
    assert result["spam_probability"] < client.app.state.container.settings.hold_threshold
    assert result["account"] == "alice@example.net"
    assert result["identity_source"] == "sasl"
    assert result["account_locked"] is False
    assert result["model_version"].startswith("corpus-")


def test_lottery_spam_scores_high_with_reasons(client: TestClient) -> None:
    result = score(client, sasl_username="mallory", recipients=["v@example.org"], raw=SPAM)
    assert result["spam_probability"] > 0.99
    assert result["action"] == "hold"  # one message from a clean account is held, not bounced
    assert 1 <= len(result["reasons"]) <= 5
    top = result["reasons"][0]
    assert set(top) == {"name", "value", "contribution", "description"}
    magnitudes = [abs(r["contribution"]) for r in result["reasons"]]
    assert magnitudes == sorted(magnitudes, reverse=True)


def test_structured_content_scores_like_the_same_raw_message(client: TestClient) -> None:
    headers = [
        ["From", "Alice Example <alice@example.net>"],
        ["To", "bob@example.org"],
        ["Date", "Mon, 23 Nov 2026 10:00:00 +0000"],
        ["Message-ID", "<abc123@example.net>"],
        ["MIME-Version", "1.0"],
        ["Content-Type", "text/plain; charset=utf-8"],
    ]
    body = "Hi Bob,\n\nAre we still on for lunch tomorrow at one?\n\nCheers,\nAlice\n"
    structured = score(client, account="a1", subject="Lunch tomorrow?", text=body, headers=headers)
    raw = score(client, account="a2", raw=make_raw())
    assert structured["account"] == "a1"
    assert structured["spam_probability"] == pytest.approx(raw["spam_probability"], abs=1e-9)


def test_a_locked_account_is_rejected_without_running_the_model(client: TestClient) -> None:
    from service.stores import AccountKey, AccountState, AccountStatus

    accounts = client.app.state.container.accounts
    locked = AccountState(status=AccountStatus.LOCKED, lock_reason="admin")
    client.portal.call(accounts.put, AccountKey("default", "locked-user"), locked)
    result = score(client, sasl_username="locked-user", raw=make_raw())
    assert result["action"] == "reject"
    assert result["account_locked"] is True
    assert result["spam_probability"] is None
    [why] = result["reasons"]  # why it is locked, not the model's reasons (it did not run)
    assert why["name"] == "account_locked"
    assert "locked permanently, by an administrator: admin" in why["description"]
    assert result["smtp_reply"].startswith("550 5.7.1 Account locked-user is locked: locked by an administrator")


def test_the_null_sender_is_nobodys_account(client: TestClient) -> None:
    result = score(client, envelope_from="<>", client_ip="192.0.2.9", text="Delivery failed")
    assert (result["account"], result["identity_source"]) == ("192.0.2.9", "client_ip")


def test_account_falls_back_to_envelope_sender_then_client_ip(client: TestClient) -> None:
    assert score(client, envelope_from="<Bob@Example.ORG>", text="hi")["account"] == "bob@example.org"
    assert score(client, client_ip="203.0.113.9", text="hi")["identity_source"] == "client_ip"


# A hijacked mailbox sprays: recipients at many domains corroborate what its content says
# (a new account is never locked on content alone, see service.decision).
SPRAYED = [f"v{n}@domain{n}.example" for n in range(25)]


def test_a_run_of_spam_locks_the_account_and_only_that_account(client: TestClient) -> None:
    results = [
        score(client, message_id=f"<s{i}@x>", sasl_username="hijacked", recipients=SPRAYED, raw=SPAM) for i in range(5)
    ]
    risks = [r["account_risk"] for r in results]
    assert risks == sorted(risks)
    assert risks[0] < 1.0 == risks[-1]
    assert results[0]["action"] == "hold"  # one message from a clean account is held, not bounced
    locked_at = next(i for i, r in enumerate(results) if r["lock_recommended"])
    assert 1 <= locked_at <= 3  # a handful of messages
    after = results[locked_at + 1]
    assert (after["action"], after["account_locked"], after["spam_probability"]) == ("reject", True, None)
    # Another account on the same relay is judged on its own messages.
    innocent = score(client, sasl_username="innocent", raw=make_raw())
    assert innocent["account_risk"] < risks[0]
    assert not innocent["lock_recommended"]
    assert innocent["action"] == "accept"


def test_ham_pulls_account_evidence_back_down(client: TestClient) -> None:
    spam = score(client, message_id="<s@x>", sasl_username="mixed", raw=SPAM)["account_risk"]
    reply = make_raw(
        subject="Re: contract review",
        body="Sounds good, I will bring the printed contract and the signed NDA on Tuesday.\n\n"
        "> Could we meet at the office on Tuesday to go through the contract?\n",
    )
    after = [score(client, message_id=f"<h{i}@x>", sasl_username="mixed", raw=reply)["account_risk"] for i in range(3)]
    assert after[-1] < spam


def test_batch_answers_in_order(client: TestClient) -> None:
    messages = [
        {"message_id": "<a@x>", "sasl_username": "u1", "raw": make_raw()},
        {"message_id": "<b@x>", "sasl_username": "u2", "raw": SPAM},
        {"message_id": "<c@x>", "sasl_username": "u3", "text": "see you soon"},
    ]
    response = client.post("/v1/score/batch", json={"messages": messages})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["message_id"] for r in results] == ["<a@x>", "<b@x>", "<c@x>"]
    assert results[1]["spam_probability"] > results[0]["spam_probability"]
    # The batch path gives the same score as the single path.
    single = score(client, message_id="<b2@x>", sasl_username="u9", raw=SPAM)
    assert abs(single["spam_probability"] - results[1]["spam_probability"]) < 1e-9


def test_scored_messages_are_logged_with_features_and_hashed_recipients(client: TestClient, settings) -> None:
    score(client, message_id="<logged@x>", sasl_username="alice", recipients=["Bob@Example.org"], raw=make_raw())
    asyncio.run(client.app.state.container.events.flush())
    [event] = [e for e in read_scored(settings.database_url) if e["message_id"] == "<logged@x>"]
    assert event["account"] == "alice" and event["relay"] == "default"
    assert len(event["features"]) == len(FEATURE_NAMES)
    assert event["recipients_hashed"] and "bob" not in event["recipients_hashed"][0].lower()
    assert event["model_version"] == client.app.state.container.model.current.version
    if settings.database_url.startswith("sqlite"):  # the database's files themselves: the db and its WAL
        stored = b"".join(p.read_bytes() for p in settings.sqlite_path.parent.glob(settings.sqlite_path.name + "*"))
    else:  # every stored row, every column, as PostgreSQL prints it
        stored = "\n".join(
            r[0] for r in run_sql(settings.database_url, "SELECT s::text FROM scored_messages s")
        ).encode()
    assert b"<logged@x>" in stored  # the search below reads where the rows really are
    assert b"bob@example.org" not in stored.lower()
    assert b"are we still on for lunch" not in stored.lower()


def test_timestamps_drive_the_windows(client: TestClient) -> None:
    base = {"sasl_username": "timed", "text": "hello", "recipients": ["a@b.org"]}
    score(client, message_id="<t1@x>", timestamp="2026-01-01T00:00:00Z", **base)
    score(client, message_id="<t2@x>", timestamp="2026-01-01T00:00:30+00:00", **base)
    asyncio.run(client.app.state.container.events.flush())
    events = [e for e in read_scored(client.app.state.container.settings.database_url) if e["account"] == "timed"]
    assert events[1]["ts"] - events[0]["ts"] == 30
    assert events[1]["features"][FEATURE_INDEX["acct_msgs_1m"]] == 2


def test_the_cpu_work_of_a_batch_or_a_big_message_runs_off_the_event_loop(client: TestClient) -> None:
    """Parsing, features and the model of a batch run in the CPU worker thread, so the loop answers meanwhile.

    The latency `/healthz` keeps while a batch of 1,000 is scored is measured by
    `python -m bench.run` (docs/benchmarks.md), not here: no timed tests.
    """
    cpu = client.app.state.container.scorer.cpu
    offloaded, inline = cpu.offloaded, cpu.inline
    score(client, sasl_username="carol", recipients=["d@example.org"], raw=make_raw())
    assert (cpu.offloaded, cpu.inline) == (offloaded, inline + 2)  # one small message: content and model inline

    batch = [
        {"message_id": f"<cpu{i}@example.net>", "sasl_username": "carol", "recipients": ["d@example.org"]}
        | {"raw": make_raw(body=f"Message {i} of the batch.")}
        for i in range(3)
    ]
    response = client.post("/v1/score/batch", json={"messages": batch})
    assert response.status_code == 200, response.text
    assert cpu.offloaded == offloaded + 2  # the batch's content features, then its model call
    assert cpu.ran_in is not None and cpu.ran_in.startswith("outguard-cpu")
    assert cpu.handed_over_from != cpu.ran_in

    big = make_raw(body="A long letter. " * 6_000)  # 90 KB: over the inline limit
    score(client, sasl_username="carol", recipients=["d@example.org"], raw=big)
    assert cpu.offloaded == offloaded + 3 and cpu.ran_in.startswith("outguard-cpu")


def test_a_body_orjson_refuses_is_parsed_as_before(client: TestClient) -> None:
    """Bodies are parsed by orjson; a lone surrogate escape (what `json.dumps` writes for a bad byte) still passes."""
    body = '{"message_id": "<s@example.net>", "sasl_username": "erin", "raw": "Subject: caf\\udce9\\r\\n\\r\\nHello"}'
    response = client.post("/v1/score", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert client.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"}).status_code in (
        400,
        422,
    )
