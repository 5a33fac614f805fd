"""The text model: logistic regression over hashed word and character n-grams.

Words (uni- and bigrams) come from the subject and visible body; character 3-5 grams
from the subject alone, where obfuscation ("V1@gra", "Fr33") concentrates and where
they are cheap. Hashing keeps the model stateless apart from its weights.

Training vectorises with scikit-learn's `HashingVectorizer`. Scoring one message
goes through `score_one`, which hashes the same way (the same murmurhash3, the same
index rule, the same l2 norm) without scikit-learn's per-call overhead, about a
third of the cost; `tests/features/test_text_model.py` holds the two paths equal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from sklearn.utils import murmurhash3_32

WORD_FEATURES = 2**18
SUBJECT_CHAR_FEATURES = 2**16
HASH_CACHE_MAX = 500_000


def _word_vectorizer() -> HashingVectorizer:
    return HashingVectorizer(
        ngram_range=(1, 2), n_features=WORD_FEATURES, alternate_sign=False, norm="l2", dtype=np.float32
    )


def _subject_vectorizer() -> HashingVectorizer:
    return HashingVectorizer(
        analyzer="char_wb",
        ngram_range=(3, 5),
        n_features=SUBJECT_CHAR_FEATURES,
        alternate_sign=False,
        norm="l2",
        dtype=np.float32,
    )


def vectorize(documents: list[str], subjects: list[str]) -> sp.csr_matrix:
    """The text model's input matrix, [words | subject chars]."""
    words = _word_vectorizer().transform(documents)
    chars = _subject_vectorizer().transform(subjects)
    return sp.hstack([words, chars], format="csr")


@dataclass
class TextModel:
    coef: np.ndarray  # float32, WORD_FEATURES + SUBJECT_CHAR_FEATURES
    intercept: float

    def __post_init__(self) -> None:
        self._word_analyzer = _word_vectorizer().build_analyzer()
        self._subject_analyzer = _subject_vectorizer().build_analyzer()
        # token -> signed murmurhash3: most tokens recur across messages, and a dict hit
        # costs a fraction of the hash call. Bounded; cleared when full.
        self._hashes: dict[str, int] = {}

    def __getstate__(self) -> dict[str, object]:
        return {"coef": self.coef, "intercept": self.intercept}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.coef = state["coef"]  # type: ignore[assignment]
        self.intercept = float(state["intercept"])  # type: ignore[arg-type]
        self.__post_init__()

    def score_matrix(self, matrix: sp.csr_matrix) -> np.ndarray:
        """Log-odds for an already vectorised batch."""
        return np.asarray(matrix @ self.coef, dtype=np.float64) + self.intercept

    def score_batch(self, documents: list[str], subjects: list[str]) -> np.ndarray:
        return self.score_matrix(vectorize(documents, subjects))

    def score_one(self, document: str, subject: str) -> float:
        """Log-odds for one message, identical to `score_batch` but without its overhead."""
        words = self._hashed_dot(self._word_analyzer(document), WORD_FEATURES, 0)
        chars = self._hashed_dot(self._subject_analyzer(subject), SUBJECT_CHAR_FEATURES, WORD_FEATURES)
        return words + chars + self.intercept

    def _hashed_dot(self, tokens: list[str], n_features: int, offset: int) -> float:
        if not tokens:
            return 0.0
        hashes = self._hashes
        if len(hashes) > HASH_CACHE_MAX:
            hashes.clear()
        signed = list(map(hashes.get, tokens))  # a C-level loop; None where not yet hashed
        if None in signed:
            for i, h in enumerate(signed):
                if h is None:
                    signed[i] = hashes[tokens[i]] = murmurhash3_32(tokens[i], seed=0)
        index, tf = np.unique(np.abs(np.array(signed, dtype=np.int64)) % n_features, return_counts=True)
        tf = tf.astype(np.float64)
        return float(self.coef[index + offset] @ tf) / math.sqrt(float(tf @ tf))


def fit_text_model(
    matrix: sp.csr_matrix, labels: np.ndarray, c: float = 4.0, weights: np.ndarray | None = None
) -> TextModel:
    # Balanced classes: the corpora's spam share is not the traffic's, and should not sit in the intercept.
    clf = LogisticRegression(C=c, solver="liblinear", max_iter=200, class_weight="balanced")
    clf.fit(matrix, labels, sample_weight=weights)
    return TextModel(coef=clf.coef_[0].astype(np.float32), intercept=float(clf.intercept_[0]))


def out_of_fold_scores(
    matrix: sp.csr_matrix,
    labels: np.ndarray,
    folds: int = 5,
    seed: int = 7,
    groups: np.ndarray | None = None,
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """Each row scored by a text model that never saw it: the honest input for LightGBM.

    With `groups`, a group (the fills of one template) never straddles a fold: a text
    model that saw one fill would score its siblings as if it knew them.
    """
    scores = np.zeros(matrix.shape[0], dtype=np.float64)
    if groups is None:
        splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(matrix, labels)
    else:
        splits = StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(matrix, labels, groups)
    for train_idx, held_idx in splits:
        fold_weights = None if weights is None else weights[train_idx]
        model = fit_text_model(matrix[train_idx], labels[train_idx], weights=fold_weights)
        scores[held_idx] = model.score_matrix(matrix[held_idx])
    return scores
