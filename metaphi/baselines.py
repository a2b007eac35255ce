"""Support-set-only baselines: classifiers fit on each task's support set alone, with no
meta-learning, scored on the same tasks as a meta-learned learner.

For text, TF-IDF over character n-grams (scikit-learn's ``TfidfVectorizer``, fit on the support
texts only, so even the IDF weights come from the task) with a nearest-centroid (cosine) or a
logistic-regression classifier: the standard strong baseline for few-shot topic and language
identification without pretrained models.
"""
from __future__ import annotations

from typing import Callable, Iterable, Literal, Sequence

import numpy as np
from torch import Tensor

from .tasks.task import Task


def decode_rows(x: Tensor, decode: Callable[[Sequence[int]], str]) -> list[str]:
    """Texts of a batch of padded token ids."""
    return [decode([int(i) for i in row if int(i) != 0]) for row in x]


def _tfidf(support: list[str], query: list[str] | None, ngram_range: tuple[int, int],
           analyzer: str):
    """TF-IDF matrices of the support and query texts (None without them), the vectoriser
    fit on the support only."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vec = TfidfVectorizer(analyzer=analyzer, ngram_range=tuple(ngram_range), sublinear_tf=True,
                          lowercase=True)
    xs = vec.fit_transform(support)
    return xs, None if query is None else vec.transform(query)


def tfidf_centroid_cosines(support: list[str], support_y: np.ndarray, query: list[str],
                           ngram_range: tuple[int, int] = (1, 4),
                           analyzer: str = "char_wb") -> np.ndarray:
    """Cosine similarities ``(Q, N)`` of the query texts' TF-IDF vectors to the class centroids
    (normalised means of the support vectors), classes in ``np.unique(support_y)`` order."""
    xs, xq = _tfidf(support, query, ngram_range, analyzer)
    classes = np.unique(support_y)
    cent = np.vstack([np.asarray(xs[support_y == c].mean(0)) for c in classes])
    cent /= np.linalg.norm(cent, axis=1, keepdims=True).clip(1e-12)
    return np.asarray(xq @ cent.T)


def tfidf_loo_cosines(support: list[str], support_y: np.ndarray,
                      ngram_range: tuple[int, int] = (1, 4),
                      analyzer: str | Callable = "char_wb") -> np.ndarray:
    """Leave-one-out cosines ``(S, N)`` on the support set: each support text's TF-IDF vector
    against the class centroids, its own class's centroid without it (classes in
    ``np.unique(support_y)`` order; the vectoriser is fit on the whole support set). Every
    class needs two or more texts."""
    classes, idx, counts = np.unique(support_y, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise ValueError("leave-one-out needs two or more support texts in every class")
    xs = _tfidf(support, None, ngram_range, analyzer)[0].toarray()
    sums = np.vstack([xs[idx == c].sum(0) for c in range(len(classes))])  # (N, F)
    # a centroid's direction is its sum's: the vectors are L2-normalised
    cos = xs @ (sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(1e-12)).T
    own = sums[idx] - xs
    cos[np.arange(len(xs)), idx] = ((xs * own).sum(1)
                                    / np.linalg.norm(own, axis=1).clip(1e-12))
    return cos


def tfidf_task_accuracy(support: list[str], support_y: np.ndarray, query: list[str],
                        query_y: np.ndarray, classifier: Literal["centroid", "logreg"] = "centroid",
                        ngram_range: tuple[int, int] = (1, 4),
                        analyzer: str = "char_wb") -> float:
    """Accuracy on the query texts of a TF-IDF classifier fit on the support texts alone."""
    if classifier == "logreg":
        from sklearn.linear_model import LogisticRegression

        xs, xq = _tfidf(support, query, ngram_range, analyzer)
        pred = LogisticRegression(C=10.0, max_iter=1000).fit(xs, support_y).predict(xq)
    elif classifier == "centroid":
        cos = tfidf_centroid_cosines(support, support_y, query, ngram_range, analyzer)
        pred = np.unique(support_y)[cos.argmax(1)]
    else:
        raise ValueError(f"classifier must be 'centroid' or 'logreg', got {classifier!r}")
    return float((pred == query_y).mean())


def tfidf_scores(tasks: Iterable[Task], decode: Callable[[Sequence[int]], str],
                 classifier: Literal["centroid", "logreg"] = "centroid",
                 ngram_range: tuple[int, int] = (1, 4), analyzer: str = "char_wb") -> list[float]:
    """Per-task query accuracy of the support-only TF-IDF classifier on token-id tasks
    (``decode`` turns a task's token ids back into text, e.g. the source's tokenizer's)."""
    out = []
    for t in tasks:
        out.append(tfidf_task_accuracy(decode_rows(t.support_x, decode), t.support_y.numpy(),
                                       decode_rows(t.query_x, decode), t.query_y.numpy(),
                                       classifier, ngram_range, analyzer))
    return out
