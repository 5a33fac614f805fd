"""Re-measure a bundle's check-set scores, optionally attach a replay's account-level figures,
and rewrite its bundle.json and model card (no retraining).

Usage: python -m training.refresh_card [BUNDLE_DIR] [--replay REPLAY.json --command "outguard ..." [--modern]]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from models.bundle import DEFAULT_BUNDLE_DIR, load_bundle, save_bundle
from training.evaluate import score_modern_mail
from training.model_card import write_model_card

REPLAY_KEYS = (
    "messages",
    "spam_messages",
    "message_level",
    "compromised_identities",
    "spam_accepted_before_lock",
    "minutes_to_lock",
    "never_caught",
    "legitimate_accounts",
    "legitimate_account_days",
    "false_locks",
    "false_locks_per_1000_account_days",
    "false_locks_by_kind",
    "fraud_signups",
)


def refresh(directory: Path, replay: Path | None = None, command: str | None = None, modern: bool = False) -> None:
    """`modern`: the replay is of present-day content (`outguard simulate --content modern`)."""
    bundle = load_bundle(directory)
    bundle.metrics["modern_mail"] = score_modern_mail(bundle)
    if replay is not None:
        measured = json.loads(replay.read_text())
        key = "account_replay_modern" if modern else "account_replay"
        bundle.metrics[key] = {name: measured[name] for name in REPLAY_KEYS if name in measured}
        bundle.metrics[key]["command"] = command or ""
    save_bundle(bundle, directory)
    write_model_card(bundle, directory)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_BUNDLE_DIR)
    parser.add_argument("--replay", type=Path, default=None)
    parser.add_argument("--command", default=None)
    parser.add_argument("--modern", action="store_true", help="the replay is of present-day content")
    args = parser.parse_args()
    refresh(args.directory, args.replay, args.command, args.modern)
