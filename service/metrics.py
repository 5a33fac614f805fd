"""Prometheus metrics, on a registry of the app's own (so several apps can live in one process).

The scoring series carry a `relay` label. Its cardinality is bounded: the first
`relay_limit` relays seen (OUTGUARD_METRICS_RELAY_LIMIT) get their own series, any relay
after them is counted as `other`, so a relay name taken from traffic cannot grow the
registry without end.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
PROBABILITY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.995, 1.0)
OTHER_RELAY = "other"
DEFAULT_RELAY_LIMIT = 100


class Metrics:
    def __init__(self, relay_limit: int = DEFAULT_RELAY_LIMIT) -> None:
        self.registry = CollectorRegistry()
        self.relay_limit = relay_limit
        self._relays: set[str] = set()
        self._relays_lock = threading.Lock()
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
        self.messages_scored = Counter(
            "outguard_messages_scored", "Messages scored, by relay", ["relay"], registry=self.registry
        )
        self.score_latency = Histogram(
            "outguard_score_seconds",
            "Time from a scoring request's start to each message's answer, by relay",
            ["relay"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
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
        self.actions = Counter(
            "outguard_actions", "Actions returned, by action and relay", ["action", "relay"], registry=self.registry
        )
        self.lock_recommendations = Counter(
            "outguard_lock_recommendations",
            "Answers recommending an account lock, by relay",
            ["relay"],
            registry=self.registry,
        )
        self.events_dropped = Counter(
            "outguard_events_dropped", "Scored events dropped because the log queue was full", registry=self.registry
        )
        self.shared_state_failures = Counter(
            "outguard_shared_state_failures",
            "Calls to the shared hot state (Redis) that failed; scoring went on degraded or answered 503",
            registry=self.registry,
        )
        self.shared_state_skipped = Counter(
            "outguard_shared_state_skipped",
            "Calls to the shared hot state (Redis) not made because its circuit breaker was open",
            registry=self.registry,
        )
        self.shared_state_breaker_open = Gauge(
            "outguard_shared_state_breaker_open",
            "1 while the Redis circuit breaker is open (calls skipped until a probe finds Redis), else 0",
            registry=self.registry,
        )
        self.shared_state_probes = Counter(
            "outguard_shared_state_probes",
            "Probes (PING) of Redis made while its circuit breaker was open, by result",
            ["result"],
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
        # MTA adapters (service.adapters): one set of series, labelled by protocol
        # (milter, rspamd, rspamc, policy) so every protocol reads the same way.
        self.adapter_requests = Counter(
            "outguard_adapter_requests",
            "Requests through an MTA adapter, by protocol and stage (connect, mail, rcpt, eom, check, ...)",
            ["protocol", "stage"],
            registry=self.registry,
        )
        self.adapter_answers = Counter(
            "outguard_adapter_answers",
            "Answers an MTA adapter gave, by protocol and action (accept, defer, hold, reject, ...)",
            ["protocol", "action"],
            registry=self.registry,
        )
        self.adapter_latency = Histogram(
            "outguard_adapter_seconds",
            "Time from a request to its answer, by protocol and stage",
            ["protocol", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.adapter_errors = Counter(
            "outguard_adapter_errors",
            "Adapter errors, by protocol and kind (protocol, timeout, scoring, oversize, overload, ...)",
            ["protocol", "kind"],
            registry=self.registry,
        )
        self.adapter_connections = Gauge(
            "outguard_adapter_connections", "Open connections, by protocol", ["protocol"], registry=self.registry
        )
        # Malware scanning with clamd (service.scanning)
        self.malware_scans = Counter(
            "outguard_malware_scans",
            "Messages with something to scan, by clamd's result: clean, infected, failed (not scanned)",
            ["result"],
            registry=self.registry,
        )
        self.malware_scan_failures = Counter(
            "outguard_malware_scan_failures",
            "Scans that did not complete, by reason (unavailable, timeout, error, skipped: breaker open) and what "
            "the answer did (open: scored unscanned; closed: deferred)",
            ["reason", "policy"],
            registry=self.registry,
        )
        self.malware_scans_truncated = Counter(
            "outguard_malware_scans_truncated",
            "Messages longer than OUTGUARD_CLAMD_MAX_BYTES, scanned up to it",
            registry=self.registry,
        )
        self.malware_scan_seconds = Histogram(
            "outguard_malware_scan_seconds",
            "Time clamd took to answer a completed scan",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.model_info = Gauge(
            "outguard_model_info", "The model in use (value 1)", ["version", "feature_spec"], registry=self.registry
        )

    def relay(self, name: str) -> str:
        """The `relay` label for a relay: its name for the first `relay_limit` seen, else `other`."""
        if name in self._relays:
            return name
        with self._relays_lock:
            if name in self._relays:
                return name
            if len(self._relays) < self.relay_limit and name != OTHER_RELAY:
                self._relays.add(name)
                return name
        return OTHER_RELAY
