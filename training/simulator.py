"""A hosting provider in a box: accounts, their mail, compromises, and the feedback that follows.

`simulate(config)` returns a time-ordered event log (scored messages and feedback
events, in the shapes the API takes) with ground truth per message and per account.
It is seeded and deterministic. Message content is a reference into the shared corpora
(`content_ref`), resolved when the log is replayed: legitimate mail uses real ham,
spam episodes real spam, from disjoint pools: `pool="eval"` draws only from the
corpus test split the shipped model never saw, `pool="train"` from the rest.

Senders (shares of accounts): personal mailboxes, small businesses, newsletters,
transactional senders, contact-form PHP scripts, new accounts warming up.
Compromises: a stolen password used from many client IPs in a burst; a slow drip of
spam among the owner's mail; a PHP mailer script (a new identity in
`X-PHP-Originating-Script`); phishing to the account's own contacts; one campaign
through many accounts at once with the same content (each copy edited as spam runs
edit theirs: `training.mutations`). Legitimate surprises: a
newsletter's first big send, a holiday greeting to the whole address book, a
transactional spike, a user back from a holiday.

Two kinds of content (`SimulationConfig.content`):

- `corpus` (the default): the 2007 corpora above, as the README's figures were measured.
- `modern`: present-day mail from modern-train (`training.modern_corpus`). Shops and SaaS
  accounts send fills of their own 2-5 templates from one open-source project at 20-300
  a day; listmonk newsletters; WordPress/WooCommerce PHP scripts and contact forms;
  phpBB/Lobsters forum notifications; personal mailboxes keep the corpus ham (there is
  no present-day personal ham). Hijacks send present-day spam (contacts get phishing);
  fraudulent sign-ups (`fraud_signup`) are new accounts that spam from their first
  message. Refs are `modern/<file>`, resolved at replay through `modern_message` with
  the sending identity as salt. The held-out split is the shipped model's
  (`modern_pool_of`): ham by template (`source_path`), spam by file, a quarter of each
  source project in `eval`, so a model trained on `pool="train"` never saw an eval template.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DAY = 86_400.0
HOUR = 3_600.0
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()  # a Monday

KINDS = {  # kind: share of accounts
    "personal": 0.50,
    "business": 0.15,
    "newsletter": 0.05,
    "transactional": 0.05,
    "php_form": 0.15,
    "new_account": 0.10,
}
EPISODES = ("stolen_password_burst", "slow_drip", "php_mailer", "contact_phishing", "campaign")
SOFT_BOUNCE_RATE = 0.003
CLICK_SHARE_OF_OPENS = 0.15
SURPRISES = ("newsletter_first_send", "holiday_greeting", "transactional_spike", "back_from_holiday")


@dataclass(slots=True)
class SimulationConfig:
    accounts: int = 2_000
    days: int = 7
    relays: int = 3
    seed: int = 1
    pool: str = "eval"  # eval: content the shipped model never trained on (corpus test split, modern_pool_of); train
    content: str = "corpus"  # corpus: the 2007 corpora; modern: present-day mail (modern-train)
    compromised_share: float = 0.04
    campaign_accounts: int = 12
    surprise_share: float = 0.04
    fraud_share: float = 0.03  # modern only: accounts that are fraudulent sign-ups


@dataclass(slots=True)
class Account:
    name: str
    relay: str
    kind: str
    client_ip: str
    contacts: list[str]
    start_day: int = 0
    away: tuple[float, float] | None = None  # a holiday: no mail between these times
    episodes: list[dict[str, Any]] = field(default_factory=list)
    surprises: list[str] = field(default_factory=list)
    # modern content: the templates the account sends (each a list of fills), how often, at what rate a day
    templates: list[list[str]] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    rate: float = 0.0
    fraudulent: bool = False
    repo: str = ""  # modern content: the source project an application sender runs
    send_day: int = 1  # a newsletter's campaign weekday (day % 7)


@dataclass(slots=True)
class ContentPools:
    ham: list[str]
    spam: list[str]
    campaign: list[str] = field(default_factory=list)  # spam with a message to carry (see content_pools)


# A campaign's content carries a message (an offer, a phish, a scam story). Spam that is
# only an image or a few words of hash-busting noise has nothing a text fingerprint can
# match; it is left to the per-account decision, which every other episode exercises.
CAMPAIGN_MIN_WORDS = 40


def content_pools(frame: pd.DataFrame, pool: str) -> ContentPools:
    """Corpus references for ham and spam, from the test split (eval) or the rest (train)."""
    chosen = frame[(frame["split"] == "test")] if pool == "eval" else frame[frame["split"] != "test"]
    refs = chosen["source"] + "/" + chosen["name"]
    spam = chosen["label"] == 1
    wordy = chosen["text_words_log"] >= math.log1p(CAMPAIGN_MIN_WORDS)
    return ContentPools(
        ham=sorted(refs[chosen["label"] == 0]), spam=sorted(refs[spam]), campaign=sorted(refs[spam & wordy])
    )


class _Simulation:
    def __init__(self, config: SimulationConfig, pools: ContentPools) -> None:
        self.config = config
        self.pools = pools
        self.rng = np.random.default_rng(config.seed)
        self.end = START + config.days * DAY
        self.events: list[tuple[float, int, dict[str, Any]]] = []
        self.sequence = 0
        self.message_count = 0
        self.last_spam_at: dict[str, float] = {}

    # -- small helpers
    def _emit(self, at: float, event: dict[str, Any]) -> None:
        self.events.append((at, self.sequence, event))
        self.sequence += 1

    def _ip(self) -> str:
        a, b, c = self.rng.integers(1, 254, size=3)
        return f"{(11, 23, 37, 41, 59, 77, 89, 101)[a % 8]}.{a}.{b}.{c}"

    def _address(self, domain_pool: int = 400) -> str:
        user = int(self.rng.integers(0, 10**6))
        domain = int(self.rng.integers(0, domain_pool))
        return f"user{user}@domain{domain}.example"

    def _office_time(self, day: int) -> float:
        hour = float(np.clip(self.rng.normal(13, 3), 7, 21))
        return START + day * DAY + hour * HOUR + float(self.rng.uniform(0, HOUR))

    def _any_time(self, day: int) -> float:
        return START + day * DAY + float(self.rng.uniform(0, DAY))

    def accounts(self) -> list[Account]:
        kinds = list(KINDS)
        shares = np.array(list(KINDS.values()))
        chosen = self.rng.choice(len(kinds), size=self.config.accounts, p=shares / shares.sum())
        accounts = []
        for i, k in enumerate(chosen):
            kind = kinds[k]
            relay = f"relay-{i % self.config.relays}"
            contacts_n = {"personal": 25, "business": 200, "newsletter": 1500, "php_form": 2, "new_account": 30}.get(
                kind, 0
            )
            name = (
                f"site{i}:/home/site{i}/public_html/contact.php" if kind == "php_form" else f"u{i}@host{i % 97}.example"
            )
            account = Account(
                name=name,
                relay=relay,
                kind=kind,
                client_ip=self._ip(),
                contacts=[self._address() for _ in range(contacts_n)],
                start_day=int(self.rng.integers(0, max(1, self.config.days - 1))) if kind == "new_account" else 0,
            )
            accounts.append(account)
        return accounts

    # -- legitimate traffic
    def message(
        self,
        account: Account,
        at: float,
        recipients: list[str],
        spam: bool,
        *,
        identity: str | None = None,
        client_ip: str | None = None,
        content_ref: str | None = None,
        episode: str | None = None,
        php_script: str | None = None,
        invalid_share: float = 0.005,
        complaint_rate: float = 0.0005,
        reply_rate: float = 0.0,
        open_rate: float = 0.0,
        unsubscribe_rate: float = 0.0,
        mutate: bool = False,
    ) -> str | None:
        if at >= self.end or at < START:
            return None
        if account.away and account.away[0] <= at < account.away[1] and not spam:
            return None
        pool = self.pools.spam if spam else self.pools.ham
        ref = content_ref or pool[int(self.rng.integers(0, len(pool)))]
        self.message_count += 1
        message_id = f"<sim{self.config.seed}-{self.message_count}@{account.relay}.sim>"
        request: dict[str, Any] = {
            "message_id": message_id,
            "timestamp": datetime.fromtimestamp(at, UTC).isoformat(),
            "relay": account.relay,
            "client_ip": client_ip or account.client_ip,
            "envelope_from": account.name if "@" in account.name else f"www-data@{account.relay}.sim",
            "recipients": recipients,
        }
        if php_script is not None or account.kind == "php_form":
            request["php_script"] = php_script or account.name
        else:
            request["sasl_username"] = identity or account.name
        truth_account = php_script or (identity or account.name)
        if spam:
            self.last_spam_at[truth_account] = max(at, self.last_spam_at.get(truth_account, at))
        self._emit(
            at,
            {
                "type": "message",
                "message": request,
                "content_ref": ref,
                **({"mutation": int(self.rng.integers(0, 2**31))} if mutate else {}),
                "truth": {"spam": int(spam), "episode": episode, "account": truth_account, "kind": account.kind},
            },
        )
        self.feedback(
            message_id, at, recipients, invalid_share, complaint_rate, reply_rate, open_rate, unsubscribe_rate
        )
        return message_id

    def feedback(
        self,
        message_id: str,
        at: float,
        recipients: list[str],
        invalid_share: float,
        complaint_rate: float,
        reply_rate: float,
        open_rate: float,
        unsubscribe_rate: float = 0.0,
    ) -> None:
        rng = self.rng
        for n, recipient in enumerate(recipients):
            base = {"message_id": message_id, "recipient": recipient}
            event_id = f"{message_id}/{n}"
            if rng.random() < invalid_share:
                delay = float(rng.uniform(30, 1_800))
                self._feedback(
                    at + delay,
                    {
                        **base,
                        "event_id": event_id + "/b",
                        "type": "bounce",
                        "detail": {"status": "5.1.1", "smtp_code": 550},
                    },
                )
                continue
            if rng.random() < SOFT_BOUNCE_RATE:  # a full mailbox
                soft = {"status": "4.2.2", "smtp_code": 452}
                bounce = {**base, "event_id": event_id + "/s", "type": "bounce", "detail": soft}
                self._feedback(at + float(rng.uniform(60, 3_600)), bounce)
                continue
            self._feedback(at + float(rng.uniform(1, 120)), {**base, "event_id": event_id + "/d", "type": "delivered"})
            if rng.random() < complaint_rate:
                self._feedback(
                    at + float(rng.uniform(HOUR, 2 * DAY)), {**base, "event_id": event_id + "/c", "type": "complaint"}
                )
            if rng.random() < reply_rate:
                self._feedback(
                    at + float(rng.uniform(600, DAY)), {**base, "event_id": event_id + "/r", "type": "reply"}
                )
            if rng.random() < open_rate:
                opened = at + float(rng.uniform(60, 12 * HOUR))
                self._feedback(opened, {**base, "event_id": event_id + "/o", "type": "open"})
                if rng.random() < CLICK_SHARE_OF_OPENS:
                    clicked = opened + float(rng.uniform(5, 600))
                    self._feedback(clicked, {**base, "event_id": event_id + "/k", "type": "click"})
            if rng.random() < unsubscribe_rate:
                left = at + float(rng.uniform(HOUR, DAY))
                self._feedback(left, {**base, "event_id": event_id + "/u", "type": "unsubscribe"})

    def _feedback(self, at: float, event: dict[str, Any]) -> None:
        if at < self.end:
            event["timestamp"] = datetime.fromtimestamp(at, UTC).isoformat()
            self._emit(at, {"type": "feedback", "event": event})

    def legitimate(self, account: Account) -> None:
        rng = self.rng
        for day in range(account.start_day, self.config.days):
            weekday = (day % 7) < 5
            if account.kind == "personal":
                for _ in range(rng.poisson(4 if weekday else 1.5)):
                    to = list(rng.choice(account.contacts, size=int(rng.integers(1, 3)), replace=False))
                    self.message(account, self._office_time(day), to, False, reply_rate=0.3, open_rate=0.6)
            elif account.kind == "business":
                for _ in range(rng.poisson(20 if weekday else 3)):
                    to = list(rng.choice(account.contacts, size=int(rng.integers(1, 5)), replace=False))
                    self.message(account, self._office_time(day), to, False, reply_rate=0.15, open_rate=0.5)
            elif account.kind == "newsletter" and day % 7 == 1:
                at = START + day * DAY + 9 * HOUR
                for chunk in range(0, len(account.contacts), 50):
                    to = account.contacts[chunk : chunk + 50]
                    self.message(
                        account,
                        at + chunk * 2,
                        to,
                        False,
                        invalid_share=0.01,
                        complaint_rate=0.001,
                        open_rate=0.25,
                        unsubscribe_rate=0.002,
                    )
            elif account.kind == "transactional":
                for _ in range(rng.poisson(60)):
                    self.message(
                        account, self._any_time(day), [self._address(4_000)], False, invalid_share=0.01, open_rate=0.4
                    )
            elif account.kind == "php_form":
                for _ in range(rng.poisson(3)):
                    self.message(account, self._any_time(day), account.contacts[:1], False, reply_rate=0.1)
            elif account.kind == "new_account":
                ramp = day - account.start_day + 1
                for _ in range(rng.poisson(min(2 * ramp, 10))):
                    to = list(rng.choice(account.contacts, size=int(rng.integers(1, 3)), replace=False))
                    self.message(account, self._office_time(day), to, False, reply_rate=0.2, open_rate=0.5)

    # -- legitimate surprises
    def surprise(self, account: Account) -> None:
        rng = self.rng
        day = int(rng.integers(1, max(2, self.config.days)))
        if account.kind == "newsletter":
            account.surprises.append("newsletter_first_send")
            at = START + day * DAY + 10 * HOUR
            big = [self._address(2_000) for _ in range(3_000)]
            for chunk in range(0, len(big), 50):
                self.message(
                    account,
                    at + chunk,
                    big[chunk : chunk + 50],
                    False,
                    invalid_share=0.03,
                    complaint_rate=0.002,
                    open_rate=0.2,
                )
        elif account.kind in ("personal", "business", "new_account") and account.contacts:
            if rng.random() < 0.5:
                account.surprises.append("holiday_greeting")
                at = self._office_time(day)
                for chunk in range(0, len(account.contacts), 20):
                    self.message(
                        account, at + chunk, account.contacts[chunk : chunk + 20], False, reply_rate=0.2, open_rate=0.7
                    )
            else:
                account.surprises.append("back_from_holiday")
                account.away = (START, START + day * DAY)
        elif account.kind == "transactional":
            account.surprises.append("transactional_spike")
            at = START + day * DAY + 12 * HOUR
            for k in range(600):
                self.message(account, at + k * 6, [self._address(4_000)], False, invalid_share=0.01, open_rate=0.4)

    # -- compromises
    def episode(self, account: Account, kind: str, start: float, campaign_ref: str | None = None) -> None:
        rng = self.rng
        episode_id = f"{kind}:{account.name}"
        record: dict[str, Any] = {"kind": kind, "start": start, "identity": account.name}
        if kind == "stolen_password_burst":
            ips = [self._ip() for _ in range(40)]
            for k in range(int(rng.integers(150, 600))):
                to = [self._address(5_000) for _ in range(int(rng.integers(5, 30)))]
                self.message(
                    account,
                    start + k * float(rng.uniform(5, 40)),
                    to,
                    True,
                    client_ip=str(rng.choice(ips)),
                    episode=episode_id,
                    invalid_share=0.25,
                    complaint_rate=0.01,
                )
        elif kind == "slow_drip":
            for day in range(self.config.days):
                at_day = START + day * DAY
                if at_day + DAY < start:
                    continue
                for _ in range(rng.poisson(8)):
                    at = max(start, self._office_time(day))
                    to = [self._address(5_000) for _ in range(int(rng.integers(1, 4)))]
                    self.message(account, at, to, True, episode=episode_id, invalid_share=0.15, complaint_rate=0.01)
        elif kind == "php_mailer":
            script = (
                f"{account.name.split(':', 1)[0]}:/home/{account.name.split(':', 1)[0]}/public_html/wp-content/"
                "uploads/.cache/mailer.php"
            )
            record["identity"] = script
            for k in range(int(rng.integers(200, 800))):
                self.message(
                    account,
                    start + k * float(rng.uniform(2, 20)),
                    [self._address(5_000)],
                    True,
                    php_script=script,
                    episode=f"{kind}:{script}",
                    invalid_share=0.3,
                    complaint_rate=0.01,
                )
        elif kind == "contact_phishing":
            for k, contact in enumerate(account.contacts):
                self.message(
                    account,
                    start + k * float(rng.uniform(20, 120)),
                    [contact],
                    True,
                    episode=episode_id,
                    invalid_share=0.02,
                    complaint_rate=0.03,
                )
        elif kind == "campaign":
            for k in range(int(rng.integers(40, 120))):
                to = [self._address(5_000) for _ in range(int(rng.integers(3, 10)))]
                self.message(
                    account,
                    start + k * float(rng.uniform(10, 60)),
                    to,
                    True,
                    content_ref=campaign_ref,
                    episode=episode_id,
                    invalid_share=0.2,
                    complaint_rate=0.01,
                    mutate=True,
                )
        record["end"] = self.last_spam_at.get(record["identity"], start)
        account.episodes.append(record)

    def episode_kinds(self, account: Account) -> list[str]:
        """The compromises that fit an account: a PHP mailer for a script, contact phishing for a mailbox."""
        kinds = (
            ["php_mailer"]
            if account.kind == "php_form"
            else [k for k in EPISODES if k not in ("php_mailer", "campaign")]
        )
        if account.kind not in ("personal", "business", "new_account"):
            kinds = [k for k in kinds if k != "contact_phishing"] or kinds
        return kinds

    def campaign_ok(self, account: Account) -> bool:
        return account.kind != "php_form"

    def fraud(self, accounts: list[Account]) -> None:
        """Fraudulent sign-ups (modern content only)."""

    def run(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        accounts = self.accounts()
        for account in accounts:
            self.legitimate(account)
        n = len(accounts)
        picked = [i for i in self.rng.permutation(n) if not accounts[i].fraudulent]
        compromised = picked[: int(n * self.config.compromised_share)]
        surprised = picked[len(compromised) : len(compromised) + int(n * self.config.surprise_share)]
        for i in surprised:
            self.surprise(accounts[i])
        for i in compromised:
            account = accounts[i]
            start = START + float(self.rng.uniform(0.5, max(1.0, self.config.days - 1.5))) * DAY
            self.episode(account, str(self.rng.choice(self.episode_kinds(account))), start)
        self.fraud(accounts)
        campaign_pool = [a for j, a in enumerate(accounts) if j not in set(compromised) and self.campaign_ok(a)]
        if campaign_pool and self.config.campaign_accounts:
            start = START + float(self.rng.uniform(1.0, max(1.5, self.config.days - 1))) * DAY
            candidates = self.pools.campaign or self.pools.spam
            ref = candidates[int(self.rng.integers(0, len(candidates)))]
            chosen = self.rng.choice(
                len(campaign_pool), size=min(self.config.campaign_accounts, len(campaign_pool)), replace=False
            )
            for j in chosen:
                self.episode(campaign_pool[j], "campaign", start + float(self.rng.uniform(0, 1_800)), ref)
        self.events.sort(key=lambda e: (e[0], e[1]))
        truth = [
            {
                "relay": a.relay,
                "account": a.name,
                "kind": a.kind,
                "episodes": a.episodes,
                "surprises": a.surprises,
                "active_from": START + a.start_day * DAY,
                **({"repo": a.repo} if a.repo else {}),
            }
            for a in accounts
        ]
        return [e for _, _, e in self.events], truth


# -- present-day content (content="modern")

CONTENTS = ("corpus", "modern")
MODERN_PREFIX = "modern/"  # a modern ref: "modern/" + the manifest's file, e.g. modern/ham/00012.eml
MODERN_KINDS = {  # kind: share of accounts (fraudulent sign-ups take `fraud_share` on top, then all are rescaled)
    "personal": 0.34,
    "business": 0.10,
    "shop": 0.10,
    "saas": 0.10,
    "newsletter": 0.04,
    "wordpress": 0.08,
    "php_form": 0.08,
    "forum": 0.04,
    "new_account": 0.09,
}
MODERN_EPISODES = (*EPISODES, "fraud_signup")
PHP_KINDS = ("php_form", "wordpress")
MAILBOX_KINDS = ("personal", "business", "new_account")
WOOCOMMERCE_SCRIPT = "wp-content/plugins/woocommerce/includes/class-wc-emails.php"
# The open-source projects each kind of sender runs (modern-train's `source_repo`).
APP_REPOS = {
    "shop": (
        "woocommerce/woocommerce",
        "opencart/opencart",
        "saleor/saleor",
        "Sylius/Sylius",
        "solidusio/solidus",
        "vendure-ecommerce/vendure",
    ),
    "saas": (
        "bitwarden/server",
        "dani-garcia/vaultwarden",
        "pennersr/django-allauth",
        "ory/kratos",
        "authelia/authelia",
        "firefly-iii/firefly-iii",
        "kimai/kimai",
        "redmine/redmine",
        "osTicket/osTicket",
        "freescout-helpdesk/freescout",
        "matrix-org/synapse",
    ),
    "forum": ("phpbb/phpbb", "lobsters/lobsters"),
    "newsletter": ("knadh/listmonk",),
    "wordpress": ("woocommerce/woocommerce",),
}
LISTMONK_CAMPAIGNS = ("default.tpl", "default-archive.tpl")  # the campaign layouts; the rest is daily mail
NEW_APP_SHARE = 0.4  # of legitimate new accounts: a new shop or app warming up rather than a new mailbox
POOLS = ("eval", "train")


def modern_pool_of(manifest: pd.DataFrame) -> pd.Series:
    """`eval` or `train` per message of modern-train (aligned with `manifest`, from `load_manifest`).

    The split is the shipped model's own (`training.modern_corpus.template_pools`): ham by
    template (all fills of one `source_path` go together), a quarter of each source
    project's templates (at least one) held out; spam by file, a quarter held out. The
    shipped model never trains on `eval`, so an `eval` simulation sends templates it
    never saw, and every project is in both pools.
    """
    from training.modern_corpus import template_pools

    return manifest["template"].map(template_pools(manifest))


def _rank(key: str) -> str:
    return hashlib.sha256(f"outguard-sim:{key}".encode()).hexdigest()


@dataclass(slots=True)
class ModernPools(ContentPools):
    """Corpus ham for mailboxes (`ham`), modern spam (`spam`, `campaign`, `phishing`) and modern templates."""

    templates: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # source_repo: template: refs
    phishing: list[str] = field(default_factory=list)
    newsletters: list[str] = field(default_factory=list)  # listmonk campaigns (LISTMONK_CAMPAIGNS)


def modern_pools(frame: pd.DataFrame, root: Path, pool: str) -> ModernPools:
    """The pool's share of modern-train (`modern_pool_of`), and the corpus pool's ham for personal mail."""
    from training.modern_corpus import load_manifest, modern_parsed

    if pool not in POOLS:
        raise ValueError(f"pool is one of {POOLS}")
    manifest = load_manifest(root)
    chosen = manifest[modern_pool_of(manifest) == pool]
    refs = MODERN_PREFIX + chosen["file"]
    ham, spam = chosen["label"] == 0, chosen["label"] == 1
    templates: dict[str, dict[str, list[str]]] = {}
    for (repo, template), group in chosen[ham].groupby(["source_repo", "template"], sort=True):
        templates.setdefault(str(repo), {})[str(template)] = sorted(MODERN_PREFIX + group["file"])
    listmonk = chosen[ham & (chosen["source_repo"] == "knadh/listmonk") & (chosen["category"] == "newsletter")]
    campaigns = listmonk[listmonk["source_path"].str.endswith(LISTMONK_CAMPAIGNS)]
    if campaigns.empty:  # the pool holds no campaign layout: its opt-in confirmation stands in (see the README)
        campaigns = listmonk
    # A campaign carries a message a fingerprint can match (see CAMPAIGN_MIN_WORDS): the first
    # 40 wordy spam files in hash order, not the whole pool, which would mean parsing thousands.
    wordy: list[str] = []
    for file in sorted(chosen.loc[spam, "file"], key=_rank):
        if len(modern_parsed(root, file, 1).text.split()) >= CAMPAIGN_MIN_WORDS:
            wordy.append(MODERN_PREFIX + file)
            if len(wordy) == 40:
                break
    return ModernPools(
        ham=content_pools(frame, pool).ham,
        spam=sorted(refs[spam]),
        campaign=sorted(wordy),
        templates=templates,
        phishing=sorted(refs[spam & (chosen["category"] == "phishing")]),
        newsletters=sorted(MODERN_PREFIX + campaigns["file"]),
    )


def load_pools(config: SimulationConfig, data_dir: Path, cache_dir: Path) -> ContentPools:
    """The content a simulation with `config` draws from (the corpora, and modern-train for modern)."""
    from training.dataset import build_corpus_dataset

    frame = build_corpus_dataset(data_dir, cache_dir)
    if config.content == "corpus":
        return content_pools(frame, config.pool)
    from training.modern_corpus import ensure_modern_extracted

    return modern_pools(frame, ensure_modern_extracted(data_dir, cache_dir), config.pool)


class _ModernSimulation(_Simulation):
    pools: ModernPools

    def _addresses(self, n: int, domain_pool: int = 400) -> list[str]:
        users = self.rng.integers(0, 10**6, size=n)
        domains = self.rng.integers(0, domain_pool, size=n)
        return [f"user{u}@domain{d}.example" for u, d in zip(users, domains, strict=True)]

    def _log_uniform(self, low: float, high: float) -> float:
        return float(np.exp(self.rng.uniform(np.log(low), np.log(high))))

    def accounts(self) -> list[Account]:
        rng = self.rng
        kinds = [*MODERN_KINDS, "fraud_signup"]
        shares = np.array([*MODERN_KINDS.values(), self.config.fraud_share])
        chosen = rng.choice(len(kinds), size=self.config.accounts, p=shares / shares.sum())
        late_start = max(1, self.config.days - 1)
        accounts = []
        for i, k in enumerate(chosen):
            fraudulent = kinds[k] == "fraud_signup"
            kind = "new_account" if fraudulent else kinds[k]  # to the provider, a sign-up like any other
            if kind == "php_form":
                name = f"site{i}:/home/site{i}/public_html/contact.php"
            elif kind == "wordpress":
                name = f"site{i}:/home/site{i}/public_html/{WOOCOMMERCE_SCRIPT}"
            else:
                name = f"u{i}@host{i % 97}.example"
            contacts = {"personal": 25, "business": 200, "php_form": 2, "new_account": 30}.get(kind, 0)
            if kind == "newsletter":
                contacts = int(rng.integers(300, 3_000))
            elif kind == "forum":
                contacts = int(rng.integers(150, 2_000))
            account = Account(
                name=name,
                relay=f"relay-{i % self.config.relays}",
                kind=kind,
                client_ip=self._ip(),
                contacts=[] if fraudulent else self._addresses(contacts),
                start_day=int(rng.integers(0, late_start)) if kind == "new_account" else 0,
                fraudulent=fraudulent,
            )
            if not fraudulent:
                self.equip(account)
            accounts.append(account)
        return accounts

    def equip(self, account: Account) -> None:
        """An application sender's project and its own few templates (2-5; a forum 3-8; a newsletter all)."""
        rng = self.rng
        repos = APP_REPOS.get(account.kind, ())
        rate = {"shop": (20, 300), "saas": (20, 300), "wordpress": (3, 60), "forum": (10, 150), "newsletter": (1, 4)}
        bounds = rate.get(account.kind)
        if account.kind == "new_account" and rng.random() < NEW_APP_SHARE:
            repos, bounds = APP_REPOS["shop"] + APP_REPOS["saas"], (5, 40)
        repos = tuple(r for r in repos if self.pools.templates.get(r))
        if not repos or bounds is None:
            return
        account.repo = repos[int(rng.integers(0, len(repos)))]
        templates = self.pools.templates[account.repo]
        names = sorted(templates)
        if account.kind == "newsletter":
            names = [n for n in names if not n.endswith(LISTMONK_CAMPAIGNS)]  # daily: opt-in confirmations and such
            picked = list(range(len(names)))
            account.send_day = int(rng.integers(0, 7))  # the weekday of its campaign
        else:
            low, high = (3, 9) if account.kind == "forum" else (2, 6)
            size = min(int(rng.integers(low, high)), len(names))
            picked = sorted(int(j) for j in rng.choice(len(names), size=size, replace=False))
        account.templates = [templates[names[j]] for j in picked]
        account.weights = [float(w) for w in rng.dirichlet(np.ones(len(picked)))] if picked else []
        account.rate = self._log_uniform(*bounds)

    # -- legitimate traffic
    def _template_ref(self, account: Account) -> str:
        fills = account.templates[int(self.rng.choice(len(account.templates), p=account.weights))]
        return fills[int(self.rng.integers(0, len(fills)))]

    def _recipient(self, account: Account) -> str:
        """A forum writes to its members; a shop to customers, a third of them returning."""
        if account.kind == "forum" or (account.contacts and self.rng.random() < 0.3):
            return account.contacts[int(self.rng.integers(0, len(account.contacts)))]
        customer = self._address(4_000)
        if len(account.contacts) < 5_000:
            account.contacts.append(customer)
        return customer

    def app_message(self, account: Account, at: float) -> None:
        self.message(
            account,
            at,
            [self._recipient(account)],
            False,
            content_ref=self._template_ref(account),
            invalid_share=0.01,
            reply_rate=0.02,
            open_rate=0.3 if account.kind == "forum" else 0.4,
        )

    def campaign_send(self, account: Account, at: float, recipients: list[str], *, first: bool = False) -> None:
        """One listmonk campaign to a list, in chunks of 50 recipients, the same content to all."""
        if not self.pools.newsletters:
            return
        ref = self.pools.newsletters[int(self.rng.integers(0, len(self.pools.newsletters)))]
        for chunk in range(0, len(recipients), 50):
            self.message(
                account,
                at + chunk * (1 if first else 2),
                recipients[chunk : chunk + 50],
                False,
                content_ref=ref,
                invalid_share=0.03 if first else 0.01,
                complaint_rate=0.002 if first else 0.001,
                open_rate=0.2 if first else 0.25,
                unsubscribe_rate=0.002,
            )

    def legitimate(self, account: Account) -> None:
        if account.fraudulent:
            return
        if not account.templates and account.kind != "newsletter":
            super().legitimate(account)  # mailboxes and contact forms: the corpus ham, as with corpus content
            return
        rng = self.rng
        for day in range(account.start_day, self.config.days):
            if account.kind == "newsletter":
                if day % 7 == account.send_day:
                    self.campaign_send(account, START + day * DAY + 9 * HOUR, account.contacts)
                if account.templates:  # opt-in confirmations and the like
                    for _ in range(rng.poisson(account.rate)):
                        self.app_message(account, self._any_time(day))
                continue
            rate = account.rate * (1.0 if (day % 7) < 5 else 0.7)
            if account.kind == "new_account":
                rate = account.rate * min(1.0, (day - account.start_day + 1) / 4)
            for _ in range(rng.poisson(rate)):
                at = self._office_time(day) if rng.random() < 0.6 else self._any_time(day)
                self.app_message(account, at)

    def surprise(self, account: Account) -> None:
        if account.kind == "newsletter":
            account.surprises.append("newsletter_first_send")
            day = int(self.rng.integers(1, max(2, self.config.days)))
            self.campaign_send(account, START + day * DAY + 10 * HOUR, self._addresses(3_000, 2_000), first=True)
        elif account.templates:  # a sale, a launch, a wave of password resets
            account.surprises.append("transactional_spike")
            day = int(self.rng.integers(1, max(2, self.config.days)))
            at = START + day * DAY + 12 * HOUR
            for k in range(600):
                self.app_message(account, at + k * 6)
        else:
            super().surprise(account)

    # -- compromises and fraud
    def episode_kinds(self, account: Account) -> list[str]:
        if account.kind in PHP_KINDS:
            return ["php_mailer"]
        kinds = ["stolen_password_burst", "slow_drip"]
        if account.kind in MAILBOX_KINDS and account.contacts:
            kinds.append("contact_phishing")
        return kinds

    def campaign_ok(self, account: Account) -> bool:
        return account.kind not in PHP_KINDS and not account.fraudulent

    def fraud(self, accounts: list[Account]) -> None:
        for account in accounts:
            if account.fraudulent:
                self.episode(account, "fraud_signup", self._any_time(account.start_day))

    def episode(self, account: Account, kind: str, start: float, campaign_ref: str | None = None) -> None:
        if kind not in ("contact_phishing", "fraud_signup"):
            super().episode(account, kind, start, campaign_ref)
            return
        rng = self.rng
        episode_id = f"{kind}:{account.name}"
        if kind == "contact_phishing":  # one present-day lure to the whole address book, edited per copy
            phishing = self.pools.phishing or self.pools.spam
            lure = phishing[int(rng.integers(0, len(phishing)))]
            for k, contact in enumerate(account.contacts):
                self.message(
                    account,
                    start + k * float(rng.uniform(20, 120)),
                    [contact],
                    True,
                    content_ref=lure,
                    episode=episode_id,
                    invalid_share=0.02,
                    complaint_rate=0.03,
                    mutate=True,
                )
        else:  # a fraudulent sign-up: spam from the first message, mostly a few messages edited per copy
            spam = self.pools.spam
            bases = [spam[int(rng.integers(0, len(spam)))] for _ in range(int(rng.integers(1, 4)))]
            ips = [account.client_ip, *(self._ip() for _ in range(int(rng.integers(0, 4))))]
            invalid_share = float(rng.uniform(0.2, 0.5))
            mean_gap = float(rng.uniform(5, 120))
            at = start
            for _ in range(int(rng.integers(60, 600))):
                repeat = bool(rng.random() < 0.8)
                self.message(
                    account,
                    at,
                    self._addresses(int(rng.integers(1, 25)), 5_000),
                    True,
                    client_ip=ips[int(rng.integers(0, len(ips)))],
                    content_ref=bases[int(rng.integers(0, len(bases)))] if repeat else None,
                    episode=episode_id,
                    invalid_share=invalid_share,
                    complaint_rate=0.01,
                    mutate=repeat,
                )
                at += mean_gap * float(rng.exponential(1.0))
        account.episodes.append(
            {"kind": kind, "start": start, "identity": account.name, "end": self.last_spam_at.get(account.name, start)}
        )


