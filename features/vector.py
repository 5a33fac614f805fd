"""Assemble the full feature vector in spec order: the one code path for serving and training."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.behaviour import BehaviourSnapshot, behaviour_features
from features.content import ContentResult, content_features
from features.engagement import EngagementSnapshot, engagement_features
from features.fingerprint import NO_FINGERPRINT_FEATURES, Fingerprint, Fingerprinter
from features.message import ParsedMessage
from features.spec import FEATURE_NAMES
from features.text_model import TextModel


def assemble(
    content: dict[str, float],
    text_model_score: float,
    behaviour: BehaviourSnapshot | None,
    engagement: EngagementSnapshot | None,
    fingerprint: dict[str, float] | None = None,
) -> np.ndarray:
    """One float64 row in `FEATURE_NAMES` order. Missing names are a bug, so they raise."""
    values = {**content, "text_model_score": text_model_score}
    values.update(behaviour_features(behaviour))
    values.update(engagement_features(engagement))
    values.update(fingerprint or NO_FINGERPRINT_FEATURES)
    return np.fromiter((values[name] for name in FEATURE_NAMES), dtype=np.float64, count=len(FEATURE_NAMES))


@dataclass(slots=True)
class ContentVector:
    """A message's content side, computed before the account's windows are touched."""

    content: ContentResult
    text_model_score: float
    fingerprint: Fingerprint | None = None


def content_vector(
    parsed: ParsedMessage,
    envelope_from: str | None,
    text_model: TextModel,
    fingerprinter: Fingerprinter | None = None,
) -> ContentVector:
    content = content_features(parsed, envelope_from)
    return ContentVector(
        content=content,
        text_model_score=text_model.score_one(content.document, parsed.subject),
        fingerprint=fingerprinter.fingerprint(content.document) if fingerprinter is not None else None,
    )
