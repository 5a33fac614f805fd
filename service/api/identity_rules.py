"""Identity rules per relay: read, replace, reset, and try them on a sample message."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from features.message import parse_raw, parse_structured
from service.api.common import ContainerDep, json_response
from service.api.routes import ERRORS, checked_content
from service.api.schemas import MessageIn, Name
from service.errors import InvalidInput
from service.identity import HeaderRule, InvalidRule, resolve_identity

rules_router = APIRouter(prefix="/v1/identity-rules", tags=["identity"], responses=ERRORS)
RelayPath = Annotated[str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:@-]+$")]
MAX_RULES = 50


class RuleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    header: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    pattern: str | None = Field(default=None, description="RE2 with one capture group; null takes the whole value")
    strip: bool = Field(default=False, description="Tell the relay to remove the header once used")
    trusted: StrictBool = Field(
        default=False,
        description="The relay writes this header and strips it from client input, so it outranks the SASL user. "
        "Untrusted (the default): a header the sender can write, used only when there is no SASL user",
    )
    identifies: Literal["login", "script"] = Field(
        default="login",
        description="What the header names: a login (a different one than the SASL user is reported as "
        "`identity_conflict`) or a sending script within a hosting account (e.g. X-PHP-Originating-Script)",
    )


class RulesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RuleIn] = Field(max_length=MAX_RULES)
    actor: Annotated[Name, StringConstraints(min_length=1, max_length=256)]


class DryRunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    message: MessageIn
    rules: list[RuleIn] | None = Field(default=None, description="Candidate rules; default: the relay's own")


def build_rules(rules: list[RuleIn]) -> list[HeaderRule]:
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InvalidInput("rule names must be unique within a relay")
    try:
        return [HeaderRule.build(r.name, r.header, r.pattern, r.strip, r.trusted, r.identifies) for r in rules]
    except InvalidRule as exc:
        raise InvalidInput(str(exc)) from None


def _listing(relay: str, rules: tuple[HeaderRule, ...] | list[HeaderRule], default: bool) -> dict[str, object]:
    return {"relay": relay, "default": default, "rules": [r.as_dict() for r in rules]}


@rules_router.get("/{relay}", summary="The relay's identity rules, in order")
async def get_rules(relay: RelayPath, container: ContainerDep) -> Response:
    return json_response(_listing(relay, container.rules.rules_for(relay), container.rules.is_default(relay)))


@rules_router.put("/{relay}", summary="Replace the relay's identity rules (validated, stored before the answer)")
async def put_rules(relay: RelayPath, body: RulesIn, container: ContainerDep) -> Response:
    rules = build_rules(body.rules)
    await container.rules.put(relay, rules, body.actor)
    return json_response(_listing(relay, rules, False))


@rules_router.delete("/{relay}", summary="Back to the default identity rules")
async def reset_rules(relay: RelayPath, container: ContainerDep) -> Response:
    await container.rules.reset(relay)
    return json_response(_listing(relay, container.rules.rules_for(relay), True))


@rules_router.post("/{relay}/dry-run", summary="What the rules extract from a sample message")
async def dry_run(relay: RelayPath, body: DryRunIn, container: ContainerDep) -> Response:
    rules = build_rules(body.rules) if body.rules is not None else list(container.rules.rules_for(relay))
    message = body.message
    raw = checked_content(message, container.settings)  # the scoring limits: 413 over them
    if raw is not None:
        parsed = parse_raw(raw)
    else:
        parsed = parse_structured(message.headers, message.subject, message.text, message.html, None)
    identity = resolve_identity(
        account=message.account,
        sasl_username=message.sasl_username,
        envelope_from=message.envelope_from,
        client_ip=message.client_ip,
        headers=parsed.all_headers,
        rules=rules,
    )
    return json_response(
        {
            "relay": relay,
            "identity": {
                "account": identity.account,
                "source": identity.source,
                "strip_headers": list(identity.strip_headers),
                "conflict": identity.conflict.as_dict() if identity.conflict else None,
            },
            "rules": [{**r.as_dict(), "extracted": r.extract(parsed.all_headers)} for r in rules],
        }
    )
