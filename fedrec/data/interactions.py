"""Interaction tables and id maps: the one data contract the whole library shares.

Every loader, generator and split produces :class:`Interactions`; every trainer,
metric and client consumes it. Users and items are dense ``0..n-1`` indices; the
:class:`IdMap` objects keep the external ids (MovieLens ids, CSV strings) so a
result can be mapped back and a saved dataset reloaded with the same indices.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedrec.errors import DataError


@dataclass(frozen=True)
class IdMap:
    """Stable bijection between external ids (strings) and dense indices.

    External ids are kept as strings so MovieLens integers, UUIDs and CSV
    labels share one representation; index ``i`` is ``ids[i]``.
    """

    ids: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {external: i for i, external in enumerate(self.ids)}
        if len(index) != len(self.ids):
            raise DataError("IdMap: external ids must be unique")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_values(cls, values: Iterable[object]) -> IdMap:
        """Build a map in first-seen order (deterministic for a given file)."""
        seen: dict[str, None] = {}
        for v in values:
            seen.setdefault(str(v), None)
        return cls(tuple(seen))

    @classmethod
    def range(cls, n: int) -> IdMap:
        """Identity map ``"0".."n-1"`` used by synthetic data."""
        return cls(tuple(str(i) for i in range(n)))

    def __len__(self) -> int:
        return len(self.ids)

    def index(self, external: object) -> int:
        """Dense index of an external id; ``DataError`` when unknown."""
        try:
            return self._index[str(external)]
        except KeyError:
            raise DataError(f"unknown id {external!r}") from None

    def indices(self, externals: Sequence[object]) -> np.ndarray:
        """Vectorised :meth:`index`."""
        return np.fromiter((self.index(e) for e in externals), dtype=np.int64, count=len(externals))

    def external(self, index: int) -> str:
        """External id of a dense index."""
        return self.ids[index]


@dataclass(frozen=True)
class Interactions:
    """A table of (user, item, rating, timestamp) rows over dense indices.

    Attributes
    ----------
    users, items:
        ``int64`` dense indices in ``[0, n_users)`` and ``[0, n_items)``.
    ratings:
        ``float32`` explicit ratings, or ``1.0`` for implicit interactions.
    timestamps:
        ``int64`` seconds (``0`` when the source has none); used by temporal splits.
    n_users, n_items:
        Sizes of the index spaces. They can exceed the ids present (a test split
        shares the train split's index space).
    user_ids, item_ids:
        Maps back to external ids.
    weights:
        ``float32`` confidence weight of each row (implicit feedback), all ones
        unless the source had counts (``csv.weight-col``: ``1 + alpha * log(1 + c)``).
        Trainers multiply a positive's loss by it; splits and subsets carry it.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    n_users: int
    n_items: int
    user_ids: IdMap
    item_ids: IdMap
    weights: np.ndarray = field(default_factory=lambda: np.ones(0, np.float32))

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.weights) == 0 and n:
            object.__setattr__(self, "weights", np.ones(n, np.float32))
        for name in ("items", "ratings", "timestamps", "weights"):
            if len(getattr(self, name)) != n:
                got = len(getattr(self, name))
                raise DataError(f"Interactions: column {name!r} has {got} rows, users has {n}")
        if len(self.user_ids) != self.n_users or len(self.item_ids) != self.n_items:
            raise DataError("Interactions: id maps must cover n_users and n_items")
        if n and (self.users.min() < 0 or self.users.max() >= self.n_users):
            raise DataError("Interactions: user index out of range")
        if n and (self.items.min() < 0 or self.items.max() >= self.n_items):
            raise DataError("Interactions: item index out of range")

    @classmethod
    def build(
        cls,
        users: np.ndarray,
        items: np.ndarray,
        ratings: np.ndarray | None = None,
        timestamps: np.ndarray | None = None,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        user_ids: IdMap | None = None,
        item_ids: IdMap | None = None,
        weights: np.ndarray | None = None,
    ) -> Interactions:
        """Build from arrays, filling implicit ratings, missing timestamps, unit weights and maps."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        n = len(users)
        if n_users is None:
            n_users = len(user_ids) if user_ids else int(users.max(initial=-1)) + 1
        if n_items is None:
            n_items = len(item_ids) if item_ids else int(items.max(initial=-1)) + 1
        return cls(
            users=users,
            items=items,
            ratings=np.ones(n, np.float32) if ratings is None else np.asarray(ratings, np.float32),
            timestamps=(
                np.zeros(n, np.int64) if timestamps is None else np.asarray(timestamps, np.int64)
            ),
            n_users=n_users,
            n_items=n_items,
            user_ids=user_ids or IdMap.range(n_users),
            item_ids=item_ids or IdMap.range(n_items),
            weights=np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32),
        )

    def __len__(self) -> int:
        return len(self.users)

    def subset(self, mask_or_index: np.ndarray) -> Interactions:
        """Rows selected by a boolean mask or an index array, same index spaces."""
        return Interactions(
            users=self.users[mask_or_index],
            items=self.items[mask_or_index],
            ratings=self.ratings[mask_or_index],
            timestamps=self.timestamps[mask_or_index],
            n_users=self.n_users,
            n_items=self.n_items,
            user_ids=self.user_ids,
            item_ids=self.item_ids,
            weights=self.weights[mask_or_index],
        )

    def for_user(self, user: int) -> Interactions:
        """Rows of one user (linear scan; use :meth:`by_user` for many users)."""
        return self.subset(self.users == user)

    def by_user(self) -> list[np.ndarray]:
        """Row indices grouped by user: ``result[u]`` are the rows of user ``u``."""
        order = np.argsort(self.users, kind="stable")
        counts = np.bincount(self.users, minlength=self.n_users)
        return np.split(order, np.cumsum(counts)[:-1])

    def with_ratings(self, ratings: np.ndarray) -> Interactions:
        """Same rows with other ratings (e.g. implicit 1.0 for ranking)."""
        return Interactions(
            self.users,
            self.items,
            np.asarray(ratings, np.float32),
            self.timestamps,
            self.n_users,
            self.n_items,
            self.user_ids,
            self.item_ids,
            self.weights,
        )

    def with_weights(self, weights: np.ndarray) -> Interactions:
        """Same rows with other confidence weights (one finite value >= 0 per row)."""
        weights = np.asarray(weights, np.float32)
        if len(weights) != len(self) or not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise DataError(f"Interactions: weights must be {len(self)} finite values >= 0")
        return Interactions(self.users, self.items, self.ratings, self.timestamps, self.n_users,
                            self.n_items, self.user_ids, self.item_ids, weights)

    def save(self, directory: Path) -> None:
        """Write ``interactions.npz`` and ``id_maps.json`` (atomic, via temp files)."""
        from fedrec.store.atomic import atomic_write_bytes

        directory.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        np.savez(
            buf,
            users=self.users,
            items=self.items,
            ratings=self.ratings,
            timestamps=self.timestamps,
            weights=self.weights,
        )
        atomic_write_bytes(directory / "interactions.npz", buf.getvalue())
        maps = {"user_ids": list(self.user_ids.ids), "item_ids": list(self.item_ids.ids)}
        atomic_write_bytes(directory / "id_maps.json", json.dumps(maps).encode())

    @classmethod
    def load(cls, directory: Path) -> Interactions:
        """Read what :meth:`save` wrote; the id maps restore the same indices."""
        try:
            arrays = np.load(directory / "interactions.npz")
            maps = json.loads((directory / "id_maps.json").read_text())
        except (OSError, ValueError) as exc:
            raise DataError(f"{directory}: cannot read saved interactions: {exc}") from exc
        user_ids, item_ids = IdMap(tuple(maps["user_ids"])), IdMap(tuple(maps["item_ids"]))
        return cls(
            arrays["users"],
            arrays["items"],
            arrays["ratings"],
            arrays["timestamps"],
            len(user_ids),
            len(item_ids),
            user_ids,
            item_ids,
            arrays["weights"] if "weights" in arrays.files else np.ones(0, np.float32),
        )


@dataclass(frozen=True)
class Dataset:
    """A train/test pair over one index space, with what kind of feedback it is.

    ``rating_scale`` is ``(low, high)`` for explicit data, ``None`` for implicit.
    ``name`` is used in reports and run folders.
    """

    name: str
    train: Interactions
    test: Interactions
    rating_scale: tuple[float, float] | None = (1.0, 5.0)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_items(self) -> int:
        return self.train.n_items
