"""What durability costs the simulation's device rows: ``synchronous = NORMAL`` against ``FULL``, in one run.

``python -m simulations.bench_device_table [--json] [--devices N] [--rounds R] [--dim D]``

Each round writes one row per device (a rating-level device's state: user
factor and bias at ``model.dim = D``, its accountant after ten rounds, its
stream offset) into a :class:`~fedrec.store.device_table.DeviceStateTable`, one
transaction per row as the simulation's client mod does. Three tables, each in
its own file, take their turn round by round (the order rotates), so load on a
shared machine falls on all of them alike:

- ``NORMAL``: the WAL is written but not fsynced per row;
- ``FULL``: every row's transaction is fsynced;
- ``NORMAL`` plus :func:`~fedrec.store.device_table.sync_table` once per
  round (one fsync of the WAL, the database and their folder), what the server
  does before each checkpoint (the chosen setting).

Reports rows per second and per-row p50/p99 for each, and the per-round sync.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.federated.device import LocalParams, save_accountant, save_local
from fedrec.privacy.accounting import PrivacyAccountant
from fedrec.store.device_state import pack_state
from fedrec.store.device_table import DeviceStateTable, remove_table, sync_table

MODES = ("NORMAL", "FULL", "NORMAL+round-fsync")


def device_row(dim: int) -> dict[str, np.ndarray]:
    """A rating-level device's persisted state after ten rounds."""
    state: dict[str, np.ndarray] = {"fedrec.stream": np.array([12345], np.int64)}
    save_local(state, 0, LocalParams(np.full(dim, 0.1, np.float32), 0.2))
    acc = PrivacyAccountant("rdp", delta=1e-5, unit="rating")
    for _ in range(10):
        acc.step(noise_multiplier=0.877, sample_rate=1 / 16, steps=16)
    save_accountant(state, 0, acc.state_dict())
    return state


def bench(folder: Path, *, devices: int, rounds: int, dim: int) -> dict[str, Any]:
    state = device_row(dim)
    paths = {mode: folder / f"{i}.sqlite" for i, mode in enumerate(MODES)}
    tables = {mode: DeviceStateTable(paths[mode], synchronous=mode.split("+")[0]) for mode in MODES}
    rows: dict[str, list[float]] = {mode: [] for mode in MODES}
    syncs: list[float] = []
    for rnd in range(1, rounds + 1):
        order = MODES[rnd % 3:] + MODES[:rnd % 3]
        for mode in order:
            table = tables[mode]
            for device in range(devices):
                t = time.perf_counter()
                table.write(str(device), rnd, state)
                rows[mode].append(time.perf_counter() - t)
            if mode.endswith("round-fsync"):
                t = time.perf_counter()
                sync_table(paths[mode])
                syncs.append(time.perf_counter() - t)
    out: dict[str, Any] = {"row_bytes": len(pack_state(state)), "devices": devices, "rounds": rounds}
    for mode in MODES:
        times = np.asarray(rows[mode])
        total = float(times.sum()) + (float(np.sum(syncs)) if mode.endswith("round-fsync") else 0.0)
        out[mode] = {"rows_per_s": len(times) / total, "p50_ms": float(np.percentile(times, 50) * 1e3),
                     "p99_ms": float(np.percentile(times, 99) * 1e3)}
    out["NORMAL+round-fsync"]["sync_p50_ms"] = float(np.percentile(syncs, 50) * 1e3)
    for mode in MODES:
        tables[mode].close()
        remove_table(paths[mode])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--devices", type=int, default=500, help="rows per round and table")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--dim", type=int, default=4)
    ap.add_argument("--dir", type=Path, help="folder for the tables (default: a temporary folder here)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir or Path.cwd()) as tmp:
        report = {"benchmark": "device_table", "folder": str(args.dir or Path.cwd()),
                  **bench(Path(tmp), devices=args.devices, rounds=args.rounds, dim=args.dim)}
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{report['row_bytes']} bytes a row, {args.devices} devices x {args.rounds} rounds per table")
        for mode in MODES:
            r = report[mode]
            extra = f", per-round fsync p50 {r['sync_p50_ms']:.2f} ms" if "sync_p50_ms" in r else ""
            print(f"{mode:>19}: {r['rows_per_s']:8.0f} rows/s, row p50 {r['p50_ms']:.3f} ms p99 "
                  f"{r['p99_ms']:.3f} ms{extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
