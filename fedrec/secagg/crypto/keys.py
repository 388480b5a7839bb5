"""Key agreement and share encryption, composed from ``cryptography`` primitives.

* X25519 for both agreements: ``c`` keys protect the shares in transit
  through the server, ``s`` keys yield the pairwise mask seeds.
* HKDF-SHA256 turns each raw X25519 output into a 256-bit key whose ``info``
  names its purpose and the round, so a key never serves two purposes or two
  rounds.
* The pairwise mask seed is bound to the round's downlink digest
  (:func:`bind_model`) before it is expanded.
* AES-256-GCM encrypts the share pair ``(share of b, share of s_sk)``; the
  associated data binds round, stage, sender and receiver, and the plaintext
  repeats sender and receiver, so a ciphertext replayed from another round or
  delivered to the wrong node fails authentication.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedrec.errors import SecAggIntegrityError, SecAggMessageError
from fedrec.secagg.crypto.shamir import ELEMENT_BYTES, element_from_bytes, element_to_bytes

__all__ = [
    "CIPHERTEXT_BYTES",
    "KEY_BYTES",
    "STAGE_SHARE",
    "KeyPair",
    "MODEL_DIGEST_BYTES",
    "agree",
    "bind_model",
    "decrypt_shares",
    "encrypt_shares",
    "mask_seed",
    "share_key",
]

KEY_BYTES = 32
"""Raw size of an X25519 public or private key and of every derived key."""

STAGE_SHARE = 2
"""Protocol stage number bound into the share ciphertexts' associated data."""

NONCE_BYTES = 12
_IDS = struct.Struct(">QQ")
_AD = struct.Struct(">8sQBQQ")
_PLAINTEXT_BYTES = _IDS.size + 2 * ELEMENT_BYTES
CIPHERTEXT_BYTES = NONCE_BYTES + _PLAINTEXT_BYTES + 16
"""Exact length of one encrypted share pair: nonce, plaintext, GCM tag."""

_SHARE_INFO = b"fedrec-secagg share"
_MASK_INFO = b"fedrec-secagg mask"
_MODEL_INFO = b"fedrec-secagg mask model v1\x00"
MODEL_DIGEST_BYTES = 32


class KeyPair:
    """An X25519 key pair whose private half never shows in a repr."""

    __slots__ = ("_private", "public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes]) -> KeyPair:
        """Fresh key pair from ``randbytes`` (the OS CSPRNG unless a test injects one)."""
        return cls(X25519PrivateKey.from_private_bytes(randbytes(KEY_BYTES)))

    @classmethod
    def from_private_bytes(cls, data: bytes) -> KeyPair:
        """Rebuild a key pair from its 32 raw private bytes."""
        if len(data) != KEY_BYTES:
            raise SecAggMessageError(f"X25519 private key must be {KEY_BYTES} bytes")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def private_bytes(self) -> bytes:
        """Raw private key bytes, needed only to secret-share them."""
        return self._private.private_bytes_raw()

    def agree(self, peer_public: bytes) -> bytes:
        """Raw X25519 shared secret with a peer's public key."""
        return agree(self._private, peer_public)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()[:16]}..., private=<redacted>)"


def agree(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519 agreement; a malformed or low-order peer key is refused."""
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        raise SecAggMessageError(f"X25519 public key must be {KEY_BYTES} raw bytes")
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError:
        raise SecAggIntegrityError("X25519 agreement failed (low-order public key)") from None


def _hkdf(shared: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(shared)


def share_key(shared: bytes, *, round_id: int) -> bytes:
    """AES-256-GCM key for the shares exchanged between two nodes in a round."""
    return _hkdf(shared, _SHARE_INFO + b"|" + round_id.to_bytes(8, "big"))


def mask_seed(shared: bytes, *, round_id: int, a: int, b: int) -> bytes:
    """Pairwise mask seed ``s_ij``; symmetric in the two node ids."""
    low, high = min(a, b), max(a, b)
    info = _MASK_INFO + b"|" + round_id.to_bytes(8, "big") + _IDS.pack(low, high)
    return _hkdf(shared, info)


def bind_model(pair_seed: bytes, *, model_digest: bytes) -> bytes:
    """The pairwise mask key actually expanded: ``pair_seed`` bound to the round's downlink digest.

    ``HKDF-SHA256(pair_seed, info = b"fedrec-secagg mask model v1\\0" || digest)``.
    Two devices sent different tables (or round settings) derive different
    keys, so their pairwise masks do not cancel and the sum the server gets
    is uniformly random (:func:`fedrec.secagg.layout.model_digest`).
    """
    if not isinstance(model_digest, bytes) or len(model_digest) != MODEL_DIGEST_BYTES:
        raise SecAggMessageError(f"model digest must be {MODEL_DIGEST_BYTES} bytes")
    return _hkdf(pair_seed, _MODEL_INFO + model_digest)


def _associated_data(round_id: int, sender: int, receiver: int) -> bytes:
    return _AD.pack(b"fedrec-s", round_id, STAGE_SHARE, sender, receiver)


def encrypt_shares(
    key: bytes,
    *,
    round_id: int,
    sender: int,
    receiver: int,
    seed_share: int,
    key_share: int,
    nonce: bytes,
) -> bytes:
    """``nonce || AES-GCM(ids || share of b || share of s_sk)``."""
    if len(nonce) != NONCE_BYTES:
        raise SecAggMessageError(f"AES-GCM nonce must be {NONCE_BYTES} bytes")
    plaintext = _IDS.pack(sender, receiver) + element_to_bytes(seed_share)
    plaintext += element_to_bytes(key_share)
    ad = _associated_data(round_id, sender, receiver)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def decrypt_shares(
    key: bytes, *, round_id: int, sender: int, receiver: int, ciphertext: bytes
) -> tuple[int, int]:
    """Authenticate and open one share pair; returns ``(seed_share, key_share)``.

    Raises
    ------
    SecAggIntegrityError
        The tag does not verify (tampered, from another round, for another
        receiver) or the authenticated ids disagree with the routing.
    """
    if not isinstance(ciphertext, bytes) or len(ciphertext) != CIPHERTEXT_BYTES:
        raise SecAggMessageError(f"share ciphertext must be {CIPHERTEXT_BYTES} bytes")
    nonce, body = ciphertext[:NONCE_BYTES], ciphertext[NONCE_BYTES:]
    ad = _associated_data(round_id, sender, receiver)
    try:
        plaintext = AESGCM(key).decrypt(nonce, body, ad)
    except InvalidTag:
        raise SecAggIntegrityError(
            f"share ciphertext from node {sender} to node {receiver} failed authentication "
            f"(tampered, replayed from another round, or misrouted)"
        ) from None
    claimed_sender, claimed_receiver = _IDS.unpack_from(plaintext)
    if (claimed_sender, claimed_receiver) != (sender, receiver):
        raise SecAggIntegrityError(
            f"share ciphertext names {claimed_sender}->{claimed_receiver}, "
            f"routed as {sender}->{receiver}"
        )
    seed_share = element_from_bytes(plaintext[_IDS.size : _IDS.size + ELEMENT_BYTES])
    key_share = element_from_bytes(plaintext[_IDS.size + ELEMENT_BYTES :])
    return seed_share, key_share
