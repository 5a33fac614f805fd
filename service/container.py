"""The wired service: settings, model, stores, scorer and metrics, built once per app."""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from service.feedback.ingest import FeedbackIngestor
from service.fingerprints.campaigns import CampaignTracker
from service.fingerprints.redis_content import RedisContentState
from service.fingerprints.service import FingerprintService
from service.fingerprints.state import ContentState, LocalContentState
from service.metrics import Metrics
from service.model_runtime import ModelHolder, ModelManager, publish
from service.notify import Cooldown, Cooldowns, LockNoticeHook, Notifier, RedisCooldown
from service.reports.incident import IncidentSources
from service.reports.links import ReportLinks
from service.reports.notice import LockNotices
from service.scanning import MalwareScanner
from service.scoring import Scorer
from service.settings import Settings
from service.stores import AccountStateStore, BehaviourStore, EngagementStore, MessageIndex, degraded
from service.stores.checkpoint import FILE_NAME as CHECKPOINT_FILE
from service.stores.checkpoint import Checkpoint, ledger_times
from service.stores.database import Database
from service.stores.degraded import SharedStateHealth
from service.stores.events import SqlEventLog
from service.stores.feedback import SqlFeedbackLog, SqlLabelStore
from service.stores.ledger import SqlAccountLedger
from service.stores.memory import (
    MemoryAccountStateStore,
    MemoryBehaviourStore,
    MemoryEngagementStore,
    MemoryMessageIndex,
)
from service.stores.redis_state import (
    RedisAccountStateStore,
    RedisBehaviourStore,
    RedisEngagementStore,
    RedisMessageIndex,
)
from service.stores.rules import SqlIdentityRules
from service.stores.secrets import SqlServiceSettings
from service.stores.signatures import SqlSignatureStore
from service.webhooks.outbox import Dispatcher, WebhookNotifier, WebhookStore

log = logging.getLogger(__name__)

RECIPIENT_KEY_FILE = "recipient-hash.key"  # before the key moved to the database: taken over from here once


@dataclass
class Container:
    settings: Settings
    model: ModelHolder
    database: Database
    events: SqlEventLog
    feedback: SqlFeedbackLog
    labels: SqlLabelStore
    rules: SqlIdentityRules
    ledger: SqlAccountLedger
    webhooks: WebhookStore
    dispatcher: Dispatcher
    behaviour: BehaviourStore
    engagement: EngagementStore
    accounts: AccountStateStore
    metrics: Metrics
    scorer: Scorer
    ingestor: FeedbackIngestor
    models: ModelManager
    links: ReportLinks  # signed incident-report links and dashboard links (notices, digests, webhooks)
    notices: LockNotices  # lock notices by mail, sent by the dispatcher
    fingerprints: FingerprintService | None = None
    shared: SharedStateHealth | None = None  # with Redis: its health, for readiness and recovery
    scanner: MalwareScanner | None = None  # with OUTGUARD_CLAMD: malware scanning
    checkpoint: Checkpoint | None = None  # without Redis: the in-process state's checkpoint to disk

    async def aclose(self) -> None:
        if self.checkpoint is not None:
            try:
                await self.checkpoint.save()  # the last one: a restart resumes from here
            except (OSError, sqlite3.Error) as error:
                log.error("the hot-state checkpoint at shutdown failed; the last periodic one stands: %s", error)
        if self.scanner is not None:
            await self.scanner.close()
        if self.shared is not None:
            await self.shared.close()
            await self.shared.client.aclose()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.database.close()


def recipient_hash_key(settings: Settings, database: Database) -> bytes:
    """The key recipients are hashed with, which every replica must share (docs/backends.md).

    `OUTGUARD_RECIPIENT_HASH_KEY` if set; else the one kept in the database, made at the
    first start (from the key file an older release left in the state folder, if any,
    so that hashes stored before stay comparable). Either way the database keeps a
    check of the key, and a process started with another key says so in its log.
    """
    stored = SqlServiceSettings(database)
    if settings.recipient_hash_key is not None:
        key = settings.recipient_hash_key.get_secret_value()
    else:
        old_file = settings.state_dir / RECIPIENT_KEY_FILE
        old_key = old_file.read_text().strip() if old_file.is_file() else ""
        key = stored.value_or_create("recipient_hash_key", old_key or secrets.token_hex(32))
        if old_key and old_key != key:
            log.warning("the recipient hashing key in %s is not the database's: the database's is used", old_file)
    check = hmac.new(key.encode(), b"outguard recipient hashing key", hashlib.sha256).hexdigest()
    if stored.value_or_create("recipient_hash_key_check", check) != check:
        log.error(
            "OUTGUARD_RECIPIENT_HASH_KEY is not the key this database's recipients were hashed with: recipients "
            "hashed here will not match those hashed before or by other replicas. Set the same key everywhere."
        )
    return key.encode()


