"""Splits partition rows exactly, per user, deterministically, over one index space."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.interactions import Interactions
from fedrec.data.splits import (
    leave_last_out,
    random_holdout,
    random_kfold,
    temporal_holdout,
    validation_split,
)
from fedrec.errors import ConfigError


@st.composite
def tables(draw: st.DrawFn) -> Interactions:
    """Small tables with repeated timestamps and items; ``ratings`` hold row ids."""
    n_users = draw(st.integers(1, 6))
    n_items = draw(st.integers(1, 8))
    n = draw(st.integers(0, 50))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n))
    times = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    return Interactions.build(
        np.array(users, np.int64),
        np.array(items, np.int64),
        np.arange(n, dtype=np.float32),
        np.array(times, np.int64),
        n_users=n_users,
        n_items=n_items,
    )


def _row_ids(inter: Interactions) -> list[int]:
    return inter.ratings.astype(int).tolist()


def _assert_partition(inter: Interactions, train: Interactions, test: Interactions) -> None:
    assert sorted(_row_ids(train) + _row_ids(test)) == list(range(len(inter)))
    for part in (train, test):
        assert (part.n_users, part.n_items) == (inter.n_users, inter.n_items)
        assert part.user_ids is inter.user_ids and part.item_ids is inter.item_ids


def _per_user(inter: Interactions) -> np.ndarray:
    return np.bincount(inter.users, minlength=inter.n_users)


@settings(max_examples=60, deadline=None)
@given(tables(), st.integers(2, 6), st.integers(0, 3))
def test_random_kfold_folds_partition_all_rows(inter: Interactions, k: int, seed: int) -> None:
    seen: list[int] = []
    sizes = _per_user(inter)
    for fold in range(1, k + 1):
        train, test = random_kfold(inter, k=k, fold=fold, seed=seed)
        _assert_partition(inter, train, test)
        seen += _row_ids(test)
        per_user = _per_user(test)
        assert np.all((per_user == sizes // k) | (per_user == -(-sizes // k)))
        assert np.all(_per_user(train)[sizes >= 2] >= 1)
    assert sorted(seen) == list(range(len(inter)))


@settings(max_examples=60, deadline=None)
@given(tables())
def test_leave_last_out_takes_max_timestamp_then_item(inter: Interactions) -> None:
    train, test = leave_last_out(inter)
    _assert_partition(inter, train, test)
    sizes = _per_user(inter)
    assert _per_user(test).tolist() == (sizes >= 2).astype(int).tolist()
    for row in _row_ids(test):
        u = inter.users[row]
        mine = np.flatnonzero(inter.users == u)
        latest = max(zip(inter.timestamps[mine].tolist(), inter.items[mine].tolist(), strict=True))
        assert (inter.timestamps[row], inter.items[row]) == latest


@settings(max_examples=60, deadline=None)
@given(tables(), st.floats(0.05, 0.95))
def test_temporal_holdout_test_is_latest(inter: Interactions, fraction: float) -> None:
    train, test = temporal_holdout(inter, fraction=fraction)
    _assert_partition(inter, train, test)
    sizes = _per_user(inter)
    expected = [min(n - 1, math.ceil(fraction * n - 1e-9)) if n else 0 for n in sizes.tolist()]
    assert _per_user(test).tolist() == expected
    for u in range(inter.n_users):
        tr = [
            (t, i)
            for t, i, x in zip(train.timestamps, train.items, train.users, strict=True)
            if x == u
        ]
        te = [
            (t, i)
            for t, i, x in zip(test.timestamps, test.items, test.users, strict=True)
            if x == u
        ]
        if tr and te:
            assert max(tr) <= min(te)


@settings(max_examples=40, deadline=None)
@given(tables(), st.integers(0, 3))
def test_random_validation_split(inter: Interactions, seed: int) -> None:
    train, valid = validation_split(inter, kind="random", fraction=0.3, seed=seed)
    _assert_partition(inter, train, valid)
    again = validation_split(inter, kind="random", fraction=0.3, seed=seed)
    assert _row_ids(again[1]) == _row_ids(valid)
    assert np.all(_per_user(train)[_per_user(inter) >= 1] >= 1)


def test_known_answer_leave_last_out_ties() -> None:
    inter = Interactions.build(
        np.array([0, 0, 0, 1]),
        np.array([5, 2, 7, 1]),
        timestamps=np.array([10, 20, 20, 3]),
        n_items=8,
    )
    train, test = leave_last_out(inter)
    assert test.items.tolist() == [7]  # same time as item 2, larger item index is "later"
    assert train.items.tolist() == [5, 2, 1]  # single-row user 1 stays in train


def test_splits_are_deterministic() -> None:
    rng = np.random.default_rng(1)
    inter = Interactions.build(rng.integers(0, 20, 500), rng.integers(0, 30, 500))
    a = random_kfold(inter, k=5, fold=2, seed=7)[1]
    b = random_kfold(inter, k=5, fold=2, seed=7)[1]
    c = random_kfold(inter, k=5, fold=2, seed=8)[1]
    assert np.array_equal(a.items, b.items) and np.array_equal(a.users, b.users)
    assert not (np.array_equal(a.items, c.items) and np.array_equal(a.users, c.users))
    assert validation_split(inter)[1].users.tolist() == leave_last_out(inter)[1].users.tolist()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: random_kfold(x, k=1), "k must be an integer >= 2"),
        (lambda x: random_kfold(x, k=5, fold=0), r"fold must be an integer in 1\.\.5"),
        (lambda x: random_kfold(x, seed=-1), "seed must be a non-negative integer"),
        (lambda x: temporal_holdout(x, fraction=1.0), r"fraction must be in \(0, 1\)"),
        (lambda x: temporal_holdout(x), "exactly one of fraction and n_test"),
        (lambda x: random_holdout(x, fraction=0.0), r"fraction must be in \(0, 1\)"),
        (
            lambda x: validation_split(x, kind="temporal"),  # type: ignore[arg-type]
            "valid: 'leave_last_out', 'random'",
        ),
    ],
)
def test_bad_split_arguments(call: object, match: str) -> None:
    inter = Interactions.build(np.array([0, 0]), np.array([0, 1]))
    with pytest.raises(ConfigError, match=match):
        call(inter)  # type: ignore[operator]
