"""Subprocess for the store's crash and concurrency tests: record interactions one by one.

Usage: ``python store_writer.py PATH KEY_HEX FIRST_ITEM COUNT``. After each
``add`` returns (the write is acknowledged) it prints the item and flushes, so
the parent knows exactly what was acknowledged before it killed this process.
"""

from __future__ import annotations

import sys

import numpy as np

from fedrec.store.device_store import DeviceStore, Interaction


def main() -> None:
    path, key_hex, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = DeviceStore.open(path, key=bytes.fromhex(key_hex))
    print("open", flush=True)
    for item in range(first, first + count):
        store.add_and_update([Interaction(item, 1.0 + item % 5, False, item)],
                             {"user.0.factor": np.full(8, item, np.float32)})
        print(item, flush=True)
    store.close()


if __name__ == "__main__":
    main()
