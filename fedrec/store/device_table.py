"""Every simulated device's private state in one SQLite file, versioned by round.

A simulation with a million devices cannot keep a file per device, and a
resumed run must find each device exactly as it was when the server wrote its
checkpoint. One table holds ``(device, round, state)`` rows, ``state`` being
:func:`~fedrec.store.device_state.pack_state` bytes; a device writes its row
for round ``r`` as soon as it has trained in round ``r`` (each Ray worker
writes its own devices, SQLite serialises the writers; WAL mode lets readers
run beside them).

Consistency with the server checkpoint comes from the round: a row is never
overwritten by a later round's state, the newest :data:`KEEP` rows of each
device are kept, and resuming from a checkpoint of round ``R`` first deletes
every row newer than ``R`` (:meth:`DeviceStateTable.truncate_after`), so each
device then reads the state it had after its last round up to ``R``. Three
rows cover a resume from ``checkpoint.npz`` or from ``checkpoint.prev.npz``
while round ``R + 2`` is running.

Durability: each row is one transaction with ``synchronous = NORMAL``: once
``write`` returns the row is in the WAL file, which a killed process (``kill
-9``) cannot take back, but it may still sit in the OS cache. Before the
server writes a round's checkpoint it calls :func:`sync_table`, one ``fsync``
of the WAL, the database file and their folder, so every row that checkpoint
refers to (each device writes its row before it replies) is on disk before the
checkpoint is, power loss included. One fsync per round instead of one per row
(``synchronous = FULL``): ``python -m simulations.bench_device_table`` measured
FULL at 2.6 to 7.4 times NORMAL's write time per row, the per-round sync at 5 to
10 ms (README, "Checkpoints and --resume").

Secure-aggregation round state (keys and shares of a round in progress) is not
persisted: a resumed run restarts the interrupted round from its setup with
fresh keys, so those secrets never reach the disk.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrec import wire
from fedrec.errors import CheckpointError
from fedrec.store.device_state import DeviceState, pack_state, unpack_state

#: Row versions kept per device (see the module docstring).
KEEP = 3
#: Name of the table file in a run folder.
DEVICE_STATE_FILE = "devices.sqlite"
#: State keys that belong to one secure-aggregation round and are not persisted
#: (``fedrec.secagg.device_state.PREFIX`` and :data:`fedrec.wire.STATE_SECAGG`).
ROUND_SCOPED_PREFIXES: tuple[str, ...] = ("secagg.", wire.STATE_SECAGG)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS device_state (
    device TEXT NOT NULL,
    round INTEGER NOT NULL CHECK (round >= 0),
    state BLOB NOT NULL,
    PRIMARY KEY (device, round)
) WITHOUT ROWID
"""
_CONNECTIONS: dict[tuple[str, int], sqlite3.Connection] = {}
#: SQLite ``synchronous`` setting of the rows (see the module docstring).
SYNCHRONOUS = "NORMAL"
_SYNC_MODES = frozenset({"NORMAL", "FULL"})


