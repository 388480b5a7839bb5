"""Users → clients, and the interface through which a client reads its device's data.

A federated client sees only its own rows. :class:`InteractionSource` is that
view: the Flower ClientApp asks it for ``train()`` and ``test()`` rows and
nothing else, so the simulation (:class:`PartitionSource`, slicing a shared
:class:`Dataset`) and an on-device store can be swapped without touching the
client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol, runtime_checkable

import numpy as np

from fedrec.data.interactions import Dataset, Interactions
from fedrec.errors import ConfigError, DataError


@dataclass(frozen=True)
class LocalInteractions:
    """One device's rows; items are indices in the global item index space.

    Attributes
    ----------
    users:
        ``int64`` local user ids ``0..m-1`` (all ``0`` for a one-user client):
        the device keeps its own user factors, indexed locally.
    items:
        ``int64`` global item indices.
    ratings:
        ``float32`` ratings (``1.0`` for implicit feedback).
    timestamps:
        ``int64`` seconds.
    weights:
        ``float32`` confidence weights (:attr:`Interactions.weights`; all ones by default).
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.weights) == 0 and n:
            object.__setattr__(self, "weights", np.ones(n, np.float32))
        for name in ("items", "ratings", "timestamps", "weights"):
            if len(getattr(self, name)) != n:
                raise DataError(
                    f"LocalInteractions: column {name!r} has {len(getattr(self, name))} rows, "
                    f"users has {n}"
                )

    def __len__(self) -> int:
        return len(self.users)

    @classmethod
    def empty(cls) -> LocalInteractions:
        """No rows (a user without test interactions)."""
        return cls(
            np.empty(0, np.int64),
            np.empty(0, np.int64),
            np.empty(0, np.float32),
            np.empty(0, np.int64),
        )


@runtime_checkable
class InteractionSource(Protocol):
    """What a client may read: its own training and test rows."""

    def train(self) -> LocalInteractions:
        """Rows the client trains on."""
        ...

    def test(self) -> LocalInteractions:
        """Held-out rows the client evaluates on (never trained on)."""
        ...


class PartitionSource:
    """Simulation source: the rows of a few users of a shared :class:`Dataset`.

    Parameters
    ----------
    dataset:
        The train/test pair the simulation runs on.
    users:
        Global user indices of this client; local user ``j`` is ``users[j]``.
    groups:
        Optional precomputed ``(train.by_user(), test.by_user())``; without it
        the rows are found with one ``O(rows)`` scan, which is fine for one
        source but not for thousands (use :func:`partitions`).
    """

    def __init__(
        self,
        dataset: Dataset,
        users: np.ndarray,
        *,
        groups: tuple[list[np.ndarray], list[np.ndarray]] | None = None,
    ) -> None:
        self.dataset = dataset
        self.users = np.asarray(users, dtype=np.int64)
        if self.users.ndim != 1 or len(np.unique(self.users)) != len(self.users):
            raise ConfigError("PartitionSource users must be a 1-D array of distinct user indices")
        if len(self.users) and (self.users.min() < 0 or self.users.max() >= dataset.n_users):
            raise ConfigError(f"PartitionSource users must lie in [0, {dataset.n_users})")
        self._sorter = np.argsort(self.users, kind="stable")
        if groups is None:
            self._train_rows = _rows_of(dataset.train, self.users)
            self._test_rows = _rows_of(dataset.test, self.users)
        else:
            self._train_rows = _gather(groups[0], self.users)
            self._test_rows = _gather(groups[1], self.users)

    def train(self) -> LocalInteractions:
        """This client's training rows (user-major, file order within a user)."""
        return self._local(self.dataset.train, self._train_rows)

    def test(self) -> LocalInteractions:
        """This client's test rows."""
        return self._local(self.dataset.test, self._test_rows)

    def _local(self, inter: Interactions, rows: np.ndarray) -> LocalInteractions:
        local = np.searchsorted(self.users, inter.users[rows], sorter=self._sorter)
        return LocalInteractions(
            self._sorter[local], inter.items[rows], inter.ratings[rows], inter.timestamps[rows],
            inter.weights[rows],
        )

    def __repr__(self) -> str:
        return f"PartitionSource({self.dataset.name!r}, users={self.users.tolist()!r})"


def partition_users(n_users: int, *, users_per_client: int = 1, seed: int = 0) -> list[np.ndarray]:
    """Assign users to clients.

    One user per client (the cross-device setting) keeps user order, so client
    ``c`` is user ``c``. With several users per client they are shuffled with
    ``seed`` first (so a client is not a block of similar neighbouring ids) and
    dealt in chunks; the last client may be smaller. Each client's users are
    sorted.
    """
    if not isinstance(n_users, int) or n_users < 1:
        raise ConfigError(f"n_users must be an integer >= 1, got {n_users!r}")
    if not isinstance(users_per_client, int) or users_per_client < 1:
        raise ConfigError(f"users_per_client must be an integer >= 1, got {users_per_client!r}")
    if users_per_client == 1:
        return [np.array([u], dtype=np.int64) for u in range(n_users)]
    order = np.random.default_rng(seed).permutation(n_users).astype(np.int64)
    return [np.sort(order[i : i + users_per_client]) for i in range(0, n_users, users_per_client)]


def partitions(
    dataset: Dataset, users_per_client: int = 1, *, seed: int = 0
) -> list[PartitionSource]:
    """One :class:`PartitionSource` per client, built in ``O(rows + clients)``."""
    groups = (dataset.train.by_user(), dataset.test.by_user())
    return [
        PartitionSource(dataset, users, groups=groups)
        for users in partition_users(dataset.n_users, users_per_client=users_per_client, seed=seed)
    ]


def _rows_of(inter: Interactions, users: np.ndarray) -> np.ndarray:
    """Rows of ``users``, grouped in ``users`` order (stable within a user)."""
    rows = np.flatnonzero(np.isin(inter.users, users))
    rank = np.empty(len(users), dtype=np.int64)
    order = np.argsort(users, kind="stable")
    rank[order] = np.arange(len(users))
    position = rank[np.searchsorted(users, inter.users[rows], sorter=order)]
    return rows[np.argsort(position, kind="stable")]


def _gather(groups: list[np.ndarray], users: np.ndarray) -> np.ndarray:
    if len(users) == 1:
        return groups[int(users[0])]
    return np.concatenate([groups[int(u)] for u in users]) if len(users) else np.empty(0, np.int64)


def n_partitions(n_users: int, *, users_per_client: int = 1) -> int:
    """Number of clients :func:`partition_users` makes, without making them."""
    return -(-n_users // users_per_client)


def partition_of(n_users: int, client: int, *, users_per_client: int = 1, seed: int = 0) -> np.ndarray:
    """Users of one client, equal to ``partition_users(...)[client]`` without building the other clients.

    A simulated device calls this when its message arrives; at a million users
    building every client's array in every worker would cost seconds and
    hundreds of megabytes per process.
    """
    if not 0 <= client < n_partitions(n_users, users_per_client=users_per_client):
        raise ConfigError(f"client {client} outside the {n_partitions(n_users, users_per_client=users_per_client)} "
                          "partitions")
    if users_per_client == 1:
        return np.array([client], dtype=np.int64)
    order = _shuffled_users(n_users, seed)
    return np.sort(order[client * users_per_client : (client + 1) * users_per_client])


@lru_cache(maxsize=2)
def _shuffled_users(n_users: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n_users).astype(np.int64)
