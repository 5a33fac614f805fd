"""The text model: logistic regression over hashed word and character n-grams.

Words (uni- and bigrams) come from the subject and visible body; character 3-5 grams
from the subject alone, where obfuscation ("V1@gra", "Fr33") concentrates and where
they are cheap. Hashing keeps the model stateless apart from its weights.

Training vectorises with scikit-learn's `HashingVectorizer`. Scoring one message
goes through `score_one`, which hashes the same way without scikit-learn's per-call
overhead: the same tokens (`word_tokens` is the word analyzer's output, built without
its Python loop over bigrams), each distinct n-gram hashed once by the same C routine
the `HashingVectorizer` uses (`_hashing_fast.transform`, with the n-gram's count as its
value), the same l2 norm. `tests/features/test_text_model.py` and
`tests/features/test_fast_path_equal.py` hold the two paths equal.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction._hashing_fast import transform as _hash_counts
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

WORD_FEATURES = 2**18
SUBJECT_CHAR_FEATURES = 2**16
# The word analyzer's default token pattern (`HashingVectorizer(token_pattern=...)`).
_TOKEN = re.compile(r"(?u)\b\w\w+\b")


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
        self._subject_analyzer = _subject_vectorizer().build_analyzer()

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
        words = self._hashed_dot(word_tokens(document), WORD_FEATURES, 0)
        chars = self._hashed_dot(self._subject_analyzer(subject), SUBJECT_CHAR_FEATURES, WORD_FEATURES)
        return words + chars + self.intercept

    def _hashed_dot(self, tokens: list[str], n_features: int, offset: int) -> float:
        """The l2-normalised hashed term counts of `tokens`, dotted with the weights.

        Each distinct token is hashed once, in C, with its count as the value: the
        `HashingVectorizer`'s own routine, so the same indices. Two tokens whose hashes
        collide share an index and their counts add up, as in the sparse matrix.
        """
        if not tokens:
            return 0.0
        index, _, tf = _hash_counts((Counter(tokens).items(),), n_features, np.float64, False, 0)
        ordered = np.sort(index)
        if (ordered[1:] == ordered[:-1]).any():  # a hash collision: merge the counts
            index, inverse = np.unique(index, return_inverse=True)
            tf = np.bincount(inverse, weights=tf)
        return float(self.coef[index + offset] @ tf) / math.sqrt(float(tf @ tf))


def word_tokens(document: str) -> list[str]:
    """The word analyzer's n-grams (`_word_vectorizer().build_analyzer()`): tokens, then bigrams, in order."""
    tokens = _TOKEN.findall(document.lower())
    return tokens + [f"{first} {second}" for first, second in itertools.pairwise(tokens)]


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
