"""Atomic writes and checkpoints: nothing half-written, everything restored."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fedrec.errors import CheckpointError
from fedrec.federated.server_state import FedConfig, ServerState
from fedrec.model.mf import MFConfig
from fedrec.store.atomic import atomic_write_bytes
from fedrec.store.checkpoint import load_checkpoint, save_checkpoint
from fedrec.train.aggregate import RoundSums, ServerOptConfig


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_failed_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(CheckpointError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_checkpoint_round_trip_continues_identically(tmp_path: Path) -> None:
    fed = FedConfig(server=ServerOptConfig(name="adam", lr=0.1))
    state = ServerState.start(7, MFConfig(dim=3), fed, global_mean=3.0)
    sums = RoundSums(np.ones((7, 3)), np.ones(7), np.ones(7), 2)
    state.apply(sums)
    save_checkpoint(tmp_path / "c.npz", state, extra={"config": {"rounds": 3}})
    restored, extra = load_checkpoint(tmp_path / "c.npz")
    assert extra == {"config": {"rounds": 3}} and restored.round == 1
    a, b = state.apply(sums), restored.apply(sums)
    np.testing.assert_array_equal(a.item_factors, b.item_factors)
    assert state.rng.integers(1 << 30) == restored.rng.integers(1 << 30)


def test_corrupt_checkpoint_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "c.npz"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(bad)
