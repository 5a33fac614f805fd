"""Every fast path of the scoring hot path gives what the reference path gives, on real corpus mail.

Serving scores one message at a time through shortcuts that training never takes:
the text model hashes each message's n-grams in one C call (`TextModel.score_one`),
where training vectorises with scikit-learn's `HashingVectorizer`; one row goes
through LightGBM's single-row fast path (`LeafPredictor`), where training and batches
call `Booster.predict`. If a shortcut drifted, the model would see other numbers in
serving than it was trained on. This test builds each message's whole feature vector
both ways, from the same corpus sample the benchmark uses (a few hundred SpamAssassin
and TREC messages), and holds them equal within float tolerance, then scores the rows
both ways.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from features.content import content_features
from features.fingerprint import Fingerprinter
from features.message import parse_raw
from features.vector import assemble, content_vector
from models.bundle import DEFAULT_BUNDLE_DIR, ModelBundle, load_bundle
from service.settings import PROJECT_ROOT
from tests.conftest import DATA_DIR, require_corpus
from training.corpora import spamassassin_messages, trec_messages

SAMPLE = 300

pytestmark = pytest.mark.corpus


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return load_bundle(DEFAULT_BUNDLE_DIR)


@pytest.fixture(scope="module")
def raw_sample() -> list[bytes]:
    require_corpus()  # skips outside CI without the corpora
    corpus = spamassassin_messages(DATA_DIR) + trec_messages(DATA_DIR, PROJECT_ROOT / ".cache")
    return [message.path.read_bytes() for message in random.Random(19).sample(corpus, SAMPLE)]


def test_serving_rows_equal_the_training_path_on_the_corpus(bundle: ModelBundle, raw_sample: list[bytes]) -> None:
    fingerprinter = Fingerprinter()
    parsed = [parse_raw(raw) for raw in raw_sample]
    serving = [content_vector(p, None, bundle.text_model, fingerprinter) for p in parsed]
    # The reference: content features as training computes them, the text score from scikit-learn's batch path.
    contents = [content_features(p) for p in parsed]
    reference_text = bundle.text_model.score_batch([c.document for c in contents], [p.subject for p in parsed])
    assert len({round(float(s), 3) for s in reference_text}) > SAMPLE // 2, "the sample must not be degenerate"

    for vector, content, text_score in zip(serving, contents, reference_text, strict=True):
        assert vector.content.features == content.features
        assert vector.content.document == content.document
        fast_row = assemble(vector.content.features, vector.text_model_score, None, None)
        reference_row = assemble(content.features, float(text_score), None, None)
        # scikit-learn's matrix and its product with the weights are float32, the fast path's float64.
        np.testing.assert_allclose(fast_row, reference_row, rtol=1e-5, atol=1e-5)
        expected = fingerprinter.fingerprint(content.document)
        if expected is None:
            assert vector.fingerprint is None
        else:
            assert vector.fingerprint is not None
            np.testing.assert_array_equal(vector.fingerprint.hashvalues, expected.hashvalues)


def test_one_row_at_a_time_scores_as_booster_predict_on_the_corpus(
    bundle: ModelBundle, raw_sample: list[bytes]
) -> None:
    parsed = [parse_raw(raw) for raw in raw_sample]
    contents = [content_features(p) for p in parsed]
    text = bundle.text_model.score_batch([c.document for c in contents], [p.subject for p in parsed])
    rows = np.vstack([assemble(c.features, float(t), None, None) for c, t in zip(contents, text, strict=True)])
    matrix = np.ascontiguousarray(rows[:, bundle.column_index])
    reference_leaves = bundle.booster.predict(matrix, pred_leaf=True, num_threads=1)
    reference = bundle.calibration.apply(bundle.booster.predict(matrix, raw_score=True, num_threads=1))
    one_by_one = [bundle.predict(rows[i : i + 1]) for i in range(len(rows))]
    np.testing.assert_array_equal(
        np.vstack([bundle.leaf_predictor.leaves(matrix[i : i + 1]) for i in range(len(matrix))]), reference_leaves
    )
    np.testing.assert_allclose([p.probabilities[0] for p in one_by_one], reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(bundle.predict(rows).probabilities, reference, rtol=1e-9, atol=1e-12)