def link_key(settings: Settings, database: Database) -> bytes:
    """The key signing report links: `OUTGUARD_LINK_KEY` if set, else one made once and kept in the database,
    so every replica and `outguard report` sign and check the same links."""
    if settings.link_key is not None:
        return settings.link_key.get_secret_value().encode()
    return SqlServiceSettings(database).value_or_create("link_key", secrets.token_hex(32)).encode()


def report_links(settings: Settings, database: Database) -> ReportLinks:
    return ReportLinks(link_key(settings, database), settings.public_url, settings.link_ttl_s)


def open_database(settings: Settings, metrics: Metrics | None = None) -> Database:
    return Database(
        settings.database_url,
        settings.event_queue_max,
        on_write_failure=metrics.events_write_failed.inc if metrics is not None else None,
        pool_size=settings.database_pool_size,
    )


@dataclass
class HotState:
    """What scoring reads and changes per message, behind one interface: in the process, or in Redis.

    Selected by configuration (`HOT_STATES`, as Feast selects its online store): Redis
    when `OUTGUARD_REDIS_URL` is set, so that replicas act as one service; else the
    process's memory, checkpointed to disk (`service.stores.checkpoint`).
    """

    behaviour: BehaviourStore  # per-account windows
    engagement: EngagementStore
    accounts: AccountStateStore  # evidence, lifecycle, templates
    index: MessageIndex  # recent messages, for feedback
    cooldowns: Cooldowns  # announcements at most once an hour
    content: ContentState | None = None  # with fingerprints: campaigns, signature hits, signature changes
    shared: SharedStateHealth | None = None
    checkpoint: Checkpoint | None = None


def instance_id(database: Database) -> str:
    """The database's own id, made at its first use: a checkpoint belongs to one database."""
    return SqlServiceSettings(database).value_or_create("instance_id", uuid.uuid4().hex)


def in_process_state(settings: Settings, ledger: SqlAccountLedger, metrics: Metrics, database: Database) -> HotState:
    """The hot state in the process (one process only); restored from its checkpoint, then the ledger's statuses."""
    behaviour = MemoryBehaviourStore(settings.max_tracked_accounts)
    engagement = MemoryEngagementStore(settings.max_tracked_accounts)
    accounts = MemoryAccountStateStore(settings.max_tracked_accounts)
    checkpoint = None
    if settings.checkpoint_interval_s > 0:
        path = settings.state_dir / CHECKPOINT_FILE
        checkpoint = Checkpoint(path, instance_id(database), behaviour, engagement, accounts)
        checkpoint.restore(ledger.load(), ledger_times(database))
    else:
        for key, state in ledger.load().items():  # locks and allowlists survive restarts
            accounts.restore(key, state)
    campaigns = settings.fingerprint_policy.campaign
    content = LocalContentState(CampaignTracker(campaigns)) if settings.fingerprints else None
    return HotState(
        behaviour,
        engagement,
        accounts,
        MemoryMessageIndex(settings.message_index_size),
        Cooldown(),
        content,
        checkpoint=checkpoint,
    )


def redis_state(settings: Settings, ledger: SqlAccountLedger, metrics: Metrics, database: Database) -> HotState:
    """The hot state in Redis, shared by every replica; a miss on an account's lifecycle reads the ledger."""
    assert settings.redis_url is not None
    client = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        health_check_interval=30,
    )
    prefix = settings.redis_prefix
    accounts = RedisAccountStateStore(client, prefix)
    health = degraded.SharedStateHealth(
        client,
        ledger,
        accounts,
        settings.redis_fail_open,
        probe_interval_s=settings.redis_probe_interval_s,
        metrics=metrics,
    )
    policy = settings.fingerprint_policy
    content = (
        RedisContentState(client, prefix, policy.campaign, policy.signature_ttl_seconds, health)
        if settings.fingerprints
        else None
    )
    return HotState(
        degraded.DegradableBehaviour(RedisBehaviourStore(client, prefix), health),
        degraded.DegradableEngagement(RedisEngagementStore(client, prefix), health),
        degraded.DegradableAccounts(accounts, ledger, health),
        degraded.DegradableIndex(RedisMessageIndex(client, prefix), health),
        RedisCooldown(client, prefix, health),
        content,
        health,
    )


