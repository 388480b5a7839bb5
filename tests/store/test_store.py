"""Atomic writes and checkpoints: nothing half-written, everything restored."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from fedrec.errors import CheckpointError
from fedrec.federated.server_state import FedConfig, ServerState
from fedrec.model.mf import MFConfig
from fedrec.store.atomic import atomic_write_bytes
from fedrec.store.checkpoint import (
    MAGIC,
    checkpoint_bytes,
    load_checkpoint,
    parse_checkpoint,
    previous_path,
    save_checkpoint,
)
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
    state = ServerState.start(7, MFConfig(dim=3, reg=0.1, bias_reg=0.1), fed, global_mean=3.0)
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


def _state(round_: int = 1) -> ServerState:
    state = ServerState.start(7, MFConfig(dim=3), FedConfig(server=ServerOptConfig(name="adam", lr=0.1)),
                              global_mean=3.0)
    for _ in range(round_):
        state.apply(RoundSums(np.ones((7, 3)), np.ones(7), np.ones(7), 2))
    return state


def test_every_flipped_byte_and_every_truncation_is_refused(tmp_path: Path) -> None:
    """The digest covers the whole file after the magic line: no byte can change unnoticed."""
    blob = checkpoint_bytes(_state(), extra={"privacy": {"unit": "off"}})
    for pos in range(len(blob)):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(CheckpointError, match=r"^c\.npz: "):
            parse_checkpoint(bytes(bad), where="c.npz")
    for cut in (0, 5, len(MAGIC), len(MAGIC) + 10, len(MAGIC) + 32, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CheckpointError, match=r"^c\.npz: "):
            parse_checkpoint(blob[:cut], where="c.npz")


def test_known_layout_magic_then_sha256_of_the_rest() -> None:
    blob = checkpoint_bytes(_state())
    assert blob.startswith(b"fedrec-checkpoint/2\n")
    assert blob[len(MAGIC):len(MAGIC) + 32] == hashlib.sha256(blob[len(MAGIC) + 32:]).digest()


def _resealed(header_patch: dict[str, object]) -> bytes:
    """A checkpoint whose header was edited and whose digest was recomputed (a writer's bug, not a flip)."""
    blob = checkpoint_bytes(_state())
    with np.load(io.BytesIO(blob[len(MAGIC) + 32:])) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["header"].tobytes())
    header.update(header_patch)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return MAGIC + hashlib.sha256(buf.getvalue()).digest() + buf.getvalue()


@pytest.mark.parametrize(("patch", "rule"), [
    ({"round": -5}, "round must be >= 0, got -5"),
    ({"round": "3"}, "header field 'round' must be a int"),
    ({"format": "fedrec-checkpoint/3"}, "format 'fedrec-checkpoint/3', expected"),
    ({"global_mean": None}, "global_mean must be a finite number"),
    ({"averaging": "median"}, "averaging 'median' is not one of"),
    ({"optimizer": {"config": {"name": "lion"}, "step_count": 1}}, "strategy.optimizer"),
])
def test_invalid_header_fields_are_named(patch: dict[str, object], rule: str) -> None:
    with pytest.raises(CheckpointError, match=f"^c.npz: .*{re.escape(rule)}"):
        parse_checkpoint(_resealed(patch), where="c.npz")


def test_old_format_and_other_versions_are_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, item_factors=np.zeros((2, 2)))
    with pytest.raises(CheckpointError, match="fedrec-checkpoint/1.*not supported"):
        parse_checkpoint(buf.getvalue(), where="c.npz")
    with pytest.raises(CheckpointError, match="format 'fedrec-checkpoint/9', expected"):
        parse_checkpoint(b"fedrec-checkpoint/9\n" + bytes(64), where="c.npz")


def test_another_models_shape_is_refused(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c.npz", _state())
    with pytest.raises(CheckpointError, match=r"c\.npz: item table \(7, 3\) does not match .*8 items, model.dim 3"):
        load_checkpoint(tmp_path / "c.npz", n_items=8, dim=3)
    load_checkpoint(tmp_path / "c.npz", n_items=7, dim=3)


def test_previous_checkpoint_is_kept_and_never_replaced_by_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, _state(1))
    save_checkpoint(path, _state(2))
    assert load_checkpoint(path)[0].round == 2 and load_checkpoint(previous_path(path))[0].round == 1
    with pytest.raises(CheckpointError, match="refusing to write"):
        save_checkpoint(path, _state(3), extra={"x": object()})
    broken = _state(3)
    broken.round = -1
    with pytest.raises(CheckpointError, match=r"\(before writing\): round must be >= 0"):
        save_checkpoint(path, broken)
    assert load_checkpoint(path)[0].round == 2 and load_checkpoint(previous_path(path))[0].round == 1
    path.write_bytes(path.read_bytes()[:-3])  # the current file rots on disk
    save_checkpoint(path, _state(4))
    assert load_checkpoint(path)[0].round == 4 and load_checkpoint(previous_path(path))[0].round == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.npz", "checkpoint.prev.npz"]
