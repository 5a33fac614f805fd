"""Present-day mail through the API with the shipped model: template senders stay unlocked, phishing runs lock.

The templates and phishing sent here are modern-train's `eval` pool
(`training.modern_corpus.template_pools`), which the shipped model never trained on,
re-sent in the shape of a real mailer library. They read ../shared/data (skipped
without it, failing in CI).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from service.settings import PROJECT_ROOT
from training.modern_corpus import ensure_modern_extracted, load_manifest, modern_message, template_pools

pytestmark = pytest.mark.corpus

START = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
CUSTOMER_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "web.de", "icloud.com", "orange.fr", "gmx.de")


@pytest.fixture(scope="module")
def modern() -> tuple[Path, pd.DataFrame]:
    from tests.conftest import DATA_DIR, require_corpus

    require_corpus()
    root = ensure_modern_extracted(DATA_DIR, PROJECT_ROOT / ".cache")
    manifest = load_manifest(root)
    manifest["pool"] = manifest["template"].map(template_pools(manifest))
    return root, manifest[manifest["pool"] == "eval"]


def _send(client: TestClient, account: str, raw: bytes, at: datetime, recipient: str, n: int) -> dict:
    response = client.post(
        "/v1/score",
        json={
            "message_id": f"<{account}-{n}@relay.test>",
            "timestamp": at.isoformat(),
            "sasl_username": account,
            "client_ip": "198.51.100.7",
            "recipients": [recipient],
            "raw": raw.decode("utf-8", "surrogateescape"),
        },
    )
    assert response.status_code == 200, response.text
    return response.json()


def _held_out_templates(held: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """Per source project, its held-out template with the most fills."""
    ham = held[held["label"] == 0]
    chosen = []
    for repo, part in ham.groupby("source_repo"):
        template = part.groupby("template").size().idxmax()
        chosen.append((str(repo), sorted(part.loc[part["template"] == template, "file"])))
    return chosen


def test_each_projects_held_out_template_sent_40_times_does_not_lock(
    client: TestClient, modern: tuple[Path, pd.DataFrame]
) -> None:
    root, held = modern
    templates = _held_out_templates(held)
    assert len(templates) == 20  # every source project has a template the model never saw
    locked = []
    for repo, files in templates:
        account = f"shop-{repo.replace('/', '-')}@hosting.test"
        for n in range(40):
            raw = modern_message(root, files[n % len(files)], 0, salt=account)
            recipient = f"customer{n}@{CUSTOMER_DOMAINS[n % len(CUSTOMER_DOMAINS)]}"
            result = _send(client, account, raw, START + timedelta(minutes=3 * n), recipient, n)
            if result["account_locked"] or result["lock_recommended"]:
                locked.append((repo, n))
                break
    assert locked == []


def test_a_phishing_run_to_contacts_from_a_clean_account_locks_within_a_few_messages(
    client: TestClient, modern: tuple[Path, pd.DataFrame]
) -> None:
    root, held = modern
    account = "office@smallfirm.test"
    contacts = [f"contact{n}@{CUSTOMER_DOMAINS[n % len(CUSTOMER_DOMAINS)]}" for n in range(40)]
    # Three days of its own mail: a held-out account-notification template to its contacts.
    own = _held_out_templates(held)[0][1]
    n = 0
    for day in range(3):
        for k in range(8):
            raw = modern_message(root, own[k % len(own)], 0, salt=account)
            at = START + timedelta(days=day, hours=1 + k)
            assert not _send(client, account, raw, at, contacts[k], n)["account_locked"]
            n += 1
    phishing = sorted(held.loc[(held["label"] == 1) & (held["category"] == "phishing"), "file"])[:40]
    hijack = START + timedelta(days=3, hours=2)
    accepted = 0
    for k, file in enumerate(phishing):
        result = _send(client, account, modern_message(root, file, 1), hijack + timedelta(minutes=k), contacts[k], n)
        n += 1
        accepted += result["action"] == "accept"
        if result["account_locked"] or result["lock_recommended"]:
            break
    assert result["account_locked"] or result["lock_recommended"]
    # Its three days of delivered mail earned it engagement credit (at most 4 nats, about
    # one clear spam message), so the lock comes at the fifth; what matters is what got out.
    assert k + 1 <= 6, f"locked only after {k + 1} phishing messages"
    assert accepted <= 3, f"{accepted} phishing messages accepted before the lock"
