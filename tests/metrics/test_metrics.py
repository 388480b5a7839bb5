"""Known-answer tests for rating and ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedrec.errors import FedRecError
from fedrec.metrics.core import MetricSums, ranking_sums, rating_metrics, rating_sums


def test_rmse_mae_known_answer() -> None:
    m = rating_metrics(np.array([3.0, 4.0, 1.0]), np.array([4.0, 4.0, 3.0]))
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0 + 4) / 3))
    assert m["mae"] == pytest.approx(1.0)


def test_predictions_clipped_to_scale() -> None:
    assert rating_metrics(np.array([7.0, -1.0]), np.array([5.0, 1.0]), (1, 5))["rmse"] == 0.0


def test_sums_merge_equals_whole() -> None:
    pred, true = np.array([1.0, 2.0, 3.0, 5.0]), np.array([2.0, 2.0, 5.0, 4.0])
    merged = rating_sums(pred[:2], true[:2]).merge(rating_sums(pred[2:], true[2:]))
    assert merged.result() == pytest.approx(rating_sums(pred, true).result())


def test_hit_and_ndcg_known_answer() -> None:
    # 5 items; user saw item 0 in train; test item 3 scores third among candidates {1,2,3,4}.
    scores = np.array([[9.0, 5.0, 4.0, 3.0, 1.0]])
    m = ranking_sums(scores, [np.array([0])], [np.array([3])], ks=(2, 3)).result()
    assert m["hr@2"] == 0.0 and m["hr@3"] == 1.0
    assert m["ndcg@3"] == pytest.approx(1 / math.log2(2 + 2))
    assert m["recall@3"] == 1.0


def test_train_items_are_excluded_from_ranking() -> None:
    scores = np.array([[10.0, 9.0, 1.0]])
    m = ranking_sums(scores, [np.array([0, 1])], [np.array([2])], ks=(1,)).result()
    assert m["hr@1"] == 1.0 and m["ndcg@1"] == 1.0


def test_ties_are_pessimistic() -> None:
    scores = np.zeros((1, 100))
    assert ranking_sums(scores, [np.array([], np.int64)], [np.array([5])], ks=(10,)).result()["hr@10"] == 0.0


def test_recall_with_several_test_items() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    m = ranking_sums(scores, [np.array([], np.int64)], [np.array([0, 4])], ks=(2,)).result()
    assert m["recall@2"] == 0.5 and m["hr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(1.0 / (1 + 1 / math.log2(3)))


def test_users_without_test_items_are_skipped() -> None:
    ms = ranking_sums(np.ones((2, 4)), [np.array([0]), np.array([1])], [np.array([], np.int64), np.array([2])])
    assert ms.counts["hr@10"] == 1


def test_flat_round_trip_and_missing_count() -> None:
    ms = rating_sums(np.array([1.0]), np.array([2.0]))
    assert MetricSums.from_flat(ms.flat()).result() == ms.result()
    with pytest.raises(FedRecError, match="without count"):
        MetricSums.from_flat({"rmse.sum": 1.0})


def test_zero_count_metric_is_left_out() -> None:
    assert MetricSums().result() == {}
