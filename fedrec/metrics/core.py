"""Rating and ranking metrics, computed as sums and counts.

Every metric is returned as additive *sums and counts* (:class:`MetricSums`), so
that a device can evaluate on its own held-out rows and send only two numbers per
metric; the server adds them up and divides once. The centralized evaluator uses
the same functions over blocks of users, so federated and centralized numbers
are computed by one code path.

Ranking is over the *full* catalogue: every item the user did not interact with
in train is a candidate (no sampled negatives). Ties are broken pessimistically
(an item with a score equal to the test item's counts as ranked above it), so a
constant scorer gets no credit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedrec.errors import FedRecError


@dataclass
class MetricSums:
    """Additive metric numerators with their denominators.

    ``sums["rmse"]`` holds the sum of squared errors and ``counts["rmse"]`` the
    number of ratings; :meth:`result` takes the square root for RMSE only.
    """

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, total: float, count: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(total)
        self.counts[name] = self.counts.get(name, 0.0) + float(count)

    def merge(self, other: MetricSums) -> MetricSums:
        for name in other.sums:
            self.add(name, other.sums[name], other.counts[name])
        return self

    def result(self) -> dict[str, float]:
        """Final metrics; a metric with a zero count is left out rather than invented."""
        out = {}
        for name, total in self.sums.items():
            count = self.counts[name]
            if count <= 0:
                continue
            value = total / count
            out[name] = float(np.sqrt(value)) if name == "rmse" else float(value)
        return out

    def flat(self) -> dict[str, float]:
        """``{"rmse.sum": .., "rmse.count": ..}`` form used in messages."""
        out = {f"{k}.sum": v for k, v in self.sums.items()}
        out.update({f"{k}.count": v for k, v in self.counts.items()})
        return out

    @classmethod
    def from_flat(cls, flat: Mapping[str, float]) -> MetricSums:
        ms = cls()
        for key, value in flat.items():
            if key.endswith(".sum"):
                name = key[: -len(".sum")]
                if f"{name}.count" not in flat:
                    raise FedRecError(f"metric {name!r}: sum without count")
                ms.add(name, float(value), float(flat[f"{name}.count"]))
        return ms


def rating_sums(predictions: np.ndarray, ratings: np.ndarray,
                scale: tuple[float, float] | None = None) -> MetricSums:
    """RMSE and MAE sums; predictions are clipped to the rating scale first."""
    pred = np.asarray(predictions, np.float64)
    if scale is not None:
        pred = np.clip(pred, scale[0], scale[1])
    err = pred - np.asarray(ratings, np.float64)
    ms = MetricSums()
    ms.add("rmse", float(np.sum(err * err)), len(err))
    ms.add("mae", float(np.sum(np.abs(err))), len(err))
    return ms


def ranking_sums(scores: np.ndarray, train_items: Iterable[np.ndarray], test_items: Iterable[np.ndarray],
                 *, ks: tuple[int, ...] = (10,)) -> MetricSums:
    """HR@K, NDCG@K and Recall@K for a block of users.

    Parameters
    ----------
    scores:
        ``(n_users_in_block, n_items)`` scores; modified in place (seen items masked).
    train_items, test_items:
        Per user of the block, the item indices seen in train (excluded from
        ranking) and the held-out items. Users without test items are skipped.

    Notes
    -----
    HR@K is the fraction of users with at least one test item in the top K;
    Recall@K divides the hits by ``min(K, |test|)``; NDCG@K uses binary gains.
    With one test item per user (protocol R1) HR@K equals Recall@K.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ms = MetricSums()
    for row, (seen, held) in enumerate(zip(train_items, test_items, strict=True)):
        held = np.unique(np.asarray(held, np.int64))
        if len(held) == 0:
            continue
        s = scores[row]
        s[np.asarray(seen, np.int64)] = -np.inf
        _add_user_ranking(ms, s, held, ks)
    return ms


def _add_user_ranking(ms: MetricSums, s: np.ndarray, held: np.ndarray, ks: tuple[int, ...]) -> None:
    held_scores = s[held]
    # Pessimistic rank: items scoring >= the held item, other than itself, come first.
    ranks = (s[None, :] >= held_scores[:, None]).sum(axis=1) - 1
    ranks = ranks + _equal_held_before(held_scores)
    for k in ks:
        hit = ranks < k
        n_hits = int(hit.sum())
        dcg = float(np.sum(1.0 / np.log2(ranks[hit] + 2.0)))
        idcg = float(np.sum(1.0 / np.log2(np.arange(min(k, len(held))) + 2.0)))
        ms.add(f"hr@{k}", float(n_hits > 0), 1)
        ms.add(f"recall@{k}", n_hits / min(k, len(held)), 1)
        ms.add(f"ndcg@{k}", dcg / idcg, 1)


def _equal_held_before(held_scores: np.ndarray) -> np.ndarray:
    """Held items count each other only when strictly better; remove equal-score peers."""
    eq = (held_scores[None, :] == held_scores[:, None]).sum(axis=1) - 1
    return np.asarray(-eq)


def rating_metrics(predictions: np.ndarray, ratings: np.ndarray,
                   scale: tuple[float, float] | None = None) -> dict[str, float]:
    """RMSE and MAE as plain numbers (centralized convenience)."""
    return rating_sums(predictions, ratings, scale).result()
