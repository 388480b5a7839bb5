from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_state_contract import DeviceStateContract

from fedrec.errors import CheckpointError
from fedrec.store.device_state import MemoryStateStore, pack_state, unpack_state


class TestMemoryStateStore(DeviceStateContract):
    def make_store(self, tmp_path: Path) -> Any:
        return MemoryStateStore()

    def reopen(self, store: Any, tmp_path: Path) -> Any:
        return store


def test_pack_refuses_object_arrays() -> None:
    with pytest.raises(CheckpointError, match="'x'"):
        pack_state({"x": np.array([object()], dtype=object)})


@pytest.mark.parametrize("blob", [b"not a zip", pack_state({"a": np.ones(4)})[:-7]])
def test_unpack_names_where_for_garbage(blob: bytes) -> None:
    with pytest.raises(CheckpointError, match="^device 7: device state is not readable"):
        unpack_state(blob, where="device 7")


def test_empty_blob_is_a_new_device() -> None:
    assert unpack_state(b"", where="x") == {}
