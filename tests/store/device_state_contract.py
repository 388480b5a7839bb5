"""Contract tests every :class:`fedrec.store.device_state.DeviceStateStore` passes.

Subclass :class:`DeviceStateContract` in the implementation's test module and
provide ``make_store(tmp_path)`` (a fresh, empty store) and ``reopen(store,
tmp_path)`` (the same store as a new process would open it: from disk where it
persists, or the same object for in-memory stores).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fedrec.store.device_state import DeviceStateStore


class DeviceStateContract:
    def make_store(self, tmp_path: Path) -> Any:
        raise NotImplementedError

    def reopen(self, store: Any, tmp_path: Path) -> Any:
        raise NotImplementedError

    def test_is_a_device_state_store(self, tmp_path: Path) -> None:
        assert isinstance(self.make_store(tmp_path), DeviceStateStore)

    def test_new_store_is_empty(self, tmp_path: Path) -> None:
        assert self.make_store(tmp_path).load() == {}

    def test_round_trip_keeps_names_dtypes_shapes_values(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        state = {"fedrec.local.0.user_factor": np.arange(6, dtype=np.float32).reshape(2, 3),
                 "fedrec.privacy.0": np.frombuffer(b'{"eps": 1.5}', np.uint8).copy(),
                 "fedrec.stream": np.array([2**61 + 7], np.int64)}
        store.save(state)
        back = self.reopen(store, tmp_path).load()
        assert set(back) == set(state)
        for k, v in state.items():
            assert back[k].dtype == v.dtype and back[k].shape == v.shape
            np.testing.assert_array_equal(back[k], v)

    def test_save_replaces_the_whole_state(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        store.save({"a": np.zeros(3), "b": np.ones(2)})
        store.save({"b": np.full(2, 5.0)})
        back = self.reopen(store, tmp_path).load()
        assert set(back) == {"b"}
        np.testing.assert_array_equal(back["b"], [5.0, 5.0])

    def test_loaded_state_is_a_copy(self, tmp_path: Path) -> None:
        store = self.make_store(tmp_path)
        store.save({"a": np.zeros(3)})
        got = store.load()
        got["a"][:] = 9.0
        got["new"] = np.ones(1)
        again = store.load()
        assert set(again) == {"a"}
        np.testing.assert_array_equal(again["a"], np.zeros(3))
