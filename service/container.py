"""The wired service: settings, model, stores, scorer and metrics, built once per app."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from service.feedback.ingest import FeedbackIngestor
from service.fingerprints.service import FingerprintService
from service.metrics import Metrics
from service.model_runtime import ModelHolder, ModelManager, publish
from service.scanning import MalwareScanner
from service.scoring import Scorer
from service.settings import Settings
from service.stores import AccountStateStore, BehaviourStore, EngagementStore, MessageIndex, degraded
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
from service.stores.signatures import SqlSignatureStore
from service.webhooks.outbox import Dispatcher, WebhookNotifier, WebhookStore

log = logging.getLogger(__name__)

RECIPIENT_KEY_FILE = "recipient-hash.key"


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
    fingerprints: FingerprintService | None = None
    shared: SharedStateHealth | None = None  # with Redis: its health, for readiness and recovery
    scanner: MalwareScanner | None = None  # with OUTGUARD_CLAMD: malware scanning

    async def aclose(self) -> None:
        if self.scanner is not None:
            await self.scanner.close()
        if self.shared is not None:
            await self.shared.close()
            await self.shared.client.aclose()  # type: ignore[attr-defined]

    def close(self) -> None:
        self.database.close()


def recipient_hash_key(settings: Settings) -> bytes:
    """The configured key, or one generated once and kept in the state folder."""
    if settings.recipient_hash_key is not None:
        return settings.recipient_hash_key.get_secret_value().encode()
    path: Path = settings.state_dir / RECIPIENT_KEY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # Created exclusively and private from the first byte: two processes starting
        # together agree on one key, and nobody else can read it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    else:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        log.info("generated a recipient hashing key at %s", path)
    for _ in range(50):  # another process may be between create and write
        if key := path.read_text().strip():
            return key.encode()
        time.sleep(0.01)
    raise RuntimeError(f"the recipient hashing key at {path} is empty")


def open_database(settings: Settings, metrics: Metrics | None = None) -> Database:
    return Database(
        settings.database_url,
        settings.event_queue_max,
        on_write_failure=metrics.events_write_failed.inc if metrics is not None else None,
        pool_size=settings.database_pool_size,
    )


@dataclass
class HotState:
    behaviour: BehaviourStore
    engagement: EngagementStore
    accounts: AccountStateStore
    index: MessageIndex
    shared: SharedStateHealth | None = None


def in_process_state(settings: Settings, ledger: SqlAccountLedger) -> HotState:
    accounts = MemoryAccountStateStore(settings.max_tracked_accounts)
    for key, state in ledger.load().items():  # locks and allowlists survive restarts
        accounts.restore(key, state)
    return HotState(
        MemoryBehaviourStore(settings.max_tracked_accounts),
        MemoryEngagementStore(settings.max_tracked_accounts),
        accounts,
        MemoryMessageIndex(settings.message_index_size),
    )


def redis_state(settings: Settings, ledger: SqlAccountLedger, metrics: Metrics) -> HotState:
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
    return HotState(
        degraded.DegradableBehaviour(RedisBehaviourStore(client, prefix), health),
        degraded.DegradableEngagement(RedisEngagementStore(client, prefix), health),
        degraded.DegradableAccounts(accounts, ledger, health),
        degraded.DegradableIndex(RedisMessageIndex(client, prefix), health),
        health,
    )


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
    metrics = Metrics()
    models = ModelManager(settings, metrics)
    model = ModelHolder(models.load_primary(), models.load_shadow_or_none())
    publish(metrics, model.current)
    database = open_database(settings, metrics)
    events = SqlEventLog(database, on_drop=metrics.events_dropped.inc)
    ledger = SqlAccountLedger(database)
    hot = redis_state(settings, ledger, metrics) if settings.redis_url else in_process_state(settings, ledger)
    behaviour, engagement, accounts, index = hot.behaviour, hot.engagement, hot.accounts, hot.index
    feedback = SqlFeedbackLog(database)
    rules = SqlIdentityRules(database)
    webhooks = WebhookStore(database)
    notifier = WebhookNotifier(webhooks, settings)
    fingerprints = (
        FingerprintService(settings.fingerprint_policy, SqlSignatureStore(database)) if settings.fingerprints else None
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
        recipient_hash_key=recipient_hash_key(settings),
        reasons=settings.reasons,
        rules=rules,
        ledger=ledger,
        policies=settings.policy_for,
        notifier=notifier,
        store_subjects=settings.store_subjects,
        fingerprints=fingerprints,
        scanner=scanner,
    )
    ingestor = FeedbackIngestor(
        scored=events,
        index=index,
        feedback=feedback,
        engagement=engagement,
        metrics=metrics,
        notifier=notifier,
        fingerprints=fingerprints,
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
        dispatcher=Dispatcher(webhooks, notifier, settings),
        behaviour=behaviour,
        engagement=engagement,
        accounts=accounts,
        metrics=metrics,
        scorer=scorer,
        ingestor=ingestor,
        models=models,
        fingerprints=fingerprints,
        shared=hot.shared,
        scanner=scanner,
    )
