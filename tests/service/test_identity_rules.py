"""Identity rules: defaults on real-shaped headers, per-relay rules over the API, safe patterns."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from service.identity import (
    DEFAULT_RULES,
    MAX_CLAIM_CHARS,
    HeaderRule,
    Identity,
    IdentityConflict,
    InvalidRule,
    resolve_identity,
)
from tests.conftest import make_raw

pytestmark = pytest.mark.backends

POSTFIX_RECEIVED = (
    "from [192.168.1.20] (unknown [198.51.100.23])\r\n\t(Authenticated sender: alice@example.net)\r\n"
    "\tby smtp.example.net (Postfix) with ESMTPSA id 4Xk2F21Bz9z9sWq\r\n\tfor <bob@example.org>; "
    "Mon, 23 Nov 2026 10:00:00 +0100 (CET)"
)


def resolve(headers: list[tuple[str, str]], rules=DEFAULT_RULES, **kw: str) -> Identity:
    fields = {"account": None, "sasl_username": None, "envelope_from": None, "client_ip": None, **kw}
    return resolve_identity(headers=headers, rules=rules, **fields)


def identity(headers: list[tuple[str, str]], **kw: str) -> tuple[str, str]:
    found = resolve(headers, **kw)
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
    # Without a login (mail from a local sendmail, an open submission port) the header names the sender.
    assert identity([(header, value)], envelope_from="www-data@host.example", client_ip="192.0.2.1")[0] == expected


@pytest.mark.parametrize(
    ("header", "value", "conflict"),
    [
        ("X-AuthUser", "shop@hosted.example", ("x-authuser", "X-AuthUser", "shop@hosted.example")),
        ("Received", POSTFIX_RECEIVED, ("received-authenticated-sender", "Received", "alice@example.net")),
        ("X-PHP-Originating-Script", "1000:contact-form.php", None),  # a script within the login, not a login
    ],
)
def test_the_sasl_user_outranks_every_default_rule(header: str, value: str, conflict: tuple | None) -> None:
    found = resolve([(header, value)], sasl_username="relay-login")
    assert (found.account, found.source, found.strip_headers) == ("relay-login", "sasl", ())
    assert found.conflict == (IdentityConflict(*conflict) if conflict else None)


def test_the_defaults_are_untrusted_and_say_what_they_identify() -> None:
    assert [(r.name, r.trusted, r.identifies) for r in DEFAULT_RULES] == [
        ("x-authuser", False, "login"),
        ("php-script", False, "script"),
        ("received-authenticated-sender", False, "login"),
    ]


def test_a_header_naming_the_sasl_user_itself_is_no_conflict() -> None:
    # A relay that writes X-AuthUser (without stripping the client's) writes the same login, maybe in other case.
    found = resolve([("X-AuthUser", "Alice@Example.net")], sasl_username="alice@example.net")
    assert (found.account, found.conflict) == ("alice@example.net", None)
    # A second, forged copy after the relay's own is still seen.
    forged = resolve(
        [("X-AuthUser", "alice@example.net"), ("X-AuthUser", "bob@example.net")], sasl_username="alice@example.net"
    )
    assert forged.conflict == IdentityConflict("x-authuser", "X-AuthUser", "bob@example.net")


def test_a_trusted_rule_outranks_the_sasl_user_and_an_untrusted_one_only_fills_in() -> None:
    rules = [
        HeaderRule.build("forgeable", "X-User"),
        HeaderRule.build("panel", "X-Panel-Account", trusted=True, strip=True),
    ]
    both = [("X-User", "mallory"), ("X-Panel-Account", "shop42")]
    found = resolve(both, rules, sasl_username="alice")
    assert (found.account, found.source, found.strip_headers) == ("shop42", "rule:panel", ("X-Panel-Account",))
    assert found.conflict == IdentityConflict("forgeable", "X-User", "mallory")  # reported even so
    # A trusted rule naming another account than the SASL user is the relay's own mapping: no conflict.
    assert resolve([("X-Panel-Account", "shop42")], rules, sasl_username="alice").conflict is None
    assert identity_with(rules, [("X-User", "mallory")], sasl_username="alice") == ("alice", "sasl")
    assert identity_with(rules, [("X-User", "mallory")], envelope_from="m@example.org") == ("mallory", "rule:forgeable")
    assert identity_with(rules, [], account="given", sasl_username="alice") == ("given", "account")


def identity_with(rules: list[HeaderRule], headers: list[tuple[str, str]], **kw: str) -> tuple[str, str]:
    found = resolve(headers, rules, **kw)
    return found.account, found.source


def test_a_conflicts_claim_is_cut_and_printable() -> None:
    found = resolve([("X-AuthUser", "v\x00" + "x" * 1_000)], sasl_username="s")
    assert found.conflict is not None
    assert found.conflict.claimed == ("v?" + "x" * 1_000)[:MAX_CLAIM_CHARS]


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
    assert [(r["trusted"], r["identifies"]) for r in listing["rules"]] == [
        (False, "login"),
        (False, "script"),
        (False, "login"),
    ]
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
    [stored] = client.get("/v1/identity-rules/shared-1").json()["rules"]
    assert (stored["name"], stored["trusted"], stored["identifies"]) == (
        "cpanel",
        False,
        "login",
    )  # untrusted unless said
    assert client.get("/v1/identity-rules/other").json()["default"] is True  # per relay


def test_scoring_uses_the_relays_rules_and_says_which_header_to_strip(client: TestClient) -> None:
    # cPanel's Exim writes this header itself: the relay vouches for it, so it outranks the SASL user.
    rules = {
        "rules": [
            {
                "name": "cpanel",
                "header": "X-Get-Message-Sender-Via",
                "pattern": r"authenticated_id: (\S+)",
                "strip": True,
                "trusted": True,
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
    assert result["identity_conflict"] is None  # the relay's own mapping, not a claim by the sender
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
        ({"name": "a", "header": "X-A", "trusted": "yes"}, "trusted"),
        ({"name": "a", "header": "X-A", "trusted": None}, "trusted"),
        ({"name": "a", "header": "X-A", "identifies": "mailbox"}, "identifies"),
        ({"name": "a", "header": "X-A", "pattern": "(\ud800)"}, "lone surrogate"),
        ({"name": "a", "header": "X-\udfff", "pattern": None}, "valid string"),
    ],
)
def test_bad_rules_get_a_422_saying_why(client: TestClient, rule: dict, says: str) -> None:
    body = json.dumps({"rules": [rule], "actor": "ops"})  # \u escapes: a lone surrogate travels as JSON allows
    response = client.put("/v1/identity-rules/r", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert says in str(response.json()["detail"])


def test_dry_run_shows_what_each_rule_extracts(client: TestClient) -> None:
    raw = make_raw(extra_headers=f"Received: {POSTFIX_RECEIVED}\r\nX-PHP-Originating-Script: 1000:form.php\r\n")
    result = client.post("/v1/identity-rules/any/dry-run", json={"message": {"message_id": "d", "raw": raw}}).json()
    assert result["identity"] == {
        "account": "1000:form.php",
        "source": "rule:php-script",
        "strip_headers": [],
        "conflict": None,
    }
    assert [r["extracted"] for r in result["rules"]] == [None, "1000:form.php", "alice@example.net"]
    candidate = [{"name": "only-received", "header": "Received", "pattern": r"Authenticated sender: ([^)\s]+)"}]
    tried = client.post(
        "/v1/identity-rules/any/dry-run", json={"message": {"message_id": "d", "raw": raw}, "rules": candidate}
    ).json()
    assert tried["identity"]["account"] == "alice@example.net"
    with_login = client.post(
        "/v1/identity-rules/any/dry-run", json={"message": {"message_id": "d", "raw": raw, "sasl_username": "carol"}}
    ).json()
    assert with_login["identity"]["account"] == "carol"
    assert with_login["identity"]["conflict"] == {
        "rule": "received-authenticated-sender",
        "header": "Received",
        "claimed": "alice@example.net",
    }