def simulate(config: SimulationConfig, pools: ContentPools) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(time-ordered events, per-account truth)."""
    if config.content not in CONTENTS:
        raise ValueError(f"content is one of {CONTENTS}")
    if config.content == "modern":
        if not isinstance(pools, ModernPools):
            raise TypeError("modern content draws from modern_pools(...) (see load_pools)")
        return _ModernSimulation(config, pools).run()
    return _Simulation(config, pools).run()


def fingerprint(events: list[dict[str, Any]]) -> str:
    """A digest of a log: the same seed must give the same one."""
    import orjson

    digest = hashlib.sha256()
    for event in events:
        digest.update(orjson.dumps(event, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def iter_jsonl(events: list[dict[str, Any]]) -> Iterator[bytes]:
    import orjson

    for event in events:
        yield orjson.dumps(event) + b"\n"


def write_log(
    folder: Path, events: list[dict[str, Any]], truth: list[dict[str, Any]], config: SimulationConfig
) -> Path:
    """What `outguard simulate` writes and `outguard replay` reads: events.jsonl and truth.json."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "events.jsonl").open("wb") as handle:
        handle.writelines(iter_jsonl(events))
    meta = {"accounts": config.accounts, "days": config.days, "relays": config.relays, "seed": config.seed}
    content = {"content": config.content} if config.content != "corpus" else {}  # corpus logs stay as they were
    (folder / "truth.json").write_text(
        json.dumps({"config": {**meta, "pool": config.pool, **content}, "accounts": truth}, indent=1)
    )
    return folder
