"""A sender cannot pass its mail off as another account's: the SASL login outranks every header it can write.

The hostile case of issue 16: with the default rules, spam from the SASL user `spammer`
carrying `X-AuthUser: victim@...` (or a forged `Received: ... (Authenticated sender:
victim@...)`) locked the victim after four messages while the spammer stayed at risk 0.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from urllib.parse import quote

import orjson
import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service.stores import ScoredEvent
from service.stores.database import Database, normalise_url
from service.stores.events import INSERT, event_row, read_scored
from service.stores.retention import run_maintenance
from service.stores.rules import SqlIdentityRules
from service.stores.schema import alembic_config, head_revision, upgrade
from tests.conftest import make_raw, postgres_schema
from tests.service.test_score_api import SPAM

pytestmark = pytest.mark.backends

VICTIM = "victim@example.net"
FORGED_RECEIVED = (
    "Received: from [10.0.0.7] (unknown [198.51.100.99])\r\n\t(Authenticated sender: victim@example.net)\r\n"
    "\tby smtp.example.net (Postfix) with ESMTPSA id 4Xk2F21Bz9z9sWq\r\n\tfor <someone@example.org>; "
    "Mon, 23 Nov 2026 09:59:00 +0100 (CET)"
)
SPOOFS = {
    "x-authuser": ("X-AuthUser: victim@example.net", "x-authuser", "X-AuthUser"),
    "received": (FORGED_RECEIVED, "received-authenticated-sender", "Received"),
}
# A few recipients at one domain: nothing in the spammer's behaviour corroborates its spam.
FEW = ["a@customer.example", "b@customer.example"]
REPLY = make_raw(
    subject="Re: contract review",
    body="Sounds good, I will bring the printed contract and the signed NDA on Tuesday.\n\n"
    "> Could we meet at the office on Tuesday to go through the contract?\n",
)


def with_header(raw: str, header: str) -> str:
    return raw.replace("MIME-Version", header + "\r\nMIME-Version", 1) if header else raw


def score(client: TestClient, message_id: str, raw: str, **fields: object) -> dict:
    response = client.post("/v1/score", json={"message_id": message_id, "recipients": FEW, "raw": raw, **fields})
    assert response.status_code == 200, response.text
    return response.json()


def account_view(client: TestClient, account: str, relay: str = "default") -> dict:
    return client.get(f"/v1/accounts/{relay}/{quote(account, safe='')}").json()


def incident(client: TestClient, account: str, form: str = "json"):
    return client.get(f"/v1/accounts/default/{quote(account, safe='')}/incident", params={"format": form})


def spoofed_run(client: TestClient, header: str, sasl: str = "spammer", n: int = 6) -> list[dict]:
    raw = with_header(SPAM, header)
    return [score(client, f"<{sasl}-{i}@x>", raw, sasl_username=sasl) for i in range(n)]


@pytest.mark.parametrize("spoof", sorted(SPOOFS))
def test_a_spoofed_header_locks_the_sasl_user_and_leaves_the_account_it_names_alone(
    client: TestClient, spoof: str
) -> None:
    header, rule, header_name = SPOOFS[spoof]
    for i in range(2):  # the victim's own mail, before
        score(client, f"<victim-{i}@x>", REPLY, sasl_username=VICTIM)
    victim_before = account_view(client, VICTIM)

    results = spoofed_run(client, header)

    assert {(r["account"], r["identity_source"]) for r in results} == {("spammer", "sasl")}
    conflict = {"rule": rule, "header": header_name, "claimed": VICTIM}
    assert all(r["identity_conflict"] == conflict for r in results)
    locked_at = next(i for i, r in enumerate(results) if r["lock_recommended"])
    assert locked_at <= 4  # about as fast as the victim was locked before the fix
    assert results[-1]["account_locked"] is True
    spammer = account_view(client, "spammer")
    assert (spammer["status"], spammer["account_risk"]) == ("locked_temporary", 1.0)
    [lock] = [h for h in spammer["lock_history"] if h["action"] == "locked_temporary"]
    assert f"a {header_name} header naming another account than its SASL login" in lock["reason"]
    victim = account_view(client, VICTIM)
    for field in ("status", "account_risk", "evidence_nats", "messages_scored", "automatic_locks"):
        assert victim[field] == victim_before[field], field
    assert victim["status"] == "active" and victim["lock_history"] == []
    assert {s["message_id"] for s in victim["recent_scores"]} == {"<victim-0@x>", "<victim-1@x>"}
    assert "someone@example.org" not in str(results)  # the forged line's recipient is not echoed


def test_without_the_conflict_the_same_spam_from_a_new_login_is_not_locked(client: TestClient) -> None:
    """The conflict is what corroborated the lock above: a new account is never locked on content alone."""
    plain = spoofed_run(client, "", sasl="newcomer")
    assert {r["identity_conflict"] for r in plain} == {None}
    assert not any(r["lock_recommended"] for r in plain)
    # Uncorroborated, six copies of one spam are one piece of evidence (service.decision), not six.
    assert plain[-1]["account_risk"] == plain[0]["account_risk"] < 0.5
    # A relay that writes X-AuthUser with the user who logged in is no conflict, and corroborates nothing.
    same = spoofed_run(client, "X-AuthUser: Relayed@Example.net", sasl="relayed@example.net")
    assert {(r["account"], r["identity_conflict"]) for r in same} == {("relayed@example.net", None)}
    assert not any(r["lock_recommended"] for r in same)


def test_a_conflict_adds_no_risk_to_mail_that_scores_as_ham(client: TestClient) -> None:
    """Mail relayed from another server carries that server's headers: the disagreement alone costs nothing."""
    forwarded = [
        score(client, f"<fwd-{i}@x>", with_header(REPLY, FORGED_RECEIVED), sasl_username="list-server")
        for i in range(5)
    ]
    own = [score(client, f"<own-{i}@x>", REPLY, sasl_username="mailbox") for i in range(5)]
    assert all(f["identity_conflict"] is not None for f in forwarded)
    assert [(f["action"], f["account_risk"]) for f in forwarded] == [(o["action"], o["account_risk"]) for o in own]
    assert account_view(client, "list-server")["evidence_nats"] == account_view(client, "mailbox")["evidence_nats"]


