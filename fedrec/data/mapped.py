"""A run's dataset as memory-mapped, user-sorted arrays: made once, mapped by every process.

Why: a simulation has one driver and several worker processes, each hosting
thousands of virtual devices. Loading (or generating) the dataset in each of
them costs minutes and a copy of the data per process at a million users. The
driver writes the train/test split once, in CSR layout (``offsets[u] ..
offsets[u + 1]`` are user ``u``'s rows of the user-sorted ``items``,
``ratings``, ``timestamps``, ``weights``), as ``.npy`` files in a directory named by a hash
of the data specification. Every process maps those files read-only (the
operating system's page cache holds one copy for all of them), and a device's
rows are sliced out when its message arrives. Nothing is dense in users x items.

The directory is written under a temporary name and renamed into place, so a
reader sees a complete store or none (two writers racing both produce the same
bytes; the second rename loses harmlessly).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.interactions import Dataset, Interactions
from fedrec.data.partition import LocalInteractions
from fedrec.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMAT = 2
"""Version of the on-disk layout; part of the cache key (2: the confidence-weight column)."""

CACHE_ENV = "FEDREC_CACHE_DIR"
"""Environment variable naming the cache root (default ``~/.cache/fedrec``)."""

_SPLITS = ("train", "test")
_COLUMNS = ("offsets", "items", "ratings", "timestamps", "weights")


@dataclass(frozen=True)
class MappedSplit:
    """One split in CSR layout: ``offsets`` (``n_users + 1``) into user-sorted row arrays."""

    offsets: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray

    @classmethod
    def from_interactions(cls, inter: Interactions) -> MappedSplit:
        """Sort rows by user (stable: each user's rows keep their order) and index them."""
        order = np.argsort(inter.users, kind="stable")
        offsets = np.zeros(inter.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(inter.users, minlength=inter.n_users), out=offsets[1:])
        dtype = np.int32 if inter.n_items < 2**31 else np.int64
        return cls(offsets, inter.items[order].astype(dtype), inter.ratings[order].astype(np.float32),
                   inter.timestamps[order].astype(np.int64), inter.weights[order].astype(np.float32))

    def rows(self, users: np.ndarray) -> LocalInteractions:
        """Rows of ``users`` (local user ``j`` is ``users[j]``), user-major; copies only these rows."""
        if len(users) == 1:
            lo, hi = int(self.offsets[users[0]]), int(self.offsets[users[0] + 1])
            return LocalInteractions(np.zeros(hi - lo, np.int64), self.items[lo:hi].astype(np.int64),
                                     np.array(self.ratings[lo:hi]), np.array(self.timestamps[lo:hi]),
                                     np.array(self.weights[lo:hi]))
        lows, highs = self.offsets[users], self.offsets[users + 1]
        index = np.concatenate([np.arange(lo, hi) for lo, hi in zip(lows, highs, strict=True)]) \
            if len(users) else np.empty(0, np.int64)
        local = np.repeat(np.arange(len(users), dtype=np.int64), highs - lows)
        return LocalInteractions(local, self.items[index].astype(np.int64), self.ratings[index],
                                 self.timestamps[index], self.weights[index])


@dataclass(frozen=True)
class MappedDataset:
    """Sizes, rating scale and the two mapped splits of a run's dataset."""

    name: str
    n_users: int
    n_items: int
    rating_scale: tuple[float, float] | None
    train: MappedSplit
    test: MappedSplit

    def source(self, users: np.ndarray) -> MappedSource:
        """The :class:`~fedrec.data.partition.InteractionSource` of a device holding ``users``."""
        users = np.asarray(users, dtype=np.int64)
        if users.ndim != 1 or (len(users) and (users.min() < 0 or users.max() >= self.n_users)):
            raise ConfigError(f"device users must be a 1-D array of indices in [0, {self.n_users})")
        return MappedSource(self, users)


class MappedSource:
    """A device's rows, sliced from the mapped arrays on each call (nothing held per device)."""

    def __init__(self, data: MappedDataset, users: np.ndarray) -> None:
        self.data = data
        self.users = users

    def train(self) -> LocalInteractions:
        """This device's training rows."""
        return self.data.train.rows(self.users)

    def test(self) -> LocalInteractions:
        """This device's held-out rows."""
        return self.data.test.rows(self.users)

    def __repr__(self) -> str:
        return f"MappedSource({self.data.name!r}, users={self.users.tolist()!r})"


def cache_root() -> Path:
    """``$FEDREC_CACHE_DIR``, else ``~/.cache/fedrec``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "fedrec"


def cache_key(spec: Mapping[str, Any]) -> str:
    """Hex digest naming the store of a data specification (JSON-serialisable mapping)."""
    text = json.dumps({"format": FORMAT, **spec}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def write_mapped(dataset: Dataset, directory: Path) -> None:
    """Write ``dataset`` as a mapped store at ``directory`` (atomic: temporary directory, then rename)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()
    try:
        for name, inter in (("train", dataset.train), ("test", dataset.test)):
            split = MappedSplit.from_interactions(inter)
            for column in _COLUMNS:
                np.save(tmp / f"{name}-{column}.npy", getattr(split, column))
        meta = {"format": FORMAT, "name": dataset.name, "n_users": dataset.n_users, "n_items": dataset.n_items,
                "rating_scale": list(dataset.rating_scale) if dataset.rating_scale else None}
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, directory)
        except OSError:
            if not (directory / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_mapped(directory: Path) -> MappedDataset:
    """Map a store written by :func:`write_mapped` (read-only; ``DataError`` if it is unreadable)."""
    try:
        meta = json.loads((directory / "meta.json").read_text())
        splits = [MappedSplit(*(np.load(directory / f"{name}-{column}.npy", mmap_mode="r") for column in _COLUMNS))
                  for name in _SPLITS]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{directory}: cannot map the dataset store: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise DataError(f"{directory}: store format {meta.get('format')!r}, expected {FORMAT}")
    scale = meta["rating_scale"]
    return MappedDataset(meta["name"], int(meta["n_users"]), int(meta["n_items"]),
                         (float(scale[0]), float(scale[1])) if scale else None, splits[0], splits[1])


def mapped_dataset(spec: Mapping[str, Any], build: Callable[[], Dataset], *, root: Path | None = None) -> MappedDataset:
    """The store of ``spec`` under ``root`` (default :func:`cache_root`), built with ``build`` if absent."""
    directory = (root or cache_root()) / "datasets" / cache_key(spec)
    if not (directory / "meta.json").exists():
        log.info("building the dataset store %s", directory)
        write_mapped(build(), directory)
    return open_mapped(directory)


def source_fingerprint(path: Path, *, limit: int = 256) -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of the files under ``path``: a changed file, a new store."""
    if not path.exists():
        return []
    files = sorted(p for p in path.rglob("*") if p.is_file())[:limit]
    return [(str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
