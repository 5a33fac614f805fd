"""The lean single-message text scoring equals scikit-learn's batch path."""

from __future__ import annotations

import numpy as np
import pytest

from features.text_model import SUBJECT_CHAR_FEATURES, WORD_FEATURES, TextModel, fit_text_model, vectorize

DOCS = [
    "Cheap meds online!!! Buy viagra now, best price guaranteed",
    "Hi Bob, the meeting moved to 3pm. Can you bring the slides?",
    "Ünïcödé text — with dashes, emoji 🎉 and numbers 12345",
    "",
    "a",
]
SUBJECTS = ["V1AGRA 4 U", "Re: meeting", "Grüße", "", "x"]


@pytest.fixture(scope="module")
def model() -> TextModel:
    rng = np.random.default_rng(0)
    coef = rng.normal(size=WORD_FEATURES + SUBJECT_CHAR_FEATURES).astype(np.float32)
    return TextModel(coef=coef, intercept=-0.25)


def test_single_and_batch_scores_agree(model: TextModel) -> None:
    batch = model.score_batch(DOCS, SUBJECTS)
    single = np.array([model.score_one(d, s) for d, s in zip(DOCS, SUBJECTS, strict=True)])
    np.testing.assert_allclose(single, batch, rtol=1e-5, atol=1e-5)


def test_a_fitted_model_separates_and_survives_pickling(tmp_path) -> None:
    import joblib

    spam = [f"win money now free prize {i} click here" for i in range(40)]
    ham = [f"meeting notes for project {i} attached see agenda" for i in range(40)]
    labels = np.array([1] * 40 + [0] * 40)
    model = fit_text_model(vectorize(spam + ham, ["prize"] * 40 + ["notes"] * 40), labels)
    joblib.dump(model, tmp_path / "m.joblib")
    loaded = joblib.load(tmp_path / "m.joblib")
    assert loaded.score_one("free prize money", "prize") > 0 > loaded.score_one("project agenda notes", "notes")