HOT_STATES: dict[str, Callable[[Settings, SqlAccountLedger, Metrics, Database], HotState]] = {
    "memory": in_process_state,
    "redis": redis_state,
}


def hot_state(settings: Settings, ledger: SqlAccountLedger, metrics: Metrics, database: Database) -> HotState:
    """The hot state the settings select: "redis" when `OUTGUARD_REDIS_URL` is set, else "memory"."""
    return HOT_STATES["redis" if settings.redis_url else "memory"](settings, ledger, metrics, database)


def build_scanner(settings: Settings, metrics: Metrics) -> MalwareScanner | None:
    """clamd at OUTGUARD_CLAMD, or None: no I/O here, the first scan connects."""
    if settings.clamd is None:
        return None
    return MalwareScanner.from_settings(
        settings.clamd,
        metrics,
        timeout_s=settings.clamd_timeout_s,
        max_bytes=settings.clamd_max_bytes,
        connections=settings.clamd_connections,
        fail_open=settings.clamd_fail_open,
        mode=settings.clamd_scan,
    )


def build_container(settings: Settings) -> Container:
    metrics = Metrics(settings.metrics_relay_limit)
    models = ModelManager(settings, metrics)
    model = ModelHolder(models.load_primary(), models.load_shadow_or_none())
    publish(metrics, model.current)
    database = open_database(settings, metrics)
    events = SqlEventLog(database, on_drop=metrics.events_dropped.inc)
    ledger = SqlAccountLedger(database)
    hot = hot_state(settings, ledger, metrics, database)
    behaviour, engagement, accounts, index = hot.behaviour, hot.engagement, hot.accounts, hot.index
    feedback = SqlFeedbackLog(database)
    rules = SqlIdentityRules(database)
    webhooks = WebhookStore(database)
    links = report_links(settings, database)
    webhook_notifier = WebhookNotifier(webhooks, settings, links)
    notices = LockNotices(
        settings,
        IncidentSources(
            database=database,
            accounts=accounts,
            engagement=engagement,
            ledger=ledger,
            model=model,
            hold_threshold=settings.hold_threshold,
            lock_threshold=settings.lock_threshold,
        ),
        links,
        flush=events.flush,
    )
    # A lock is announced to webhooks and, where someone is to be told, queued as a notice by mail.
    notifier: Notifier = (
        LockNoticeHook(webhook_notifier, webhooks, notices.wants, webhook_notifier.wake.set)
        if notices.target is not None
        else webhook_notifier
    )
    fingerprints = (
        FingerprintService(settings.fingerprint_policy, SqlSignatureStore(database), hot.content)
        if settings.fingerprints
        else None
    )
    scanner = build_scanner(settings, metrics)
    scorer = Scorer(
        model=model,
        behaviour=behaviour,
        engagement=engagement,
        accounts=accounts,
        index=index,
        events=events,
        metrics=metrics,
        policy=settings.decision_policy,
        recipient_hash_key=recipient_hash_key(settings, database),
        reasons=settings.reasons,
        rules=rules,
        ledger=ledger,
        policies=settings.policy_for,
        notifier=notifier,
        store_subjects=settings.store_subjects,
        fingerprints=fingerprints,
        scanner=scanner,
        cooldowns=hot.cooldowns,
    )
    ingestor = FeedbackIngestor(
        scored=events,
        index=index,
        feedback=feedback,
        engagement=engagement,
        metrics=metrics,
        notifier=notifier,
        fingerprints=fingerprints,
        cooldowns=hot.cooldowns,
    )
    return Container(
        settings=settings,
        model=model,
        database=database,
        events=events,
        feedback=feedback,
        labels=SqlLabelStore(database),
        rules=rules,
        ledger=ledger,
        webhooks=webhooks,
        dispatcher=Dispatcher(webhooks, webhook_notifier, settings, notices),
        behaviour=behaviour,
        engagement=engagement,
        accounts=accounts,
        metrics=metrics,
        scorer=scorer,
        ingestor=ingestor,
        models=models,
        links=links,
        notices=notices,
        fingerprints=fingerprints,
        shared=hot.shared,
        scanner=scanner,
        checkpoint=hot.checkpoint,
    )
