"""The Postfix policy gate (`OUTGUARD_POLICY_LISTEN`) over a real socket, as Postfix's policy client speaks it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from tests.conftest import make_raw
from tests.service.test_score_api import SPAM

POLICIES = {
    # Rate-limited at the first spam-scored message, with a bucket of three that barely refills.
    "roomy": {
        "rate_limit_risk": 0.01,
        "rate_limit_burst": 3,
        "rate_limit_per_minute": 0.01,
        "rate_limit_min_per_minute": 0.01,
        "auto_lock": False,
    },
}


def gate_client(settings: Settings, **overrides: object) -> TestClient:
    tuned = settings.model_copy(
        update={"policy_listen": "127.0.0.1:0", "relay_policies": POLICIES, "policy_relay": "default", **overrides}
    )
    return TestClient(create_app(tuned))


@pytest.fixture
def gate(settings: Settings) -> Iterator[tuple[TestClient, int]]:
    with gate_client(settings) as client:
        [listener] = client.app.state.listeners
        yield client, listener.port


class Postfix:
    """One policy connection, reused for request after request."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.stream = self.socket.makefile("rb")

    def ask(self, **attributes: str | int) -> str:
        request = {"request": "smtpd_access_policy", "protocol_name": "ESMTP", **attributes}
        self.socket.sendall("".join(f"{k}={v}\n" for k, v in request.items()).encode() + b"\n")
        return self.answer()

    def answer(self) -> str:
        line = self.stream.readline().decode()
        assert self.stream.readline() == b"\n", "an answer ends with an empty line"
        assert line.startswith("action="), line
        return line.removeprefix("action=").rstrip("\n")

    def closed(self) -> bool:
        return self.stream.read() == b""

    def close(self) -> None:
        self.stream.close()
        self.socket.close()


def rcpt(user: str, **more: str) -> dict[str, str]:
    return {
        "protocol_state": "RCPT",
        "sasl_username": user,
        "sender": user,
        "recipient": "bob@example.org",
        "client_address": "203.0.113.7",
        "instance": "a1.b2.c3",
        **more,
    }


def score(client: TestClient, **fields: object) -> dict:
    response = client.post("/v1/score", json={"message_id": "<p1@example.net>", **fields})
    assert response.status_code == 200, response.text
    return response.json()


def lock(client: TestClient, account: str, relay: str = "default") -> None:
    path = f"/v1/accounts/{relay}/{quote(account, safe='')}/lock"
    response = client.post(path, json={"actor": "ops@example.net", "reason": "password phished", "force": True})
    assert response.status_code == 200, response.text


def test_unknown_accounts_get_dunno_on_one_kept_alive_connection(gate) -> None:
    _, port = gate
    postfix = Postfix(port)
    for state in ("CONNECT", "EHLO", "MAIL", "RCPT", "DATA", "RCPT"):
        assert postfix.ask(**rcpt("alice@example.net", protocol_state=state)) == "DUNNO"
    postfix.close()


def test_a_locked_account_is_refused_at_mail_and_rcpt_with_its_reply(gate) -> None:
    client, port = gate
    lock(client, "alice@example.net")
    postfix = Postfix(port)
    refused = postfix.ask(**rcpt("alice@example.net"))
    assert refused.startswith("550 5.7.1 Account alice@example.net is locked: locked by an administrator (incident ")
    assert "password phished" not in refused
    assert postfix.ask(**rcpt("alice@example.net", protocol_state="MAIL")) == refused
    assert postfix.ask(**rcpt("bob@example.net")) == "DUNNO"  # only that account
    postfix.close()
    metrics = client.get("/metrics").text
    assert 'outguard_adapter_answers_total{action="reject",protocol="policy"} 2.0' in metrics
    assert 'outguard_adapter_requests_total{protocol="policy",stage="rcpt"} 2.0' in metrics


def test_policy_context_names_the_relay(gate) -> None:
    client, port = gate
    lock(client, "carol@example.net", relay="smtp-out-1")
    postfix = Postfix(port)
    assert postfix.ask(**rcpt("carol@example.net")) == "DUNNO"  # not locked on the default relay
    assert postfix.ask(**rcpt("carol@example.net", policy_context="smtp-out-1")).startswith("550 5.7.1 ")
    assert postfix.ask(**rcpt("carol@example.net", policy_context="not a relay name")) == "DUNNO"
    postfix.close()


def test_no_sasl_login_falls_back_to_the_sender_then_the_client_address(gate) -> None:
    client, port = gate
    lock(client, "shop@example.net")
    lock(client, "198.51.100.9")
    postfix = Postfix(port)
    assert postfix.ask(protocol_state="RCPT", sender="shop@example.net", client_address="10.0.0.1").startswith("550")
    assert postfix.ask(protocol_state="RCPT", sender="", client_address="198.51.100.9").startswith("550")
    postfix.close()


