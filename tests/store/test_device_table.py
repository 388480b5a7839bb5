"""The simulation's device-state table: the shared contract, round versions, resume roll-back."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_state_contract import DeviceStateContract
from testkit import sigkill_output

from fedrec.errors import CheckpointError
from fedrec.secagg.device_state import PREFIX as SECAGG_STATE_PREFIX
from fedrec.store.device_table import (
    KEEP,
    ROUND_SCOPED_PREFIXES,
    DeviceStateTable,
    persisted,
    remove_table,
    sync_table,
)


class TestRoundStore(DeviceStateContract):
    def make_store(self, tmp_path: Path) -> Any:
        return DeviceStateTable(tmp_path / "devices.sqlite").store("7", 3)

    def reopen(self, store: Any, tmp_path: Path) -> Any:
        store.table.close()
        return DeviceStateTable(tmp_path / "devices.sqlite").store("7", 3)


def _state(value: float) -> dict[str, np.ndarray]:
    return {"user.0.factor": np.full(4, value, np.float32), "user.0.bias": np.array([value])}


def test_resume_reads_the_state_at_the_checkpoint_round(tmp_path: Path) -> None:
    """Device 0 trained in rounds 1, 3, 4, 5; the server checkpointed round 4 and was killed in round 5."""
    table = DeviceStateTable(tmp_path / "d.sqlite")
    for rnd in (1, 3, 4, 5):
        table.write("0", rnd, _state(rnd))
    table.write("1", 2, _state(20))
    assert table.truncate_after(4) == 1
    round_, state = table.read("0") or (None, {})
    assert round_ == 4 and state["user.0.bias"][0] == 4.0
    assert (table.read("0", at_most=3) or (None,))[0] == 3
    assert (table.read("1") or (None,))[0] == 2
    assert table.read("2") is None and table.devices() == 2


def test_only_the_newest_rows_are_kept(tmp_path: Path) -> None:
    table = DeviceStateTable(tmp_path / "d.sqlite")
    for rnd in range(1, 9):
        table.write("0", rnd, _state(rnd))
    rounds = [r for (r,) in sqlite3.connect(tmp_path / "d.sqlite").execute("SELECT round FROM device_state")]
    assert sorted(rounds) == list(range(9 - KEEP, 9))


def test_secure_aggregation_round_state_is_not_persisted() -> None:
    assert SECAGG_STATE_PREFIX.startswith(ROUND_SCOPED_PREFIXES)
    state = {**_state(1.0), SECAGG_STATE_PREFIX + "round.4": np.zeros(3, np.uint8),
             "fedrec.secagg.x": np.zeros(1), "fedrec.privacy.user.0.accountant": np.zeros(2, np.uint8)}
    assert set(persisted(state)) == {"user.0.factor", "user.0.bias", "fedrec.privacy.user.0.accountant"}


def _writer(path: str, device: int) -> None:
    table = DeviceStateTable(path)
    for rnd in range(1, 6):
        table.write(str(device), rnd, _state(device * 10 + rnd))


def test_concurrent_writers_from_several_processes(tmp_path: Path) -> None:
    """Ray workers are processes: each writes its own devices into the one file."""
    path = str(tmp_path / "d.sqlite")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, d)) for d in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    table = DeviceStateTable(path)
    assert table.devices() == 4
    for d in range(4):
        row = table.read(str(d))
        assert row is not None and row[0] == 5 and row[1]["user.0.bias"][0] == d * 10 + 5


def test_bad_rows_and_bad_files_are_checkpoint_errors(tmp_path: Path) -> None:
    table = DeviceStateTable(tmp_path / "d.sqlite")
    with pytest.raises(CheckpointError, match="round must be >= 0"):
        table.write("0", -1, _state(1))
    table.write("0", 1, _state(1))
    db = sqlite3.connect(tmp_path / "d.sqlite")
    db.execute("UPDATE device_state SET state = ?", (b"garbage",))
    db.commit()
    with pytest.raises(CheckpointError, match=r"d\.sqlite: device '0' round 1: device state is not readable"):
        table.read("0")
    other = tmp_path / "x.sqlite"
    other.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CheckpointError, match="x.sqlite"):
        DeviceStateTable(other).read("0")


def test_remove_table_starts_afresh(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    DeviceStateTable(path).write("0", 1, _state(1))
    remove_table(path)
    assert not list(tmp_path.iterdir())
    assert DeviceStateTable(path).read("0") is None


_WRITER = """
import sys
import numpy as np
from fedrec.store.device_table import DeviceStateTable
table = DeviceStateTable(sys.argv[1])
print("open", flush=True)
for device in range(int(sys.argv[2]), 10**9):
    table.write(str(device), 4, {"user.0.factor": np.full(4, device, np.float32)})
    print(device, flush=True)
"""


def test_kill_9_loses_no_acknowledged_row(tmp_path: Path) -> None:
    """A row whose ``write`` returned (the device then replies) survives SIGKILL of the writer."""
    path = tmp_path / "d.sqlite"
    acked: set[int] = set()
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(attempt * 10**6)],
                                stdout=subprocess.PIPE, text=True, start_new_session=True)
        out = sigkill_output(proc, 0.2 + 0.1 * attempt)
        acked |= {int(x) for x in out.split()}
        table = DeviceStateTable(path)
        missing = [d for d in sorted(acked) if table.read(str(d)) is None]
        table.close()
        assert not missing, f"kill {attempt}: acknowledged rows lost: {missing[:5]}"
    assert len(acked) > 4
    sync_table(path)  # the server's per-checkpoint sync over rows another process committed


def test_rows_are_written_with_the_chosen_sync_setting(tmp_path: Path) -> None:
    table = DeviceStateTable(tmp_path / "d.sqlite")
    table.write("0", 1, _state(1))
    assert table._db().execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL; sync_table per checkpoint
    assert DeviceStateTable(tmp_path / "f.sqlite", synchronous="FULL")._db().execute(
        "PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(CheckpointError, match="synchronous must be one of"):
        DeviceStateTable(tmp_path / "x.sqlite", synchronous="OFF")
    sync_table(tmp_path / "absent.sqlite")  # no simulated devices: nothing to sync
