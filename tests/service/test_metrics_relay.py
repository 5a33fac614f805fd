"""The scoring metrics carry a bounded `relay` label, and the Grafana dashboard names only exported series."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.app import create_app
from service.metrics import OTHER_RELAY, Metrics
from service.settings import Settings
from tests.conftest import make_raw
from tests.test_docs import exported_metric_names

DASHBOARD = Path(__file__).parents[2] / "docs" / "grafana" / "outguard.json"


def test_a_scored_message_is_counted_under_its_relay(client: TestClient) -> None:
    answer = client.post(
        "/v1/score", json={"message_id": "m1", "relay": "mx-a", "sasl_username": "alice", "raw": make_raw()}
    )
    assert answer.status_code == 200, answer.text
    text = client.get("/metrics").text
    assert 'outguard_messages_scored_total{relay="mx-a"} 1.0' in text
    assert 'outguard_actions_total{action="accept",relay="mx-a"} 1.0' in text
    assert 'outguard_score_seconds_count{relay="mx-a"} 1.0' in text


def test_relays_past_the_limit_are_counted_as_other() -> None:
    metrics = Metrics(relay_limit=100)
    labels = [metrics.relay(f"relay-{n}") for n in range(1, 102)]
    assert labels[:100] == [f"relay-{n}" for n in range(1, 101)]
    assert labels[100] == OTHER_RELAY  # relay 101
    assert metrics.relay("relay-7") == "relay-7"  # one seen before keeps its own series
    assert metrics.relay(OTHER_RELAY) == OTHER_RELAY
    for label in labels:
        metrics.messages_scored.labels(label).inc()
    series = [s for f in metrics.registry.collect() if f.name == "outguard_messages_scored" for s in f.samples]
    assert len({s.labels["relay"] for s in series}) == 101  # 100 relays and `other`, never more


def test_the_limit_is_a_setting(settings: Settings) -> None:
    with TestClient(create_app(settings.model_copy(update={"metrics_relay_limit": 1}))) as client:
        for n, relay in enumerate(("mx-a", "mx-b")):
            body = {"message_id": f"m{n}", "relay": relay, "sasl_username": "alice", "raw": make_raw()}
            assert client.post("/v1/score", json=body).status_code == 200
        text = client.get("/metrics").text
    assert 'outguard_messages_scored_total{relay="mx-a"} 1.0' in text
    assert 'outguard_messages_scored_total{relay="other"} 1.0' in text
    assert 'relay="mx-b"' not in text


def test_the_grafana_dashboard_names_exported_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for topic in ("scored", "actions", "lock", "latency", "feedback"):
        assert topic in titles, topic
    named = {m for e in exprs for m in re.findall(r"\boutguard_\w+", e)}
    assert named and not named - exported_metric_names(), named - exported_metric_names()