def test_the_incident_report_says_whose_name_the_login_used(client: TestClient) -> None:
    spoofed_run(client, FORGED_RECEIVED)
    report = incident(client, "spammer").json()
    conflicts = report["what_was_seen"]["identity_conflicts"]
    assert conflicts["messages"] == 6  # refused while locked, still logged with it
    assert 1 <= conflicts["spam_scored"] <= 6
    assert conflicts["named"] == [{"header": "Received", "claimed": VICTIM, "messages": 6}]
    assert (
        "named another account than the login that sent them (Received: `victim@example.net`)"
        in (report["evidence_strength_reason"])
    )
    assert any("The account named was not charged" in step for step in report["what_to_do_next"])
    markdown = incident(client, "spammer", "markdown").text
    assert "carried a header naming another account than the SASL login" in markdown
    assert "Received named `victim@example.net` (6)" in markdown
    html = incident(client, "spammer", "html").text
    assert "Received named <code>victim@example.net</code> (6)" in html
    for text_form in (str(report), markdown, html):
        assert "someone@example.org" not in text_form
    # The victim's report shows nothing of the spammer's mail.
    assert incident(client, VICTIM).json()["what_was_seen"]["messages"] == 0


def test_an_account_without_conflicts_reports_none(client: TestClient) -> None:
    score(client, "<plain@x>", REPLY, sasl_username="plain")
    assert incident(client, "plain").json()["what_was_seen"]["identity_conflicts"] is None
    assert "header naming another account" not in incident(client, "plain", "markdown").text


def test_a_trusted_rule_still_names_the_account(client: TestClient, settings) -> None:
    """A relay that writes X-AuthUser itself, and strips the client's, vouches for it: it outranks the SASL user."""
    from service.app import create_app

    rules = {
        "rules": [{"name": "relay-user", "header": "X-AuthUser", "trusted": True, "strip": True}],
        "actor": "ops@example.net",
    }
    saved = client.put("/v1/identity-rules/submission", json=rules)
    assert saved.status_code == 200
    assert saved.json()["rules"][0]["trusted"] is True
    raw = with_header(SPAM, "X-AuthUser: shop-17")
    results = [score(client, f"<t{i}@x>", raw, relay="submission", sasl_username="alice") for i in range(6)]
    assert {(r["account"], r["identity_source"]) for r in results} == {("shop-17", "rule:relay-user")}
    assert {r["identity_conflict"] for r in results} == {None}  # the relay's own mapping
    assert results[0]["strip_headers"] == ["X-AuthUser"]
    assert account_view(client, "alice", "submission")["messages_scored"] == 0
    # Without that header the login names the account; the rule's trust survives a restart.
    assert score(client, "<t-plain@x>", SPAM, relay="submission", sasl_username="alice")["account"] == "alice"
    with TestClient(create_app(settings)) as restarted:
        [rule] = restarted.get("/v1/identity-rules/submission").json()["rules"]
    assert (rule["trusted"], rule["identifies"], rule["strip"]) == (True, "login", True)