def test_a_rate_limited_account_spends_tokens_at_end_of_message_only(gate) -> None:
    client, port = gate
    held = score(client, relay="roomy", sasl_username="bulk@example.net", recipients=["v@example.org"], raw=SPAM)
    assert held["action"] == "hold"  # scored: rate-limited now, with two of its three tokens left
    postfix = Postfix(port)
    user = rcpt("bulk@example.net", policy_context="roomy")
    for _ in range(5):  # asked once per recipient: nothing spent
        assert postfix.ask(**user) == "DUNNO"
    end = {**user, "protocol_state": "END-OF-MESSAGE", "recipient_count": "1"}
    assert postfix.ask(**end) == "DUNNO"
    assert postfix.ask(**end) == "DUNNO"
    over = postfix.ask(**user)
    assert over == "451 4.7.1 Too many messages from bulk@example.net, try again later."
    assert postfix.ask(**end) == over
    postfix.close()
    state = client.get(f"/v1/accounts/roomy/{quote('bulk@example.net', safe='')}").json()
    assert state["status"] == "rate_limited"


def test_end_of_message_counts_the_message_once_with_its_recipients(gate) -> None:
    client, port = gate
    postfix = Postfix(port)
    for _ in range(3):
        assert postfix.ask(**rcpt("counted@example.net")) == "DUNNO"  # RCPT counts nothing
    end = rcpt("counted@example.net", protocol_state="END-OF-MESSAGE", recipient_count="7", recipient="")
    assert postfix.ask(**end) == "DUNNO"
    postfix.close()
    score(client, sasl_username="counted@example.net", recipients=["bob@example.org"], raw=make_raw())
    view = client.get("/v1/accounts/default/counted%40example.net").json()
    assert (view["counters"]["msgs_1h"], view["counters"]["rcpts_1h"]) == (2, 8)  # the gate's message, then this
    assert view["engagement"]["recipients"] >= 8


def test_counting_can_be_left_to_the_scorer(settings: Settings) -> None:
    with gate_client(settings, policy_count_messages=False) as client:
        [listener] = client.app.state.listeners
        postfix = Postfix(listener.port)
        end = rcpt("scored@example.net", protocol_state="END-OF-MESSAGE", recipient_count="7")
        assert postfix.ask(**end) == "DUNNO"
        postfix.close()
        score(client, sasl_username="scored@example.net", recipients=["bob@example.org"], raw=make_raw())
        view = client.get("/v1/accounts/default/scored%40example.net").json()
        assert (view["counters"]["msgs_1h"], view["counters"]["rcpts_1h"]) == (1, 1)


def test_allowlisted_accounts_pass(gate) -> None:
    client, port = gate
    lock(client, "vip@example.net")
    allow = client.post(
        "/v1/accounts/default/vip%40example.net/allowlist", json={"actor": "ops", "reason": "our own newsletter"}
    )
    assert allow.status_code == 200, allow.text
    postfix = Postfix(port)
    assert postfix.ask(**rcpt("vip@example.net")) == "DUNNO"
    postfix.close()


def test_pipelined_requests_get_answers_in_order(gate) -> None:
    client, port = gate
    lock(client, "alice@example.net")
    postfix = Postfix(port)
    one = "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=alice@example.net\n\n"
    two = "request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=bob@example.net\n\n"
    postfix.socket.sendall((one + two).encode())
    assert postfix.answer().startswith("550 5.7.1")
    assert postfix.answer() == "DUNNO"
    postfix.close()


@pytest.mark.parametrize(
    "request_text",
    [
        b"protocol_state=RCPT\nsasl_username=alice\n\n",  # no request attribute
        b"request=smtpd_access_policy\nthis line has no equals sign\n\n",
        b"request=smtpd_access_policy\nsender=" + b"x" * 10_000 + b"\n\n",
    ],
    ids=["no-request", "no-equals", "too-long"],
)
def test_what_is_not_the_protocol_is_closed_without_an_answer(gate, request_text: bytes) -> None:
    client, port = gate
    postfix = Postfix(port)
    postfix.socket.sendall(request_text)
    assert postfix.closed()  # Postfix then applies default_action (DUNNO: fail-open)
    postfix.close()
    assert 'outguard_adapter_errors_total{kind="protocol",protocol="policy"} 1.0' in client.get("/metrics").text


def test_a_client_that_half_closes_after_its_request_still_gets_the_answer(gate) -> None:
    """Exim's ${readsocket} sends, shuts its side down, then reads to the end."""
    _, port = gate
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"request=smtpd_access_policy\nprotocol_state=RCPT\nsasl_username=x@example.net\n\n")
        conn.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := conn.recv(4096):
            received += chunk
    assert received == b"action=DUNNO\n\n"
