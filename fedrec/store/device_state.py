"""The one device-state interface: where a device keeps what never leaves it.

A device's private state is a flat mapping of names to numpy arrays: its users'
factors and biases, their privacy accountants, the secure-aggregation round
state and its randomness stream offset (keys in :mod:`fedrec.wire`). Training
code reads and writes that mapping only; *where* it lives is a
:class:`DeviceStateStore`:

- in simulation, Flower's ``Context.state`` plus a persisted copy written with
  each server checkpoint, so a resumed run resumes every device;
- in deployment, the encrypted on-device store of the client SDK.

Every implementation passes the shared contract tests in
``tests/store/device_state_contract.py``. :func:`pack_state` /
:func:`unpack_state` give the one byte format for a whole state (an ``.npz``
archive without pickles), so stores that persist bytes agree on it.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np

from fedrec.errors import CheckpointError

DeviceState = dict[str, np.ndarray]


@runtime_checkable
class DeviceStateStore(Protocol):
    """Load and save one device's private state as a whole.

    ``load`` returns a fresh dict (mutating it changes nothing until ``save``);
    an empty dict means a device that has never trained. ``save`` replaces the
    stored state atomically: after it returns, a crash loses nothing saved.
    """

    def load(self) -> DeviceState:
        """The device's state, or ``{}`` for a new device."""
        ...

    def save(self, state: Mapping[str, np.ndarray]) -> None:
        """Replace the stored state with ``state``, durably and atomically."""
        ...


class MemoryStateStore:
    """A :class:`DeviceStateStore` in memory: tests and single-process tools."""

    def __init__(self, initial: Mapping[str, np.ndarray] | None = None) -> None:
        self._blob = pack_state(initial or {})

    def load(self) -> DeviceState:
        return unpack_state(self._blob, where="memory")

    def save(self, state: Mapping[str, np.ndarray]) -> None:
        self._blob = pack_state(state)


def pack_state(state: Mapping[str, np.ndarray]) -> bytes:
    """Serialise a device state to bytes (npz, no pickled objects)."""
    buf = io.BytesIO()
    arrays = {str(k): np.ascontiguousarray(v) for k, v in state.items()}
    for name, arr in arrays.items():
        if arr.dtype.hasobject:
            raise CheckpointError(f"device state: array {name!r} has dtype object, which cannot be stored")
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds like allow_pickle: bool
    return buf.getvalue()


def unpack_state(blob: bytes, *, where: str) -> DeviceState:
    """Inverse of :func:`pack_state`; ``CheckpointError`` naming ``where`` if the bytes are not a state."""
    if not blob:
        return {}
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            return {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{where}: device state is not readable: {exc}") from exc
