"""Re-measure a bundle's check-set scores and rewrite its bundle.json and model card (no retraining).

Usage: python -m training.refresh_card [BUNDLE_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from models.bundle import DEFAULT_BUNDLE_DIR, load_bundle, save_bundle
from training.evaluate import score_modern_mail
from training.model_card import write_model_card


def refresh(directory: Path) -> None:
    bundle = load_bundle(directory)
    bundle.metrics["modern_mail"] = score_modern_mail(bundle)
    save_bundle(bundle, directory)
    write_model_card(bundle, directory)


if __name__ == "__main__":
    refresh(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_BUNDLE_DIR)
