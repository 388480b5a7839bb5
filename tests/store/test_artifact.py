"""Signed model artifacts: sign, verify, and every way a device must refuse one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedrec.errors import RollbackError, SignatureError
from fedrec.model.params import GlobalParams
from fedrec.store.artifact import MAGIC, key_id, load_public_key, read_model, sign_model, verify_model, write_model

# Known answer: a fixed key and table give these exact bytes (Ed25519 is deterministic).
KAT_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KAT_SHA256 = "6fcbf7961a0eedf9508b35d220d28769f2d6a44fdae480cb3e87e20f991faa1e"


def _table() -> GlobalParams:
    q = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    return GlobalParams(q, np.array([0.5, -0.5, 0.0, 1.0], np.float32), 3.0)


def _artifact(round_: int = 7, key: Ed25519PrivateKey = KAT_KEY) -> bytes:
    return sign_model(_table(), round_=round_, run="run-1", signing_key=key, created="2026-12-01T00:00:00Z")


def test_known_answer_vector() -> None:
    data = _artifact()
    assert data.startswith(MAGIC)
    assert hashlib.sha256(data).hexdigest() == KAT_SHA256


def test_round_trip() -> None:
    art = verify_model(_artifact(), public_key=KAT_KEY.public_key(), min_round=7)
    assert art.round == 7 and art.run == "run-1"
    np.testing.assert_array_equal(art.glob.item_factors, _table().item_factors)
    np.testing.assert_array_equal(art.glob.item_bias, _table().item_bias)
    assert art.glob.global_mean == 3.0
    assert art.header["key_id"] == key_id(KAT_KEY.public_key())


def test_wrong_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        verify_model(_artifact(), public_key=Ed25519PrivateKey.generate().public_key())


@pytest.mark.parametrize("pos", [0, 9, 20, 200, -70, -1])
def test_any_flipped_byte_is_refused(pos: int) -> None:
    data = bytearray(_artifact())
    data[pos] ^= 0x01
    with pytest.raises(SignatureError):
        verify_model(bytes(data), public_key=KAT_KEY.public_key())


@pytest.mark.parametrize("cut", [0, 5, 12, 100, 64])
def test_truncated_is_refused(cut: int) -> None:
    data = _artifact()
    with pytest.raises(SignatureError):
        verify_model(data[: len(data) - cut - 1] if cut else data[:10], public_key=KAT_KEY.public_key())


def test_rollback_is_refused() -> None:
    with pytest.raises(RollbackError, match="round 7 is older than the round 8"):
        verify_model(_artifact(7), public_key=KAT_KEY.public_key(), min_round=8)


def test_negative_round_cannot_be_signed() -> None:
    with pytest.raises(SignatureError, match="negative"):
        _artifact(-1)


def test_file_round_trip_and_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.frm"
    write_model(path, _artifact())
    assert read_model(path, public_key=KAT_KEY.public_key()).round == 7
    with pytest.raises(SignatureError, match=str(tmp_path / "missing.frm")):
        read_model(tmp_path / "missing.frm", public_key=KAT_KEY.public_key())
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(SignatureError, match=str(path)):
        read_model(path, public_key=KAT_KEY.public_key())


def test_public_key_files(tmp_path: Path) -> None:
    pub = KAT_KEY.public_key()
    pem = tmp_path / "k.pem"
    pem.write_bytes(pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ssh = tmp_path / "k.pub"
    ssh.write_bytes(pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    assert key_id(load_public_key(pem)) == key_id(load_public_key(ssh)) == key_id(pub)
    bad = tmp_path / "bad.pem"
    bad.write_text("hello")
    with pytest.raises(SignatureError, match="bad.pem"):
        load_public_key(bad)