def persisted(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The part of a device state that outlives a round (everything but round-scoped SecAgg state)."""
    return {k: v for k, v in state.items() if not k.startswith(ROUND_SCOPED_PREFIXES)}


class DeviceStateTable:
    """The run's device-state file: ``write``/``read`` rows, ``truncate_after`` on resume.

    Parameters
    ----------
    path
        The SQLite file (created on first use). Connections are opened lazily
        and cached per process, so an instance is cheap to ship to workers.
    """

    def __init__(self, path: Path | str, *, synchronous: str = SYNCHRONOUS) -> None:
        if synchronous not in _SYNC_MODES:
            raise CheckpointError(f"{path}: synchronous must be one of {sorted(_SYNC_MODES)}, got {synchronous!r}")
        self.path, self.synchronous = str(path), synchronous

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (_table, (self.path, self.synchronous))

    def _db(self) -> sqlite3.Connection:
        key = (self.path, os.getpid())
        conn = _CONNECTIONS.get(key)
        if conn is None:
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute(f"PRAGMA synchronous = {self.synchronous}")
                conn.execute(_SCHEMA)
            except sqlite3.Error as exc:
                raise CheckpointError(f"{self.path}: cannot open the device-state table: {exc}") from exc
            _CONNECTIONS[key] = conn
        return conn

    def write(self, device: str, round_: int, state: Mapping[str, np.ndarray]) -> None:
        """Store ``device``'s state after round ``round_`` (replacing a row of the same round)."""
        if round_ < 0:
            raise CheckpointError(f"{self.path}: device {device!r}: round must be >= 0, got {round_}")
        blob = pack_state(state)
        try:
            with self._db() as db:
                db.execute("INSERT OR REPLACE INTO device_state (device, round, state) VALUES (?, ?, ?)",
                           (device, int(round_), blob))
                db.execute("DELETE FROM device_state WHERE device = ? AND round NOT IN "
                           "(SELECT round FROM device_state WHERE device = ? ORDER BY round DESC LIMIT ?)",
                           (device, device, KEEP))
        except sqlite3.Error as exc:
            raise CheckpointError(f"{self.path}: device {device!r}: cannot write round {round_}: {exc}") from exc

    def read(self, device: str, *, at_most: int | None = None) -> tuple[int, DeviceState] | None:
        """``(round, state)`` of the device's newest row (at most ``at_most``), or None for a new device."""
        query = "SELECT round, state FROM device_state WHERE device = ?"
        args: tuple[object, ...] = (device,)
        if at_most is not None:
            query, args = query + " AND round <= ?", (device, int(at_most))
        try:
            row = self._db().execute(query + " ORDER BY round DESC LIMIT 1", args).fetchone()
        except sqlite3.Error as exc:
            raise CheckpointError(f"{self.path}: device {device!r}: cannot read: {exc}") from exc
        if row is None:
            return None
        return int(row[0]), unpack_state(bytes(row[1]), where=f"{self.path}: device {device!r} round {row[0]}")

    def truncate_after(self, round_: int) -> int:
        """Delete every row newer than round ``round_`` (what devices did after the checkpoint); returns the count."""
        try:
            with self._db() as db:
                return db.execute("DELETE FROM device_state WHERE round > ?", (int(round_),)).rowcount
        except sqlite3.Error as exc:
            raise CheckpointError(f"{self.path}: cannot roll the device states back to round {round_}: {exc}") from exc

    def devices(self) -> int:
        """Number of devices with at least one row."""
        return int(self._db().execute("SELECT COUNT(DISTINCT device) FROM device_state").fetchone()[0])

    def store(self, device: str, round_: int) -> RoundStore:
        """``device``'s :class:`~fedrec.store.device_state.DeviceStateStore` as of round ``round_``."""
        return RoundStore(self, device, round_)

    def close(self) -> None:
        """Close this process's connection (the next call reopens it)."""
        conn = _CONNECTIONS.pop((self.path, os.getpid()), None)
        if conn is not None:
            conn.close()


def sync_table(path: Path | str) -> None:
    """Make every row committed to the table at ``path`` durable: fsync its WAL, its file and their folder.

    Called by the server before each checkpoint; another process's committed
    rows are covered too (an fsync flushes the file, whoever wrote it). A
    missing file (no simulated devices) is skipped.

    Raises
    ------
    CheckpointError
        A file exists but cannot be synced.
    """
    base = Path(path)
    for target in (Path(f"{base}-wal"), base, base.parent):
        try:
            fd = os.open(target, os.O_RDONLY)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CheckpointError(f"{target}: cannot open to sync the device states: {exc}") from exc
        try:
            os.fsync(fd)
        except OSError as exc:
            raise CheckpointError(f"{target}: cannot sync the device states: {exc}") from exc
        finally:
            os.close(fd)


def _table(path: str, synchronous: str) -> DeviceStateTable:
    return DeviceStateTable(path, synchronous=synchronous)


def remove_table(path: Path) -> None:
    """Delete a device-state file and its WAL companions (a run starting afresh)."""
    DeviceStateTable(path).close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class RoundStore:
    """One device's state as of one round, behind the :class:`DeviceStateStore` interface.

    ``load`` reads the newest row up to the round; ``save`` writes the row of
    the round (the state after training in it).
    """

    def __init__(self, table: DeviceStateTable, device: str, round_: int) -> None:
        self.table, self.device, self.round = table, device, int(round_)

    def load(self) -> DeviceState:
        row = self.table.read(self.device, at_most=self.round)
        return {} if row is None else row[1]

    def save(self, state: Mapping[str, np.ndarray]) -> None:
        self.table.write(self.device, self.round, state)
