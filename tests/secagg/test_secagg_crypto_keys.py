"""Share encryption: authenticated, round-bound and receiver-bound."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import SecAggIntegrityError, SecAggMessageError
from fedrec.secagg.crypto.keys import (
    CIPHERTEXT_BYTES,
    KeyPair,
    decrypt_shares,
    encrypt_shares,
    mask_seed,
    share_key,
)
from fedrec.secagg.crypto.shamir import PRIME

ALICE, BOB, CAROL = 11, 2**64 - 1, 5


@pytest.fixture()
def pairs() -> dict[int, KeyPair]:
    source = np.random.default_rng(7).bytes
    return {node: KeyPair.generate(source) for node in (ALICE, BOB, CAROL)}


def key_between(pairs: dict[int, KeyPair], a: int, b: int, round_id: int) -> bytes:
    return share_key(pairs[a].agree(pairs[b].public), round_id=round_id)


def sealed(pairs: dict[int, KeyPair], round_id: int = 3, receiver: int = BOB) -> bytes:
    return encrypt_shares(
        key_between(pairs, ALICE, receiver, round_id),
        round_id=round_id,
        sender=ALICE,
        receiver=receiver,
        seed_share=123456789,
        key_share=PRIME - 1,
        nonce=bytes(range(12)),
    )


def test_round_trip(pairs: dict[int, KeyPair]) -> None:
    ct = sealed(pairs)
    assert len(ct) == CIPHERTEXT_BYTES
    key = key_between(pairs, BOB, ALICE, 3)
    assert decrypt_shares(key, round_id=3, sender=ALICE, receiver=BOB, ciphertext=ct) == (
        123456789,
        PRIME - 1,
    )


def test_agreement_and_mask_seed_are_symmetric(pairs: dict[int, KeyPair]) -> None:
    ab = pairs[ALICE].agree(pairs[BOB].public)
    assert ab == pairs[BOB].agree(pairs[ALICE].public)
    assert mask_seed(ab, round_id=1, a=ALICE, b=BOB) == mask_seed(ab, round_id=1, a=BOB, b=ALICE)
    assert mask_seed(ab, round_id=1, a=ALICE, b=BOB) != mask_seed(ab, round_id=2, a=ALICE, b=BOB)
    assert mask_seed(ab, round_id=1, a=ALICE, b=BOB) != share_key(ab, round_id=1)


@pytest.mark.parametrize("position", [0, 11, 12, 20, 40, CIPHERTEXT_BYTES - 1])
def test_any_flipped_bit_is_rejected(pairs: dict[int, KeyPair], position: int) -> None:
    ct = bytearray(sealed(pairs))
    ct[position] ^= 0x01
    key = key_between(pairs, BOB, ALICE, 3)
    with pytest.raises(SecAggIntegrityError, match="failed authentication"):
        decrypt_shares(key, round_id=3, sender=ALICE, receiver=BOB, ciphertext=bytes(ct))


def test_replay_from_another_round_is_rejected(pairs: dict[int, KeyPair]) -> None:
    old = sealed(pairs, round_id=3)
    for key_round in (3, 4):
        key = key_between(pairs, BOB, ALICE, key_round)
        with pytest.raises(SecAggIntegrityError):
            decrypt_shares(key, round_id=4, sender=ALICE, receiver=BOB, ciphertext=old)


def test_misrouted_ciphertext_is_rejected(pairs: dict[int, KeyPair]) -> None:
    for_bob = sealed(pairs, receiver=BOB)
    carol_key = key_between(pairs, CAROL, ALICE, 3)
    with pytest.raises(SecAggIntegrityError):
        decrypt_shares(carol_key, round_id=3, sender=ALICE, receiver=CAROL, ciphertext=for_bob)
    # Even with Bob's key, claiming another receiver or sender breaks the AD.
    bob_key = key_between(pairs, BOB, ALICE, 3)
    with pytest.raises(SecAggIntegrityError):
        decrypt_shares(bob_key, round_id=3, sender=ALICE, receiver=CAROL, ciphertext=for_bob)
    with pytest.raises(SecAggIntegrityError):
        decrypt_shares(bob_key, round_id=3, sender=CAROL, receiver=BOB, ciphertext=for_bob)


def test_wrong_length_ciphertext_is_malformed(pairs: dict[int, KeyPair]) -> None:
    key = key_between(pairs, BOB, ALICE, 3)
    with pytest.raises(SecAggMessageError):
        decrypt_shares(key, round_id=3, sender=ALICE, receiver=BOB, ciphertext=sealed(pairs)[:-1])


def test_low_order_and_malformed_public_keys_are_refused(pairs: dict[int, KeyPair]) -> None:
    with pytest.raises(SecAggIntegrityError, match="low-order"):
        pairs[ALICE].agree(bytes(32))
    with pytest.raises(SecAggMessageError):
        pairs[ALICE].agree(bytes(31))


def test_keypair_repr_hides_the_private_key(pairs: dict[int, KeyPair]) -> None:
    pair = pairs[ALICE]
    text = repr(pair) + str(pair)
    assert pair.private_bytes().hex() not in text
    assert "redacted" in text
    assert KeyPair.from_private_bytes(pair.private_bytes()).public == pair.public
