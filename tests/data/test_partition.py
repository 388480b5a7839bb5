"""Users → clients and the per-device InteractionSource."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.data.interactions import Dataset, Interactions
from fedrec.data.partition import (
    InteractionSource,
    LocalInteractions,
    PartitionSource,
    partition_users,
    partitions,
)
from fedrec.errors import ConfigError, DataError


def _dataset() -> Dataset:
    train = Interactions.build(
        np.array([0, 1, 1, 2, 0, 3]),
        np.array([4, 0, 1, 2, 3, 1]),
        np.array([5, 4, 3, 2, 1, 5], np.float32),
        np.array([10, 11, 12, 13, 14, 15]),
        n_users=5,
        n_items=6,
    )
    test = Interactions.build(
        np.array([2, 0]),
        np.array([5, 0]),
        np.array([1, 2], np.float32),
        np.array([20, 21]),
        n_users=5,
        n_items=6,
    )
    return Dataset("tiny", train, test)


def test_one_user_per_client_in_user_order() -> None:
    clients = partition_users(4)
    assert [c.tolist() for c in clients] == [[0], [1], [2], [3]]
    assert all(c.dtype == np.int64 for c in clients)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 200), st.integers(1, 20), st.integers(0, 5))
def test_clients_partition_the_users(n_users: int, per_client: int, seed: int) -> None:
    clients = partition_users(n_users, users_per_client=per_client, seed=seed)
    assert sorted(np.concatenate(clients).tolist()) == list(range(n_users))
    assert all(1 <= len(c) <= per_client for c in clients)
    assert len(clients) == -(-n_users // per_client)
    again = partition_users(n_users, users_per_client=per_client, seed=seed)
    assert all(np.array_equal(a, b) for a, b in zip(clients, again, strict=True))


def test_partition_users_rejects_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="users_per_client must be an integer >= 1"):
        partition_users(10, users_per_client=0)
    with pytest.raises(ConfigError, match="n_users must be an integer >= 1"):
        partition_users(0)


def test_partition_source_known_answer() -> None:
    source = PartitionSource(_dataset(), np.array([0]))
    assert isinstance(source, InteractionSource)
    train, test = source.train(), source.test()
    assert train.users.tolist() == [0, 0] and train.items.tolist() == [4, 3]
    assert train.ratings.tolist() == [5, 1] and train.timestamps.tolist() == [10, 14]
    assert test.items.tolist() == [0] and test.users.tolist() == [0]


def test_multi_user_source_uses_local_ids() -> None:
    source = PartitionSource(_dataset(), np.array([3, 1]))
    train = source.train()
    assert train.users.tolist() == [0, 1, 1]  # user 3 → local 0, user 1 → local 1
    assert train.items.tolist() == [1, 0, 1]
    assert len(source.test()) == 0
    empty = PartitionSource(_dataset(), np.array([4]))
    assert len(empty.train()) == 0 and empty.train().items.dtype == np.int64


def test_partitions_match_standalone_sources() -> None:
    rng = np.random.default_rng(0)
    train = Interactions.build(
        rng.integers(0, 50, 800),
        rng.integers(0, 40, 800),
        rng.integers(1, 6, 800).astype(np.float32),
        np.arange(800),
        n_users=50,
        n_items=40,
    )
    test = train.subset(np.arange(0, 800, 7))
    ds = Dataset("r", train.subset(np.setdiff1d(np.arange(800), np.arange(0, 800, 7))), test)
    for per_client in (1, 3):
        sources = partitions(ds, per_client, seed=2)
        assert len(sources) == -(-50 // per_client)
        total = 0
        for fast in sources:
            slow = PartitionSource(ds, fast.users)
            for a, b in ((fast.train(), slow.train()), (fast.test(), slow.test())):
                for col in ("users", "items", "ratings", "timestamps"):
                    assert np.array_equal(getattr(a, col), getattr(b, col))
            total += len(fast.train())
        assert total == len(ds.train)


def test_source_rejects_bad_users_and_local_interactions_checks_lengths() -> None:
    with pytest.raises(ConfigError, match="distinct"):
        PartitionSource(_dataset(), np.array([1, 1]))
    with pytest.raises(ConfigError, match=r"must lie in \[0, 5\)"):
        PartitionSource(_dataset(), np.array([7]))
    with pytest.raises(DataError, match="column 'items' has 1 rows, users has 2"):
        LocalInteractions(
            np.zeros(2, np.int64),
            np.zeros(1, np.int64),
            np.zeros(2, np.float32),
            np.zeros(2, np.int64),
        )
