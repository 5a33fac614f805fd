"""All configuration in one typed object, read from ``OUTGUARD_*`` environment variables.

Built once (by the CLI or the caller of `create_app`) and passed in; nothing reads the
environment at import time.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from models.registry import ModelRegistry
    from service.decision import DecisionPolicy
    from service.fingerprints.service import FingerprintPolicy

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ModelSource = Literal["dir", "registry"]


class Scope(StrEnum):
    SCORE = "score"
    FEEDBACK = "feedback"
    ADMIN = "admin"


class RelayPolicy(BaseModel):
    """How a relay treats risky accounts; `OUTGUARD_RELAY_POLICIES` overrides it per relay."""

    model_config = ConfigDict(extra="forbid")

    auto_lock: bool = Field(default=True, description="Lock an account once a lock is recommended")
    rate_limit_risk: float = Field(default=0.5, gt=0, le=1, description="Risk at which an account is rate-limited")
    rate_limit_per_minute: float = Field(
        default=30.0, gt=0, description="Messages a minute allowed at rate_limit_risk; it shrinks as risk grows"
    )
    rate_limit_min_per_minute: float = Field(default=1.0, gt=0, description="The floor the allowance shrinks to")
    rate_limit_burst: float = Field(default=10.0, ge=1, description="Token bucket size")
    temporary_lock_s: int = Field(default=3_600, ge=60, description="How long an automatic lock lasts")
    permanent_after: int = Field(default=3, ge=1, description="The Nth automatic lock is permanent")
    # SMTP reply texts (`service.adapters.replies`): placeholders {account}, {incident}, {lock_summary},
    # {until}, {virus}; with reply_reveal_scores also {spam_probability}, {account_risk}, {reasons},
    # {lock_reason}. The code and enhanced status are fixed by the action (451 4.7.1, 550 5.7.1).
    reply_reject: str = Field(
        default="Message refused as spam. Contact support if this is wrong.",
        max_length=400,
        description="550 5.7.1 text for a rejected message",
    )
    reply_locked: str = Field(
        default="Account {account} is locked: {lock_summary} (incident {incident}). Contact support.",
        max_length=400,
        description="550 5.7.1 text for a locked account's mail",
    )
    reply_defer: str = Field(
        default="Message deferred, try again later.", max_length=400, description="451 4.7.1 text for a deferral"
    )
    reply_rate_limited: str = Field(
        default="Too many messages from {account}, try again later.",
        max_length=400,
        description="451 4.7.1 text for a rate-limited account over its allowance",
    )
    reply_hold: str = Field(
        default="Message held for review, try again later.",
        max_length=400,
        description="Quarantine reason for a held message; the 451 4.7.1 text where the protocol cannot hold",
    )
    reply_virus: str = Field(
        default="Virus found: {virus}", max_length=400, description="550 5.7.1 text for a message carrying malware"
    )
    reply_reveal_scores: bool = Field(
        default=False,
        description="Put the spam probability, account risk and reasons in SMTP replies and added headers "
        "(a spammer can tune against them: only for relays whose senders you trust)",
    )

    @model_validator(mode="after")
    def _reply_placeholders(self) -> RelayPolicy:
        for name in REPLY_TEMPLATES:
            check_reply_template(name, getattr(self, name), self.reply_reveal_scores)
        return self


# Placeholders every reply template may use, and those that give a spammer something to tune
# against (only with reply_reveal_scores).
REPLY_TEMPLATES = ("reply_reject", "reply_locked", "reply_defer", "reply_rate_limited", "reply_hold", "reply_virus")
REPLY_FIELDS = frozenset({"account", "incident", "lock_summary", "until", "virus"})
REPLY_SCORE_FIELDS = frozenset({"spam_probability", "account_risk", "reasons", "lock_reason"})


def check_reply_template(name: str, template: str, reveal_scores: bool) -> None:
    """A reply template is one printable ASCII line whose placeholders are bare `{name}`s it may use."""
    if not template.isascii() or not template.isprintable():
        raise ValueError(f"{name}: an SMTP reply is one line of printable ASCII")
    try:
        parts = list(Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _, field, spec, conversion in parts:
        if field is None:
            continue
        if spec or conversion or field not in REPLY_FIELDS | REPLY_SCORE_FIELDS:
            allowed = ", ".join(f"{{{f}}}" for f in sorted(REPLY_FIELDS | REPLY_SCORE_FIELDS))
            raise ValueError(f"{name}: unknown placeholder {{{field}}}; use one of {allowed}")
        if field in REPLY_SCORE_FIELDS and not reveal_scores:
            raise ValueError(f"{name}: {{{field}}} reveals scores; it needs reply_reveal_scores set to true")


class Customer(BaseModel):
    """One customer of `OUTGUARD_CUSTOMERS`: the domains of its accounts and who to tell about them."""

    model_config = ConfigDict(extra="forbid")

    domains: list[str] = Field(description="Domains (the part after @): exact, or `*.suffix` for every subdomain")
    contact: str | None = Field(default=None, description="Address mailed a lock notice with notice_customer")

    @field_validator("domains")
    @classmethod
    def _domain_patterns(cls, value: list[str]) -> list[str]:
        cleaned = [d.strip().lower() for d in value]
        for domain in cleaned:
            bare = domain.removeprefix("*.")
            if not bare or any(c in bare for c in "*?[]@ ") or domain.count("*") > 1:
                raise ValueError(f"{domain!r} is not a domain or *.suffix pattern")
        return cleaned

    @field_validator("contact")
    @classmethod
    def _an_address(cls, value: str | None) -> str | None:
        if value is not None and "@" not in value:
            raise ValueError("contact is an email address")
        return value

    def owns(self, domain: str) -> bool:
        domain = domain.lower()
        return any(domain == d or (d.startswith("*.") and domain.endswith(d[1:])) for d in self.domains)


# A token's name: what every audit entry records as who did it.
TOKEN_NAME_PATTERN = r"^[A-Za-z0-9._@:+-]{1,64}$"
RELAY_NAME_PATTERN = r"^[A-Za-z0-9._:@-]{1,128}$"


class NamedToken(BaseModel):
    """One bearer token of `OUTGUARD_TOKENS`: who holds it, what it may do, and on which relays."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOKEN_NAME_PATTERN, description="Who holds it: the name every audit entry records")
    token: SecretStr = Field(description="The bearer token itself")
    scopes: list[Scope] = Field(min_length=1, description="score, feedback, admin")
    relays: list[Annotated[str, StringConstraints(pattern=RELAY_NAME_PATTERN)]] | None = Field(
        default=None,
        min_length=1,
        description="Only these relays (scoring, accounts, reports, bulk actions, the audit log); unset: every relay",
    )

    @field_validator("token")
    @classmethod
    def _usable(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if not token or token != token.strip() or not token.isascii() or not token.isprintable():
            raise ValueError("a token is printable ASCII without surrounding spaces")
        return value


def legacy_token_name(token: str, length: int = 4) -> str:
    """The name of a token given in the `{"TOKEN": [scopes]}` form: `token-` and the start of its SHA-256."""
    return "token-" + hashlib.sha256(token.encode()).hexdigest()[:length]


def named_tokens(tokens: dict[str, list[Scope]] | list[NamedToken] | list[dict[str, object]]) -> list[NamedToken]:
    """Either form of `OUTGUARD_TOKENS` as named tokens (the legacy form's names lengthened until unique)."""
    if isinstance(tokens, dict):
        for length in (4, 8, 16, 64):
            names = [legacy_token_name(token, length) for token in tokens]
            if len(set(names)) == len(names):
                break
        return [
            NamedToken(name=name, token=SecretStr(token), scopes=list(scopes))
            for name, (token, scopes) in zip(names, tokens.items(), strict=True)
        ]
    return _NAMED_TOKENS.validate_python(tokens)


_NAMED_TOKENS = TypeAdapter(list[NamedToken])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OUTGUARD_", env_file=None, extra="ignore")

    # -- serving
    host: str = Field(
        default="127.0.0.1",
        description="Address `outguard serve` binds (its --host overrides); anything but loopback needs tokens",
    )
    port: int = Field(default=8000, description="Port `outguard serve` listens on (its --port overrides)")
    metrics_relay_limit: int = Field(
        default=100,
        ge=1,
        description="Relays that get their own `relay` label on the scoring metrics (/metrics); relays seen after "
        "the first this many are counted as `other`, so the number of series stays bounded",
    )
    tokens: dict[str, list[Scope]] | list[NamedToken] = Field(
        default_factory=dict,
        description='Bearer tokens, as JSON: [{"name": "alice", "token": "...", "scopes": ["admin"], '
        '"relays": ["relay-a"]}] (relays: optional, only those relays), or {"TOKEN": ["score", "feedback"]} '
        '(each named "token-" and the first 4 hex digits of its SHA-256). The name is recorded in every audit '
        "entry. Empty: no auth, and the service only binds loopback.",
    )

    # -- storage
    database_url: str = Field(
        default=f"sqlite:///{PROJECT_ROOT / 'var' / 'outguard.db'}",
        description="sqlite:///PATH (embedded default) or postgresql://USER@HOST/DB (run `outguard db upgrade` first)",
    )
    database_pool_size: int = Field(default=8, ge=1, description="PostgreSQL connections per process")
    event_retention_days: float = Field(
        default=90.0,
        gt=0,
        description="Scored messages and feedback older than this are deleted (days; whole daily partitions on "
        "PostgreSQL)",
    )
    redis_url: str | None = Field(
        default=None,
        description="redis://HOST:PORT/DB: per-account windows, engagement, account state and the message index "
        "shared by every replica. Unset: in-process state (one process only).",
    )
    redis_prefix: str = Field(
        default="og",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Namespace of every Redis key (several services, one Redis)",
    )
    redis_fail_open: bool = Field(
        default=True,
        description="With Redis unreachable, keep scoring on content alone (true) or answer 503 (false)",
    )
    redis_timeout_s: float = Field(default=0.25, gt=0, description="Per Redis command, before it counts as down")
    redis_probe_interval_s: float = Field(
        default=1.0,
        gt=0,
        description="After a Redis failure, calls skip Redis until a probe (one PING, every this many seconds) "
        "finds it again",
    )
    shared_refresh_s: float = Field(
        default=5.0,
        gt=0,
        description="How often identity rules, webhook subscriptions and other replicas' signature changes are "
        "re-read (seconds)",
    )
    state_dir: Path = Field(
        default=PROJECT_ROOT / "var",
        description="Local state: the link key generated when unset, the in-process checkpoint, the default "
        "MLflow store, registry models downloaded, digests written as files",
    )
    recipient_hash_key: SecretStr | None = Field(
        default=None,
        description="Key for hashing recipient addresses in stored events, the same on every replica. Unset: one "
        "generated at the first start and kept in the database, which every replica reads",
    )
    checkpoint_interval_s: float = Field(
        default=30.0,
        ge=0,
        description="Without Redis: how often account windows, engagement and evidence are checkpointed to "
        "state_dir/hot-state.sqlite (also at shutdown; restored at start). 0: never, a restart forgets them",
    )
    store_subjects: bool = Field(
        default=True, description="Keep the first 120 characters of each subject, for incident reports"
    )
    event_queue_max: int = Field(
        default=100_000,
        ge=1,
        description="Scored events waiting for the log writer; past it they are dropped and counted",
    )
    max_tracked_accounts: int = Field(
        default=200_000, ge=1, description="Accounts kept in in-process state (the least recently seen evicted)"
    )
    message_index_size: int = Field(
        default=500_000,
        ge=1,
        description="Recently scored Message-IDs kept in memory for matching feedback (older ones are looked up in "
        "the log)",
    )

    # -- malware scanning with ClamAV (service.scanning, docs/clamav.md)
    clamd: str | None = Field(
        default=None,
        description="Where clamd listens: unix:/run/clamav/clamd.ctl or tcp:HOST:PORT. Set: raw messages with "
        "attachments are scanned (INSTREAM) while their features are computed; unset: no scanning",
    )
    clamd_scan: Literal["attachments", "all"] = Field(
        default="attachments",
        description="Which raw messages go to clamd: those with an attachment (a named, attached or non-text part, "
        "or uuencoded lines), or all",
    )
    clamd_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait for clamd's verdict on one message (connect, send, answer)"
    )
    clamd_max_bytes: int = Field(
        default=25 * 1024 * 1024,
        ge=1024,
        description="A message longer than this is scanned up to it (its first bytes); keep it at most clamd's "
        "StreamMaxLength (25 MB by default)",
    )
    clamd_connections: int = Field(default=8, ge=1, le=1_000, description="Scans in flight at once, per process")
    clamd_fail_open: bool = Field(
        default=True,
        description="With clamd down or timing out, score the message unscanned (true) or answer defer (false)",
    )

    # -- model
    model_dir: Path = Field(
        default=PROJECT_ROOT / "models" / "default",
        description="The model bundle served with model_source=dir (and before the registry has a champion); "
        "`outguard train` writes it",
    )
    data_dir: Path = Field(
        default=PROJECT_ROOT.parent / "shared" / "data",
        description="The public corpora, for training, evaluation, benchmarks and the corpus tests",
    )
    cache_dir: Path = Field(
        default=PROJECT_ROOT / ".cache", description="Corpora extracted and features cached for training and evaluation"
    )

    # -- request limits
    max_raw_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="Largest message content: `raw`, or the structured subject, text, html, headers and attachment "
        "names together (bytes as UTF-8); refused with 413",
    )
    max_headers: int = Field(
        default=1_000, ge=1, le=10_000, description="Most header fields in a structured message (413 over it)"
    )
    max_attachments: int = Field(
        default=1_000, ge=1, le=10_000, description="Most attachments in a structured message (413 over it)"
    )
    max_request_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1024, description="Largest request body; refused with 413 before it is read"
    )
    max_batch: int = Field(
        default=1_000, ge=1, description="Most messages in a score batch, or events in a feedback batch (413 over it)"
    )
    max_recipients: int = Field(
        default=10_000, ge=1, description="Most recipients of one message (413 over it; MTA adapters keep the first)"
    )
    max_clock_skew_s: int = Field(
        default=3_600, ge=0, description="How far in the future a message timestamp may be (seconds)"
    )
    reasons: int = Field(default=5, ge=0, le=50, description="Top feature contributions in each answer")

    # -- decision
    hold_threshold: float = Field(
        default=0.99,
        gt=0,
        lt=1,
        description="Hold (quarantine) a message with at least this spam probability; reports count it as spam",
    )
    reject_threshold: float = Field(
        default=0.999,
        gt=0,
        lt=1,
        description="Reject a message with at least this spam probability from an account already recommended "
        "for locking (at least hold_threshold)",
    )
    target_false_locks_per_1000_account_days: float = Field(
        default=0.5, gt=0, description="The false-lock rate the lock threshold is derived from"
    )
    messages_per_account_day: float = Field(
        default=20.0, gt=0, description="A typical account's messages a day, for deriving the lock threshold"
    )
    compromised_spam_share: float = Field(
        default=0.3, gt=0, lt=1, description="Share of spam in a compromised account's mail (the alternative)"
    )
    clean_spam_share: float = Field(
        default=0.01, gt=0, lt=1, description="Share of spam-looking mail from a clean account (the null)"
    )
    engagement_credit: float = Field(
        default=4.0,
        ge=0,
        description="Most that good engagement (deliveries, replies) can offset of content evidence, in nats",
    )
    # Templates and the cold start (service.decision, docs/decision.md)
    baseline_age_s: float = Field(
        default=86_400.0,
        gt=0,
        description="A template first sent this long ago (seconds) is the account's normal: its copies count only "
        "as ham. An account first seen this long ago, with established_min_messages, is established",
    )
    established_min_messages: int = Field(
        default=10,
        ge=0,
        description="Messages an account needs scored (besides baseline_age_s of history) to be established; "
        "a new account is locked only with corroboration besides its content",
    )
    corroborating_engagement: float = Field(
        default=1.0,
        gt=0,
        description="Engagement evidence (bounces to invalid recipients, complaints; nats) that corroborates a new "
        "account's spam-like content",
    )
    corroborating_bad_outcomes: float = Field(
        default=2.0,
        ge=0,
        description="Invalid recipients and complaints (decayed count) the engagement evidence must rest on to "
        "corroborate: one is a typo as often as a spam run",
    )
    corroborating_recipients_1h: int = Field(
        default=100, ge=1, description="Recipients in the last hour that corroborate a new account's spam-like content"
    )
    corroborating_recipient_domains_1h: int = Field(
        default=20,
        ge=1,
        description="Distinct recipient domains in the last hour that corroborate a new account's spam-like content",
    )
    corroborating_client_ips_1h: int = Field(
        default=5,
        ge=1,
        description="Distinct client addresses in the last hour (a password used from many places) that corroborate "
        "a new account's spam-like content",
    )
    known_spam_probability: float = Field(
        default=0.995,
        gt=0,
        lt=1,
        description="A near-copy of a known-spam signature scores at least this (above hold_threshold: it is held), "
        "unless it is a template the account has as known-good",
    )
    known_spam_min_similarity: float = Field(
        default=0.6,
        gt=0,
        le=1,
        description="Similarity to a signature that makes a near-copy of known spam (matches below "
        "signature_min_similarity are never found)",
    )

    # -- content fingerprints (service.fingerprints)
    fingerprints: bool = Field(default=True, description="Match signatures and track campaigns")
    signature_capacity: int = Field(
        default=250_000, ge=1, description="Known-spam signatures kept in memory (oldest evicted past it)"
    )
    signature_ttl_days: float = Field(default=14.0, gt=0, description="How long a signature lives after its last add")
    signature_min_similarity: float = Field(
        default=0.6, gt=0, le=1, description="Estimated Jaccard similarity for a signature match or a campaign copy"
    )
    signature_complaint_min_probability: float = Field(
        default=0.5, ge=0, le=1, description="A complaint adds a signature only if the message scored at least this"
    )
    campaign_window_s: float = Field(default=3_600.0, gt=0, description="Window for counting a content's new senders")
    campaign_min_accounts: int = Field(
        default=5, ge=2, description="New senders of one content within the window that make a campaign"
    )
    campaign_uptick_ratio: float = Field(
        default=3.0, gt=0, description="New senders must outnumber those already sending it by this factor (+1)"
    )
    campaign_evidence: float = Field(
        default=2.0, ge=0, description="Nats a message of an active spam-like campaign adds against its account"
    )
    campaign_capacity: int = Field(default=200_000, ge=1, description="Content clusters tracked (oldest evicted)")

    # -- models: the registry, hot reload, shadow scoring, the promotion gate
    mlflow_tracking_uri: str | None = Field(
        default=None, description="MLflow tracking and registry URI (default: SQLite under state_dir/mlflow)"
    )
    mlflow_experiment: str = Field(default="outguard", description="MLflow experiment for training runs")
    registry_model_name: str = Field(default="outguard", description="Registered model name")
    model_source: ModelSource = Field(
        default="dir", description="Serve the bundle in model_dir, or the registry's `champion`"
    )
    model_poll_s: float = Field(
        default=0.0,
        ge=0,
        description="With model_source=registry: how often to look for a new champion (0: only on "
        "POST /v1/admin/models/reload)",
    )
    shadow_model: str | None = Field(
        default=None,
        description="A second model that scores the same traffic without acting: a registry alias "
        "(`challenger`) or a bundle directory",
    )
    gate_metrics: list[str] = Field(
        default_factory=lambda: ["pr_auc", "recall_at_fpr_1pct"],
        description="Test metrics a new model must not lose on (and must win at least one of) to be promoted",
    )
    gate_tolerance: float = Field(default=0.002, ge=0, description="How much worse a gate metric may be and still pass")

    # -- digests (`outguard report`)
    smtp_host: str | None = Field(default=None, description="SMTP server for digests; unset: write files instead")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="Port of the SMTP server")
    smtp_username: str | None = Field(default=None, description="SMTP login; unset: no login")
    smtp_password: SecretStr | None = Field(default=None, description="Password of the SMTP login")
    smtp_starttls: bool = Field(default=True, description="Upgrade the SMTP connection with STARTTLS")
    smtp_from: str = Field(default="outguard@localhost", description="From address of digests and lock notices")

    # -- lock notices (service.reports.notice) and the dashboard's customers
    notice_to: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Who is mailed a notice (the incident report) when an account is locked, per relay, as JSON: "
        '{"*": ["abuse@provider.example"], "relay-a": ["noc@a.example"]} ("*": every relay without an entry of '
        "its own). Sent at once through the webhook outbox (durable, retried); needs OUTGUARD_SMTP_HOST",
    )
    notice_customer: bool = Field(
        default=False,
        description="Also mail the notice to the contact of the customer whose account was locked (OUTGUARD_CUSTOMERS)",
    )
    customers: dict[str, Customer] = Field(
        default_factory=dict,
        description="Customers by name, for the dashboard's per-customer view and lock notices, as JSON: "
        '{"Acme": {"domains": ["acme.example", "*.acme.example"], "contact": "it@acme.example"}}. An account '
        "belongs to the customer of the part after its @; accounts of no customer are shown by that domain",
    )
    link_key: SecretStr | None = Field(
        default=None,
        description="Key (HMAC) of the signed, expiring, read-only incident-report links in notices, digests and "
        "webhooks; unset: one made at the first start and kept in the database, shared by every replica",
    )
    link_ttl_s: int = Field(
        default=7 * 86_400, ge=300, le=90 * 86_400, description="How long a signed incident-report link works (seconds)"
    )

    # -- webhooks
    public_url: str = Field(default="http://127.0.0.1:8000", description="How subscribers reach this service (links)")
    webhook_allow_private: bool = Field(
        default=False, description="Allow webhook URLs that resolve to loopback or private addresses"
    )
    webhook_timeout_s: float = Field(default=5.0, gt=0, description="Longest wait for a subscriber's answer (seconds)")
    webhook_max_attempts: int = Field(
        default=10, ge=1, description="Deliveries tried before an event is marked failed for a subscriber"
    )
    webhook_backoff_s: float = Field(default=5.0, gt=0, description="First retry delay; doubles per attempt")
    webhook_backoff_max_s: float = Field(default=3_600.0, gt=0, description="Longest retry delay (seconds)")

    # -- milter (service.adapters.milter; docs/relay-integration.md)
    milter_listen: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT ([::1]:PORT for IPv6) where the same process serves the milter protocol; unset: off",
    )
    milter_relay: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._:@-]{1,128}$",
        description="The relay name of milter traffic; unset: the MTA's {daemon_name} macro (else `default`)",
    )
    milter_score_timeout_s: float = Field(
        default=20.0, gt=0, description="Longest wait for a message's score; past it, milter_error_action applies"
    )
    milter_idle_timeout_s: float = Field(
        default=3_600.0, gt=0, description="A milter connection silent this long is closed (the MTA reconnects)"
    )
    milter_error_action: Literal["mta", "accept", "tempfail"] = Field(
        default="mta",
        description="When scoring fails or times out: `mta` closes the connection so the MTA applies its own "
        "milter_default_action (Postfix) or F= flag (Sendmail); or answer accept / tempfail (451 4.7.1)",
    )
    milter_oversize: Literal["truncate", "tempfail"] = Field(
        default="truncate",
        description="A message over max_raw_bytes: score the first max_raw_bytes of it, or answer 451 4.7.1",
    )
    milter_max_connections: int = Field(
        default=512, ge=1, description="Open milter connections; more are closed at once (the MTA's default action)"
    )
    milter_allowed_clients: list[str] = Field(
        default_factory=lambda: ["127.0.0.0/8", "::1/128"],
        description="Networks (CIDR) whose MTAs may use the milter, which has no authentication of its own; "
        "others are disconnected",
    )

    @field_validator("milter_allowed_clients")
    @classmethod
    def _valid_networks(cls, value: list[str]) -> list[str]:
        from ipaddress import ip_network

        for network in value:
            try:
                ip_network(network, strict=False)
            except ValueError:
                raise ValueError(f"milter_allowed_clients: {network!r} is not a network (CIDR)") from None
        return value

    # -- Exim's spamd protocol (RSPAMC/1.3) and the Postfix policy gate (service.adapters.rspamc, .policy).
    # Neither protocol carries a token: bind loopback, or an address only the relay reaches.
    rspamc_listen: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT serving Exim's `spamd_address = HOST PORT variant=rspamd` (RSPAMC/1.3); unset: off",
    )
    rspamc_relay: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9._:@-]{1,128}$",
        description="The relay name of RSPAMC traffic (a request's MTA-Tag header names another)",
    )
    policy_listen: str | None = Field(
        default=None,
        pattern=r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$",
        description="HOST:PORT serving Postfix's policy delegation (check_policy_service inet:HOST:PORT); unset: off",
    )
    policy_relay: str = Field(
        default="default",
        pattern=r"^[A-Za-z0-9._:@-]{1,128}$",
        description="The relay name of policy requests (Postfix's policy_context attribute names another)",
    )
    policy_count_messages: bool = Field(
        default=True,
        description="Count each message at END-OF-MESSAGE in its account's windows and rate limit; false when the "
        "relay also scores its messages (milter, /checkv2, spamd), which counts them already",
    )

    relay_policy: RelayPolicy = Field(
        default_factory=RelayPolicy,
        description="How relays treat risky accounts, as JSON with any of the keys below: rate limits, locks, "
        "SMTP reply texts",
    )
    relay_policies: dict[str, dict[str, object]] = Field(
        default_factory=dict,
        description='Per-relay overrides of relay_policy, as JSON: {"relay-a": {"auto_lock": false}}',
    )

    def policy_for(self, relay: str) -> RelayPolicy:
        overrides = self.relay_policies.get(relay)
        return self.relay_policy.model_copy(update=overrides) if overrides else self.relay_policy

    @field_validator("notice_to")
    @classmethod
    def _notice_addresses(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for relay, addresses in value.items():
            if any("@" not in a for a in addresses):
                raise ValueError(f"notice_to[{relay!r}]: every entry is an email address")
        return value

    def notice_recipients(self, relay: str) -> list[str]:
        """The provider's addresses for a lock notice on `relay` (its own entry, else "*")."""
        return list(self.notice_to.get(relay, self.notice_to.get("*", [])))

    def customer_of(self, account: str) -> tuple[str, Customer] | None:
        """The customer an account belongs to, by the part after its @ (None: no customer has that domain)."""
        _, at, domain = account.rpartition("@")
        if not at:
            return None
        return next(((name, c) for name, c in self.customers.items() if c.owns(domain)), None)

    @field_validator("clamd")
    @classmethod
    def _clamd_address(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from service.scanning.clamd import ClamdAddress

        return str(ClamdAddress.parse(value))

    @field_validator("relay_policies")
    @classmethod
    def _valid_overrides(cls, value: dict[str, dict[str, object]]) -> dict[str, dict[str, object]]:
        for relay, overrides in value.items():
            try:
                RelayPolicy.model_validate(overrides)
            except ValueError as exc:
                raise ValueError(f"relay_policies[{relay!r}]: {exc}") from None
        return value

    @field_validator("reject_threshold")
    @classmethod
    def _reject_above_hold(cls, value: float, info: object) -> float:
        hold = getattr(info, "data", {}).get("hold_threshold")
        if hold is not None and value < hold:
            raise ValueError("reject_threshold must be at least hold_threshold")
        return value

    @property
    def lock_threshold(self) -> float:
        """Derived, not tuned: CUSUM's mean run to a false alarm matches the target false-lock rate."""
        from service.decision import lock_threshold_for

        return lock_threshold_for(self.target_false_locks_per_1000_account_days, self.messages_per_account_day)

    @property
    def decision_policy(self) -> DecisionPolicy:
        from service.decision import DecisionPolicy

        return DecisionPolicy(
            hold_threshold=self.hold_threshold,
            reject_threshold=self.reject_threshold,
            lock_threshold=self.lock_threshold,
            compromised_spam_share=self.compromised_spam_share,
            clean_spam_share=self.clean_spam_share,
            engagement_credit=self.engagement_credit,
            baseline_age_s=self.baseline_age_s,
            established_min_messages=self.established_min_messages,
            corroborating_engagement=self.corroborating_engagement,
            corroborating_bad_outcomes=self.corroborating_bad_outcomes,
            corroborating_recipients_1h=self.corroborating_recipients_1h,
            corroborating_domains_1h=self.corroborating_recipient_domains_1h,
            corroborating_client_ips_1h=self.corroborating_client_ips_1h,
            known_spam_probability=self.known_spam_probability,
            known_spam_min_similarity=self.known_spam_min_similarity,
        )

    @property
    def fingerprint_policy(self) -> FingerprintPolicy:
        from service.fingerprints.campaigns import CampaignPolicy
        from service.fingerprints.service import FingerprintPolicy

        return FingerprintPolicy(
            signature_capacity=self.signature_capacity,
            signature_ttl_seconds=self.signature_ttl_days * 86_400,
            min_similarity=self.signature_min_similarity,
            campaign=CampaignPolicy(
                window_seconds=self.campaign_window_s,
                min_accounts=self.campaign_min_accounts,
                uptick_ratio=self.campaign_uptick_ratio,
                min_similarity=self.signature_min_similarity,
                capacity=self.campaign_capacity,
            ),
            campaign_evidence=self.campaign_evidence,
            complaint_min_probability=self.signature_complaint_min_probability,
        )

    @property
    def tracking_uri(self) -> str:
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.state_dir / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def mlflow_artifact_root(self) -> Path | None:
        """Where runs keep their artifacts with the default local store (an MLflow server decides its own)."""
        return None if self.mlflow_tracking_uri else self.state_dir / "mlflow" / "artifacts"

    def model_registry(self) -> ModelRegistry:
        from models.registry import ModelRegistry

        return ModelRegistry(
            self.tracking_uri, self.registry_model_name, self.mlflow_experiment, self.mlflow_artifact_root
        )

    @property
    def sqlite_path(self) -> Path:
        if not self.database_url.startswith("sqlite:///"):
            raise ValueError(f"not a SQLite URL: {self.database_url}")
        return Path(self.database_url.removeprefix("sqlite:///"))

    @property
    def auth_enabled(self) -> bool:
        return bool(self.tokens)

    @property
    def named_tokens(self) -> list[NamedToken]:
        """The tokens, named, whichever form they were given in (`service.api.auth`)."""
        return named_tokens(self.tokens)

    @field_validator("tokens")
    @classmethod
    def _unique_tokens(
        cls, value: dict[str, list[Scope]] | list[NamedToken]
    ) -> dict[str, list[Scope]] | list[NamedToken]:
        if isinstance(value, list):
            for what, items in (
                ("name", [t.name for t in value]),
                ("token", [t.token.get_secret_value() for t in value]),
            ):
                if len(set(items)) != len(items):
                    raise ValueError(f"two tokens have the same {what}: every token needs its own")
        return value
