"""The wired service: settings, model, stores, scorer and metrics, built once per app."""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from service.decision import DecisionPolicy
from service.feedback.ingest import FeedbackIngestor
from service.fingerprints.service import FingerprintService
from service.metrics import Metrics
from service.model_runtime import ModelHolder, ModelManager, publish
from service.scoring import Scorer
from service.settings import Settings
from service.stores import AccountStateStore, BehaviourStore, EngagementStore
from service.stores.memory import (
    MemoryAccountStateStore,
    MemoryBehaviourStore,
    MemoryEngagementStore,
    MemoryMessageIndex,
)
from service.stores.sqlite import SqliteDatabase
from service.stores.sqlite_accounts import SqliteAccountLedger
from service.stores.sqlite_events import SqliteEventLog
from service.stores.sqlite_feedback import SqliteFeedbackLog, SqliteLabelStore
from service.stores.sqlite_rules import SqliteIdentityRules
from service.stores.sqlite_signatures import SqliteSignatureStore
from service.webhooks.outbox import Dispatcher, WebhookNotifier, WebhookStore

log = logging.getLogger(__name__)

RECIPIENT_KEY_FILE = "recipient-hash.key"


@dataclass
class Container:
    settings: Settings
    model: ModelHolder
    database: SqliteDatabase
    events: SqliteEventLog
    feedback: SqliteFeedbackLog
    labels: SqliteLabelStore
    rules: SqliteIdentityRules
    ledger: SqliteAccountLedger
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


def build_container(settings: Settings) -> Container:
    metrics = Metrics()
    models = ModelManager(settings, metrics)
    model = ModelHolder(models.load_primary(), models.load_shadow_or_none())
    publish(metrics, model.current)
    database = SqliteDatabase(
        settings.sqlite_path, settings.event_queue_max, on_write_failure=metrics.events_write_failed.inc
    )
    events = SqliteEventLog(database, on_drop=metrics.events_dropped.inc)
    behaviour = MemoryBehaviourStore(settings.max_tracked_accounts)
    engagement = MemoryEngagementStore(settings.max_tracked_accounts)
    accounts = MemoryAccountStateStore(settings.max_tracked_accounts)
    ledger = SqliteAccountLedger(database)
    for key, state in ledger.load().items():  # locks and allowlists survive restarts
        accounts.restore(key, state)
    index = MemoryMessageIndex(settings.message_index_size)
    feedback = SqliteFeedbackLog(database)
    rules = SqliteIdentityRules(database)
    webhooks = WebhookStore(database)
    notifier = WebhookNotifier(webhooks, settings)
    fingerprints = (
        FingerprintService(settings.fingerprint_policy, SqliteSignatureStore(database))
        if settings.fingerprints
        else None
    )
    scorer = Scorer(
        model=model,
        behaviour=behaviour,
        engagement=engagement,
        accounts=accounts,
        index=index,
        events=events,
        metrics=metrics,
        policy=DecisionPolicy(
            hold_threshold=settings.hold_threshold,
            reject_threshold=settings.reject_threshold,
            lock_threshold=settings.lock_threshold,
            compromised_spam_share=settings.compromised_spam_share,
            clean_spam_share=settings.clean_spam_share,
            engagement_credit=settings.engagement_credit,
        ),
        recipient_hash_key=recipient_hash_key(settings),
        reasons=settings.reasons,
        rules=rules,
        ledger=ledger,
        policies=settings.policy_for,
        notifier=notifier,
        store_subjects=settings.store_subjects,
        fingerprints=fingerprints,
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
        labels=SqliteLabelStore(database),
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
    )
