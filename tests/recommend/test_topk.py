from __future__ import annotations

import logging

import numpy as np
import pytest

from fedrec.errors import ModelError
from fedrec.model.params import GlobalParams, LocalParams
from fedrec.recommend.stream import FoldInConfig, latest_per_item, user_factor
from fedrec.recommend.topk import TopK, exact_topk


def _table(n: int = 300, d: int = 8, seed: int = 0) -> GlobalParams:
    rng = np.random.default_rng(seed)
    return GlobalParams(rng.standard_normal((n, d)).astype(np.float32),
                        rng.standard_normal(n).astype(np.float32) * 0.3, 3.0)


def _user(d: int = 8, seed: int = 1) -> LocalParams:
    return LocalParams(np.random.default_rng(seed).standard_normal(d).astype(np.float32), 0.2)


def test_exact_topk_is_the_head_of_a_full_sort() -> None:
    s = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(exact_topk(s, 10), np.argsort(-s)[:10])
    s[np.argsort(-s)[:5]] = -np.inf
    assert len(exact_topk(s, 998)) == 995 and not np.isin(np.argsort(-s)[-5:], exact_topk(s, 998)).any()


def test_scores_are_predictions_and_filters_hold() -> None:
    glob, user = _table(), _user()
    full = glob.global_mean + user.user_bias + glob.item_bias + glob.item_factors @ user.user_factor
    top = TopK(glob).recommend(user, 5)
    np.testing.assert_array_equal(top.items, np.argsort(-full)[:5])
    np.testing.assert_allclose(top.scores, full[top.items], rtol=1e-5)
    seen, deny = top.items[:2], top.items[2:3]
    again = TopK(glob).recommend(user, 5, exclude=seen, deny=deny)
    assert not set(again.items) & (set(seen) | set(deny))
    np.testing.assert_array_equal(again.items[:2], top.items[3:5])
    allow = np.array([7, 8, 9, int(top.items[0])])
    only = TopK(glob).recommend(user, 10, allow=allow, exclude=top.items[:1])
    assert set(only.items) == {7, 8, 9}


def test_bad_k_and_allow_list_are_errors() -> None:
    with pytest.raises(ModelError, match="k must be"):
        TopK(_table()).recommend(_user(), 0)
    with pytest.raises(ModelError, match="outside"):
        TopK(_table()).recommend(_user(), 3, allow=np.array([5, 300]))


def test_ann_index_agrees_with_exact_and_never_returns_excluded() -> None:
    pytest.importorskip("hnswlib")
    glob = _table(3000, 16)
    ann, exact = TopK(glob, ann_threshold=0), TopK(glob, ann_threshold=10**9)
    assert ann.index is not None and exact.index is None
    hits = 0
    for seed in range(30):
        user = _user(16, seed)
        seen = np.random.default_rng(seed).choice(3000, 20, replace=False)
        a, e = ann.recommend(user, 10, exclude=seen), exact.recommend(user, 10, exclude=seen)
        assert not np.isin(a.items, seen).any()
        hits += len(set(a.items) & set(e.items))
    assert hits / 300 >= 0.9


def test_no_backend_falls_back_to_exact_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        topk = TopK(_table(), ann_threshold=0, ann_backend="no-such-backend")
    assert topk.index is None and "scoring exactly" in caplog.text


def test_fold_in_uses_the_latest_rating_and_implicit_value() -> None:
    items, values = latest_per_item(np.array([4, 2, 4]), np.array([1.0, 3.0, 5.0], np.float32))
    assert items.tolist() == [2, 4] and values.tolist() == [3.0, 5.0]
    glob = _table()
    a = user_factor(glob, np.array([4, 2, 4]), np.array([1.0, 3.0, 5.0], np.float32), np.zeros(3, bool),
                    config=FoldInConfig())
    b = user_factor(glob, np.array([2, 4]), np.array([3.0, 1.0], np.float32), np.array([False, True]),
                    config=FoldInConfig(implicit_rating=5.0))
    np.testing.assert_allclose(a.user_factor, b.user_factor, rtol=1e-5)
