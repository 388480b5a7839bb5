"""The device store's encryption, measured: per-record AES-GCM (chosen) against SQLCipher.

``python -m simulations.bench_store [--json] [--records N]``

Both write ``N`` interactions one durable transaction each (WAL,
``synchronous=FULL``), then reopen the file (key check) and read every row back.
SQLCipher runs through ``sqlcipher3`` (the ``sqlcipher3-wheels`` package, a
dev-only comparison) when installed; otherwise only the chosen store is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.store.device_store import DeviceStore, Interaction


def _ms(times: list[float]) -> dict[str, float]:
    arr = np.asarray(times) * 1e3
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99))}


def bench_aesgcm(folder: Path, n: int) -> dict[str, Any]:
    key = os.urandom(32)
    store = DeviceStore.open(folder / "aesgcm.db", key=key)
    writes = []
    for i in range(n):
        t = time.perf_counter()
        store.add([Interaction(i, 4.0, False, i)])
        writes.append(time.perf_counter() - t)
    store.close()
    t = time.perf_counter()
    with DeviceStore.open(folder / "aesgcm.db", key=key) as again:
        assert len(again.interactions()) == n
    return {"write": _ms(writes), "open_and_read_s": time.perf_counter() - t,
            "file_bytes": (folder / "aesgcm.db").stat().st_size}


def bench_sqlcipher(folder: Path, n: int) -> dict[str, Any] | None:
    try:
        from sqlcipher3 import dbapi2 as sqlcipher
    except ImportError:
        return None
    key = os.urandom(32).hex()

    def connect() -> Any:
        conn = sqlcipher.connect(str(folder / "sqlcipher.db"), isolation_level=None)
        conn.execute(f"PRAGMA key = \"x'{key}'\"")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    conn = connect()
    conn.execute("CREATE TABLE interactions (id INTEGER PRIMARY KEY, item INTEGER, value REAL, ts INTEGER)")
    writes = []
    for i in range(n):
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO interactions (item, value, ts) VALUES (?, ?, ?)", (i, 4.0, i))
        conn.execute("COMMIT")
        writes.append(time.perf_counter() - t)
    conn.close()
    t = time.perf_counter()
    conn = connect()
    assert len(conn.execute("SELECT * FROM interactions").fetchall()) == n
    conn.close()
    return {"write": _ms(writes), "open_and_read_s": time.perf_counter() - t,
            "file_bytes": (folder / "sqlcipher.db").stat().st_size,
            "version": str(sqlcipher.sqlite_version)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--records", type=int, default=200)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = {"benchmark": "store", "records": args.records,
                  "aesgcm": bench_aesgcm(Path(tmp), args.records),
                  "sqlcipher": bench_sqlcipher(Path(tmp), args.records)}
    if args.json:
        print(json.dumps(report))
    else:
        for name in ("aesgcm", "sqlcipher"):
            r = report[name]
            if r is None:
                print(f"{name}: not installed")
                continue
            print(f"{name:>9}: write p50 {r['write']['p50_ms']:.2f} ms p99 {r['write']['p99_ms']:.2f} ms, "
                  f"open+read {r['open_and_read_s'] * 1e3:.1f} ms, {r['file_bytes']} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
