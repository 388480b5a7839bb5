"""Mask expansion: RFC 8439 ChaCha20 known answers reproduced through the PRG."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import SecAggConfigError
from fedrec.secagg.crypto.prg import DOMAIN_PAIR, DOMAIN_SELF, expand, keystream, nonce_for

# RFC 8439 appendix A.1, test vector #1: zero key, zero nonce, block counter 0.
RFC8439_A1_TV1 = bytes.fromhex(
    "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
    "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
)

# RFC 8439 section 2.3.2: key 00..1f, nonce 000000090000004a00000000, counter 1.
RFC8439_232_KEY = bytes(range(32))
RFC8439_232_NONCE = (1).to_bytes(4, "little") + bytes.fromhex("000000090000004a00000000")
RFC8439_232_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)


def test_keystream_reproduces_rfc8439_a1_vector() -> None:
    assert keystream(bytes(32), bytes(16), 64) == RFC8439_A1_TV1


def test_keystream_reproduces_rfc8439_block_vector() -> None:
    assert keystream(RFC8439_232_KEY, RFC8439_232_NONCE, 64) == RFC8439_232_BLOCK


def test_expand_is_the_keystream_read_as_little_endian_words() -> None:
    # round 0 and a zero domain tag give the all-zero nonce of the A.1 vector.
    words32 = expand(bytes(32), 16, dtype=np.uint32, round_id=0, domain=bytes(4))
    assert words32.tobytes() == RFC8439_A1_TV1
    assert int(words32[0]) == int.from_bytes(RFC8439_A1_TV1[:4], "little")
    words64 = expand(bytes(32), 8, dtype=np.uint64, round_id=0, domain=bytes(4))
    assert words64.dtype == np.uint64
    assert int(words64[1]) == int.from_bytes(RFC8439_A1_TV1[8:16], "little")


def test_nonce_layout() -> None:
    nonce = nonce_for(0x0102030405060708, DOMAIN_SELF)
    assert nonce == bytes(4) + b"self" + bytes.fromhex("0102030405060708")


def test_expand_is_domain_and_round_separated() -> None:
    key = bytes(range(32))
    a = expand(key, 64, dtype=np.uint32, round_id=1, domain=DOMAIN_SELF)
    b = expand(key, 64, dtype=np.uint32, round_id=2, domain=DOMAIN_SELF)
    c = expand(key, 64, dtype=np.uint32, round_id=1, domain=DOMAIN_PAIR)
    again = expand(key, 64, dtype=np.uint32, round_id=1, domain=DOMAIN_SELF)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(a, again)


def test_expand_prefix_is_stable_across_lengths() -> None:
    key = bytes(range(1, 33))
    short = expand(key, 10, dtype=np.uint64, round_id=5, domain=DOMAIN_PAIR)
    long = expand(key, 100_000, dtype=np.uint64, round_id=5, domain=DOMAIN_PAIR)
    assert np.array_equal(short, long[:10])
    assert long.shape == (100_000,)


def test_prg_refuses_bad_parameters() -> None:
    with pytest.raises(SecAggConfigError):
        expand(bytes(16), 4, dtype=np.uint32, round_id=0, domain=DOMAIN_SELF)
    with pytest.raises(SecAggConfigError):
        expand(bytes(32), 4, dtype=np.int32, round_id=0, domain=DOMAIN_SELF)
    with pytest.raises(SecAggConfigError):
        expand(bytes(32), 4, dtype=np.uint32, round_id=-1, domain=DOMAIN_SELF)
    with pytest.raises(SecAggConfigError):
        nonce_for(0, b"toolong")
    with pytest.raises(SecAggConfigError):
        keystream(bytes(32), bytes(12), 8)
