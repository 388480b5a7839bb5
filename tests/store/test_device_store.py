from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_state_contract import DeviceStateContract
from testkit import sigkill_output

from fedrec.errors import FedRecError, StoreCorruptError, StoreError, StoreKeyError
from fedrec.store.device_store import DeviceStore, Interaction

KEY = bytes(range(32))
WRITER = Path(__file__).with_name("store_writer.py")
ROOT = Path(__file__).resolve().parents[2]


class TestDeviceStoreContract(DeviceStateContract):
    def make_store(self, tmp_path: Path) -> Any:
        return DeviceStore.open(tmp_path / "contract.db", key=KEY)

    def reopen(self, store: Any, tmp_path: Path) -> Any:
        store.close()
        return DeviceStore.open(tmp_path / "contract.db", key=KEY)


def _filled(path: Path, n: int = 200) -> list[tuple[int, float, bool, int]]:
    rows = [Interaction(i, float(1 + i % 5), bool(i % 3 == 0), 1000 + i) for i in range(n)]
    with DeviceStore.open(path, key=KEY) as store:
        store.add(rows)
        store.save({"user.0.factor": np.arange(16, dtype=np.float32)})
        store.put_record("model.round", b"7")
    return [(r.item, r.value, r.implicit, r.timestamp) for r in rows]


def _read_all(path: Path) -> tuple[list[tuple[int, float, bool, int]], dict[str, np.ndarray], bytes | None]:
    with DeviceStore.open(path, key=KEY, create=False) as store:
        rows = store.interactions()
        got = [(int(i), float(v), bool(m), int(t)) for i, v, m, t in
               zip(rows.items, rows.values, rows.implicit, rows.timestamps, strict=True)]
        return got, store.load(), store.get_record("model.round")


def test_round_trip_of_interactions_state_and_records(tmp_path: Path) -> None:
    rows = _filled(tmp_path / "s.db")
    got, state, rnd = _read_all(tmp_path / "s.db")
    assert got == rows and rnd == b"7"
    np.testing.assert_array_equal(state["user.0.factor"], np.arange(16))


def test_wrong_key_is_a_key_error_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _filled(path)
    before = path.read_bytes()
    with pytest.raises(StoreKeyError, match="does not open this store"):
        DeviceStore.open(path, key=bytes(32))
    with pytest.raises(StoreKeyError, match="created with an app key"):
        DeviceStore.open(path, passphrase="guess")
    assert path.read_bytes() == before


def test_passphrase_goes_through_scrypt_with_the_salt_in_clear_metadata(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with DeviceStore.open(path, passphrase="correct horse", scrypt_n=2**10) as store:
        store.add([Interaction(1, 5.0)])
    with DeviceStore.open(path, passphrase="correct horse") as store:
        assert store.interactions().items.tolist() == [1]
    with pytest.raises(StoreKeyError):
        DeviceStore.open(path, passphrase="correct horse ")


@pytest.mark.parametrize("keep", [0, 100, 4096, 0.5])
def test_truncated_file_is_an_error_never_a_reset(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "s.db"
    _filled(path, 2000)
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data)) if isinstance(keep, float) else keep])
    with pytest.raises(StoreCorruptError):
        _read_all(path)


def test_flipped_byte_is_an_error_or_changes_nothing(tmp_path: Path) -> None:
    """Anywhere in the file: a clear error, or (free space, unused header fields) the exact data."""
    path = tmp_path / "s.db"
    rows = _filled(path, 300)
    clean = path.read_bytes()
    expected = _read_all(path)
    rng = random.Random(12)
    errors = 0
    for pos in [rng.randrange(len(clean)) for _ in range(60)]:
        bad = bytearray(clean)
        bad[pos] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(bad))
        try:
            got = _read_all(path)
        except FedRecError:
            errors += 1
            continue
        assert got[0] == rows and got[2] == expected[2], f"byte {pos}: wrong data returned silently"
        np.testing.assert_array_equal(got[1]["user.0.factor"], expected[1]["user.0.factor"])
    assert errors > 0


def test_a_row_moved_to_another_id_does_not_authenticate(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "s.db"
    _filled(path, 3)
    conn = sqlite3.connect(path)
    (n1, c1), (n2, c2) = conn.execute("SELECT nonce, ct FROM interactions WHERE id IN (1, 2) ORDER BY id")
    conn.execute("UPDATE interactions SET nonce = ?, ct = ? WHERE id = 1", (n2, c2))
    conn.execute("UPDATE interactions SET nonce = ?, ct = ? WHERE id = 2", (n1, c1))
    conn.commit()
    conn.close()
    with pytest.raises(StoreCorruptError, match="interactions row 1 does not authenticate"):
        _read_all(path)


def test_not_a_store_and_missing_store(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    other.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    with pytest.raises(StoreCorruptError):
        DeviceStore.open(other, key=KEY)
    with pytest.raises(StoreError, match="no device store"):
        DeviceStore.open(tmp_path / "absent.db", key=KEY, create=False)


def test_forget_and_wipe_remove_the_ciphertext_from_file_and_wal(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "s.db"
    _filled(path, 50)
    conn = sqlite3.connect(path)
    cts = {i: bytes(c) for i, c in conn.execute("SELECT id, ct FROM interactions")}
    conn.close()
    store = DeviceStore.open(path, key=KEY)
    assert store.forget(7) == 1
    wal = Path(f"{path}-wal")
    on_disk = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert cts[8] not in on_disk  # item 7 has row id 8
    assert cts[9] in on_disk
    store.wipe()
    on_disk = path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert not any(ct in on_disk for ct in cts.values())
    assert len(store.interactions()) == 0 and store.load() == {}
    assert store.get_record("model.round") == b"7"  # rollback protection survives erasure
    store.close()


def _writer(path: Path, first: int, count: int) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(WRITER), str(path), KEY.hex(), str(first), str(count)],
                            stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    DeviceStore.open(path, key=KEY).close()
    procs = [_writer(path, 0, 150), _writer(path, 10_000, 150)]
    try:
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert all(p.returncode == 0 for p in procs)
    acked = {int(x) for out in outs for x in out.split() if x != "open"}
    got, _, _ = _read_all(path)
    assert {r[0] for r in got} == acked and len(got) == 300


def test_kill_9_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    DeviceStore.open(path, key=KEY).close()
    rng = random.Random(3)
    acked: set[int] = set()
    deadline = time.monotonic() + 12.0
    rounds = 0
    while time.monotonic() < deadline or rounds < 5:
        proc = _writer(path, rounds * 100_000, 100_000)
        out = sigkill_output(proc, rng.uniform(0.0, 0.25))
        acked |= {int(x) for x in out.split()}
        got, state, _ = _read_all(path)
        missing = acked - {r[0] for r in got}
        assert not missing, f"kill {rounds}: acknowledged interactions lost: {sorted(missing)[:5]}"
        assert state == {} or state["user.0.factor"].shape == (8,)
        rounds += 1
    assert len(acked) > rounds
