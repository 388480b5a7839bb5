"""Evaluation protocols over a whole dataset (centralized view).

E1 (rating prediction): RMSE/MAE on the test rows, predictions clipped to the
rating scale. R1 (ranking): for every user with a test item, rank all items the
user did not interact with in train; HR@K, NDCG@K, Recall@K. Both are built on
:mod:`fedrec.metrics.core`, the same sums-and-counts code a device runs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedrec.data.interactions import Dataset, Interactions
from fedrec.errors import ConfigError
from fedrec.metrics.core import MetricSums, ranking_sums, rating_sums

PROTOCOLS = ("E1", "R1")
ScoreBlock = Callable[[np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def evaluate_ratings(predict: PredictFn, test: Interactions, scale: tuple[float, float] | None) -> dict[str, float]:
    """E1 metrics of a ``predict(users, items)`` function."""
    return rating_sums(predict(test.users, test.items), test.ratings, scale).result()


def evaluate_ranking(score_block: ScoreBlock, train: Interactions, test: Interactions, *,
                     ks: tuple[int, ...] = (10,), block: int = 512) -> dict[str, float]:
    """R1 metrics of a ``score_block(users) -> (len(users), n_items)`` function."""
    seen, held = train.by_user(), test.by_user()
    users = np.flatnonzero(np.bincount(test.users, minlength=test.n_users) > 0)
    total = MetricSums()
    for start in range(0, len(users), block):
        b = users[start:start + block]
        total.merge(ranking_sums(score_block(b), [train.items[seen[u]] for u in b],
                                 [test.items[held[u]] for u in b], ks=ks))
    return total.result()


def evaluate(dataset: Dataset, protocol: str, *, predict: PredictFn, score_block: ScoreBlock,
             ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Metrics of the protocol: E1 -> rmse, mae; R1 -> hr@K, ndcg@K, recall@K."""
    if protocol == "E1":
        return evaluate_ratings(predict, dataset.test, dataset.rating_scale)
    if protocol == "R1":
        return evaluate_ranking(score_block, dataset.train, dataset.test, ks=ks)
    raise ConfigError(f"protocol: {protocol!r} is not one of {PROTOCOLS}")


def baseline_metrics(dataset: Dataset, protocol: str, *, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """The trivial reference: global mean (E1) or item popularity (R1)."""
    train = dataset.train
    if protocol == "E1":
        mu = float(train.ratings.mean())
        return evaluate_ratings(lambda u, i: np.full(len(u), mu), dataset.test, dataset.rating_scale)
    popularity = np.bincount(train.items, minlength=train.n_items).astype(np.float64)
    return evaluate(dataset, protocol, predict=lambda u, i: popularity[i],
                    score_block=lambda users: np.tile(popularity, (len(users), 1)), ks=ks)
