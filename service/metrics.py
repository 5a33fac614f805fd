"""Prometheus metrics, on a registry of the app's own (so several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROBABILITY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "outguard_http_requests", "HTTP requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "outguard_http_request_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.messages_scored = Counter("outguard_messages_scored", "Messages scored", registry=self.registry)
        self.spam_probability = Histogram(
            "outguard_spam_probability",
            "Calibrated spam probability of scored messages",
            buckets=PROBABILITY_BUCKETS,
            registry=self.registry,
        )
        self.shadow_failures = Counter(
            "outguard_shadow_failures", "Batches the shadow model failed to score", registry=self.registry
        )
        self.campaigns_detected = Counter(
            "outguard_campaigns_detected", "Content clusters that became campaigns", registry=self.registry
        )
        self.actions = Counter("outguard_actions", "Actions returned", ["action"], registry=self.registry)
        self.lock_recommendations = Counter(
            "outguard_lock_recommendations", "Answers recommending an account lock", registry=self.registry
        )
        self.events_dropped = Counter(
            "outguard_events_dropped", "Scored events dropped because the log queue was full", registry=self.registry
        )
        self.shared_state_failures = Counter(
            "outguard_shared_state_failures",
            "Calls to the shared hot state (Redis) that failed; scoring went on degraded or answered 503",
            registry=self.registry,
        )
        self.events_write_failed = Counter(
            "outguard_events_write_failed", "Scored events the log writer failed to store", registry=self.registry
        )
        self.event_queue_depth = Gauge(
            "outguard_event_queue_depth", "Scored events waiting for the log writer", registry=self.registry
        )
        self.feedback_events = Counter(
            "outguard_feedback_events", "Feedback events ingested", ["type", "status"], registry=self.registry
        )
        self.labels_received = Counter("outguard_labels", "Admin verdicts received", ["label"], registry=self.registry)
        self.transitions = Counter(
            "outguard_account_transitions", "Account lifecycle changes", ["action"], registry=self.registry
        )
        self.model_info = Gauge(
            "outguard_model_info", "The model in use (value 1)", ["version", "feature_spec"], registry=self.registry
        )
