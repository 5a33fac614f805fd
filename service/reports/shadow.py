"""Acting model against shadow model, on the same traffic: how often and how far they disagree.

Read from the event log, where every message the shadow scored carries both
probabilities. Messages that have a label since (a complaint, an admin verdict) show
which of the two ranked spam above ham better.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score
from sqlalchemy import Connection, text

_ROWS = """
SELECT s.model_version, s.shadow_model_version, s.spam_probability, s.shadow_probability,
    (SELECT l.label FROM labels l WHERE l.target = 'message' AND l.message_id = s.message_id
        ORDER BY l.ts DESC LIMIT 1) AS verdict,
    EXISTS (SELECT 1 FROM feedback_events f WHERE f.type = 'complaint' AND f.message_id = s.message_id
        AND f.relay = s.relay) AS complained
FROM scored_messages s
WHERE s.shadow_probability IS NOT NULL AND s.spam_probability IS NOT NULL AND s.ts >= :since
"""


def _label(verdict: str | None, complained: int) -> int | None:
    if verdict in ("spam", "ham"):
        return int(verdict == "spam")
    return 1 if complained else None


def compare(acting: np.ndarray, shadow: np.ndarray, labels: list[int | None], hold: float) -> dict[str, Any]:
    difference = np.abs(acting - shadow)
    out: dict[str, Any] = {
        "messages": int(acting.size),
        "mean_abs_difference": round(float(difference.mean()), 4),
        "p99_abs_difference": round(float(np.percentile(difference, 99)), 4),
        "held_by_acting": int((acting >= hold).sum()),
        "held_by_shadow": int((shadow >= hold).sum()),
        "hold_disagreements": int(((acting >= hold) != (shadow >= hold)).sum()),
    }
    known = np.array([label is not None for label in labels])
    y = np.array([label for label in labels if label is not None], dtype=int)
    out["labelled"] = int(known.sum())
    if y.size and 0 < y.sum() < y.size:
        out["acting_roc_auc"] = round(float(roc_auc_score(y, acting[known])), 4)
        out["shadow_roc_auc"] = round(float(roc_auc_score(y, shadow[known])), 4)
    return out


def shadow_report(connection: Connection, since: float, hold_threshold: float) -> dict[str, Any]:
    groups: dict[tuple[str, str], list[tuple[float, float, int | None]]] = defaultdict(list)
    for acting_version, shadow_version, acting, shadow, verdict, complained in connection.execute(
        text(_ROWS), {"since": since}
    ):
        groups[(acting_version, shadow_version)].append((acting, shadow, _label(verdict, complained)))
    pairs = []
    for (acting_version, shadow_version), rows in sorted(groups.items()):
        acting = np.array([r[0] for r in rows])
        shadow = np.array([r[1] for r in rows])
        pairs.append(
            {
                "acting_model": acting_version,
                "shadow_model": shadow_version,
                **compare(acting, shadow, [r[2] for r in rows], hold_threshold),
            }
        )
    return {"since": since, "hold_threshold": hold_threshold, "pairs": pairs}
