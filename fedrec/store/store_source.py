"""The device's interactions as an :class:`InteractionSource`: what a deployed ClientApp trains on.

The on-device store holds one user (local index 0). Training rows are the
user's latest value per item (a re-rating replaces the old one, as in the
SDK's fold-in); an implicit event counts as ``implicit_rating``. A deployed
device has no labelled held-out rows, so ``test()`` is empty and it adds
nothing to federated evaluation.
"""

from __future__ import annotations

import numpy as np

from fedrec.data.partition import LocalInteractions
from fedrec.recommend.stream import latest_per_item
from fedrec.store.device_store import DeviceStore


class StoreSource:
    """An :class:`~fedrec.data.partition.InteractionSource` reading a :class:`DeviceStore`."""

    def __init__(self, store: DeviceStore, *, implicit_rating: float = 5.0) -> None:
        self.store = store
        self.implicit_rating = implicit_rating

    def train(self) -> LocalInteractions:
        rows = self.store.interactions()
        values = np.where(rows.implicit, np.float32(self.implicit_rating), rows.values)
        items, ratings = latest_per_item(rows.items, values)
        last_ts = {int(i): int(t) for i, t in zip(rows.items, rows.timestamps, strict=True)}
        timestamps = np.array([last_ts[int(i)] for i in items], np.int64)
        return LocalInteractions(np.zeros(len(items), np.int64), items, ratings, timestamps)

    def test(self) -> LocalInteractions:
        return LocalInteractions.empty()
