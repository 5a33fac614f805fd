"""The milter served by the app, over real sockets: an MTA's side of the protocol drives it.

`MilterClient` sends what Postfix sends (tests/adapters/test_postfix_milter.py runs the
real Postfix); here the cases a live MTA makes hard to reach: an older MTA's smaller
offer, limits, timeouts, a rate-limited account, a peer not allowed in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.adapters import milter_codec as codec
from service.adapters.milter import MilterServer
from service.adapters.milter_client import MilterClient
from service.app import create_app
from service.settings import PROJECT_ROOT, Settings
from service.stores import AccountKey, AccountState, AccountStatus
from tests.conftest import DATA_DIR, make_raw
from tests.service.test_score_api import SPAM


@contextmanager
def app(tmp_path: Path, **overrides: Any) -> Iterator[tuple[TestClient, int]]:
    settings = Settings(
        state_dir=tmp_path / "state",
        database_url=f"sqlite:///{tmp_path / 'outguard.db'}",
        cache_dir=PROJECT_ROOT / ".cache",
        data_dir=DATA_DIR,
        milter_listen="127.0.0.1:0",
        **overrides,
    )
    with TestClient(create_app(settings)) as client:
        [milter] = [s for s in client.app.state.listeners if isinstance(s, MilterServer)]  # type: ignore[attr-defined]
        yield client, milter.port


def drive(port: int, script: Callable[[MilterClient], Awaitable[Any]], **negotiate: int) -> Any:
    async def run() -> Any:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = MilterClient(reader, writer)
        await client.negotiate(**negotiate)
        try:
            return await script(client)
        finally:
            await client.close()

    return asyncio.run(run())


def session(raw: str, user: str | None = "alice@example.net", recipients: tuple[str, ...] = ("bob@example.org",)):
    async def script(client: MilterClient) -> tuple[str, Any]:
        await client.connect("192.0.2.7", {"j": "relay.example.net", "{daemon_name}": "relay.example.net"})
        await client.helo("client.example.net")
        return await client.send(raw.encode(), sender="alice@example.net", recipients=list(recipients), user=user)

    return script


def metric(client: TestClient, prefix: str) -> float:
    lines = [line for line in client.get("/metrics").text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, int]]:
    policies = {"open": {"reply_reveal_scores": True}}
    with app(tmp_path_factory.mktemp("milter"), relay_policies=policies) as served:
        yield served


def test_postfix_negotiation_gets_the_actions_and_steps_it_offered(served: tuple[TestClient, int]) -> None:
    client = drive(served[1], lambda c: asyncio.sleep(0, c))
    offered = client.negotiated
    assert offered.version == 6
    assert offered.actions == codec.F_ADDHDRS | codec.F_CHGHDRS | codec.F_QUARANTINE | codec.F_SETSYMLIST
    assert offered.protocol & codec.P_NR_HDR and offered.protocol & codec.P_NODATA
    assert not offered.protocol & (codec.P_NOMAIL | codec.P_NORCPT | codec.P_NOBODY | codec.P_NR_MAIL)
    assert client.macro_lists[codec.M_ENVFROM].split() == ["i", "{auth_authen}", "{client_addr}", "{daemon_name}"]


def test_ham_is_accepted_and_spam_is_quarantined(served: tuple[TestClient, int]) -> None:
    stage, answer = drive(served[1], session(make_raw()))
    assert (stage, answer.kind, answer.edits) == ("eom", "continue", [])
    stage, answer = drive(served[1], session(SPAM, user="frank@example.net"))
    assert (stage, answer.kind) == ("eom", "continue")
    assert answer.quarantined == "Message held for review, try again later."


def test_an_mta_that_cannot_quarantine_gets_a_tempfail_for_hold(served: tuple[TestClient, int]) -> None:
    # Sendmail 8.13's offer: protocol 2, actions up to QUARANTINE... minus it; no step may go unanswered.
    stage, answer = drive(served[1], session(SPAM, user="grace@example.net"), actions=0x1F, protocol=0x7F)
    assert (stage, answer.kind, answer.text) == ("eom", "reply", "451 4.7.1 Message held for review, try again later.")


def test_a_locked_account_is_refused_at_mail_from_before_any_content(served: tuple[TestClient, int]) -> None:
    client, port = served
    response = client.post(
        "/v1/accounts/default/heidi%40example.net/lock", json={"actor": "ops", "reason": "phished", "force": True}
    )
    assert response.status_code == 200
    before = metric(client, 'outguard_adapter_requests_total{protocol="milter",stage="eom"}')
    stage, answer = drive(port, session(make_raw(), user="heidi@example.net"))
    assert stage == "mail"
    assert answer.text.startswith("550 5.7.1 Account heidi@example.net is locked: locked by an administrator")
    assert metric(client, 'outguard_adapter_requests_total{protocol="milter",stage="eom"}') == before
    assert metric(client, 'outguard_adapter_answers_total{action="locked",protocol="milter"}') >= 1


def test_an_account_over_its_allowance_gets_451_at_rcpt(served: tuple[TestClient, int]) -> None:
    client, port = served
    container = client.app.state.container  # type: ignore[attr-defined]
    limited = AccountState(status=AccountStatus.RATE_LIMITED, evidence=1.0, tokens=0.0, tokens_at=time.time())
    client.portal.call(container.accounts.put, AccountKey("default", "ivan@example.net"), limited)  # type: ignore[union-attr]
    stage, answer = drive(port, session(make_raw(), user="ivan@example.net"))
    assert (stage, answer.text) == ("rcpt", "451 4.7.1 Too many messages from ivan@example.net, try again later.")
    # With a token in the bucket, the message goes through to be scored (and takes it).
    client.portal.call(  # type: ignore[union-attr]
        container.accounts.put,
        AccountKey("default", "ivan@example.net"),
        AccountState(status=AccountStatus.RATE_LIMITED, tokens=5.0, tokens_at=time.time()),
    )
    assert drive(port, session(make_raw(), user="ivan@example.net"))[0] == "eom"


def test_a_relay_that_asks_for_scores_gets_a_header(served: tuple[TestClient, int]) -> None:
    async def script(client: MilterClient) -> tuple[str, Any]:
        await client.connect("192.0.2.7", {"j": "relay.example.net", "{daemon_name}": "open"})
        return await client.send(make_raw().encode(), sender="judy@example.net", recipients=["bob@example.org"])

    _, answer = drive(served[1], script)
    [(name, value)] = answer.added_headers
    assert name == "X-Outguard"
    assert value.startswith("accept; spam probability 0.")


def test_several_messages_and_an_abort_on_one_connection(served: tuple[TestClient, int]) -> None:
    async def script(client: MilterClient) -> list[str]:
        await client.connect("2001:db8::7", {"j": "relay.example.net"})
        kinds = []
        for n in range(3):
            raw = make_raw().replace("abc123", f"multi{n}")
            kinds.append(
                (await client.send(raw.encode(), sender="ken@example.net", recipients=["b@example.org"]))[1].kind
            )
            await client.mail("ken@example.net")
            await client.abort()  # RSET after MAIL: nothing of it leaks into the next message
        return kinds

    assert drive(served[1], script) == ["continue"] * 3


def test_garbage_closes_the_connection_and_is_counted(served: tuple[TestClient, int]) -> None:
    client, port = served
    before = metric(client, 'outguard_adapter_errors_total{kind="protocol",protocol="milter"}')

    async def garbage() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\xff\xff\xff\xffO")  # a 4 GB packet
        await writer.drain()
        data = await reader.read()
        writer.close()
        return data

    assert asyncio.run(garbage()) == b""
    assert metric(client, 'outguard_adapter_errors_total{kind="protocol",protocol="milter"}') == before + 1
    assert client.get("/healthz").status_code == 200


def test_a_message_over_the_size_limit_is_scored_on_what_was_kept(tmp_path: Path) -> None:
    big = make_raw(body="Hello Bob, the minutes of today's meeting follow.\n" + "lorem ipsum dolor sit amet\n" * 5_000)
    with app(tmp_path, max_raw_bytes=4096) as (client, port):
        stage, answer = drive(port, session(big))
        assert (stage, answer.kind) == ("eom", "continue")
        assert metric(client, 'outguard_adapter_errors_total{kind="oversize",protocol="milter"}') == 1
        assert metric(client, 'outguard_adapter_answers_total{action="accept",protocol="milter"}') == 1


def test_a_message_over_the_size_limit_can_be_tempfailed_instead(tmp_path: Path) -> None:
    big = make_raw(body="x" * 70_000)
    with app(tmp_path, max_raw_bytes=4096, milter_oversize="tempfail") as (_, port):
        stage, answer = drive(port, session(big))
        assert (stage, answer.text) == ("eom", "451 4.7.1 Message deferred, try again later.")


def test_scoring_too_slow_leaves_the_answer_to_the_mta_but_still_counts(tmp_path: Path) -> None:
    with app(tmp_path, milter_score_timeout_s=1e-9) as (client, port):
        with pytest.raises(asyncio.IncompleteReadError):  # no answer: Postfix applies milter_default_action
            drive(port, session(make_raw()))
        assert metric(client, 'outguard_adapter_errors_total{kind="timeout",protocol="milter"}') == 1
        for _ in range(100):  # scored all the same, answered too late
            if client.get("/v1/accounts/default/alice%40example.net").json()["messages_scored"] == 1:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the message that timed out was never scored")


def test_scoring_too_slow_can_tempfail_or_accept(tmp_path: Path) -> None:
    with app(tmp_path, milter_score_timeout_s=1e-9, milter_error_action="tempfail") as (_, port):
        assert drive(port, session(make_raw()))[1].text == "451 4.7.1 Message deferred, try again later."


def test_only_allowed_networks_may_connect(tmp_path: Path) -> None:
    with app(tmp_path, milter_allowed_clients=["10.0.0.0/8"]) as (client, port):
        with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
            drive(port, lambda c: asyncio.sleep(0))
        assert metric(client, 'outguard_adapter_errors_total{kind="forbidden",protocol="milter"}') == 1


def test_quit_with_a_new_connection_starts_the_next_session_on_the_same_socket(served: tuple[TestClient, int]) -> None:
    async def script(client: MilterClient) -> list[str]:
        kinds = []
        for n, ip in enumerate(("IPv6:2001:db8::9", "192.0.2.9")):  # Sendmail writes IPv6 with its tag
            await client.connect(ip, {"j": "relay.example.net"})
            raw = make_raw().replace("abc123", f"nc{n}")
            kinds.append(
                (await client.send(raw.encode(), sender="leo@example.net", recipients=["b@example.org"]))[1].kind
            )
            client.writer.write(codec.encode(codec.QUIT_NC))
        return kinds

    client, port = served
    assert drive(port, script) == ["continue", "continue"]
    recent = client.get("/v1/accounts/default/leo%40example.net").json()["recent_scores"]
    assert sorted(r["client_ip"] for r in recent) == ["192.0.2.9", "2001:db8::9"]
