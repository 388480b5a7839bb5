"""The memory-mapped dataset store: same rows as the in-memory partitions, built once, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data.interactions import Dataset
from fedrec.data.mapped import cache_key, mapped_dataset, open_mapped, write_mapped
from fedrec.data.partition import n_partitions, partition_of, partition_users, partitions
from fedrec.data.synthetic import SyntheticConfig, synthetic_dataset
from fedrec.errors import ConfigError, DataError

CONFIG = SyntheticConfig(n_users=130, n_items=60, mean_interactions=10)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    return synthetic_dataset(CONFIG, "E1")


@pytest.mark.parametrize("users_per_client", [1, 3])
def test_mapped_rows_equal_the_in_memory_partitions(dataset: Dataset, tmp_path: Path, users_per_client: int) -> None:
    write_mapped(dataset, tmp_path / "store")
    mapped = open_mapped(tmp_path / "store")
    assert (mapped.n_users, mapped.n_items, mapped.rating_scale) == (130, 60, (1.0, 5.0))
    expected = partitions(dataset, users_per_client, seed=5)
    assert n_partitions(130, users_per_client=users_per_client) == len(expected)
    for client, reference in enumerate(expected):
        users = partition_of(130, client, users_per_client=users_per_client, seed=5)
        assert np.array_equal(users, partition_users(130, users_per_client=users_per_client, seed=5)[client])
        source = mapped.source(users)
        for got, want in ((source.train(), reference.train()), (source.test(), reference.test())):
            order_got = np.lexsort((got.timestamps, got.items, got.users))
            order_want = np.lexsort((want.timestamps, want.items, want.users))
            for column in ("users", "items", "ratings", "timestamps"):
                assert np.array_equal(getattr(got, column)[order_got], getattr(want, column)[order_want]), column
            assert got.items.dtype == np.int64 and got.ratings.dtype == np.float32


def test_the_store_is_built_once_and_then_only_mapped(dataset: Dataset, tmp_path: Path) -> None:
    builds: list[int] = []

    def build() -> Dataset:
        builds.append(1)
        return dataset

    spec = {"dataset": "synthetic", "n": 130}
    first = mapped_dataset(spec, build, root=tmp_path)
    second = mapped_dataset(spec, build, root=tmp_path)
    assert builds == [1]
    assert isinstance(second.train.items, np.memmap) and np.array_equal(first.train.items, second.train.items)
    assert [p.name for p in (tmp_path / "datasets").iterdir()] == [cache_key(spec)]  # no temporary left behind
    mapped_dataset({**spec, "n": 131}, build, root=tmp_path)
    assert builds == [1, 1]  # another specification, another store


def test_a_damaged_store_and_a_bad_partition_are_refused(dataset: Dataset, tmp_path: Path) -> None:
    write_mapped(dataset, tmp_path / "store")
    (tmp_path / "store" / "test-items.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="cannot map the dataset store"):
        open_mapped(tmp_path / "store")
    with pytest.raises(ConfigError, match="client 44 outside the 44 partitions"):
        partition_of(130, 44, users_per_client=3)
