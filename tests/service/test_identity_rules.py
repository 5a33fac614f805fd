"""Identity rules: defaults on real-shaped headers, per-relay rules over the API, safe patterns."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.identity import DEFAULT_RULES, HeaderRule, InvalidRule, resolve_identity
from tests.conftest import make_raw

pytestmark = pytest.mark.backends

POSTFIX_RECEIVED = (
    "from [192.168.1.20] (unknown [198.51.100.23])\r\n\t(Authenticated sender: alice@example.net)\r\n"
    "\tby smtp.example.net (Postfix) with ESMTPSA id 4Xk2F21Bz9z9sWq\r\n\tfor <bob@example.org>; "
    "Mon, 23 Nov 2026 10:00:00 +0100 (CET)"
)


def identity(headers: list[tuple[str, str]], **kw: str) -> tuple[str, str]:
    fields = {"account": None, "sasl_username": None, "envelope_from": None, "client_ip": None, **kw}
    found = resolve_identity(headers=headers, rules=DEFAULT_RULES, **fields)
    return found.account, found.source


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("X-AuthUser", "shop@hosted.example", "shop@hosted.example"),
        ("X-PHP-Originating-Script", "1000:contact-form.php", "1000:contact-form.php"),
        (
            "X-PHP-Originating-Script",
            "33:wp-content/plugins/hello/class-mailer.php(42) : eval()'d code",
            "33:wp-content/plugins/hello/class-mailer.php",
        ),
        ("Received", POSTFIX_RECEIVED, "alice@example.net"),
    ],
)
def test_default_rules_on_real_shaped_headers(header: str, value: str, expected: str) -> None:
    assert identity([(header, value)], sasl_username="relay-login")[0] == expected


def test_without_a_matching_rule_the_sasl_user_then_the_envelope_sender() -> None:
    plain_received = [("Received", "from mx.example.org by smtp.example.net with ESMTP id 1")]
    assert identity(plain_received, sasl_username="bob") == ("bob", "sasl")
    assert identity(plain_received, envelope_from="<Bob@Example.org>") == ("bob@example.org", "envelope_from")


def test_unsafe_or_wrong_patterns_are_refused_with_the_reason() -> None:
    with pytest.raises(InvalidRule, match="RE2"):
        HeaderRule.build("backref", "X-User", r"(\w+)-\1")
    with pytest.raises(InvalidRule, match="RE2"):
        HeaderRule.build("lookahead", "X-User", r"(?=user)(\w+)")
    with pytest.raises(InvalidRule, match="exactly one capture group"):
        HeaderRule.build("two", "X-User", r"(\w+)@(\w+)")
    with pytest.raises(InvalidRule, match="not a header name"):
        HeaderRule.build("bad", "X User:", None)


def test_a_pattern_that_backtracks_exponentially_elsewhere_matches_in_linear_time() -> None:
    rule = HeaderRule.build("nested", "X-User", r"^((?:a+)+)$")
    # Under a backtracking engine this input takes longer than the age of the universe.
    assert rule.extract([("X-User", "a" * 4000 + "!")]) is None
    assert rule.extract([("X-User", "aaaa")]) == "aaaa"


def test_the_api_serves_defaults_then_per_relay_rules(client: TestClient) -> None:
    listing = client.get("/v1/identity-rules/shared-1").json()
    assert listing["default"] is True
    assert [r["header"] for r in listing["rules"]] == ["X-AuthUser", "X-PHP-Originating-Script", "Received"]
    custom = {
        "rules": [
            {
                "name": "cpanel",
                "header": "X-Get-Message-Sender-Via",
                "pattern": r"authenticated_id: (\S+)",
                "strip": True,
            }
        ],
        "actor": "ops@example.net",
    }
    saved = client.put("/v1/identity-rules/shared-1", json=custom)
    assert saved.status_code == 200
    assert client.get("/v1/identity-rules/shared-1").json()["rules"][0]["name"] == "cpanel"
    assert client.get("/v1/identity-rules/other").json()["default"] is True  # per relay


def test_scoring_uses_the_relays_rules_and_says_which_header_to_strip(client: TestClient) -> None:
    rules = {
        "rules": [
            {
                "name": "cpanel",
                "header": "X-Get-Message-Sender-Via",
                "pattern": r"authenticated_id: (\S+)",
                "strip": True,
            }
        ],
        "actor": "ops",
    }
    client.put("/v1/identity-rules/cpanel-host", json=rules)
    raw = make_raw(
        extra_headers="X-Get-Message-Sender-Via: server1.host.example: authenticated_id: shopuser/from_h\r\n"
    )
    result = client.post(
        "/v1/score", json={"message_id": "<r@x>", "relay": "cpanel-host", "sasl_username": "x", "raw": raw}
    ).json()
    assert (result["account"], result["identity_source"]) == ("shopuser/from_h", "rule:cpanel")
    assert result["strip_headers"] == ["X-Get-Message-Sender-Via"]
    elsewhere = client.post("/v1/score", json={"message_id": "<r2@x>", "sasl_username": "x", "raw": raw}).json()
    assert elsewhere["account"] == "x"


def test_rules_survive_a_restart(client: TestClient, settings) -> None:
    from service.app import create_app

    client.put("/v1/identity-rules/kept", json={"rules": [], "actor": "ops"})
    with TestClient(create_app(settings)) as restarted:
        listing = restarted.get("/v1/identity-rules/kept").json()
    assert (listing["default"], listing["rules"]) == (False, [])


def test_reset_goes_back_to_the_defaults(client: TestClient) -> None:
    client.put("/v1/identity-rules/r", json={"rules": [], "actor": "ops"})
    assert client.delete("/v1/identity-rules/r").json()["default"] is True


@pytest.mark.parametrize(
    ("rule", "says"),
    [
        ({"name": "a", "header": "X-A", "pattern": r"(\w+)\1"}, "RE2"),
        ({"name": "a", "header": "X-A", "pattern": r"[unclosed"}, "RE2"),
        ({"name": "a", "header": "X-A", "pattern": r"\w+"}, "exactly one capture group"),
    ],
)
def test_bad_rules_get_a_422_saying_why(client: TestClient, rule: dict, says: str) -> None:
    response = client.put("/v1/identity-rules/r", json={"rules": [rule], "actor": "ops"})
    assert response.status_code == 422
    assert says in response.json()["detail"]


def test_dry_run_shows_what_each_rule_extracts(client: TestClient) -> None:
    raw = make_raw(extra_headers=f"Received: {POSTFIX_RECEIVED}\r\nX-PHP-Originating-Script: 1000:form.php\r\n")
    result = client.post("/v1/identity-rules/any/dry-run", json={"message": {"message_id": "d", "raw": raw}}).json()
    assert result["identity"] == {"account": "1000:form.php", "source": "rule:php-script", "strip_headers": []}
    assert [r["extracted"] for r in result["rules"]] == [None, "1000:form.php", "alice@example.net"]
    candidate = [{"name": "only-received", "header": "Received", "pattern": r"Authenticated sender: ([^)\s]+)"}]
    tried = client.post(
        "/v1/identity-rules/any/dry-run", json={"message": {"message_id": "d", "raw": raw}, "rules": candidate}
    ).json()
    assert tried["identity"]["account"] == "alice@example.net"