def test_batch_answers_carry_the_conflict(client: TestClient) -> None:
    messages = [
        {"message_id": "<b1@x>", "sasl_username": "u", "raw": with_header(REPLY, "X-AuthUser: other")},
        {"message_id": "<b2@x>", "sasl_username": "u", "raw": REPLY},
    ]
    results = client.post("/v1/score/batch", json={"messages": messages}).json()["results"]
    assert [r["identity_conflict"] for r in results] == [
        {"rule": "x-authuser", "header": "X-AuthUser", "claimed": "other"},
        None,
    ]


# -- The migration: rules saved before `trusted` existed, on SQLite and PostgreSQL


@pytest.fixture
def database_url(backend: str, tmp_path: Path):
    if backend == "postgresql+redis":
        pytest.skip("the same database as postgresql")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'm.db'}"
        engine = create_engine(normalise_url(url))
        upgrade(engine)
        engine.dispose()
        yield url
    else:
        with postgres_schema() as url:
            yield url


def _migrate(url: str, direction: str, revision: str) -> None:
    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as connection:
            getattr(command, direction)(alembic_config(connection), revision)
    finally:
        engine.dispose()


def _query(url: str, sql: str, params: dict | None = None) -> list[tuple]:
    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as connection:
            result = connection.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def _columns(url: str) -> set[str]:
    from sqlalchemy import inspect

    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as connection:
            return {c["name"] for c in inspect(connection).get_columns("scored_messages")}
    finally:
        engine.dispose()


def test_the_migration_writes_out_trust_and_back(database_url: str) -> None:
    assert head_revision() == "0004"
    now = time.time()
    database = Database(database_url)
    try:  # on PostgreSQL: today's partition exists before the column is added
        asyncio.run(run_maintenance(database, retention_days=30, now=now))
    finally:
        database.close()
    _migrate(database_url, "downgrade", "0001")
    assert "identity_conflict" not in _columns(database_url)
    old = [
        {"name": "panel", "header": "X-Panel-User", "pattern": None, "strip": True},
        {"name": "script", "header": "x-php-originating-script", "pattern": "^([^(]+)", "strip": False},
    ]
    _query(
        database_url,
        "INSERT INTO identity_rules (relay, rules, actor, updated_at) VALUES ('r', :rules, 'ops', 1)",
        {"rules": orjson.dumps(old).decode()},
    )

    _migrate(database_url, "upgrade", "head")
    assert "identity_conflict" in _columns(database_url)
    [(stored,)] = _query(database_url, "SELECT rules FROM identity_rules WHERE relay = 'r'")
    assert [(r["name"], r["trusted"], r["identifies"], r["strip"]) for r in orjson.loads(stored)] == [
        ("panel", False, "login", True),  # nobody said the relay vouches for it
        ("script", False, "script", False),
    ]
    # The service loads what the migration wrote, and logs conflicts into the new column (today's partition).
    database = Database(database_url)
    try:
        rules = SqlIdentityRules(database).rules_for("r")
        assert [(r.name, r.trusted, r.identifies) for r in rules] == [
            ("panel", False, "login"),
            ("script", False, "script"),
        ]
        event = ScoredEvent(now, "r", "a", "sasl", "<c@x>", "v", "s", None, None, 0.0, "reject", False)
        event.identity_conflict = '{"rule":"x","header":"X-A","claimed":"b"}'
        database.writer.append_nowait(INSERT, event_row(event))
        asyncio.run(database.writer.flush())
    finally:
        database.close()
    [logged] = [e for e in read_scored(database_url) if e["message_id"] == "<c@x>"]
    assert orjson.loads(logged["identity_conflict"]) == {"rule": "x", "header": "X-A", "claimed": "b"}

    _migrate(database_url, "downgrade", "0001")
    [(stored,)] = _query(database_url, "SELECT rules FROM identity_rules WHERE relay = 'r'")
    assert orjson.loads(stored) == old  # what the previous release can load
    assert "identity_conflict" not in _columns(database_url)
    _migrate(database_url, "upgrade", "head")
